"""
C{--cpu-affinity}: parsing, the CPU chosen per process, and pinning.
"""

from __future__ import annotations

import contextlib
import os
import threading

from twisted.trial.unittest import SynchronousTestCase

from primecount.server import placement
from primecount.server.placement import Placement, choose, parse
from primecount.testing.processes import missing


class ParseTests(SynchronousTestCase):
    def test_keywords(self) -> None:
        self.assertEqual(parse("auto"), Placement("auto"))
        self.assertEqual(parse(" None "), Placement("none"))

    def test_listsAndRanges(self) -> None:
        self.assertEqual(parse("0"), Placement("list", (0,)))
        self.assertEqual(parse("3,0-2,1"), Placement("list", (3, 0, 1, 2)))
        self.assertEqual(str(parse("0-1")), "0,1")

    def test_badValuesNameTheRule(self) -> None:
        for bad in ("", "x", "1-", "-1", "2-1", "0,,1", "1.5"):
            with self.assertRaises(ValueError) as caught:
                parse(bad)
            self.assertIn("such as 0", str(caught.exception), bad)


class ChooseTests(SynchronousTestCase):
    def test_noneLeavesItToTheScheduler(self) -> None:
        self.assertIsNone(choose(parse("none"), 0, {0, 1}))

    def test_autoSpreadsProcessesOverUsableCPUs(self) -> None:
        auto = parse("auto")
        self.assertEqual([choose(auto, i, {2, 5, 7}) for i in range(4)], [2, 5, 7, 2])

    def test_autoWithOneUsableCPUChoosesNothing(self) -> None:
        self.assertIsNone(choose(parse("auto"), 0, {3}))

    def test_listWrapsAround(self) -> None:
        listed = parse("1,0")
        self.assertEqual([choose(listed, i, {0, 1}) for i in range(3)], [1, 0, 1])

    def test_unusableCPUIsAnError(self) -> None:
        with self.assertRaises(ValueError) as caught:
            choose(parse("9"), 0, {0, 1})
        self.assertIn("CPU 9 is not available", str(caught.exception))


class PinTests(SynchronousTestCase):
    def test_pinsEveryThreadAndLaterOnes(self) -> None:
        if not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2:
            raise missing("pinning threads needs two usable CPUs and os.sched_setaffinity")
        before = os.sched_getaffinity(0)
        cpu = max(before)
        started = threading.Event()
        finish = threading.Event()
        seen: dict[str, set[int]] = {}

        def early() -> None:
            started.set()
            finish.wait(10)
            seen["early"] = os.sched_getaffinity(0)

        thread = threading.Thread(target=early)
        thread.start()
        started.wait(10)
        try:
            placement.pin_process(cpu)
            late = threading.Thread(target=lambda: seen.setdefault("late", os.sched_getaffinity(0)))
            late.start()
            late.join(10)
            finish.set()
            thread.join(10)
            self.assertEqual(seen, {"early": {cpu}, "late": {cpu}})
        finally:
            for tid in os.listdir("/proc/self/task"):
                with contextlib.suppress(ProcessLookupError):
                    os.sched_setaffinity(int(tid), before)
