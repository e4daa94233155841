# -*- test-case-name: tests.test_journal -*-
"""
The journal writer: group commit, order, failure and recovery, flush on stop.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import defer, reactor
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase

from primecount.journal import JournalUnavailable, JournalURLError, parse_url, schema
from primecount.journal.records import COUNT, RANGE, Record
from primecount.journal.sqlite import SQLiteJournal, check_writable
from primecount.metrics.prometheus import NullMetrics


def record(i: int) -> Record:
    return Record(1_700_000_000.0 + i, "127.0.0.1", 1000 + i, COUNT, f"m{i}", 1, False)


class FlakyConnection:
    """
    A real connection whose inserts fail while C{broken} is set, and whose
    first commit can be held back until C{gate} is set.
    """

    def __init__(self, path: str, control: Any) -> None:
        self._conn = schema.connect(path)
        self._control = control
        self._rows = 0

    def execute(self, sql: str, params: Any = ()) -> Any:
        if sql.startswith("INSERT"):
            if self._control.broken:
                raise sqlite3.OperationalError("attempt to write a readonly database")
            # One "(?, ?, ...)" group per row, whichever columns it binds.
            self._rows += sql.count("(?")
            if not self._conn.in_transaction:
                # A lone INSERT is a transaction by itself.
                self._committing()
        elif sql == "BEGIN IMMEDIATE":
            self._rows = 0
        elif sql == "COMMIT":
            self._committing()
        return self._conn.execute(sql, params)

    def _committing(self) -> None:
        # Records the transaction's size first: tests watch it to know
        # that the writer is inside a commit.
        self._control.batchSizes.append(self._rows)
        self._rows = 0
        self._control.gate.wait(10)

    def executemany(self, sql: str, rows: Any) -> Any:
        return self._conn.executemany(sql, rows)

    @property
    def in_transaction(self) -> bool:
        return self._conn.in_transaction

    def close(self) -> None:
        self._conn.close()


class Control:
    def __init__(self) -> None:
        self.broken = False
        self.gate = threading.Event()
        self.gate.set()
        self.batchSizes: list[int] = []
        self.opened = 0


class WriterTests(TestCase):
    """
    L{SQLiteJournal} with a real writer thread and a real SQLite file.
    """

    def setUp(self) -> None:
        self.path = os.path.abspath(self.mktemp())
        self.control = Control()

        def connect(path: str) -> Any:
            self.control.opened += 1
            return FlakyConnection(path, self.control)

        self.journal = SQLiteJournal(self.path, reactor, connect=connect)
        self.journal.startService()
        self.addCleanup(self.stop)

    def stop(self) -> defer.Deferred[None]:
        self.control.gate.set()
        if self.journal.running:
            return self.journal.stopService()
        return defer.succeed(None)

    def stored(self) -> list[Record]:
        conn = schema.connect(self.path, readonly=True)
        try:
            return [schema.from_row(r) for r in conn.execute(schema.SELECT + " ORDER BY id")]
        finally:
            conn.close()

    @defer.inlineCallbacks
    def test_recordsCommittedInOrderBeforeFiring(self) -> Any:
        yield self.journal.append([record(0), record(1)])
        self.assertEqual(self.stored(), [record(0), record(1)])
        yield self.journal.append([record(2)])
        self.assertEqual(self.stored(), [record(0), record(1), record(2)])

    @defer.inlineCallbacks
    def test_whatArrivesDuringACommitIsOneGroup(self) -> Any:
        self.control.gate.clear()
        first = self.journal.append([record(0)])
        # Wait until the writer is inside the first transaction.
        for _ in range(200):
            if self.control.batchSizes:
                break
            yield deferLater(0.01)
        later = [self.journal.append([record(i)]) for i in range(1, 51)]
        self.control.gate.set()
        yield defer.gatherResults([first, *later])
        self.assertEqual(self.control.batchSizes, [1, 50])
        self.assertEqual(self.journal.batches, 2)
        self.assertEqual([r.port for r in self.stored()], [1000 + i for i in range(51)])

    @defer.inlineCallbacks
    def test_failureFailsEachRequestThenRecovers(self) -> Any:
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        self.control.broken = True
        failures = []
        for i in range(3):
            try:
                yield self.journal.append([record(i)])
            except JournalUnavailable as e:
                failures.append(str(e))
        self.assertEqual(len(failures), 3)
        self.assertIn("readonly", failures[0])
        self.assertEqual(self.stored(), [])
        self.assertEqual(self.journal.failed, 3)
        self.control.broken = False
        # Commits resume once the writer thread's probe finds the journal
        # writable (every PROBE_INTERVAL): until then they fail at once.
        deadline = time.monotonic() + 10
        while True:
            try:
                yield self.journal.append([record(9)])
                break
            except JournalUnavailable:
                if time.monotonic() > deadline:
                    raise
                yield deferLater(0.01)
        self.assertEqual(self.stored(), [record(9)])
        # A failed commit drops the connection; the next one reopens it.
        self.assertGreater(self.control.opened, 1)
        # One event for the episode, one for the recovery; not one a request.
        said = [
            e["log_format"]
            for e in events
            if e.get("log_namespace", "").startswith("primecount.journal.sqlite")
        ]
        self.assertEqual(len(said), 2)
        self.assertIn("cannot commit", said[0])
        self.assertIn("writable again", said[1])

    def test_commitFromThreadsGroupsWhatWaits(self) -> None:
        # Eight pool threads commit while the first commit is held up: the
        # other seven go in one transaction, led by whichever gets the lock.
        self.control.gate.clear()
        errors: list[BaseException] = []

        def commit(i: int) -> None:
            try:
                self.journal.commit([record(i)])
            except BaseException as e:
                errors.append(e)

        first = threading.Thread(target=commit, args=(0,))
        first.start()
        for _ in range(200):
            if self.control.batchSizes:
                break
            time.sleep(0.01)
        others = [threading.Thread(target=commit, args=(i,)) for i in range(1, 8)]
        for t in others:
            t.start()
        time.sleep(0.1)
        self.control.gate.set()
        for t in [first, *others]:
            t.join(10)
        self.assertEqual(errors, [])
        self.assertEqual(self.control.batchSizes, [1, 7])
        self.assertEqual(sorted(r.port for r in self.stored()), [1000 + i for i in range(8)])

    @defer.inlineCallbacks
    def test_writerThreadCheckpointsTheWal(self) -> Any:
        # Commits never checkpoint (autocheckpoint is off on the committing
        # connection): the pages reach the database file only through the
        # writer thread's passive checkpoints, every CHECKPOINT_INTERVAL.
        for i in range(0, 3000, 100):
            self.journal.commit([record(j) for j in range(i, i + 100)])
        before = os.path.getsize(self.path)
        deadline = time.monotonic() + 5
        while os.path.getsize(self.path) <= before and time.monotonic() < deadline:
            yield deferLater(0.05)
        self.assertGreater(os.path.getsize(self.path), before)
        self.assertEqual(len(self.stored()), 3000)

    def test_commitRaisesWhenItCannotCommit(self) -> None:
        self.control.broken = True
        e = self.assertRaises(JournalUnavailable, self.journal.commit, [record(0)])
        self.assertIn("readonly", str(e))
        self.control.broken = False
        deadline = time.monotonic() + 10
        while True:
            try:
                self.journal.commit([record(1)])
                break
            except JournalUnavailable:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.01)
        self.assertEqual(self.stored(), [record(1)])

    @defer.inlineCallbacks
    def test_commitAfterStopRaises(self) -> Any:
        yield self.journal.stopService()
        self.assertRaises(JournalUnavailable, self.journal.commit, [record(0)])

    @defer.inlineCallbacks
    def test_stopFlushesQueue(self) -> Any:
        self.control.gate.clear()
        waiting = [self.journal.append([record(i)]) for i in range(20)]
        stopped = self.journal.stopService()
        self.control.gate.set()
        yield stopped
        yield defer.gatherResults(waiting)
        self.assertEqual(len(self.stored()), 20)

    @defer.inlineCallbacks
    def test_appendAfterStopFails(self) -> Any:
        yield self.journal.stopService()
        d = self.journal.append([record(0)])
        self.failureResultOf(d, JournalUnavailable)

    @defer.inlineCallbacks
    def test_commitReportedToObserver(self) -> Any:
        seen: list[tuple[int, float]] = []

        class Recorder(NullMetrics):
            def journalCommit(self, records: int, seconds: float) -> None:
                seen.append((records, seconds))

        self.journal._metrics = Recorder()
        yield self.journal.append([record(0), record(1)])
        self.assertEqual([n for n, _ in seen], [2])
        self.assertGreaterEqual(seen[0][1], 0)


def deferLater(seconds: float) -> defer.Deferred[None]:
    from twisted.internet.task import deferLater as later

    return later(reactor, seconds, lambda: None)


class URLTests(SynchronousTestCase):
    """
    C{--journal} values.
    """

    def test_sqliteRelativeToBase(self) -> None:
        url = parse_url("sqlite:j.sqlite3", base="/srv/pc")
        self.assertEqual((url.scheme, url.path), ("sqlite", "/srv/pc/j.sqlite3"))
        self.assertEqual(str(url), "sqlite:/srv/pc/j.sqlite3")

    def test_none(self) -> None:
        self.assertEqual(parse_url("none").scheme, "none")

    def test_unknownScheme(self) -> None:
        self.assertRaises(JournalURLError, parse_url, "mysql://db/primecount")
        self.assertRaises(JournalURLError, parse_url, "primecount.sqlite3")
        self.assertRaises(JournalURLError, parse_url, "sqlite:")

    def test_unwritablePathFailsClearly(self) -> None:
        url = parse_url("sqlite:/nonexistent-dir/x/j.sqlite3")
        e = self.assertRaises(JournalURLError, check_writable, url)
        self.assertIn("/nonexistent-dir/x/j.sqlite3", str(e))


class FirstIdSinceTests(SynchronousTestCase):
    """
    L{schema.first_id_since}: the time index's replacement.
    """

    @given(
        st.lists(st.floats(min_value=0, max_value=50), min_size=0, max_size=60),
        st.lists(st.floats(min_value=-20, max_value=20), min_size=60, max_size=60),
        st.sets(st.integers(min_value=0, max_value=59), max_size=20),
        st.floats(min_value=-100, max_value=3000),
    )
    @settings(max_examples=60, deadline=None)
    def test_neverSkipsAMatchingRecord(
        self, steps: list[float], jitter: list[float], pruned: set[int], when: float
    ) -> None:
        # Times grow with ids, each off by less than TIME_SLACK; some rows
        # were pruned. Every record at or after `when` must be at or above
        # the id returned, and every record well before it below.
        conn = sqlite3.connect(":memory:")
        conn.executescript(schema.CREATE)
        clock = 1000.0
        for i, step in enumerate(steps):
            clock += step
            for sql, params in schema.inserts([record(i)._replace(time=clock + jitter[i])]):
                conn.execute(sql, params)
        for i in pruned:
            conn.execute("DELETE FROM requests WHERE id = ?", (i + 1,))
        found = schema.first_id_since(conn, when)
        for id_, time_ in conn.execute("SELECT id, time FROM requests"):
            if time_ >= when:
                self.assertGreaterEqual(id_, found)
        earlier = conn.execute(
            "SELECT max(id) FROM requests WHERE time < ?", (when - 2 * schema.TIME_SLACK,)
        ).fetchone()[0]
        if earlier is not None:
            self.assertGreater(found, earlier)
        conn.close()


class InsertsTests(SynchronousTestCase):
    """
    L{schema.inserts}: every record once, in order, in as few statements as
    L{schema.MAX_ROWS} allows.
    """

    def test_everyRecordInOrder(self) -> None:
        conn = sqlite3.connect(":memory:")
        conn.executescript(schema.CREATE)
        for n in (0, 1, 7, schema.MAX_ROWS, schema.MAX_ROWS + 1, 3 * schema.MAX_ROWS + 5):
            conn.execute("DELETE FROM requests")
            records = [record(i) for i in range(n)]
            statements = list(schema.inserts(records))
            for sql, params in statements:
                conn.execute(sql, params)
            stored = [schema.from_row(r) for r in conn.execute(schema.SELECT + " ORDER BY id")]
            self.assertEqual(stored, records)
            # One statement (so one implicit transaction) per MAX_ROWS rows.
            self.assertEqual(len(statements), -(-n // schema.MAX_ROWS))
        conn.close()

    def test_countAndRangeRecordsMixed(self) -> None:
        """
        Runs of count records bind only the count columns, range records
        all of them; mixed, every record is stored as it was, in order.
        """
        conn = sqlite3.connect(":memory:")
        conn.executescript(schema.CREATE)
        ranged = Record(1_700_000_000.0, "::1", 9, RANGE, None, 4, None, None, 2, 9, True)
        records = [record(0), ranged, ranged._replace(sum_ok=None), record(1), record(2), ranged]
        statements = list(schema.inserts(records))
        for sql, params in statements:
            conn.execute(sql, params)
        stored = [schema.from_row(r) for r in conn.execute(schema.SELECT + " ORDER BY id")]
        self.assertEqual(stored, records)
        widths = [sql.split(")", 1)[0].count(",") + 1 for sql, _ in statements]
        self.assertEqual(
            widths,
            [
                len(schema.COUNT_COLUMNS),
                len(schema.COLUMNS),
                len(schema.COUNT_COLUMNS),
                len(schema.COLUMNS),
            ],
        )
        conn.close()
