# -*- test-case-name: tests.system.test_metrics_process -*-
"""
Tests for L{primecount.metrics.prometheus} with several processes: the
workers' values add up in C{PROMETHEUS_MULTIPROC_DIR}. The single-process
tests are in L{tests.unit.test_metrics}.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from typing import Any

from prometheus_client import values
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from primecount.core.outcomes import INVALID_UTF8, OK
from primecount.journal.records import PROTOCOL_COUNT
from primecount.metrics.prometheus import (
    MULTIPROCESS_DIRECTORY,
    Metrics,
)
from tests.unit.test_metrics import FakePool, scrape, tempDirectory, value


class MultiProcessTests(SynchronousTestCase):
    """
    With C{PROMETHEUS_MULTIPROC_DIR}: each process writes its own files and
    the registry sums them.

    The test process imported prometheus_client without the variable, so it
    plays a worker by doing what that import would have done: install the
    memory-mapped value store, here under a chosen pid.
    """

    def setUp(self) -> None:
        self.directory = tempDirectory(self)
        os.environ[MULTIPROCESS_DIRECTORY] = self.directory
        self.addCleanup(os.environ.pop, MULTIPROCESS_DIRECTORY)
        self.addCleanup(values.close_all_multiprocess_files)

    def asProcess(self, pid: int, act: Callable[[], Any]) -> Any:
        """
        Run C{act} as if this were process C{pid}, with its own value files.
        """
        original = values.ValueClass
        values.ValueClass = values.MultiProcessValue(lambda: pid)
        try:
            return act()
        finally:
            values.ValueClass = original

    def worker(self, pid: int, connections: int, requests: int) -> Metrics:
        """
        A worker's metrics, used as process C{pid}.
        """

        def act() -> Metrics:
            metrics = Metrics()
            for _ in range(connections):
                metrics.connectionOpened(PROTOCOL_COUNT)
            metrics.requests(PROTOCOL_COUNT, OK, requests)
            metrics.requests(PROTOCOL_COUNT, INVALID_UTF8)
            metrics.latency(PROTOCOL_COUNT, 0.0003, requests)
            metrics.journalCommit(requests, 0.002)
            return metrics

        return self.asProcess(pid, act)

    def test_workersAreSummed(self) -> None:
        self.worker(1001, connections=2, requests=10)
        self.worker(1002, connections=3, requests=500)
        supervisor = self.asProcess(1000, Metrics)
        self.assertTrue(supervisor.multiprocess)
        self.asProcess(1000, supervisor.workerRestarted)
        samples = scrape(supervisor)
        total = "primecount_requests_total"
        self.assertEqual(value(samples, total, protocol="count", outcome="ok"), 510)
        self.assertEqual(value(samples, total, protocol="count", outcome="invalid_utf8"), 2)
        self.assertEqual(value(samples, "primecount_open_connections", protocol="count"), 5)
        latency = "primecount_request_duration_seconds"
        self.assertEqual(value(samples, latency + "_count", protocol="count"), 510)
        self.assertAlmostEqual(value(samples, latency + "_sum", protocol="count"), 0.153)
        self.assertEqual(value(samples, latency + "_bucket", protocol="count", le="0.00025"), 0)
        self.assertEqual(value(samples, latency + "_bucket", protocol="count", le="0.0005"), 510)
        self.assertEqual(value(samples, "primecount_journal_batch_size_count"), 2)
        self.assertEqual(value(samples, "primecount_journal_batch_size_sum"), 510)
        self.assertEqual(value(samples, "primecount_worker_restarts_total"), 1)

    def test_deadWorkerLeavesGaugesKeepsCounts(self) -> None:
        self.worker(1001, connections=2, requests=10)
        self.worker(1002, connections=3, requests=5)
        supervisor = self.asProcess(1000, Metrics)
        supervisor.mark_process_dead(1002)
        samples = scrape(supervisor)
        self.assertEqual(value(samples, "primecount_open_connections", protocol="count"), 2)
        self.assertEqual(
            value(samples, "primecount_requests_total", protocol="count", outcome="ok"), 15
        )

    def test_threadPoolsSampled(self) -> None:
        clock = Clock()

        pool = FakePool(busy=2, backlog=7)

        def act() -> Metrics:
            metrics = Metrics(clock=clock, sampleInterval=1.0)
            metrics.watchThreadPool(pool)  # type: ignore[arg-type]
            return metrics

        metrics = self.asProcess(1001, act)
        samples = scrape(metrics)
        self.assertEqual(value(samples, "primecount_threadpool_queue_depth"), 7)
        self.assertEqual(value(samples, "primecount_threadpool_busy_threads"), 2)
        self.assertEqual(clock.getDelayedCalls()[0].getTime(), 1.0)
        pool.q.backlog = 3
        self.asProcess(1001, lambda: clock.advance(1.0))
        self.assertEqual(value(scrape(metrics), "primecount_threadpool_queue_depth"), 3)

    def test_eachWorkerApart(self) -> None:
        """
        Besides the sums, each serving process has its own sample (label
        C{pid}) of its requests, open connections, start time and journal
        state; the supervisor, which serves nothing, has none; a dead
        worker's samples go (its requests stay in the sum).
        """
        clock = Clock()
        clock.advance(1_800_000_000)

        def serving(pid: int, connections: int, requests: int, failing: bool) -> Metrics:
            def act() -> Metrics:
                metrics = Metrics(clock=clock, sampleInterval=1.0)
                metrics.watchThreadPool(FakePool(busy=0, backlog=0))  # type: ignore[arg-type]
                for _ in range(connections):
                    metrics.connectionOpened(PROTOCOL_COUNT)
                metrics.connectionClosed(PROTOCOL_COUNT)
                metrics.requests(PROTOCOL_COUNT, OK, requests)
                metrics.requests(PROTOCOL_COUNT, INVALID_UTF8)
                metrics.journalCommit(requests, 0.001)
                if failing:
                    metrics.journalFailed(1)
                return metrics

            return self.asProcess(pid, act)

        serving(1001, connections=3, requests=10, failing=False)
        clock.advance(30)
        serving(1002, connections=1, requests=500, failing=True)
        supervisor = self.asProcess(1000, Metrics)
        samples = scrape(supervisor)
        for pid, requests, connections, start, since in (
            ("1001", 11, 2, 1_800_000_000, 0),
            ("1002", 501, 0, 1_800_000_030, 1_800_000_030),
        ):
            self.assertEqual(value(samples, "primecount_worker_requests", pid=pid), requests)
            self.assertEqual(
                value(samples, "primecount_worker_open_connections", pid=pid), connections
            )
            self.assertEqual(value(samples, "primecount_worker_start_time_seconds", pid=pid), start)
            state = "primecount_journal_unavailable_since_seconds"
            self.assertEqual(value(samples, state, pid=pid), since)
        self.assertIsNone(value(samples, "primecount_worker_requests", pid="1000"))
        self.assertEqual(
            value(samples, "primecount_requests_total", protocol="count", outcome="ok"), 510
        )
        supervisor.mark_process_dead(1002)
        samples = scrape(supervisor)
        self.assertIsNone(value(samples, "primecount_worker_requests", pid="1002"))
        self.assertEqual(value(samples, "primecount_worker_requests", pid="1001"), 11)
        self.assertEqual(
            value(samples, "primecount_requests_total", protocol="count", outcome="ok"), 510
        )

    def test_threadPoolsNeedAClock(self) -> None:
        """
        In multiprocess mode, watching a pool without a clock is refused
        rather than sampling on the global reactor.
        """
        metrics = self.asProcess(1001, Metrics)
        error = self.assertRaises(ValueError, metrics.watchThreadPool, FakePool(busy=0, backlog=0))
        self.assertIn("clock", str(error))

    def test_realWorkerProcess(self) -> None:
        """
        A real process with the variable set before its first import writes
        values that this process's registry sums with its own.
        """
        script = (
            "import os\n"
            "from primecount.metrics.prometheus import Metrics\n"
            "m = Metrics()\n"
            "from primecount.core.outcomes import OK\n"
            "m.requests('count', OK, 7)\n"
            "m.connectionOpened('count')\n"
            "m.latency('count', 0.002, 3)\n"
            "print(os.getpid())\n"
        )
        env = dict(os.environ, **{MULTIPROCESS_DIRECTORY: self.directory})
        done = subprocess.run(
            [sys.executable, "-c", script],
            env=env,
            capture_output=True,
            check=True,
            timeout=30,
        )
        pid = int(done.stdout)
        self.worker(1001, connections=1, requests=10)
        supervisor = self.asProcess(1000, Metrics)
        samples = scrape(supervisor)
        total = "primecount_requests_total"
        self.assertEqual(value(samples, total, protocol="count", outcome="ok"), 17)
        self.assertEqual(value(samples, "primecount_open_connections", protocol="count"), 2)
        latency = "primecount_request_duration_seconds_count"
        self.assertEqual(value(samples, latency, protocol="count"), 13)
        supervisor.mark_process_dead(pid)
        samples = scrape(supervisor)
        self.assertEqual(value(samples, "primecount_open_connections", protocol="count"), 1)
        self.assertEqual(value(samples, total, protocol="count", outcome="ok"), 17)
