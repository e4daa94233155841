# -*- test-case-name: tests.test_workers -*-
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
(L{WORKER_ENV}) and where the shared connection counts live (L{COUNTS_ENV}).
Each worker has its own journal writer on the shared SQLite file (WAL; a
writer waits for the other's commit through SQLite's busy timeout).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import fcntl
import mmap
import os
import shutil
import signal
import socket
import stat
import struct
import sys
import tempfile
import time
import zlib
from typing import Any

from twisted.application import service
from twisted.internet import defer, protocol
from twisted.internet.error import ProcessExitedAlready
from twisted.logger import Logger
from twisted.python.failure import Failure

from primecount.metrics.recorder import MetricsRecorder, NullMetrics
from primecount.server.connections import address_text

#: Environment of a worker: "label=fd/family,…", the sockets to adopt.
WORKER_ENV = "PRIMECOUNT_WORKER_SOCKETS"
#: Environment of a worker: the file holding the shared connection counts.
COUNTS_ENV = "PRIMECOUNT_SHARED_COUNTS"

#: Environment of a worker: the supervisor's pid.
SUPERVISOR_ENV = "PRIMECOUNT_SUPERVISOR_PID"

#: Descriptors handed to workers start here (0-2 are the standard streams).
FIRST_FD = 3


def twistd_argv() -> list[str]:
    """
    The command that runs twistd with this interpreter.
    """
    return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


def encode_sockets(sockets: dict[str, tuple[int, int]]) -> str:
    """
    The L{WORKER_ENV} value for C{label -> (fd, address family)}.
    """
    return ",".join(f"{label}={fd}/{family}" for label, (fd, family) in sockets.items())


def decode_sockets(value: str) -> list[tuple[str, int, int]]:
    """
    (label, fd, address family) for each socket in a L{WORKER_ENV} value.
    Several sockets may share a label (several C{--listen}).
    """
    found = []
    for item in filter(None, value.split(",")):
        label, _, rest = item.partition("=")
        fd, _, family = rest.partition("/")
        found.append((label.rstrip("0123456789"), int(fd), int(family)))
    return found


class SharedCounts:
    """
    Connection counts in a shared memory file, so that several worker
    processes enforce one C{--max-connections} and C{--max-per-peer}.

    Each worker owns a section (its total and a table of per-address
    counters indexed by a CRC of the address); limits are checked against
    the sums over all sections, under an C{fcntl} lock (two system calls per
    connection opened or closed). When a worker dies, the supervisor zeroes
    its section, so its connections stop counting. Two addresses that share
    a table slot share its count: the per-address limit errs on the side of
    refusing.
    """

    SLOTS = 1 << 14
    _TOTAL = struct.Struct("=q")
    _SLOT = struct.Struct("=i")
    SECTION = _TOTAL.size + SLOTS * _SLOT.size

    def __init__(self, path: str, workers: int, index: int = 0) -> None:
        """
        @param path: the file; created (zeroed) when missing.
        @param workers: how many sections (workers) it has.
        @param index: the section this process counts its connections in.
        """
        self.path = path
        self.workers = workers
        self.index = index
        size = workers * self.SECTION
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        if os.fstat(self._fd).st_size < size:
            os.ftruncate(self._fd, size)
        self._map = mmap.mmap(self._fd, size)

    def _sum(self, offset: int, kind: struct.Struct) -> int:
        return sum(
            kind.unpack_from(self._map, w * self.SECTION + offset)[0] for w in range(self.workers)
        )

    def _slot(self, host: str) -> int:
        return self._TOTAL.size + (zlib.crc32(host.encode()) % self.SLOTS) * self._SLOT.size

    def acquire(self, host: str, total: int, perPeer: int | None) -> bool:
        """
        Count one more connection from C{host} in this process's section,
        unless the sums over all sections forbid it.
        """
        slot = self._slot(host)
        mine = self.index * self.SECTION
        fcntl.lockf(self._fd, fcntl.LOCK_EX)
        try:
            if self._sum(0, self._TOTAL) >= total:
                return False
            if perPeer is not None and self._sum(slot, self._SLOT) >= perPeer:
                return False
            self._add(mine, self._TOTAL, 1)
            self._add(mine + slot, self._SLOT, 1)
            return True
        finally:
            fcntl.lockf(self._fd, fcntl.LOCK_UN)

    def release(self, host: str) -> None:
        """
        Count one connection from C{host} less.
        """
        mine = self.index * self.SECTION
        fcntl.lockf(self._fd, fcntl.LOCK_EX)
        try:
            self._add(mine, self._TOTAL, -1)
            self._add(mine + self._slot(host), self._SLOT, -1)
        finally:
            fcntl.lockf(self._fd, fcntl.LOCK_UN)

    def _add(self, offset: int, kind: struct.Struct, n: int) -> None:
        (value,) = kind.unpack_from(self._map, offset)
        kind.pack_into(self._map, offset, max(0, value + n))

    def reset(self, index: int) -> None:
        """
        Forget every connection counted in section C{index} (its worker died).
        """
        start = index * self.SECTION
        fcntl.lockf(self._fd, fcntl.LOCK_EX)
        try:
            self._map[start : start + self.SECTION] = bytes(self.SECTION)
        finally:
            fcntl.lockf(self._fd, fcntl.LOCK_UN)

    @property
    def total(self) -> int:
        """
        Open connections across all processes.
        """
        return self._sum(0, self._TOTAL)

    def close(self) -> None:
        """
        Unmap and close the file (it stays on disk).
        """
        self._map.close()
        os.close(self._fd)


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


def die_with_parent() -> None:
    """
    Ask Linux to signal this process (L{PARENT_DIED}) when its parent dies,
    so that a worker never outlives a supervisor that was killed outright;
    it then stops gracefully and quietly.
    """
    name = ctypes.util.find_library("c")
    if not name or not sys.platform.startswith("linux"):
        return
    PR_SET_PDEATHSIG = 1
    signal.signal(PARENT_DIED, _orphaned)
    libc = ctypes.CDLL(name, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, PARENT_DIED, 0, 0, 0)
    supervisor = os.environ.get(SUPERVISOR_ENV)
    if supervisor and os.getppid() != int(supervisor):
        # The supervisor died before the request took effect.
        raise SystemExit(1)


#: The scratch directories of supervisors (shared counts, metrics files)
#: are C{primecount-*} in the temporary directory.
SCRATCH_PREFIX = "primecount-"
#: In a scratch directory: the file its supervisor holds locked (C{flock})
#: for as long as it lives.
OWNER = "owner"


class Scratch:
    """
    A supervisor's scratch directory: locked while the supervisor lives,
    so that the next supervisor to start removes it if this one was killed
    outright (SIGKILL gives it no chance to clean up).

    @ivar path: the directory.
    """

    def __init__(self, base: str | None = None) -> None:
        """
        Remove the scratch directories of supervisors that are gone, then
        make one for this process in C{base} (default: the temporary
        directory).
        """
        base = base if base is not None else tempfile.gettempdir()
        remove_stale_scratch(base)
        # Made and locked under a name the removal skips, then renamed.
        building = tempfile.mkdtemp(prefix="." + SCRATCH_PREFIX, dir=base)
        self._lock = os.open(
            os.path.join(building, OWNER), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600
        )
        fcntl.flock(self._lock, fcntl.LOCK_EX)
        self.path = os.path.join(base, os.path.basename(building)[1:])
        os.rename(building, self.path)

    def remove(self) -> None:
        """
        Remove the directory (at a normal stop).
        """
        shutil.rmtree(self.path, ignore_errors=True)
        os.close(self._lock)


def remove_stale_scratch(base: str) -> list[str]:
    """
    Remove the scratch directories in C{base} whose supervisor is gone
    (their L{OWNER} file is not locked).

    @return: the directories removed.
    """
    removed: list[str] = []
    try:
        names = os.listdir(base)
    except OSError:
        return removed
    for name in names:
        if not name.startswith(SCRATCH_PREFIX):
            continue
        path = os.path.join(base, name)
        try:
            info = os.lstat(path)
            if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
                continue
            fd = os.open(os.path.join(path, OWNER), os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except OSError:
            continue  # not ours, or not one we can tell is stale
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            continue  # its supervisor is alive
        finally:
            os.close(fd)
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


class AdoptedPort(service.Service):
    """
    Accepts on a listening socket inherited from the supervisor.
    """

    def __init__(
        self, reactor: Any, label: str, fd: int, family: int, factory: protocol.Factory
    ) -> None:
        self._reactor = reactor
        self.label = label
        self.fd = fd
        self.family = family
        self.factory = factory
        self.port: Any = None

    def startService(self) -> None:
        super().startService()
        # adoptStreamPort duplicates the descriptor; ours is closed after.
        self.port = self._reactor.adoptStreamPort(self.fd, self.family, self.factory)
        os.close(self.fd)

    def stopService(self) -> Any:
        super().stopService()
        if self.port is not None:
            return self.port.stopListening()
        return None

    def address(self) -> defer.Deferred[str]:
        """
        Fires with where it accepts, as text.
        """
        return defer.succeed(f"{self.label} {address_text(self.port.getHost())}")


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
            L{None} waits for as long as it takes.
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
        for index in range(self.count):
            self.spawn(index)

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
        env = dict(os.environ)
        env.update(self.env)
        env[WORKER_ENV] = encode_sockets(inherited)
        env[COUNTS_ENV] = f"{self.counts.path}:{self.counts.workers}"
        env["PRIMECOUNT_WORKER_INDEX"] = str(index)
        env[SUPERVISOR_ENV] = str(os.getpid())
        argv = [*twistd_argv(), "-n", "--pidfile=", "primecount", *self.args]
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
