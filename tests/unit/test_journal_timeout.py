# -*- test-case-name: tests.unit.test_journal_timeout -*-
"""
Bounded commits, in process: a commit that does not finish within the
journal's timeout is given up and answered, whatever the database does; a
commit in doubt is recorded once the journal takes a write again; an
episode still open at the stop is logged with its count. The real-process
faults (a SIGSTOPped PostgreSQL, a frozen file system) are in
L{tests.system.test_journal_freeze_process}.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.task import deferLater
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase

from primecount.journal import JournalUnavailable
from primecount.journal.records import PROTOCOL_COUNT, Record
from primecount.journal.sqlite import SQLiteJournal, schema
from primecount.journal.sqlite import writer as journal_module
from primecount.journal.sqlite.reader import JournalFiles, Query, select_all
from primecount.server.pipeline import Pipeline
from tests.doubles import FakeJournal, FakeReactor, SyncPool


def record(i: int) -> Record:
    return Record(1_700_000_000.0 + i, "127.0.0.1", 1000 + i, PROTOCOL_COUNT, f"m{i}", 1, False)


class BlockingConnection:
    """
    A real SQLite connection whose INSERTs wait, while C{gate} is clear,
    until it is set: a write stuck in a frozen file system, released at
    will. The probe's writes too: the file system is frozen for every
    connection.
    """

    def __init__(self, path: str, gate: threading.Event, **options: Any) -> None:
        self._conn = schema.connect(path, **options)
        self._gate = gate

    def execute(self, sql: str, params: Any = ()) -> Any:
        if sql.startswith("INSERT"):
            self._gate.wait(30)
        return self._conn.execute(sql, params)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


def later(seconds: float) -> defer.Deferred[None]:
    return deferLater(reactor, seconds, lambda: None)


def stored(path: str) -> list[Record]:
    files = JournalFiles(path)
    try:
        return list(select_all(files, Query()))
    finally:
        files.close()


class StuckCommitTests(TestCase):
    """
    A write that blocks: its requests are answered within the timeout,
    later ones fail at once, and once it returns the group is recorded as
    told ERR.
    """

    def setUp(self) -> None:
        self.path = os.path.abspath(self.mktemp())
        self.gate = threading.Event()
        self.gate.set()
        self.patch(journal_module, "PROBE_INTERVAL", 0.05)
        self.journal = SQLiteJournal(
            self.path,
            reactor,
            timeout=0.3,
            connect=lambda path, **options: BlockingConnection(path, self.gate, **options),  # type: ignore[arg-type,return-value]
        )
        self.abandoned: list[frozenset[int]] = []
        self.journal.onAbandon(self.abandoned.append)
        self.journal.startService()
        self.addCleanup(self.release)
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    @defer.inlineCallbacks
    def release(self) -> Any:
        self.gate.set()
        if self.journal.running:
            yield self.journal.stopService()

    @defer.inlineCallbacks
    def test_stuckCommitIsAnsweredThenRecordedAsFailed(self) -> Any:
        self.journal.commit([record(0)])
        self.gate.clear()
        outcome: list[BaseException | None] = []

        def commit() -> None:
            try:
                self.journal.commit([record(1)])
                outcome.append(None)
            except BaseException as e:
                outcome.append(e)

        stuck = threading.Thread(target=commit)
        started = time.monotonic()
        stuck.start()
        # The pipeline is told, from the reactor, which thread's commit was
        # given up, within the timeout and a watch interval.
        while not self.abandoned and time.monotonic() - started < 10:
            yield later(0.02)
        self.assertEqual(self.abandoned, [frozenset({stuck.ident})])
        self.assertLess(time.monotonic() - started, 2.0)
        self.assertTrue(self.journal.stuck)
        # Meanwhile every commit fails at once, and appends too.
        quick = time.monotonic()
        self.assertRaises(JournalUnavailable, self.journal.commit, [record(2)])
        with self.assertRaises(JournalUnavailable):
            yield self.journal.append([record(3)])
        self.assertLess(time.monotonic() - quick, 1.0)
        # The frozen write goes through after all: its clients were told
        # ERR, so the probe records its group as failed.
        self.gate.set()
        stuck.join(10)
        self.assertIsInstance(outcome[0], JournalUnavailable)
        self.assertFalse(self.journal.stuck)
        deadline = time.monotonic() + 10
        while True:
            try:
                self.journal.commit([record(4)])
                break
            except JournalUnavailable:
                self.assertLess(time.monotonic(), deadline, "no recovery")
                yield later(0.02)
        self.assertEqual(
            [(r.message, r.error) for r in stored(self.path)],
            [("m0", None), ("m1", "journal unavailable"), ("m4", None)],
        )
        yield later(0.05)
        said = [e.get("log_format", "") for e in self.events]
        self.assertEqual(len([f for f in said if "cannot commit" in f]), 1, said)
        self.assertEqual(len([f for f in said if "writable again" in f]), 1, said)

    @defer.inlineCallbacks
    def test_stopDoesNotWaitForAStuckWriterThread(self) -> Any:
        # An append stuck in the writer thread: the stop ends anyway, and
        # says that a thread is stuck.
        self.journal.commit([record(0)])
        self.gate.clear()
        appended = self.journal.append([record(1)])
        appended.addErrback(lambda f: f.trap(JournalUnavailable))
        yield later(0.1)
        started = time.monotonic()
        self.journal.hurry()
        yield self.journal.stopService()
        self.assertLess(time.monotonic() - started, 2.0)
        self.assertTrue(self.journal.stuck)
        yield appended


class LockWaitTests(TestCase):
    """
    Another process holds the write lock longer than the journal's timeout:
    the commit fails as locked, with nothing written, before it would be
    given up and left in doubt (written after all once the lock goes).
    """

    @defer.inlineCallbacks
    def test_lockedCommitFailsCleanlyWithinTheTimeout(self) -> Any:
        path = os.path.abspath(self.mktemp())
        journal = SQLiteJournal(path, reactor, timeout=1.0)
        journal.startService()
        self.addCleanup(journal.stopService)
        abandoned: list[frozenset[int]] = []
        journal.onAbandon(abandoned.append)
        journal.commit([record(0)])
        locker = sqlite3.connect(path, isolation_level=None)
        self.addCleanup(locker.close)
        locker.execute("BEGIN EXCLUSIVE")
        outcome: list[BaseException | None] = []

        def commit() -> None:
            try:
                journal.commit([record(1)])
                outcome.append(None)
            except BaseException as e:
                outcome.append(e)

        committing = threading.Thread(target=commit)
        committing.start()
        # The lock is held past the timeout and its watch, then released.
        yield later(1.0 + 2 * 0.25 + 0.1)
        locker.execute("ROLLBACK")
        committing.join(10)
        self.assertEqual(abandoned, [])
        self.assertIsInstance(outcome[0], JournalUnavailable)
        self.assertIn("locked", str(outcome[0]))
        yield later(0.3)
        self.assertEqual([r.message for r in stored(path)], ["m0"])


class InterleavedLock:
    """
    A lock that runs C{before()} once, in the thread and right before the
    first acquisition for which C{when()} is true: the reactor's give-up,
    or another thread's failure, at the worst moment of a thread's work.
    """

    def __init__(self, when: Any, before: Any) -> None:
        self._lock = threading.Lock()
        self._when = when
        self._before = before
        self.fired = False

    def __enter__(self) -> bool:
        if not self.fired and self._when():
            self.fired = True
            self._before()
        return self._lock.__enter__()

    def __exit__(self, *exc: object) -> None:
        self._lock.__exit__(*exc)


class GenerationRaceTests(TestCase):
    """
    The give-up of a commit (L{SQLiteJournal._abandon}, from the reactor)
    and the end of a probe interleaved with other threads' work at the
    worst moment: a commit returns only once its records are committed,
    and a new failure always has a probe looking for its end.
    """

    def setUp(self) -> None:
        self.path = os.path.abspath(self.mktemp())
        self.patch(journal_module, "PROBE_INTERVAL", 0.02)
        self.journal = SQLiteJournal(self.path, reactor)
        self.addCleanup(lambda: self.journal.stopService() if self.journal.running else None)

    def test_commitGivenUpAsItQueuesIsNotAcknowledged(self) -> None:
        committer = threading.current_thread()
        armed = threading.Event()
        self.journal._waitingLock = InterleavedLock(  # type: ignore[assignment]
            lambda: armed.is_set() and threading.current_thread() is committer,
            lambda: self.journal._abandon("commit did not finish within 5 s"),
        )
        self.journal.startService()
        self.journal.commit([record(0)])
        armed.set()
        try:
            self.journal.commit([record(1)])
            acknowledged = True
        except JournalUnavailable:
            # Most often: blocked until the probe (just started) succeeds.
            acknowledged = False
        self.assertTrue(self.journal._waitingLock.fired)  # type: ignore[attr-defined]
        written = [r.message for r in stored(self.path)]
        self.assertEqual((acknowledged, written), (acknowledged, ["m0", "m1"][: 1 + acknowledged]))

    @defer.inlineCallbacks
    def test_failureAsTheProbeEndsStillProbed(self) -> Any:
        journal = self.journal

        def probing() -> bool:
            return threading.current_thread().name.endswith("-probe") and journal._blocked is None

        journal._waitingLock = InterleavedLock(  # type: ignore[assignment]
            probing, lambda: journal._block("database is locked")
        )
        journal.startService()
        journal.commit([record(0)])
        journal._block("database is locked")
        deadline = time.monotonic() + 5
        while True:
            try:
                journal.commit([record(1)])
                break
            except JournalUnavailable:
                self.assertLess(time.monotonic(), deadline, "blocked with no probe")
                yield later(0.02)
        self.assertTrue(journal._waitingLock.fired)  # type: ignore[attr-defined]
        self.assertEqual([r.message for r in stored(self.path)], ["m0", "m1"])


class StopLogsOpenEpisodeTests(TestCase):
    """
    An episode still open at the stop is logged with its count of ERR
    replies (it would otherwise appear nowhere).
    """

    @defer.inlineCallbacks
    def test_countLoggedAtStop(self) -> Any:
        path = os.path.abspath(self.mktemp())
        self.patch(schema, "BUSY_TIMEOUT", 0.1)
        journal = SQLiteJournal(path, reactor)
        journal.startService()
        journal.commit([record(0)])
        locker = sqlite3.connect(path, isolation_level=None)
        self.addCleanup(locker.close)
        locker.execute("BEGIN EXCLUSIVE")
        self.addCleanup(locker.execute, "ROLLBACK")
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        for i in range(1, 6):
            self.assertRaises(JournalUnavailable, journal.commit, [record(i)])
        yield journal.stopService()
        [stop] = [e for e in events if "still failing at the stop" in e.get("log_format", "")]
        self.assertEqual(stop["failed"], 5)
        self.assertEqual(stop["path"], path)


class PipelineAbandonTests(SynchronousTestCase):
    """
    The pipeline answers its job in flight when the journal gives up that
    job's commit, and drops what the stuck job returns later.
    """

    def test_jobOfAGivenUpCommitAnsweredAndNextLeaves(self) -> None:
        from tests.unit.test_pipeline import Sink

        fake = FakeReactor()
        pool = SyncPool(fake)
        journal = FakeJournal()
        pipeline = Pipeline(fake, pool, journal)
        a = Sink("a")
        pool.hold = True
        pipeline.submit(a.requests(2))
        fake.advance(0)
        pipeline.submit(a.requests(1))
        job = pipeline._job
        assert job is not None
        job.thread = 42
        # Another thread's commit was given up: not this job's.
        journal.abandoned[0](frozenset({7}))
        self.assertEqual(a.answered(), 0)
        journal.abandoned[0](frozenset({42}))
        self.assertEqual([p.reply for p in a.pending[:2]], [b"ERR journal unavailable\n"] * 2)
        # The next job left at once; the stuck one's result is dropped.
        self.assertEqual(len(pool.held), 2)
        pool.release()
        self.assertEqual([p.reply for p in a.pending[:2]], [b"ERR journal unavailable\n"] * 2)
        self.assertEqual(a.pending[2].reply, b"1 no\n")
        self.assertEqual(pipeline.inFlight, 0)
