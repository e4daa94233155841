# -*- test-case-name: tests.unit.test_postgresql_journal,tests.system.test_postgresql_journal_process -*-
"""
The PostgreSQL journal: C{--journal postgresql://USER@HOST:PORT/DB?...}, one
table shared by every host and every worker that journal to it.

The contract is the SQLite journal's
(L{primecount.journal.sqlite.writer.SQLiteJournal}):
the request path calls L{PostgresJournal.commit} from the pool thread, which
returns once the records are committed (or raises L{JournalUnavailable});
the range protocol uses L{PostgresJournal.append} and
L{PostgresJournal.settle}, served by the journal's own thread. Commits are
grouped (leader/follower): one group is ONE binary C{COPY} in its own
transaction (autocommit: the COPY is the transaction, no BEGIN/COMMIT round
trips), on the one connection the journal's commit lock guards.

Durability (L{SYNCHRONOUS_COMMIT}): by default (C{standby}),
C{synchronous_commit=on}: a reply waits until PostgreSQL has flushed the
commit to disk and, where the cluster replicates synchronously, until its
synchronous standby has it too, so it survives a crash of PostgreSQL or of
its host and a failover to that standby. C{disk} (C{local}) waits for the
local flush only; C{process} (C{off}) acknowledges a commit once PostgreSQL
has it in memory: it survives primecount being killed, but a crash of
PostgreSQL or its host loses up to three C{wal_writer_delay}s (600 ms by
default) of acknowledged records.

Faults: the connection has a connect timeout, a TCP user timeout and
keepalives (L{primecount.journal.postgresql.schema.CONNECTION_DEFAULTS},
each overridable in the URL), so a network partition turns into C{ERR
journal unavailable} within seconds, not a commit stuck for minutes. Once a commit fails, later ones fail at once while
the journal's thread probes for the end of the episode (one log line at its
start, one at its end). A connection the server closed while it was idle
(PostgreSQL restarted) is noticed before it is used and replaced.

In doubt: when the connection is lost after the end of the COPY was sent
(or the commit is given up after the journal's timeout, or PostgreSQL
cancelled the wait for its synchronous standby), PostgreSQL may have
committed the group or not. Its requests are answered C{ERR journal
unavailable}; every row carries its group's id (C{group_id}), and the probe
that ends the episode records the ids of such groups in
C{primecount_failed_groups}, in the same transaction as its own write, so
the readers show those records with the error their clients were told.
Nothing acknowledged is missing, and a record whose client got ERR says so
once the database answers again (unless primecount is killed before then).

The probe: a new connection, then one transaction with a short lock and
statement timeout that takes the journal table's insert lock, records the
groups in doubt and rewrites the C{primecount_probe} row, committed with
the journal's durability: it ends the episode only when the journal can
really take a write (not merely connect, nor while another session holds a
lock on the table).

Passwords: from the environment (C{PGPASSWORD}), C{~/.pgpass}
(C{PGPASSFILE}) or the URL; the URL is only ever printed with its password
masked.
"""

from __future__ import annotations

import contextlib
import random
import select
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import psycopg
import psycopg.errors

from primecount.journal.base import _WAKE, ThreadedJournal
from primecount.journal.interface import (
    DEFAULT_TIMEOUT,
    DISK,
    PROCESS,
    STANDBY,
    JournalURL,
    JournalURLError,
    mask_password,
)
from primecount.journal.postgresql.schema import (
    CHANNEL,
    COPY,
    COPY_TYPES,
    FAILED_GROUPS,
    SETTLE,
    TABLE,
    connect,
    ensure_schema,
    to_row,
    why,
)
from primecount.journal.records import Record
from primecount.metrics.recorder import MetricsRecorder

#: PostgreSQL's C{synchronous_commit} for each durability.
SYNCHRONOUS_COMMIT = {PROCESS: "off", DISK: "local", STANDBY: "on"}

#: The server-side bound on one statement, in milliseconds (a COPY waiting
#: on a lock, a settle waiting for a prune).
STATEMENT_TIMEOUT_MS = 10000

#: Seconds between probes while commits fail.
PROBE_INTERVAL = 0.25

#: The probe's bounds, in milliseconds: how long it waits for the journal
#: table's lock, and for any one statement.
PROBE_LOCK_TIMEOUT_MS = 1000
PROBE_STATEMENT_TIMEOUT_MS = 2000

#: The SQLSTATE of the warning PostgreSQL sends when it stops waiting for
#: the synchronous standby (query_canceled): the transaction is committed
#: locally, maybe not on the standby.
_SYNC_WAIT_CANCELLED = "57014"

#: The least seconds between two NOTIFYs (sent after commits, off the commit
#: path: a follower also polls, so a notification only makes it quicker).
NOTIFY_INTERVAL = 0.1


def check_writable(url: JournalURL) -> None:
    """
    Connect once, creating the schema, to fail early and clearly (the
    password never printed).

    @raise JournalURLError: when the database cannot be reached or written.
    """
    try:
        conn = connect(url.path)
    except psycopg.Error as e:
        raise JournalURLError(f"cannot connect to journal {url}: {why(e)}") from None
    try:
        ensure_schema(conn)
        row = conn.execute("SELECT current_setting('transaction_read_only')").fetchone()
        if row and row[0] == "on":
            raise JournalURLError(f"journal {url} is read-only (a standby?)")
    except psycopg.Error as e:
        raise JournalURLError(f"cannot write journal {url}: {why(e)}") from None
    finally:
        conn.close()


class PostgresJournal(ThreadedJournal):
    """
    The PostgreSQL journal, committing in groups, one COPY at a time per
    process (any number of processes and hosts write at once: a COPY takes
    no lock another one waits for). Group commit and the journal's thread:
    L{ThreadedJournal}.

    @ivar groups: how many group commits were committed.
    @ivar committed: how many records were committed.
    @ivar failed: how many records could not be committed.
    """

    _threadName = "primecount-pgjournal"

    def __init__(
        self,
        url: str,
        reactor: Any,
        *,
        durability: str = STANDBY,
        timeout: float = DEFAULT_TIMEOUT,
        connect: Callable[[str], psycopg.Connection[Any]] = connect,
        metrics: MetricsRecorder | None = None,
    ) -> None:
        """
        @param url: the C{postgresql://} URL.
        @param reactor: used to hand results back to the reactor thread.
        @param durability: one of L{primecount.journal.DURABILITIES}
            (L{SYNCHRONOUS_COMMIT}).
        @param timeout: seconds a commit may take before it is given up.
        @param connect: opens a connection (tests hand in failing ones).
        @param metrics: told each group commit's size and duration, and how
            many records could not be committed.
        """
        super().__init__(reactor, metrics=metrics, timeout=timeout)
        self.url = url
        self.shown = mask_password(url)
        self.durability = durability
        self._connect = connect
        # Guarded by _commitLock: one statement at a time on it.
        self._conn: psycopg.Connection[Any] | None = None
        self._schemaReady = False
        self._inStatement = False
        self._notifyDue = False
        self._nextNotify = 0.0

    def hurry(self) -> None:
        """
        The stop's deadline is near: cancel the statement in flight, if one
        is (a server that does not answer holds up the stop otherwise until
        the TCP user timeout), and fail the next commits at once if it
        failed.
        """
        conn = self._conn
        if conn is not None and self._inStatement:
            threading.Thread(target=_cancel, args=(conn,), daemon=True).start()
        super().hurry()

    # -- backend hooks ------------------------------------------------------------

    def _place(self) -> tuple[str, str]:
        return "url", self.shown

    def _probeInterval(self) -> float:
        return PROBE_INTERVAL

    def _write(self, records: list[Record], group: int) -> str | None:
        rows = [to_row(r, group) for r in records]
        return self._attempt(lambda conn: self._copy(conn, rows), group)

    def _groupId(self) -> int:
        # Any number of hosts write: ids are drawn at random, not counted.
        return random.getrandbits(63)

    def _abandonConnection(self) -> None:
        # The stuck thread closes it when (if) it returns; its statement is
        # cancelled, in case the server answers that (a lock wait).
        conn, self._conn = self._conn, None
        if conn is not None and self._inStatement:
            threading.Thread(target=_cancel, args=(conn,), daemon=True).start()

    def _settleRecords(self, records: Sequence[Record]) -> str | None:
        rows = [(r.count, r.error, r.sum_ok, r.peer, r.port, r.a, r.b) for r in records]

        def update(conn: psycopg.Connection[Any]) -> None:
            with conn.transaction(), conn.cursor() as cursor:
                cursor.executemany(SETTLE, rows)

        return self._attempt(update)

    def _settleFailed(self, why: str) -> None:
        self._notCommitted(0, why)

    def _afterCommit(self) -> None:
        if not self._notifyDue:
            self._notifyDue = True
            self._queue.put(_WAKE)

    def _tick(self, now: float) -> float | None:
        """
        Send a NOTIFY when one is due, at most every L{NOTIFY_INTERVAL}.
        """
        if self._notifyDue and now >= self._nextNotify:
            self._notify()
            self._nextNotify = time.monotonic() + NOTIFY_INTERVAL
        return self._nextNotify if self._notifyDue else None

    def _finishing(self) -> None:
        self._nextNotify = 0.0
        if self._notifyDue:
            self._notify()

    # -- connection ------------------------------------------------------------------

    @staticmethod
    def _copy(conn: psycopg.Connection[Any], rows: list[tuple[object, ...]]) -> None:
        with conn.cursor() as cursor, cursor.copy(COPY) as copy:
            copy.set_types(COPY_TYPES)
            for row in rows:
                copy.write_row(row)

    def _attempt(
        self, write: Callable[[psycopg.Connection[Any]], object], group: int | None = None
    ) -> str | None:
        """
        Run C{write} on the journal's connection (opened when needed; the
        caller holds C{_commitLock}).

        @param group: the id of the group C{write} commits, if it does: a
            failure that leaves its fate unknown (the connection broke, the
            wait for the synchronous standby was cancelled) puts it in
            doubt (L{primecount.journal.base.ThreadedJournal._doubt}).
        @return: C{None} once committed, else why not (the connection is
            then dropped: the next commit starts afresh).
        """
        if self._closed:
            return "journal is stopped"
        conn = None
        try:
            conn = self._usable()
            self._inStatement = True
            _Unconfirmed.clear(conn)
            try:
                write(conn)
            finally:
                self._inStatement = False
            if _Unconfirmed.seen(conn):
                raise _Unconfirmed()
        except Exception as e:
            if isinstance(e, psycopg.errors.UndefinedTable):
                # Dropped, or lost with a database restored from a backup:
                # the next connection creates it again.
                self._schemaReady = False
            if group is not None and (
                conn is None or conn.broken or conn.closed or isinstance(e, _Unconfirmed)
            ):
                self._doubt(group)
            if conn is not None:
                self._dropIf(conn)
            else:
                self._drop()
            return why(e)
        if self._conn is not conn:
            # Given up while it ran (see base): it is no longer ours.
            _close_quietly(conn)
        return None

    def _usable(self) -> psycopg.Connection[Any]:
        """
        The journal's connection: the open one unless the server has closed
        it meanwhile (an idle connection has nothing to read unless the
        server is hanging up), else a new one.
        """
        conn = self._conn
        if conn is not None and (conn.closed or _readable(conn)):
            self._drop()
            conn = None
        if conn is None:
            conn = self._conn = self._open()
        return conn

    def _open(self) -> psycopg.Connection[Any]:
        conn = self._connect(self.url)
        _Unconfirmed.watch(conn)
        try:
            if not self._schemaReady:
                ensure_schema(conn)
                self._schemaReady = True
            conn.execute(
                "SELECT set_config('synchronous_commit', %s, false), "
                "set_config('statement_timeout', %s, false)",
                (SYNCHRONOUS_COMMIT[self.durability], str(STATEMENT_TIMEOUT_MS)),
            )
        except BaseException:
            _close_quietly(conn)
            raise
        return conn

    def _drop(self) -> None:
        if self._conn is not None:
            _close_quietly(self._conn)
            self._conn = None

    def _dropIf(self, conn: psycopg.Connection[Any]) -> None:
        """
        Close C{conn}; forget it if it is still the journal's.
        """
        if self._conn is conn:
            self._drop()
        else:
            _close_quietly(conn)

    def _probe(self, doubtful: list[int]) -> bool:
        """
        During a failure episode, try a new connection and a real write on
        it (outside the commit lock: commits keep failing at once
        meanwhile): one transaction, bounded by L{PROBE_LOCK_TIMEOUT_MS} and
        L{PROBE_STATEMENT_TIMEOUT_MS}, that takes the journal table's insert
        lock (a C{LOCK TABLE} held by another session fails it), records
        the groups in doubt and rewrites the probe row, committed with the
        journal's durability. On success the connection becomes the
        journal's and commits try PostgreSQL again. The prober thread.
        """
        try:
            conn = self._open()
        except Exception:
            return False
        try:
            with conn.transaction():
                conn.execute(
                    "SELECT set_config('lock_timeout', %s, true), "
                    "set_config('statement_timeout', %s, true)",
                    (str(PROBE_LOCK_TIMEOUT_MS), str(PROBE_STATEMENT_TIMEOUT_MS)),
                )
                conn.execute(f"LOCK TABLE {TABLE} IN ROW EXCLUSIVE MODE")
                with conn.cursor() as cursor:
                    cursor.executemany(
                        f"INSERT INTO {FAILED_GROUPS} (group_id) VALUES (%s) "
                        "ON CONFLICT DO NOTHING",
                        [(group,) for group in doubtful],
                    )
                conn.execute(
                    "INSERT INTO primecount_probe (id, time) VALUES (1, now()) "
                    "ON CONFLICT (id) DO UPDATE SET time = excluded.time"
                )
            if _Unconfirmed.seen(conn):
                raise _Unconfirmed()
        except Exception:
            _close_quietly(conn)
            return False
        with self._commitLock:
            if self._closed:
                _close_quietly(conn)
                return False
            self._drop()
            self._conn = conn
        return True

    def _notify(self) -> None:
        """
        Wake the followers (C{primecount journal --follow}): one NOTIFY, in
        a transaction of its own after the commits. The journal's thread.
        """
        self._notifyDue = False
        with self._commitLock:
            if self._blocked is not None or self._closed or self._conn is None:
                return
            with contextlib.suppress(Exception):
                self._conn.execute(f"NOTIFY {CHANNEL}")


class _Unconfirmed(psycopg.OperationalError):
    """
    PostgreSQL committed the transaction locally but stopped waiting for
    its synchronous standby (a cancel, a statement timeout): it is not
    acknowledged, and its group is in doubt.
    """

    def __init__(self) -> None:
        super().__init__("commit not confirmed by the synchronous standby")

    #: Connections (by id) that got that warning since L{clear}.
    _seen: ClassVar[set[int]] = set()

    @classmethod
    def watch(cls, conn: psycopg.Connection[Any]) -> None:
        """
        Note on C{conn} the warning that the wait was cancelled.
        """
        key = id(conn)

        def notice(diag: psycopg.errors.Diagnostic) -> None:
            if diag.sqlstate == _SYNC_WAIT_CANCELLED:
                cls._seen.add(key)

        conn.add_notice_handler(notice)

    @classmethod
    def clear(cls, conn: psycopg.Connection[Any]) -> None:
        cls._seen.discard(id(conn))

    @classmethod
    def seen(cls, conn: psycopg.Connection[Any]) -> bool:
        return id(conn) in cls._seen


def _readable(conn: psycopg.Connection[Any]) -> bool:
    """
    Whether an idle connection has something to read: the server hung up
    (or sent a notice), so it is not to be trusted with a commit.
    """
    try:
        poller = select.poll()
        poller.register(conn.fileno(), select.POLLIN | select.POLLERR | select.POLLHUP)
        return bool(poller.poll(0))
    except (OSError, ValueError, psycopg.Error):
        return True


def _cancel(conn: psycopg.Connection[Any]) -> None:
    with contextlib.suppress(Exception):
        conn.cancel_safe(timeout=2.0)


def _close_quietly(conn: psycopg.Connection[Any]) -> None:
    with contextlib.suppress(Exception):
        conn.close()
