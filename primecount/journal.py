# -*- test-case-name: tests.test_journal -*-
"""
The request journal: every request recorded, durably, before it is answered.

One writer thread owns the SQLite connection. Records queue up while it
commits; each commit takes everything that arrived meanwhile (group commit),
so under load the cost of a transaction is shared by many requests. The
L{Deferred} returned by L{SQLiteJournal.append} fires only after the
transaction holding its records has committed: the request path writes a
reply only then, so a C{kill -9} can never lose a request whose answer a
client received.

Durability: the database is in WAL mode. By default (C{synchronous=NORMAL})
a commit survives the server process being killed; with C{fsync=True}
(C{synchronous=FULL}) every group commit is also flushed to disk and
survives a power loss, at the cost of one fsync per group.

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
import queue
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from primecount import schema
from primecount.metrics import MetricsRecorder, NullMetrics
from primecount.records import Record


class JournalUnavailable(Exception):
    """
    The journal could not commit these records.
    """


class JournalURLError(ValueError):
    """
    A C{--journal} value that names no usable journal.
    """


@dataclass(frozen=True)
class JournalURL:
    """
    A parsed C{--journal} value.

    @ivar scheme: C{"sqlite"}, C{"postgresql"} or C{"none"}.
    @ivar path: the database file (absolute), for C{sqlite}; the connection
        URL as given, for C{postgresql}.
    """

    scheme: str
    path: str = ""

    def __str__(self) -> str:
        if self.scheme == "postgresql":
            return mask_password(self.path)
        return "none" if self.scheme == "none" else f"sqlite:{self.path}"


#: The schemes of a PostgreSQL connection URL (libpq accepts both).
POSTGRESQL_SCHEMES = ("postgresql://", "postgres://")

_PASSWORD_IN_QUERY = re.compile(r"(?<=[?&]password=)[^&#]*")


def mask_password(url: str) -> str:
    """
    C{url} with its password, if any (C{user:PASSWORD@} or
    C{?password=PASSWORD}), replaced by C{***}: fit to print.
    """
    scheme, sep, rest = url.partition("://")
    authority, slash, tail = rest.partition("/")
    userinfo, at, hostport = authority.rpartition("@")
    if at and ":" in userinfo:
        userinfo = userinfo.split(":", 1)[0] + ":***"
    return _PASSWORD_IN_QUERY.sub("***", f"{scheme}{sep}{userinfo}{at}{hostport}{slash}{tail}")


def parse_url(value: str, *, base: str | None = None) -> JournalURL:
    """
    Parse C{sqlite:PATH} (relative paths against C{base}, default the
    current directory), a PostgreSQL URL (C{postgresql://USER@HOST:PORT/DB?...},
    checked when connecting) or C{none}.

    @raise JournalURLError: for anything else.
    """
    if value == "none":
        return JournalURL("none")
    if value.startswith(POSTGRESQL_SCHEMES):
        return JournalURL("postgresql", value)
    scheme, sep, rest = value.partition(":")
    if not sep or scheme != "sqlite":
        raise JournalURLError(
            f"unknown journal {mask_password(value)!r}: expected sqlite:PATH, "
            "postgresql://USER@HOST:PORT/DB or none"
        )
    if not rest:
        raise JournalURLError("sqlite: needs a file path, e.g. sqlite:primecount.sqlite3")
    return JournalURL("sqlite", os.path.abspath(os.path.join(base or os.getcwd(), rest)))


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


_STOP = object()
# Wakes the writer thread (to checkpoint now).
_WAKE = object()

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


class _Waiting:
    """
    Records waiting for a group commit, and how it went for them.
    """

    __slots__ = ("done", "error", "records")

    def __init__(self, records: Sequence[Record]) -> None:
        self.records = records
        self.done = False
        self.error: str | None = None


class SQLiteJournal(Service):
    """
    The SQLite journal, committing in groups, one transaction at a time.

    Group commit is leader/follower: whoever calls L{commit} queues its
    records and takes the commit lock; if a commit that ran meanwhile took
    its records along, it is done, otherwise it commits everything queued.
    The request path calls L{commit} from the pool thread that evaluated the
    batch, so a batch needs one thread hop, not three (pool, reactor,
    writer, reactor). Callers on the reactor thread use L{append}, served by
    a writer thread that commits the same way.

    @ivar batches: how many transactions were committed.
    @ivar committed: how many records were committed.
    @ivar failed: how many records could not be committed.
    """

    _log = Logger()

    def __init__(
        self,
        path: str,
        reactor: Any,
        *,
        fsync: bool = False,
        connect: Callable[[str], sqlite3.Connection] = schema.connect,
        metrics: MetricsRecorder | None = None,
    ) -> None:
        """
        @param path: the database file.
        @param reactor: used to hand results back to the reactor thread.
        @param fsync: flush every group commit to disk (power-loss safe).
        @param connect: opens the database (tests hand in failing ones).
        @param metrics: told each group commit's size and duration, and how
            many records could not be committed.
        """
        self.path = path
        self._reactor = reactor
        self._fsync = fsync
        self._connect = connect
        self._metrics: MetricsRecorder = metrics if metrics is not None else NullMetrics()
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._stopped: Deferred[None] | None = None
        self._accepting = False
        # _commitLock: one transaction at a time; guards the connection and
        # the counters. _waitingLock: guards the queue of _Waiting.
        self._commitLock = threading.Lock()
        self._waitingLock = threading.Lock()
        self._waiting: list[_Waiting] = []
        self._conn: sqlite3.Connection | None = None
        # (st_dev, st_ino) of the file _conn has open.
        self._identity: tuple[int, int] | None = None
        # The writer thread's checkpointing connection; _checkpointLock
        # guards it (taken after _commitLock when both are needed).
        self._checkpointLock = threading.Lock()
        self._checkpointer: sqlite3.Connection | None = None
        self._sinceCheckpoint = 0
        self._checkpointDue = False
        self._closed = False
        # _failing: in a failure episode (logged at its start and end).
        # _blocked: why commits fail at once, without trying SQLite, until
        # the writer thread's probe clears it (None: try them).
        self._failing = False
        self._hurry = False
        self._blocked: str | None = None
        self._failedInEpisode = 0
        self.batches = 0
        self.committed = 0
        self.failed = 0

    # -- service --------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self._accepting = True
        self._closed = False
        self._hurry = False
        self._thread = threading.Thread(target=self._run, name="primecount-journal", daemon=True)
        self._thread.start()

    def stopService(self) -> Deferred[None]:
        """
        Commit everything queued, then close the database.
        """
        super().stopService()
        self._accepting = False
        if self._thread is None:
            return succeed(None)
        self._stopped = Deferred()
        self._queue.put(_STOP)
        return self._stopped

    def hurry(self) -> None:
        """
        The stop's deadline is near: from now on no commit waits for another
        writer's lock (a busy journal fails at once, and the commit waiting
        now gives up within L{BUSY_STEP_MS}), so the stop keeps its bound.
        What can be written still is.
        """
        self._hurry = True

    # -- any thread but the reactor's ------------------------------------------

    def commit(self, records: Sequence[Record]) -> None:
        """
        Commit C{records}, in a group with whatever else is waiting; blocks
        until they are committed. Call it from a thread-pool thread.

        @raise JournalUnavailable: when they could not be committed.
        """
        waiting = _Waiting(records)
        with self._waitingLock:
            self._waiting.append(waiting)
        with self._commitLock:
            if not waiting.done:
                self._commitWaiting()
        if waiting.error is not None:
            raise JournalUnavailable(waiting.error)

    def _commitWaiting(self) -> None:
        """
        Commit everything queued, as one transaction. Holds C{_commitLock}.
        """
        with self._waitingLock:
            group, self._waiting = self._waiting, []
        if not group:
            return
        n = sum(len(w.records) for w in group)
        started = time.monotonic()
        records = [r for w in group for r in w.records]

        if self._blocked is not None:
            # A failure episode: fail at once; the writer thread's probe
            # says when to try again.
            for w in group:
                w.error = self._blocked
                w.done = True
            self._notCommitted(n, self._blocked)
            return

        statements = list(schema.inserts(records))

        def insert(conn: sqlite3.Connection) -> None:
            for sql, params in statements:
                conn.execute(sql, params)

        # A single INSERT is a transaction of its own: no BEGIN and COMMIT.
        error = self._transaction(insert, single=len(statements) == 1)
        for w in group:
            w.error = error
            w.done = True
        if error is None:
            self._committed(n, time.monotonic() - started)
        else:
            self._notCommitted(n, error)

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
            if self._conn is not None:
                _close_quietly(self._conn)
                self._conn = None
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

    def _committed(self, n: int, seconds: float) -> None:
        self._sinceCheckpoint += 1
        if self._sinceCheckpoint >= CHECKPOINT_EVERY and not self._checkpointDue:
            self._checkpointDue = True
            self._queue.put(_WAKE)
        self.batches += 1
        self.committed += n
        self._metrics.journalCommit(n, seconds)
        if self._failing:
            self._failing = False
            self._reactor.callFromThread(
                self._log.info,
                "journal {path} writable again; {failed} requests were "
                "answered ERR journal unavailable meanwhile",
                path=self.path,
                failed=self._failedInEpisode,
            )
            self._failedInEpisode = 0

    def _notCommitted(self, n: int, why: str) -> None:
        if self._blocked is None:
            self._blocked = why
        self.failed += n
        self._failedInEpisode += n
        self._metrics.journalFailed(n)
        if not self._failing:
            self._failing = True
            self._reactor.callFromThread(
                self._log.error,
                "journal {path} cannot commit ({why}); answering "
                "ERR journal unavailable until it can",
                path=self.path,
                why=why,
            )

    def _open(self) -> sqlite3.Connection:
        conn = self._connect(self.path)
        try:
            found = os.stat(self.path)
        except OSError:
            _close_quietly(conn)
            raise
        self._identity = (found.st_dev, found.st_ino)
        conn.execute(f"PRAGMA synchronous={'FULL' if self._fsync else 'NORMAL'}")
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

    # -- reactor side -----------------------------------------------------------

    def append(self, records: Sequence[Record]) -> Deferred[None]:
        """
        Queue C{records} for the writer thread's next group commit.

        @return: fires once they are committed; fails with
            L{JournalUnavailable} if they could not be.
        """
        if not self._accepting:
            return fail(JournalUnavailable("journal is stopped"))
        d: Deferred[None] = Deferred()
        self._queue.put((records, d, False))
        return d

    def settle(self, records: Sequence[Record]) -> Deferred[None]:
        """
        Complete pending range records: each goes onto the latest row of the
        same connection and range (host, port, a, b) that has neither a sum
        verdict nor an error yet, setting its count, error and C{sum_ok}.
        Served by the writer thread after everything appended before it.

        @return: fires once done; fails with L{JournalUnavailable}.
        """
        if not self._accepting:
            return fail(JournalUnavailable("journal is stopped"))
        d: Deferred[None] = Deferred()
        self._queue.put((records, d, True))
        return d

    def _settle(self, records: Sequence[Record]) -> None:
        """
        Apply L{settle}s in one transaction (writer thread).

        @raise JournalUnavailable: when they could not be applied.
        """
        rows = [schema.settle_row(r) for r in records]
        with self._commitLock:
            error = self._blocked
            if error is None:
                error = self._transaction(lambda conn: conn.executemany(schema.SETTLE, rows))
                if error is not None and self._blocked is None:
                    self._blocked = error
        if error is not None:
            raise JournalUnavailable(error)

    @staticmethod
    def _fire(waiting: list[Deferred[None]], error: str | None) -> None:
        for d in waiting:
            if error is None:
                d.callback(None)
            else:
                d.errback(Failure(JournalUnavailable(error)))

    # -- writer thread ------------------------------------------------------------

    def _run(self) -> None:
        stopping = False
        nextCheckpoint = time.monotonic() + CHECKPOINT_INTERVAL
        nextProbe = 0.0
        while not stopping:
            now = time.monotonic()
            if self._blocked is not None and now >= nextProbe:
                self._probe()
                nextProbe = time.monotonic() + PROBE_INTERVAL
            if self._checkpointDue or now >= nextCheckpoint:
                self._sinceCheckpoint = 0
                self._checkpointDue = False
                self._checkpoint()
                nextCheckpoint = time.monotonic() + CHECKPOINT_INTERVAL
            wake = nextCheckpoint if self._blocked is None else min(nextCheckpoint, nextProbe)
            try:
                item = self._queue.get(timeout=max(0.0, wake - time.monotonic()))
            except queue.Empty:
                continue
            batch = []
            while True:
                if item is _STOP:
                    stopping = True
                elif item is _WAKE:
                    pass
                else:
                    batch.append(item)
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
            if not batch:
                continue
            # Inserts first: a settle only ever follows its own insert.
            inserts = [(records, d) for records, d, settles in batch if not settles]
            settles = [(records, d) for records, d, settles in batch if settles]
            for work, group in ((self.commit, inserts), (self._settle, settles)):
                if not group:
                    continue
                error = None
                try:
                    work([r for records, _ in group for r in records])
                except JournalUnavailable as e:
                    error = str(e)
                self._reactor.callFromThread(self._fire, [d for _, d in group], error)
        with self._checkpointLock:
            if self._checkpointer is not None:
                _close_quietly(self._checkpointer)
                self._checkpointer = None
        with self._commitLock:
            self._closed = True
            if self._conn is not None:
                _close_quietly(self._conn)
                self._conn = None
        self._reactor.callFromThread(self._finished)

    def _finished(self) -> None:
        self._thread = None
        if self._stopped is not None:
            stopped, self._stopped = self._stopped, None
            stopped.callback(None)


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


class NullJournal:
    """
    C{--journal none}: records nothing, answers at once.
    """

    def append(self, records: Sequence[Record]) -> Deferred[None]:
        """
        Accept and forget C{records}.
        """
        return succeed(None)

    def commit(self, records: Sequence[Record]) -> None:
        """
        Accept and forget C{records}.
        """

    def settle(self, records: Sequence[Record]) -> Deferred[None]:
        """
        Accept and forget C{records}.
        """
        return succeed(None)
