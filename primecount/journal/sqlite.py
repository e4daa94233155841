# -*- test-case-name: tests.unit.test_journal -*-
"""
The request journal: every request recorded, durably, before it is answered.

One writer thread owns the SQLite connection. Records queue up while it
commits; each commit takes everything that arrived meanwhile (group commit),
so under load the cost of a transaction is shared by many requests. The
L{Deferred} returned by L{SQLiteJournal.append} fires only after the
transaction holding its records has committed: the request path writes a
reply only then, so a C{kill -9} can never lose a request whose answer a
client received.

Durability: the database is in WAL mode. By default (durability
C{process}, C{synchronous=NORMAL}) a commit survives the server process
being killed; with C{disk} (C{synchronous=FULL}) every group commit is also
flushed to disk and survives a crash or power loss of the host, at the cost
of one fsync per group. There is no C{standby} for SQLite.

Faults: the writer thread keeps the WAL bounded (L{WAL_LIMIT}); once a
commit fails, later ones fail at once while the writer thread probes for
the end of the episode; after every transaction the path is checked to
still name the open file (a deleted or replaced journal is reopened at the
path before anything is acknowledged); L{SQLiteJournal.hurry} stops waiting
for other writers' locks so that a stop keeps its deadline.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from primecount.journal import DEFAULT_TIMEOUT, DISK, PROCESS, JournalURL, JournalURLError, schema
from primecount.journal.base import _WAKE, ThreadedJournal
from primecount.journal.records import Record
from primecount.metrics.recorder import MetricsRecorder


def check_writable(url: JournalURL) -> None:
    """
    Open the database once, creating the schema, to fail early and clearly.

    @raise JournalURLError: when the file cannot be opened or written.
    """
    if url.scheme != "sqlite":
        return
    try:
        conn = schema.connect(url.path)
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("ROLLBACK")
        finally:
            conn.close()
    except sqlite3.Error as e:
        raise JournalURLError(f"cannot write journal {url.path}: {e}") from None


#: SQLite's C{synchronous} setting for each durability.
SYNCHRONOUS = {PROCESS: "NORMAL", DISK: "FULL"}

#: Seconds between the writer thread's WAL checkpoints.
CHECKPOINT_INTERVAL = 0.5

#: The WAL's bound in bytes. Once this much is written to it since it last
#: restarted, the writer thread finishes a checkpoint while holding the
#: commit lock, so the next commit restarts the WAL from its beginning
#: (reusing its file: no new disk space); a WAL file left bigger than this
#: is truncated (C{journal_size_limit}).
WAL_LIMIT = 4 << 20

#: SQLite's busy timeout, in milliseconds, for that locked checkpoint: it
#: holds up commits, so it gives up quickly when a reader or another
#: process is in the way and tries again at the next interval.
LOCKED_CHECKPOINT_BUSY_MS = 100

#: Seconds between the writer thread's probes while commits fail.
PROBE_INTERVAL = 0.25

#: SQLite's busy timeout, in milliseconds, for a probe.
PROBE_BUSY_MS = 100

#: SQLite's busy timeout, in milliseconds, on the committing connection:
#: a commit waits for another writer in steps of this, up to
#: L{schema.BUSY_TIMEOUT} in all, so that L{SQLiteJournal.hurry} can cut the
#: wait short (SQLite's own wait cannot be interrupted).
BUSY_STEP_MS = 50

#: Group commits after which the writer thread checkpoints at once rather
#: than at its next interval: a fast disk fills the WAL quicker than
#: L{CHECKPOINT_INTERVAL} (each commit writes at least a page or two).
CHECKPOINT_EVERY = 128


class SQLiteJournal(ThreadedJournal):
    """
    The SQLite journal, committing in groups, one transaction at a time
    (group commit and the writer thread: L{ThreadedJournal}).

    @ivar path: the database file.
    @ivar batches: how many transactions were committed.
    @ivar committed: how many records were committed.
    @ivar failed: how many records could not be committed.
    """

    _threadName = "primecount-journal"

    def __init__(
        self,
        path: str,
        reactor: Any,
        *,
        durability: str = PROCESS,
        timeout: float = DEFAULT_TIMEOUT,
        connect: Callable[[str], sqlite3.Connection] = schema.connect,
        metrics: MetricsRecorder | None = None,
    ) -> None:
        """
        @param path: the database file.
        @param reactor: used to hand results back to the reactor thread.
        @param durability: L{PROCESS} or L{DISK} (flush every group commit
            to disk: power-loss safe).
        @param timeout: seconds a commit may take before it is given up.
        @param connect: opens the database (tests hand in failing ones).
        @param metrics: told each group commit's size and duration, and how
            many records could not be committed.
        """
        if durability not in (PROCESS, DISK):
            raise ValueError(
                f"an SQLite journal offers durability process or disk, not {durability}"
            )
        super().__init__(reactor, metrics=metrics, timeout=timeout)
        self.path = path
        self.durability = durability
        self._connect = connect
        self._conn: sqlite3.Connection | None = None
        # (st_dev, st_ino) of the file _conn has open.
        self._identity: tuple[int, int] | None = None
        # The writer thread's checkpointing connection; _checkpointLock
        # guards it (taken after _commitLock when both are needed).
        self._checkpointLock = threading.Lock()
        self._checkpointer: sqlite3.Connection | None = None
        self._sinceCheckpoint = 0
        self._checkpointDue = False
        self._nextCheckpoint: float | None = None

    def hurry(self) -> None:
        """
        The stop's deadline is near: from now on no commit waits for another
        writer's lock (a busy journal fails at once, and the commit waiting
        now gives up within L{BUSY_STEP_MS}), so the stop keeps its bound.
        What can be written still is.
        """
        super().hurry()

    # -- backend hooks ------------------------------------------------------------

    def _place(self) -> tuple[str, str]:
        return "path", self.path

    def _probeInterval(self) -> float:
        return PROBE_INTERVAL

    def _write(self, records: list[Record]) -> str | None:
        statements = list(schema.inserts(records))

        def insert(conn: sqlite3.Connection) -> None:
            for sql, params in statements:
                conn.execute(sql, params)

        # A single INSERT is a transaction of its own: no BEGIN and COMMIT.
        return self._transaction(insert, single=len(statements) == 1)

    def _settleRecords(self, records: Sequence[Record]) -> str | None:
        rows = [schema.settle_row(r) for r in records]
        return self._transaction(lambda conn: conn.executemany(schema.SETTLE, rows))

    def _afterCommit(self) -> None:
        self._sinceCheckpoint += 1
        if self._sinceCheckpoint >= CHECKPOINT_EVERY and not self._checkpointDue:
            self._checkpointDue = True
            self._queue.put(_WAKE)

    def _tick(self, now: float) -> float:
        """
        Checkpoint every L{CHECKPOINT_INTERVAL}, or at once when
        L{CHECKPOINT_EVERY} commits ran since the last one.
        """
        if self._nextCheckpoint is None:
            self._nextCheckpoint = now + CHECKPOINT_INTERVAL
        if self._checkpointDue or now >= self._nextCheckpoint:
            self._sinceCheckpoint = 0
            self._checkpointDue = False
            self._checkpoint()
            self._nextCheckpoint = time.monotonic() + CHECKPOINT_INTERVAL
        return self._nextCheckpoint

    def _finishing(self) -> None:
        self._nextCheckpoint = None
        with self._checkpointLock:
            if self._checkpointer is not None:
                _close_quietly(self._checkpointer)
                self._checkpointer = None

    def _drop(self) -> None:
        if self._conn is not None:
            _close_quietly(self._conn)
            self._conn = None

    # -- transactions ---------------------------------------------------------------

    def _transaction(
        self, write: Callable[[sqlite3.Connection], object], single: bool = False
    ) -> str | None:
        """
        Run C{write} in one transaction on the journal's connection (the
        caller holds C{_commitLock}), opening it when needed. With C{single},
        C{write} runs one statement, which SQLite makes a transaction by
        itself (the connection is in autocommit mode).

        Then, before anything is acknowledged, check that the path still
        names the file written to: if it was deleted, or renamed and
        replaced, open a journal at the path and run C{write} again there.

        @return: L{None} once committed, else why it failed (rolled back,
            and the connection dropped so the next one starts afresh: the
            file may have been replaced, remounted or repaired meanwhile).
        """
        if self._closed:
            return "journal is stopped"
        error = self._attempt(write, single)
        if error is None and self._replaced():
            self._reopen()
            error = self._attempt(write, single)
        return error

    def _attempt(
        self, write: Callable[[sqlite3.Connection], object], single: bool = False
    ) -> str | None:
        """
        One try of L{_transaction}'s C{write}.
        """
        try:
            if self._conn is None:
                self._conn = self._open()
            conn = self._conn
            if single:
                self._patiently(lambda: write(conn))
                return None
            self._patiently(lambda: conn.execute("BEGIN IMMEDIATE"))
            try:
                write(conn)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except Exception as e:
            self._drop()
            return str(e) or type(e).__name__
        return None

    def _patiently(self, step: Callable[[], object]) -> None:
        """
        Run C{step}, a statement that takes the write lock, again while
        another writer holds that lock, up to L{schema.BUSY_TIMEOUT} (or
        until L{hurry}). A statement that fails busy has done nothing.
        """
        deadline = time.monotonic() + schema.BUSY_TIMEOUT
        while True:
            try:
                step()
                return
            except sqlite3.OperationalError as e:
                code = getattr(e, "sqlite_errorcode", None)
                if code is None or code & 0xFF != sqlite3.SQLITE_BUSY:
                    raise
                if self._hurry or time.monotonic() >= deadline:
                    raise

    def _replaced(self) -> bool:
        """
        Whether the journal's path no longer names the file its connection
        has open (one C{stat} per transaction).
        """
        if self._conn is None or self._identity is None:
            return False
        try:
            found = os.stat(self.path)
        except OSError:
            return True
        return (found.st_dev, found.st_ino) != self._identity

    def _reopen(self) -> None:
        """
        The path names another file, or none: say so, and close both
        connections to the old file so that the next transaction opens a
        journal at the path. The old WAL is checkpointed into the old file
        and emptied first, so no frame of it can be applied to a new file.
        Holds C{_commitLock}.
        """
        self._reactor.callFromThread(
            self._log.error,
            "journal {path} was deleted or replaced while in use; records "
            "from now on go to a new journal at {path}",
            path=self.path,
        )
        with self._checkpointLock:
            if self._checkpointer is not None:
                _close_quietly(self._checkpointer)
                self._checkpointer = None
        old, self._conn, self._identity = self._conn, None, None
        if old is not None:
            with contextlib.suppress(sqlite3.Error):
                old.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            _close_quietly(old)

    def _open(self) -> sqlite3.Connection:
        conn = self._connect(self.path)
        try:
            found = os.stat(self.path)
        except OSError:
            _close_quietly(conn)
            raise
        self._identity = (found.st_dev, found.st_ino)
        conn.execute(f"PRAGMA synchronous={SYNCHRONOUS[self.durability]}")
        # No checkpoint inside a commit (its fsyncs would hold up every
        # request waiting for the commit lock): the writer thread runs them.
        conn.execute("PRAGMA wal_autocheckpoint=0")
        conn.execute(f"PRAGMA journal_size_limit={WAL_LIMIT}")
        conn.execute(f"PRAGMA busy_timeout={BUSY_STEP_MS}")
        return conn

    def _checkpoint(self) -> None:
        """
        Copy committed pages from the WAL into the database, beside the
        commits (a passive checkpoint never blocks a writer). Under steady
        commits a passive checkpoint never reaches the WAL's end, and a WAL
        restarts only once it is wholly copied: so when the WAL holds more
        than L{WAL_LIMIT} (or commits fail, e.g. on a full disk), finish the
        checkpoint holding the commit lock (little is left to copy by then),
        which lets the next commit restart the WAL at its beginning. Writer
        thread.
        """
        with self._checkpointLock:
            frames = self._checkpointStep("PASSIVE")
        if frames is None:
            return
        pageSize, logFrames = frames
        walBytes = logFrames * (pageSize + 24)
        fileBytes = _size(self.path + "-wal")
        if walBytes < WAL_LIMIT and fileBytes <= WAL_LIMIT and not self._failing:
            return
        # An oversized WAL file is cut to nothing; otherwise it is reused.
        mode = "TRUNCATE" if fileBytes > WAL_LIMIT else "RESTART"
        with self._commitLock, self._checkpointLock:
            if not self._closed:
                self._checkpointStep(mode, busyMs=LOCKED_CHECKPOINT_BUSY_MS)

    def _checkpointStep(self, mode: str, busyMs: int | None = None) -> tuple[int, int] | None:
        """
        One C{wal_checkpoint(mode)} on the checkpointing connection (opened
        when needed); holds C{_checkpointLock}.

        @return: (page size, frames in the WAL), or L{None} when it failed
            (busy, or unwritable: commit failures are what gets reported).
        """
        conn = self._checkpointer
        if conn is None and self._replaced():
            # Not beside a connection to the file the path named before
            # (they would share the -shm at the path): the next commit
            # reopens first.
            return None
        try:
            if conn is None:
                conn = self._checkpointer = self._connect(self.path)
                conn.execute(f"PRAGMA journal_size_limit={WAL_LIMIT}")
            if busyMs is not None:
                conn.execute(f"PRAGMA busy_timeout={busyMs}")
            try:
                _, logFrames, _ = conn.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()
                (pageSize,) = conn.execute("PRAGMA page_size").fetchone()
            finally:
                if busyMs is not None:
                    conn.execute(f"PRAGMA busy_timeout={int(schema.BUSY_TIMEOUT * 1000)}")
        except Exception:
            if conn is not None:
                _close_quietly(conn)
            self._checkpointer = None
            return None
        return pageSize, logFrames

    def _probe(self) -> None:
        """
        During a failure episode, try whether the journal takes writes
        again: C{BEGIN IMMEDIATE} (with a short busy timeout) then
        C{ROLLBACK}, on the checkpointing connection so that the request
        path never waits for it. That connection is opened afresh at the
        path, so a probe tests the file the path names now (it may have
        been deleted or replaced during the episode). Success lets commits
        try SQLite again (a full disk, say, is only known by trying).
        Writer thread.
        """
        with self._commitLock:
            # Never beside a connection to a file the path no longer names.
            if self._replaced():
                self._reopen()
        with self._checkpointLock:
            if self._checkpointer is not None:
                _close_quietly(self._checkpointer)
            conn = self._checkpointer = None
            try:
                conn = self._checkpointer = self._connect(self.path)
                conn.execute(f"PRAGMA busy_timeout={PROBE_BUSY_MS}")
                try:
                    conn.execute("BEGIN IMMEDIATE")
                    conn.execute("ROLLBACK")
                finally:
                    conn.execute(f"PRAGMA busy_timeout={int(schema.BUSY_TIMEOUT * 1000)}")
            except Exception:
                if conn is not None:
                    _close_quietly(conn)
                self._checkpointer = None
                return
        self._blocked = None


def _size(path: str) -> int:
    """
    The size of the file at C{path}; 0 when there is none.
    """
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


def _close_quietly(conn: sqlite3.Connection) -> None:
    with contextlib.suppress(sqlite3.Error):
        conn.close()
