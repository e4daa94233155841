# -*- test-case-name: tests.unit.test_budget -*-
"""
The memory budget (L{primecount.server.budget}) on its own, and the count
and range protocols holding memory against it. A real server under attack
is in L{tests.system.test_budget_process}.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.testing import StringTransport
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from primecount.core import rangecodec
from primecount.core.count import expected_reply
from primecount.server import countprotocol as protocolModule
from primecount.server.budget import (
    REQUEST_OVERHEAD,
    MemoryBudget,
    parse_size,
    size_text,
)
from primecount.server.rangeprotocol import RangeFactory
from primecount.server.transport import HIGH_WATER
from tests.doubles import FakeJournal, FakeReactor, Harness, SyncPool


class Holder:
    """
    A connection as the budget sees it; it pauses when it has something to
    answer (C{busy}).
    """

    def __init__(self, peer: str = "192.0.2.1", busy: bool = True) -> None:
        self.held = 0
        self.peer = peer
        self.busy = busy
        self.paused = False

    def pauseForMemory(self) -> bool:
        if self.busy:
            self.paused = True
        return self.busy

    def resumeForMemory(self) -> None:
        self.paused = False


class BudgetTests(SynchronousTestCase):
    """
    L{MemoryBudget}: the sum, the shares, pausing and resuming.
    """

    def members(self, budget: MemoryBudget, n: int, **kw: Any) -> list[Holder]:
        holders = [Holder(peer=f"192.0.2.{i}", **kw) for i in range(n)]
        for holder in holders:
            budget.join(holder)
        return holders

    def test_chargesAndReleasesAddUp(self) -> None:
        budget = MemoryBudget(1000)
        a, b = self.members(budget, 2)
        budget.charge(a, 300)
        budget.charge(b, 200)
        budget.release(a, 100)
        self.assertEqual((budget.held, a.held, b.held), (400, 200, 200))

    def test_overTheLimitPausesOnlyWhoHoldsMoreThanItsShare(self) -> None:
        budget = MemoryBudget(1000)
        hog, modest = self.members(budget, 2)  # shares of 500
        budget.charge(hog, 900)
        self.assertFalse(hog.paused)  # under the limit: anything goes
        budget.charge(modest, 200)
        self.assertFalse(modest.paused)  # over, but within its share
        budget.charge(hog, 1)
        self.assertTrue(hog.paused)
        self.assertEqual(list(budget.paused), [hog])
        self.assertEqual(budget.pauses, 1)

    def test_holderWithNothingToAnswerIsNotPaused(self) -> None:
        """
        Pausing a connection that has no request in flight would free
        nothing (its input is bounded by --max-line on its own) and nothing
        would ever resume it.
        """
        budget = MemoryBudget(1000)
        [idle] = self.members(budget, 1, busy=False)
        budget.charge(idle, 2000)
        self.assertEqual(budget.paused, {})

    def test_drainingToThreeQuartersResumesEveryone(self) -> None:
        budget = MemoryBudget(1000)
        a, b, c = self.members(budget, 3)  # shares of 333
        for holder in (a, b, c):
            budget.charge(holder, 400)
        budget.charge(b, 1)
        self.assertEqual(list(budget.paused), [c, b])
        budget.release(a, 400)  # 801: still over three quarters
        self.assertTrue(b.paused and c.paused)
        budget.release(c, 51)  # 750
        self.assertEqual((b.paused, c.paused, budget.paused), (False, False, {}))

    def test_holderUnderHalfItsShareResumesAlone(self) -> None:
        budget = MemoryBudget(1000)
        a, b = self.members(budget, 2)  # shares of 500
        budget.charge(a, 600)
        budget.charge(b, 700)
        self.assertEqual(list(budget.paused), [b])
        budget.release(b, 449)  # 851 in all, b holds 251
        self.assertTrue(b.paused)
        budget.release(b, 1)
        self.assertFalse(b.paused)

    def test_leavingForgetsAPausedHolder(self) -> None:
        budget = MemoryBudget(1000)
        [a] = self.members(budget, 1)
        budget.charge(a, 1001)
        budget.release(a, 1001)
        budget.leave(a)
        self.assertEqual((budget.members, budget.paused, budget.held), (0, {}, 0))

    def test_pausingIsLoggedOncePerEpisode(self) -> None:
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        budget = MemoryBudget(1000)
        holders = self.members(budget, 10)
        for _ in range(20):
            for holder in holders:
                budget.charge(holder, 200)
            for holder in holders:
                budget.release(holder, 200)
        self.assertEqual(budget.pauses, 20 * 5)
        said = [formatEvent(e) for e in events if "--max-memory" in e.get("log_format", "")]
        self.assertEqual(len(said), 1, said)
        self.assertIn("over --max-memory 1000 bytes", said[0])


class SizeTests(SynchronousTestCase):
    """
    C{--max-memory} values.
    """

    def test_mebibytesByDefaultAndUnits(self) -> None:
        self.assertEqual(parse_size("96"), 96 << 20)
        self.assertEqual(parse_size("2048K"), 2 << 20)
        self.assertEqual(parse_size("256m"), 256 << 20)
        self.assertEqual(parse_size("1GiB"), 1 << 30)
        self.assertEqual(parse_size("2 GB"), 2 << 30)

    def test_badValuesNameTheOption(self) -> None:
        for bad in ("", "lots", "-5", "1.5G", "12T", "100K"):
            with self.assertRaises(ValueError) as caught:
                parse_size(bad)
            self.assertIn("--max-memory", str(caught.exception))

    def test_sizeText(self) -> None:
        self.assertEqual(size_text(96 << 20), "96 MiB")
        self.assertEqual(size_text(1536 << 20), "1.5 GiB")
        self.assertEqual(size_text(100), "100 bytes")


LONG = b"x" * 8000 + b"abc2a"


class CountProtocolTests(SynchronousTestCase):
    """
    The count protocol charges what it holds and stops reading when the
    budget says so; nothing is lost or reordered.
    """

    def test_readingStopsAndResumesAndNothingIsLostOrReordered(self) -> None:
        budget = MemoryBudget(64 << 10)
        h = Harness(budget=budget, timeout=0)
        h.pool.hold = True
        interactive, quiet = h.connect()
        messages = [LONG + b"%d" % i for i in range(30)]  # about 240 KB
        stream = b"".join(m + b"\n" for m in messages)
        for i in range(0, len(stream), 16384):
            if h.transport.producerState == "paused":
                break
            h.send(stream[i : i + 16384])
        sent = i
        # Over budget, the pipelining connection is no longer read ...
        self.assertEqual(h.transport.producerState, "paused")
        self.assertLess(sent, len(stream))
        self.assertGreater(budget.held, budget.limit)
        self.assertEqual(list(budget.paused), [h.protocol])
        # ... while a client holding little is still read and answered.
        h.send(b"abc2a\n", quiet)
        self.assertEqual(interactive.producerState, "producing")
        h.pool.release()
        self.assertEqual(h.replies(interactive), ["2 sí\n".encode()])
        # Drained, it is read again; the rest of its stream follows.
        self.assertEqual(h.transport.producerState, "producing")
        h.send(stream[sent:])
        self.assertEqual(h.replies(), [expected_reply(m) for m in messages])
        self.assertEqual(budget.held, 0)

    def test_linesBeyondMaxPendingWaitAsBytesThenAreAnswered(self) -> None:
        """
        One read of 3,000 short lines: 1,024 become requests (each costs
        far more than its bytes), the rest wait as bytes, and all are
        answered, in order.
        """
        budget = MemoryBudget()
        h = Harness(budget=budget, timeout=0)
        h.pool.hold = True
        messages = [b"a%d" % i for i in range(3000)]
        stream = b"".join(m + b"\n" for m in messages)
        h.send(stream)
        self.assertEqual(h.pipeline.inFlight, protocolModule.MAX_PENDING)
        self.assertEqual(h.transport.producerState, "paused")
        parsed = sum(len(m) + REQUEST_OVERHEAD for m in messages[: protocolModule.MAX_PENDING])
        unparsed = len(stream) - sum(len(m) + 1 for m in messages[: protocolModule.MAX_PENDING])
        self.assertEqual(budget.held, parsed + unparsed)
        h.pool.release()
        self.assertEqual(h.replies(), [expected_reply(m) for m in messages])
        self.assertEqual(h.transport.producerState, "producing")
        self.assertEqual(budget.held, 0)

    def test_stopAnswersLinesWaitingAsBytes(self) -> None:
        h = Harness(timeout=0)
        h.pool.hold = True
        messages = [b"b%d" % i for i in range(1500)]
        h.send(b"".join(m + b"\n" for m in messages))
        h.connections.closeAll()
        h.pool.release()
        self.assertEqual(h.replies(), [expected_reply(m) for m in messages])
        self.assertTrue(h.transport.disconnecting)

    def test_halfCloseAnswersLinesWaitingAsBytesAndTheTail(self) -> None:
        h = Harness(timeout=0)
        h.pool.hold = True
        messages = [b"c%d" % i for i in range(1500)]
        h.send(b"".join(m + b"\n" for m in messages) + b"tail")
        h.protocol.readConnectionLost()
        h.pool.release()
        self.assertEqual(h.replies(), [expected_reply(m) for m in [*messages, b"tail"]])

    def test_closeAfterReplyAnswersOnlyTheFirstLine(self) -> None:
        h = Harness(timeout=0, closeAfterReply=True)
        h.send(b"abc2a\n" * 1500)
        self.assertEqual(h.replies(), ["2 sí\n".encode()])
        self.assertTrue(h.transport.disconnecting)
        self.assertEqual(h.factory.budget.held, 0)

    def test_lostConnectionStaysChargedUntilItsRequestsAreAnswered(self) -> None:
        """
        The requests of a client that left are still in the pipeline, to be
        journalled: their memory is let go when they are answered.
        """
        budget = MemoryBudget()
        h = Harness(budget=budget, timeout=0)
        h.pool.hold = True
        h.send(b"abc2a\n" * 10 + b"partial")
        h.protocol.connectionLost(None)
        self.assertEqual(budget.held, 10 * (5 + REQUEST_OVERHEAD))
        self.assertEqual(budget.members, 1)
        h.pool.release()
        self.assertEqual((budget.held, budget.members), (0, 0))

    def test_unsentRepliesCountWhileTheClientDoesNotRead(self) -> None:
        budget = MemoryBudget()
        h = Harness(budget=budget, timeout=0)
        h.protocol.pauseProducing()  # the transport's buffer is full
        held = budget.held
        self.assertGreater(held, 0)
        h.send(b"abc2a\n")
        self.assertEqual(h.replies(), ["2 sí\n".encode()])
        h.protocol.resumeProducing()  # the transport sent everything
        self.assertEqual(budget.held, 0)


class FileTransport(StringTransport):
    """
    A transport that holds what it is written, as a C{FileDescriptor} whose
    client reads nothing does (C{dataBuffer}), and pauses its streaming
    producer once, when that passes the high-water mark.
    """

    def __init__(self) -> None:
        from tests.unit.test_rangeprotocol import PEER

        super().__init__(peerAddress=PEER)
        self.producerPaused = False

    @property
    def dataBuffer(self) -> bytes:
        return self.value()

    def write(self, data: bytes) -> None:
        super().write(data)
        if (
            len(self.value()) > HIGH_WATER
            and not self.producerPaused
            and self.producer is not None
            and self.streaming
        ):
            self.producerPaused = True
            self.producer.pauseProducing()


class RangeProtocolTests(SynchronousTestCase):
    """
    A range stream's unsent primes count against the budget; over it, a
    stream whose client is behind sieves nothing ahead.
    """

    def stream(
        self,
        budget: MemoryBudget,
        segmentSize: int = 1000,
        transport: StringTransport | None = None,
        pool: SyncPool | None = None,
    ) -> tuple[Any, StringTransport, SyncPool]:
        from tests.unit.test_rangeprotocol import PEER, PausingTransport

        reactor = FakeReactor()
        pool = pool or SyncPool()
        journal = FakeJournal()
        factory = RangeFactory(reactor, pool, journal, segmentSize=segmentSize, budget=budget)  # type: ignore[arg-type]
        protocol = factory.buildProtocol(PEER)
        transport = transport or PausingTransport(peerAddress=PEER)
        protocol.makeConnection(transport)
        protocol.dataReceived(rangecodec.encode_request(0, 1_000_000))
        reactor.advance(0)
        return protocol, transport, pool

    def test_unsentPrimesAreCharged(self) -> None:
        budget = MemoryBudget()
        protocol, _, pool = self.stream(budget)
        self.assertGreater(budget.held, 0)
        self.assertEqual(pool.segmentJobs(), 2)  # the one sent, the one ahead
        protocol.connectionLost(None)
        self.assertEqual((budget.held, budget.members), (0, 0))

    def test_overBudgetNothingIsSievedAhead(self) -> None:
        budget = MemoryBudget(128 << 10)
        hog = Holder()
        budget.join(hog)
        budget.charge(hog, budget.limit - 4096)  # somebody else holds most
        protocol, transport, pool = self.stream(budget)
        # Its first segment fit; over the budget then, none ahead of it.
        self.assertEqual(pool.segmentJobs(), 1)
        self.assertEqual(list(budget.paused), [protocol])
        # The others let go, the client takes what was sent: it goes on.
        budget.release(hog, budget.limit - 4096)
        transport.producer.resumeProducing()  # type: ignore[union-attr]
        protocol.factory.reactor.advance(0)
        # The next segment, and (sent, paused again) the one ahead of it.
        self.assertEqual(pool.segmentJobs(), 3)
        self.assertEqual(budget.paused, {})

    def test_overBudgetNewStreamsWaitForRoom(self) -> None:
        """
        Over the budget, a stream sieves a segment only while it holds less
        than its share with it: what range clients that never read make the
        process hold stays within the budget's bound however many connect.
        Before, every connection that asked for a range added segments up
        to its transport's high-water mark however far over the budget the
        process was (300 range clients that never read held 275 MB against
        C{--max-memory 32}).
        """
        budget = MemoryBudget(512 << 10)
        hog = Holder()
        budget.join(hog)
        budget.charge(hog, budget.limit)  # somebody else holds it all
        pool = SyncPool()
        # Segments of ~72 KiB: each fills its transport past the high-water
        # mark, as a client that reads nothing makes it.
        connections = [
            self.stream(budget, segmentSize=200_000, transport=FileTransport(), pool=pool)
            for _ in range(20)
        ]
        held = sum(len(transport.value()) for _, transport, _ in connections)
        self.assertLessEqual(held, 2 * budget.limit)
        waiting = [protocol for protocol, _, _ in connections if protocol in budget.paused]
        self.assertGreater(len(waiting), 10)
        # Room again (the others let go, the streams that hold segments are
        # dropped): those that waited sieve.
        jobs = pool.segmentJobs()
        budget.release(hog, budget.limit)
        for protocol, _, _ in connections:
            if protocol not in waiting:
                protocol.connectionLost(None)
        self.assertGreater(pool.segmentJobs(), jobs)

    def test_everySegmentHeldIsCharged(self) -> None:
        """
        A transport pauses its producer once, when its buffer passes the
        high-water mark; the segment sieved ahead and written after that
        is held too, and charged: before, only what the transport held at
        the pause was.
        """
        budget = MemoryBudget()
        transport = FileTransport()
        protocol, transport, pool = self.stream(budget, segmentSize=200_000, transport=transport)
        self.assertEqual(pool.segmentJobs(), 2)  # the one sent, the one ahead
        self.assertEqual(budget.held, len(transport.value()))
        protocol.connectionLost(None)
        self.assertEqual((budget.held, budget.members), (0, 0))
