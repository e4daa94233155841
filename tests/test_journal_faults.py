# -*- test-case-name: tests.test_journal_faults -*-
"""
The journal's faults: a WAL that must stay bounded, a file deleted or
replaced under the server, a lock held by another process, a stop that must
keep its bound.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import threading
import time
from typing import Any

from twisted.internet import defer, reactor
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase

from primecount.core.count import expected_reply
from primecount.journal import JournalUnavailable, schema
from primecount.journal import sqlite as journal_module
from primecount.journal.records import PROTOCOL_COUNT, Record
from primecount.journal.sqlite import SQLiteJournal

from .helpers import ServerProcess, recv_all, recv_lines


def record(i: int) -> Record:
    return Record(
        1_700_000_000.0 + i, "127.0.0.1", 1000 + i, PROTOCOL_COUNT, f"m{i}-{'x' * 40}", 1, False
    )


def deferLater(seconds: float) -> defer.Deferred[None]:
    from twisted.internet.task import deferLater as later

    return later(reactor, seconds, lambda: None)


def walSize(path: str) -> int:
    try:
        return os.path.getsize(path + "-wal")
    except FileNotFoundError:
        return 0


class WalBoundTests(TestCase):
    """
    Continuous group commits: the WAL stays bounded and shrinks once they stop.
    """

    def setUp(self) -> None:
        self.path = os.path.abspath(self.mktemp())
        self.patch(journal_module, "CHECKPOINT_INTERVAL", 0.05)
        self.journal = SQLiteJournal(self.path, reactor)
        self.journal.startService()
        self.addCleanup(lambda: self.journal.stopService() if self.journal.running else None)

    @defer.inlineCallbacks
    def test_walBoundedUnderContinuousCommits(self) -> Any:
        # Two committers never leave the journal idle: 5,000 groups write
        # ~75 MiB of WAL at ~100 MiB/s, faster than any server load; the WAL
        # must still stay under the 32 MiB promised at any load.
        limit = journal_module.WAL_LIMIT
        peak = [0]
        groups = 2500

        def commit(base: int) -> None:
            for g in range(groups):
                first = base + g * 50
                self.journal.commit([record(i) for i in range(first, first + 50)])
                if g % 25 == 0:
                    peak[0] = max(peak[0], walSize(self.path))

        threads = [threading.Thread(target=commit, args=(n * 1_000_000,)) for n in range(2)]
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads):
            yield deferLater(0.05)
        for t in threads:
            t.join()
        self.assertLess(peak[0], 32 << 20, f"WAL peak {peak[0]} bytes")
        # Once commits stop, the WAL is back under the bound within seconds.
        deadline = time.monotonic() + 10
        while walSize(self.path) > limit and time.monotonic() < deadline:
            yield deferLater(0.05)
        self.assertLessEqual(walSize(self.path), limit)
        conn = schema.connect(self.path, readonly=True)
        try:
            self.assertEqual(conn.execute("SELECT count(*) FROM requests").fetchone()[0], 250_000)
        finally:
            conn.close()


class LockedConnection:
    """
    A real connection whose writes fail with "database is locked" while
    C{control.locked} is set, counting the attempts made from threads other
    than the journal's writer thread (the request path).
    """

    def __init__(self, path: str, control: LockControl) -> None:
        self._conn = schema.connect(path)
        self._control = control

    def execute(self, sql: str, params: Any = ()) -> Any:
        if sql.startswith(("INSERT", "BEGIN", "UPDATE")):
            if threading.current_thread().name != "primecount-journal":
                self._control.requestPathWrites += 1
            if self._control.locked:
                raise sqlite3.OperationalError("database is locked")
        return self._conn.execute(sql, params)

    def executemany(self, sql: str, rows: Any) -> Any:
        return (
            self.execute(sql.strip(), ())
            if self._control.locked
            else self._conn.executemany(sql, rows)
        )

    def interrupt(self) -> None:
        self._conn.interrupt()

    @property
    def in_transaction(self) -> bool:
        return self._conn.in_transaction

    def close(self) -> None:
        self._conn.close()


class LockControl:
    def __init__(self) -> None:
        self.locked = False
        self.requestPathWrites = 0


class FailFastTests(TestCase):
    """
    Once a commit failed, later ones fail at once while the writer thread
    probes in the background; the first probe that succeeds ends it.
    """

    def setUp(self) -> None:
        self.path = os.path.abspath(self.mktemp())
        self.control = LockControl()
        self.patch(journal_module, "PROBE_INTERVAL", 0.05)
        self.journal = SQLiteJournal(
            self.path, reactor, connect=lambda path: LockedConnection(path, self.control)
        )
        self.journal.startService()
        self.addCleanup(lambda: self.journal.stopService() if self.journal.running else None)
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    @defer.inlineCallbacks
    def test_failFastDuringEpisodeThenResume(self) -> Any:
        self.journal.commit([record(0)])
        self.control.locked = True
        self.assertRaises(JournalUnavailable, self.journal.commit, [record(1)])
        tried = self.control.requestPathWrites
        for i in range(2, 12):
            self.assertRaises(JournalUnavailable, self.journal.commit, [record(i)])
        # No SQLite write was attempted on the request path meanwhile.
        self.assertEqual(self.control.requestPathWrites, tried)
        self.control.locked = False
        released = time.monotonic()
        while time.monotonic() - released < 5:
            try:
                self.journal.commit([record(100)])
                break
            except JournalUnavailable:
                yield deferLater(0.01)
        else:
            self.fail("commits did not resume once the lock was gone")
        self.assertLess(time.monotonic() - released, 1.0)
        yield deferLater(0)
        said = [
            e["log_format"]
            for e in self.events
            if e.get("log_namespace", "").startswith("primecount.journal.sqlite")
        ]
        self.assertEqual(len(said), 2, said)
        self.assertIn("cannot commit", said[0])
        self.assertIn("writable again", said[1])
        ended = [e for e in self.events if "writable again" in e.get("log_format", "")]
        self.assertGreaterEqual(ended[0]["failed"], 11)


class LockedJournalServerTests(SynchronousTestCase):
    """
    A real server while another process holds the journal's write lock.
    """

    def test_errAtOnceDuringEpisodeOkSoonAfter(self) -> None:
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        server = ServerProcess("--journal", "sqlite:j.sqlite3", cwd=directory)
        self.addCleanup(server.stop)
        path = os.path.join(directory, "j.sqlite3")
        unavailable = [b"ERR journal unavailable\n"]
        with server.connect(timeout=20) as sock:
            sock.sendall(b"first\n")
            self.assertEqual(recv_lines(sock, 1), [b"1 no\n"])
            locker = sqlite3.connect(path, isolation_level=None)
            locker.execute("BEGIN EXCLUSIVE")
            try:
                # The first failure takes SQLite's busy timeout; every later
                # request is answered at once.
                sock.sendall(b"during0\n")
                self.assertEqual(recv_lines(sock, 1, timeout=20), unavailable)
                for i in range(1, 4):
                    started = time.monotonic()
                    sock.sendall(b"during%d\n" % i)
                    self.assertEqual(recv_lines(sock, 1, timeout=20), unavailable)
                    self.assertLess(time.monotonic() - started, 1.0)
            finally:
                locker.execute("ROLLBACK")
                locker.close()
            released = time.monotonic()
            while True:
                sock.sendall(b"after\n")
                reply = recv_lines(sock, 1, timeout=20)
                if reply != unavailable or time.monotonic() - released > 10:
                    break
                time.sleep(0.05)
            self.assertEqual(reply, [b"1 no\n"])
            self.assertLess(time.monotonic() - released, 2.0)
        server.stop()
        log = server.log.decode()
        self.assertEqual(log.count("cannot commit"), 1, log)
        self.assertEqual(log.count("writable again"), 1, log)


def journalRead(path: str) -> list[str]:
    """
    The messages C{primecount journal --format jsonl} prints for C{path}.
    """
    import json
    import subprocess
    import sys

    argv = [sys.executable, "-m", "primecount", "journal", "--journal", f"sqlite:{path}"]
    done = subprocess.run(
        [*argv, "--format", "jsonl"],
        capture_output=True,
        timeout=30,
    )
    if done.returncode != 0:
        # No journal at the path (or not one): it holds no record.
        return []
    return [json.loads(line)["message"] for line in done.stdout.splitlines()]


class ReplacedJournalTests(SynchronousTestCase):
    """
    The journal file deleted, or renamed and replaced, while the server
    runs: every request answered afterwards is in the file at the path.
    """

    def run_with(self, replace: Any) -> str:
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        server = ServerProcess("--journal", "sqlite:j.sqlite3", cwd=directory)
        self.addCleanup(server.stop)
        path = os.path.join(directory, "j.sqlite3")
        answered = []
        with server.connect(timeout=20) as sock:
            for i in range(5):
                sock.sendall(b"before%d\n" % i)
                self.assertEqual(recv_lines(sock, 1), [b"1 no\n"])
            replace(path)
            for i in range(40):
                message = f"after{i}"
                sock.sendall(message.encode() + b"\n")
                [reply] = recv_lines(sock, 1, timeout=20)
                self.assertIn(reply, [expected_reply(message), b"ERR journal unavailable\n"])
                if reply == expected_reply(message):
                    answered.append(message)
                time.sleep(0.01)
        self.assertGreater(len(answered), 30)
        server.stop()
        stored = journalRead(path)
        missing = [m for m in answered if m not in stored]
        self.assertEqual(missing, [], f"answered but not in {path}: {missing}")
        # A fresh journal: nothing of the old file came back with it.
        self.assertFalse([m for m in stored if m.startswith("before")], stored)
        log = server.log.decode()
        self.assertEqual(log.count("deleted or replaced"), 1, log)
        return path

    def test_deleted(self) -> None:
        self.run_with(os.unlink)

    def test_renamedAndReplaced(self) -> None:
        def rotate(path: str) -> None:
            os.rename(path, path + ".1")
            conn = sqlite3.connect(path)
            conn.execute("CREATE TABLE unrelated (x)")
            conn.close()

        path = self.run_with(rotate)
        # The rotated file keeps what was written to it (and the group
        # whose commit noticed the rotation, committed again at the path).
        rotated = journalRead(path + ".1")
        self.assertEqual(rotated[:5], [f"before{i}" for i in range(5)])
        self.assertIn(rotated[5:], [[], ["after0"]])


class BoundedStopTests(SynchronousTestCase):
    """
    SIGTERM while another process holds the journal's write lock: the
    server keeps its --shutdown-timeout, answering ERR to what it could not
    record.
    """

    def test_sigtermWithLockedJournalKeepsTheBound(self) -> None:
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        server = ServerProcess(
            "--journal", "sqlite:j.sqlite3", "--shutdown-timeout", "3", cwd=directory
        )
        self.addCleanup(server.stop)
        path = os.path.join(directory, "j.sqlite3")
        with server.connect(timeout=20) as sock:
            sock.sendall(b"first\n")
            self.assertEqual(recv_lines(sock, 1), [b"1 no\n"])
            locker = sqlite3.connect(path, isolation_level=None)
            self.addCleanup(locker.close)
            locker.execute("BEGIN EXCLUSIVE")
            sock.sendall(b"blocked\n")
            time.sleep(0.5)
            signalled = time.monotonic()
            server.signal(signal.SIGTERM)
            replies = recv_all(sock, timeout=20)
            status = server.wait(timeout=30)
            took = time.monotonic() - signalled
        self.assertEqual(replies, b"ERR journal unavailable\n")
        self.assertIn(status, (0, -signal.SIGTERM))
        self.assertLess(took, 4.0, server.log.decode())


class RangesCutByStopTests(SynchronousTestCase):
    """
    Range requests cut by a stop are settled before the journal stops.
    """

    def run_stop(self, client: Any) -> tuple[list[tuple[object, ...]], str]:
        from primecount.cli.multiclient import fetch

        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        server = ServerProcess(
            "--journal",
            "sqlite:j.sqlite3",
            "--range-port",
            "0",
            "--shutdown-timeout",
            "2",
            cwd=directory,
        )
        self.addCleanup(server.stop)
        import socket

        with socket.create_connection(("127.0.0.1", server.ports["range"]), timeout=20) as sock:
            self.assertEqual(len(fetch(sock, 100, 200)), 21)
            server.signal(signal.SIGTERM)
            client(sock)
            server.wait(timeout=30)
        conn = sqlite3.connect(os.path.join(directory, "j.sqlite3"), timeout=5)
        try:
            rows = conn.execute(
                "SELECT a, b, count, sum_ok, error FROM requests WHERE protocol = 'range'"
            ).fetchall()
        finally:
            conn.close()
        return rows, server.log.decode()

    def test_clientLeavesDuringTheStop(self) -> None:
        def leave(sock: Any) -> None:
            time.sleep(0.5)
            sock.close()

        rows, log = self.run_stop(leave)
        self.assertEqual(rows, [(100, 200, 21, None, "client disconnected before sending the sum")])
        self.assertNotIn("journal is stopped", log)
        self.assertNotIn("Journal unavailable", log)

    def test_droppedAtTheDeadline(self) -> None:
        rows, log = self.run_stop(lambda sock: recv_all(sock, timeout=20))
        [(a, b, count, sum_ok, error)] = rows
        self.assertEqual((a, b, count, sum_ok), (100, 200, 21, None))
        self.assertIsNotNone(error, "the cut range was left sum unknown")
        self.assertNotIn("journal is stopped", log)
        self.assertNotIn("Journal unavailable", log)


class HurryTests(TestCase):
    """
    L{SQLiteJournal.hurry}: a commit waiting for another writer's lock gives
    up at once, so a stop can keep its deadline.
    """

    def test_hurryEndsTheWaitForALock(self) -> None:
        path = os.path.abspath(self.mktemp())
        journal = SQLiteJournal(path, reactor)
        journal.startService()
        self.addCleanup(journal.stopService)
        journal.commit([record(0)])
        locker = sqlite3.connect(path, isolation_level=None)
        self.addCleanup(locker.close)
        locker.execute("BEGIN EXCLUSIVE")
        self.addCleanup(locker.execute, "ROLLBACK")
        outcome: list[BaseException | None] = []

        def commit() -> None:
            try:
                journal.commit([record(1)])
                outcome.append(None)
            except BaseException as e:
                outcome.append(e)

        waiter = threading.Thread(target=commit)
        waiter.start()
        time.sleep(0.3)
        self.assertEqual(outcome, [], "the commit should still wait for the lock")
        hurried = time.monotonic()
        journal.hurry()
        waiter.join(10)
        self.assertLess(time.monotonic() - hurried, 1.0)
        self.assertEqual(len(outcome), 1)
        self.assertIsInstance(outcome[0], JournalUnavailable)
