# -*- test-case-name: tests.unit.test_metrics,tests.system.test_metrics_process -*-
"""
Prometheus metrics: the C{primecount_*} families of a process.

One L{Metrics} per process holds the C{primecount_*} families; the server
calls its methods on the reactor thread, once per request batch, so each is
a couple of dictionary lookups and locked additions (about a microsecond;
safe from other threads too, such as the journal writer's). When C{--metrics-port}
is off the server holds a L{primecount.metrics.recorder.NullMetrics}
instead. Both satisfy L{primecount.metrics.recorder.MetricsRecorder}; the
page that serves the families is L{primecount.metrics.http}.

Families (labels in braces)::

    primecount_requests_total{protocol, outcome}        counter
    primecount_request_duration_seconds{protocol}       histogram
    primecount_open_connections{protocol}               gauge (livesum)
    primecount_journal_batch_size                       histogram
    primecount_journal_commit_seconds                   histogram
    primecount_journal_failed_records_total             counter
    primecount_worker_restarts_total                    counter
    primecount_threadpool_queue_depth                   gauge (livesum)
    primecount_threadpool_busy_threads                  gauge (livesum)
    primecount_journal_unavailable_since_seconds        gauge (liveall)

and, with several processes only, one sample per worker process (label
C{pid}) of::

    primecount_worker_requests                          gauge (liveall)
    primecount_worker_open_connections                  gauge (liveall)
    primecount_worker_start_time_seconds                gauge (liveall)

plus C{process_*} and C{python_*} of the process serving C{/metrics}.

C{primecount_journal_unavailable_since_seconds} is the journal's state: 0
while it commits, the time (seconds since the epoch) its current failure
episode began while commits fail (requests answered C{ERR journal
unavailable}). It follows L{Metrics.journalCommit} and
L{Metrics.journalFailed}, which the journal calls anyway, and appears
with the journal's first commit or failure (never with C{--journal none}).

Label values are bounded: C{protocol} is a constant from code
(L{primecount.journal.records.PROTOCOL_COUNT}, L{primecount.journal.records.PROTOCOL_RANGE}), and C{outcome}
is the label of an L{primecount.core.outcomes.Outcome}, from that module's
one table (L{primecount.core.outcomes.LABELS}). No request data ever
becomes a label.

Several processes (C{--workers N}) use prometheus_client's multiprocess
mode. The supervisor creates an empty directory and puts its path in the
environment variable C{PROMETHEUS_MULTIPROC_DIR} for itself and for its
workers, before any of them constructs a L{Metrics} (prometheus_client reads
the variable once, when it is first imported, and this module imports it
only when a L{Metrics} is built). Each process then writes its values to
memory-mapped files named after its pid in that directory, and the
C{/metrics} page (served by the supervisor) sums them all with a
C{MultiProcessCollector}. When a worker exits the supervisor calls
L{Metrics.mark_process_dead} with its pid, which drops that worker's
live gauges (its open connections, its pool) while its counters keep
counting in the totals. The directory belongs to the supervisor: create it
empty at start and remove it at exit.

The sums hide how the work spreads over the workers (the kernel hands new
connections to whichever worker accepts first). So each serving process
also keeps the C{primecount_worker_*} gauges and its journal's state in
C{liveall} mode: one sample per live worker, labelled with its C{pid}
(C{primecount top} shows them as rows under their host). They appear
when the process starts watching its thread pool (L{Metrics.watchThreadPool}):
the supervisor serves nothing and has none.
"""

from __future__ import annotations

import os
import time
from bisect import bisect_left
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
    from prometheus_client.metrics_core import Metric
    from twisted.internet.interfaces import IReactorTime
    from twisted.internet.task import LoopingCall
    from twisted.python.threadpool import ThreadPool

    from primecount.core.outcomes import Outcome

#: The environment variable that turns on prometheus_client's multiprocess
#: mode; its value is the directory the processes share.
MULTIPROCESS_DIRECTORY = "PROMETHEUS_MULTIPROC_DIR"


def _steps(low: float, high: float) -> tuple[float, ...]:
    """
    The bucket bounds 1, 2.5, 5 times each power of ten, from C{low} to
    C{high}: 0.0001, 0.00025, 0.0005, 0.001, ...
    """
    found = []
    for exponent in range(-9, 10):
        for mantissa in ("1", "2.5", "5"):
            bound = float(f"{mantissa}e{exponent}")  # exact decimals: 0.00025
            if low <= bound <= high:
                found.append(bound)
    return tuple(found)


#: Upper bounds of C{primecount_request_duration_seconds}: 50 µs to 5 s.
LATENCY_BUCKETS = _steps(0.00005, 5.0)

#: Upper bounds of C{primecount_journal_batch_size}, in records.
BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)

#: Upper bounds of C{primecount_journal_commit_seconds}: 100 µs to 10 s.
COMMIT_BUCKETS = _steps(0.0001, 10.0)


def _observe(histogram: Histogram, amount: float, n: int) -> None:
    """
    Add C{n} observations of C{amount} to one histogram at once.

    prometheus_client's C{Histogram.observe} adds one observation: the
    amount to C{_sum} and one to the first bucket whose upper bound holds
    it (buckets are stored per bound and accumulated when collected). The
    same two values, stepped by C{amount * n} and C{n}, are C{n}
    observations, and this works on both value stores (in memory and the
    multiprocess files). The bucket is found by bisection rather than the
    linear scan of C{observe}.

    Private API, used here only: prometheus_client has no public way to add
    C{n} equal observations, and calling C{observe} once per request of a
    batch (up to hundreds per pool job) would cost the reactor thread
    hundreds of locked updates instead of two. C{tests.unit.test_metrics} checks
    that the result equals C{n} calls of C{observe}, so a change of these
    internals fails there.

    @param histogram: a histogram without labels, or one labelled child.
    @param amount: the observed value; a negative value or NaN (a clock
        stepping back) counts as 0.
    @param n: how many observations.
    """
    if not amount >= 0.0:
        amount = 0.0
    histogram._sum.inc(amount * n)
    histogram._buckets[bisect_left(histogram._upper_bounds, amount)].inc(n)


def _poolLoad(pools: list[ThreadPool]) -> tuple[int, int]:
    """
    The backlog and the busy threads of some thread pools, summed.

    @param pools: the pools.
    @return: work waiting for a thread, and threads at work.
    """
    backlog = busy = 0
    for pool in pools:
        backlog += pool.q.qsize()
        busy += len(pool.working)
    return backlog, busy


class _PoolCollector:
    """
    The thread-pool gauges of a single process, read at scrape time.

    @ivar pools: the watched pools.
    """

    def __init__(self) -> None:
        self.pools: list[ThreadPool] = []

    def collect(self) -> Iterator[Metric]:
        """
        Yield C{primecount_threadpool_queue_depth} and
        C{primecount_threadpool_busy_threads}.
        """
        from prometheus_client.core import GaugeMetricFamily

        backlog, busy = _poolLoad(self.pools)
        yield GaugeMetricFamily(
            "primecount_threadpool_queue_depth",
            "Work waiting for a thread in the watched thread pools.",
            value=backlog,
        )
        yield GaugeMetricFamily(
            "primecount_threadpool_busy_threads",
            "Threads at work in the watched thread pools.",
            value=busy,
        )


class _WorkerGauges:
    """
    The figures of one serving process among several, each a C{liveall}
    gauge: the page shows one sample per live worker (label C{pid}).

    @ivar requests: replies sent by this process since it started.
    @ivar connections: connections open in this process.
    """

    def __init__(self, started: float) -> None:
        """
        @param started: when this process started, seconds since the epoch.
        """
        from prometheus_client import Gauge

        self.requests = Gauge(
            "primecount_worker_requests",
            "Replies sent by this worker process since it started.",
            multiprocess_mode="liveall",
            registry=None,
        )
        self.connections = Gauge(
            "primecount_worker_open_connections",
            "Connections open in this worker process.",
            multiprocess_mode="liveall",
            registry=None,
        )
        start = Gauge(
            "primecount_worker_start_time_seconds",
            "When this worker process started, seconds since the epoch.",
            multiprocess_mode="liveall",
            registry=None,
        )
        start.set(started)


class Metrics:
    """
    The C{primecount_*} metric families of this process.

    Without C{PROMETHEUS_MULTIPROC_DIR} the families live in memory, in a
    registry of this instance's own (never prometheus_client's global
    C{REGISTRY}), which L{registry} serves together with the process and
    Python collectors.

    With it, the families are registered nowhere: their values go to this
    process's files in the directory, and L{registry} is a fresh registry
    whose C{MultiProcessCollector} reads every process's files (prometheus_client
    forbids serving a registry that holds both), plus the process collector
    of the process that serves it. One L{Metrics} per process: two would
    overwrite each other's values in the shared files.

    @ivar registry: what C{/metrics} serves.
    @ivar multiprocess: whether multiprocess mode is on.
    """

    def __init__(self, clock: IReactorTime | None = None, sampleInterval: float = 1.0) -> None:
        """
        @param clock: the reactor the process runs on; C{None} in a process
            that watches no pool. In multiprocess mode it samples watched
            thread pools every C{sampleInterval} seconds (the supervisor
            that serves C{/metrics} cannot see a worker's pools); in either
            mode it dates the start of a journal failure episode (without
            it, C{time.time}).
        @param sampleInterval: seconds between thread-pool samples in
            multiprocess mode.
        @raise RuntimeError: C{PROMETHEUS_MULTIPROC_DIR} was set after
            prometheus_client was imported, too late for it to take effect.
        """
        from prometheus_client import (
            CollectorRegistry,
            Counter,
            Gauge,
            Histogram,
            PlatformCollector,
            ProcessCollector,
            values,
        )

        directory = os.environ.get(MULTIPROCESS_DIRECTORY)
        if directory and values.ValueClass is values.MutexValue:
            raise RuntimeError(
                f"{MULTIPROCESS_DIRECTORY} was set after prometheus_client was "
                "imported; set it before the first import"
            )
        self.multiprocess = bool(directory)
        self._directory = directory
        self._clock = clock
        # The epoch seconds of that clock (zope interfaces confuse mypy's
        # view of its bound methods).
        self._wallClock: Callable[[], float] = (
            time.time if clock is None else clock.seconds  # type: ignore[misc]
        )
        self._sampleInterval = sampleInterval
        own: CollectorRegistry | None = None if self.multiprocess else CollectorRegistry()

        self._requests = Counter(
            "primecount_requests",
            "Replies sent, by protocol and outcome.",
            ["protocol", "outcome"],
            registry=own,
        )
        self._latency = Histogram(
            "primecount_request_duration_seconds",
            "Seconds from a request parsed to its reply written.",
            ["protocol"],
            buckets=LATENCY_BUCKETS,
            registry=own,
        )
        self._connections = Gauge(
            "primecount_open_connections",
            "Connections open now, by protocol.",
            ["protocol"],
            multiprocess_mode="livesum",
            registry=own,
        )
        self._batchSize = Histogram(
            "primecount_journal_batch_size",
            "Records committed per journal transaction.",
            buckets=BATCH_BUCKETS,
            registry=own,
        )
        self._commitSeconds = Histogram(
            "primecount_journal_commit_seconds",
            "Seconds per journal transaction.",
            buckets=COMMIT_BUCKETS,
            registry=own,
        )
        self._journalFailed = Counter(
            "primecount_journal_failed_records",
            "Records the journal could not write.",
            registry=own,
        )
        self._restarts = Counter(
            "primecount_worker_restarts",
            "Worker processes the supervisor replaced.",
            registry=own,
        )
        self._requestsBy: dict[tuple[str, str], Counter] = {}
        self._latencyBy: dict[str, Histogram] = {}
        self._connectionsBy: dict[str, Gauge] = {}
        self._pools = _PoolCollector()
        self._sampler: LoopingCall | None = None
        self._registry = own
        # The journal's state: made at its first commit or failure.
        self._journalState: Gauge | None = None
        self._unavailableSince = 0.0
        # This worker's own figures (multiprocess mode, serving processes).
        self._worker: _WorkerGauges | None = None

        if own is None:
            from prometheus_client.multiprocess import MultiProcessCollector

            self._queueDepth = Gauge(
                "primecount_threadpool_queue_depth",
                "Work waiting for a thread in the watched thread pools.",
                multiprocess_mode="livesum",
                registry=None,
            )
            self._busyThreads = Gauge(
                "primecount_threadpool_busy_threads",
                "Threads at work in the watched thread pools.",
                multiprocess_mode="livesum",
                registry=None,
            )
            self.registry: CollectorRegistry = CollectorRegistry()
            MultiProcessCollector(self.registry, path=directory)
        else:
            from prometheus_client import GCCollector

            self.registry = own
            own.register(self._pools)
            GCCollector(registry=own)
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)

    def requests(self, protocol: str, outcome: Outcome, n: int = 1) -> None:
        """
        Count replies: C{primecount_requests_total{protocol, outcome}}.

        @param protocol: L{primecount.journal.records.PROTOCOL_COUNT} or
            L{primecount.journal.records.PROTOCOL_RANGE}.
        @param outcome: how the requests ended; its label is the C{outcome}
            label.
        @param n: how many replies; nothing happens unless it is positive.
        """
        if n <= 0:
            return
        key = (protocol, outcome.label)
        child = self._requestsBy.get(key)
        if child is None:
            child = self._requestsBy[key] = self._requests.labels(*key)
        child.inc(n)
        if self._worker is not None:
            self._worker.requests.inc(n)

    def latency(self, protocol: str, seconds: float, n: int = 1) -> None:
        """
        Observe request latency:
        C{primecount_request_duration_seconds{protocol}}.

        @param protocol: as for L{requests}.
        @param seconds: from the request parsed to its reply written.
        @param n: how many requests took C{seconds} (a batch answered at
            once); added in one step, not C{n} observations.
        """
        if n <= 0:
            return
        child = self._latencyBy.get(protocol)
        if child is None:
            child = self._latencyBy[protocol] = self._latency.labels(protocol)
        _observe(child, seconds, n)

    def _connectionGauge(self, protocol: str) -> Gauge:
        """
        The C{primecount_open_connections} child of C{protocol}.
        """
        child = self._connectionsBy.get(protocol)
        if child is None:
            child = self._connectionsBy[protocol] = self._connections.labels(protocol)
        return child

    def connectionOpened(self, protocol: str) -> None:
        """
        One more open connection: C{primecount_open_connections{protocol}}.

        @param protocol: as for L{requests}.
        """
        self._connectionGauge(protocol).inc()
        if self._worker is not None:
            self._worker.connections.inc()

    def connectionClosed(self, protocol: str) -> None:
        """
        One fewer open connection: C{primecount_open_connections{protocol}}.

        @param protocol: as for L{requests}.
        """
        self._connectionGauge(protocol).dec()
        if self._worker is not None:
            self._worker.connections.dec()

    def journalCommit(self, records: int, seconds: float) -> None:
        """
        One journal transaction: C{primecount_journal_batch_size} and
        C{primecount_journal_commit_seconds}.

        @param records: records in the transaction.
        @param seconds: how long it took to commit.
        """
        _observe(self._batchSize, records, 1)
        _observe(self._commitSeconds, seconds, 1)
        if self._unavailableSince or self._journalState is None:
            self._unavailableSince = 0.0
            self._journalStateGauge().set(0.0)

    def journalFailed(self, records: int) -> None:
        """
        Records the journal could not write:
        C{primecount_journal_failed_records_total}.

        @param records: how many; nothing happens unless it is positive.
        """
        if records > 0:
            self._journalFailed.inc(records)
        if not self._unavailableSince:
            self._unavailableSince = self._now()
            self._journalStateGauge().set(self._unavailableSince)

    def _now(self) -> float:
        """
        The wall-clock time, seconds since the epoch: the clock's, when
        there is one.
        """
        return self._wallClock()

    def _journalStateGauge(self) -> Gauge:
        """
        C{primecount_journal_unavailable_since_seconds}, made at the first
        call: a process without a journal shows no journal state. The
        journal calls L{journalCommit} and L{journalFailed} from one thread
        at a time (its commit lock), so it is made once.
        """
        if self._journalState is None:
            from prometheus_client import Gauge

            self._journalState = Gauge(
                "primecount_journal_unavailable_since_seconds",
                "0 while the journal commits; while its commits fail, when "
                "that began (seconds since the epoch).",
                multiprocess_mode="liveall",
                registry=self._registry,
            )
        return self._journalState

    def workerRestarted(self) -> None:
        """
        The supervisor replaced a worker:
        C{primecount_worker_restarts_total}.
        """
        self._restarts.inc()

    def watchThreadPool(self, pool: ThreadPool) -> None:
        """
        Report C{pool} in C{primecount_threadpool_queue_depth} (work waiting
        for a thread) and C{primecount_threadpool_busy_threads}, summed over
        the watched pools.

        A single process reads the pools when scraped. In multiprocess mode
        the scrape happens in the supervisor, so each process samples its
        pools into live gauges every C{sampleInterval} seconds instead; the
        first call also starts this process's C{primecount_worker_*}
        gauges.

        @param pool: a Twisted thread pool, such as the reactor's; watched
            for the life of the process.
        @raise ValueError: in multiprocess mode, when no clock was given.
        """
        clock = self._clock
        if self.multiprocess and clock is None:
            raise ValueError("multiprocess metrics sample thread pools on a clock; give one")
        self._pools.pools.append(pool)
        if clock is not None and self.multiprocess and self._sampler is None:
            from twisted.internet.task import LoopingCall

            self._worker = _WorkerGauges(self._now())
            self._sampler = LoopingCall(self._samplePools)
            self._sampler.clock = clock
            self._sampler.start(self._sampleInterval, now=True)

    def _samplePools(self) -> None:
        """
        Copy the watched pools' load into the multiprocess gauges.
        """
        backlog, busy = _poolLoad(self._pools.pools)
        self._queueDepth.set(backlog)
        self._busyThreads.set(busy)

    def mark_process_dead(self, pid: int) -> None:
        """
        Forget the live gauges of an exited worker (multiprocess mode; a
        no-op otherwise). The supervisor calls this when it reaps a worker.

        @param pid: the worker's process id.
        """
        if self._directory:
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(pid, self._directory)
