# -*- test-case-name: tests.unit.test_rangeprotocol -*-
"""
Tests for L{primecount.server.rangeprotocol}: the wire bytes, the sum check, the
journal, the producer's flow control, over a L{StringTransport} (real sockets:
L{tests.system.test_rangeprotocol_sockets}).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import formatEvent, globalLogPublisher
from twisted.python import usage
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from twisted.trial.unittest import TestCase

from primecount import tap
from primecount.core import rangecodec
from primecount.core.outcomes import (
    BAD_SUM,
    DISCONNECTED_BEFORE_REPLY,
    DISCONNECTED_BEFORE_SUM,
    DISCONNECTED_MID_STREAM,
    INCOMPLETE_REQUEST,
    INTERNAL_ERROR,
    NO_SUM,
    STOPPED_READING,
)
from primecount.core.primes import primes_between
from primecount.core.proxyheader import TRUSTED_BY_DEFAULT, TrustedProxies
from primecount.journal import JournalUnavailable
from primecount.journal.records import PROTOCOL_RANGE
from primecount.server import primestream
from primecount.server.connections import Connections
from primecount.server.primestream import PrimeStream
from primecount.server.rangeprotocol import RangeFactory, RangeProtocol
from tests.doubles import FakeJournal, FakeReactor, SyncPool
from tests.unit.test_proxyheader import v1, v2, v2_inet

PEER = IPv4Address("TCP", "10.1.2.3", 4321)


class PausingTransport(StringTransport):
    """
    A transport whose every write fills its buffer, as a client that reads
    nothing makes a real transport do: it pauses its producer on each write.
    """

    def write(self, data: bytes) -> None:
        """
        Keep C{data}, then pause the streaming producer.
        """
        super().write(data)
        if self.producer is not None and self.streaming:
            self.producer.pauseProducing()


def wire(a: int, b: int) -> bytes:
    """
    The complete reply to [a, b]: N, then the primes.
    """
    primes = primes_between(a, b)
    return rangecodec.encode_count(len(primes)) + rangecodec.encode_primes(primes)


def wireSum(a: int, b: int, delta: int = 0) -> bytes:
    """
    The sum a client sends for [a, b], off by C{delta}.
    """
    return rangecodec.encode_sum(rangecodec.prime_sum(primes_between(a, b)) + delta)


class ProtocolTests(TestCase):
    """
    L{RangeProtocol} over a L{StringTransport}, with a clock and a pool
    that runs jobs in the test's thread.
    """

    def connect(
        self,
        transport: StringTransport | None = None,
        segmentSize: int = 1000,
        timeout: float = 5.0,
    ) -> tuple[RangeProtocol, StringTransport]:
        """
        A connected protocol and its transport.
        """
        self.reactor = FakeReactor()
        self.pool = SyncPool()
        self.journal = FakeJournal()
        self.factory = RangeFactory(
            self.reactor,
            self.pool,  # type: ignore[arg-type]
            self.journal,
            timeout=timeout,
            segmentSize=segmentSize,
        )
        proto = self.factory.buildProtocol(PEER)
        transport = transport or StringTransport(peerAddress=PEER)
        proto.makeConnection(transport)
        return proto, transport

    def test_refusedOverTheConnectionLimit(self) -> None:
        """
        Past the process's connection limit a range connection is closed at
        once, with nothing written (the protocol has no error message).
        """
        self.connect()
        self.factory.connections.maxConnections = 1
        refused = self.factory.buildProtocol(PEER)
        transport = StringTransport(peerAddress=PEER)
        refused.makeConnection(transport)
        self.assertEqual(transport.value(), b"")
        self.assertTrue(transport.disconnecting)
        self.assertEqual(len(self.factory.connections), 1)

    def test_closeWhenDoneFinishesTheRequestFirst(self) -> None:
        """
        A graceful stop lets the request in progress finish (primes, sum,
        record) and then closes instead of reading the next request.
        """
        proto, transport = self.connect()
        proto.dataReceived(rangecodec.encode_request(10, 30))
        self.reactor.advance(0)
        closed = self.factory.connections.closeAll()
        self.assertFalse(transport.disconnecting)
        proto.dataReceived(rangecodec.encode_sum(11 + 13 + 17 + 19 + 23 + 29))
        self.reactor.advance(0)
        self.assertTrue(transport.disconnecting)
        self.assertEqual([r.sum_ok for r in self.journal.records], [True])
        proto.connectionLost(Failure(ConnectionDone()))
        self.successResultOf(closed)

    def test_closeWhenDoneClosesAnIdleConnection(self) -> None:
        """
        A graceful stop closes a connection waiting for its next request.
        """
        _, transport = self.connect()
        self.factory.connections.closeAll()
        self.assertTrue(transport.disconnecting)

    def test_replyWireBytes(self) -> None:
        """
        [10, 30] is answered with N = 6 and the six primes, each unsigned
        32-bit big-endian.
        """
        proto, transport = self.connect()
        proto.dataReceived(b"\x00\x00\x00\x0a\x00\x00\x00\x1e")
        self.reactor.advance(0)
        self.assertEqual(
            transport.value(),
            b"\x00\x00\x00\x06"
            b"\x00\x00\x00\x0b\x00\x00\x00\x0d\x00\x00\x00\x11"
            b"\x00\x00\x00\x13\x00\x00\x00\x17\x00\x00\x00\x1d",
        )

    def test_wideRangeStreamedInSegments(self) -> None:
        """
        A range wider than a segment arrives whole and in order, sieved one
        segment per pool job.
        """
        proto, transport = self.connect(segmentSize=1000)
        proto.dataReceived(rangecodec.encode_request(-5, 10500))
        self.reactor.advance(0)
        self.assertEqual(transport.value(), wire(-5, 10500))
        self.assertEqual(self.pool.segmentJobs(), 11)
        self.assertIsNone(transport.producer)

    def test_emptyRangeRepliesZeroWithoutSieving(self) -> None:
        """
        a > b gets N = 0 and no prime, and no segment is sieved.
        """
        proto, transport = self.connect()
        proto.dataReceived(rangecodec.encode_request(7, -7))
        self.reactor.advance(0)
        self.assertEqual(transport.value(), b"\x00\x00\x00\x00")
        self.assertEqual(self.pool.segmentJobs(), 0)
        proto.dataReceived(rangecodec.encode_sum(0))
        self.assertEqual(self.journal.records[0].sum_ok, True)

    def test_extremeBounds(self) -> None:
        """
        The extreme int32 bounds are valid: [2**31 - 20, 2**31 - 1].
        """
        proto, transport = self.connect()
        top = rangecodec.INT32_MAX
        proto.dataReceived(rangecodec.encode_request(top - 20, top))
        self.reactor.advance(0)
        self.assertEqual(transport.value(), wire(top - 20, top))

    def test_goodSumJournalled(self) -> None:
        """
        A matching sum is journalled with sum_ok, the bounds, N and the peer.
        """
        proto, transport = self.connect()
        proto.dataReceived(rangecodec.encode_request(100, 200))
        self.reactor.advance(0)
        # Recorded before the reply, its sum verdict pending...
        self.assertEqual(
            [(r.a, r.b, r.count, r.sum_ok, r.error) for r in self.journal.records],
            [(100, 200, 21, None, None)],
        )
        proto.dataReceived(wireSum(100, 200))
        # ...then completed in place.
        [record] = self.journal.records
        self.assertEqual(
            (record.protocol, record.a, record.b, record.count, record.sum_ok),
            (PROTOCOL_RANGE, 100, 200, 21, True),
        )
        self.assertEqual((record.peer, record.port, record.error), ("10.1.2.3", 4321, None))
        self.assertFalse(transport.disconnecting)

    def test_badSumJournalled(self) -> None:
        """
        A wrong sum is journalled as such; the connection stays usable.
        """
        proto, transport = self.connect()
        proto.dataReceived(rangecodec.encode_request(100, 200))
        self.reactor.advance(0)
        proto.dataReceived(wireSum(100, 200, delta=1))
        [record] = self.journal.records
        self.assertEqual((record.sum_ok, record.error), (False, BAD_SUM.text))
        transport.clear()
        proto.dataReceived(rangecodec.encode_request(2, 5))
        self.reactor.advance(0)
        self.assertEqual(transport.value(), wire(2, 5))

    def test_severalRequestsPerConnection(self) -> None:
        """
        Requests follow one another on one connection, each answered and
        journalled; a sum and the next request may arrive together.
        """
        proto, transport = self.connect(segmentSize=100)
        proto.dataReceived(rangecodec.encode_request(0, 500))
        self.reactor.advance(0)
        proto.dataReceived(wireSum(0, 500) + rangecodec.encode_request(600, 700))
        self.reactor.advance(0)
        proto.dataReceived(wireSum(600, 700))
        self.assertEqual(transport.value(), wire(0, 500) + wire(600, 700))
        self.assertEqual(
            [(r.a, r.b, r.sum_ok) for r in self.journal.records],
            [(0, 500, True), (600, 700, True)],
        )

    def test_requestSplitAcrossPackets(self) -> None:
        """
        A request and a sum arriving one byte at a time are understood.
        """
        proto, transport = self.connect()
        for byte in rangecodec.encode_request(20, 40):
            proto.dataReceived(bytes([byte]))
        self.reactor.advance(0)
        self.assertEqual(transport.value(), wire(20, 40))
        for byte in wireSum(20, 40):
            proto.dataReceived(bytes([byte]))
        self.assertEqual(self.journal.records[0].sum_ok, True)

    def test_replyWaitsForTheRecord(self) -> None:
        """
        N and the primes are sent only once the request's (pending) record
        is committed, as on the count protocol.
        """
        proto, transport = self.connect()
        commit: Deferred[None] = Deferred()
        self.journal.result = lambda: commit
        proto.dataReceived(rangecodec.encode_request(2, 3))
        self.reactor.advance(0)
        self.assertEqual(transport.value(), b"")
        commit.callback(None)
        self.reactor.advance(0)
        self.assertEqual(transport.value(), wire(2, 3))

    def test_nextRequestWaitsForTheRecord(self) -> None:
        """
        The next request is answered only once the previous record is
        completed.
        """
        proto, transport = self.connect()
        proto.dataReceived(rangecodec.encode_request(2, 3))
        self.reactor.advance(0)
        commit: Deferred[None] = Deferred()
        self.journal.result = lambda: commit
        proto.dataReceived(wireSum(2, 3) + rangecodec.encode_request(5, 7))
        self.reactor.advance(0)
        self.assertEqual(transport.value(), wire(2, 3))
        self.journal.result = lambda: succeed(None)
        commit.callback(None)
        self.reactor.advance(0)
        self.assertEqual(transport.value(), wire(2, 3) + wire(5, 7))

    def test_unavailableJournalRefusesRequestsAndIsLoggedOnce(self) -> None:
        """
        A request that cannot be journalled is not answered: the binary
        protocol has no error message, so its connection is dropped. The
        episode is logged once however many requests fail, and requests are
        answered again once the journal recovers.
        """
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        self.connect()
        self.journal.result = lambda: fail(OSError("disk full"))

        def another() -> tuple[Any, StringTransport]:
            proto = self.factory.buildProtocol(PEER)
            transport = StringTransport(peerAddress=PEER)
            proto.makeConnection(transport)
            return proto, transport

        for a, b in [(2, 3), (5, 7), (11, 13)]:
            proto, transport = another()
            proto.dataReceived(rangecodec.encode_request(a, b))
            self.reactor.advance(0)
            self.assertEqual(transport.value(), b"")
            self.assertTrue(transport.disconnecting)
        said = [e["log_format"] for e in events if "Journal" in e.get("log_format", "")]
        self.assertEqual(len(said), 1, said)
        self.journal.result = lambda: succeed(None)
        proto, transport = another()
        proto.dataReceived(rangecodec.encode_request(2, 3))
        self.reactor.advance(0)
        self.assertEqual(transport.value(), wire(2, 3))

    def test_flappingJournalIsOneEpisode(self) -> None:
        """
        A journal failing every other write is one episode: one line when it
        starts, one with the count once writes stopped failing for a while
        (not two lines per failure).
        """
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        self.connect()
        for n in range(20):
            failing = n % 2 == 0
            self.journal.result = (
                (lambda: fail(OSError("disk full"))) if failing else (lambda: succeed(None))
            )
            proto = self.factory.buildProtocol(PEER)
            proto.makeConnection(StringTransport(peerAddress=PEER))
            proto.dataReceived(rangecodec.encode_request(2, 3))
            self.reactor.advance(1)
        self.reactor.advance(10)
        said = [formatEvent(e) for e in events if "ournal" in e.get("log_format", "")]
        self.assertEqual(
            said,
            [
                "Journal unavailable (disk full); range requests are refused until it recovers",
                "range records the journal failed to write: 10 in 18 s; none for 10 s now",
            ],
        )

    def test_journalOutageIsLoggedByTheJournalOnly(self) -> None:
        """
        A journal that is unavailable logs its own outage
        (L{JournalUnavailable}); the range factory refuses the request
        without logging it a second time.
        """
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        proto, transport = self.connect()
        self.journal.result = lambda: fail(JournalUnavailable("disk full"))
        proto.dataReceived(rangecodec.encode_request(2, 3))
        self.reactor.advance(0)
        self.assertEqual(transport.value(), b"")
        self.assertTrue(transport.disconnecting)
        said = [e["log_format"] for e in events if "ournal" in e.get("log_format", "")]
        self.assertEqual(said, [])

    def test_pausedStreamSievesNothingMore(self) -> None:
        """
        While the transport has its producer paused, no segment is sieved;
        resuming carries on, and the stream completes intact.
        """
        proto, transport = self.connect(PausingTransport(peerAddress=PEER), 100)
        proto.dataReceived(rangecodec.encode_request(0, 2000))
        self.reactor.advance(0)
        # The segment that paused it, plus the one requested before it was
        # written (sieving overlaps sending); then nothing.
        self.assertEqual(self.pool.segmentJobs(), 2)
        self.reactor.advance(1)
        self.assertEqual(self.pool.segmentJobs(), 2)
        producer = transport.producer
        assert producer is not None
        while transport.producer is not None:
            before = self.pool.segmentJobs()
            producer.resumeProducing()
            self.reactor.advance(0)
            self.assertGreater(self.pool.segmentJobs(), before)
        self.assertEqual(self.pool.segmentJobs(), 20)
        self.assertEqual(transport.value(), wire(0, 2000))

    def test_disconnectMidStreamStopsSievingAndIsJournalled(self) -> None:
        """
        A client that goes away mid-stream stops the sieving for it, and
        its request is journalled with the error.
        """
        proto, transport = self.connect(PausingTransport(peerAddress=PEER), 100)
        proto.dataReceived(rangecodec.encode_request(0, 100000))
        self.reactor.advance(0)
        producer = transport.producer
        assert producer is not None
        producer.stopProducing()
        proto.connectionLost(Failure(ConnectionDone()))
        sieved = self.pool.segmentJobs()
        producer.resumeProducing()
        self.reactor.advance(1)
        self.assertEqual(self.pool.segmentJobs(), sieved)
        [record] = self.journal.records
        self.assertEqual(
            (record.a, record.b, record.count, record.sum_ok, record.error),
            (0, 100000, 9592, None, DISCONNECTED_MID_STREAM.text),
        )

    def test_disconnectBeforeReply(self) -> None:
        """
        A client that leaves while N is computed is journalled, and nothing
        is written afterwards.
        """
        proto, transport = self.connect()
        proto.dataReceived(rangecodec.encode_request(0, 100))
        proto.connectionLost(Failure(ConnectionDone()))
        self.reactor.advance(0)
        self.assertEqual(transport.value(), b"")
        self.assertEqual(self.journal.records[0].error, DISCONNECTED_BEFORE_REPLY.text)

    def test_disconnectBeforeSum(self) -> None:
        """
        A client that reads every prime but sends no sum is journalled.
        """
        proto, _ = self.connect()
        proto.dataReceived(rangecodec.encode_request(0, 100))
        self.reactor.advance(0)
        proto.connectionLost(Failure(ConnectionDone()))
        [record] = self.journal.records
        self.assertEqual((record.count, record.error), (25, DISCONNECTED_BEFORE_SUM.text))

    def test_incompleteRequestJournalled(self) -> None:
        """
        A client that leaves after part of a request is journalled.
        """
        proto, _ = self.connect()
        proto.dataReceived(b"\x00\x00\x00")
        proto.connectionLost(Failure(ConnectionDone()))
        [record] = self.journal.records
        self.assertEqual((record.a, record.error), (None, INCOMPLETE_REQUEST.text))

    def test_idleTimeoutClosesConnection(self) -> None:
        """
        A connection without a request for the timeout is closed, and
        nothing is journalled.
        """
        proto, transport = self.connect(timeout=5.0)
        self.reactor.advance(4.9)
        self.assertFalse(transport.disconnecting)
        self.reactor.advance(0.2)
        self.assertTrue(transport.disconnecting)
        proto.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.journal.records, [])

    def test_timeoutRestartsAfterEachRequest(self) -> None:
        """
        The idle timeout counts from the end of the last request.
        """
        proto, transport = self.connect(timeout=5.0)
        self.reactor.advance(4)
        proto.dataReceived(rangecodec.encode_request(2, 3))
        self.reactor.advance(0)
        proto.dataReceived(wireSum(2, 3))
        self.reactor.advance(4)
        self.assertFalse(transport.disconnecting)
        self.reactor.advance(1.1)
        self.assertTrue(transport.disconnecting)

    def test_zeroTimeoutDisables(self) -> None:
        """
        A timeout of 0 never closes an idle connection.
        """
        proto, transport = self.connect(timeout=0)
        self.reactor.advance(3600)
        self.assertFalse(transport.disconnecting)
        proto.connectionLost(Failure(ConnectionDone()))

    def test_missingSumTimesOut(self) -> None:
        """
        A client that sends no sum within the timeout is closed and
        journalled as such.
        """
        proto, transport = self.connect(timeout=5.0)
        proto.dataReceived(rangecodec.encode_request(0, 100))
        self.reactor.advance(0)
        self.reactor.advance(5.1)
        self.assertTrue(transport.disconnecting)
        proto.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.journal.records[0].error, NO_SUM.text)

    def test_stalledReaderIsAborted(self) -> None:
        """
        A client that stops reading mid-stream for the timeout is aborted
        (its unsent data would never drain) and journalled.
        """
        proto, transport = self.connect(PausingTransport(peerAddress=PEER), 100, 5.0)
        proto.dataReceived(rangecodec.encode_request(0, 100000))
        self.reactor.advance(0)
        self.reactor.advance(4.9)
        self.assertFalse(transport.disconnecting)
        self.reactor.advance(0.2)
        self.assertTrue(transport.disconnected)
        proto.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.journal.records[0].error, STOPPED_READING.text)

    def test_sieveFailureJournalledAndConnectionDropped(self) -> None:
        """
        A failing sieve job is logged and journalled, and the connection is
        aborted (the client could not tell the stream was cut short).
        """

        def broken(lo: int, hi: int) -> tuple[bytes, int, int]:
            raise MemoryError("no room")

        self.patch(primestream, "encoded_segment", broken)
        proto, transport = self.connect()
        proto.dataReceived(rangecodec.encode_request(0, 100))
        self.reactor.advance(0)
        self.assertTrue(transport.disconnected)
        self.assertEqual(len(self.flushLoggedErrors(MemoryError)), 1)
        proto.connectionLost(Failure(ConnectionDone()))
        self.assertEqual([r.error for r in self.journal.records], [INTERNAL_ERROR.text])


class ProxyHeaderTests(TestCase):
    """
    Behind HAProxy (C{--range-listen haproxy:…}): a PROXY header (version 1
    or 2) comes before the first request and names the client that the
    limits count and the journal records.
    """

    SOURCE = ("198.51.100.7", 40123)
    DESTINATION = ("203.0.113.1", 5051)

    def setUp(self) -> None:
        self.reactor = FakeReactor()
        self.journal = FakeJournal()
        self.connections = Connections(10000, 1, clock=self.reactor)
        self.factory = RangeFactory(
            self.reactor,
            SyncPool(),  # type: ignore[arg-type]
            self.journal,
            segmentSize=1000,
            connections=self.connections,
            trustedProxies=TrustedProxies.parse(PEER.host),
        ).behindProxy()

    def connect(self) -> tuple[RangeProtocol, StringTransport]:
        """
        A connection from HAProxy (L{PEER}), its header not read yet.
        """
        proto = self.factory.buildProtocol(PEER)
        transport = StringTransport(peerAddress=PEER)
        proto.makeConnection(transport)
        return proto, transport  # type: ignore[return-value]

    def ask(self, proto: RangeProtocol, header: bytes, a: int = 10, b: int = 30) -> None:
        """
        Send C{header} and the request [a, b] in one read, then the sum.
        """
        proto.dataReceived(header + rangecodec.encode_request(a, b))
        self.reactor.advance(0)
        proto.dataReceived(wireSum(a, b))
        self.reactor.advance(0)

    def test_refusalsAreLoggedInTheFactorysEpisodes(self) -> None:
        """
        The factory logs through the episodes it is handed, not only the
        connections' own; its twin behind the proxy shares them.
        """
        from twisted.logger import Logger

        from primecount.metrics.episodes import Episodes
        from tests.unit.test_episodes import capture

        events = capture(self)
        mine = Episodes(Logger(namespace="test.mine"), self.reactor)
        self.factory = RangeFactory(
            self.reactor,
            SyncPool(),  # type: ignore[arg-type]
            self.journal,
            connections=self.connections,
            trustedProxies=TrustedProxies.parse(PEER.host),
            episodes=mine,
        ).behindProxy()
        proto, transport = self.connect()
        proto.dataReceived(b"PROXY garbage\r\n")
        said = [e for e in events if e.get("log_namespace") == "test.mine"]
        self.assertEqual([e["peer"] for e in said], [PEER.host])
        self.assertTrue(transport.disconnecting)

    def test_version1NamesTheClient(self) -> None:
        proto, transport = self.connect()
        self.ask(proto, v1(self.SOURCE, self.DESTINATION))
        self.assertEqual(transport.value(), wire(10, 30))
        [record] = self.journal.records
        self.assertEqual((record.peer, record.port, record.sum_ok), (*self.SOURCE, True))

    def test_version2NamesTheClient(self) -> None:
        proto, transport = self.connect()
        self.ask(proto, v2_inet(("2001:db8::7", 40123), ("2001:db8::1", 5051)))
        self.assertEqual(transport.value(), wire(10, 30))
        [record] = self.journal.records
        self.assertEqual((record.peer, record.port), ("2001:db8::7", 40123))

    def test_localKeepsTheConnectionsPeer(self) -> None:
        """
        A C{LOCAL} header (HAProxy's own health check) names no client.
        """
        proto, transport = self.connect()
        self.ask(proto, v2(0, 0x00, b""))
        self.assertEqual(transport.value(), wire(10, 30))
        [record] = self.journal.records
        self.assertEqual((record.peer, record.port), (PEER.host, PEER.port))

    def test_splitAtEveryByte(self) -> None:
        """
        Header and request may arrive a byte at a time; the request waits
        for the whole header.
        """
        proto, transport = self.connect()
        data = v2_inet(self.SOURCE, self.DESTINATION) + rangecodec.encode_request(10, 30)
        for i in range(len(data)):
            proto.dataReceived(data[i : i + 1])
            self.reactor.advance(0)
            self.assertEqual(len(self.connections), 0 if i < len(data) - 9 else 1, i)
        self.assertEqual(transport.value(), wire(10, 30))
        self.assertEqual(self.journal.records[0].peer, self.SOURCE[0])

    def test_hostileHeaderClosesSilentlyAndIsLoggedOnce(self) -> None:
        """
        A header that is not one closes the connection with nothing
        written (the binary protocol has no error message) and no journal
        row; many of them make one log line.
        """
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        hostile = [
            rangecodec.encode_request(10, 30),
            b"PROXY TCP4 1.2.3.4\r\n",
            b"GET / HTTP/1.0\r\n",
            b"x" * 200,
            v2(1, 0x12, bytes(12)),  # a datagram transport
            v2(1, 0x11, bytes(4)),  # too short for TCP4 addresses
        ]
        for header in hostile:
            proto, transport = self.connect()
            proto.dataReceived(header)
            proto.dataReceived(rangecodec.encode_request(2, 3))
            self.reactor.advance(0)
            self.assertEqual(transport.value(), b"", header)
            self.assertTrue(transport.disconnecting, header)
            proto.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.journal.records, [])
        self.assertEqual(len(self.connections), 0)
        said = [e for e in events if e.get("reason") == "bad PROXY header"]
        self.assertEqual(len(said), 1, said)

    def test_untrustedProxyIsClosedSilentlyAndLoggedOnce(self) -> None:
        """
        A connection from an address that is not a trusted proxy is closed
        at once with nothing written (the binary protocol has no error
        message): its forged header and request are never read, nothing is
        journalled, it is never counted open; many make one warning.
        """
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        forger = IPv4Address("TCP", "127.0.0.3", 4321)
        for _ in range(20):
            proto = self.factory.buildProtocol(forger)
            transport = StringTransport(peerAddress=forger)
            proto.makeConnection(transport)
            self.assertTrue(transport.disconnecting)
            proto.dataReceived(v1(("6.6.6.6", 1111), self.DESTINATION))
            proto.dataReceived(rangecodec.encode_request(10, 30))
            self.reactor.advance(0)
            self.assertEqual(transport.value(), b"")
            proto.connectionLost(Failure(ConnectionDone()))
        self.reactor.advance(60)
        self.assertEqual(self.journal.records, [])
        self.assertEqual(len(self.connections), 0)
        said = [e for e in events if e.get("reason") == "untrusted proxy"]
        self.assertEqual(len(said), 1, said)
        self.assertIn("127.0.0.3", said[0]["log_format"].format(**said[0]))

    def test_perPeerLimitUsesTheHeaderAddress(self) -> None:
        """
        Every connection comes from HAProxy; C{--max-per-peer 1} counts
        the clients the headers name.
        """
        first, _ = self.connect()
        first.dataReceived(v1(self.SOURCE, self.DESTINATION))
        other, otherTransport = self.connect()
        self.ask(other, v1(("198.51.100.8", 1), self.DESTINATION))
        self.assertEqual(otherTransport.value(), wire(10, 30))
        again, againTransport = self.connect()
        again.dataReceived(v1(self.SOURCE, self.DESTINATION) + rangecodec.encode_request(2, 3))
        self.reactor.advance(0)
        self.assertEqual(againTransport.value(), b"")
        self.assertTrue(againTransport.disconnecting)
        again.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(len(self.connections), 2)
        self.assertEqual([r.peer for r in self.journal.records], ["198.51.100.8"])

    def test_goneBeforeTheHeaderEndsJournalsNothing(self) -> None:
        proto, _ = self.connect()
        proto.dataReceived(v2_inet(self.SOURCE, self.DESTINATION)[:20])
        proto.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.journal.records, [])
        self.assertEqual(len(self.connections), 0)

    def test_slowHeaderTimesOut(self) -> None:
        proto, transport = self.connect()
        proto.dataReceived(b"PROXY TCP4 ")
        self.reactor.advance(5)
        self.assertTrue(transport.disconnecting)

    def test_sharesTheJobSlots(self) -> None:
        """
        Behind HAProxy or not, range jobs take turns in the same slots.
        """
        direct = RangeFactory(Clock(), SyncPool(), FakeJournal())  # type: ignore[arg-type]
        proxied = direct.behindProxy()
        self.assertIs(proxied._slots, direct._slots)
        self.assertEqual((direct.proxyHeader, proxied.proxyHeader), (False, True))
        self.assertIs(proxied.trustedProxies, TRUSTED_BY_DEFAULT)


class RangeListenOptionTests(TestCase):
    """
    C{--range-listen}: endpoint descriptions for the range protocol, as
    C{--listen} for the count protocol; C{haproxy:} puts a listener behind
    HAProxy.
    """

    def parse(self, *args: str) -> tap.PrimecountOptions:
        options = tap.PrimecountOptions()
        options.parseOptions(["--journal", "none", *args])
        return options

    def test_listenersAndTheirFactories(self) -> None:
        options = self.parse(
            "--range-listen", "tcp:0:interface=127.0.0.1",
            "--range-listen", "haproxy:tcp:0:interface=127.0.0.1",
        )  # fmt: skip
        top = tap.makeService(options)
        listeners = {lsn.label: lsn.factory for lsn in top if hasattr(lsn, "factory")}
        self.assertEqual(set(listeners), {"count", "range", "range-proxy"})
        self.assertIsInstance(listeners["range-proxy"], RangeFactory)
        self.assertEqual(
            (listeners["range"].proxyHeader, listeners["range-proxy"].proxyHeader),
            (False, True),
        )

    def test_trustedProxiesReachTheFactories(self) -> None:
        """
        C{--trusted-proxies} is what both protocols' factories trust.
        """
        options = self.parse(
            "--listen", "haproxy:tcp:0:interface=127.0.0.1",
            "--range-listen", "haproxy:tcp:0:interface=127.0.0.1",
            "--trusted-proxies", "192.0.2.10,unix",
        )  # fmt: skip
        top = tap.makeService(options)
        factories = {lsn.label: lsn.factory for lsn in top if hasattr(lsn, "factory")}
        wanted = TrustedProxies.parse("192.0.2.10,unix")
        self.assertEqual(
            {label: factories[label].trustedProxies for label in ("proxy", "range-proxy")},
            {"proxy": wanted, "range-proxy": wanted},
        )

    def test_badDescriptionNamesTheOption(self) -> None:
        for description in ("nonsense:1", "haproxy:nonsense:1"):
            e = self.assertRaises(usage.UsageError, self.parse, "--range-listen", description)
            self.assertTrue(str(e).startswith("bad --range-listen"), str(e))


class FairnessTests(TestCase):
    """
    Range jobs share a few slots in arrival order.
    """

    def test_streamsTakeTurnsSegmentBySegment(self) -> None:
        """
        With one slot, a wide stream and a narrow one alternate segment by
        segment: the narrow one finishes after a handful of jobs.
        """
        clock = FakeReactor()
        pool = SyncPool(hold=True)
        factory = RangeFactory(clock, pool, FakeJournal(), segmentSize=100, maxJobs=1)  # type: ignore[arg-type]
        wide, narrow = StringTransport(), StringTransport()
        factory.stream(wide, 0, 1000000).start()
        factory.stream(narrow, 0, 300).start()
        jobs = 0
        while narrow.producer is not None:
            self.assertEqual(len(pool.held), 1)
            pool.runOne()
            clock.advance(0)
            jobs += 1
        self.assertEqual(narrow.value(), wire(0, 300)[4:])
        self.assertLessEqual(jobs, 6)

    def test_defaultSlotsLeaveAThreadFree(self) -> None:
        """
        By default range jobs never take every thread of the pool.
        """
        for size in (2, 3, 10, 64):
            pool = ThreadPool(minthreads=0, maxthreads=size)
            factory = RangeFactory(Clock(), pool, FakeJournal())
            self.assertLess(factory.maxJobs, size)
            self.assertGreaterEqual(factory.maxJobs, 1)

    def test_stoppedStreamGivesUpItsTurn(self) -> None:
        """
        A stream stopped while its job waits for a slot runs no job.
        """
        clock = FakeReactor()
        pool = SyncPool(hold=True)
        factory = RangeFactory(clock, pool, FakeJournal(), segmentSize=100, maxJobs=1)  # type: ignore[arg-type]
        first, second = StringTransport(), StringTransport()
        factory.stream(first, 0, 1000).start()
        stream: PrimeStream = factory.stream(second, 0, 1000)
        stream.start()
        stream.stopProducing()
        pool.runOne()
        clock.advance(0)
        pool.runOne()
        clock.advance(0)
        self.assertEqual(pool.segmentJobs(), 2)
        self.assertEqual(second.value(), b"")
