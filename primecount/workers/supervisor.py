# -*- test-case-name: tests.unit.test_workers,tests.system.test_workers_process -*-
"""
C{--workers N}: several serving processes sharing the listening sockets.

The parent (the twistd process) binds every listening socket through the
usual endpoints, then stops accepting on them itself and starts N worker
processes that inherit the sockets and adopt them
(C{IReactorSocket.adoptStreamPort}). All workers accept from the same
sockets, so a worker that dies loses no queued connection: the others keep
accepting while the parent starts a replacement (with backoff). On SIGTERM
the parent passes SIGTERM on, waits for every worker's graceful stop, and
only then exits: no orphans. A worker also receives SIGTERM if the parent
dies without doing so (Linux C{PR_SET_PDEATHSIG}).

Workers are ordinary C{twistd -n primecount} processes with the parent's own
options; the environment tells them which inherited descriptors to adopt
(see L{primecount.workers.environment}) and where the shared connection
counts live (L{primecount.workers.shared}).
Each worker writes its own part of an SQLite journal (C{PATH.workerN},
L{primecount.journal.for_worker}), so no worker waits for another's write
lock; C{primecount journal} reads the parts as one.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import signal
import socket
import sys
import time
from collections.abc import Iterable
from typing import Any

from twisted.application import service
from twisted.internet import defer, endpoints, protocol
from twisted.internet.error import CannotListenError, ProcessExitedAlready
from twisted.logger import Logger
from twisted.python.failure import Failure

from primecount.core.privileges import Owner, acting_as
from primecount.metrics.recorder import MetricsRecorder, NullMetrics
from primecount.server.listeners import Wanted, cannot_listen, listener_text
from primecount.workers.environment import (
    FIRST_FD,
    SYSTEMD_ENV,
    WorkerEnvironment,
    primecount_argv,
)
from primecount.workers.shared import SharedCounts

#: The signal Linux sends a worker when its supervisor dies.
PARENT_DIED = signal.SIGUSR2


def _orphaned(signum: int, frame: Any) -> None:
    """
    The supervisor died: the log it relayed (our stdout and stderr) is a
    pipe with no reader, where every line would fail with EPIPE. Send the
    rest to /dev/null and stop gracefully, as on SIGTERM.
    """
    quiet = os.open(os.devnull, os.O_WRONLY)
    os.dup2(quiet, 1)
    os.dup2(quiet, 2)
    os.close(quiet)
    os.kill(os.getpid(), signal.SIGTERM)


def die_with_parent(supervisor: int) -> None:
    """
    Ask Linux to signal this process (C{PARENT_DIED}) when its parent dies,
    so that a worker never outlives a supervisor that was killed outright;
    it then stops gracefully and quietly.

    @param supervisor: the supervisor's pid (0: unknown).
    """
    name = ctypes.util.find_library("c")
    if not name or not sys.platform.startswith("linux"):
        return
    PR_SET_PDEATHSIG = 1
    signal.signal(PARENT_DIED, _orphaned)
    libc = ctypes.CDLL(name, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, PARENT_DIED, 0, 0, 0)
    if supervisor and os.getppid() != supervisor:
        # The supervisor died before the request took effect.
        raise SystemExit(1)


class _Worker(protocol.ProcessProtocol):
    """
    One worker process: relays its log lines, reports its exit.
    """

    def __init__(self, supervisor: Supervisor, index: int) -> None:
        self.supervisor = supervisor
        self.index = index
        self.started = time.monotonic()
        self.exited: defer.Deferred[None] = defer.Deferred()
        self._partial = b""

    def outReceived(self, data: bytes) -> None:
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            self.supervisor.relay(self.index, line)

    errReceived = outReceived

    def processEnded(self, reason: Failure) -> None:
        if self._partial:
            self.supervisor.relay(self.index, self._partial)
        self.supervisor.workerEnded(self, reason)
        self.exited.callback(None)


class Supervisor(service.Service):
    """
    Runs N worker processes on the shared sockets; restarts those that die.

    @ivar restarts: how many workers were restarted.
    """

    _log = Logger()
    #: The longest wait before restarting a worker that keeps dying.
    maxBackoff = 30.0
    #: A worker that ran this long is healthy: its next restart is immediate.
    healthy = 10.0

    def __init__(
        self,
        reactor: Any,
        count: int,
        args: list[str],
        sockets: dict[str, tuple[int, int]],
        counts: SharedCounts,
        env: dict[str, str] | None = None,
        stopTimeout: float | None = 15.0,
        metrics: MetricsRecorder | None = None,
    ) -> None:
        """
        @param count: how many workers.
        @param args: the options after C{primecount} for each worker.
        @param sockets: label -> (fd, family) of the listening sockets.
        @param counts: the connection counts shared with the workers.
        @param env: extra environment for the workers.
        @param stopTimeout: seconds a worker gets to stop before SIGKILL;
            C{None} waits for as long as it takes.
        @param metrics: told of restarts and of workers that are gone.
        """
        self._reactor = reactor
        self.count = count
        self.args = args
        self.sockets = sockets
        self.counts = counts
        self.env = env or {}
        self.stopTimeout = stopTimeout
        self.metrics: MetricsRecorder = metrics if metrics is not None else NullMetrics()
        self.workers: dict[int, _Worker] = {}
        self._failures: dict[int, int] = {}
        self._pending: dict[int, Any] = {}
        self.restarts = 0

    def startService(self) -> None:
        super().startService()
        try:
            for index in range(self.count):
                self.spawn(index)
        except OSError as e:
            # After twistd --uid/--gid: that user cannot run this Python.
            self._log.critical(
                "cannot start worker processes: {why} (as uid {uid}, gid {gid}: "
                "with twistd --uid/--gid, that user must be able to run {python})",
                why=e,
                uid=os.getuid(),
                gid=os.getgid(),
                python=sys.executable,
            )
            raise SystemExit(1) from None

    def spawn(self, index: int) -> None:
        """
        Start worker C{index}.
        """
        self._pending.pop(index, None)
        worker = _Worker(self, index)
        fds: dict[int, Any] = {0: "w", 1: "r", 2: "r"}
        inherited: dict[str, tuple[int, int]] = {}
        for n, (label, (fd, family)) in enumerate(self.sockets.items()):
            fds[FIRST_FD + n] = fd
            inherited[label] = (FIRST_FD + n, family)
        env = {k: v for k, v in os.environ.items() if k not in SYSTEMD_ENV}
        env.update(self.env)
        told = WorkerEnvironment(
            inherited, self.counts.path, self.counts.workers, index, os.getpid()
        )
        env.update(told.encode())
        argv = primecount_argv(*self.args)
        process = self._reactor.spawnProcess(worker, sys.executable, argv, env=env, childFDs=fds)
        worker.pid = process.pid  # type: ignore[attr-defined]
        worker.transport = process
        self.workers[index] = worker

    def relay(self, index: int, line: bytes) -> None:
        """
        Log a line a worker printed, tagged with the worker.
        """
        text = line.decode("utf-8", "replace")
        # Drop the worker's own timestamp: the parent's log adds one.
        if len(text) > 25 and text[4] == "-" and text[10] == "T":
            text = text.split(" ", 1)[1] if " " in text else text
        self._log.info("worker {index}: {line}", index=index, line=text)

    def workerEnded(self, worker: _Worker, reason: Failure) -> None:
        """
        A worker exited: restart it, unless we are stopping.
        """
        index = worker.index
        if self.workers.get(index) is worker:
            del self.workers[index]
        self.counts.reset(index)
        pid = getattr(worker, "pid", None)
        if pid is not None:
            self.metrics.mark_process_dead(pid)
        if not self.running:
            return
        lived = time.monotonic() - worker.started
        failures = 0 if lived >= self.healthy else self._failures.get(index, 0) + 1
        self._failures[index] = failures
        delay = 0.0 if failures == 0 else min(self.maxBackoff, 0.5 * 2 ** (failures - 1))
        self.restarts += 1
        self._log.warn(
            "worker {index} (pid {pid}) exited after {lived:.1f} s ({why}); "
            "restarting it in {delay:g} s",
            index=index,
            pid=getattr(worker, "pid", "?"),
            lived=lived,
            why=reason.getErrorMessage(),
            delay=delay,
        )
        self.metrics.workerRestarted()
        self._pending[index] = self._reactor.callLater(delay, self.spawn, index)

    @defer.inlineCallbacks
    def stopService(self) -> Any:
        """
        SIGTERM every worker, wait for their graceful stop, SIGKILL any that
        outlast C{stopTimeout}.
        """
        super().stopService()
        for call in self._pending.values():
            if call.active():
                call.cancel()
        self._pending.clear()
        workers = list(self.workers.values())
        for worker in workers:
            _signal(worker, "TERM")
        done = defer.DeferredList([w.exited for w in workers])

        def kill() -> None:
            for worker in workers:
                _signal(worker, "KILL")

        timer = None
        if self.stopTimeout is not None:
            timer = self._reactor.callLater(self.stopTimeout, kill)
        yield done
        if timer is not None and timer.active():
            timer.cancel()


def _signal(worker: _Worker, name: str) -> None:
    transport: Any = worker.transport
    # ProcessExitedAlready: already gone, nothing to stop.
    with contextlib.suppress(ProcessExitedAlready, OSError):
        transport.signalProcess(name)


def listening_socket(port: Any) -> tuple[int, int]:
    """
    The descriptor and address family of a listening port the parent bound,
    after taking it out of the parent's reactor (the workers accept on it,
    not the parent).
    """
    port.stopReading()
    fd = port.fileno()
    family = port.socket.family if hasattr(port, "socket") else socket.AF_INET
    os.set_inheritable(fd, True)
    return fd, int(family)


class BoundSockets(service.Service):
    """
    The supervisor's listening sockets, bound before the workers start
    (see L{bind}) and closed at stop.

    @ivar ports: the listening ports, not accepting in this process.
    @ivar sockets: label (made unique by a number) -> (fd, address family),
        for the workers to inherit.
    @ivar addresses: where each listens, as text (C{count 127.0.0.1:5050},
        L{listener_text}).
    """

    def __init__(self) -> None:
        self.ports: list[Any] = []
        self.sockets: dict[str, tuple[int, int]] = {}
        self.addresses: list[str] = []

    def stopService(self) -> Any:
        super().stopService()
        return defer.DeferredList([defer.maybeDeferred(p.stopListening) for p in self.ports])


def bind(reactor: Any, wanted: Iterable[Wanted], owner: Owner | None = None) -> BoundSockets:
    """
    Bind a listening socket for each listener the options ask for and take
    it out of this reactor, for the workers to accept on.

    @param owner: whom twistd switches to after binding (C{--uid}): a UNIX
        socket (and its lock file) is made as that user, who removes it at
        the stop; ports are bound with this process's privileges.
    @raise SystemExit: with one line saying which could not be bound, in
        the words a single process logs (L{cannot_listen}).
    """
    bound = BoundSockets()
    for n, (label, description, option) in enumerate(wanted):
        endpoint = endpoints.serverFromString(reactor, description)
        result: list[Any] = []
        placeholder = protocol.Factory()
        placeholder.noisy = False  # never accepts: the workers do
        unix = isinstance(endpoint, endpoints.UNIXServerEndpoint)
        with acting_as(owner if unix else None):
            endpoint.listen(placeholder).addCallbacks(result.append, result.append)
        if not result or isinstance(result[0], Failure):
            if result and result[0].check(CannotListenError, OSError):
                why = cannot_listen(option, result[0].value)
            else:
                failed = result[0].getErrorMessage() if result else "not bound at once"
                why = f"{option}: cannot listen on {description}: {failed}"
            raise SystemExit(f"twistd primecount: error: {why}")
        port = result[0]
        bound.ports.append(port)
        bound.sockets[f"{label}{n}"] = listening_socket(port)
        bound.addresses.append(listener_text(label, description, port.getHost()))
    return bound
