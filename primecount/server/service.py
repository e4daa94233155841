# -*- test-case-name: tests.unit.test_connections,tests.system.test_connections_process -*-
"""
The root service of a serving process (L{PrimecountService}), which starts
its parts and stops them in order, and the stop signals' handling
(L{OneStopSignal}). The parts are composed in L{primecount.compose}.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable
from typing import Any

from twisted.application import service
from twisted.internet import defer
from twisted.logger import Logger

from primecount import __version__
from primecount.core.wording import plural
from primecount.journal import Journal
from primecount.server.connections import Connections
from primecount.server.pipeline import Pipeline

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
                    transactions=plural(self.journal.groups, "transaction"),
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
