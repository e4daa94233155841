"""
Tests for L{primecount.core.proxyheader}: the PROXY protocol header,
versions 1 and 2, from hand-built headers, hostile ones and random bytes.
What a real HAProxy sends is in L{tests.system.test_proxyheader_process}.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import socket
from unittest import SkipTest

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import TestCase

from primecount.core.proxyheader import (
    INCOMPLETE,
    LOCAL,
    MAX_LENGTH,
    PROXY,
    TRUSTED_BY_DEFAULT,
    V1_MAX_LENGTH,
    V2_MAX_LENGTH,
    V2_SIGNATURE,
    Bad,
    Header,
    Incomplete,
    TrustedProxies,
    parse,
)
from primecount.testing.processes import require_program

# --- a small encoder, written from the spec, to build the headers tested ---


def tlv(kind: int, value: bytes) -> bytes:
    """
    One version 2 TLV: type, 16-bit length, value.
    """
    return bytes([kind]) + len(value).to_bytes(2, "big") + value


def v2(command: int, family: int, body: bytes, version: int = 2) -> bytes:
    """
    A version 2 header around C{body} (addresses and TLVs), its length
    computed.
    """
    fixed = bytes([version << 4 | command, family]) + len(body).to_bytes(2, "big")
    return V2_SIGNATURE + fixed + body


def v2_inet(
    source: tuple[str, int], destination: tuple[str, int], tlvs: bytes = b"", command: int = 1
) -> bytes:
    """
    A version 2 TCP4 or TCP6 header (by the source's address family).
    """
    s, d = ipaddress.ip_address(source[0]), ipaddress.ip_address(destination[0])
    family = 0x11 if s.version == 4 else 0x21
    ports = source[1].to_bytes(2, "big") + destination[1].to_bytes(2, "big")
    return v2(command, family, s.packed + d.packed + ports + tlvs)


def v2_unix(source: bytes, destination: bytes, tlvs: bytes = b"") -> bytes:
    """
    A version 2 UNIX stream header: two NUL-padded 108-byte paths.
    """
    return v2(1, 0x31, source.ljust(108, b"\x00") + destination.ljust(108, b"\x00") + tlvs)


def v1(source: tuple[str, int], destination: tuple[str, int]) -> bytes:
    """
    A version 1 line for TCP4 or TCP6 (by the source's address family).
    """
    protocol = "TCP4" if ipaddress.ip_address(source[0]).version == 4 else "TCP6"
    line = f"PROXY {protocol} {source[0]} {destination[0]} {source[1]} {destination[1]}\r\n"
    return line.encode("ascii")


def reason(result: object) -> str:
    """
    The reason of a L{Bad} result; fails the test for anything else.
    """
    assert isinstance(result, Bad), result
    return result.reason


class Version1Tests(TestCase):
    """
    The text line of C{send-proxy}.
    """

    def test_tcp4(self) -> None:
        """
        TCP4 names the client and the address it reached; the bytes after the
        CRLF are the client's.
        """
        result = parse(b"PROXY TCP4 198.51.100.7 203.0.113.1 40123 5050\r\nabc2a\n")
        self.assertEqual(
            result,
            Header(1, PROXY, ("198.51.100.7", 40123), ("203.0.113.1", 5050), b"abc2a\n"),
        )

    def test_tcp6(self) -> None:
        """
        TCP6 addresses come back in their canonical text form.
        """
        result = parse(b"PROXY TCP6 2001:DB8:0::1 2001:db8::2 1 65535\r\n")
        self.assertEqual(result, Header(1, PROXY, ("2001:db8::1", 1), ("2001:db8::2", 65535), b""))

    def test_unknown(self) -> None:
        """
        C{UNKNOWN}, with or without more fields, names no address: keep the
        connection's own peer.
        """
        for line in (b"PROXY UNKNOWN\r\n", b"PROXY UNKNOWN ff::1 whatever 1 2\r\n"):
            self.assertEqual(parse(line + b"x"), Header(1, PROXY, None, None, b"x"), line)

    def test_longest(self) -> None:
        """
        The spec's longest line, C{UNKNOWN} with two full-length IPv6
        addresses and five-digit ports, is exactly 107 bytes and is
        accepted; the longest TCP6 line is shorter.
        """
        address = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe"
        tcp6 = v1((address, 65535), (address, 65535))
        unknown = tcp6.replace(b"TCP6", b"UNKNOWN")
        self.assertEqual(len(unknown), V1_MAX_LENGTH)
        self.assertEqual(parse(unknown + b"x"), Header(1, PROXY, None, None, b"x"))
        self.assertEqual(parse(tcp6), Header(1, PROXY, (address, 65535), (address, 65535), b""))

    def test_mappedAddressAsTheSocketAPIWritesIt(self) -> None:
        """
        An IPv4-mapped IPv6 client is written as a direct connection's peer
        address is (C{inet_ntop}), whatever the Python version.
        """
        line = b"PROXY TCP6 ::FFFF:192.0.2.1 ::ffff:c000:202 1 2\r\n"
        self.assertEqual(
            parse(line), Header(1, PROXY, ("::ffff:192.0.2.1", 1), ("::ffff:192.0.2.2", 2), b"")
        )

    def test_everySplitIsIncomplete(self) -> None:
        """
        Every proper prefix of a line is L{INCOMPLETE}.
        """
        line = v1(("198.51.100.7", 40123), ("203.0.113.1", 5050))
        for n in range(len(line)):
            self.assertIs(parse(line[:n]), INCOMPLETE, line[:n])
        self.assertIsInstance(parse(line), Header)

    def test_hostile(self) -> None:
        """
        Malformed lines are L{Bad}, each with its reason.
        """
        cases = {
            b"GET / HTTP/1.0\r\n": "not a PROXY",
            b"proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n": "not a PROXY",
            b"PROXY TCP4 1.2.3.4\r\n": "six fields",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n": "six fields",
            b"PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n": "six fields",
            b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n": "protocol",
            b"PROXY \r\n": "protocol",
            b"PROXY TCP4 2001:db8::1 1.2.3.4 1 2\r\n": "address",
            b"PROXY TCP6 1.2.3.4 2001:db8::1 1 2\r\n": "address",
            b"PROXY TCP6 fe80::1%eth0 fe80::2 1 2\r\n": "address",
            b"PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n": "address",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n": "port",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 +2\r\n": "port",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1_0 2\r\n": "port",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 000001 2\r\n": "port",
            b"PROXY TCP4 1.2.3.4 5.6.7.8  2\r\n": "port",
            b"PROXY TCP4 1.2.3.4\t5.6.7.8 1 2\r\n": "ASCII",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n": "ASCII",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\r\n": "ASCII",
            "PROXY TCP4 1.2.3.4 5.6.7.8 1 ２\r\n".encode(): "ASCII",
            b"PROXY UNKNOWN \xff\r\n": "ASCII",
            b"PROXY UNKNOWN " + b"x" * 100 + b"\r\n": "longer than 107",
        }
        for line, expected in cases.items():
            self.assertIn(expected, reason(parse(line)), line)

    def test_badAtTheFirstWrongByte(self) -> None:
        """
        Input is refused as soon as it cannot be a header, without waiting
        for a CRLF: another protocol, a bare LF, a control or non-ASCII
        byte, or 107 bytes without CRLF.
        """
        for start in (b"G", b"PROXX", b"PROXY TCP4 1.2.3.4\n", b"PROXY \x00", b"PROXY \xc3"):
            self.assertIsInstance(parse(start), Bad, start)
        self.assertIs(parse(b"PROXY UNKNOWN " + b"x" * 92), INCOMPLETE)
        self.assertIsInstance(parse(b"PROXY UNKNOWN " + b"x" * 93), Bad)


class Version2Tests(TestCase):
    """
    The binary header of C{send-proxy-v2}.
    """

    def test_tcp4(self) -> None:
        """
        TCP4: the client's address and port, the destination's, the rest.
        """
        header = v2_inet(("198.51.100.7", 40123), ("203.0.113.1", 5050))
        self.assertEqual(len(header), 28)
        self.assertEqual(
            parse(header + b"abc2a\n"),
            Header(2, PROXY, ("198.51.100.7", 40123), ("203.0.113.1", 5050), b"abc2a\n"),
        )

    def test_tcp6(self) -> None:
        """
        TCP6 addresses come back in their canonical text form.
        """
        header = v2_inet(("2001:db8::1", 1), ("::ffff:10.0.0.1", 65535))
        self.assertEqual(len(header), 52)
        self.assertEqual(
            parse(header), Header(2, PROXY, ("2001:db8::1", 1), ("::ffff:10.0.0.1", 65535), b"")
        )

    def test_unix(self) -> None:
        """
        UNIX: the paths, port 0; an abstract socket as C{@name}; an unnamed
        client socket names no address; bytes that are not UTF-8 escaped.
        """
        self.assertEqual(
            parse(v2_unix(b"/run/client.sock", b"/run/haproxy.sock") + b"x"),
            Header(2, PROXY, ("/run/client.sock", 0), ("/run/haproxy.sock", 0), b"x"),
        )
        self.assertEqual(
            parse(v2_unix(b"", b"\x00abstract")), Header(2, PROXY, None, ("@abstract", 0), b"")
        )
        result = parse(v2_unix(b"/tmp/\xff", b"/" + b"d" * 107))
        assert isinstance(result, Header)
        self.assertEqual(result.source, ("/tmp/\\xff", 0))
        self.assertEqual(result.destination, ("/" + "d" * 107, 0))

    def test_local(self) -> None:
        """
        LOCAL (health checks) names no address whatever its family and
        body; its body is skipped.
        """
        self.assertEqual(parse(v2(0, 0x00, b"") + b"x"), Header(2, LOCAL, None, None, b"x"))
        inet = v2_inet(("198.51.100.7", 1), ("203.0.113.1", 2), command=0)
        self.assertEqual(parse(inet), Header(2, LOCAL, None, None, b""))
        self.assertEqual(parse(v2(0, 0x12, b"\x01" * 5)), Header(2, LOCAL, None, None, b""))

    def test_unspec(self) -> None:
        """
        PROXY with family UNSPEC names no address (like v1 C{UNKNOWN}).
        """
        self.assertEqual(parse(v2(1, 0x00, b"abc") + b"x"), Header(2, PROXY, None, None, b"x"))

    def test_tlvs(self) -> None:
        """
        TLVs after the addresses are skipped, the rest starts after them.
        """
        tlvs = tlv(0x01, b"h2") + tlv(0x04, b"") + tlv(0xE0, b"\x00" * 300) + tlv(0x05, b"id")
        header = v2_inet(("198.51.100.7", 40123), ("203.0.113.1", 5050), tlvs)
        result = parse(header + b"abc2a\n")
        self.assertEqual(
            result,
            Header(2, PROXY, ("198.51.100.7", 40123), ("203.0.113.1", 5050), b"abc2a\n"),
        )
        unix = parse(v2_unix(b"/a", b"/b", tlv(0x02, b"example.org")) + b"x")
        self.assertEqual(unix, Header(2, PROXY, ("/a", 0), ("/b", 0), b"x"))

    def test_longest(self) -> None:
        """
        A header with the largest length (65535) is complete at exactly
        L{V2_MAX_LENGTH} bytes.
        """
        addresses = bytes(12)
        header = v2(1, 0x11, addresses + tlv(0xEE, bytes(0xFFFF - 12 - 3)))
        self.assertEqual(len(header), V2_MAX_LENGTH)
        self.assertEqual(MAX_LENGTH, V2_MAX_LENGTH)
        self.assertIs(parse(header[:-1]), INCOMPLETE)
        self.assertEqual(
            parse(header + b"x"), Header(2, PROXY, ("0.0.0.0", 0), ("0.0.0.0", 0), b"x")
        )

    def test_everySplitIsIncomplete(self) -> None:
        """
        Every proper prefix of a header (with TLVs) is L{INCOMPLETE}.
        """
        for header in (
            v2_inet(("198.51.100.7", 40123), ("203.0.113.1", 5050), tlv(1, b"h2")),
            v2_inet(("2001:db8::1", 1), ("2001:db8::2", 2)),
            v2_unix(b"/a", b"/b"),
            v2(0, 0, b""),
        ):
            for n in range(len(header)):
                self.assertIs(parse(header[:n]), INCOMPLETE, header[:n])
            self.assertIsInstance(parse(header), Header)

    def test_hostile(self) -> None:
        """
        Wrong versions, commands, families, lengths and TLVs are L{Bad}.
        """
        inet = bytes(12)
        cases = {
            v2(1, 0x11, inet, version=1): "version",
            v2(1, 0x11, inet, version=3): "version",
            v2(2, 0x11, inet): "command",
            v2(0xF, 0x11, inet): "command",
            v2(1, 0x12, inet): "datagram",
            v2(1, 0x22, bytes(36)): "datagram",
            v2(1, 0x32, bytes(216)): "datagram",
            v2(1, 0x10, inet): "family",
            v2(1, 0x41, inet): "family",
            v2(1, 0x13, inet): "family",
            v2(1, 0x01, inet): "family",
            v2(1, 0x11, bytes(11)): "shorter",
            v2(1, 0x21, bytes(35)): "shorter",
            v2(1, 0x31, bytes(215)): "shorter",
            v2(1, 0x21, inet): "shorter",
            v2(1, 0x11, inet + b"\x01"): "TLV",
            v2(1, 0x11, inet + b"\x01\x00"): "TLV",
            v2(1, 0x11, inet + b"\x01\x00\x02x"): "TLV",
            v2(1, 0x11, inet + tlv(1, b"ok") + b"\x02\xff\xff"): "TLV",
            b"\r\n\r\n\x00\r\nQUIT\r": "not a PROXY",
            b"\r\n\r\n\x01": "not a PROXY",
            b"\r\nGET": "not a PROXY",
        }
        for header, expected in cases.items():
            self.assertIn(expected, reason(parse(header + b"rest")), header)

    def test_badBeforeTheBody(self) -> None:
        """
        A wrong version, command, family or a length too short for the
        addresses is refused from the 16 fixed bytes, without waiting for
        the body it announces.
        """
        for fixed in (
            V2_SIGNATURE + b"\x11",
            V2_SIGNATURE + b"\x22",
            V2_SIGNATURE + b"\x21\x12\xff\xff",
            V2_SIGNATURE + b"\x21\x51\xff\xff",
            V2_SIGNATURE + b"\x21\x11\x00\x0b",
        ):
            self.assertIsInstance(parse(fixed), Bad, fixed)
        self.assertIs(parse(V2_SIGNATURE + b"\x21\x11\xff\xff"), INCOMPLETE)


# Hypothesis: random input, and valid headers split anywhere.

ports = st.integers(0, 0xFFFF)
inet4 = st.tuples(st.ip_addresses(v=4).map(str), ports)
inet6 = st.tuples(
    st.ip_addresses(v=6).map(lambda a: socket.inet_ntop(socket.AF_INET6, a.packed)), ports
)
endpoints = st.one_of(st.tuples(inet4, inet4), st.tuples(inet6, inet6))
tlv_lists = st.lists(
    st.tuples(st.integers(0, 255), st.binary(max_size=40)).map(lambda t: tlv(*t)), max_size=4
).map(b"".join)


class PropertyTests(TestCase):
    """
    Properties over generated input.
    """

    @settings(max_examples=300, deadline=None)
    @given(
        st.one_of(
            st.binary(max_size=300),
            st.binary(max_size=300).map(lambda b: b"PROXY " + b),
            st.binary(max_size=300).map(lambda b: V2_SIGNATURE + b),
            st.binary(max_size=300).map(lambda b: V2_SIGNATURE + b"\x21" + b),
        ),
        st.binary(max_size=20),
    )
    def test_anyBytes(self, data: bytes, more: bytes) -> None:
        """
        Any bytes give a result, never an exception; a decided result does
        not change with more bytes (a header keeps its fields and gains
        them in C{rest}); L{Incomplete} only below L{MAX_LENGTH}.
        """
        result = parse(data)
        self.assertIsInstance(result, Incomplete | Bad | Header)
        later = parse(data + more)
        if isinstance(result, Incomplete):
            self.assertLess(len(data), MAX_LENGTH)
        elif isinstance(result, Bad):
            self.assertIsInstance(later, Bad)
        else:
            assert isinstance(later, Header)
            self.assertEqual(later.rest, result.rest + more)
            self.assertEqual(later.source, result.source)
            self.assertTrue(data.endswith(result.rest))

    @settings(max_examples=200, deadline=None)
    @given(endpoints, st.booleans(), tlv_lists, st.binary(max_size=20), st.data())
    def test_roundTrip(
        self,
        addresses: tuple[tuple[str, int], tuple[str, int]],
        binary: bool,
        tlvs: bytes,
        rest: bytes,
        data: st.DataObject,
    ) -> None:
        """
        A header built by the encoder is L{INCOMPLETE} when cut anywhere
        inside it, and gives back its addresses and the bytes after it once
        whole.
        """
        source, destination = addresses
        header = v2_inet(source, destination, tlvs) if binary else v1(source, destination)
        cut = data.draw(st.integers(0, len(header) - 1), label="cut")
        self.assertIs(parse(header[:cut]), INCOMPLETE)
        self.assertEqual(
            parse(header + rest), Header(2 if binary else 1, PROXY, source, destination, rest)
        )


class TrustedProxiesTests(TestCase):
    """
    L{TrustedProxies} (C{--trusted-proxies}): who may send a PROXY header.
    """

    def test_defaultIsHAProxyOnThisHost(self) -> None:
        """
        By default only loopback's own addresses are trusted: not another
        loopback address (the issue's forger connected from 127.0.0.3), not
        a UNIX socket, not anything that is no address.
        """
        trusted = TRUSTED_BY_DEFAULT
        self.assertEqual(str(trusted), "127.0.0.1,::1")
        for host in ("127.0.0.1", "::1", "::ffff:127.0.0.1"):
            self.assertTrue(trusted.trusts(host), host)
        for host in ("127.0.0.3", "192.0.2.7", "::2", "unix:/run/pc.sock", "", None):
            self.assertFalse(trusted.trusts(host), host)

    def test_addressesAndNetworks(self) -> None:
        trusted = TrustedProxies.parse("192.0.2.10, 10.0.0.0/8,2001:db8::/32")
        for host in ("192.0.2.10", "10.0.0.1", "10.255.255.255", "2001:db8::7", "::ffff:10.1.2.3"):
            self.assertTrue(trusted.trusts(host), host)
        for host in ("192.0.2.11", "11.0.0.1", "2001:db9::7", "127.0.0.1", "::1"):
            self.assertFalse(trusted.trusts(host), host)

    def test_unixIsTrustedOnlyWhenNamed(self) -> None:
        """
        A peer on a UNIX socket (L{None}: it has no address) is trusted by
        the word C{unix}, and only by it.
        """
        self.assertTrue(TrustedProxies.parse("unix").trusts(None))
        self.assertFalse(TrustedProxies.parse("unix").trusts("127.0.0.1"))
        self.assertFalse(TrustedProxies.parse("0.0.0.0/0,::/0").trusts(None))

    def test_writtenAsParsed(self) -> None:
        for text in ("127.0.0.1,::1", "10.0.0.0/8,unix", "unix", "2001:db8::/32,192.0.2.10"):
            self.assertEqual(str(TrustedProxies.parse(text)), text)

    def test_badValuesSayWhy(self) -> None:
        for value, why in (
            ("", "names no proxy"),
            (" , ", "names no proxy"),
            ("haproxy.example", "not an IP address, a network (CIDR) or 'unix'"),
            ("10.0.0.1/33", "not an IP address"),
            ("10.0.0.1,,10.0.0.2", "'' is not an IP address"),
            ("10.0.0.1/8", "host bits set: did you mean 10.0.0.0/8?"),
        ):
            e = self.assertRaises(ValueError, TrustedProxies.parse, value)
            self.assertIn(why, str(e))

    @settings(max_examples=200, deadline=None)
    @given(st.ip_addresses(), st.ip_addresses(), st.data())
    def test_trustsExactlyTheNetwork(
        self,
        proxy: ipaddress.IPv4Address | ipaddress.IPv6Address,
        peer: ipaddress.IPv4Address | ipaddress.IPv6Address,
        data: st.DataObject,
    ) -> None:
        """
        A peer is trusted exactly when it is in the network (compared with
        L{ipaddress}'s own test, written the way the socket API writes it).
        """
        prefix = data.draw(st.integers(0, proxy.max_prefixlen), label="prefix")
        network = ipaddress.ip_network(f"{proxy}/{prefix}", strict=False)
        trusted = TrustedProxies.parse(str(network))
        family = socket.AF_INET if peer.version == 4 else socket.AF_INET6
        written = socket.inet_ntop(family, peer.packed)
        mapped = peer.ipv4_mapped if isinstance(peer, ipaddress.IPv6Address) else None
        self.assertEqual(trusted.trusts(written), (mapped or peer) in network)


class RequireProgramTests(TestCase):
    """
    L{require_program}: a missing tool skips the test, except in CI.
    """

    def setCI(self, value: str | None) -> None:
        """
        Set (or, for L{None}, unset) C{CI} for this test.
        """
        old = os.environ.pop("CI", None)

        def restore() -> None:
            os.environ.pop("CI", None)
            if old is not None:
                os.environ["CI"] = old

        self.addCleanup(restore)
        if value is not None:
            os.environ["CI"] = value

    def test_missingInCIFails(self) -> None:
        """
        With C{CI=true} a missing program fails the test.
        """
        self.setCI("true")
        with self.assertRaises(AssertionError) as caught:
            require_program("primecount-no-such-program", "nothing")
        self.assertIn("CI=true", str(caught.exception))

    def test_missingElsewhereSkips(self) -> None:
        """
        Outside CI a missing program skips the test, saying so loudly.
        """
        self.setCI(None)
        with self.assertRaises(SkipTest) as caught:
            require_program("primecount-no-such-program", "nothing")
        self.assertIn("NOT TESTED", str(caught.exception))

    def test_found(self) -> None:
        """
        A present program is returned by path.
        """
        self.assertEqual(require_program("sh", "dash"), shutil.which("sh"))
