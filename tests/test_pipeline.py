"""
Natural batching: one job in flight, everything parsed meanwhile in the
next one, taken round-robin across connections.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from primecount.server.pipeline import Pipeline, Slot

from .helpers import FakeJournal, FakeReactor, Harness, SyncPool


class Sink:
    """
    A connection as the pipeline sees it: an address and a reply callback.
    """

    def __init__(self, name: str) -> None:
        self.host = name
        self.port = 1
        self.slots: list[Slot] = []
        self.ready = 0

    def requests(self, n: int) -> list[tuple[bytes, Sink, Slot]]:
        """
        C{n} requests from this connection, with fresh slots.
        """
        made = []
        for i in range(n):
            slot = Slot()
            self.slots.append(slot)
            made.append((f"{self.host}{i}".encode(), self, slot))
        return made

    def replyReady(self) -> None:
        self.ready += 1

    def answered(self) -> int:
        return sum(slot.reply is not None for slot in self.slots)


class NaturalBatchingTests(SynchronousTestCase):
    """
    At most one pool job at a time; what arrives meanwhile is the next job.
    """

    def setUp(self) -> None:
        self.reactor = FakeReactor()
        self.pool = SyncPool()
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

    def test_idleAfterLastJob(self) -> None:
        p = self.pipeline()
        a = Sink("a")
        p.submit(a.requests(1))
        self.reactor.advance(0)
        self.assertEqual(a.answered(), 1)
        # Idle again: a new request is dispatched on the next turn.
        p.submit(a.requests(1))
        self.reactor.advance(0)
        self.assertEqual((self.pool.jobs, a.answered()), (2, 2))

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
