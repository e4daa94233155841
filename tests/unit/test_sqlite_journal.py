# -*- test-case-name: tests.unit.test_sqlite_journal -*-
"""
The SQLite journal (L{primecount.journal.sqlite}): its writer (group commit,
order, failure and recovery, flush on stop), its URLs and its schema's
inserts and time look-ups. What every journal shares is in
L{tests.unit.test_journal_interface}.
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

from primecount.journal import JournalUnavailable, JournalURLError, parse_url
from primecount.journal.interface import Query
from primecount.journal.records import PROTOCOL_COUNT, PROTOCOL_RANGE, Record
from primecount.journal.sqlite import SQLiteJournal, check_writable, schema
from primecount.journal.sqlite.reader import JournalFiles, select_all
from primecount.journal.sqlite.stats import FileSource
from primecount.metrics.recorder import NullMetrics


def record(i: int) -> Record:
    return Record(1_700_000_000.0 + i, "127.0.0.1", 1000 + i, PROTOCOL_COUNT, f"m{i}", 1, False)


class FlakyConnection:
    """
    A real connection whose inserts fail while C{broken} is set, and whose
    first commit can be held back until C{gate} is set.
    """

    def __init__(self, path: str, control: Any, **options: Any) -> None:
        self._conn = schema.connect(path, **options)
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

        def connect(path: str, **options: Any) -> Any:
            self.control.opened += 1
            return FlakyConnection(path, self.control, **options)

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
        self.assertEqual(self.journal.groups, 2)
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
        self.assertRaises(JournalURLError, parse_url, "sqlite3:/srv/j.sqlite3")
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

    def test_readsFewRows(self) -> None:
        """
        The search costs a few look-ups, not a scan of the journal: asking
        for both C{min(id)} and C{max(id)} in one C{SELECT} made SQLite
        scan every row (its min/max shortcut takes one aggregate alone),
        0.3 s on 5 million records before every C{--since} query.
        """
        conn = sqlite3.connect(":memory:")
        conn.executescript(schema.CREATE)
        conn.execute(
            "INSERT INTO requests (time, host, port, protocol) "
            "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < 99999) "
            "SELECT 1000.0 + i * 0.01, '127.0.0.1', 1, 'count' FROM n"
        )
        steps = []
        # Called every 100 virtual machine instructions: a scan of 100,000
        # rows takes hundreds of thousands of them.
        conn.set_progress_handler(lambda: steps.append(1) and 0, 100)
        self.assertEqual(schema.first_id_since(conn, 1500.0 + schema.TIME_SLACK), 50001)
        conn.set_progress_handler(None, 0)
        self.assertLess(len(steps), 100)
        conn.close()


class ClockStepSearchTests(SynchronousTestCase):
    """
    L{schema.first_id_since} and L{schema.id_above_until} when the wall
    clock stepped back (NTP) while records were written: the steps the
    writer notes (L{schema.clock_steps}) keep every matching record inside
    the bounds.
    """

    @given(
        st.lists(
            st.tuples(st.floats(min_value=-5000, max_value=50), st.integers(1, 15)),
            min_size=1,
            max_size=12,
        ),
        st.sets(st.integers(min_value=0, max_value=150), max_size=30),
        st.floats(min_value=-6000, max_value=3000),
    )
    @settings(max_examples=80, deadline=None)
    def test_neverSkipsAMatchingRecord(
        self, runs: list[tuple[float, int]], pruned: set[int], when: float
    ) -> None:
        # Runs of records a second apart, each run starting some seconds
        # after or (a step back) before the previous record.
        conn = sqlite3.connect(":memory:")
        conn.executescript(schema.CREATE)
        times = []
        clock = 1000.0
        for jump, length in runs:
            clock += jump
            for _ in range(length):
                times.append(clock)
                clock += 1.0
        for i, when_ in enumerate(times):
            for sql, params in schema.inserts([record(i)._replace(time=when_)]):
                conn.execute(sql, params)
        steps, _ = schema.clock_steps(times, None)
        if steps:
            conn.execute(schema.CLOCK_STEPS)
            conn.executemany("INSERT INTO clock_steps (id) VALUES (?)", [(i + 1,) for i in steps])
        for i in pruned:
            conn.execute("DELETE FROM requests WHERE id = ?", (i + 1,))
        since = schema.first_id_since(conn, when)
        until = schema.id_above_until(conn, when)
        for id_, time_ in conn.execute("SELECT id, time FROM requests"):
            if time_ >= when:
                self.assertGreaterEqual(id_, since)
            else:
                self.assertLess(id_, until)
        conn.close()

    def test_stepsFound(self) -> None:
        """
        A record more than L{schema.STEP_BACK} seconds before the latest
        one starts a new run, compared with the latest time since; a
        smaller disorder does not.
        """
        step = schema.STEP_BACK
        self.assertEqual(schema.clock_steps([5.0, 6.0, 5.5], None), ([], 6.0))
        self.assertEqual(schema.clock_steps([6.0 - step], 6.0), ([], 6.0))
        self.assertEqual(
            schema.clock_steps([100.0, 50.0, 60.0, 49.0 - step, 100.0], 90.0),
            ([1, 3], 100.0),
        )


class ClockStepWriterTests(TestCase):
    """
    A journal written while the wall clock steps back reads back whole with
    C{--since}, C{--until} and C{--stats}: before the writer noted the
    steps, the search over ids skipped every record before a step.
    """

    def setUp(self) -> None:
        self.path = os.path.abspath(self.mktemp())

    @defer.inlineCallbacks
    def write(self, groups: list[list[float]]) -> Any:
        journal = SQLiteJournal(self.path, reactor)
        journal.startService()
        try:
            for group in groups:
                yield journal.append([record(0)._replace(time=t) for t in group])
        finally:
            yield journal.stopService()

    def truth(self, clause: str, value: float) -> int:
        conn = sqlite3.connect(self.path)
        try:
            return int(
                conn.execute(f"SELECT count(*) FROM requests WHERE {clause}", (value,)).fetchone()[
                    0
                ]
            )
        finally:
            conn.close()

    def read(self, query: Query) -> int:
        files = JournalFiles(self.path)
        try:
            return len(list(select_all(files, query)))
        finally:
            files.close()

    def counted(self, query: Query) -> int:
        files = JournalFiles(self.path)
        try:
            source = FileSource(files)
            with source.snapshot():
                return sum(n for _, n, _ in source.buckets(query, 60))
        finally:
            files.close()

    @defer.inlineCallbacks
    def test_windowsAcrossClockSteps(self) -> Any:
        start = 1_700_000_000.0
        before = [start + i * 0.01 for i in range(300)]
        # One hour back between two groups, then half an hour back in the
        # middle of a group; then, after a restart, a day back.
        yield self.write(
            [
                before[:150],
                before[150:],
                [start - 3600 + i * 0.01 for i in range(200)],
                [start - 3598 + i * 0.01 for i in range(50)]
                + [start - 5400 + i * 0.01 for i in range(50)],
            ]
        )
        yield self.write([[start - 86400 + i * 0.01 for i in range(100)]])
        for since in (start + 1.5, start - 3599.0, start - 5399.7, start - 86399.5):
            expected = self.truth("time >= ?", since)
            self.assertGreater(expected, 0)
            self.assertEqual(self.read(Query(since=since)), expected)
            self.assertEqual(self.counted(Query(since=since)), expected)
        for until in (start + 1.5, start - 3599.0, start - 5399.7, start - 86399.5):
            expected = self.truth("time < ?", until)
            self.assertEqual(self.read(Query(until=until)), expected)
            self.assertEqual(self.counted(Query(until=until)), expected)
        conn = sqlite3.connect(self.path)
        try:
            steps = [row[0] for row in conn.execute("SELECT id FROM clock_steps ORDER BY id")]
        finally:
            conn.close()
        self.assertEqual(steps, [301, 551, 601])

    @defer.inlineCallbacks
    def test_noStepNoTable(self) -> Any:
        """
        A journal whose clock never stepped back gets no C{clock_steps}.
        """
        yield self.write([[1000.0 + i for i in range(10)], [1005.0 + i for i in range(10)]])
        conn = sqlite3.connect(self.path)
        try:
            found = conn.execute(
                "SELECT 1 FROM sqlite_master WHERE name = 'clock_steps'"
            ).fetchone()
        finally:
            conn.close()
        self.assertIsNone(found)


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
        ranged = Record(1_700_000_000.0, "::1", 9, PROTOCOL_RANGE, None, 4, None, None, 2, 9, True)
        records = [record(0), ranged, ranged._replace(sum_ok=None), record(1), record(2), ranged]
        statements = list(schema.inserts(records))
        for sql, params in statements:
            conn.execute(sql, params)
        stored = [schema.from_row(r) for r in conn.execute(schema.SELECT + " ORDER BY id")]
        self.assertEqual(stored, records)
        # Each statement names its columns and group_id.
        widths = [sql.split(")", 1)[0].count(",") for sql, _ in statements]
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


#: Count-protocol messages as they can arrive: any text (NUL, non-BMP code
#: points included), or the bytes of a line that was not UTF-8.
_messages = st.one_of(st.text(min_size=1, max_size=20), st.binary(min_size=1, max_size=20))
_int64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
_times = st.floats(allow_nan=False, allow_infinity=False)
_hosts = st.sampled_from(["127.0.0.1", "::1", "10.1.2.3"])
_ports = st.integers(min_value=0, max_value=65535)


def _records(*fields: st.SearchStrategy[Any]) -> st.SearchStrategy[Record]:
    """
    Records of these first fields, the rest L{None} (C{st.builds} would
    fill in the fields with defaults too).
    """
    return st.tuples(*fields).map(lambda values: Record(*values))


#: An answered count request (the statement's fast shape).
_answered = _records(
    _times, _hosts, _ports, st.just(PROTOCOL_COUNT), _messages, _int64, st.booleans()
)
#: Any record the journal may be given: count errors, range records.
_anyRecord = st.one_of(
    _answered,
    _records(
        _times,
        _hosts,
        _ports,
        st.just(PROTOCOL_COUNT),
        st.one_of(st.none(), _messages),
        st.none(),
        st.none(),
        st.text(max_size=20),
    ),
    _records(
        _times,
        _hosts,
        _ports,
        st.just(PROTOCOL_RANGE),
        st.none(),
        st.one_of(st.none(), _int64),
        st.none(),
        st.one_of(st.none(), st.text(max_size=20)),
        _int64,
        _int64,
        st.one_of(st.none(), st.booleans()),
    ),
)

#: Every column, and the type SQLite stored it as.
_TYPED = "SELECT " + ", ".join(f"{c}, typeof({c})" for c in schema.COLUMNS) + " FROM requests"


#: One plain INSERT of every column: the reference L{schema.inserts} is
#: checked against.
PLAIN_INSERT = (
    f"INSERT INTO requests ({', '.join(schema.COLUMNS)}) "
    f"VALUES ({', '.join('?' for _ in schema.COLUMNS)})"
)


class InsertsExactTests(SynchronousTestCase):
    """
    L{schema.inserts} stores every column exactly as one plain
    L{PLAIN_INSERT} of the record does (value and SQLite type), whichever
    row shape it chooses.
    """

    def storedBoth(self, records: list[Record]) -> tuple[list[Any], list[Any]]:
        """
        The rows, typed, that L{schema.inserts} and L{PLAIN_INSERT} store.
        """
        conn = sqlite3.connect(":memory:")
        self.addCleanup(conn.close)
        conn.executescript(schema.CREATE)
        for sql, params in schema.inserts(records):
            conn.execute(sql, params)
        new = conn.execute(_TYPED + " ORDER BY id").fetchall()
        conn.execute("DELETE FROM requests")
        for r in records:
            conn.execute(PLAIN_INSERT, r)
        old = conn.execute(_TYPED + " ORDER BY id").fetchall()
        return new, old

    @given(st.lists(_answered, max_size=schema.MAX_ROWS + 3))
    @settings(max_examples=60, deadline=None)
    def test_answeredCountRecords(self, records: list[Record]) -> None:
        new, old = self.storedBoth(records)
        self.assertEqual(new, old)
        self.assertEqual([schema.from_row(r[::2]) for r in new], records)

    @given(st.lists(_anyRecord, max_size=20))
    @settings(max_examples=60, deadline=None)
    def test_anyRecords(self, records: list[Record]) -> None:
        new, old = self.storedBoth(records)
        self.assertEqual(new, old)
        self.assertEqual([schema.from_row(r[::2]) for r in new], records)

    def test_edges(self) -> None:
        """
        NUL, non-BMP and non-UTF-8 messages, the int64 bounds, a subnormal
        time: each stored as it was, BLOB for bytes, INTEGER for bools.
        """
        records = [
            Record(5e-324, "::1", 0, PROTOCOL_COUNT, "a\x00b", 2**63 - 1, True),
            Record(
                1.7e9 + 1 / 3,
                "h",
                65535,
                PROTOCOL_COUNT,
                "\U0001f600\u00e9\U0010ffff",
                -(2**63),
                False,
            ),
            Record(-0.0, "h", 1, PROTOCOL_COUNT, b"\xff\x00\xfe", 1, False),
        ]
        new, old = self.storedBoth(records)
        self.assertEqual(new, old)
        self.assertEqual([schema.from_row(r[::2]) for r in new], records)
        self.assertEqual([r[9] for r in new], ["text", "text", "blob"])
        self.assertEqual([r[13] for r in new], ["integer"] * 3)

    def test_answeredCountRowsBindSixParameters(self) -> None:
        """
        A group of answered count records binds six parameters a row: the
        protocol and the NULL error are in the statement, not bound.
        """
        records = [record(i) for i in range(5)]
        ((sql, params),) = schema.inserts(records, 7)
        # And the group id, once for the statement.
        self.assertEqual(len(params), 6 * len(records) + 1)
        self.assertEqual(sql.count("'count'"), len(records))
        withError = [*records, record(5)._replace(count=None, prime=None, error="ERR x")]
        ((sql, params),) = schema.inserts(withError, 7)
        self.assertEqual(len(params), len(schema.COUNT_COLUMNS) * len(withError) + 1)

    def test_everyRowCarriesItsGroupId(self) -> None:
        """
        Every row a group inserts, whatever its shape and however many
        statements the group takes, carries the group's id.
        """
        conn = sqlite3.connect(":memory:")
        conn.executescript(schema.CREATE)
        ranged = Record(1_700_000_000.0, "::1", 9, PROTOCOL_RANGE, None, 4, None, None, 2, 9, True)
        plain = [record(i) for i in range(schema.MAX_ROWS + 3)]
        for group, records in ((5, plain), (6, [record(0), ranged, record(1)])):
            for sql, params in schema.inserts(records, group):
                conn.execute(sql, params)
        groups = [g for (g,) in conn.execute("SELECT group_id FROM requests ORDER BY id")]
        self.assertEqual(groups, [5] * len(plain) + [6] * 3)
        conn.close()
