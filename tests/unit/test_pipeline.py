"""
Natural batching: one job in flight, everything parsed meanwhile in the
next one, taken round-robin across connections.
"""

from __future__ import annotations

from collections import Counter

from twisted.trial.unittest import SynchronousTestCase

from primecount.core import count
from primecount.core.count import Evaluation
from primecount.core.outcomes import (
    EMPTY_MESSAGE,
    INTERNAL_ERROR,
    INVALID_UTF8,
    JOURNAL_UNAVAILABLE,
    LINE_TOO_LONG,
    OK,
    Outcome,
)
from primecount.journal.records import PROTOCOL_COUNT
from primecount.metrics.recorder import NullMetrics
from primecount.server.pipeline import PendingReply, Pipeline
from tests.doubles import FakeJournal, FakeReactor, Harness, SyncPool


class Sink:
    """
    A connection as the pipeline sees it: an address and a reply callback.
    """

    def __init__(self, name: str) -> None:
        self.peer = name
        self.port = 1
        self.pending: list[PendingReply] = []
        self.ready = 0

    def requests(self, n: int) -> list[tuple[bytes, Sink, PendingReply]]:
        """
        C{n} requests from this connection, each with its pending reply.
        """
        made = []
        for i in range(n):
            pending = PendingReply()
            self.pending.append(pending)
            made.append((f"{self.peer}{i}".encode(), self, pending))
        return made

    def replyReady(self) -> None:
        self.ready += 1

    def answered(self) -> int:
        return sum(pending.reply is not None for pending in self.pending)


class NaturalBatchingTests(SynchronousTestCase):
    """
    At most one pool job at a time; what arrives meanwhile is the next job.
    """

    def setUp(self) -> None:
        self.reactor = FakeReactor()
        self.pool = SyncPool(self.reactor)
        self.journal = FakeJournal()

    def pipeline(self, **kw: int) -> Pipeline:
        return Pipeline(self.reactor, self.pool, self.journal, **kw)

    def test_oneJobInFlight(self) -> None:
        p = self.pipeline()
        a = Sink("a")
        self.pool.hold = True
        p.submit(a.requests(1))
        self.reactor.advance(0)
        p.submit(a.requests(1))
        self.reactor.advance(0)
        p.submit(a.requests(1))
        self.reactor.advance(0)
        self.assertEqual(len(self.pool.held), 1)
        self.assertEqual(p.inFlight, 3)

    def test_everythingParsedMeanwhileIsTheNextJob(self) -> None:
        p = self.pipeline()
        a, b = Sink("a"), Sink("b")
        self.pool.hold = True
        p.submit(a.requests(1))
        self.reactor.advance(0)
        p.submit(a.requests(2))
        p.submit(b.requests(3))
        self.reactor.advance(0)
        # The first job returns: the next leaves at once with all five.
        self.pool.held.pop(0)()
        self.assertEqual(self.pool.jobs, 2)
        self.assertEqual(len(self.pool.held), 1)
        self.pool.release()
        self.assertEqual(self.pool.jobs, 2)
        self.assertEqual((a.answered(), b.answered()), (3, 3))
        self.assertEqual(len(self.journal.records), 6)
        self.assertEqual(p.inFlight, 0)

    def test_dispatchesAgainOnceNothingIsInFlight(self) -> None:
        p = self.pipeline()
        a = Sink("a")
        p.submit(a.requests(1))
        self.reactor.advance(0)
        self.assertEqual(a.answered(), 1)
        # Nothing in flight again: a new request is dispatched on the next turn.
        p.submit(a.requests(1))
        self.reactor.advance(0)
        self.assertEqual((self.pool.jobs, a.answered()), (2, 2))

    def test_whenDrainedFiresOnceNothingIsInFlight(self) -> None:
        """
        L{Pipeline.whenDrained} fires at once when nothing is in flight,
        else once every accepted request is answered.
        """
        p = self.pipeline()
        self.assertIsNone(self.successResultOf(p.whenDrained()))
        a = Sink("a")
        self.pool.hold = True
        p.submit(a.requests(1))
        self.reactor.advance(0)
        p.submit(a.requests(2))
        drained = p.whenDrained()
        self.assertNoResult(drained)
        self.pool.held.pop(0)()
        self.assertNoResult(drained)
        self.pool.release()
        self.assertEqual(a.answered(), 3)
        self.assertIsNone(self.successResultOf(drained))

    def test_batchIsCapped(self) -> None:
        p = self.pipeline(maxBatch=100, share=100)
        a = Sink("a")
        p.submit(a.requests(250))
        self.pool.hold = True
        self.reactor.advance(0)
        sizes = []
        while self.pool.held:
            before = a.answered()
            self.pool.held.pop(0)()
            sizes.append(a.answered() - before)
        self.assertEqual(sizes, [100, 100, 50])

    def test_interactiveClientNotBehindPipeliners(self) -> None:
        p = self.pipeline(maxBatch=64, share=8)
        pipeliners = [Sink(f"p{i}") for i in range(5)]
        interactive = Sink("i")
        self.pool.hold = True
        for s in pipeliners:
            p.submit(s.requests(1000))
        p.submit(interactive.requests(1))
        self.reactor.advance(0)
        self.pool.held.pop(0)()
        # The first batch: the interactive request, and the cap's rest
        # shared among the pipeliners within one share of each other.
        self.assertEqual(interactive.answered(), 1)
        served = [s.answered() for s in pipeliners]
        self.assertEqual(sum(served), 63)
        self.assertLessEqual(max(served) - min(served), 8)

    def test_roundRobinAcrossBatches(self) -> None:
        # Share 2, cap 3: a a b | b b a | a a b | b b a: one cut short by the
        # cap starts the next batch, so both get the same over time.
        p = self.pipeline(maxBatch=3, share=2)
        a, b = Sink("a"), Sink("b")
        p.submit(a.requests(6))
        p.submit(b.requests(6))
        self.pool.hold = True
        self.reactor.advance(0)
        served = []
        while self.pool.held:
            before = (a.answered(), b.answered())
            self.pool.held.pop(0)()
            served.append((a.answered() - before[0], b.answered() - before[1]))
        self.assertEqual(served, [(2, 1), (1, 2), (2, 1), (1, 2)])

    def test_repliesInRequestOrderPerConnection(self) -> None:
        h = Harness()
        h.pipeline.maxBatch = 3
        h.pipeline.share = 2
        h.send(b"a\nab\nabca\nabcab\naa\n")
        self.assertEqual(
            h.replies(),
            [b"1 no\n", b"1 no\n", "2 sí\n".encode(), "2 sí\n".encode(), "2 sí\n".encode()],
        )


class RecordingMetrics(NullMetrics):
    """
    Keeps what the pipeline counts: (protocol, outcome) -> requests.
    """

    def __init__(self) -> None:
        self.counted: Counter[tuple[str, Outcome]] = Counter()

    def requests(self, protocol: str, outcome: Outcome, n: int = 1) -> None:
        self.counted[protocol, outcome] += n


class OutcomeTests(SynchronousTestCase):
    """
    Each request's L{Outcome} travels with it to the metrics: the pipeline
    counts outcome objects, it does not read them back from reply bytes.
    """

    def setUp(self) -> None:
        self.reactor = FakeReactor()
        self.pool = SyncPool(self.reactor)
        self.journal = FakeJournal()
        self.metrics = RecordingMetrics()
        self.pipeline = Pipeline(self.reactor, self.pool, self.journal, self.metrics)

    def submit(self, items: list[bytes | Evaluation]) -> Sink:
        sink = Sink("a")
        requests = []
        for item in items:
            pending = PendingReply()
            sink.pending.append(pending)
            requests.append((item, sink, pending))
        self.pipeline.submit(requests)
        self.reactor.advance(0)
        return sink

    def test_eachOutcomeCounted(self) -> None:
        sink = self.submit(
            [b"abc2a", b"", b"\xffab", b"a", Evaluation("x" * 10, outcome=LINE_TOO_LONG)]
        )
        self.assertEqual(
            self.metrics.counted,
            Counter(
                {
                    (PROTOCOL_COUNT, OK): 2,
                    (PROTOCOL_COUNT, EMPTY_MESSAGE): 1,
                    (PROTOCOL_COUNT, INVALID_UTF8): 1,
                    (PROTOCOL_COUNT, LINE_TOO_LONG): 1,
                }
            ),
        )
        self.assertEqual(
            [p.reply for p in sink.pending],
            [
                "2 sí\n".encode(),
                b"ERR empty message\n",
                b"ERR invalid UTF-8\n",
                b"1 no\n",
                b"ERR line too long\n",
            ],
        )
        self.assertEqual(
            [r.error for r in self.journal.records],
            [None, "empty message", "invalid UTF-8", None, "line too long"],
        )

    def test_journalUnavailable(self) -> None:
        self.journal.failing = True
        sink = self.submit([b"abc2a", b""])
        self.assertEqual(self.metrics.counted, Counter({(PROTOCOL_COUNT, JOURNAL_UNAVAILABLE): 2}))
        self.assertEqual([p.reply for p in sink.pending], [b"ERR journal unavailable\n"] * 2)

    def test_internalError(self) -> None:
        def broken(line: bytes) -> Evaluation:
            raise RuntimeError("test says no")

        self.patch(count, "evaluate", broken)
        sink = self.submit([b"abc2a", b"a", b"b"])
        self.assertEqual(self.metrics.counted, Counter({(PROTOCOL_COUNT, INTERNAL_ERROR): 3}))
        self.assertEqual([p.reply for p in sink.pending], [b"ERR internal error\n"] * 3)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
