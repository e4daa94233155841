# -*- test-case-name: tests.system.test_journal_freeze_process -*-
"""
A frozen journal under a real server: PostgreSQL stopped with SIGSTOP (the
kernel still acknowledges, nothing answers) and an SQLite journal on a
frozen file system (C{fsfreeze} on a loop-mounted ext4 image: needs root,
util-linux, e2fsprogs and a loop device, else the test skips saying so, or
fails under C{CI=true}). Every reply stays
within C{--journal-timeout} (plus the watch interval and margins), and
SIGTERM during the freeze exits within C{--shutdown-timeout} plus the
documented margin. The in-process half is L{tests.unit.test_journal_timeout}.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable

from twisted.trial.unittest import SynchronousTestCase

from primecount.testing import pgcluster
from primecount.testing.processes import missing, require_program
from primecount.testing.twistd import ServerProcess
from tests.helpers import recv_lines, require_root

#: The slowest reply allowed during a freeze with --journal-timeout 2: the
#: timeout, a watch interval, and room for a loaded machine.
SLOWEST_REPLY = 4.5

#: SIGTERM during a freeze with --shutdown-timeout 3: the deadline, the
#: margin of 1 s, and room for a loaded machine (twistd's own exit).
SLOWEST_STOP = 3 + 1 + 2.5


def cluster_pids(data: str) -> list[int]:
    """
    Every process of the PostgreSQL cluster whose data directory is
    C{data}: the postmaster (first line of postmaster.pid) and its children.
    """
    with open(os.path.join(data, "postmaster.pid")) as f:
        postmaster = int(f.readline())
    children = subprocess.run(
        ["pgrep", "-P", str(postmaster)], capture_output=True, text=True, check=False
    ).stdout.split()
    return [postmaster, *map(int, children)]


class Load:
    """
    One client sending a request and reading its reply, again and again,
    timing every reply, until stopped.

    @ivar replies: (seconds it took, reply) for each request.
    """

    def __init__(self, port: int) -> None:
        self.replies: list[tuple[float, bytes]] = []
        self._stop = threading.Event()
        self._sock = socket.create_connection(("127.0.0.1", port), timeout=60)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        i = 0
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self._sock.sendall(b"load%d\n" % i)
                [reply] = recv_lines(self._sock, 1, timeout=60)
            except (OSError, ValueError):
                return
            self.replies.append((time.monotonic() - started, reply))
            i += 1
            time.sleep(0.02)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(70)
        self._sock.close()


class _Freeze:
    """
    A server under load while its journal is frozen for C{FREEZE} seconds.
    """

    def server(self, journal: str) -> ServerProcess:
        directory = os.path.abspath(self.mktemp())  # type: ignore[attr-defined]
        os.makedirs(directory)
        server = ServerProcess(
            "--journal",
            journal,
            "--journal-timeout",
            "2",
            "--shutdown-timeout",
            "3",
            cwd=directory,
        )
        self.addCleanup(server.stop)  # type: ignore[attr-defined]
        return server

    def replies_during(
        self,
        server: ServerProcess,
        freeze: Callable[[], None],
        thaw: Callable[[], None],
        seconds: float,
    ) -> list[tuple[float, bytes]]:
        load = Load(server.port)
        time.sleep(0.5)
        freeze()
        try:
            time.sleep(seconds)
        finally:
            thaw()
        time.sleep(3)
        load.stop()
        return load.replies

    def check_replies(self, replies: list[tuple[float, bytes]]) -> None:
        slowest = max(took for took, _ in replies)
        print(f"replies: {len(replies)}, slowest {slowest:.2f} s")
        self.assertLess(slowest, SLOWEST_REPLY, replies)  # type: ignore[attr-defined]
        kinds = {reply.startswith(b"ERR") for _, reply in replies}
        self.assertEqual(kinds, {True, False})  # type: ignore[attr-defined]
        # Back to OK after the thaw.
        self.assertFalse(replies[-1][1].startswith(b"ERR"), replies[-5:])  # type: ignore[attr-defined]

    def stop_during(
        self, server: ServerProcess, freeze: Callable[[], None], thaw: Callable[[], None]
    ) -> float:
        load = Load(server.port)
        time.sleep(0.5)
        freeze()
        try:
            time.sleep(0.5)
            signalled = time.monotonic()
            server.signal(signal.SIGTERM)
            server.wait(timeout=60)
            took = time.monotonic() - signalled
        finally:
            thaw()
            load.stop()
        print(f"SIGTERM during the freeze: exited after {took:.2f} s")
        return took


class PostgresFreezeTests(_Freeze, SynchronousTestCase):
    """
    PostgreSQL stopped with SIGSTOP, every process of its cluster.
    """

    def setUp(self) -> None:
        self.pg = pgcluster.Cluster()
        self.addCleanup(self.pg.destroy)
        self.pg.start()
        self.url = pgcluster.database(self.pg)
        self.frozen: list[int] = []
        # Whatever happens, the cluster is thawed before it is destroyed.
        self.addCleanup(self.thaw)

    def freeze(self) -> None:
        self.frozen = cluster_pids(self.pg.data)
        for pid in self.frozen:
            os.kill(pid, signal.SIGSTOP)

    def thaw(self) -> None:
        for pid in self.frozen:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)

    def test_repliesBoundedDuringAFreeze(self) -> None:
        server = self.server(self.url)
        replies = self.replies_during(server, self.freeze, self.thaw, 15)
        self.check_replies(replies)
        server.stop()
        log = server.log.decode()
        self.assertEqual(log.count("cannot commit"), 1, log)
        self.assertEqual(log.count("writable again"), 1, log)

    def test_sigtermDuringAFreezeKeepsTheBound(self) -> None:
        server = self.server(self.url)
        took = self.stop_during(server, self.freeze, self.thaw)
        self.assertLess(took, SLOWEST_STOP, server.log.decode())


class FrozenFileSystemTests(_Freeze, SynchronousTestCase):
    """
    An SQLite journal on a file system frozen with C{fsfreeze}.
    """

    def setUp(self) -> None:
        require_root("freeze and mount a file system")
        self.fsfreeze = require_program("fsfreeze", "util-linux")
        mkfs = require_program("mkfs.ext4", "e2fsprogs")
        mount, umount = require_program("mount", "mount"), require_program("umount", "mount")
        self.work = tempfile.mkdtemp(prefix="primecount-freeze-")
        self.addCleanup(subprocess.run, ["rm", "-rf", self.work])
        image = os.path.join(self.work, "fs.img")
        self.mountpoint = os.path.join(self.work, "mnt")
        os.makedirs(self.mountpoint)
        with open(image, "wb") as f:
            f.truncate(64 << 20)
        subprocess.run([mkfs, "-q", image], check=True)
        mounted = subprocess.run([mount, "-o", "loop", image, self.mountpoint], capture_output=True)
        if mounted.returncode:
            raise missing(f"no loop mount here: {mounted.stderr!r}")
        self.addCleanup(subprocess.run, [umount, "-l", self.mountpoint])
        self.addCleanup(self.thaw)

    def freeze(self) -> None:
        subprocess.run([self.fsfreeze, "-f", self.mountpoint], check=True)

    def thaw(self) -> None:
        subprocess.run([self.fsfreeze, "-u", self.mountpoint], capture_output=True)

    def journal(self) -> str:
        return "sqlite:" + os.path.join(self.mountpoint, "j.sqlite3")

    def test_repliesBoundedDuringAFreeze(self) -> None:
        server = self.server(self.journal())
        replies = self.replies_during(server, self.freeze, self.thaw, 6)
        self.check_replies(replies)

    def test_sigtermDuringAFreezeEndsTheStopInTime(self) -> None:
        # A thread blocked in a write to a frozen file system sleeps
        # uninterruptibly in the kernel: no process holding one can exit
        # (not even with SIGKILL) before the thaw. What primecount controls
        # ends in time: every reply, the stop, and its exit call.
        server = self.server(self.journal())
        load = Load(server.port)
        time.sleep(0.5)
        self.freeze()
        try:
            time.sleep(0.5)
            signalled = time.monotonic()
            server.signal(signal.SIGTERM)
            deadline = signalled + SLOWEST_STOP
            while b"exiting in" not in server.log and time.monotonic() < deadline:
                server.readLog(0.1)
            took = time.monotonic() - signalled
        finally:
            self.thaw()
        server.wait(timeout=60)
        load.stop()
        print(f"SIGTERM during a file system freeze: stop done after {took:.2f} s")
        self.assertIn(b"a journal commit is still stuck", server.log)
        self.assertLess(took, SLOWEST_STOP, server.log.decode())
