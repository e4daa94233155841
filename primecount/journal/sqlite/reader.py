# -*- test-case-name: tests.unit.test_journalcli,tests.system.test_journalcli_process -*-
"""
Reading the SQLite journal back: listing and following the records of a
L{Query} (L{show}), pruning (L{prune}).

An SQLite journal is the file C{PATH} and the parts the workers of
C{--workers N} write beside it (C{PATH.worker0}, ...: L{schema.part_paths});
L{JournalFiles} opens them all and L{show} merges them in time order, so
they read as one journal.

The reader opens the SQLite journal read-only and never takes a lock the
server's writer would wait for (the journal is in WAL mode), so it is safe to
run against a live server. It reads in chunks of L{READ_CHUNK} records, each
its own short read transaction, so that an export never holds a snapshot
that keeps the server's checkpoints (and a rotation, see
L{primecount.journal.sqlite.writer}) waiting for long. Pruning writes, in
short chunks, so the server's group commits slip in between them.

A record whose commit was in doubt and whose client was told C{ERR journal
unavailable} (its group is in C{failed_groups}) reads back with that error.
"""

from __future__ import annotations

import collections
import heapq
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TextIO

import primecount.journal.sqlite.schema as schema
from primecount.core.fileaccess import explain
from primecount.journal.formats import writer
from primecount.journal.interface import JournalError, Query
from primecount.journal.records import Record

#: Records read per read transaction.
READ_CHUNK = 2000

#: Seconds between two polls of C{--follow}.
POLL_INTERVAL = 0.2


#: Records deleted per transaction when pruning; small enough that the
#: server's writer never waits long for its next group commit.
PRUNE_CHUNK = 5000


#: Seconds a pruning transaction waits for the server's writer to finish.
PRUNE_BUSY_TIMEOUT = 30.0


#: Replaced by tests, to step through C{--follow} without waiting.
_sleep: Callable[[float], None] = time.sleep


def where_clause(
    query: Query, after_id: int | None = None, upto_id: int | None = None
) -> tuple[str, list[object]]:
    """
    The C{WHERE} clause (possibly empty) and its parameters, for the
    records of an SQLite journal that match C{query} and whose id is above
    C{after_id} and at most C{upto_id} (when given).
    """
    clauses: list[str] = []
    params: list[object] = []
    if after_id is not None:
        clauses.append("id > ?")
        params.append(after_id)
    if upto_id is not None:
        clauses.append("id <= ?")
        params.append(upto_id)
    if query.since is not None:
        clauses.append("time >= ?")
        params.append(query.since)
    if query.until is not None:
        clauses.append("time < ?")
        params.append(query.until)
    if query.peer is not None:
        clauses.append(f"host IN ({', '.join('?' for _ in query.peer)})")
        params.extend(query.peer)
    sql = " WHERE " + " AND ".join(clauses) if clauses else ""
    return sql, params


def _select_id(conn: sqlite3.Connection) -> str:
    return schema.select_sql(conn).replace("SELECT ", "SELECT id, ", 1)


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
    Without one, they are read L{READ_CHUNK} at a time, each chunk in a
    read transaction of its own, and the rows committed while the records
    are read are left out (only those up to the top id at the start).
    """
    select_id = _select_id(conn)
    if query.limit is None and upto_id is None:
        upto_id = _top_id(conn)
    where, params = where_clause(query, after_id, upto_id)
    # Narrow the scan to the ids that can hold the time window (there is no
    # index on time); the time conditions in `where` stay exact.
    bounds = []
    if query.since is not None:
        bounds.append(f"id >= {schema.first_id_since(conn, query.since)}")
    if query.until is not None:
        bounds.append(f"id < {schema.id_above_until(conn, query.until)}")
    if bounds:
        where = (where + " AND " if where else " WHERE ") + " AND ".join(bounds)
    if query.limit is None:
        after = (where + " AND " if where else " WHERE ") + "id > ?"
        last = 0 if after_id is None else after_id
        while True:
            # fetchall: the statement ends, and its read transaction with it.
            rows = conn.execute(
                f"{select_id}{after} ORDER BY id LIMIT {READ_CHUNK}", [*params, last]
            ).fetchall()
            for row in rows:
                yield row[0], schema.from_row(row[1:])
            if len(rows) < READ_CHUNK:
                return
            last = rows[-1][0]
    newest = conn.execute(
        f"{select_id}{where} ORDER BY id DESC LIMIT ?", [*params, query.limit]
    ).fetchall()
    for row in reversed(newest):
        yield row[0], schema.from_row(row[1:])


def _decode(data: bytes) -> str:
    # A damaged or foreign text value must not abort the whole listing;
    # its undecodable bytes come out as lone surrogates, which escape() shows.
    return data.decode("utf-8", "surrogateescape")


def open_file(path: str, *, readonly: bool = True) -> sqlite3.Connection:
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
        why = explain(path, e, write=not readonly)
        raise JournalError(f"cannot {doing} journal {path}: {why}") from None
    return conn


def _has_requests(path: str) -> bool:
    """
    Whether the SQLite file at C{path} has the journal's table yet (a part
    a worker is creating this moment may not).

    @raise JournalError: when it is not an SQLite file.
    """
    try:
        conn = schema.connect(path, readonly=True)
        try:
            row = conn.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'requests'"
            ).fetchone()
        finally:
            conn.close()
    except sqlite3.Error as e:
        raise JournalError(f"cannot read journal {path}: {explain(path, e, write=False)}") from None
    return row is not None


class JournalFiles:
    """
    The SQLite journal at a path: that file and its workers' parts
    (L{schema.part_paths}), each with its own connection, read as one.

    @ivar path: the journal's own file, C{PATH} of C{sqlite:PATH}.
    @ivar conns: each file opened so far and its connection, C{PATH} first,
        then the parts in worker order.
    """

    def __init__(self, path: str, *, readonly: bool = True) -> None:
        """
        Open C{path} and every part of it found now.

        @raise JournalError: when C{path} is missing or not a journal, or a
            part is not one.
        """
        self.path = path
        self._readonly = readonly
        self.conns: dict[str, sqlite3.Connection] = {}
        self.conns[path] = open_file(path, readonly=readonly)
        try:
            self.refresh()
        except BaseException:
            self.close()
            raise

    def refresh(self) -> list[str]:
        """
        Open the parts that appeared since the last look; a part without
        the journal's table yet (being created) holds no record, and is
        looked at again next time.

        @return: the files newly opened.
        @raise JournalError: for a part that is not an SQLite file.
        """
        found = []
        for part in schema.part_paths(self.path):
            if part in self.conns or not _has_requests(part):
                continue
            self.conns[part] = open_file(part, readonly=self._readonly)
            found.append(part)
        return found

    def reopen(self, path: str) -> sqlite3.Connection:
        """
        Close the connection to C{path} and open a new one (its C{-wal} and
        C{-shm} as they are at the path now).

        @raise JournalError: when it cannot be opened.
        """
        self.conns[path].close()
        self.conns[path] = open_file(path, readonly=self._readonly)
        return self.conns[path]

    def close(self) -> None:
        """
        Close every connection.
        """
        for conn in self.conns.values():
            conn.close()
        self.conns.clear()


def _top_id(conn: sqlite3.Connection) -> int:
    top = conn.execute("SELECT max(id) FROM requests").fetchone()[0]
    return int(top or 0)


def _by_time(item: tuple[int, Record]) -> float:
    return item[1].time


def merged(streams: Iterable[Iterator[tuple[int, Record]]]) -> Iterator[Record]:
    """
    The records of several files' streams (each in id order, which is time
    order up to L{schema.TIME_SLACK}) as one stream in time order; records
    of equal time keep the order of the streams.
    """
    for _, record in heapq.merge(*streams, key=_by_time):
        yield record


def select_all(
    files: JournalFiles, query: Query, upto: dict[str, int] | None = None
) -> Iterator[Record]:
    """
    The matching records of every file of C{files} as one stream, oldest
    first; with C{upto}, only the records of each file up to its id there
    (and none of a file not in it).

    With a limit, the last C{query.limit} of the merged stream: those are
    among the last C{query.limit} of each file.
    """
    streams = [
        select(conn, query, upto_id=None if upto is None else upto[path])
        for path, conn in files.conns.items()
        if upto is None or path in upto
    ]
    if query.limit is None:
        return merged(streams)
    return iter(collections.deque(merged(streams), maxlen=query.limit))


def show(files: JournalFiles, query: Query, fmt: str, out: TextIO, *, follow: bool) -> None:
    """
    Print the matching records of every file of the journal, merged in
    time order; with C{follow}, keep printing new ones as they are
    committed, in any file, including parts that appear meanwhile, until
    interrupted (C{KeyboardInterrupt}).
    """
    write = writer(fmt, out)
    # Records committed while the backlog is printed are left to the loop.
    last = {path: _top_id(conn) for path, conn in files.conns.items()} if follow else None
    for record in select_all(files, query, upto=last):
        write(record)
    out.flush()
    if last is None:
        return
    unlimited = Query(query.since, query.until, query.peer, None)
    while True:
        _sleep(POLL_INTERVAL)
        for path in files.refresh():
            # A part that appeared after the start holds only new records.
            last[path] = 0
        streams = []
        for path in list(files.conns):
            conn = files.conns[path]
            try:
                top = _top_id(conn)
            except sqlite3.OperationalError:
                # The server opened the file again with a new -wal (its
                # -wal was deleted): this connection still reads the old
                # one. A new connection reads what the server wrote.
                conn = files.reopen(path)
                top = _top_id(conn)
            if top < last[path]:
                # Ids restart at 1 only when every record was pruned.
                last[path] = 0
            if top == last[path]:
                continue
            streams.append(list(select(conn, unlimited, after_id=last[path], upto_id=top)))
            last[path] = top
        for record in merged(iter(stream) for stream in streams):
            write(record)
        out.flush()


def prune_file(conn: sqlite3.Connection, before: float, *, vacuum: bool) -> int:
    """
    Delete the records of one file older than C{before}; return how many.

    Deletes in chunks of L{PRUNE_CHUNK}, one short transaction each, so a
    server writing meanwhile waits at most one chunk. The freed pages are
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
            (before, schema.id_above_until(conn, before), PRUNE_CHUNK),
        ).rowcount
        total += deleted
        if deleted < PRUNE_CHUNK:
            break
    if vacuum:
        conn.execute("VACUUM")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    elif conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2:
        conn.execute("PRAGMA incremental_vacuum")
    return total


def prune(files: JournalFiles, before: float, *, vacuum: bool) -> int:
    """
    Delete the records older than C{before} from every file of the
    journal (L{prune_file}, one file after the other); return how many.
    """
    return sum(prune_file(conn, before, vacuum=vacuum) for conn in files.conns.values())
