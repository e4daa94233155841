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
from primecount.journal import Journal, JournalURL, open_journal
from primecount.metrics.recorder import NullMetrics
from primecount.server.connections import Connections, RefusingReactor
from primecount.server.countprotocol import CountFactory
from primecount.server.listeners import (
    COUNT,
    METRICS,
    PROXY,
    RANGE,
    RANGE_PROXY,
    Listener,
    descriptions,
    tcp_description,
)
from primecount.server.pipeline import Pipeline
from primecount.server.placement import PlacementService

if TYPE_CHECKING:
    from primecount.metrics.prometheus import Metrics

_log = Logger(namespace="primecount")


def _plural(n: int, noun: str) -> str:
    """
    C{1 record}, C{2 records}.
    """
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


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
        @param journal: started first, stopped last; L{None} for none.
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
                    connections=_plural(busy, "open connection"),
                    t=self.shutdownTimeout,
                )
                # Fires once every connection is gone, dropped ones included.
                yield self.connections.closeAll()
            yield self.pipeline.whenIdle()
            yield self.journal.stopService()
            if self.journal.keepsRecords:
                _log.info(
                    "journal closed: {records} committed since the start, in {b} transactions",
                    records=_plural(self.journal.committed, "record"),
                    b=self.journal.batches,
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
                connections=_plural(len(self.connections), "connection"),
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


def connection_limit(wanted: int, warn: bool = True) -> int:
    """
    The most connections this process can hold at once: C{wanted}
    (C{--max-connections}), or fewer when the open-files limit, raised as
    far as it goes, cannot cover that many plus L{SPARE_DESCRIPTORS}; then
    one warning names both numbers.
    """
    limit = raise_open_files_limit(wanted + SPARE_DESCRIPTORS)
    if limit == resource.RLIM_INFINITY or limit >= wanted + SPARE_DESCRIPTORS:
        return wanted
    effective = max(1, limit - SPARE_DESCRIPTORS)
    if warn:
        _log.warn(
            "open files limit is {limit}: serving at most {effective} connections at "
            "once, not --max-connections {wanted} (raise the limit, e.g. 'ulimit -n' "
            "or LimitNOFILE=, to serve more)",
            limit=limit,
            effective=effective,
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
    C{--interface}.
    """
    from primecount.metrics.http import metricsSite

    description = tcp_description(config["metrics-port"], config["interface"])
    endpoint = endpoints.serverFromString(reactor, description)
    return Listener(METRICS, description, endpoint, metricsSite(metrics))


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
            framing=config["framing"][0],
            readWindow=config["framing"][1],
        )
        for label in (COUNT, PROXY)
    }
    if config["range-port"] is not None or config["range-listen"]:
        from primecount.server.rangefactory import RangeFactory

        factories[RANGE] = RangeFactory(
            reactor,
            threadpool,
            journal,
            timeout=config["timeout"],
            connections=connections,
            metrics=metrics,
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
        for label, description in descriptions(
            config["listen"], config["range-port"], config["interface"], config["range-listen"]
        ):
            endpoint = endpoints.serverFromString(refusing(label), description)
            top.addListener(Listener(label, description, endpoint, factories[label]))
    else:
        for label, fd, family in adopted:
            top.addListener(Listener.adopted(refusing(label), label, fd, family, factories[label]))
    return top


#: The signals Twisted answers with C{reactor.stop()}.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class OneStopSignal(service.Service):
    """
    Makes the first stop signal (SIGTERM, SIGINT) the only one.

    Twisted's handlers call C{reactor.stop()} for every signal, and a second
    one while the orderly stop runs raises C{ReactorNotRunning}, logged as a
    traceback. That is what an operator gets from C{pkill -f primecount}, or
    systemd signalling a whole process group: each worker is signalled by
    them and by its supervisor. Once the reactor runs, Twisted's handlers are
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
        Wrap this reactor's stop-signal handlers (main thread only).
        """
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in STOP_SIGNALS:
            handler = signal.getsignal(signum)
            if callable(handler) and getattr(handler, "__self__", None) is self._reactor:
                signal.signal(signum, _first_only(handler))


def _first_only(handler: Callable[[int, Any], Any]) -> Callable[[int, Any], None]:
    """
    A signal handler that ignores every stop signal from now on, then runs
    C{handler}.
    """

    def first(signum: int, frame: Any) -> None:
        for other in STOP_SIGNALS:
            signal.signal(other, signal.SIG_IGN)
        handler(signum, frame)

    return first
