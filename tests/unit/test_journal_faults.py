# -*- test-case-name: tests.unit.test_journal_faults -*-
"""
The journal's faults, in process: a WAL that must stay bounded, a lock that
fails commits fast and then lets them resume, a stop that stops waiting
for a lock. Faults under a real server are in
L{tests.system.test_journal_faults_process}.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from typing import Any

from twisted.internet import defer, reactor
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import TestCase

from primecount.journal import JournalUnavailable, schema
from primecount.journal import sqlite as journal_module
from primecount.journal.records import PROTOCOL_COUNT, Record
from primecount.journal.sqlite import SQLiteJournal


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

    @defer.inlineCallbacks
    def test_oneRequestInTheEpisodeIsOneRequest(self) -> Any:
        """
        The end of an episode in which one request failed says so in good
        English (it said C{1 requests were answered}).
        """
        self.journal.commit([record(0)])
        self.control.locked = True
        self.assertRaises(JournalUnavailable, self.journal.commit, [record(1)])
        self.control.locked = False
        deadline = time.monotonic() + 5
        while self.journal._blocked is not None and time.monotonic() < deadline:
            yield deferLater(0.01)
        self.journal.commit([record(2)])
        yield deferLater(0)
        ended = [e for e in self.events if "writable again" in e.get("log_format", "")]
        said = formatEvent(ended[0])
        self.assertTrue(
            said.endswith("writable again; 1 request answered ERR journal unavailable meanwhile"),
            said,
        )


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
