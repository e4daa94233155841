"""
The idle sweep: one periodic look at every connection's last activity.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from primecount.server.idle import IdleSweep


class Conn:
    def __init__(self) -> None:
        self.lastActive: float | None = None
        self.timedOut = 0

    def idleTimeout(self) -> None:
        self.timedOut += 1


class IdleSweepTests(SynchronousTestCase):
    def test_closedAfterTimeoutWithinOneInterval(self) -> None:
        clock = Clock()
        sweep = IdleSweep(clock, 5)
        c = Conn()
        sweep.watch(c)
        clock.advance(4.9)
        self.assertEqual(c.timedOut, 0)
        clock.advance(sweep.interval + 0.1)
        self.assertEqual(c.timedOut, 1)

    def test_activityPostponesTheTimeout(self) -> None:
        clock = Clock()
        sweep = IdleSweep(clock, 5)
        c = Conn()
        sweep.watch(c)
        for _ in range(10):
            clock.advance(4)
            c.lastActive = sweep.now()
        self.assertEqual(c.timedOut, 0)
        clock.advance(5 + sweep.interval)
        self.assertEqual(c.timedOut, 1)

    def test_stillOpenAWholeTimeoutLaterIsToldAgain(self) -> None:
        clock = Clock()
        sweep = IdleSweep(clock, 1)
        c = Conn()
        sweep.watch(c)
        clock.pump([0.1] * 11)
        self.assertEqual(c.timedOut, 1)
        clock.pump([0.1] * 5)
        self.assertEqual(c.timedOut, 1)
        clock.pump([0.1] * 6)
        self.assertEqual(c.timedOut, 2)

    def test_pausedConnectionNeverTimesOut(self) -> None:
        clock = Clock()
        sweep = IdleSweep(clock, 1)
        c = Conn()
        sweep.watch(c)
        c.lastActive = None
        clock.pump([0.5] * 20)
        self.assertEqual(c.timedOut, 0)

    def test_unwatchedIsForgottenAndTheLoopStops(self) -> None:
        clock = Clock()
        sweep = IdleSweep(clock, 1)
        c = Conn()
        sweep.watch(c)
        sweep.unwatch(c)
        clock.pump([0.1] * 30)
        self.assertEqual(c.timedOut, 0)
        self.assertEqual(clock.getDelayedCalls(), [])
        # Watching again restarts it.
        sweep.watch(c)
        clock.pump([0.1] * 12)
        self.assertEqual(c.timedOut, 1)

    def test_oneTimerForManyConnections(self) -> None:
        clock = Clock()
        sweep = IdleSweep(clock, 5)
        conns = [Conn() for _ in range(100)]
        for c in conns:
            sweep.watch(c)
        self.assertEqual(len(clock.getDelayedCalls()), 1)

    def test_zeroDisables(self) -> None:
        clock = Clock()
        sweep = IdleSweep(clock, 0)
        c = Conn()
        sweep.watch(c)
        clock.pump([1.0] * 100)
        self.assertEqual((c.timedOut, clock.getDelayedCalls()), (0, []))

    def test_stop(self) -> None:
        clock = Clock()
        sweep = IdleSweep(clock, 1)
        sweep.watch(Conn())
        sweep.stop()
        self.assertEqual(clock.getDelayedCalls(), [])
