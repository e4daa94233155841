# -*- test-case-name: tests.unit.test_sqlite_journal_faults -*-
"""
The SQLite journal's faults, in process: a WAL that must stay bounded, a lock that
fails commits fast and then lets them resume, a stop that stops waiting
for a lock. Faults under a real server are in
L{tests.system.test_sqlite_journal_faults_process}.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import threading
import time
from typing import Any

from twisted.internet import defer, reactor
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import TestCase

from primecount.journal import JournalUnavailable
from primecount.journal.backends import parse_url
from primecount.journal.interface import JournalURLError
from primecount.journal.records import PROTOCOL_COUNT, Record
from primecount.journal.sqlite import SQLiteJournal, schema
from primecount.journal.sqlite import reader as sqlite_reader
from primecount.journal.sqlite import writer as journal_module
from tests.unit.test_journalcli import RunMixin


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

    def __init__(self, path: str, control: LockControl, **options: Any) -> None:
        self._conn = schema.connect(path, **options)
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


def startLocked(test: TestCase, path: str, control: LockControl) -> SQLiteJournal:
    """
    Start an SQLite journal at C{path} whose connections take the file's
    lock whenever C{control} says so (L{LockedConnection}); stopped after
    C{test}.
    """
    journal = SQLiteJournal(
        path,
        reactor,
        connect=lambda path, **options: LockedConnection(path, control, **options),
    )
    journal.startService()
    test.addCleanup(lambda: journal.stopService() if journal.running else None)
    return journal


class FailFastTests(TestCase):
    """
    Once a commit failed, later ones fail at once while the writer thread
    probes in the background; the first probe that succeeds ends it.
    """

    def setUp(self) -> None:
        self.path = os.path.abspath(self.mktemp())
        self.control = LockControl()
        self.patch(journal_module, "PROBE_INTERVAL", 0.05)
        self.journal = startLocked(self, self.path, self.control)
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


def inOtherProcess(path: str, code: str) -> str:
    """
    Run C{code} in another Python process with C{conn}, a read-write
    SQLite connection to C{path} (closed afterwards, as any reader closes
    its connection); what it prints.
    """
    program = f"import sqlite3\nconn = sqlite3.connect({path!r})\n{code}\nconn.close()\n"
    done = subprocess.run(
        [sys.executable, "-I", "-c", program], capture_output=True, text=True, timeout=30
    )
    if done.returncode != 0:
        raise AssertionError(done.stderr)
    return done.stdout


class OtherProcessTests(TestCase):
    """
    Another process opening and closing the journal (a reader, the tool of
    an operator) after a failure episode: SQLite's locks on the file, which
    tell that process that the journal still uses the C{-wal}, are kept.
    """

    def setUp(self) -> None:
        self.path = os.path.abspath(self.mktemp())
        self.control = LockControl()
        self.patch(journal_module, "PROBE_INTERVAL", 0.02)
        self.patch(journal_module, "CHECKPOINT_INTERVAL", 0.02)
        self.journal = startLocked(self, self.path, self.control)

    @defer.inlineCallbacks
    def test_commitAfterAnEpisodeSeenByOtherProcesses(self) -> Any:
        self.journal.commit([record(0)])
        # The writer thread checkpoints (its connection stays open).
        before = os.path.getsize(self.path)
        deadline = time.monotonic() + 10
        while os.path.getsize(self.path) <= before and time.monotonic() < deadline:
            yield deferLater(0.02)
        # No more checkpoints from now on: what another process sees of a
        # commit is what the commit wrote, in the WAL.
        self.patch(journal_module, "CHECKPOINT_INTERVAL", 600)
        yield deferLater(0.05)
        # An episode: the failed commit drops the journal's connection.
        self.control.locked = True
        self.assertRaises(JournalUnavailable, self.journal.commit, [record(1)])
        self.control.locked = False
        yield commitOnceRecovered(self, self.journal, [record(2)])
        # Another process reads the journal and closes its connection; the
        # journal commits on, and another process reads it all.
        inOtherProcess(self.path, "conn.execute('SELECT count(*) FROM requests').fetchall()")
        self.journal.commit([record(3)])
        seen = inOtherProcess(
            self.path, "print(*[m for (m,) in conn.execute('SELECT message FROM requests')])"
        )
        self.assertEqual(seen.split(), [record(i).message for i in (0, 2, 3)])


def messagesIn(path: str) -> list[str]:
    """
    The messages of the journal file at C{path}, read as any reader would
    (none when it lost even its table: its schema was in a lost WAL too).
    """
    conn = schema.connect(path, readonly=True)
    try:
        if not conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'requests'").fetchall():
            return []
        return [m for (m,) in conn.execute("SELECT message FROM requests ORDER BY id")]
    finally:
        conn.close()


class RenameDuringEpisodeTests(TestCase):
    """
    The journal file renamed (log rotation) and then a failed commit: the
    journal's connection is gone before the rename is noticed, and what
    was committed to the old file stays in it, once, although its last
    commits were still in the C{-wal} named after the path.
    """

    def setUp(self) -> None:
        self.path = os.path.abspath(self.mktemp())
        self.control = LockControl()
        self.patch(journal_module, "PROBE_INTERVAL", 0.02)
        # No checkpoint by the writer thread: the commits stay in the WAL.
        self.patch(journal_module, "CHECKPOINT_INTERVAL", 600)
        self.journal = startLocked(self, self.path, self.control)

    @defer.inlineCallbacks
    def test_oldFileKeepsItsRecords(self) -> Any:
        self.journal.commit([record(0)])
        os.rename(self.path, self.path + ".old")
        self.control.locked = True
        self.assertRaises(JournalUnavailable, self.journal.commit, [record(1)])
        self.control.locked = False
        yield commitOnceRecovered(self, self.journal, [record(2)])
        yield self.journal.stopService()
        self.assertEqual(messagesIn(self.path + ".old"), [record(0).message])
        self.assertEqual(messagesIn(self.path), [record(2).message])


class RenamePendingAtStopTests(TestCase):
    """
    The journal file renamed while a reader's snapshot holds its WAL back,
    and the journal stopped before the next commit: what was committed to
    the old file is in it, although it was still in the C{-wal} named
    after the path.
    """

    @defer.inlineCallbacks
    def test_stopCheckpointsTheRenamedFile(self) -> Any:
        path = os.path.abspath(self.mktemp())
        self.patch(journal_module, "CHECKPOINT_INTERVAL", 600)
        journal = SQLiteJournal(path, reactor)
        journal.startService()
        self.addCleanup(lambda: journal.stopService() if journal.running else None)
        journal.commit([record(0)])
        reader = sqlite3.connect(path, isolation_level=None)
        self.addCleanup(reader.close)
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM requests").fetchall()
        journal.commit([record(1)])
        os.rename(path, path + ".old")
        # Noticed; the reader's snapshot holds the checkpoint back.
        journal.commit([record(2)])
        reader.execute("COMMIT")
        reader.close()
        yield journal.stopService()
        self.assertEqual(messagesIn(path + ".old"), [record(i).message for i in range(3)])


class StrayWALTests(TestCase):
    """
    A journal renamed (or deleted) without its C{-wal} while its last
    commits were only there: a new journal at the path would make SQLite
    discard them, so it is refused at the start with one line that says how
    to put them back.
    """

    def renamedWithoutItsWAL(self) -> tuple[str, str, list[str]]:
        """
        What a C{kill -9} and then a rotation of the file alone leave: the
        renamed file without its last commits, and a C{-wal} at the path
        that holds them.
        """
        path = os.path.abspath(self.mktemp())
        writer = schema.connect(path)
        writer.execute("PRAGMA wal_autocheckpoint=0")
        messages = [f"m{i}" for i in range(200)]
        for m in messages:
            writer.execute(
                "INSERT INTO requests (time, host, port, protocol, message, count, prime)"
                " VALUES (1.0, '127.0.0.1', 1, 'count', ?, 1, 0)",
                (m,),
            )
        # The -wal as a killed process leaves it (a close would checkpoint
        # it into the file and remove it).
        wal = _read(path + "-wal")
        writer.close()
        os.rename(path, path + ".old")
        _write(path + "-wal", wal)
        return path, path + ".old", messages

    def test_startRefusedOverAStrayWAL(self) -> None:
        path, old, messages = self.renamedWithoutItsWAL()
        wal = _read(path + "-wal")
        url = parse_url(f"sqlite:{path}")
        e = self.assertRaises(JournalURLError, journal_module.check_writable, url)
        self.assertIn(f"{path} is missing but {path}-wal", str(e))
        self.assertIn(f"mv {path}-wal OLD-wal", str(e))
        self.assertNotIn("\n", str(e))
        # Nothing was touched: no file at the path, the -wal as it was.
        self.assertFalse(os.path.exists(path))
        self.assertEqual(_read(path + "-wal"), wal)
        # Put back as the line says, the old file has every record.
        os.rename(path + "-wal", old + "-wal")
        if os.path.exists(path + "-shm"):
            os.remove(path + "-shm")
        self.assertEqual(messagesIn(old), messages)
        # And a new journal starts at the path.
        journal_module.check_writable(url)
        self.assertEqual(messagesIn(path), [])

    def test_journalStartsBesideAnEmptyWAL(self) -> None:
        """
        A C{-wal} that holds no frames (a C{TRUNCATE} checkpoint leaves one
        of 0 bytes) is nobody's loss: the journal starts.
        """
        path = os.path.abspath(self.mktemp())
        _write(path + "-wal", b"")
        journal_module.check_writable(parse_url(f"sqlite:{path}"))
        self.assertEqual(messagesIn(path), [])

    @defer.inlineCallbacks
    def test_stopWithTheRenamedFilesCommitsInTheWAL(self) -> Any:
        """
        A rename while another program's reader holds the checkpoint back
        through the stop, and that reader killed: the old file's last
        commits are only in the C{-wal} at the path. The next start
        refuses; put back, the old file has every record.
        """
        path = os.path.abspath(self.mktemp())
        self.patch(journal_module, "CHECKPOINT_INTERVAL", 600)
        journal = SQLiteJournal(path, reactor)
        journal.startService()
        self.addCleanup(lambda: journal.stopService() if journal.running else None)
        journal.commit([record(0)])
        program = (
            "import sqlite3, sys, time\n"
            f"conn = sqlite3.connect({path!r}, isolation_level=None)\n"
            "conn.execute('BEGIN')\n"
            "conn.execute('SELECT count(*) FROM requests').fetchall()\n"
            "print('reading', flush=True)\n"
            "time.sleep(30)\n"
        )
        reader = subprocess.Popen(
            [sys.executable, "-I", "-c", program], stdout=subprocess.PIPE, text=True
        )
        self.addCleanup(reader.wait)
        self.addCleanup(lambda: reader.poll() is None and reader.kill())
        assert reader.stdout is not None
        self.assertEqual(reader.stdout.readline().strip(), "reading")
        journal.commit([record(1)])
        os.rename(path, path + ".old")
        journal.commit([record(2)])
        yield journal.stopService()
        reader.kill()
        reader.wait()
        self.assertGreater(os.path.getsize(path + "-wal"), schema.WAL_HEADER)
        e = self.assertRaises(
            JournalURLError, journal_module.check_writable, parse_url(f"sqlite:{path}")
        )
        self.assertIn("is missing but", str(e))
        self.assertFalse(os.path.exists(path), "a file was made at the path")
        os.rename(path + "-wal", path + ".old-wal")
        if os.path.exists(path + "-shm"):
            os.remove(path + "-shm")
        self.assertEqual(messagesIn(path + ".old"), [record(i).message for i in range(3)])


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _write(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


class RenameBesideCheckpointsTests(TestCase):
    """
    The journal file renamed again and again while the writer thread
    checkpoints without a pause: the journal's own checkpoints never hold
    its switch back (only a reader's snapshot may), so the commit that
    notices a rename is the old file's last, and the next one makes a new
    file at the path.
    """

    @defer.inlineCallbacks
    def test_commitThatNoticesIsTheOldFilesLast(self) -> Any:
        path = os.path.abspath(self.mktemp())
        self.patch(journal_module, "CHECKPOINT_INTERVAL", 0)
        journal = SQLiteJournal(path, reactor)
        journal.startService()
        self.addCleanup(lambda: journal.stopService() if journal.running else None)
        rounds = 30
        for n in range(rounds):
            journal.commit([record(2 * n)])
            self.assertTrue(os.path.exists(path), f"round {n}: still writing the renamed file")
            os.rename(path, f"{path}.{n}")
            journal.commit([record(2 * n + 1)])
        yield journal.stopService()
        kept = [messagesIn(f"{path}.{n}") for n in range(rounds)]
        expected = [[record(2 * n).message, record(2 * n + 1).message] for n in range(rounds)]
        self.assertEqual(kept, expected)


class RenameAtOpen:
    """
    Opens the journal's connections as C{connect} does; once armed, the
    next open first renames the journal file (log rotation), and with
    C{replace} puts an empty file at the path, as C{logrotate}'s
    C{create} does: a rename landing between the journal's check that the
    path names its file and the open of a new connection there.

    @ivar opened: set once the armed open was tried.
    """

    def __init__(self, connect: Any = schema.connect) -> None:
        self._connect = connect
        self._rename: tuple[str, bool] | None = None
        self.opened = threading.Event()

    def arm(self, target: str, replace: bool = False) -> None:
        self.opened.clear()
        self._rename = (target, replace)

    def __call__(self, path: str, **options: Any) -> Any:
        armed, self._rename = self._rename, None
        if armed is None:
            return self._connect(path, **options)
        target, replace = armed
        os.rename(path, target)
        if replace:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        try:
            return self._connect(path, **options)
        finally:
            self.opened.set()


class RenameAtOpenTests(TestCase):
    """
    The journal file renamed right before the journal opens a new
    connection at the path (L{RenameAtOpen}), after it checked that the
    path names its file: whichever connection it is (the checkpointing
    one, the probe's, the journal's own), it makes no file at the path and
    never touches the C{-wal} named after it while that is the old
    file's, so every record committed to the old file stays in it, and the
    next commit that notices the rename starts a new journal at the path.
    """

    def setUp(self) -> None:
        self.path = os.path.abspath(self.mktemp())
        self.old = self.path + ".old"
        self.control = LockControl()
        self.opener = RenameAtOpen(
            lambda path, **options: LockedConnection(path, self.control, **options)
        )
        self.patch(journal_module, "PROBE_INTERVAL", 0.02)
        # No checkpoint unless a test asks: the commits stay in the WAL.
        self.patch(journal_module, "CHECKPOINT_INTERVAL", 600)

    def start(self) -> SQLiteJournal:
        journal = SQLiteJournal(self.path, reactor, connect=self.opener)
        journal.startService()
        self.addCleanup(lambda: journal.stopService() if journal.running else None)
        return journal

    def startWithOneRecord(self) -> SQLiteJournal:
        """
        Start the journal and commit C{record(0)}, which leaves the
        checkpointing connection open: a rename is then checkpointed into
        the old file through it, whatever happened to the journal's.
        """
        journal = self.start()
        journal.commit([record(0)])
        self.assertIsNotNone(journal._checkpointer, "the commit opened no checkpointing connection")
        return journal

    def opened(self) -> None:
        self.assertTrue(self.opener.opened.wait(10), "the armed open never came")

    @defer.inlineCallbacks
    def checkpointerOpensAfterARename(self, replace: bool) -> Any:
        """
        The flaky interleaving of
        L{RenameBesideCheckpointsTests.test_commitThatNoticesIsTheOldFilesLast}:
        the writer thread checkpoints while the first commit to a file
        opens it, so the commit leaves the checkpointing connection to the
        writer thread, whose open lands after the rename.
        """
        self.patch(journal_module, "CHECKPOINT_INTERVAL", 0.01)
        journal = self.start()
        with journal._checkpointLock:
            journal.commit([record(0)])
            self.opener.arm(self.old, replace=replace)
        self.opened()
        if not replace:
            self.assertFalse(os.path.exists(self.path), "a file was made at the path")
        journal.commit([record(1)])
        journal.commit([record(2)])
        yield journal.stopService()
        self.assertEqual(messagesIn(self.old), [record(0).message, record(1).message])
        self.assertEqual(messagesIn(self.path), [record(2).message])

    def test_checkpointingConnection(self) -> Any:
        return self.checkpointerOpensAfterARename(replace=False)

    def test_checkpointingConnectionWhileAnotherFileIsAtThePath(self) -> Any:
        return self.checkpointerOpensAfterARename(replace=True)

    @defer.inlineCallbacks
    def test_probe(self) -> Any:
        journal = self.startWithOneRecord()
        self.control.locked = True
        # The failed commit drops the journal's connection: the probe's
        # is the next one opened.
        self.opener.arm(self.old)
        self.assertRaises(JournalUnavailable, journal.commit, [record(1)])
        self.opened()
        self.control.locked = False
        yield commitOnceRecovered(self, journal, [record(2)])
        yield journal.stopService()
        self.assertEqual(messagesIn(self.old), [record(0).message])
        self.assertEqual(messagesIn(self.path), [record(2).message])

    @defer.inlineCallbacks
    def test_journalsConnection(self) -> Any:
        journal = self.startWithOneRecord()
        self.control.locked = True
        self.assertRaises(JournalUnavailable, journal.commit, [record(1)])
        self.control.locked = False
        # The episode ends (the probe writes the file the journal holds),
        # and the next commit opens the journal's connection again.
        deadline = time.monotonic() + 10
        while journal._blocked is not None:
            self.assertLess(time.monotonic(), deadline, "no recovery")
            yield deferLater(0.02)
        self.opener.arm(self.old)
        self.assertRaises(JournalUnavailable, journal.commit, [record(2)])
        self.opened()
        yield commitOnceRecovered(self, journal, [record(3)])
        yield journal.stopService()
        self.assertEqual(messagesIn(self.old), [record(0).message])
        self.assertEqual(messagesIn(self.path), [record(3).message])

    def test_newJournalRenamedAsItIsMade(self) -> None:
        """
        The journal's file is made private (L{schema.create_private}) and
        renamed before SQLite opens it: SQLite does not make another one,
        readable by every local user, at the path; the open fails.
        """
        made = schema.create_private

        def madeThenRenamed(path: str) -> None:
            made(path)
            os.rename(path, self.old)

        self.patch(schema, "create_private", madeThenRenamed)
        self.assertRaises(sqlite3.OperationalError, schema.connect, self.path)
        self.assertFalse(os.path.exists(self.path))


def mainFileAlone(path: str, copy: str) -> list[str]:
    """
    The messages of the journal file at C{path} copied alone to C{copy}:
    what a crash leaves when the C{-wal} the journal writes was deleted
    (a deleted file goes with the process).
    """
    with open(path, "rb") as source, open(copy, "wb") as target:
        target.write(source.read())
    return messagesIn(copy)


class SidecarDeletedTests(TestCase):
    """
    The journal's C{-wal} or C{-shm} deleted by hand while it runs: what was
    committed into the deleted C{-wal} is copied into the file before the
    next reply, and the journal opens the file again with a C{-wal} and
    C{-shm} of its own at the path. Before, it committed on into the
    deleted C{-wal} until its next checkpoint: a crash then lost them (180
    acknowledged records after C{rm j.sqlite3-wal} and C{kill -9} under
    load).
    """

    def setUp(self) -> None:
        self.path = os.path.abspath(self.mktemp())
        # The writer thread's checkpoints would copy the frames anyway,
        # later: only the commit's own path is tested.
        self.patch(journal_module, "CHECKPOINT_INTERVAL", 600)
        self.patch(journal_module, "CHECKPOINT_EVERY", 1_000_000)
        self.journal = SQLiteJournal(self.path, reactor)
        self.journal.startService()
        self.addCleanup(lambda: self.journal.stopService() if self.journal.running else None)

    @defer.inlineCallbacks
    def assertSurvivesDeleting(self, suffix: str) -> Any:
        yield self.journal.append([record(i) for i in range(5)])
        os.unlink(self.path + suffix)
        yield self.journal.append([record(i) for i in range(5, 10)])
        expected = [record(i).message for i in range(10)]
        if suffix == "-wal":
            self.assertEqual(mainFileAlone(self.path, self.path + ".copy"), expected)
        # The journal goes on with a -wal and -shm at the path, which
        # another process sees.
        yield self.journal.append([record(10)])
        self.assertTrue(os.path.exists(self.path + "-wal"))
        self.assertTrue(os.path.exists(self.path + "-shm"))
        seen = inOtherProcess(
            self.path, "print(*[m for (m,) in conn.execute('SELECT message FROM requests')])"
        )
        self.assertEqual(seen.split(), [*expected, record(10).message])

    def test_walDeleted(self) -> Any:
        return self.assertSurvivesDeleting("-wal")

    def test_shmDeleted(self) -> Any:
        return self.assertSurvivesDeleting("-shm")


class FollowerThroughSidecarDeletionTests(RunMixin, TestCase):
    """
    A C{primecount journal --follow} started before the journal's C{-wal}
    was deleted goes on once the journal opened its file again with a new
    one: its connection still read the deleted C{-wal}, and it stopped
    with C{cannot read journal PATH: disk I/O error}.
    """

    def setUp(self) -> None:
        self.path = os.path.abspath(self.mktemp())
        self.journal = SQLiteJournal(self.path, reactor)
        self.journal.startService()
        self.addCleanup(lambda: self.journal.stopService() if self.journal.running else None)

    def test_followerGoesOn(self) -> None:
        self.journal.commit([record(0)])
        polls: list[float] = []

        def sleep(seconds: float) -> None:
            polls.append(seconds)
            if len(polls) == 1:
                os.unlink(self.path + "-wal")
                self.journal.commit([record(1)])
                self.journal.commit([record(2)])
            elif len(polls) == 2:
                self.journal.commit([record(3)])
            else:
                raise KeyboardInterrupt()

        self.patch(sqlite_reader, "_sleep", sleep)
        status, out, err = RunMixin.journal(self, "--journal", "sqlite:" + self.path, "--follow")
        self.assertEqual((status, err), (0, ""))
        self.assertEqual(
            [line.split(" | ")[2] for line in out.splitlines()],
            [record(i).message for i in range(4)],
        )


@defer.inlineCallbacks
def commitOnceRecovered(test: TestCase, journal: SQLiteJournal, records: list[Record]) -> Any:
    """
    Commit C{records} once the journal's probe ended its failure episode,
    failing C{test} when that takes more than 10 s.
    """
    deadline = time.monotonic() + 10
    while True:
        try:
            journal.commit(records)
            return
        except JournalUnavailable:
            test.assertLess(time.monotonic(), deadline, "no recovery")
            yield deferLater(0.02)


class EmptiedTests(TestCase):
    """
    The journal's file emptied while in use (logrotate's C{copytruncate}):
    nothing more is acknowledged until it is moved away, then a new journal
    starts at the path. Before, SQLite committed on into the C{-wal} and
    checkpointed the pages into the empty file, which no reader could open
    (measured: the server answered every request C{OK}, logged nothing, and
    46,128 and 48,080 acknowledged records were in no readable file).
    """

    def setUp(self) -> None:
        self.path = os.path.abspath(self.mktemp())
        self.patch(journal_module, "PROBE_INTERVAL", 0.02)
        self.patch(journal_module, "CHECKPOINT_INTERVAL", 0.02)
        self.journal = SQLiteJournal(self.path, reactor)
        self.journal.startService()
        self.addCleanup(lambda: self.journal.stopService() if self.journal.running else None)

    @defer.inlineCallbacks
    def test_nothingAcknowledgedIntoAnEmptiedFile(self) -> Any:
        self.journal.commit([record(0)])
        os.truncate(self.path, 0)
        self.assertRaises(JournalUnavailable, self.journal.commit, [record(1)])
        # The probe does not end the episode, the checkpoints leave it alone.
        yield deferLater(0.2)
        self.assertRaises(JournalUnavailable, self.journal.commit, [record(2)])
        self.assertEqual(os.path.getsize(self.path), 0)
        # Moved away: a new journal at the path.
        os.rename(self.path, self.path + ".broken")
        yield commitOnceRecovered(self, self.journal, [record(3)])
        self.assertEqual(messagesIn(self.path), [record(3).message])


class EmptiedWALSavedTests(TestCase):
    """
    When the journal leaves a file that was emptied while in use, the
    commits that were only in its C{-wal} are saved beside the path, and
    read back with the copy taken before the truncation: before, the
    checkpoint at the switch wrote them into the emptied file (254 of
    77,208 acknowledged records lost under 4 clients).
    """

    def setUp(self) -> None:
        self.path = os.path.abspath(self.mktemp())
        self.patch(journal_module, "PROBE_INTERVAL", 0.02)
        # No checkpoint: the first commits stay only in the -wal.
        self.patch(journal_module, "CHECKPOINT_INTERVAL", 600)
        self.patch(journal_module, "CHECKPOINT_EVERY", 1_000_000)
        self.journal = SQLiteJournal(self.path, reactor)
        self.journal.startService()
        self.addCleanup(lambda: self.journal.stopService() if self.journal.running else None)

    @defer.inlineCallbacks
    def test_walSavedForTheCopy(self) -> Any:
        self.journal.commit([record(0), record(1)])
        copy = self.path + ".1"
        with open(self.path, "rb") as source, open(copy, "wb") as target:
            target.write(source.read())
        os.truncate(self.path, 0)
        self.assertRaises(JournalUnavailable, self.journal.commit, [record(2)])
        os.rename(self.path, self.path + ".broken")
        yield commitOnceRecovered(self, self.journal, [record(3)])
        saved = [
            name
            for name in os.listdir(os.path.dirname(self.path))
            if name.startswith(os.path.basename(self.path) + ".emptied-")
        ]
        self.assertEqual(len(saved), 1)
        restored = self.path + ".restored"
        os.rename(copy, restored)
        os.rename(os.path.join(os.path.dirname(self.path), saved[0]), restored + "-wal")
        found = messagesIn(restored)
        # The group answered ERR journal unavailable (in doubt) may be there too.
        self.assertEqual(found[:2], [record(0).message, record(1).message])
