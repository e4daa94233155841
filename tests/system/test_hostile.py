# -*- test-case-name: tests.system.test_hostile -*-
"""
Hostile input against a real C{twistd -n primecount}: whatever bytes or
connection behaviour a client throws at it, the server never crashes, never
logs a traceback, never hangs, keeps answering well-behaved clients, and
answers bad input with the C{ERR} lines of the spec
(C{docs/user/count-protocol.md} and C{docs/user/range-protocol.md}).

Every test ends by checking that a fresh well-behaved client still gets
C{abc2a} -> C{2 sí}, and every server's log is checked, once it has stopped,
for tracebacks and unhandled errors. Every loop is bounded in iterations and
in time; all traffic goes to 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import select
import socket
import sqlite3
import struct
import threading
import time
from typing import ClassVar

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from primecount.cli.primes import fetch, send_sum, verify
from primecount.core import rangecodec
from primecount.core.count import expected_reply
from primecount.testing.twistd import ServerProcess
from tests.helpers import recv_lines

YES = "sí".encode()
GOOD = b"2 " + YES + b"\n"

#: The --max-line of the count servers here: small, so that long lines are
#: easy to produce.
MAX_LINE = 64

#: The ERR reasons hostile input may legitimately earn.
REASONS = (b"empty message", b"invalid UTF-8", b"line too long")
REPLY_FORM = re.compile(rb"\A(?:\d+ (?:s\xc3\xad|no)|ERR (?:" + b"|".join(REASONS) + rb"))\n\Z")

TOO_LONG = b"ERR line too long\n"
INVALID = b"ERR invalid UTF-8\n"
EMPTY = b"ERR empty message\n"

#: pi(2**31 - 1): the primes in the widest int32 range.
PI_INT32_MAX = 105097565


def model(stream: bytes, maxLine: int = MAX_LINE) -> list[bytes]:
    """
    The replies a correct server gives to C{stream} sent on one connection,
    followed by a half-close: one per LF-terminated line and one for a
    non-empty unterminated tail, up to the first line (CR included, LF
    excluded) longer than C{maxLine}, which gets C{ERR line too long} and
    ends the conversation. How the stream was cut into packets does not
    matter.
    """
    *lines, tail = stream.split(b"\n")
    replies: list[bytes] = []
    for line in lines:
        if len(line) > maxLine:
            return [*replies, TOO_LONG]
        replies.append(expected_reply(line))
    if len(tail) > maxLine:
        replies.append(TOO_LONG)
    elif tail:
        replies.append(expected_reply(tail))
    return replies


def split_lines(data: bytes) -> list[bytes]:
    """
    C{data} cut after every LF; an unterminated tail is kept as it is.
    """
    lines = data.split(b"\n")
    result = [line + b"\n" for line in lines[:-1]]
    if lines[-1]:
        result.append(lines[-1])
    return result


def read_until_closed(sock: socket.socket, timeout: float = 5.0) -> tuple[bytes, bool]:
    """
    Read until the peer closes (FIN or RST) or C{timeout} passes.

    @return: the bytes read and whether the peer closed.
    """
    data = bytearray()
    deadline = time.monotonic() + timeout
    while (remaining := deadline - time.monotonic()) > 0:
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            break
        except ConnectionResetError:
            return bytes(data), True
        if not chunk:
            return bytes(data), True
        data += chunk
    return bytes(data), False


def reset(sock: socket.socket) -> None:
    """
    Close C{sock} with a RST instead of a FIN (SO_LINGER 0); once.
    """
    if sock.fileno() == -1:
        return
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def connect_paced(port: int, n: int) -> list[socket.socket]:
    """
    Open C{n} connections to C{port}, pausing briefly after every 20 so the
    server's accept queue (Twisted's default backlog, 50) never overflows:
    an overflow costs a 1 s SYN retransmission per connection (see
    L{ConnectionBurstTests}).
    """
    socks = []
    try:
        for i in range(n):
            socks.append(socket.create_connection(("127.0.0.1", port), timeout=5))
            if i % 20 == 19:
                time.sleep(0.01)
    except BaseException:
        for sock in socks:
            sock.close()
        raise
    return socks


def rss_kib(pid: int) -> int:
    """
    The resident set size of process C{pid}, in KiB.
    """
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def recv_exactly(sock: socket.socket, size: int, timeout: float = 5.0) -> bytes:
    """
    Exactly C{size} bytes, or fail (peer closed or timeout).
    """
    data = bytearray()
    deadline = time.monotonic() + timeout
    while len(data) < size:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"timed out after {len(data)} of {size} bytes")
        sock.settimeout(remaining)
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise AssertionError(f"closed after {len(data)} of {size} bytes")
        data += chunk
    return bytes(data)


class LogPump:
    """
    Keeps reading the server's log in a thread, so that a server logging a
    lot never blocks on a full pipe while a test is busy elsewhere.
    """

    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set() and self.server.readLog(0.05):
            pass

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


class HostileTestCase(SynchronousTestCase):
    """
    A fresh server per test, in a fresh directory, with a small --max-line
    and a 1 s --timeout; stopped afterwards, its whole log checked.
    """

    args: tuple[str, ...] = ("--max-line", str(MAX_LINE), "--timeout", "1")

    def setUp(self) -> None:
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        self.server = ServerProcess("--journal", "sqlite:journal.sqlite3", *self.args, cwd=self.dir)
        self.pump = LogPump(self.server)
        self.addCleanup(self._stopAndCheckLog)

    def _stopAndCheckLog(self) -> None:
        self.pump.stop()
        self.server.stop()
        self.assertCleanLog()

    def assertCleanLog(self) -> None:
        log = self.server.log.decode("utf-8", "replace")
        self.assertNotIn("Traceback", log, log)
        self.assertNotIn("Unhandled", log, log)

    def assertHealthy(self) -> None:
        """
        The server is alive, answers a fresh well-behaved client at once,
        and has logged no traceback.
        """
        self.assertIsNone(self.server.process.poll(), "the server died")
        start = time.monotonic()
        with self.server.connect(timeout=5) as sock:
            sock.sendall(b"abc2a\n")
            self.assertEqual(recv_lines(sock, 1, timeout=5), [GOOD])
        self.assertLess(time.monotonic() - start, 2.0)
        time.sleep(0.05)
        self.assertCleanLog()

    def journalErrors(self, protocol: str) -> list[str | None]:
        """
        The C{error} column of the journal's records of C{protocol}.
        """
        conn = sqlite3.connect(os.path.join(self.dir, "journal.sqlite3"), timeout=5)
        try:
            rows = conn.execute(
                "SELECT error FROM requests WHERE protocol = ? ORDER BY id", (protocol,)
            ).fetchall()
        finally:
            conn.close()
        return [error for (error,) in rows]


# -- count protocol: random byte streams ---------------------------------------

#: Pieces that make interesting lines when glued together.
SPECIAL = [
    b"\n",
    b"\n",
    b"\r",
    b"\r\n",
    b"\x00",
    b"\xff",
    b"\xfe",
    b"\x80",  # lone continuation byte
    b"\xc0\xaf",  # overlong '/'
    b"\xe0\x80\xaf",  # overlong, three bytes
    b"\xed\xa0\x80",  # encoded surrogate U+D800
    b"\xe2\x82",  # truncated sequence
    b"\xf4\x90\x80\x80",  # beyond U+10FFFF
    b" ",
    b"\t",
    b"\x0b\x0c\x1c\x1d\x1e\x1f\x85",
    "\u2028\u00a0\u3000".encode(),
    "ñ".encode(),
    "😀".encode(),
    b"abc2a",
    b"a" * MAX_LINE,
    b"b" * (MAX_LINE - 1) + b"\r",
    b"c" * (MAX_LINE + 1),
]

pieces = st.one_of(
    st.sampled_from(SPECIAL),
    st.binary(max_size=40),
    st.text(max_size=12).map(lambda s: s.encode("utf-8", "surrogatepass")),
)
pieceStreams = st.lists(pieces, max_size=40).map(b"".join)
#: Lines of random bytes, short, about --max-line long or longer, with LF, CRLF or nothing.
lineStreams = st.lists(
    st.tuples(
        st.one_of(
            st.binary(max_size=16),
            st.binary(min_size=MAX_LINE - 2, max_size=MAX_LINE + 2),
            st.binary(min_size=MAX_LINE + 3, max_size=3 * MAX_LINE),
        ).map(lambda b: b.replace(b"\n", b"a")),
        st.sampled_from([b"\n", b"\r\n", b""]),
    ),
    max_size=12,
).map(lambda lines: b"".join(line + end for line, end in lines))
streams = st.one_of(pieceStreams, lineStreams)
chunkSizes = st.lists(st.integers(min_value=1, max_value=97), min_size=1, max_size=16)


class RandomStreamTests(HostileTestCase):
    """
    Random bytes, cut into random packets, then a half-close.
    """

    def exchange(self, stream: bytes, sizes: list[int], pause: bool) -> tuple[bytes, bool]:
        """
        Send C{stream} in chunks of C{sizes} (cycled), half-close, read the
        replies until the server closes.
        """
        with self.server.connect(timeout=5) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            offset, i = 0, 0
            try:
                while offset < len(stream):
                    size = sizes[i % len(sizes)]
                    sock.sendall(stream[offset : offset + size])
                    offset += size
                    i += 1
                    if pause:
                        time.sleep(0.001)
                sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass  # the server closed after a line too long
            return read_until_closed(sock, 5.0)

    def test_randomStreamsGetExactlyTheExpectedReplies(self) -> None:
        @settings(
            max_examples=40,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(stream=streams, sizes=chunkSizes, pause=st.booleans())
        def check(stream: bytes, sizes: list[int], pause: bool) -> None:
            self.assertExchange(stream, sizes, pause)

        check()
        # A few fixed streams through the same path, then the usual check.
        for stream in [b"", b"\n", b"\r", b"abc2a", b"x" * 1000, b"\xff\n" * 50]:
            self.assertExchange(stream, [7], False)
        self.assertHealthy()

    def assertExchange(self, stream: bytes, sizes: list[int], pause: bool) -> None:
        data, closed = self.exchange(stream, sizes, pause)
        self.assertTrue(closed, "the server did not close after the half-close")
        lines = split_lines(data)
        for line in lines:
            self.assertRegex(line, REPLY_FORM)
        expected = model(stream)
        self.assertEqual(lines, expected)
        terminated = stream.count(b"\n")
        if TOO_LONG not in expected:
            self.assertEqual(len(lines), terminated + (1 if stream.rsplit(b"\n", 1)[-1] else 0))
        else:
            self.assertLessEqual(len(lines), terminated + 1)
        self.assertIsNone(self.server.process.poll(), "the server died")


# -- count protocol: invalid UTF-8 and odd bytes -------------------------------


class BadBytesTests(HostileTestCase):
    """
    Every flavour of invalid UTF-8, NULs, CRs: an ERR or the right count,
    and the connection stays usable.
    """

    CASES: ClassVar[list[tuple[bytes, bytes]]] = [
        (b"\xc0\xaf", INVALID),  # overlong '/'
        (b"\xc1\xbf", INVALID),  # overlong
        (b"\xe0\x80\xaf", INVALID),  # overlong, three bytes
        (b"\xf0\x80\x80\xaf", INVALID),  # overlong, four bytes
        (b"\xed\xa0\x80", INVALID),  # surrogate U+D800 encoded
        (b"\xed\xbf\xbf", INVALID),  # surrogate U+DFFF encoded
        (b"\xed\xa0\xbd\xed\xb8\x80", INVALID),  # CESU-8 surrogate pair
        (b"\x80", INVALID),  # lone continuation byte
        (b"a\xbfa", INVALID),  # continuation byte inside text
        (b"\xe2\x82", INVALID),  # truncated three-byte sequence
        (b"\xf0\x9f\x98", INVALID),  # truncated emoji
        (b"abc\xe2", INVALID),  # truncated at the end
        (b"\xf4\x90\x80\x80", INVALID),  # above U+10FFFF
        (b"\xf8\x88\x80\x80\x80", INVALID),  # five-byte form
        (b"\xff", INVALID),
        (b"\xff\xff\xff", INVALID),
        (b"\xfe\xff", INVALID),  # a UTF-16 BOM
        (b"\x00", b"1 no\n"),  # NUL is a character, not whitespace
        (b"a\x00a", GOOD),
        (b"\x00\x00", GOOD),
        (b"\r", EMPTY),  # only the CR before the LF is dropped...
        (b"\r\r", EMPTY),  # ...and the other one is whitespace
        (b"a\rb\ra", GOOD),  # CR alone does not end a line
        (b"a\r\r", b"1 no\n"),
        (b"\t \x0b\x0c", EMPTY),
        ("\u3000\u00a0".encode(), EMPTY),  # Unicode whitespace
        (b"\xef\xbb\xbfa", b"1 no\n"),  # UTF-8 BOM: a character like any other
        ("😀a😀".encode(), GOOD),
    ]

    def test_eachCaseAloneThenPipelined(self) -> None:
        with self.server.connect(timeout=5) as sock:
            for line, reply in self.CASES:
                self.assertEqual(expected_reply(line), reply, line)
                sock.sendall(line + b"\n")
                self.assertEqual(recv_lines(sock, 1, timeout=5), [reply], line)
            sock.sendall(b"abc2a\n")
            self.assertEqual(recv_lines(sock, 1, timeout=5), [GOOD])
        # The same, pipelined in one write.
        with self.server.connect(timeout=5) as sock:
            sock.sendall(b"".join(line + b"\n" for line, _ in self.CASES) + b"abc2a\n")
            replies = recv_lines(sock, len(self.CASES) + 1, timeout=5)
        self.assertEqual(replies, [reply for _, reply in self.CASES] + [GOOD])
        self.assertHealthy()

    def test_unterminatedTailsAndLineLengthBoundary(self) -> None:
        for tail, reply in [(b"\xed\xa0\x80", INVALID), (b"\r", EMPTY), (b"\x00", b"1 no\n")]:
            with self.server.connect(timeout=5) as sock:
                sock.sendall(b"\xff\n" + tail)
                sock.shutdown(socket.SHUT_WR)
                data, closed = read_until_closed(sock)
            self.assertTrue(closed)
            self.assertEqual(data, INVALID + reply)
        # Lines of exactly --max-line bytes pass; one more byte closes.
        with self.server.connect(timeout=5) as sock:
            sock.sendall(b"a" * MAX_LINE + b"\n" + b"b" * (MAX_LINE - 1) + b"\r\n")
            self.assertEqual(
                recv_lines(sock, 2, timeout=5), [expected_reply(b"a" * MAX_LINE), b"63 no\n"]
            )
            sock.sendall(b"c" * (MAX_LINE + 1) + b"\nabc2a\n")
            data, closed = read_until_closed(sock)
        self.assertTrue(closed)
        self.assertEqual(data, TOO_LONG)
        self.assertHealthy()


# -- count protocol: huge input --------------------------------------------------


class HugeInputTests(HostileTestCase):
    """
    A megabyte without a newline; 200k pipelined lines never read.
    """

    def test_megabyteLineWithoutNewline(self) -> None:
        start = time.monotonic()
        with self.server.connect(timeout=5) as sock:
            # The server may give up on us before we are done: fine.
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                sock.sendall(b"x" * (1 << 20))
            data, closed = read_until_closed(sock, 5.0)
        self.assertTrue(closed)
        self.assertEqual(data, TOO_LONG)
        self.assertLess(time.monotonic() - start, 3.0)
        # The same after good and bad requests, NULs this time.
        with self.server.connect(timeout=5) as sock:
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                sock.sendall(b"abc2a\n\xff\n" + b"\x00" * (1 << 20) + b"\n")
            data, closed = read_until_closed(sock, 5.0)
        self.assertTrue(closed)
        self.assertEqual(data, GOOD + INVALID + TOO_LONG)
        self.assertHealthy()

    def test_pipeliningClientThatNeverReads(self) -> None:
        pid = self.server.process.pid
        self.assertHealthy()
        before = rss_kib(pid)
        line = b"z" * (MAX_LINE - 6) + b"abc2a\n"  # 64 bytes with the LF
        self.assertEqual(expected_reply(line[:-1]), GOOD)
        total = 200_000
        payload = memoryview(line * total)
        hog = self.server.connect(timeout=5)
        try:
            hog.setblocking(False)
            sent = 0
            latencies = []
            deadline = time.monotonic() + 6.0
            nextProbe = time.monotonic()
            for _ in range(100_000):
                if sent >= len(payload) or time.monotonic() > deadline:
                    break
                _, writable, _ = select.select([], [hog], [], 0.05)
                if writable:
                    with contextlib.suppress(BlockingIOError):
                        sent += hog.send(payload[sent : sent + 65536])
                if time.monotonic() >= nextProbe:
                    start = time.monotonic()
                    with self.server.connect(timeout=5) as sock:
                        sock.sendall(b"abc2a\n")
                        self.assertEqual(recv_lines(sock, 1, timeout=5), [GOOD])
                    latencies.append(time.monotonic() - start)
                    nextProbe = time.monotonic() + 0.25
            after = rss_kib(pid)
            # Well-behaved clients were served promptly throughout.
            self.assertTrue(latencies)
            self.assertLess(max(latencies), 1.0, latencies)
            # The server read at most what its limits allow (or what
            # arrived), and its memory did not follow the hog's stream.
            self.assertLess(after - before, 150 * 1024, (before, after, sent))
            self.assertGreater(sent, 0)
        finally:
            reset(hog)
        # Its queued replies are dropped with it; nobody else notices.
        time.sleep(0.2)
        self.assertHealthy()


# -- count protocol: connection behaviour ----------------------------------------


class SlowAndRudeClientTests(HostileTestCase):
    """
    Slowloris, idle crowds, resets.
    """

    def test_trickleWithoutNewlineIsClosedAfterTimeout(self) -> None:
        with self.server.connect(timeout=5) as sock:
            start = time.monotonic()
            closedAfter = None
            for _ in range(40):  # 40 x 0.1 s: well past --timeout 1
                try:
                    sock.sendall(b"a")
                except (BrokenPipeError, ConnectionResetError):
                    closedAfter = time.monotonic() - start
                    break
                ready, _, _ = select.select([sock], [], [], 0.1)
                if ready:
                    data, closed = read_until_closed(sock, 1.0)
                    self.assertEqual(data, b"")  # closed silently
                    self.assertTrue(closed)
                    closedAfter = time.monotonic() - start
                    break
        self.assertIsNotNone(closedAfter, "a trickling client was never closed")
        assert closedAfter is not None
        self.assertGreaterEqual(closedAfter, 0.8)
        self.assertLess(closedAfter, 3.0)
        self.assertHealthy()

    def test_manyIdleConnectionsDoNotStarveOthers(self) -> None:
        idle = connect_paced(self.server.port, 300)
        try:
            # While all 300 are open, a good client is served at once.
            self.assertHealthy()
            # And the idle timeout reclaims every one of them.
            remaining = set(idle)
            deadline = time.monotonic() + 5.0
            while remaining and time.monotonic() < deadline:
                ready, _, _ = select.select(list(remaining), [], [], 0.2)
                for sock in ready:
                    with contextlib.suppress(ConnectionResetError):
                        self.assertEqual(sock.recv(1), b"")
                    remaining.discard(sock)
            self.assertEqual(len(remaining), 0, "idle connections were not closed")
        finally:
            for sock in idle:
                sock.close()
        self.assertHealthy()

    def test_connectAndResetInALoopAndResetBeforeReplies(self) -> None:
        deadline = time.monotonic() + 4.0
        for i in range(300):
            if time.monotonic() > deadline:
                break
            sock = socket.create_connection(("127.0.0.1", self.server.port), timeout=5)
            kind = i % 5
            try:
                if kind == 1:
                    sock.sendall(b"abc")  # a partial line
                elif kind == 2:
                    sock.sendall(b"abc2a\n" * 50)  # requests, replies never read
                elif kind == 3:
                    sock.sendall(b"x" * (MAX_LINE * 4))  # a line too long
                elif kind == 4:
                    sock.sendall(b"abc2a\n")
                    sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            reset(sock)
            if i % 20 == 19:
                time.sleep(0.01)  # let the accept queue drain (see connect_paced)
        self.assertHealthy()
        # A request, then a reset before reading the reply.
        for _ in range(50):
            sock = socket.create_connection(("127.0.0.1", self.server.port), timeout=5)
            sock.sendall(b"abc2a\n\xff\n\n" + b"abacada\n" * 100)
            reset(sock)
        # Also with the server already writing: read part of it, then reset.
        for _ in range(20):
            sock = socket.create_connection(("127.0.0.1", self.server.port), timeout=5)
            sock.sendall(b"abc2a\n" * 2000)
            self.assertEqual(recv_lines(sock, 1, timeout=5)[:1], [GOOD])
            reset(sock)
        self.assertHealthy()
        # Every request it read was still journalled, none by a crashed writer.
        errors = self.journalErrors("count")
        self.assertTrue(errors)
        self.assertLessEqual(set(errors), {None, "empty message", "invalid UTF-8", "line too long"})


# -- range protocol ----------------------------------------------------------------


class RangeHostileTests(HostileTestCase):
    """
    The binary range protocol: partial, garbage, huge, wrong and early input.
    """

    args = (*HostileTestCase.args, "--range-port", "0")

    def rangeConnect(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.server.ports["range"]), timeout=5)

    def assertRangeHealthy(self) -> None:
        """
        A well-behaved range client is served: two requests on one
        connection, verified; and the count protocol still answers.
        """
        with self.rangeConnect() as sock:
            for a, b in [(100, 200), (-50, 30)]:
                primes = fetch(sock, a, b)
                self.assertIsNone(verify(primes, a, b))
                send_sum(sock, primes)
            self.assertEqual(len(fetch(sock, 100, 200)), 21)
        self.assertHealthy()

    def test_partialRequestsThenClose(self) -> None:
        request = rangecodec.encode_request(100, 200)
        for size in range(1, rangecodec.REQUEST_STRUCT.size):
            for halfClose in (False, True):
                with self.rangeConnect() as sock:
                    sock.sendall(request[:size])
                    if halfClose:
                        sock.shutdown(socket.SHUT_WR)
                        data, closed = read_until_closed(sock, 3.0)
                        self.assertEqual(data, b"")
                        self.assertTrue(closed)
        # A partial request left hanging is closed by the idle timeout.
        with self.rangeConnect() as sock:
            sock.sendall(request[:5])
            data, closed = read_until_closed(sock, 4.0)
        self.assertEqual((data, closed), (b"", True))
        self.assertRangeHealthy()
        self.assertIn("incomplete request", self.journalErrors("range"))

    def test_garbageRequestsThenDisconnect(self) -> None:
        rng = random.Random(20260216)
        requests = [
            (0, rangecodec.INT32_MAX),
            (rangecodec.INT32_MIN, rangecodec.INT32_MAX),
            (rangecodec.INT32_MAX, rangecodec.INT32_MIN),
            (rangecodec.INT32_MAX - 100, rangecodec.INT32_MAX),
            (rangecodec.INT32_MIN, rangecodec.INT32_MIN + 100),
        ]
        requests += [struct.unpack("!ii", rng.randbytes(8)) for _ in range(20)]
        deadline = time.monotonic() + 8.0
        for i, (a, b) in enumerate(requests):
            if time.monotonic() > deadline:
                break
            sock = self.rangeConnect()
            try:
                sock.sendall(rangecodec.encode_request(a, b))
                if i % 3 == 0:
                    reset(sock)  # before N
                    continue
                n = rangecodec.decode_count(recv_exactly(sock, rangecodec.COUNT_STRUCT.size))
                if b < a:
                    self.assertEqual(n, 0)
                if (a, b) == (0, rangecodec.INT32_MAX):
                    self.assertEqual(n, PI_INT32_MAX)
                if i % 3 == 1:
                    recv_exactly(sock, min(n, 1000) * rangecodec.PRIME_SIZE)
            finally:
                reset(sock)  # mid-stream, or while the server waits for the sum
        self.assertRangeHealthy()

    def test_emptyRangeWrongSumsEarlySumsAndExtraBytes(self) -> None:
        with self.rangeConnect() as sock:
            sock.sendall(rangecodec.encode_request(rangecodec.INT32_MAX, rangecodec.INT32_MIN))
            self.assertEqual(recv_exactly(sock, 4), rangecodec.encode_count(0))
            sock.sendall(rangecodec.encode_sum(0))
            primes = fetch(sock, 2, 30)
            self.assertEqual(primes.tolist(), [2, 3, 5, 7, 11, 13, 17, 19, 23, 29])
            send_sum(sock, primes)
        # Wrong sums are journalled as such; the connection stays usable.
        with self.rangeConnect() as sock:
            for wrong in [0, -1, 2**63 - 1, -(2**63)]:
                fetch(sock, 100, 200)
                sock.sendall(rangecodec.encode_sum(wrong))
            primes = fetch(sock, 100, 200)
            self.assertIsNone(verify(primes, 100, 200))
            send_sum(sock, primes)
            time.sleep(0.2)
        self.assertEqual(self.journalErrors("range")[-5:], ["bad sum"] * 4 + [None])
        # The sum and the next requests sent before the primes are read.
        with self.rangeConnect() as sock:
            # Request, sum and the next request in one write, before reading.
            probe = fetch(sock, 1000, 100000)
            total = rangecodec.prime_sum(probe)
            sock.sendall(
                rangecodec.encode_sum(total)
                + rangecodec.encode_request(1000, 100000)
                + rangecodec.encode_sum(total)
                + rangecodec.encode_request(0, 10)
            )
            fetch_expected = len(probe) * rangecodec.PRIME_SIZE
            n = rangecodec.decode_count(recv_exactly(sock, 4))
            self.assertEqual(n, len(probe))
            self.assertEqual(len(recv_exactly(sock, fetch_expected)), fetch_expected)
            expected = rangecodec.encode_count(4) + struct.pack("!4I", 2, 3, 5, 7)
            self.assertEqual(recv_exactly(sock, len(expected)), expected)
            # Trailing junk that is not a whole sum, then the client leaves.
            sock.sendall(b"\x01\x02\x03")
        with self.rangeConnect() as sock:
            # Far more bytes than a request: the server reads them as
            # requests and sums, and must not choke on them.
            with contextlib.suppress(OSError):
                sock.sendall(b"\x00\x00\x00\x05\x00\x00\x00\x01" * 20000)
            time.sleep(0.1)
            reset(sock)
        self.assertRangeHealthy()

    def test_hugeRangeNeverReadIsDroppedAndOthersServed(self) -> None:
        # Eight clients ask for every int32 prime and never read the stream.
        hogs: list[socket.socket] = []
        try:
            for _ in range(8):
                hogs.append(self.rangeConnect())
                hogs[-1].setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                hogs[-1].sendall(rangecodec.encode_request(0, rangecodec.INT32_MAX))
            hog = hogs[0]
            # Meanwhile a well-behaved client is served.
            start = time.monotonic()
            self.assertRangeHealthy()
            self.assertLess(time.monotonic() - start, 3.0)
            # The hog stopped reading: after --timeout it is dropped.
            time.sleep(1.5)
            received = 0
            closed = False
            deadline = time.monotonic() + 5.0
            while time.monotonic() < deadline and received < 64 << 20:
                hog.settimeout(max(deadline - time.monotonic(), 0.01))
                try:
                    chunk = hog.recv(1 << 20)
                except ConnectionResetError:
                    closed = True
                    break
                except TimeoutError:
                    break
                if not chunk:
                    closed = True
                    break
                received += len(chunk)
            self.assertTrue(closed, f"still streaming after {received} bytes")
            self.assertLess(received, 4 + PI_INT32_MAX * 4)
        finally:
            for sock in hogs:
                reset(sock)
        self.assertRangeHealthy()
        time.sleep(0.1)
        self.assertIn("client stopped reading", self.journalErrors("range"))


class ConnectionBurstTests(HostileTestCase):
    """
    A burst of connection attempts faster than the server accepts them.
    """

    def test_burstOf300ConnectsIsAcceptedPromptly(self) -> None:
        idle: list[socket.socket] = []
        start = time.monotonic()
        try:
            for _ in range(300):
                idle.append(socket.create_connection(("127.0.0.1", self.server.port), timeout=5))
            elapsed = time.monotonic() - start
            self.assertHealthy()
        finally:
            for sock in idle:
                sock.close()
        self.assertLess(elapsed, 0.9, "connects waited for SYN retransmissions")
