# -*- test-case-name: tests.unit.test_journalcli,tests.system.test_journalcli_process -*-
"""
Reading the SQLite journal back: which records (L{Query}), listing and
following them (L{show}), pruning (L{prune}); and L{backend}, which picks
this module or L{primecount.journal.pgreader} for a journal URL, so the
command line has one path for both.

The reader opens the SQLite journal read-only and never takes a lock the
server's writer would wait for (the journal is in WAL mode), so it is safe to
run against a live server. Pruning writes, in short batches, so the server's
group commits slip in between them.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TextIO

from primecount import journal
from primecount.journal import schema
from primecount.journal.formats import writer
from primecount.journal.records import Record

#: Seconds between two polls of C{--follow}.
POLL_INTERVAL = 0.2


#: Records deleted per transaction when pruning; small enough that the
#: server's writer never waits long for its next group commit.
PRUNE_BATCH = 5000


#: Seconds a pruning transaction waits for the server's writer to finish.
PRUNE_BUSY_TIMEOUT = 30.0


#: Replaced by tests, to step through C{--follow} without waiting.
_sleep: Callable[[float], None] = time.sleep


class JournalError(Exception):
    """
    A problem the user can fix, reported as one line on stderr.
    """


@dataclass(frozen=True)
class Query:
    """
    Which records to show.

    @ivar since: only records at or after this time (epoch seconds), if set.
    @ivar until: only records before this time (epoch seconds), if set.
    @ivar peer: only records from a client whose IP is spelt one of these
        ways, if set (see L{parse_peer}).
    @ivar limit: only the last this many matching records, if set.
    """

    since: float | None = None
    until: float | None = None
    peer: tuple[str, ...] | None = None
    limit: int | None = None

    def where(
        self, after_id: int | None = None, upto_id: int | None = None
    ) -> tuple[str, list[object]]:
        """
        The C{WHERE} clause (possibly empty) and its parameters, for the
        records that match and whose id is above C{after_id} and at most
        C{upto_id} (when given).
        """
        clauses: list[str] = []
        params: list[object] = []
        if after_id is not None:
            clauses.append("id > ?")
            params.append(after_id)
        if upto_id is not None:
            clauses.append("id <= ?")
            params.append(upto_id)
        if self.since is not None:
            clauses.append("time >= ?")
            params.append(self.since)
        if self.until is not None:
            clauses.append("time < ?")
            params.append(self.until)
        if self.peer is not None:
            clauses.append(f"host IN ({', '.join('?' for _ in self.peer)})")
            params.extend(self.peer)
        sql = " WHERE " + " AND ".join(clauses) if clauses else ""
        return sql, params


_SELECT_ID = schema.SELECT.replace("SELECT ", "SELECT id, ", 1)


def select(
    conn: sqlite3.Connection,
    query: Query,
    after_id: int | None = None,
    upto_id: int | None = None,
) -> Iterator[tuple[int, Record]]:
    """
    The matching records as C{(id, record)}, oldest first, optionally only
    those whose id is above C{after_id} and at most C{upto_id}.

    With a limit, the last C{query.limit} of them (still oldest first).
    """
    where, params = query.where(after_id, upto_id)
    # Narrow the scan to the ids that can hold the time window (there is no
    # index on time); the time conditions in `where` stay exact.
    bounds = []
    if query.since is not None:
        bounds.append(f"id >= {schema.first_id_since(conn, query.since)}")
    if query.until is not None:
        bounds.append(f"id < {schema.first_id_since(conn, query.until + 2 * schema.TIME_SLACK)}")
    if bounds:
        where = (where + " AND " if where else " WHERE ") + " AND ".join(bounds)
    if query.limit is None:
        rows = conn.execute(f"{_SELECT_ID}{where} ORDER BY id", params)
        for row in rows:
            yield row[0], schema.from_row(row[1:])
        return
    newest = conn.execute(
        f"{_SELECT_ID}{where} ORDER BY id DESC LIMIT ?", [*params, query.limit]
    ).fetchall()
    for row in reversed(newest):
        yield row[0], schema.from_row(row[1:])


def journal_path(url: str) -> str:
    """
    The file named by a journal URL, as the server reads C{--journal}
    (L{primecount.journal.sqlite.parse_url}).

    @raise JournalError: for C{none} or a URL that names no journal.
    """
    try:
        parsed = journal.parse_url(url)
    except journal.JournalURLError as e:
        raise JournalError(str(e)) from None
    if parsed.scheme == "none":
        raise JournalError("the journal is off (--journal none): nothing to read")
    return parsed.path


def _decode(data: bytes) -> str:
    # A damaged or foreign text value must not abort the whole listing;
    # its undecodable bytes come out as lone surrogates, which escape() shows.
    return data.decode("utf-8", "surrogateescape")


def open_journal(path: str, *, readonly: bool = True) -> sqlite3.Connection:
    """
    Open an existing journal file, checking that it is one.

    @raise JournalError: when the file is missing or not a journal.
    """
    if not os.path.isfile(path):
        raise JournalError(f"no journal at {path}")
    try:
        if readonly:
            conn = schema.connect(path, readonly=True)
        else:
            conn = schema.connect(path, timeout=PRUNE_BUSY_TIMEOUT)
        conn.text_factory = _decode
        conn.execute("SELECT id FROM requests LIMIT 0")
    except sqlite3.Error as e:
        doing = "read" if readonly else "write"
        raise JournalError(f"cannot {doing} journal {path}: {e}") from None
    return conn


def _top_id(conn: sqlite3.Connection) -> int:
    top = conn.execute("SELECT max(id) FROM requests").fetchone()[0]
    return int(top or 0)


def show(conn: sqlite3.Connection, query: Query, fmt: str, out: TextIO, *, follow: bool) -> None:
    """
    Print the matching records; with C{follow}, keep printing new ones as
    they are committed until interrupted (C{KeyboardInterrupt}).
    """
    write = writer(fmt, out)
    # Records committed while the backlog is printed are left to the loop.
    last_id = _top_id(conn) if follow else None
    for _, record in select(conn, query, upto_id=last_id):
        write(record)
    out.flush()
    if last_id is None:
        return
    unlimited = Query(query.since, query.until, query.peer, None)
    while True:
        _sleep(POLL_INTERVAL)
        top = _top_id(conn)
        if top < last_id:
            # Ids restart at 1 only when every record was pruned.
            last_id = 0
        if top == last_id:
            continue
        for _, record in select(conn, unlimited, after_id=last_id, upto_id=top):
            write(record)
        out.flush()
        last_id = top


def prune(conn: sqlite3.Connection, before: float, *, vacuum: bool) -> int:
    """
    Delete the records older than C{before}; return how many.

    Deletes in batches of L{PRUNE_BATCH}, one short transaction each, so a
    server writing meanwhile waits at most one batch. The freed pages are
    reused by new records; when the file uses incremental auto-vacuum they
    are also returned to the file system. With C{vacuum}, the file is
    rebuilt to its smallest size, which holds a write lock for the whole
    rebuild: the server's requests fail with C{ERR journal unavailable}
    meanwhile if it takes longer than the server's busy timeout.
    """
    total = 0
    while True:
        deleted = conn.execute(
            "DELETE FROM requests WHERE id IN "
            "(SELECT id FROM requests WHERE time < ? AND id < ? ORDER BY id LIMIT ?)",
            (before, schema.first_id_since(conn, before + 2 * schema.TIME_SLACK), PRUNE_BATCH),
        ).rowcount
        total += deleted
        if deleted < PRUNE_BATCH:
            break
    if vacuum:
        conn.execute("VACUUM")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    elif conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2:
        conn.execute("PRAGMA incremental_vacuum")
    return total


@dataclass(frozen=True)
class Backend:
    """
    How to read one kind of journal: the same steps for SQLite and
    PostgreSQL, so C{primecount journal} has one path for both.

    @ivar shown: the journal, fit to print (no password).
    @ivar connect: opens it, read-only or (C{False}) for pruning.
    @ivar show: L{show} for this kind of connection.
    @ivar prune: L{prune} for this kind of connection.
    @ivar errors: the driver's exceptions, reported as one line.
    @ivar why: one line of text for such an exception.
    """

    shown: str
    connect: Callable[[bool], Any]
    show: Callable[..., None]
    prune: Callable[..., int]
    errors: type[Exception]
    why: Callable[[BaseException], str] = str


def backend(url: str) -> Backend:
    """
    The reader of the journal at C{url} (C{sqlite:PATH} or a PostgreSQL URL).

    @raise JournalError: for C{none}, a URL that names no journal, or a
        PostgreSQL journal without psycopg.
    """
    if url.startswith(journal.POSTGRESQL_SCHEMES):
        try:
            from primecount.journal import pgreader
        except ImportError:
            raise JournalError(
                "reading a PostgreSQL journal needs psycopg: pip install 'primecount[postgresql]'"
            ) from None
        return pgreader.backend(url)
    path = journal_path(url)
    return Backend(
        shown=path,
        connect=lambda readonly: open_journal(path, readonly=readonly),
        show=show,
        prune=prune,
        errors=sqlite3.Error,
    )
