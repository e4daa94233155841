# -*- test-case-name: tests.system.test_server -*-
"""
A real C{twistd -n primecount} over real sockets on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sqlite3
import time

from twisted.trial.unittest import SynchronousTestCase

from primecount.core.count import expected_reply
from primecount.journal import formats
from primecount.journal.sqlite import reader
from primecount.testing.twistd import ServerProcess
from tests.helpers import recv_all, recv_lines

YES = "sí".encode()


class ServerTestCase(SynchronousTestCase):
    """
    Starts a server per test in a fresh directory; stops it afterwards.
    """

    args: tuple[str, ...] = ("--journal", "sqlite:journal.sqlite3")

    def setUp(self) -> None:
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        self.server = self.start(*self.args)

    def start(self, *args: str) -> ServerProcess:
        server = ServerProcess(*args, cwd=self.dir)
        self.addCleanup(server.stop)
        return server

    def assertStillAnswers(self) -> None:
        with self.server.connect() as sock:
            sock.sendall(b"abc2a\n")
            self.assertEqual(recv_lines(sock, 1), [b"2 " + YES + b"\n"])


class CountProtocolTests(ServerTestCase):
    """
    Every rule of the count protocol, observed over a socket.
    """

    def test_startLineNamesAddressAndSettings(self) -> None:
        log = self.server.log.decode()
        self.assertIn(f"listening on count 127.0.0.1:{self.server.port}", log)
        self.assertIn("threads=10", log)
        self.assertIn("journal=sqlite:", log)

    def test_originalExamplesAndNoGreeting(self) -> None:
        with self.server.connect() as sock:
            sock.settimeout(0.3)
            self.assertRaises(TimeoutError, sock.recv, 1)
            sock.sendall(b"abc2a\nabacada\nabacadabb\na\n")
            self.assertEqual(
                recv_lines(sock, 4),
                [b"2 " + YES + b"\n", b"4 no\n", b"3 " + YES + b"\n", b"1 no\n"],
            )

    def test_pipelined2000RequestsInOneWriteComeBackInOrder(self) -> None:
        messages = [
            f"req{i}-{'ab' * (i % 13)}{chr(0x4E00 + i % 50) * (i % 5)}" for i in range(2000)
        ]
        with self.server.connect() as sock:
            sock.sendall("".join(m + "\n" for m in messages).encode())
            replies = recv_lines(sock, 2000)
        self.assertEqual(replies, [expected_reply(m) for m in messages])

    def test_halfCloseAnswersFinalUnterminatedRequest(self) -> None:
        with self.server.connect() as sock:
            sock.sendall(b"abc2a\nabacada")
            sock.shutdown(socket.SHUT_WR)
            self.assertEqual(recv_all(sock), b"2 " + YES + b"\n4 no\n")

    def test_crlfAndNonAscii(self) -> None:
        with self.server.connect() as sock:
            sock.sendall("abc2a\r\nñandú ñañ\r\n😀a😀\n\tmañana ñ ñ ñ\t\n".encode())
            self.assertEqual(
                recv_lines(sock, 4),
                [b"2 " + YES + b"\n", b"3 " + YES + b"\n", b"2 " + YES + b"\n", b"4 no\n"],
            )

    def test_errorRepliesKeepConnectionUsable(self) -> None:
        with self.server.connect() as sock:
            sock.sendall(b"\n   \n\xff\xfe\xfd\nabc\x00c\n")
            self.assertEqual(
                recv_lines(sock, 4),
                [
                    b"ERR empty message\n",
                    b"ERR empty message\n",
                    b"ERR invalid UTF-8\n",
                    b"2 " + YES + b"\n",
                ],
            )

    def test_lineTooLongThenClosed(self) -> None:
        with self.server.connect() as sock:
            sock.sendall(b"abc2a\n" + b"x" * 20000 + b"\nabc2a\n")
            self.assertEqual(recv_all(sock), b"2 " + YES + b"\nERR line too long\n")
        self.assertStillAnswers()

    def test_everyRequestJournalled(self) -> None:
        with self.server.connect() as sock:
            sock.sendall(b"abc2a\n\n\xff\n\\xff\n")
            recv_lines(sock, 4)
        conn = sqlite3.connect(os.path.join(self.dir, "journal.sqlite3"))
        rows = conn.execute(
            "SELECT host, protocol, message, count, prime, error FROM requests ORDER BY id"
        ).fetchall()
        conn.close()
        self.assertEqual(
            rows,
            [
                ("127.0.0.1", "count", "abc2a", 2, 1, None),
                ("127.0.0.1", "count", "", None, None, "empty message"),
                ("127.0.0.1", "count", b"\xff", None, None, "invalid UTF-8"),
                ("127.0.0.1", "count", "\\xff", 2, 1, None),
            ],
        )
        # primecount journal tells the raw byte from the four characters.
        conn = reader.open_file(os.path.join(self.dir, "journal.sqlite3"))
        try:
            records = [r for _, r in reader.select(conn, reader.Query())]
        finally:
            conn.close()
        shown = [formats.format_original(r).split(" | ")[2] for r in records[2:]]
        self.assertEqual(shown, ["\\udcff", "\\\\xff"])

    def test_sigtermExitsCleanly(self) -> None:
        self.assertStillAnswers()
        # twistd re-raises the signal that stopped it, as daemons should.
        self.assertIn(self.server.stop(), (0, -signal.SIGTERM))
        self.assertIn(b"Server Shut Down.", self.server.log)
        self.assertNotIn(b"Traceback", self.server.log)


class SettingsTests(ServerTestCase):
    """
    --timeout, --close-after-reply, --max-connections, --max-line.
    """

    args = ("--journal", "none", "--timeout", "0.5", "--max-connections", "2", "--max-line", "10")

    def test_idleConnectionClosedAfterTimeout(self) -> None:
        with self.server.connect() as sock:
            started = time.monotonic()
            self.assertEqual(recv_all(sock, timeout=5), b"")
            self.assertLess(time.monotonic() - started, 4)

    def test_serverBusyPastMaxConnections(self) -> None:
        with self.server.connect() as one, self.server.connect() as two:
            one.sendall(b"a\n")
            two.sendall(b"a\n")
            recv_lines(one, 1)
            recv_lines(two, 1)
            with self.server.connect() as three:
                self.assertEqual(recv_all(three), b"ERR server busy\n")
        time.sleep(0.2)
        self.assertStillAnswers()

    def test_clientThatStopsReadingIsDroppedAndFreesItsSlot(self) -> None:
        # It pipelines far more than the socket buffers hold and never reads:
        # the server stops reading it, then drops it after --timeout, so
        # its connection slot (of two) comes back.
        hog = socket.socket()
        hog.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        hog.connect(("127.0.0.1", self.server.port))
        hog.settimeout(0.2)
        chunk = b"a\n" * 32768
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            try:
                hog.sendall(chunk)
            except (TimeoutError, OSError):
                break
        dropped = False
        while time.monotonic() < deadline + 5 and not dropped:
            try:
                hog.sendall(chunk)
            except TimeoutError:
                time.sleep(0.1)
            except OSError:
                dropped = True
        hog.close()
        self.assertTrue(dropped, "the server kept a client that never reads")
        time.sleep(0.2)
        with self.server.connect() as one, self.server.connect() as two:
            for sock in (one, two):
                sock.sendall(b"a\n")
                self.assertEqual(recv_lines(sock, 1), [b"1 no\n"])
        self.server.readLog(0.2)
        self.assertIn(b"stopped reading its replies", self.server.log)

    def test_maxLine(self) -> None:
        with self.server.connect() as sock:
            sock.sendall(b"0123456789\n01234567890\n")
            self.assertEqual(recv_all(sock), b"1 no\nERR line too long\n")


class CloseAfterReplyTests(ServerTestCase):
    """
    The seed's one-request-per-connection mode.
    """

    args = ("--journal", "none", "--close-after-reply")

    def test_closesAfterFirstReply(self) -> None:
        with self.server.connect() as sock:
            sock.sendall(b"abc2a\nabacada\n")
            self.assertEqual(recv_all(sock), b"2 " + YES + b"\n")


class HAProxyTests(ServerTestCase):
    """
    --listen haproxy:…: PROXY v1 line, real client address, half-close.
    """

    args = (
        "--journal",
        "sqlite:journal.sqlite3",
        "--listen",
        "haproxy:tcp:0:interface=127.0.0.1",
        "--max-per-peer",
        "1",
    )

    def test_behindHAProxy(self) -> None:
        port = self.server.ports["proxy"]
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"PROXY TCP4 198.51.100.7 127.0.0.1 40123 5050\r\nabc2a\nabacada")
            sock.shutdown(socket.SHUT_WR)
            self.assertEqual(recv_all(sock), b"2 " + YES + b"\n4 no\n")
        conn = sqlite3.connect(os.path.join(self.dir, "journal.sqlite3"))
        rows = conn.execute("SELECT host, port, message FROM requests ORDER BY id").fetchall()
        conn.close()
        self.assertEqual(
            rows, [("198.51.100.7", 40123, "abc2a"), ("198.51.100.7", 40123, "abacada")]
        )


class ReadFramingTests(ServerTestCase):
    """
    C{--framing read:1000}: the original server's clients, which send a
    message without a newline and read until the server closes; the read
    window is long enough that a split message is one on a loaded machine.
    """

    args = (
        "--journal",
        "sqlite:journal.sqlite3",
        "--framing",
        "read:1000",
        "--max-line",
        "100",
        "--timeout",
        "60",
    )

    def ask(self, data: bytes, halfClose: bool = False) -> bytes:
        with self.server.connect(timeout=30) as sock:
            sock.sendall(data)
            if halfClose:
                sock.shutdown(socket.SHUT_WR)
            return recv_all(sock, timeout=30)

    def rows(self) -> list[tuple[object, ...]]:
        conn = sqlite3.connect(os.path.join(self.dir, "journal.sqlite3"))
        try:
            return conn.execute(
                "SELECT host, message, count, prime, error FROM requests ORDER BY id"
            ).fetchall()
        finally:
            conn.close()

    def test_sendThenReadToEndOfFile(self) -> None:
        # Answered after the window, not when --timeout (60 s) closes.
        started = time.monotonic()
        self.assertEqual(self.ask(b"abc2a"), b"2 " + YES + b"\n")
        self.assertLess(time.monotonic() - started, 20)
        self.assertEqual(self.rows(), [("127.0.0.1", "abc2a", 2, 1, None)])

    def test_twoSegmentsWithinTheWindowAreOneMessage(self) -> None:
        with self.server.connect(timeout=30) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.sendall(b"abc")
            time.sleep(0.05)
            sock.sendall(b"2a")
            self.assertEqual(recv_all(sock, timeout=30), b"2 " + YES + b"\n")
        self.assertEqual(self.rows(), [("127.0.0.1", "abc2a", 2, 1, None)])

    def test_newlineAndHalfCloseGetTheSameAnswer(self) -> None:
        for data, halfClose in ((b"abc2a\n", False), (b"abc2a", True), (b"abc2a\r\n", True)):
            self.assertEqual(self.ask(data, halfClose), b"2 " + YES + b"\n", data)
        self.assertEqual(self.rows(), [("127.0.0.1", "abc2a", 2, 1, None)] * 3)

    def test_errors(self) -> None:
        self.assertEqual(self.ask(b"\xff\xfe"), b"ERR invalid UTF-8\n")
        self.assertEqual(self.ask(b"  "), b"ERR empty message\n")
        self.assertEqual(self.ask(b"\n"), b"ERR empty message\n")
        self.assertEqual(self.ask(b"x" * 101), b"ERR line too long\n")
        self.assertEqual(
            [row[4] for row in self.rows()],
            ["invalid UTF-8", "empty message", "empty message", "line too long"],
        )

    def test_halfCloseWithoutAMessageClosesWithoutReply(self) -> None:
        with self.server.connect(timeout=30) as sock:
            sock.shutdown(socket.SHUT_WR)
            self.assertEqual(recv_all(sock, timeout=30), b"")
        self.assertEqual(self.rows(), [])


class ReadFramingDefaultTests(ServerTestCase):
    """
    C{--framing read}: the first read is the message, answered at once.
    """

    args = ("--journal", "sqlite:journal.sqlite3", "--framing", "read", "--timeout", "60")

    def test_sendThenReadToEndOfFile(self) -> None:
        with self.server.connect(timeout=30) as sock:
            sock.sendall(b"abc2a")
            self.assertEqual(recv_all(sock, timeout=30), b"2 " + YES + b"\n")
        conn = sqlite3.connect(os.path.join(self.dir, "journal.sqlite3"))
        try:
            rows = conn.execute("SELECT message, count, prime FROM requests").fetchall()
        finally:
            conn.close()
        self.assertEqual(rows, [("abc2a", 2, 1)])

    def test_aSegmentAfterTheFirstReadIsNotPartOfTheMessage(self) -> None:
        # The client waits for the reply to its first segment, so the
        # server has read it alone: the answer is for "abc".
        with self.server.connect(timeout=30) as sock:
            sock.sendall(b"abc")
            self.assertEqual(recv_lines(sock, 1, timeout=30), [b"1 no\n"])
            with contextlib.suppress(OSError):
                sock.sendall(b"2a")
            self.assertEqual(recv_all(sock, timeout=30), b"")
