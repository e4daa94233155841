# -*- test-case-name: tests.test_metrics -*-
"""
Prometheus metrics: what the server counts, and the HTTP page that shows it.

One L{Metrics} per process holds the C{primecount_*} families; the server
calls its methods on the reactor thread, once per request batch, so each is
a couple of dictionary lookups and locked additions (about a microsecond;
safe from other threads too, such as the journal writer's). When C{--metrics-port}
is off the server holds a L{NullMetrics} instead: the same methods, doing
nothing, so call sites need no C{if}. Both satisfy L{MetricsRecorder}.

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

plus C{process_*} and C{python_*} of the process serving C{/metrics}.

Label values are bounded: C{protocol} is a constant from code
(L{primecount.journal.records.COUNT}, L{primecount.journal.records.RANGE}), and C{outcome}
is C{ok} or one word per known C{ERR} reason (L{OUTCOMES}); any other reason
counts as C{error}. No request data ever becomes a label.

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
"""

from __future__ import annotations

import os
from bisect import bisect_left
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Protocol

from twisted.web import http, pages
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
    from prometheus_client.metrics_core import Metric
    from twisted.application.internet import StreamServerEndpointService
    from twisted.internet.interfaces import IReactorTime
    from twisted.internet.task import LoopingCall
    from twisted.python.threadpool import ThreadPool

#: The environment variable that turns on prometheus_client's multiprocess
#: mode; its value is the directory the processes share.
MULTIPROCESS_DIRECTORY = "PROMETHEUS_MULTIPROC_DIR"

#: The C{outcome} label of each reply: C{ok}, or one word per C{ERR} reason
#: (L{primecount.core.count}, L{primecount.server.rangeprotocol}). A reason missing here
#: counts as L{OTHER_ERROR}.
OUTCOMES: dict[str, str] = {
    "ok": "ok",
    "empty message": "empty_message",
    "invalid UTF-8": "invalid_utf8",
    "line too long": "line_too_long",
    "journal unavailable": "journal_unavailable",
    "internal error": "internal_error",
    "server busy": "server_busy",
    "bad sum": "bad_sum",
    "client disconnected before the reply": "disconnected",
    "client disconnected mid-stream": "disconnected",
    "client disconnected before sending the sum": "disconnected",
    "client stopped reading": "stopped_reading",
    "no sum within the timeout": "no_sum",
    "incomplete request": "incomplete_request",
}
# A label word passed in stands for itself.
OUTCOMES.update({word: word for word in list(OUTCOMES.values())})

#: The C{outcome} of a reason that L{OUTCOMES} does not know.
OTHER_ERROR = "error"

#: Upper bounds of C{primecount_request_duration_seconds}: 50 µs to 5 s.
LATENCY_BUCKETS = (
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)

#: Upper bounds of C{primecount_journal_batch_size}, in records.
BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)

#: Upper bounds of C{primecount_journal_commit_seconds}: 100 µs to 10 s.
COMMIT_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)


def outcomeLabel(outcome: str | None) -> str:
    """
    The bounded C{outcome} label of a reply.

    @param outcome: C{"ok"} or L{None} for a good reply, else the C{ERR}
        reason.
    @return: a value of L{OUTCOMES}, or L{OTHER_ERROR}.
    """
    if outcome is None:
        return "ok"
    return OUTCOMES.get(outcome, OTHER_ERROR)


class MetricsRecorder(Protocol):
    """
    What the server calls: satisfied by L{Metrics} and L{NullMetrics}.
    """

    def requests(self, protocol: str, outcome: str | None, n: int = 1) -> None:
        """
        Count C{n} replies of C{protocol} with C{outcome}.
        """

    def latency(self, protocol: str, seconds: float, n: int = 1) -> None:
        """
        Observe C{n} requests that each took C{seconds}.
        """

    def connectionOpened(self, protocol: str) -> None:
        """
        A connection of C{protocol} opened.
        """

    def connectionClosed(self, protocol: str) -> None:
        """
        A connection of C{protocol} closed.
        """

    def journalCommit(self, records: int, seconds: float) -> None:
        """
        One journal transaction committed C{records} in C{seconds}.
        """

    def journalFailed(self, records: int) -> None:
        """
        C{records} could not be written to the journal.
        """

    def workerRestarted(self) -> None:
        """
        The supervisor replaced a worker process.
        """

    def watchThreadPool(self, pool: ThreadPool) -> Callable[[], None]:
        """
        Report C{pool}'s backlog and busy threads; return a callable that stops.
        """

    def mark_process_dead(self, pid: int) -> None:
        """
        Forget the live gauges of the exited worker process C{pid}.
        """


def _stopNothing() -> None:
    """
    The unwatch callable of L{NullMetrics.watchThreadPool}.
    """


class NullMetrics:
    """
    Metrics turned off: every method accepts its call and does nothing.
    """

    def requests(self, protocol: str, outcome: str | None, n: int = 1) -> None:
        """
        Do nothing; see L{Metrics.requests}.
        """

    def latency(self, protocol: str, seconds: float, n: int = 1) -> None:
        """
        Do nothing; see L{Metrics.latency}.
        """

    def connectionOpened(self, protocol: str) -> None:
        """
        Do nothing; see L{Metrics.connectionOpened}.
        """

    def connectionClosed(self, protocol: str) -> None:
        """
        Do nothing; see L{Metrics.connectionClosed}.
        """

    def journalCommit(self, records: int, seconds: float) -> None:
        """
        Do nothing; see L{Metrics.journalCommit}.
        """

    def journalFailed(self, records: int) -> None:
        """
        Do nothing; see L{Metrics.journalFailed}.
        """

    def workerRestarted(self) -> None:
        """
        Do nothing; see L{Metrics.workerRestarted}.
        """

    def watchThreadPool(self, pool: ThreadPool) -> Callable[[], None]:
        """
        Do nothing; see L{Metrics.watchThreadPool}.

        @return: a callable that does nothing.
        """
        return _stopNothing

    def mark_process_dead(self, pid: int) -> None:
        """
        Do nothing; see L{Metrics.mark_process_dead}.
        """


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

    Twisted's C{ThreadPool} delegates to a C{Team} whose C{statistics()} is
    where its own C{working}, C{waiters} and C{q.qsize()} come from.

    @param pools: the pools.
    @return: work waiting for a thread, and threads at work.
    """
    backlog = busy = 0
    for pool in pools:
        statistics = pool._team.statistics()
        backlog += statistics.backloggedWorkCount
        busy += statistics.busyWorkerCount
    return backlog, busy


def _globalReactor() -> IReactorTime:
    """
    The global reactor, imported only when no clock was passed in.
    """
    from twisted.internet import reactor

    return reactor  # type: ignore[return-value]


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
        @param clock: used only in multiprocess mode, to sample watched thread
            pools every C{sampleInterval} seconds (the supervisor that serves
            C{/metrics} cannot see a worker's pools); the global reactor
            when L{None}.
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

    def requests(self, protocol: str, outcome: str | None, n: int = 1) -> None:
        """
        Count replies: C{primecount_requests_total{protocol, outcome}}.

        @param protocol: L{primecount.journal.records.COUNT} or
            L{primecount.journal.records.RANGE}.
        @param outcome: C{"ok"} or L{None} for a good reply, else its C{ERR}
            reason (mapped by L{outcomeLabel}).
        @param n: how many replies; nothing happens unless it is positive.
        """
        if n <= 0:
            return
        key = (protocol, outcomeLabel(outcome))
        child = self._requestsBy.get(key)
        if child is None:
            child = self._requestsBy[key] = self._requests.labels(*key)
        child.inc(n)

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

    def connectionClosed(self, protocol: str) -> None:
        """
        One fewer open connection: C{primecount_open_connections{protocol}}.

        @param protocol: as for L{requests}.
        """
        self._connectionGauge(protocol).dec()

    def journalCommit(self, records: int, seconds: float) -> None:
        """
        One journal transaction: C{primecount_journal_batch_size} and
        C{primecount_journal_commit_seconds}.

        @param records: records in the transaction.
        @param seconds: how long it took to commit.
        """
        _observe(self._batchSize, records, 1)
        _observe(self._commitSeconds, seconds, 1)

    def journalFailed(self, records: int) -> None:
        """
        Records the journal could not write:
        C{primecount_journal_failed_records_total}.

        @param records: how many; nothing happens unless it is positive.
        """
        if records > 0:
            self._journalFailed.inc(records)

    def workerRestarted(self) -> None:
        """
        The supervisor replaced a worker:
        C{primecount_worker_restarts_total}.
        """
        self._restarts.inc()

    def watchThreadPool(self, pool: ThreadPool) -> Callable[[], None]:
        """
        Report C{pool} in C{primecount_threadpool_queue_depth} (work waiting
        for a thread) and C{primecount_threadpool_busy_threads}, summed over
        the watched pools.

        A single process reads the pools when scraped. In multiprocess mode
        the scrape happens in the supervisor, so each process samples its
        pools into live gauges every C{sampleInterval} seconds instead.

        @param pool: a Twisted thread pool, such as the reactor's.
        @return: a callable that stops watching C{pool}.
        """
        self._pools.pools.append(pool)
        if self.multiprocess and self._sampler is None:
            from twisted.internet.task import LoopingCall

            self._sampler = LoopingCall(self._samplePools)
            self._sampler.clock = self._clock or _globalReactor()
            self._sampler.start(self._sampleInterval, now=True)

        def unwatch() -> None:
            if pool in self._pools.pools:
                self._pools.pools.remove(pool)
            if self._sampler is not None:
                self._samplePools()
                if not self._pools.pools:
                    self._sampler.stop()
                    self._sampler = None

        return unwatch

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


class _NotFound(Resource):
    """
    A resource whose only content is C{/metrics}: any other path is 404.
    """

    def getChild(self, path: bytes, request: Any) -> Any:
        """
        Not found, with Twisted's escaping page.
        """
        return pages.notFound()


class MetricsResource(_NotFound):
    """
    The Prometheus exposition of one registry, rendered on the reactor
    thread (a scrape reads memory, or a few small memory-mapped files).
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        """
        @param registry: what to expose.
        """
        super().__init__()
        self._registry = registry

    def render_GET(self, request: Request) -> bytes:
        """
        The text format the client asks for (Prometheus text, or
        OpenMetrics when its C{Accept} header prefers it).
        """
        from prometheus_client.exposition import choose_encoder

        accept = request.getHeader(b"accept")
        encoder, contentType = choose_encoder(accept.decode("latin-1") if accept else "")
        request.setHeader(b"content-type", contentType.encode("ascii"))
        return encoder(self._registry)


class QuietSite(Site):
    """
    A site that writes no access log line per scrape.
    """

    noisy = False

    def log(self, request: http.Request) -> None:
        """
        Log nothing.
        """


def metricsSite(metrics: Metrics) -> QuietSite:
    """
    The HTTP site serving C{metrics} at C{/metrics}, 404 elsewhere.
    """
    root = _NotFound()
    # No mypy-zope here: mypy cannot see the classes' @implementer.
    root.putChild(b"metrics", MetricsResource(metrics.registry))  # type: ignore[arg-type]
    return QuietSite(root)


def metricsService(reactor: Any, description: str, metrics: Metrics) -> StreamServerEndpointService:
    """
    An HTTP service serving C{metrics} at C{/metrics}, 404 elsewhere.

    @param reactor: the reactor to listen with.
    @param description: a Twisted server endpoint description, such as
        C{tcp:9100:interface=127.0.0.1}.
    @param metrics: the metrics to serve (its L{Metrics.registry}).
    @return: a service that listens when started (and fails to start when
        the port cannot be bound).
    """
    from twisted.application import strports

    return strports.service(description, metricsSite(metrics), reactor=reactor)  # type: ignore[arg-type]
