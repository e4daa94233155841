# -*- test-case-name: tests.system.test_workers_process -*-
"""
C{--workers N} with real processes: shared sockets, restarts, clean stop,
shared limits.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

from twisted.trial.unittest import SynchronousTestCase

from primecount.journal.sqlite import schema
from primecount.testing.twistd import ServerProcess
from primecount.workers.supervisor import PARENT_DIED
from tests.helpers import journal_messages, recv_all, recv_lines, sigterm_in_flight

YES = "sí".encode()


def children(pid: int) -> set[int]:
    """
    The live child processes of C{pid}, read from /proc.
    """
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.add(int(entry))
    return found


def wait_for(predicate: object, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return False


def wait_for_workers(test: SynchronousTestCase, server: ServerProcess) -> None:
    """
    Wait until both workers of C{server} run and have adopted the sockets
    (each logged its start); fail C{test} with the log if they do not.
    """
    test.assertTrue(wait_for(lambda: len(children(server.process.pid)) == 2))
    test.assertTrue(
        wait_for(
            lambda: server.readLog(0.05) and server.log.count(b"] primecount 0.1.0 listening") >= 2
        ),
        server.log.decode("utf-8", "replace"),
    )


class WorkersTests(SynchronousTestCase):
    """
    A real C{twistd primecount --workers 2}.
    """

    def start(self, *args: str) -> ServerProcess:
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        server = ServerProcess(
            "--workers", "2", "--journal", "sqlite:j.sqlite3", *args, cwd=self.dir
        )
        self.addCleanup(server.stop)
        wait_for_workers(self, server)
        return server

    def ask(self, server: ServerProcess, message: bytes) -> list[bytes]:
        with server.connect() as sock:
            sock.sendall(message + b"\n")
            return recv_lines(sock, 1)

    def test_killedWorkerIsReplacedAndServiceContinues(self) -> None:
        server = self.start()
        before = children(server.process.pid)
        victim = sorted(before)[0]
        os.kill(victim, signal.SIGKILL)
        self.assertTrue(
            wait_for(lambda: len(children(server.process.pid) - {victim}) == 2),
            "no replacement worker",
        )
        for _ in range(20):
            self.assertEqual(self.ask(server, b"abc2a"), [b"2 " + YES + b"\n"])
        server.readLog(0.2)
        self.assertIn(b"restarting it", server.log)

    def test_sigtermStopsEveryWorkerAndLosesNothing(self) -> None:
        server = self.start()
        workers = children(server.process.pid)
        status, answered = sigterm_in_flight(server, tag="w")
        self.assertIn(status, (0, -signal.SIGTERM))
        alive = [pid for pid in workers if os.path.exists(f"/proc/{pid}")]
        self.assertEqual(alive, [], "orphaned workers")
        self.assertGreater(len(answered), 0)
        stored = journal_messages(os.path.join(self.dir, "j.sqlite3"))
        self.assertEqual([m for m in answered if m not in stored], [])

    def test_signalledAllAtOnceStopsWithoutTraceback(self) -> None:
        """
        SIGTERM to the supervisor and to every worker at once, as
        C{pkill -f primecount} or systemd's default KillMode send it: each
        worker is signalled twice (by it and by its supervisor), and stops
        once, without Twisted's C{ReactorNotRunning} traceback.
        """
        server = self.start()
        workers = children(server.process.pid)
        for pid in (server.process.pid, *workers):
            os.kill(pid, signal.SIGTERM)
        self.assertIn(server.wait(), (0, -signal.SIGTERM))
        self.assertTrue(wait_for(lambda: not any(os.path.exists(f"/proc/{p}") for p in workers)))
        server.readLog(0.2)
        log = server.log.decode("utf-8", "replace")
        self.assertNotIn("Traceback", log)
        self.assertNotIn("ReactorNotRunning", log)

    def test_maxConnectionsHoldsAcrossWorkers(self) -> None:
        server = self.start("--max-connections", "3", "--timeout", "0")
        held = []
        for _ in range(3):
            sock = server.connect()
            sock.sendall(b"a\n")
            self.assertEqual(recv_lines(sock, 1), [b"1 no\n"])
            held.append(sock)
        with server.connect() as extra:
            self.assertEqual(recv_all(extra), b"ERR server busy\n")
        held.pop().close()
        time.sleep(0.3)
        self.assertEqual(self.ask(server, b"a"), [b"1 no\n"])
        for sock in held:
            sock.close()

    def test_maxPerPeerHoldsAcrossWorkers(self) -> None:
        server = self.start("--max-per-peer", "2", "--timeout", "0")
        held = []
        for _ in range(2):
            sock = server.connect()
            sock.sendall(b"a\n")
            recv_lines(sock, 1)
            held.append(sock)
        with server.connect() as extra:
            self.assertEqual(recv_all(extra), b"ERR server busy\n")
        for sock in held:
            sock.close()


def stored_messages(path: str) -> list[str]:
    """
    The messages of every record in the one SQLite file at C{path}.
    """
    import sqlite3

    conn = sqlite3.connect(path, timeout=5)
    try:
        return [m for (m,) in conn.execute("SELECT message FROM requests")]
    finally:
        conn.close()


class JournalPartTests(SynchronousTestCase):
    """
    C{--workers 2 --journal sqlite:PATH}: each worker commits to its own
    part, C{PATH.worker0} and C{PATH.worker1}, and C{primecount journal}
    reads them as one.
    """

    def test_eachWorkerWritesItsPartAndTheReaderShowsEveryRecordOnce(self) -> None:
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        path = os.path.join(directory, "j.sqlite3")
        server = ServerProcess("--workers", "2", "--journal", "sqlite:j.sqlite3", cwd=directory)
        self.addCleanup(server.stop)
        wait_for_workers(self, server)
        parts = [schema.part_path(path, i) for i in range(2)]
        # Each worker opens its part at its first checkpoint tick (0.5 s).
        self.assertTrue(wait_for(lambda: all(os.path.exists(p) for p in parts)))
        answered = []
        # Connections go to whichever worker accepts first: ask until both
        # answered some (bounded).
        for n in range(400):
            message = f"part{n}{'a' * (n % 3)}"
            with server.connect() as sock:
                sock.sendall(message.encode() + b"\n")
                self.assertEqual(len(recv_lines(sock, 1)), 1, message)
            answered.append(message)
            if n % 20 == 19 and all(stored_messages(p) for p in parts):
                break
        written = [stored_messages(p) for p in parts]
        self.assertTrue(all(written), "a worker answered nothing")
        self.assertEqual(stored_messages(path), [], "a worker wrote the shared file")
        self.assertEqual(sorted(written[0] + written[1]), sorted(answered))
        # Read while the server runs: every acknowledged record, once.
        result = subprocess.run(
            [sys.executable, "-m", "primecount", "journal", "--journal", "sqlite:" + path,
             "--format", "jsonl"],
            capture_output=True, timeout=60, check=False,
        )  # fmt: skip
        self.assertEqual((result.returncode, result.stderr), (0, b""))
        lines = [json.loads(line) for line in result.stdout.decode().splitlines()]
        self.assertEqual(sorted(r["message"] for r in lines), sorted(answered))
        self.assertEqual([r["time"] for r in lines], sorted(r["time"] for r in lines))
        self.assertIn(server.stop(), (0, -signal.SIGTERM))
        self.assertNotIn(b"Traceback", server.log)


#: Runs the rest of its command line as systemd runs the service of a
#: C{.socket} unit: the listening socket (descriptor C{argv[1]}) as
#: descriptor 3, C{LISTEN_FDS}, C{LISTEN_FDNAMES}, and C{LISTEN_PID} set to
#: its own pid, which C{exec} keeps.
SOCKET_ACTIVATE = """
import os, sys
fd = int(sys.argv[1])
if fd != 3:
    os.dup2(fd, 3)
    os.close(fd)
os.environ.update(LISTEN_FDS="1", LISTEN_PID=str(os.getpid()), LISTEN_FDNAMES="count")
os.execv(sys.argv[2], sys.argv[2:])
"""


class SystemdSocketTests(SynchronousTestCase):
    """
    C{--workers 2 --listen systemd:…}: the supervisor adopts the socket
    systemd passed and hands it to its workers like any other.
    """

    def test_workersServeTheSystemdSocket(self) -> None:
        listening = socket.socket()
        self.addCleanup(listening.close)
        listening.bind(("127.0.0.1", 0))
        listening.listen(64)
        port = listening.getsockname()[1]
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        server = ServerProcess(
            "--workers", "2", "--journal", "sqlite:j.sqlite3",
            "--listen", "systemd:domain=INET:index=0",
            cwd=directory,
            launcher=[sys.executable, "-c", SOCKET_ACTIVATE, str(listening.fileno())],
            pass_fds=[listening.fileno()],
        )  # fmt: skip
        self.addCleanup(server.stop)
        listening.close()  # the server's alone now
        self.assertEqual(server.ports, {"count": port})
        wait_for_workers(self, server)
        workers = children(server.process.pid)
        asked = [f"sd{n}{'a' * (n % 3)}" for n in range(20)]
        for message in asked:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                sock.sendall(message.encode() + b"\n")
                self.assertEqual(len(recv_lines(sock, 1)), 1, message)
        server.readLog(0.5)
        self.assertNotIn(b"restarting it", server.log)
        self.assertEqual(children(server.process.pid), workers)
        self.assertIn(server.stop(), (0, -signal.SIGTERM))
        self.assertNotIn(b"Traceback", server.log)
        stored = journal_messages(os.path.join(directory, "j.sqlite3"))
        self.assertEqual([m for m in asked if m not in stored], [])


def alive(pid: int) -> bool:
    """
    Whether process C{pid} exists and is not a zombie.
    """
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


class KilledSupervisorTests(SynchronousTestCase):
    """
    A supervisor killed outright (SIGKILL) leaves nothing behind.
    """

    start = WorkersTests.start

    def scratch(self) -> set[str]:
        return {n for n in os.listdir(self.tmp) if "primecount-" in n}

    def test_killedSupervisorLeavesNothingBehind(self) -> None:
        self.tmp = os.path.abspath(self.mktemp())
        os.makedirs(self.tmp)
        self.patch(os, "environ", dict(os.environ, TMPDIR=self.tmp))
        server = self.start("--metrics-port", "0")
        workers = children(server.process.pid)
        first = self.scratch()
        self.assertEqual(len(first), 1, first)
        server.process.kill()
        server.wait()
        # The workers stop by themselves.
        self.assertTrue(wait_for(lambda: not any(alive(w) for w in workers), 30))
        # The next supervisor removes what the killed one left.
        server = self.start("--metrics-port", "0")
        second = self.scratch()
        self.assertEqual(len(second), 1, second)
        self.assertNotEqual(first, second)
        self.assertIn(server.stop(), (0, -signal.SIGTERM))
        self.assertEqual(self.scratch(), set())


ORPHAN = """
import os, signal, sys, time
from primecount.workers import supervisor as workers

# As in a worker, the SIGTERM handler only asks the main loop to stop (Twisted
# stops the reactor on its next turn); the last lines are logged from there,
# never from inside a signal handler, which could interrupt a write.
stopping = []
signal.signal(signal.SIGTERM, lambda signum, frame: stopping.append(signum))
signal.signal(workers.PARENT_DIED, workers._orphaned)
print("ready", flush=True)
deadline = time.monotonic() + 30
while not stopping and time.monotonic() < deadline:
    time.sleep(0.01)
if not stopping:
    os._exit(4)
try:
    for n in range(200):
        print("stopping, line", n, flush=True)
        sys.stderr.write("and on stderr\\n")
        sys.stderr.flush()
except BrokenPipeError:
    os._exit(3)
os._exit(0)
"""


class OrphanTests(SynchronousTestCase):
    """
    A worker whose supervisor died stops quietly: its log, a pipe to the
    dead supervisor, would fail every line with EPIPE.
    """

    def test_orphanedWorkerWritesNoBrokenPipe(self) -> None:
        import subprocess
        import sys

        child = subprocess.Popen(
            [sys.executable, "-c", ORPHAN], stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        self.addCleanup(lambda: child.poll() is None and child.kill())
        assert child.stdout is not None and child.stderr is not None
        self.assertEqual(child.stdout.readline(), b"ready\n")
        # The supervisor is gone: nobody reads the pipes any more.
        child.stdout.close()
        child.stderr.close()
        os.kill(child.pid, PARENT_DIED)
        self.assertEqual(child.wait(30), 0)
