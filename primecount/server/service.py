# -*- test-case-name: tests.unit.test_connections,tests.system.test_connections_process -*-
"""
The serving process: its parts composed from the options (L{serve}), and
the root service that starts them and stops them in order
(L{PrimecountService}).
"""

from __future__ import annotations

import os
import resource
import signal
import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from twisted.application import service
from twisted.internet import defer, endpoints
from twisted.logger import Logger

from primecount import __version__
from primecount.core.fdlimit import raise_open_files_limit
from primecount.core.outcomes import SERVER_BUSY
from primecount.core.wording import plural
from primecount.journal import Journal, JournalURL, open_journal
from primecount.metrics.recorder import NullMetrics
from primecount.server.budget import MemoryBudget, size_text
from primecount.server.connections import Connections, RefusingReactor
from primecount.server.countprotocol import CountFactory
from primecount.server.listeners import (
    COUNT,
    PROXY,
    RANGE,
    RANGE_PROXY,
    Listener,
    descriptions,
    metrics_wanted,
)
from primecount.server.metricsport import BUSY as METRICS_BUSY
from primecount.server.metricsport import METRICS_CONNECTIONS, MetricsGate
from primecount.server.pipeline import Pipeline
from primecount.server.placement import PlacementService

if TYPE_CHECKING:
    from primecount.metrics.prometheus import Metrics

_log = Logger(namespace="primecount")


class PrimecountService(service.MultiService):
    """
    The whole server: the journal, the listeners, and an orderly stop.

    On stop (SIGTERM): stop accepting; let every connection answer what it
    has received and close (within C{shutdownTimeout} seconds, after which
    the rest are dropped); then flush the journal.
    """

    def __init__(
        self,
        pipeline: Pipeline,
        journal: Journal,
        connections: Connections,
        settings: str,
        shutdownTimeout: float,
        clock: Any,
    ) -> None:
        """
        @param pipeline: the count requests' pipeline, drained at stop.
        @param journal: started first, stopped last (a
            L{primecount.journal.NullJournal} when there is none).
        @param connections: the open connections, answered then closed at
            stop.
        @param settings: the settings, as the start's log line says them.
        @param shutdownTimeout: seconds the stop may take (0: no bound).
        @param clock: the reactor's C{IReactorTime}, for the deadline.
        """
        super().__init__()
        self.pipeline = pipeline
        self.journal = journal
        self.connections = connections
        self.settings = settings
        self.shutdownTimeout = shutdownTimeout
        self.listeners: list[Any] = []
        self._clock = clock
        #: How the process ends when a stuck thread keeps it alive
        #: (replaced by tests).
        self._exit: Callable[[int], object] = os._exit

    def addListener(self, listener: Any) -> None:
        """
        Add a listening endpoint service.
        """
        self.listeners.append(listener)
        listener.setServiceParent(self)

    def startService(self) -> None:
        if not self.journal.running:
            self.journal.startService()
        super().startService()
        addresses = defer.gatherResults([lsn.address() for lsn in self.listeners])
        addresses.addCallback(
            lambda found: _log.info(
                "primecount {version} listening on {addresses}; {settings}",
                version=__version__,
                addresses=", ".join(found),
                settings=self.settings,
            )
        )

    @defer.inlineCallbacks
    def stopService(self) -> Any:
        """
        Stop accepting; drain the connections, the pipeline, then the
        journal, all within one deadline, C{shutdownTimeout} seconds away
        (none when it is 0). Shortly before it the journal is hurried (no
        more waiting for another process's lock: what waits is answered
        C{ERR journal unavailable}); at it the connections still open are
        dropped. Connections closed meanwhile have their records (a range's
        settle) queued before the journal stops, so it flushes them too.
        """
        service.Service.stopService(self)
        timers = []
        if self.shutdownTimeout:
            early = min(HURRY_BEFORE, self.shutdownTimeout / 2)
            timers.append(self._clock.callLater(self.shutdownTimeout - early, self._hurry))
            timers.append(self._clock.callLater(self.shutdownTimeout, self._drop))
        try:
            yield defer.DeferredList([defer.maybeDeferred(s.stopService) for s in self])
            busy = len(self.connections)
            if busy:
                _log.info(
                    "stopping: answering what {connections} sent, for up to {t:g} s",
                    connections=plural(busy, "open connection"),
                    t=self.shutdownTimeout,
                )
                # Fires once every connection is gone, dropped ones included.
                yield self.connections.closeAll()
            yield self.pipeline.whenDrained()
            yield self.journal.stopService()
            if self.journal.keepsRecords:
                _log.info(
                    "journal closed: {records} committed since the start, in {transactions}",
                    records=plural(self.journal.committed, "record"),
                    transactions=plural(self.journal.batches, "transaction"),
                )
            if self.journal.stuck:
                self._lastResort()
        finally:
            for timer in timers:
                if timer.active():
                    timer.cancel()

    def _lastResort(self) -> None:
        """
        A thread is stuck in a commit the journal gave up (a frozen database
        or file system): the reactor would wait for it forever when it joins
        its thread pool. Exit L{STUCK_MARGIN} seconds from now if the
        process is still there, leaving the commit to the database's own
        recovery.
        """
        _log.warn(
            "stopping: a journal commit is still stuck; exiting in {t:g} s without waiting for it",
            t=STUCK_MARGIN,
        )
        timer = threading.Timer(STUCK_MARGIN, self._exit, (STUCK_EXIT,))
        timer.daemon = True
        timer.start()

    def _hurry(self) -> None:
        """
        The deadline is near: the journal stops waiting for locks.
        """
        self.journal.hurry()

    def _drop(self) -> None:
        """
        The deadline: drop the connections still open.
        """
        if len(self.connections):
            _log.warn(
                "stopping: {connections} still busy after {t:g} s; dropping them",
                connections=plural(len(self.connections), "connection"),
                t=self.shutdownTimeout,
            )
            self.connections.abortAll()


#: Seconds before the stop's deadline at which the journal is hurried, so
#: that what waits for it is answered before the connections are dropped.
HURRY_BEFORE = 0.5

#: Seconds the process still gets to exit by itself once the stop is done
#: while a thread is stuck in a given-up commit; then it exits with
#: L{STUCK_EXIT}.
STUCK_MARGIN = 1.0
STUCK_EXIT = 1


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


def _framing_text(framing: tuple[str, float]) -> str:
    kind, window = framing
    return f"{kind}:{window * 1000:g}" if window else kind


def settings_text(config: Mapping[str, Any]) -> str:
    """
    The settings the options chose, for the start's log line.
    """
    url: JournalURL = config["journal"]
    return (
        f"threads={config['threads']} timeout={config['timeout']:g} "
        f"max-line={config['max-line']} max-connections={config['max-connections']} "
        f"max-per-peer={config['max-per-peer'] or 'off'} "
        f"max-memory={size_text(config['max-memory']).replace(' ', '')} "
        f"cpu-affinity={config['cpu-affinity']} "
        f"close-after-reply={'on' if config['close-after-reply'] else 'off'} "
        f"framing={_framing_text(config['framing'])} "
        f"journal={url}"
        + (f" durability={config['journal-durability']}" if url.scheme != "none" else "")
    )


def metrics_recorder(config: Mapping[str, Any], reactor: Any) -> Metrics | None:
    """
    The metrics recorder C{--metrics-port} asks for, else L{None}.
    """
    if config["metrics-port"] is None:
        return None
    from primecount.metrics.prometheus import Metrics

    return Metrics(clock=reactor)


def metrics_listener(config: Mapping[str, Any], reactor: Any, metrics: Metrics) -> Listener:
    """
    The listener of C{--metrics-port}: C{/metrics} over HTTP, on
    C{--metrics-interface}, behind its own limits (L{MetricsGate}); out of
    descriptors, it answers C{503} with the reserve descriptor.
    """
    from primecount.metrics.http import metricsSite

    gate = MetricsGate(metricsSite(metrics, reactor), reactor)
    label, description, option = metrics_wanted(config["metrics-port"], config["metrics-interface"])
    refusing = RefusingReactor(reactor, METRICS_BUSY, gate.episodes)
    endpoint = endpoints.serverFromString(refusing, description)
    return Listener(label, description, endpoint, gate, option)


def metrics_connections(config: Mapping[str, Any]) -> int:
    """
    The descriptors this process sets aside for the metrics port's
    connections (see L{connection_limit}).
    """
    return METRICS_CONNECTIONS if config["metrics-port"] is not None else 0


def serve(
    config: Mapping[str, Any],
    reactor: Any,
    connections: Connections,
    adopted: list[tuple[str, int, int]] | None = None,
    metrics: Any = None,
    index: int = 0,
) -> PrimecountService:
    """
    A serving process: listening itself, or on C{adopted} sockets
    (label, fd, family) handed down by a supervisor.

    @param config: the parsed options of C{twistd primecount}.
    @param reactor: the reactor it runs on.
    @param connections: the table of open connections and their limits.
    @param metrics: where it records; L{None} for nowhere.
    @param index: which serving process this is (for C{--cpu-affinity}).
    """
    reactor.suggestThreadPoolSize(config["threads"])
    threadpool = reactor.getThreadPool()
    if metrics is None:
        metrics = NullMetrics()
    metrics.watchThreadPool(threadpool)
    journal = open_journal(
        config["journal"],
        reactor,
        durability=config["journal-durability"],
        timeout=config["journal-timeout"],
        metrics=metrics,
    )
    pipeline = Pipeline(reactor, threadpool, journal, metrics)
    budget = MemoryBudget(config["max-memory"], connections.episodes)
    factories: dict[str, Any] = {
        label: CountFactory(
            reactor,
            pipeline,
            timeout=config["timeout"],
            maxLine=config["max-line"],
            closeAfterReply=config["close-after-reply"],
            connections=connections,
            metrics=metrics,
            proxyHeader=label == PROXY,
            trustedProxies=config["trusted-proxies"],
            framing=config["framing"][0],
            readWindow=config["framing"][1],
            budget=budget,
            episodes=connections.episodes,
        )
        for label in (COUNT, PROXY)
    }
    if config["range-port"] is not None or config["range-listen"]:
        from primecount.server.rangeprotocol import RangeFactory

        factories[RANGE] = RangeFactory(
            reactor,
            threadpool,
            journal,
            timeout=config["timeout"],
            connections=connections,
            metrics=metrics,
            trustedProxies=config["trusted-proxies"],
            budget=budget,
            episodes=connections.episodes,
        )
        # One pool of range job slots for both.
        factories[RANGE_PROXY] = factories[RANGE].behindProxy()
    busy = SERVER_BUSY.reply()
    top = PrimecountService(
        pipeline, journal, connections, settings_text(config), config["shutdown-timeout"], reactor
    )
    PlacementService(config["cpu-affinity"], index).setServiceParent(top)

    def refusing(label: str) -> RefusingReactor:
        # Out of descriptors, a TCP listener still answers ERR server busy.
        return RefusingReactor(
            reactor, b"" if label in (RANGE, RANGE_PROXY) else busy, connections.episodes
        )

    if adopted is None:
        for label, description, option in descriptions(
            config["listen"],
            config["range-port"],
            config["interface"],
            config["range-listen"],
            config["port"],
        ):
            endpoint = endpoints.serverFromString(refusing(label), description)
            top.addListener(Listener(label, description, endpoint, factories[label], option))
    else:
        for label, fd, family in adopted:
            top.addListener(Listener.adopted(refusing(label), label, fd, family, factories[label]))
    return top


#: The signals that stop the server in order: Twisted's (SIGTERM, SIGINT)
#: and SIGHUP, which L{OneStopSignal} gives the same meaning.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class OneStopSignal(service.Service):
    """
    Makes SIGHUP a stop signal like SIGTERM, and the first stop signal
    (SIGTERM, SIGINT, SIGHUP) the only one.

    SIGHUP's default action is instant death: a closed terminal sends it to
    a foreground twistd and its workers, and clients were reset, the
    journal's last batch lost, a supervisor's scratch directory left
    behind. Here it stops the server in order, as SIGTERM does (twistd
    then re-raises it, as it does SIGTERM). Log rotation is not SIGHUP's
    job: twistd reopens its C{--logfile} on SIGUSR1. A SIGHUP already
    ignored (C{nohup}) stays ignored.

    Twisted's handlers call C{reactor.stop()} for every signal, and a second
    one while the orderly stop runs raises C{ReactorNotRunning}, logged as a
    traceback. That is what an operator gets from C{pkill -f primecount}, or
    systemd signalling a whole process group: each worker is signalled by
    them and by its supervisor. Once the reactor runs, its handlers are
    wrapped so that the first signal ignores the next ones before it stops
    the reactor; the stop itself stays bounded by C{--shutdown-timeout}.
    Handlers that are not this reactor's (a debugger's, a test runner's) are
    left alone.
    """

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor

    def startService(self) -> None:
        super().startService()
        self._reactor.callWhenRunning(self.install)

    def install(self) -> None:
        """
        Handle SIGHUP; wrap this reactor's stop-signal handlers (main thread
        only).
        """
        if threading.current_thread() is not threading.main_thread():
            return
        if signal.getsignal(signal.SIGHUP) == signal.SIG_DFL:
            signal.signal(signal.SIGHUP, _first_only(self.hangUp))
        for signum in STOP_SIGNALS:
            handler = signal.getsignal(signum)
            if callable(handler) and getattr(handler, "__self__", None) is self._reactor:
                signal.signal(signum, _first_only(handler))

    def hangUp(self, signum: int, frame: Any) -> None:
        """
        SIGHUP: stop as on SIGTERM (what Twisted's own handler does, under
        this signal's name).
        """
        _log.info("Received SIGHUP, shutting down.")
        self._reactor.callFromThread(self._reactor.stop)
        # What twistd re-raises once the reactor has stopped.
        self._reactor._exitSignal = signum


def ignored(signum: int, frame: Any) -> None:
    """
    The handler of every stop signal once one came: nothing to do.

    Not C{SIG_IGN}: a signal that arrived before the first one's handler
    ran (the supervisor's SIGTERM and the terminal's SIGHUP, together) is
    handled after it, and Python raises C{OSError} ("Signal 15 ignored due
    to race condition") into whatever the main thread runs when the handler
    it finds then is C{SIG_IGN}.
    """


def _first_only(handler: Callable[[int, Any], Any]) -> Callable[[int, Any], None]:
    """
    A signal handler that ignores every stop signal from now on, then runs
    C{handler}.
    """

    def first(signum: int, frame: Any) -> None:
        for other in STOP_SIGNALS:
            signal.signal(other, ignored)
        handler(signum, frame)

    return first
