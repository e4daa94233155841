# -*- test-case-name: tests.unit.test_sqlite_journal -*-
"""
The request journal: every request recorded, durably, before it is answered.

One writer thread owns the SQLite connection. Records queue up while it
commits; each commit takes everything that arrived meanwhile (group commit),
so under load the cost of a transaction is shared by many requests. The
C{Deferred} returned by L{SQLiteJournal.append} fires only after the
transaction holding its records has committed: the request path writes a
reply only then, so a C{kill -9} can never lose a request whose answer a
client received.

Durability: the database is in WAL mode. By default (durability
C{process}, C{synchronous=NORMAL}) a commit survives the server process
being killed; with C{disk} (C{synchronous=FULL}) every group commit is also
flushed to disk and survives a crash or power loss of the host, at the cost
of one fsync per group. There is no C{standby} for SQLite.

Faults: the writer thread keeps the WAL bounded (L{WAL_LIMIT}); once a
commit fails, later ones fail at once while a probe looks for the end of
the episode with a real write; a commit that takes longer than the
journal's timeout is given up (L{primecount.journal.base}), but a lock
held by another writer fails a commit cleanly before that
(L{LOCK_WAIT_SHARE}); after every transaction, and before and during
the open of any new connection, the path is checked to still name the
journal's file (L{SQLiteJournal._connectTo}), and a deleted, renamed or
replaced journal is left only once nothing of it is left behind in the
C{-wal} named after the path (L{SQLiteJournal._switch});
L{SQLiteJournal.hurry} stops waiting for other writers' locks so that a
stop keeps its deadline.

The journal's file outlives its connections: a failed or given-up
connection is dropped, but the journal keeps its checkpointing connection
and a descriptor of the file until it leaves the file, so that a rename
noticed later can still be checkpointed into the old file, and so that
SQLite's locks on the file hold (closing any descriptor of a file drops
all of the process's locks on it; see L{SQLiteJournal._hold}).

Rotation (C{mv PATH PATH.old} while the server runs): SQLite names the
C{-wal} and C{-shm} files after the path it opened, so after the rename
the old file's recent commits are still in C{PATH-wal}, and a new journal
opened at C{PATH} would take that file over (and a reader of C{PATH.old}
would not see them). So the group whose commit notices the rename counts
in the old file (it is never written again to the new one), and the
journal keeps writing the old file until a C{TRUNCATE} checkpoint has
copied every frame of C{PATH-wal} into it (a reader's snapshot can hold
that back: the checkpoint is retried after each commit); only then are its
connections closed and the old C{PATH-wal} and C{PATH-shm} unlinked, so
the new journal at C{PATH} starts with files of its own. A deleted journal
(no link left) has nothing to keep: its group is written again at the
path.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import primecount.journal.sqlite.schema as schema
from primecount.core.fileaccess import explain
from primecount.journal.base import _WAKE, ThreadedJournal
from primecount.journal.interface import DEFAULT_TIMEOUT, DISK, PROCESS, JournalURL, JournalURLError
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
            # A read-only file opens, and even begins a write transaction;
            # a write statement (here one that writes nothing) fails.
            conn.execute("DELETE FROM requests WHERE 0")
            conn.execute("ROLLBACK")
        finally:
            conn.close()
    except (sqlite3.Error, OSError) as e:
        why = explain(url.path, e, write=True)
        raise JournalURLError(f"cannot write journal {url.path}: {why}") from None


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

#: Seconds between probes while commits fail.
PROBE_INTERVAL = 0.25

#: SQLite's busy timeout, in milliseconds, for a probe.
PROBE_BUSY_MS = 100

#: SQLite's busy timeout, in milliseconds, on the committing connection:
#: a commit waits for another writer in steps of this, up to
#: L{schema.BUSY_TIMEOUT} in all, so that L{SQLiteJournal.hurry} can cut the
#: wait short (SQLite's own wait cannot be interrupted).
BUSY_STEP_MS = 50

#: The share of the journal's timeout a commit waits for another writer's
#: lock (at most L{schema.BUSY_TIMEOUT}): a lock held longer fails the
#: commit with "database is locked", nothing written, before the watchdog
#: would give the commit up (and leave it in doubt, see
#: L{primecount.journal.base}).
LOCK_WAIT_SHARE = 0.8

#: Seconds the stop still tries to leave a renamed journal file whose WAL a
#: reader held back (see L{SQLiteJournal._switchBeforeStop}).
SWITCH_AT_STOP = 1.0

#: Why a new connection to the journal's file failed when the path stopped
#: naming it while the connection was opened (L{SQLiteJournal._connectTo}).
RENAMED_AT_OPEN = "journal file was renamed or replaced while it was opened"

#: The first bytes of every SQLite database file.
SQLITE_HEADER = b"SQLite format 3\x00"

#: Why commits fail while the journal's file is emptied (L{SQLiteJournal._emptied}).
EMPTIED = (
    "the file was emptied while in use (copytruncate?); move it away "
    "(mv {path} {path}.broken) and a new journal starts at its path"
)

#: Group commits after which the writer thread checkpoints at once rather
#: than at its next interval: a fast disk fills the WAL quicker than
#: L{CHECKPOINT_INTERVAL} (each commit writes at least a page or two).
CHECKPOINT_EVERY = 128


class SQLiteJournal(ThreadedJournal):
    """
    The SQLite journal, committing in groups, one transaction at a time
    (group commit and the writer thread: L{ThreadedJournal}).

    @ivar path: the database file.
    @ivar groups: how many group commits (transactions) were committed.
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
        connect: Callable[..., sqlite3.Connection] = schema.connect,
        metrics: MetricsRecorder | None = None,
    ) -> None:
        """
        @param path: the database file.
        @param reactor: used to hand results back to the reactor thread.
        @param durability: L{PROCESS} or L{DISK} (flush every group commit
            to disk: power-loss safe).
        @param timeout: seconds a commit may take before it is given up.
        @param connect: opens the database, taking L{schema.connect}'s
            C{create} and C{check} (tests hand in failing ones).
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
        # The journal's file (see _hold): its (st_dev, st_ino), a
        # descriptor of it (its link count says deleted or renamed), and
        # the identities of the -wal and -shm files it uses. Kept across
        # dropped and given-up connections, until the journal leaves the
        # file (_switch) or stops (_close).
        self._identity: tuple[int, int] | None = None
        self._fileFd: int | None = None
        self._sidecars: dict[str, tuple[int, int]] = {}
        # The last group id given out (ids grow within a file).
        self._group = 0
        # The writer thread's checkpointing connection; _checkpointLock
        # guards it (taken after _commitLock when both are needed).
        self._checkpointLock = threading.Lock()
        self._checkpointer: sqlite3.Connection | None = None
        self._switchPending = False
        self._sinceCheckpoint = 0
        self._checkpointDue = False
        self._nextCheckpoint: float | None = None
        # The latest record time committed to the file _latestOf (its
        # identity), since its last clock step (schema.clock_steps).
        self._latest: float | None = None
        self._latestOf: tuple[int, int] | None = None

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

    def _write(self, records: list[Record], group: int) -> str | None:
        statements = list(schema.inserts(records, group))
        times = [r.time for r in records]
        latest: list[float | None] = []

        def insert(conn: sqlite3.Connection) -> None:
            for sql, params in statements:
                conn.execute(sql, params)
            latest[:] = [self._noteClockSteps(conn, times)]

        steps, _ = schema.clock_steps(times, self._latest)
        # A single INSERT is a transaction of its own: no BEGIN and COMMIT.
        single = len(statements) == 1 and not steps and self._latestOf == self._identity
        error = self._transaction(insert, single=single, rewrite=True)
        if error is None and latest:
            self._latest = latest[0]
            self._latestOf = self._identity
        return error

    def _noteClockSteps(self, conn: sqlite3.Connection, times: list[float]) -> float | None:
        """
        Note in the file's L{schema.CLOCK_STEPS} the records just inserted
        (the last ones, in this transaction) that follow a step of the wall
        clock back, so that readers do not look for a time window in the
        wrong place; return the latest time after them.
        """
        # A file opened afresh (at the start, or a new one at the path):
        # look where its records left off.
        before = self._latest if self._latestOf == self._identity else schema.latest_time(conn)
        steps, latest = schema.clock_steps(times, before)
        if steps:
            last = conn.execute("SELECT last_insert_rowid()").fetchone()[0]
            first = last - len(times) + 1
            conn.execute(schema.CLOCK_STEPS)
            conn.executemany(
                "INSERT OR REPLACE INTO clock_steps (id, time, latest) VALUES (?, ?, ?)",
                [(first + i, times[i], schema.clock_steps(times[:i], before)[1]) for i in steps],
            )
        return latest

    def _groupId(self) -> int:
        self._group += 1
        return self._group

    def _abandonConnection(self) -> None:
        # The stuck thread closes its connection when it returns. The
        # checkpointing connection is given up too only when it is in use
        # (it may be the stuck one); the journal's file stays held (its
        # descriptor must outlive every connection to it, see _hold).
        self._conn = None
        if self._checkpointLock.acquire(blocking=False):
            self._checkpointLock.release()
        else:
            self._checkpointLock = threading.Lock()
            self._checkpointer = None

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
        with self._commitLock:
            if self._replaced():
                self._switchBeforeStop()
        with self._checkpointLock:
            if self._checkpointer is not None:
                _close_quietly(self._checkpointer)
                self._checkpointer = None

    def _switchBeforeStop(self) -> None:
        """
        The journal stops while its file was renamed and not yet left (a
        reader's snapshot held the checkpoint back): until a C{TRUNCATE}
        checkpoint copies the WAL into it, the renamed file is not readable
        by itself (a partial checkpoint leaves pages only in the WAL named
        after the path), and a journal opened at the path later would take
        that WAL over. So try again for up to L{SWITCH_AT_STOP} seconds
        (less once hurried), and say so when it still cannot. Writer
        thread, holding C{_commitLock}.
        """
        deadline = time.monotonic() + SWITCH_AT_STOP
        while True:
            with contextlib.suppress(OSError):
                self._switch()
            if self._identity is None or self._hurry or time.monotonic() >= deadline:
                break
            time.sleep(PROBE_INTERVAL / 5)
        if self._identity is not None:
            self._reactor.callFromThread(
                self._log.error,
                "journal {path} was renamed and a reader still holds its WAL at the stop: "
                "its last commits are only in {wal}, which belongs to the renamed file",
                path=self.path,
                wal=self.path + "-wal",
            )

    def _drop(self) -> None:
        # The connection only: the checkpointing one and the descriptor
        # stay with the file (see _hold).
        if self._conn is not None:
            _close_quietly(self._conn)
            self._conn = None

    def _close(self) -> None:
        self._drop()
        self._release()

    def _dropIf(self, conn: sqlite3.Connection) -> None:
        """
        Close C{conn}; forget it if it is still the journal's (a connection
        given up meanwhile is no longer, see L{_abandonConnection}).
        """
        if self._conn is conn:
            self._drop()
        else:
            _close_quietly(conn)

    def _hold(self) -> None:
        """
        Make the file the path names the journal's file: remember its
        identity, its C{-wal} and C{-shm}, and keep a descriptor of it (its
        link count tells a deleted file from a renamed one). Holds
        C{_commitLock}, right after a connection to it was opened.

        The descriptor is closed only once no connection of the journal's
        uses the file any more (L{_release}): closing any descriptor of a
        file drops every POSIX lock the process holds on it, SQLite's
        included, and without its shared lock another process that closes
        its connection believes it is the file's last user, checkpoints,
        and deletes the C{-wal} and C{-shm} the journal is still writing:
        every later commit would go to a deleted WAL.
        """
        self._pin()
        self._sidecars = {}
        for suffix in ("-wal", "-shm"):
            with contextlib.suppress(OSError):
                side = os.stat(self.path + suffix)
                self._sidecars[suffix] = (side.st_dev, side.st_ino)

    def _pin(self) -> None:
        """
        Unless the journal holds a file, make the file the path names the
        journal's file: keep a descriptor of it and its identity (see
        L{_hold}).
        """
        if self._fileFd is None:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
            found = os.fstat(fd)
            self._fileFd = fd
            self._identity = (found.st_dev, found.st_ino)

    def _release(self) -> None:
        """
        Forget the journal's file and close its descriptor: no connection
        of the journal's uses it any more (the journal left it, or stops).
        """
        if self._fileFd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fileFd)
            self._fileFd = None
        self._identity = None
        self._sidecars = {}

    # -- transactions ---------------------------------------------------------------

    def _transaction(
        self,
        write: Callable[[sqlite3.Connection], object],
        single: bool = False,
        rewrite: bool = False,
    ) -> str | None:
        """
        Run C{write} in one transaction on the journal's connection (the
        caller holds C{_commitLock}), opening it when needed. With C{single},
        C{write} runs one statement, which SQLite makes a transaction by
        itself (the connection is in autocommit mode).

        Then, before anything is acknowledged, check that the path still
        names the file written to (L{_switch}): a renamed file keeps what
        was committed to it; when it was deleted, C{write} (with
        C{rewrite}) runs again in a new journal at the path.

        @return: C{None} once committed, else why it failed (rolled back,
            and the connection dropped so the next one starts afresh: the
            file may have been replaced, remounted or repaired meanwhile).
        """
        if self._closed:
            return "journal is stopped"
        error = self._attempt(write, single)
        if self._givenUp():
            # Answered already; the journal is another generation's now.
            return error
        if error is None and self._replaced():
            try:
                deleted = self._switch()
            except OSError as e:
                return str(e)
            if deleted and rewrite:
                error = self._attempt(write, single)
        if error is None and self._sidecarsGone():
            error = self._leaveSidecars()
        if error is None and self._emptied():
            error = EMPTIED.format(path=self.path)
        return error

    def _emptied(self) -> bool:
        """
        Whether the journal's file lost its SQLite header while in use: it
        was emptied (logrotate's C{copytruncate}, C{truncate -s 0}). SQLite
        does not notice: it commits on into the C{-wal} and checkpoints the
        pages into the empty file, which no reader can open any more
        (tens of thousands of acknowledged records lost, with no error).
        So nothing is acknowledged and nothing checkpointed into it until
        it is moved away, when a new journal starts at the path. One
        C{pread} of 16 bytes of the descriptor the journal holds.
        """
        if self._fileFd is None:
            return False
        try:
            return os.pread(self._fileFd, len(SQLITE_HEADER), 0) != SQLITE_HEADER
        except OSError:
            return False

    def _sidecarsGone(self) -> bool:
        """
        Whether the C{-wal} or C{-shm} the journal's file uses no longer is
        the one at the path (deleted or replaced by hand): two more C{stat}s
        per transaction.
        """
        return any(
            _identity_at(self.path + suffix) != identity
            for suffix, identity in self._sidecars.items()
        )

    def _leaveSidecars(self) -> str | None:
        """
        The journal's C{-wal} or C{-shm} was deleted or replaced while in
        use. Commits go on into the deleted C{-wal}, which a crash would
        take with it, and a new connection (another process's, or the
        probe's) would make a C{-wal} and C{-shm} of its own at the path
        beside the journal's: two writers that do not see each other's
        frames. So copy every frame into the file (a C{TRUNCATE}
        checkpoint) and close both connections before anything more is
        acknowledged: the next transaction opens the file again, with a
        new C{-wal} and C{-shm} at the path. Holds C{_commitLock}.

        @return: C{None} once done; else why not (a reader's snapshot holds
            the checkpoint back: the group just committed is then answered
            C{ERR journal unavailable}, in doubt, and the next transaction
            tries again).
        """
        if self._conn is None and self._checkpointer is None:
            # Nothing of the journal's uses them: the next open looks again.
            self._sidecars = {}
            return None
        if not self._checkpointedAll():
            return "the journal's -wal or -shm was deleted; its WAL is not checkpointed yet"
        if self._givenUp():
            return "journal commit given up"
        self._reactor.callFromThread(
            self._log.error,
            "journal {path}: its -wal or -shm was deleted or replaced while in use; "
            "its WAL was copied into the file, and the journal opens it again with new ones",
            path=self.path,
        )
        with self._checkpointLock:
            if self._checkpointer is not None:
                _close_quietly(self._checkpointer)
                self._checkpointer = None
        self._drop()
        self._sidecars = {}
        return None

    def _attempt(
        self, write: Callable[[sqlite3.Connection], object], single: bool = False
    ) -> str | None:
        """
        One try of L{_transaction}'s C{write}.
        """
        conn = None
        try:
            if self._conn is None:
                self._conn = self._open()
            conn = self._conn
            if single:
                self._patiently(lambda: write(conn))
            else:
                self._patiently(lambda: conn.execute("BEGIN IMMEDIATE"))
                try:
                    write(conn)
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
        except Exception as e:
            if conn is not None:
                self._dropIf(conn)
            else:
                self._drop()
            return str(e) or type(e).__name__
        if self._conn is not conn:
            # Given up while it ran (see base): it is no longer ours.
            _close_quietly(conn)
        return None

    def _patiently(self, step: Callable[[], object]) -> None:
        """
        Run C{step}, a statement that takes the write lock, again while
        another writer holds that lock, up to L{schema.BUSY_TIMEOUT} or
        L{LOCK_WAIT_SHARE} of the journal's timeout, whichever is shorter
        (or until L{hurry}). A statement that fails busy has done nothing.
        """
        deadline = time.monotonic() + min(schema.BUSY_TIMEOUT, self.timeout * LOCK_WAIT_SHARE)
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
        Whether the journal's path no longer names the journal's file (one
        C{stat} per transaction), whether or not a connection to it is open
        right now.
        """
        if self._identity is None:
            return False
        return _identity_at(self.path) != self._identity

    def _connectTo(self, held: tuple[int, int]) -> sqlite3.Connection:
        """
        A new connection at the path to C{held}, the identity of the file
        the journal holds. The path is checked before (by the caller) and
        again once SQLite opened the file, before its first statement:
        SQLite opens the C{-wal} and C{-shm} named after the path only
        then (L{schema.connect}'s C{check}). A rename landing between the
        first check and the open would otherwise give a connection to
        another file, or to a file it creates, that takes over the C{-wal}
        the renamed file still owns: SQLite deletes it for an empty file,
        and the renamed file loses the commits not yet checkpointed into
        it. So the file is never created, and a connection to another
        file is closed having touched nothing else.

        @raise sqlite3.OperationalError: when the path no longer names
            C{held}.
        """

        def check() -> None:
            if _identity_at(self.path) != held:
                raise sqlite3.OperationalError(RENAMED_AT_OPEN)

        try:
            return self._connect(self.path, create=False, check=check)
        except sqlite3.OperationalError:
            if _identity_at(self.path) != held:
                raise sqlite3.OperationalError(RENAMED_AT_OPEN) from None
            raise

    def _switch(self) -> bool:
        """
        The path names another file, or none: leave the journal's file once
        nothing of it is left in the C{-wal} named after the path. Holds
        C{_commitLock}.

        A renamed file (it still has a link) keeps what was committed to
        it: a C{TRUNCATE} checkpoint copies every frame of the WAL into it;
        while a reader's snapshot holds that back, the journal keeps
        writing the old file (when its connection is open) and tries again
        after the next commit or probe. A deleted file has nothing to keep.
        Then both connections are closed and the old C{-wal} and C{-shm}
        unlinked (they would otherwise become the new journal's), so that
        the next transaction opens a journal of its own at the path.

        @return: whether the old file was deleted (its last group must be
            written again at the path); C{False} also when it is kept for
            now (the journal still holds it).
        """
        assert self._fileFd is not None
        deleted = os.fstat(self._fileFd).st_nlink == 0
        if not deleted:
            if self._emptied():
                self._saveEmptiedWAL()
            checkpointed = self._checkpointedAll()
            if self._givenUp():
                # Given up while it checkpointed: another generation's now.
                return False
            if not checkpointed:
                if not self._switchPending:
                    self._switchPending = True
                    self._reactor.callFromThread(
                        self._log.warn,
                        "journal {path} was renamed while a reader holds a snapshot of it; "
                        "writing it until its WAL can be checkpointed into it",
                        path=self.path,
                    )
                return False
        self._reactor.callFromThread(
            self._log.error,
            "journal {path} was {how} while in use; records from now on go to a new "
            "journal at {path}",
            path=self.path,
            how="deleted" if deleted else "renamed or replaced",
        )
        self._switchPending = False
        with self._checkpointLock:
            if self._checkpointer is not None:
                _close_quietly(self._checkpointer)
                self._checkpointer = None
        sidecars = self._sidecars
        self._drop()
        for suffix, identity in sidecars.items():
            _unlink_if(self.path + suffix, identity)
        self._release()
        return deleted

    def _saveEmptiedWAL(self) -> None:
        """
        The journal leaves a file that was emptied while in use
        (L{_emptied}): the commits that were only in its C{-wal} then are
        in no readable file, and the checkpoint that comes next would write
        them into the emptied one. Copy the C{-wal} beside the path first,
        to be put beside the copy taken before the truncation (with its
        name) and read with it. Holds C{_commitLock}.
        """
        wal = self.path + "-wal"
        held = self._sidecars.get("-wal")
        if held is None or _identity_at(wal) != held or _size(wal) <= schema.WAL_HEADER:
            return
        saved = f"{self.path}.emptied-{time.strftime('%Y%m%dT%H%M%S')}-wal"
        try:
            schema.create_private(saved)
            with open(wal, "rb") as source, open(saved, "wb") as target:
                while chunk := source.read(1 << 20):
                    target.write(chunk)
        except OSError as e:
            self._reactor.callFromThread(
                self._log.error,
                "journal {path} was emptied while in use; its -wal could not be saved "
                "({why}): the commits that were only there are lost",
                path=self.path,
                why=str(e),
            )
            return
        self._reactor.callFromThread(
            self._log.error,
            "journal {path} was emptied while in use: the commits that were only in its "
            "-wal are saved in {saved}; to read them, copy it beside a copy of the file "
            "taken before it was emptied, as that copy's -wal (cp COPY R; cp {saved} R-wal)",
            path=self.path,
            saved=saved,
        )

    def _checkpointedAll(self) -> bool:
        """
        Whether a C{TRUNCATE} checkpoint, on the journal's connection or
        else on the checkpointing one, emptied the journal's file's WAL
        into it (L{_checkpointed}). It waits for the writer thread's
        checkpoint in progress (SQLite would answer busy at once): only a
        reader's snapshot holds the switch back. With neither connection
        left (the checkpointing one was given up, stuck), nothing can be
        checkpointed any more: the file is left as it is, and that is
        logged.
        """
        with self._checkpointLock:
            if self._conn is not None:
                return self._checkpointed(self._conn)
            if self._checkpointer is not None:
                return self._checkpointed(self._checkpointer)
        self._reactor.callFromThread(
            self._log.error,
            "journal {path} was renamed while no connection to it could checkpoint its WAL; "
            "its last commits may be missing from the renamed file",
            path=self.path,
        )
        return True

    @staticmethod
    def _checkpointed(conn: sqlite3.Connection) -> bool:
        """
        Whether a C{TRUNCATE} checkpoint on C{conn} copied every frame of
        its WAL into its database and emptied the WAL (not when a reader's
        snapshot still needs frames: SQLite then answers busy at once).
        """
        conn.execute("PRAGMA busy_timeout=0")
        try:
            busy, log, done = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        except sqlite3.Error:
            return False
        finally:
            with contextlib.suppress(sqlite3.Error):
                conn.execute(f"PRAGMA busy_timeout={BUSY_STEP_MS}")
        return busy == 0 and log == done

    def _open(self) -> sqlite3.Connection:
        """
        A new connection to the journal's file at the path, and the
        checkpointing one if there is none. Holds C{_commitLock}.

        When the path no longer names the journal's file (it was renamed or
        deleted while no connection to it was open), the journal leaves that
        file first (L{_switch}): a connection opened at the path meanwhile
        would take the old file's C{-wal} for its own. While a renamed
        file's WAL cannot be checkpointed yet this fails, and the probe
        tries again; so does a rename landing during the open
        (L{_connectTo}). Holding no file, it creates the journal at the
        path and holds the file SQLite opened before its first statement.
        """
        if self._replaced():
            self._switch()
            if self._identity is not None:
                raise sqlite3.OperationalError(
                    "journal file was renamed; its WAL is not checkpointed into it yet"
                )
        held = self._identity
        conn = self._connect(self.path, check=self._pin) if held is None else self._connectTo(held)
        try:
            if self._replaced():
                raise sqlite3.OperationalError("journal file was replaced while it was opened")
            self._hold()
            row = conn.execute("SELECT group_id FROM requests ORDER BY id DESC LIMIT 1").fetchone()
            if row is not None and row[0] is not None:
                self._group = max(self._group, row[0])
            conn.execute(f"PRAGMA synchronous={SYNCHRONOUS[self.durability]}")
            # No checkpoint inside a commit (its fsyncs would hold up every
            # request waiting for the commit lock): the writer thread runs them.
            conn.execute("PRAGMA wal_autocheckpoint=0")
            conn.execute(f"PRAGMA journal_size_limit={WAL_LIMIT}")
            conn.execute(f"PRAGMA busy_timeout={BUSY_STEP_MS}")
        except BaseException:
            _close_quietly(conn)
            raise
        # Not behind the writer thread's checkpoint: if it holds the lock,
        # it opens the connection itself.
        if self._checkpointLock.acquire(blocking=False):
            try:
                self._openCheckpointer()
            finally:
                self._checkpointLock.release()
        return conn

    def _openCheckpointer(self) -> sqlite3.Connection | None:
        """
        The checkpointing connection, opened if there is none, but only to
        the journal's file while the path names it; holds
        C{_checkpointLock}. Besides checkpointing, it keeps a connection to
        the file open whatever happens to the journal's, so that a rename
        noticed later can still be checkpointed into the old file.

        @return: it, or C{None} when there is none.
        """
        if self._checkpointer is not None:
            return self._checkpointer
        if self._identity is None or self._replaced():
            return None
        try:
            conn = self._connectTo(self._identity)
        except Exception:
            return None
        if self._replaced():
            _close_quietly(conn)
            return None
        with contextlib.suppress(sqlite3.Error):
            conn.execute(f"PRAGMA journal_size_limit={WAL_LIMIT}")
        self._checkpointer = conn
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
        if self._emptied():
            return
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

        @return: (page size, frames in the WAL), or C{None} when it failed
            (busy, or unwritable: commit failures are what gets reported).
            The connection stays open either way (L{_openCheckpointer}).
        """
        conn = self._openCheckpointer()
        if conn is None:
            return None
        try:
            if busyMs is not None:
                conn.execute(f"PRAGMA busy_timeout={busyMs}")
            try:
                _, logFrames, _ = conn.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()
                (pageSize,) = conn.execute("PRAGMA page_size").fetchone()
            finally:
                if busyMs is not None:
                    conn.execute(f"PRAGMA busy_timeout={int(schema.BUSY_TIMEOUT * 1000)}")
        except Exception:
            return None
        finally:
            if self._checkpointer is not conn:
                # Given up while it ran (see _abandonConnection): no longer
                # the journal's.
                _close_quietly(conn)
        return pageSize, logFrames

    def _probe(self, doubtful: list[int]) -> bool:
        """
        During a failure episode, try whether the journal takes a real write
        again: a transaction that records the groups in doubt and rewrites
        the C{probe} row, with a short busy timeout, on a connection of its
        own opened afresh at the path (so a probe tests the file the path
        names now), or on the journal's while it still writes a renamed
        file (L{_switch}). Success lets commits try SQLite again (a full
        disk, say, is only known by trying). The prober thread.
        """
        with self._commitLock:
            try:
                if self._sidecarsGone() and self._leaveSidecars() is not None:
                    return False
                if self._replaced():
                    self._switch()
                if self._replaced():
                    # Still the renamed file's, until its WAL is emptied.
                    return self._conn is not None and _probe_write(self._conn, doubtful)
                if self._emptied():
                    return False
            except Exception:
                return False
            held = self._identity
        conn = None
        try:
            conn = self._connect(self.path) if held is None else self._connectTo(held)
            # Not a file the path named only while it was opened.
            return not self._replaced() and _probe_write(conn, doubtful)
        except Exception:
            return False
        finally:
            if conn is not None:
                _close_quietly(conn)


def _probe_write(conn: sqlite3.Connection, doubtful: list[int]) -> bool:
    """
    The probe's transaction on C{conn}: C{BEGIN IMMEDIATE} (waiting at most
    L{PROBE_BUSY_MS} for another writer), the group ids C{doubtful} into
    C{failed_groups}, the C{probe} row rewritten, C{COMMIT}.

    @return: whether it committed.
    """
    conn.execute(f"PRAGMA busy_timeout={PROBE_BUSY_MS}")
    try:
        conn.execute("BEGIN IMMEDIATE")
        try:
            now = time.time()
            conn.executemany(
                "INSERT OR IGNORE INTO failed_groups (group_id, time) VALUES (?, ?)",
                [(group, now) for group in doubtful],
            )
            conn.execute("INSERT OR REPLACE INTO probe (id, time) VALUES (1, ?)", (now,))
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
    except sqlite3.Error:
        return False
    finally:
        with contextlib.suppress(sqlite3.Error):
            conn.execute(f"PRAGMA busy_timeout={BUSY_STEP_MS}")
    return True


def _identity_at(path: str) -> tuple[int, int] | None:
    """
    The (C{st_dev}, C{st_ino}) of the file C{path} names; C{None} when
    it names none.
    """
    try:
        found = os.stat(path)
    except OSError:
        return None
    return found.st_dev, found.st_ino


def _unlink_if(path: str, identity: tuple[int, int]) -> None:
    """
    Remove the file at C{path} if it is still the one of C{identity}
    (C{st_dev}, C{st_ino}): an old journal's C{-wal} or C{-shm}, never a
    new journal's.
    """
    with contextlib.suppress(OSError):
        found = os.stat(path)
        if (found.st_dev, found.st_ino) == identity:
            os.unlink(path)


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
