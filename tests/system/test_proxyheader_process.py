"""
The PROXY protocol headers a real HAProxy sends, parsed by
L{primecount.core.proxyheader} and by a real server behind it. Hand-built,
hostile and random headers are in L{tests.unit.test_proxyheader}.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import tempfile
import time
from typing import IO

from twisted.trial.unittest import TestCase

from primecount.cli.primes import fetch, send_sum
from primecount.core.primes import primes_between
from primecount.core.proxyheader import (
    INCOMPLETE,
    LOCAL,
    PROXY,
    Bad,
    Header,
    parse,
)
from primecount.testing.processes import missing, require_program, stop_process
from primecount.testing.twistd import ServerProcess

#: How long a step against the real HAProxy may take on a loaded machine.
DEADLINE = 30.0


def start_haproxy(
    test: TestCase, haproxy: str, frontend: socket.socket, port: int, server: str
) -> tuple[subprocess.Popen[bytes], IO[bytes]]:
    """
    Run C{haproxy -db} (TCP mode) accepting on C{frontend} (handed over as
    a descriptor, then closed here) and relaying to 127.0.0.1:C{port}; it
    is stopped at the end of C{test}.

    @param server: the options of the C{server} line (C{send-proxy-v2},
        C{send-proxy}, checks).
    @return: the process and its log file.
    """
    config = test.mktemp()
    with open(config, "w") as f:
        f.write(
            "global\n"
            "    nbthread 1\n"
            "defaults\n"
            "    mode tcp\n"
            "    timeout connect 5s\n"
            "    timeout client 30s\n"
            "    timeout server 30s\n"
            "frontend in\n"
            "    unique-id-format %ci:%cp\n"
            f"    bind fd@{frontend.fileno()}\n"
            "    default_backend out\n"
            "backend out\n"
            f"    server primecount 127.0.0.1:{port} {server}\n"
        )
    log = open(test.mktemp(), "w+b")  # noqa: SIM115 - closed by cleanup
    test.addCleanup(log.close)
    process = subprocess.Popen(
        [haproxy, "-db", "-f", config],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        pass_fds=[frontend.fileno()],
    )
    test.addCleanup(stop_process, process)
    frontend.close()  # HAProxy's now: refused connections if it exits
    return process, log


class HAProxyTests(TestCase):
    """
    A real C{haproxy -db} (TCP mode) relays a client, connecting from
    127.0.0.2, to a listening socket of the test on 127.0.0.1; the header it
    sends names the client, not itself.
    """

    def setUp(self) -> None:
        self.haproxy = require_program("haproxy", "haproxy")

    def start(self, server: str, frontend: socket.socket) -> socket.socket:
        """
        Run HAProxy accepting on C{frontend} (handed over as a descriptor)
        and relaying to a new listening socket, which is returned.

        @param server: the options of the C{server} line (C{send-proxy-v2},
            C{send-proxy}, checks).
        """
        backend = socket.socket()
        self.addCleanup(backend.close)
        backend.bind(("127.0.0.1", 0))
        backend.listen(8)
        self.process, self.log = start_haproxy(
            self, self.haproxy, frontend, backend.getsockname()[1], server
        )
        return backend

    def haproxyOutput(self) -> str:
        self.log.seek(0)
        return self.log.read().decode("utf-8", "replace")

    def accept(self, backend: socket.socket) -> socket.socket:
        """
        The next connection HAProxy makes to C{backend}; fails the test with
        HAProxy's output if it exits or nothing comes in L{DEADLINE}.
        """
        backend.settimeout(0.2)
        deadline = time.monotonic() + DEADLINE
        while time.monotonic() < deadline:
            try:
                connection, _ = backend.accept()
            except TimeoutError:
                if self.process.poll() is not None:
                    self.fail(f"haproxy exited {self.process.returncode}: {self.haproxyOutput()}")
                continue
            self.addCleanup(connection.close)
            connection.settimeout(DEADLINE)
            return connection
        self.fail(f"haproxy never connected: {self.haproxyOutput()}")

    def receiveHeader(self, connection: socket.socket, until: bytes = b"") -> tuple[Header, int]:
        """
        Read from C{connection} until a header and then C{until} arrived
        (or the peer closed); return the parsed header and its length.
        """
        received = b""
        result = parse(received)
        deadline = time.monotonic() + DEADLINE
        while time.monotonic() < deadline:
            result = parse(received)
            if isinstance(result, Bad):
                self.fail(f"{result.reason}: {received!r}")
            if isinstance(result, Header) and result.rest.endswith(until):
                self.received = received
                return result, len(received) - len(result.rest)
            chunk = connection.recv(65536)
            if not chunk:
                break
            received += chunk
        self.fail(f"no complete header: {result!r} from {received!r}")

    def relay(
        self, server: str, client: str | None, frontend: str
    ) -> tuple[socket.socket, Header, int]:
        """
        Connect from C{client} (an address, or L{None} for an unnamed UNIX
        socket) through HAProxy listening on C{frontend} (an address, or a
        UNIX socket path), send a line, and return the client socket, the
        header the backend received before that line, and its length.
        """
        address: str | tuple[str, int]
        if frontend.startswith("/"):
            family, address = socket.AF_UNIX, frontend
        else:
            family = socket.AF_INET6 if ":" in frontend else socket.AF_INET
            address = (frontend, 0)
        listening = socket.socket(family)
        try:
            listening.bind(address)
        except OSError as e:
            listening.close()
            raise missing(f"cannot bind {frontend}: {e}") from e
        listening.listen(8)
        address = listening.getsockname()
        backend = self.start(server, listening)
        sock = socket.socket(family)
        self.addCleanup(sock.close)
        sock.settimeout(DEADLINE)
        if client is not None:
            sock.bind((client, 0))
        sock.connect(address)
        sock.sendall(b"abc2a\n")
        connection = self.accept(backend)
        self.assertEqual(connection.getpeername()[0], "127.0.0.1")  # HAProxy, not the client
        header, length = self.receiveHeader(connection, until=b"abc2a\n")
        self.assertEqual(header.rest, b"abc2a\n")
        return sock, header, length

    def test_sendProxyV2(self) -> None:
        """
        C{send-proxy-v2}: a version 2 PROXY header names the client's
        address and port, and the address it connected to.
        """
        sock, header, _ = self.relay("send-proxy-v2", "127.0.0.2", "127.0.0.1")
        self.assertEqual((header.version, header.command), (2, PROXY))
        self.assertEqual(header.source, sock.getsockname())
        self.assertEqual(header.destination, sock.getpeername())

    def test_sendProxyV2IPv6(self) -> None:
        """
        C{send-proxy-v2} from an IPv6 client: a TCP6 header.
        """
        sock, header, _ = self.relay("send-proxy-v2", "::1", "::1")
        self.assertEqual((header.version, header.command), (2, PROXY))
        self.assertEqual(header.source, sock.getsockname()[:2])
        self.assertEqual(header.destination, sock.getpeername()[:2])

    def test_sendProxyV2TLVs(self) -> None:
        """
        C{proxy-v2-options}: HAProxy adds TLVs (a CRC32c, a unique id)
        after the addresses; they are skipped and the client's bytes follow.
        """
        sock, header, length = self.relay(
            "send-proxy-v2 proxy-v2-options crc32c,unique-id", "127.0.0.2", "127.0.0.1"
        )
        self.assertEqual(header.source, sock.getsockname())
        self.assertGreater(length, 28 + 7 + 3)  # TCP4 addresses, CRC32c TLV, an id TLV
        for n in range(length):
            self.assertIs(parse(self.received[:n]), INCOMPLETE)

    def test_sendProxyV2Unix(self) -> None:
        """
        A client of a UNIX socket frontend names no source address (its
        socket is unnamed): HAProxy 2.6 sends a LOCAL header, without
        addresses; a HAProxy that sends the UNIX family (0x31) names the
        frontend's path as destination.
        """
        directory = tempfile.mkdtemp(prefix="pc-")  # short: UNIX paths are at most 107 bytes
        self.addCleanup(shutil.rmtree, directory)
        path = os.path.join(directory, "front.sock")
        _, header, length = self.relay("send-proxy-v2", None, path)
        self.assertIsNone(header.source)
        if header.command == LOCAL:  # HAProxy 2.6 (Debian 12)
            self.assertEqual((header.version, length, header.destination), (2, 16, None))
        else:
            self.assertEqual((header.version, length, header.destination), (2, 232, (path, 0)))

    def test_sendProxyV1(self) -> None:
        """
        C{send-proxy}: a version 1 line names the client.
        """
        sock, header, _ = self.relay("send-proxy", "127.0.0.2", "127.0.0.1")
        self.assertEqual((header.version, header.command), (1, PROXY))
        self.assertEqual(header.source, sock.getsockname())
        self.assertEqual(header.destination, sock.getpeername())

    def test_healthCheckIsLocal(self) -> None:
        """
        A health check with C{check-send-proxy} and C{send-proxy-v2} sends a
        LOCAL header: no client address.
        """
        listening = socket.socket()
        listening.bind(("127.0.0.1", 0))
        listening.listen(8)
        backend = self.start("send-proxy-v2 check check-send-proxy inter 500ms", listening)
        header, _ = self.receiveHeader(self.accept(backend))
        self.assertEqual((header.version, header.command), (2, LOCAL))
        self.assertIsNone(header.source)


class RangeBehindHAProxyTests(TestCase):
    """
    A real HAProxy (C{send-proxy-v2}) in front of a real primecount's
    C{--range-listen haproxy:…}: a client connecting from 127.0.0.2 gets its
    primes, and the journal names it, not HAProxy (127.0.0.1).
    """

    def test_rangeRequestJournalsTheClient(self) -> None:
        haproxy = require_program("haproxy", "haproxy")
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        server = ServerProcess(
            "--journal", "sqlite:j.sqlite3", "--timeout", "30",
            "--range-listen", "haproxy:tcp:0:interface=127.0.0.1",
            cwd=directory,
        )  # fmt: skip
        self.addCleanup(server.stop)
        frontend = socket.socket()
        frontend.bind(("127.0.0.1", 0))
        frontend.listen(8)
        address = frontend.getsockname()
        process, log = start_haproxy(
            self, haproxy, frontend, server.ports["range-proxy"], "send-proxy-v2"
        )
        with socket.socket() as sock:
            sock.settimeout(DEADLINE)
            sock.bind(("127.0.0.2", 0))
            sock.connect(address)
            client = sock.getsockname()
            for a, b in ((10, 30), (1000, 1100)):
                primes = fetch(sock, a, b)
                self.assertEqual(list(primes), primes_between(a, b).tolist())
                send_sum(sock, primes)
        # The sums' verdicts are recorded once the server stops.
        self.assertIn(server.stop(), (0, -signal.SIGTERM))
        log.seek(0)
        self.assertIsNone(process.poll(), log.read())
        conn = sqlite3.connect(os.path.join(directory, "j.sqlite3"))
        self.addCleanup(conn.close)
        rows = conn.execute("SELECT host, port, protocol, a, b, sum_ok FROM requests").fetchall()
        self.assertEqual(
            rows,
            [(*client, "range", 10, 30, 1), (*client, "range", 1000, 1100, 1)],
        )
