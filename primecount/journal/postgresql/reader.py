# -*- test-case-name: tests.unit.test_postgresql_journal,tests.system.test_postgresql_journal_process -*-
"""
C{primecount journal --journal postgresql://…}: the PostgreSQL journal read
back (L{show}), followed (L{Follower}) and pruned (L{prune}), with the
options and the output formats of the SQLite one
(L{primecount.journal.sqlite.reader}, L{primecount.journal.formats}).

Following: ids are assigned at insert, not at commit, so with several
writers a record with a lower id can be committed after one with a higher
id, and a follower that remembers the highest id it printed would skip it.
Each row carries the id of the transaction that inserted it (C{xact}); the
follower asks for the oldest transaction still running (the C{xmin} of a
snapshot): every transaction below it has ended, so the rows below it are
final. It prints the rows whose C{xact} lies between the previous C{xmin}
and the current one: each row once, none skipped. A transaction left open
anywhere in the cluster holds C{xmin} back, and the follower waits for it.
The journal's writers C{NOTIFY} after their commits (never inside them),
which wakes the follower before its next poll.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any, TextIO

import psycopg

from primecount.journal.formats import writer
from primecount.journal.interface import JournalError, Query, mask_password
from primecount.journal.postgresql.schema import (
    CHANNEL,
    FAILED_ERROR,
    FAILED_GROUPS,
    TABLE,
    connect,
    message_of,
    why,
)
from primecount.journal.records import Record

#: Seconds between two polls of C{--follow} when no NOTIFY wakes it.
POLL_INTERVAL = 1.0

#: Records deleted per transaction when pruning.
PRUNE_CHUNK = 5000

_COLUMNS = (
    "id, time, host, port, protocol, message, message_bytes, count, prime, error, a, b, sum_ok"
)

#: L{_COLUMNS} for a journal of schema version 2 or later: a record of a
#: group in C{primecount_failed_groups} (its client was told ERR journal
#: unavailable, see L{primecount.journal.postgresql}) has that error.
_MARKED_COLUMNS = _COLUMNS.replace(
    "error",
    f"CASE WHEN group_id IN (SELECT group_id FROM {FAILED_GROUPS}) "
    f"THEN '{FAILED_ERROR}' ELSE error END",
)


def _columns(conn: psycopg.Connection[Any]) -> str:
    row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (FAILED_GROUPS,)).fetchone()
    return _MARKED_COLUMNS if row and row[0] else _COLUMNS


#: The oldest transaction still running: every row below it is final.
_XMIN = "SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint"


def open_database(url: str) -> psycopg.Connection[Any]:
    """
    Connect to the journal at C{url} (autocommit: every statement sees what
    is committed when it starts), checking that it holds one.

    @raise JournalError: when it cannot be reached or holds no journal.
    """
    shown = mask_password(url)
    try:
        conn = connect(url)
    except psycopg.Error as e:
        raise JournalError(f"cannot connect to journal {shown}: {why(e)}") from None
    try:
        row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (TABLE,)).fetchone()
    except psycopg.Error as e:
        conn.close()
        raise JournalError(f"cannot read journal {shown}: {why(e)}") from None
    if not (row and row[0]):
        conn.close()
        raise JournalError(f"no journal at {shown}")
    return conn


def _record(row: tuple[Any, ...]) -> Record:
    (_, when, peer, port, protocol, text, raw, count, prime, error, a, b, sum_ok) = row
    return Record(
        time=when.timestamp(),
        peer=peer,
        port=port,
        protocol=protocol,
        message=message_of(text, raw),
        count=count,
        prime=prime,
        error=error,
        a=a,
        b=b,
        sum_ok=sum_ok,
    )


def _stamp(when: float) -> datetime:
    return datetime.fromtimestamp(when, UTC)


def select(
    conn: psycopg.Connection[Any],
    query: Query,
    *,
    xact_from: int | None = None,
    xact_below: int | None = None,
) -> Iterator[tuple[int, Record]]:
    """
    The matching records as C{(id, record)}, oldest (lowest id) first,
    optionally only those inserted by transactions in [C{xact_from},
    C{xact_below}). With a limit, the last C{query.limit} of them.
    """
    clauses: list[str] = []
    params: list[object] = []
    for clause, value in (
        ("xact >= %s", xact_from),
        ("xact < %s", xact_below),
        ("time >= %s", None if query.since is None else _stamp(query.since)),
        ("time < %s", None if query.until is None else _stamp(query.until)),
        ("host = ANY(%s)", None if query.peer is None else list(query.peer)),
    ):
        if value is not None:
            clauses.append(clause)
            params.append(value)
    where = " WHERE " + " AND ".join(clauses) if clauses else ""
    sql = f"SELECT {_columns(conn)} FROM {TABLE}{where}"
    if query.limit is None:
        # Row by row (libpq's single-row mode): a big journal is never
        # held in memory whole.
        with conn.cursor() as cursor:
            for row in cursor.stream(f"{sql} ORDER BY id", params):  # type: ignore[arg-type]
                yield row[0], _record(row)
        return
    newest = conn.execute(
        f"{sql} ORDER BY id DESC LIMIT %s",  # type: ignore[arg-type]
        [*params, query.limit],
    ).fetchall()
    for row in reversed(newest):
        yield row[0], _record(row)


def _xmin(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute(_XMIN).fetchone()
    assert row is not None
    return int(row[0])


class Follower:
    """
    The records of a journal as they become final, each once (see the
    module's docstring).

    @ivar below: the C{xmin} up to which records were read.
    """

    def __init__(self, conn: psycopg.Connection[Any], query: Query) -> None:
        self._conn = conn
        self._query = Query(query.since, query.until, query.peer, None)
        self._backlog = query
        self.below = _xmin(conn)

    def backlog(self) -> list[Record]:
        """
        The matching records already final when following began (the last
        C{query.limit} of them).
        """
        return [r for _, r in select(self._conn, self._backlog, xact_below=self.below)]

    def poll(self) -> list[Record]:
        """
        The matching records that became final since the last poll, in id
        order.
        """
        top = _xmin(self._conn)
        if top <= self.below:
            return []
        found = [
            r for _, r in select(self._conn, self._query, xact_from=self.below, xact_below=top)
        ]
        self.below = top
        return found


def _wait(conn: psycopg.Connection[Any]) -> None:
    """
    Wait for a writer's NOTIFY, or L{POLL_INTERVAL} seconds.
    """
    for _ in conn.notifies(timeout=POLL_INTERVAL, stop_after=1):
        break


#: Replaced by tests, to step through C{--follow} without waiting.
wait: Callable[[psycopg.Connection[Any]], None] = _wait


def show(
    conn: psycopg.Connection[Any], query: Query, fmt: str, out: TextIO, *, follow: bool
) -> None:
    """
    Print the matching records; with C{follow}, keep printing new ones as
    they become final until interrupted (C{KeyboardInterrupt}).
    """
    write = writer(fmt, out)
    if not follow:
        for _, record in select(conn, query):
            write(record)
        out.flush()
        return
    conn.execute(f"LISTEN {CHANNEL}")
    follower = Follower(conn, query)
    for record in follower.backlog():
        write(record)
    out.flush()
    while True:
        wait(conn)
        found = follower.poll()
        for record in found:
            write(record)
        if found:
            out.flush()


def prune(conn: psycopg.Connection[Any], before: float, *, vacuum: bool) -> int:
    """
    Delete the records older than C{before}, oldest first, in chunks of
    L{PRUNE_CHUNK} (one short transaction each, beside the writers' COPYs,
    which insert and never wait for it); return how many. PostgreSQL's
    autovacuum makes the space reusable; with C{vacuum}, C{VACUUM FULL}
    also returns it to the file system, holding a lock that blocks the
    writers while it runs (they answer C{ERR journal unavailable} after
    their statement timeout).
    """
    total = 0
    while True:
        cursor = conn.execute(
            f"DELETE FROM {TABLE} WHERE id IN "
            f"(SELECT id FROM {TABLE} WHERE time < %s ORDER BY id LIMIT %s)",
            (_stamp(before), PRUNE_CHUNK),
        )
        total += cursor.rowcount
        if cursor.rowcount < PRUNE_CHUNK:
            break
    if vacuum:
        conn.execute(f"VACUUM (FULL, ANALYZE) {TABLE}")
    return total
