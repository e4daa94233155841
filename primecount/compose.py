# -*- test-case-name: tests.unit.test_tap,tests.unit.test_metricsport,tests.system.test_tap_process -*-
"""
The composition root of C{twistd primecount}: a process built from its
L{Settings}.

L{primecount.tap} parses the options and turns them into one frozen
L{Settings}, computed once (the effective connection limit, this process's
journal, the listeners, whom twistd switches to); L{process} builds the
process it describes, in one of three shapes: L{single} (one serving
process), L{supervisor} (C{--workers N}: bind the sockets, start N workers)
or L{worker} (one of those N). Everything below takes typed arguments:
nothing here or below reads an option by its name, and nothing changes the
settings once made.
"""

from __future__ import annotations

import os
import resource
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from twisted.application import service
from twisted.internet import defer, endpoints
from twisted.logger import Logger

from primecount import __version__
from primecount.core.fdlimit import raise_open_files_limit
from primecount.core.outcomes import SERVER_BUSY
from primecount.core.privileges import Owner, acting_as, give
from primecount.core.proxyheader import TrustedProxies
from primecount.core.wording import plural
from primecount.journal import JournalURL, open_journal
from primecount.metrics.recorder import MetricsRecorder, NullMetrics
from primecount.server.budget import MemoryBudget, size_text
from primecount.server.connections import Connections, RefusingReactor
from primecount.server.countprotocol import CountFactory
from primecount.server.listeners import COUNT, PROXY, RANGE, RANGE_PROXY, Listener, Wanted
from primecount.server.metricsport import BUSY as METRICS_BUSY
from primecount.server.metricsport import METRICS_CONNECTIONS, MetricsGate
from primecount.server.pipeline import Pipeline
from primecount.server.placement import Placement, PlacementService
from primecount.server.rangeprotocol import RangeFactory
from primecount.server.service import OneStopSignal, PrimecountService
from primecount.workers.environment import WorkerEnvironment
from primecount.workers.shared import Scratch, SharedCounts
from primecount.workers.supervisor import Supervisor, bind, die_with_parent

if TYPE_CHECKING:
    from primecount.metrics.prometheus import Metrics

_log = Logger(namespace="primecount")

#: The shapes of a process (L{Settings.shape}): one serving process, the
#: supervisor of C{--workers N}, one of its workers.
SINGLE, SUPERVISOR, WORKER = "single", "supervisor", "worker"


@dataclass(frozen=True)
class Listening:
    """
    Where the process listens, and whom it trusts to name clients there.

    @ivar listeners: the count and range protocols' listeners, in order:
        each C{--listen} (or the one of C{--port}/C{--interface}), then
        C{--range-port}, then each C{--range-listen}.
    @ivar metrics: the listener of C{--metrics-port}, or C{None}.
    @ivar trustedProxies: C{--trusted-proxies}: the proxies whose PROXY
        headers name the client on C{haproxy:} listeners.
    """

    listeners: tuple[Wanted, ...]
    metrics: Wanted | None
    trustedProxies: TrustedProxies

    @property
    def servesRange(self) -> bool:
        """
        Whether the range protocol is served (C{--range-port} or
        C{--range-listen}).
        """
        return any(wanted.label in (RANGE, RANGE_PROXY) for wanted in self.listeners)


@dataclass(frozen=True)
class Limits:
    """
    What one serving process holds for its clients, and for how long.

    @ivar maxConnections: the most open connections: C{--max-connections},
        or fewer when the open-files limit cannot cover that many
        (L{effective_connections}).
    @ivar maxPerPeer: C{--max-per-peer}, or C{None} for no limit of its own.
    @ivar maxMemory: C{--max-memory}, in bytes.
    @ivar maxLine: C{--max-line}: the longest request line, in bytes.
    @ivar timeout: C{--timeout}: idle seconds before a connection is
        closed (0: never).
    @ivar shutdownTimeout: C{--shutdown-timeout}: seconds a stop may take
        (0: no bound).
    """

    maxConnections: int
    maxPerPeer: int | None
    maxMemory: int
    maxLine: int
    timeout: float
    shutdownTimeout: float


@dataclass(frozen=True)
class Framing:
    """
    How the count protocol delimits requests.

    @ivar kind: C{--framing}: C{line} or C{read}.
    @ivar readWindow: with C{read}, the seconds after a message's first
        bytes that later segments still join it.
    @ivar closeAfterReply: C{--close-after-reply}: one request per
        connection.
    """

    kind: str
    readWindow: float
    closeAfterReply: bool

    def __str__(self) -> str:
        """
        As C{--framing} says it: C{line}, C{read}, C{read:MS}.
        """
        return f"{self.kind}:{self.readWindow * 1000:g}" if self.readWindow else self.kind


@dataclass(frozen=True)
class JournalSettings:
    """
    Where this process records its requests.

    @ivar url: this process's journal: C{--journal}, or a worker's own part
        of it (L{primecount.journal.for_worker}).
    @ivar durability: what an acknowledged record survives
        (C{--journal-durability}, resolved for the backend).
    @ivar timeout: C{--journal-timeout}: seconds a commit may take.
    """

    url: JournalURL
    durability: str
    timeout: float


@dataclass(frozen=True)
class Processes:
    """
    The processes and threads that serve.

    @ivar workers: C{--workers}: how many serving processes.
    @ivar threads: C{--threads}: the size of each one's thread pool.
    @ivar placement: C{--cpu-affinity}.
    @ivar owner: whom twistd switches to after binding (C{twistd --uid
        --gid}), or C{None}: what a supervisor shares with its workers is
        made as that user.
    @ivar argv: the options after C{primecount} on the command line, which
        a supervisor starts each worker with.
    @ivar worker: what the supervisor told this process, when it is one of
        its workers; else C{None}.
    """

    workers: int
    threads: int
    placement: Placement
    owner: Owner | None
    argv: tuple[str, ...]
    worker: WorkerEnvironment | None


@dataclass(frozen=True)
class Settings:
    """
    Everything a process of C{twistd primecount} is built from: the options
    and what they imply for this process, computed once, typed, never
    changed.
    """

    listening: Listening
    limits: Limits
    framing: Framing
    journal: JournalSettings
    processes: Processes

    @property
    def shape(self) -> str:
        """
        L{WORKER}, L{SUPERVISOR} or L{SINGLE} (see L{shape_of}).
        """
        return shape_of(self.processes.workers, self.processes.worker)

    def summary(self) -> str:
        """
        The settings, as the start's log line says them.
        """
        limits, processes, url = self.limits, self.processes, self.journal.url
        return (
            f"threads={processes.threads} timeout={limits.timeout:g} "
            f"max-line={limits.maxLine} max-connections={limits.maxConnections} "
            f"max-per-peer={limits.maxPerPeer or 'off'} "
            f"max-memory={size_text(limits.maxMemory).replace(' ', '')} "
            f"cpu-affinity={processes.placement} "
            f"close-after-reply={'on' if self.framing.closeAfterReply else 'off'} "
            f"framing={self.framing} "
            f"journal={url}"
            + (f" durability={self.journal.durability}" if url.scheme != "none" else "")
        )


def shape_of(workers: int, worker: WorkerEnvironment | None) -> str:
    """
    Which shape a process takes: a worker when its supervisor says so
    (C{worker}), else a supervisor when there are several C{workers}, else
    a single process.
    """
    if worker is not None:
        return WORKER
    return SUPERVISOR if workers > 1 else SINGLE


#: Descriptors kept for all but client connections: the journal's files,
#: listening sockets, the log, pipes to workers, what libraries open.
SPARE_DESCRIPTORS = 64


def connection_limit(wanted: int, warn: bool = True, others: int = 0) -> int:
    """
    The most connections this process can hold at once: C{wanted}
    (C{--max-connections}), or fewer when the open-files limit, raised as
    far as it goes, cannot cover that many plus L{SPARE_DESCRIPTORS} plus
    C{others}; then one warning names both numbers.

    @param others: connections of other ports this process serves (the
        metrics port's L{METRICS_CONNECTIONS}), whose descriptors are set
        aside first.
    """
    spare = SPARE_DESCRIPTORS + others
    limit = raise_open_files_limit(wanted + spare)
    if limit == resource.RLIM_INFINITY or limit >= wanted + spare:
        return wanted
    effective = max(1, limit - spare)
    if warn:
        _log.warn(
            "open files limit is {limit}: serving at most {effective} at "
            "once, not --max-connections {wanted} (raise the limit, e.g. 'ulimit -n' "
            "or LimitNOFILE=, to serve more)",
            limit=limit,
            effective=plural(effective, "connection"),
            wanted=wanted,
        )
    return effective


def metrics_connections(metrics: Wanted | None) -> int:
    """
    The descriptors a process serving the metrics listener C{metrics} (if
    any) sets aside for its connections (see L{connection_limit}).
    """
    return METRICS_CONNECTIONS if metrics is not None else 0


def effective_connections(shape: str, wanted: int, metrics: Wanted | None) -> int:
    """
    The connection limit of a process of C{shape} (see L{connection_limit}),
    whose options ask for C{wanted} connections and the metrics listener
    C{metrics}. A single process sets the metrics port's descriptors aside;
    a supervisor raises its open-files limit for its workers to inherit and
    warns when that falls short; a worker, whose supervisor warned, does
    not warn again.
    """
    if shape == WORKER:
        return connection_limit(wanted, warn=False)
    if shape == SUPERVISOR:
        return connection_limit(wanted)
    return connection_limit(wanted, others=metrics_connections(metrics))


def process(settings: Settings, reactor: Any) -> service.MultiService:
    """
    The process C{settings} describe, on C{reactor}: one serving process, a
    supervisor of C{--workers N}, or one of those N; in every shape the
    first stop signal is the only one (L{OneStopSignal}).
    """
    shapes = {SINGLE: single, SUPERVISOR: supervisor, WORKER: worker}
    top = shapes[settings.shape](settings, reactor)
    OneStopSignal(reactor).setServiceParent(top)
    return top


def single(settings: Settings, reactor: Any) -> service.MultiService:
    """
    One serving process: it binds its own sockets.
    """
    connections = connections_of(settings, reactor)
    metrics = metrics_recorder(settings, reactor)
    top = serve(settings, reactor, connections, metrics=metrics)
    if metrics is not None and settings.listening.metrics is not None:
        # Added as a listener: the start's log line names it too.
        top.addListener(metrics_listener(settings.listening.metrics, reactor, metrics))
    return top


def worker(settings: Settings, reactor: Any) -> PrimecountService:
    """
    One of C{--workers N}: serve on the sockets the supervisor hands down,
    counting connections in the shared table, journalling to its own part
    of an SQLite journal (the same part again after a restart: see
    L{JournalSettings.url}).
    """
    told = settings.processes.worker
    assert told is not None, "not a worker"
    die_with_parent(told.supervisor)
    counts = SharedCounts(told.counts, told.workers, told.index)
    connections = connections_of(settings, reactor, counts)
    # With --metrics-port, values go to the shared directory; the
    # supervisor serves the sum.
    metrics = metrics_recorder(settings, reactor)
    return serve(settings, reactor, connections, metrics, told.adopted(), told.index)


def connections_of(
    settings: Settings, reactor: Any, counts: SharedCounts | None = None
) -> Connections:
    """
    The table of open connections of a serving process, under its limits;
    its episodes are logged to the end at the stop.

    @param counts: the counts shared with the other workers, if any.
    """
    limits = settings.limits
    connections = Connections(limits.maxConnections, limits.maxPerPeer, counts, clock=reactor)
    reactor.addSystemEventTrigger("before", "shutdown", connections.episodes.flush)
    return connections


def supervisor(settings: Settings, reactor: Any) -> service.MultiService:
    """
    C{--workers N}: bind the sockets here, serve in N worker processes
    started with this process's own options (L{Processes.argv}). What they
    share is made as the user twistd switches to (L{Processes.owner})
    before the workers start.
    """
    processes = settings.processes
    bound = bind(reactor, settings.listening.listeners, owner=processes.owner)
    top = service.MultiService()
    bound.setServiceParent(top)
    env: dict[str, str] = {}
    metrics: Metrics | None = None
    listening: list[Listener] = []
    with acting_as(processes.owner):
        scratch = Scratch()
        counts = SharedCounts(os.path.join(scratch.path, "connections"), processes.workers)
        shared = os.path.join(scratch.path, "metrics")
        if settings.listening.metrics is not None:
            os.makedirs(shared)
    if settings.listening.metrics is not None:
        from primecount.metrics.prometheus import MULTIPROCESS_DIRECTORY, Metrics

        # Before the first Metrics in this process; the workers inherit it.
        os.environ[MULTIPROCESS_DIRECTORY] = env[MULTIPROCESS_DIRECTORY] = shared
        metrics = Metrics(clock=reactor)
        # Its first files, made before twistd switches user (importing
        # prometheus_client as that user may fail: the code may be root's).
        give(shared, processes.owner)
        listening.append(metrics_listener(settings.listening.metrics, reactor, metrics))
        listening[-1].setServiceParent(top)
    shutdownTimeout = settings.limits.shutdownTimeout
    Supervisor(
        reactor,
        processes.workers,
        list(processes.argv),
        bound.sockets,
        counts,
        env=env,
        # Workers get their own --shutdown-timeout, then 5 s more before
        # SIGKILL; 0 ("no bound") never kills them.
        stopTimeout=shutdownTimeout + 5 if shutdownTimeout else None,
        metrics=metrics,
    ).setServiceParent(top)
    addresses = defer.gatherResults([listener.address() for listener in listening])
    addresses.addCallback(
        lambda found: reactor.callWhenRunning(
            _log.info,
            "primecount {version} listening on {addresses}; {n} worker processes; {settings}",
            version=__version__,
            addresses=", ".join(bound.addresses + found),
            n=processes.workers,
            settings=settings.summary(),
        )
    )
    reactor.addSystemEventTrigger("after", "shutdown", _cleanup, scratch, counts)
    return top


def _cleanup(scratch: Scratch, counts: SharedCounts) -> None:
    counts.close()
    scratch.remove()


def metrics_recorder(settings: Settings, reactor: Any) -> Metrics | None:
    """
    The metrics recorder C{--metrics-port} asks for, else C{None}.
    """
    if settings.listening.metrics is None:
        return None
    from primecount.metrics.prometheus import Metrics

    return Metrics(clock=reactor)


def metrics_listener(wanted: Wanted, reactor: Any, metrics: Metrics) -> Listener:
    """
    The listener of C{--metrics-port} (C{wanted}): C{/metrics} over HTTP,
    behind its own limits (L{MetricsGate}); out of descriptors, it answers
    C{503} with the reserve descriptor.
    """
    from primecount.metrics.http import metricsSite

    gate = MetricsGate(metricsSite(metrics, reactor), reactor)
    refusing = RefusingReactor(reactor, METRICS_BUSY, gate.episodes)
    endpoint = endpoints.serverFromString(refusing, wanted.description)
    return Listener(wanted.label, wanted.description, endpoint, gate, wanted.option)


def serve(
    settings: Settings,
    reactor: Any,
    connections: Connections,
    metrics: MetricsRecorder | None = None,
    adopted: list[tuple[str, int, int]] | None = None,
    index: int = 0,
) -> PrimecountService:
    """
    A serving process: its journal, pipeline, protocol factories and
    listeners, listening itself or on C{adopted} sockets (label, fd,
    family) handed down by a supervisor.

    @param reactor: the reactor it runs on.
    @param connections: the table of open connections and their limits.
    @param metrics: where it records; C{None} for nowhere.
    @param index: which serving process this is (for C{--cpu-affinity}).
    """
    limits, listening, framing = settings.limits, settings.listening, settings.framing
    reactor.suggestThreadPoolSize(settings.processes.threads)
    threadpool = reactor.getThreadPool()
    if metrics is None:
        metrics = NullMetrics()
    metrics.watchThreadPool(threadpool)
    journal = open_journal(
        settings.journal.url,
        reactor,
        durability=settings.journal.durability,
        timeout=settings.journal.timeout,
        metrics=metrics,
    )
    pipeline = Pipeline(reactor, threadpool, journal, metrics)
    episodes = connections.episodes
    budget = MemoryBudget(limits.maxMemory, episodes)
    factories: dict[str, Any] = {
        label: CountFactory(
            reactor,
            pipeline,
            timeout=limits.timeout,
            maxLine=limits.maxLine,
            closeAfterReply=framing.closeAfterReply,
            connections=connections,
            metrics=metrics,
            proxyHeader=label == PROXY,
            trustedProxies=listening.trustedProxies,
            framing=framing.kind,
            readWindow=framing.readWindow,
            budget=budget,
            episodes=episodes,
        )
        for label in (COUNT, PROXY)
    }
    if listening.servesRange:
        factories[RANGE] = RangeFactory(
            reactor,
            threadpool,
            journal,
            timeout=limits.timeout,
            connections=connections,
            metrics=metrics,
            trustedProxies=listening.trustedProxies,
            budget=budget,
            episodes=episodes,
        )
        # One pool of range job slots for both.
        factories[RANGE_PROXY] = factories[RANGE].behindProxy()
    busy = SERVER_BUSY.reply()
    top = PrimecountService(
        pipeline, journal, connections, settings.summary(), limits.shutdownTimeout, reactor
    )
    PlacementService(settings.processes.placement, index).setServiceParent(top)

    def refusing(label: str) -> RefusingReactor:
        # Out of descriptors, a TCP listener still answers ERR server busy.
        return RefusingReactor(reactor, b"" if label in (RANGE, RANGE_PROXY) else busy, episodes)

    if adopted is None:
        for label, description, option in listening.listeners:
            endpoint = endpoints.serverFromString(refusing(label), description)
            top.addListener(Listener(label, description, endpoint, factories[label], option))
    else:
        for label, fd, family in adopted:
            top.addListener(Listener.adopted(refusing(label), label, fd, family, factories[label]))
    return top
