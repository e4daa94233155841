# -*- test-case-name: tests.system.test_rangeprotocol_sockets -*-
"""
A L{primecount.server.rangeprotocol.RangeFactory} on a real port, with a
real thread pool and blocking clients that take real time: fairness between
a slow and a fast reader, a disconnect mid-stream. The protocol over a
L{StringTransport} is in L{tests.unit.test_rangeprotocol}.
"""

from __future__ import annotations

import socket
import threading
import time

from twisted.internet import reactor as globalReactor
from twisted.internet import threads
from twisted.internet.task import deferLater
from twisted.python.threadpool import ThreadPool
from twisted.trial.unittest import TestCase

from primecount.cli.primes import fetch, send_sum
from primecount.core import rangecodec
from primecount.core.outcomes import (
    DISCONNECTED_MID_STREAM,
)
from primecount.core.primes import count_between
from primecount.server import primestream
from primecount.server.rangeprotocol import RangeFactory
from tests.doubles import FakeJournal


class SocketTests(TestCase):
    """
    A L{RangeFactory} on a real port with a real thread pool, and blocking
    clients in threads.
    """

    def setUp(self) -> None:
        self.pool = ThreadPool(minthreads=0, maxthreads=4, name="range-test")
        self.pool.start()
        self.addCleanup(self.pool.stop)
        self.journal = FakeJournal()
        self.sieved = 0
        lock = threading.Lock()
        real = primestream.encoded_segment

        def counting(lo: int, hi: int) -> tuple[bytes, int, int]:
            result = real(lo, hi)
            with lock:
                self.sieved += len(result[0])
            return result

        self.patch(primestream, "encoded_segment", counting)
        factory = RangeFactory(
            globalReactor,
            self.pool,
            self.journal,
            timeout=5.0,
            segmentSize=1 << 16,
        )
        port = globalReactor.listenTCP(0, factory, interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)
        self.port = port.getHost().port

    def client(self, rcvbuf: int | None = None) -> socket.socket:
        """
        A blocking socket connected to the server.
        """
        sock = socket.socket()
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.settimeout(10)
        sock.connect(("127.0.0.1", self.port))
        return sock

    def startHugeStream(self) -> socket.socket:
        """
        Ask for all of [0, 2**31 - 1] with a small receive buffer, and read
        only the start of the reply (blocking: run it in a thread).
        """
        sock = self.client(rcvbuf=1 << 16)
        sock.sendall(rangecodec.encode_request(0, rangecodec.INT32_MAX))
        sock.recv(4096)
        return sock

    async def test_requestsOverOneConnection(self) -> None:
        """
        Two requests on one connection are answered and journalled.
        """

        def talk() -> list[int]:
            with self.client() as sock:
                counts = []
                for a, b in [(0, 10**6), (-10, 10)]:
                    primes = fetch(sock, a, b)
                    send_sum(sock, primes)
                    counts.append(len(primes))
                return counts

        counts = await threads.deferToThread(talk)
        self.assertEqual(counts, [78498, 4])
        await self.journal.whenRecorded(lambda r: r.a == -10 and r.sum_ok is not None)
        self.assertEqual(
            [(r.count, r.sum_ok, r.error) for r in self.journal.records],
            [(78498, True, None), (4, True, None)],
        )

    async def test_clientWithNagleDoesNotStall(self) -> None:
        """
        A client that leaves Nagle's algorithm on (no C{TCP_NODELAY}, as a
        client written from C{docs/user/range-protocol.md} does) writes its sum and then its
        next request: two small writes, and the server sends nothing after
        the sum. Unless the server acknowledges the sum at once, the request
        waits for the delayed ACK, about 40 ms each time: 50 requests took
        about 2 s. With the sum acknowledged at once they take a few
        milliseconds; 1 s leaves room for a loaded machine.
        """

        def talk() -> tuple[float, list[int]]:
            with self.client() as sock:
                self.assertEqual(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY), 0)
                counts = []
                started = time.monotonic()
                for i in range(50):
                    primes = fetch(sock, i, 100 + i)
                    send_sum(sock, primes)
                    counts.append(len(primes))
                # The last sum is answered by nothing: ask once more to see
                # that it, too, went out at once.
                counts.append(len(fetch(sock, 0, 10)))
                return time.monotonic() - started, counts

        elapsed, counts = await threads.deferToThread(talk)
        self.assertEqual(counts, [count_between(i, 100 + i) for i in range(50)] + [4])
        self.assertLess(elapsed, 1.0)

    async def test_slowReaderDoesNotHoldBackFastOne(self) -> None:
        """
        A client that stops reading a huge range pauses only its own
        stream: a fast client is served meanwhile, and the server sieves
        for the slow one only what the socket buffers can hold.
        """
        slow = await threads.deferToThread(self.startHugeStream)
        self.addCleanup(slow.close)

        def fast() -> int:
            with self.client() as sock:
                primes = fetch(sock, 0, 10**7)
                send_sum(sock, primes)
                return len(primes)

        # The slow client never reads again: were its stream holding the
        # pool or the reactor, the fast client would never finish.
        self.assertEqual(await threads.deferToThread(fast), 664579)
        await deferLater(globalReactor, 0.3, lambda: None)
        held = self.sieved
        await deferLater(globalReactor, 0.3, lambda: None)
        # Everything sieved is the fast client's 2.7 MB plus, for the slow
        # one, socket buffers and two segments: far below the 420 MB of the
        # whole stream, and no longer growing.
        self.assertLess(held, 16 << 20)
        self.assertEqual(self.sieved, held)

    async def test_disconnectMidStream(self) -> None:
        """
        A client that disconnects mid-stream stops the sieving for it and is
        journalled with the error.
        """
        sock = await threads.deferToThread(self.startHugeStream)
        sock.close()
        record = await self.journal.whenRecorded(lambda r: r.error is not None)
        self.assertEqual(
            (record.a, record.count, record.error),
            (0, 105097565, DISCONNECTED_MID_STREAM.text),
        )
        # The job running when the client left may still finish; after
        # that, nothing more is sieved.
        await deferLater(globalReactor, 0.1, lambda: None)
        after = self.sieved
        await deferLater(globalReactor, 0.3, lambda: None)
        self.assertEqual(self.sieved, after)
