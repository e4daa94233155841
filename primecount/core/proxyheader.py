# -*- test-case-name: tests.unit.test_proxyheader,tests.system.test_proxyheader_process -*-
"""
The PROXY protocol header that HAProxy puts before a relayed connection's
bytes (C{send-proxy}: version 1, a text line; C{send-proxy-v2}: version 2,
binary), read from the start of a connection's input.

L{parse} takes everything received so far and returns one of

    - L{Incomplete}: a valid prefix of a header; call again with more bytes;
    - L{Bad}: not a valid header (with a short reason for the log); refuse
      the connection;
    - L{Header}: the command (L{LOCAL} or L{PROXY}), the client's address
      when the header names one, and the bytes after the header.

Pure functions over bytes, no I/O and no Twisted: the protocols keep the
buffer and call L{parse} on each read until it stops saying L{Incomplete}.

Bounds: a version 1 header is at most L{V1_MAX_LENGTH} (107) bytes, CRLF
included; a version 2 header is 16 bytes followed by at most 65535 more
(its length field is 16 bits), so L{V2_MAX_LENGTH} (65551) bytes. L{parse}
never asks for more than that: a buffer that long either holds a complete
header or is L{Bad}, and most invalid input is L{Bad} at its first wrong
byte. A peer that sends a valid prefix and then nothing is for the caller's
idle timeout. Each call looks at no more than the header's bytes, and a
version 2 header is decoded only once its declared length has arrived, so
calling L{parse} on every read costs a few comparisons until then. Measured
here: a whole TCP4 header 2 µs (version 2) or 8 µs (version 1, mostly
C{ipaddress}); the worst case, 65535 bytes of empty TLVs to walk, 4 ms.

Who may send a header at all is L{TrustedProxies} (C{--trusted-proxies}):
a header is believed only from a connection whose own address is a trusted
proxy's, as nginx's C{set_real_ip_from} and gunicorn's
C{forwarded-allow-ips} do; anyone else could name any client.

Reference: HAProxy's C{doc/proxy-protocol.txt} ("The PROXY protocol,
Versions 1 & 2").
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from typing import Final, Literal, TypeAlias

#: The command of a connection relayed for a client: its address follows.
PROXY: Final = "PROXY"
#: The command of a connection the proxy opened itself (health checks):
#: keep the connection's own endpoints.
LOCAL: Final = "LOCAL"

#: The longest version 1 header, C{"PROXY TCP6 <39> <39> 65535 65535\\r\\n"}.
V1_MAX_LENGTH: Final = 107
#: The fixed part of a version 2 header: signature, version and command,
#: family and transport, length.
V2_FIXED_LENGTH: Final = 16
#: The longest version 2 header: the fixed part and a 16-bit length.
V2_MAX_LENGTH: Final = V2_FIXED_LENGTH + 0xFFFF
#: The longest header of either version: a buffer this long either holds a
#: whole header or is L{Bad}.
MAX_LENGTH: Final = V2_MAX_LENGTH

#: The first bytes of a version 1 header.
V1_PREFIX: Final = b"PROXY "
#: The 12 bytes that start a version 2 header.
V2_SIGNATURE: Final = b"\r\n\r\n\x00\r\nQUIT\n"

# Version 2, byte 13: the version in the high nibble, the command in the low.
_V2_VERSION: Final = 0x2
_V2_COMMANDS: Final = {0x0: LOCAL, 0x1: PROXY}

# Version 2, byte 14: address family (high nibble) and transport (low
# nibble). Only the stream transports (and UNSPEC) can carry a connection to
# this server; the spec says receivers must reject the unassigned values.
_V2_UNSPEC: Final = 0x00
_V2_TCP4: Final = 0x11
_V2_TCP6: Final = 0x21
_V2_UNIX_STREAM: Final = 0x31
_V2_DATAGRAM: Final = frozenset({0x12, 0x22, 0x32})

# Bytes of the address block of each family: source and destination
# addresses, then (for INET and INET6) source and destination ports.
_V2_ADDRESS_LENGTH: Final = {_V2_TCP4: 12, _V2_TCP6: 36, _V2_UNIX_STREAM: 216}
_UNIX_PATH_LENGTH: Final = 108

# A port in a version 1 header: 1 to 5 decimal digits, at most 65535.
_PORT_DIGITS: Final = frozenset(b"0123456789")


@dataclass(frozen=True, slots=True)
class Incomplete:
    """
    The bytes so far are a valid beginning of a header: wait for more.
    """


@dataclass(frozen=True, slots=True)
class Bad:
    """
    Not a PROXY protocol header: refuse the connection.

    @ivar reason: what is wrong, a short ASCII phrase for the log (never
        echoing the peer's bytes).
    """

    reason: str


@dataclass(frozen=True, slots=True)
class Header:
    """
    A complete, valid header.

    @ivar version: 1 (text) or 2 (binary).
    @ivar command: L{PROXY} (relayed) or L{LOCAL} (the proxy's own
        connection, e.g. a health check).
    @ivar source: the client's C{(host, port)} as the journal and the
        per-address limit should see it, or C{None} when the header names
        none (L{LOCAL}, version 1 C{UNKNOWN}, version 2 C{UNSPEC}, or an
        unnamed UNIX socket): keep the connection's own peer. A UNIX client
        is C{(path, 0)}; an abstract socket's path starts with C{"@"}.
    @ivar destination: the address the client connected to, in the same
        form, or C{None} under the same conditions.
    @ivar rest: the bytes received after the header: the client's first
        data.
    """

    version: Literal[1, 2]
    command: str
    source: tuple[str, int] | None
    destination: tuple[str, int] | None
    rest: bytes


#: The one L{Incomplete} value.
INCOMPLETE: Final = Incomplete()

Result = Incomplete | Bad | Header


def parse(buffer: bytes) -> Result:
    """
    Read a PROXY protocol header (version 1 or 2) from the start of
    C{buffer}, everything a connection has received so far.

    Never raises, whatever the bytes.

    @return: L{INCOMPLETE} while C{buffer} is a proper prefix of a valid
        header, L{Bad} as soon as it cannot be one, else the L{Header}.
    """
    if buffer[:1] == V2_SIGNATURE[:1]:
        return _parseV2(buffer)
    return _parseV1(buffer)


def _parseV1(buffer: bytes) -> Result:
    """
    A version 1 header: C{PROXY TCP4|TCP6 src dst sport dport\\r\\n} or
    C{PROXY UNKNOWN …\\r\\n}, at most L{V1_MAX_LENGTH} bytes.
    """
    start = buffer[: len(V1_PREFIX)]
    if start != V1_PREFIX[: len(start)]:
        return Bad("not a PROXY protocol header")
    end = buffer.find(b"\r\n", 0, V1_MAX_LENGTH)
    if end < 0:
        window = buffer[:V1_MAX_LENGTH]
        if not _isPrintableAscii(window.removesuffix(b"\r")):
            return Bad("PROXY v1 line is not printable ASCII")
        if len(buffer) >= V1_MAX_LENGTH:
            return Bad("PROXY v1 line longer than 107 bytes")
        return INCOMPLETE
    line, rest = buffer[:end], buffer[end + 2 :]
    if not _isPrintableAscii(line):
        return Bad("PROXY v1 line is not printable ASCII")
    fields = line.split(b" ")
    if len(fields) < 2:
        return Bad("PROXY v1 line without a protocol")
    protocol = fields[1]
    if protocol == b"UNKNOWN":
        # The spec: whatever follows UNKNOWN up to the CRLF is ignored.
        return Header(1, PROXY, None, None, rest)
    if protocol not in (b"TCP4", b"TCP6"):
        return Bad("PROXY v1 protocol is not TCP4, TCP6 or UNKNOWN")
    if len(fields) != 6:
        return Bad("PROXY v1 line does not have six fields")
    version = 4 if protocol == b"TCP4" else 6
    source = _v1Address(fields[2], version)
    destination = _v1Address(fields[3], version)
    sourcePort = _v1Port(fields[4])
    destinationPort = _v1Port(fields[5])
    if source is None or destination is None:
        return Bad("PROXY v1 address is not an address of its protocol")
    if sourcePort is None or destinationPort is None:
        return Bad("PROXY v1 port is not a number from 0 to 65535")
    return Header(1, PROXY, (source, sourcePort), (destination, destinationPort), rest)


def _isPrintableAscii(data: bytes) -> bool:
    """
    Whether every byte of C{data} is printable ASCII (space to tilde).
    """
    return data.isascii() and all(0x20 <= byte <= 0x7E for byte in data)


def _v1Address(field: bytes, version: int) -> str | None:
    """
    The text of the IP address in C{field} (as L{_addressText} writes it) if
    it is one of IP C{version} in its strict form (no IPv6 zone, no leading
    zeros), else C{None}.
    """
    try:
        address = ipaddress.ip_address(field.decode("ascii"))
    except ValueError:
        return None
    if address.version != version:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.scope_id is not None:
        return None
    return _addressText(address.packed)


def _addressText(packed: bytes) -> str:
    """
    An IPv4 or IPv6 address (4 or 16 bytes) as the socket API writes a
    peer's address (C{inet_ntop}), so that a client seen through a header is
    written as the same client connecting directly (C{::ffff:192.0.2.1}, not
    C{ipaddress}'s C{::ffff:c000:201} of some Python versions).
    """
    return socket.inet_ntop(socket.AF_INET if len(packed) == 4 else socket.AF_INET6, packed)


def _v1Port(field: bytes) -> int | None:
    """
    The port in C{field} (1 to 5 decimal digits, at most 65535), else
    C{None}. Stricter than C{int}, which takes signs, spaces and
    underscores.
    """
    if not 1 <= len(field) <= 5 or not _PORT_DIGITS.issuperset(field):
        return None
    port = int(field)
    return port if port <= 0xFFFF else None


def _parseV2(buffer: bytes) -> Result:
    """
    A version 2 header: L{V2_SIGNATURE}, version and command, family and
    transport, a 16-bit length, then that many bytes (addresses and TLVs).
    """
    signature = buffer[: len(V2_SIGNATURE)]
    if signature != V2_SIGNATURE[: len(signature)]:
        return Bad("not a PROXY protocol header")
    if len(buffer) > 12:
        versionCommand = buffer[12]
        if versionCommand >> 4 != _V2_VERSION:
            return Bad("PROXY v2 header with an unknown version")
        if versionCommand & 0x0F not in _V2_COMMANDS:
            return Bad("PROXY v2 header with an unknown command")
    if len(buffer) < V2_FIXED_LENGTH:
        return INCOMPLETE
    command = _V2_COMMANDS[buffer[12] & 0x0F]
    family = buffer[13]
    length = int.from_bytes(buffer[14:16], "big")
    if command == PROXY:
        # Checked before the body arrives, to refuse a wrong header at once.
        if family in _V2_DATAGRAM:
            return Bad("PROXY v2 header for a datagram transport")
        if family != _V2_UNSPEC and family not in _V2_ADDRESS_LENGTH:
            return Bad("PROXY v2 header with an unknown address family")
        if length < _V2_ADDRESS_LENGTH.get(family, 0):
            return Bad("PROXY v2 length shorter than its addresses")
    end = V2_FIXED_LENGTH + length
    if len(buffer) < end:
        return INCOMPLETE
    body, rest = buffer[V2_FIXED_LENGTH:end], buffer[end:]
    if command == LOCAL or family == _V2_UNSPEC:
        # LOCAL: "discard the protocol block including the family".
        return Header(2, command, None, None, rest)
    addressLength = _V2_ADDRESS_LENGTH[family]
    if not _wellFormedTLVs(body[addressLength:]):
        return Bad("PROXY v2 TLV overruns the header")
    addresses = body[:addressLength]
    if family == _V2_UNIX_STREAM:
        source = _unixPath(addresses[:_UNIX_PATH_LENGTH])
        destination = _unixPath(addresses[_UNIX_PATH_LENGTH:])
        return Header(
            2,
            command,
            None if source is None else (source, 0),
            None if destination is None else (destination, 0),
            rest,
        )
    size = 4 if family == _V2_TCP4 else 16
    sourceHost = _addressText(addresses[:size])
    destinationHost = _addressText(addresses[size : 2 * size])
    sourcePort = int.from_bytes(addresses[2 * size : 2 * size + 2], "big")
    destinationPort = int.from_bytes(addresses[2 * size + 2 : 2 * size + 4], "big")
    return Header(2, command, (sourceHost, sourcePort), (destinationHost, destinationPort), rest)


def _wellFormedTLVs(data: bytes) -> bool:
    """
    Whether C{data} is a sequence of whole TLVs (a type byte, a 16-bit
    length, that many value bytes). Their contents are not used.
    """
    offset = 0
    while offset < len(data):
        if offset + 3 > len(data):
            return False
        offset += 3 + int.from_bytes(data[offset + 1 : offset + 3], "big")
    return offset == len(data)


def _unixPath(field: bytes) -> str | None:
    """
    The path of a version 2 UNIX address (108 bytes, NUL-padded): C{None}
    for an unnamed socket, C{"@name"} for an abstract one, undecodable bytes
    as backslash escapes.
    """
    if field[:1] == b"\x00":
        name = field[1:].rstrip(b"\x00")
        return "@" + name.decode("utf-8", "backslashreplace") if name else None
    return field.split(b"\x00", 1)[0].decode("utf-8", "backslashreplace")


Network: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network

#: In C{--trusted-proxies}: connections on a UNIX socket are trusted (they
#: have no address: whoever the socket's permissions let connect is).
UNIX: Final = "unix"

#: C{--trusted-proxies} unless told otherwise: HAProxy on the same host,
#: connecting over loopback.
DEFAULT_TRUSTED: Final = "127.0.0.1,::1"


@dataclass(frozen=True, slots=True)
class TrustedProxies:
    """
    The proxies whose PROXY headers are believed (C{--trusted-proxies}): a
    connection on a C{haproxy:} listener from anywhere else is refused, so
    that no client can choose the address the journal and the limits see.

    @ivar networks: the trusted addresses and networks.
    @ivar unix: whether connections on a UNIX socket are trusted.
    """

    networks: tuple[Network, ...]
    unix: bool = False

    @classmethod
    def parse(cls, value: str) -> TrustedProxies:
        """
        Read a comma-separated list of IP addresses, networks in CIDR form
        (C{10.0.0.0/8}, C{2001:db8::/32}) and the word L{UNIX}.

        @raise ValueError: in one line naming what is wrong.
        """
        networks: list[Network] = []
        unix = False
        items = [item.strip() for item in value.split(",")]
        if not any(items):
            raise ValueError("names no proxy")
        for item in items:
            if item == UNIX:
                unix = True
                continue
            try:
                network = ipaddress.ip_network(item)
            except ValueError:
                try:
                    loose = ipaddress.ip_network(item, strict=False)
                except ValueError:
                    raise ValueError(
                        f"{item!r} is not an IP address, a network (CIDR) or {UNIX!r}"
                    ) from None
                raise ValueError(f"{item!r} has host bits set: did you mean {loose}?") from None
            networks.append(network)
        return cls(tuple(networks), unix)

    def trusts(self, host: str | None) -> bool:
        """
        Whether a connection from C{host} may send a PROXY header.

        @param host: the connection's own peer address, as the socket API
            writes it (an IPv4-mapped IPv6 address counts as its IPv4
            address); C{None} for a peer on a UNIX socket. Anything else
            (not an address) is not trusted.
        """
        if host is None:
            return self.unix
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self.networks)

    def __str__(self) -> str:
        """
        As C{--trusted-proxies} takes it: single addresses without their
        prefix length.
        """
        words = [
            str(n.network_address) if n.prefixlen == n.max_prefixlen else str(n)
            for n in self.networks
        ]
        return ",".join(words + [UNIX] * self.unix)


#: L{DEFAULT_TRUSTED}, parsed.
TRUSTED_BY_DEFAULT: Final = TrustedProxies.parse(DEFAULT_TRUSTED)
