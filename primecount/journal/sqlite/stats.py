# -*- test-case-name: tests.unit.test_journalstats -*-
"""
The aggregates of C{primecount journal --stats} (L{primecount.journal.stats})
over an SQLite journal: the file C{PATH} and every worker file of it
(L{FileSource}).

Each file answers by itself, in a thread of its own when there are
several (SQLite computes without Python's lock, so the files of
C{--workers N} are summed N at a time), and the answers are merged:
the minutes and the peers come back from each file in order and are
merged as sorted streams, so a peer is summed exactly over every file
while only the top few are kept. A few chunks of rows wait between a
file's thread and the merge: memory grows with neither the records nor
the peers.

SQLite has no hash aggregation: a C{GROUP BY} sorts the rows it groups.
So the errors are grouped on their own (the few rows with an error or of
the range protocol), and the totals are the sums of the minutes. There is
no index on time: C{--since}/C{--until} become bounds on ids as in the
listing (L{primecount.journal.sqlite.schema.first_id_since}), and the oldest and
newest record are looked for in the first and last minute only.
"""

from __future__ import annotations

import contextlib
import functools
import queue
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import primecount.journal.sqlite.schema as schema
from primecount.journal.interface import Peer, Query
from primecount.journal.sqlite.reader import JournalFiles, where_clause
from primecount.journal.stats import merged_sums, top_peers

#: Rows handed over at once by a file read in a thread of its own.
CHUNK = 1000


def _where(conn: sqlite3.Connection, query: Query, condition: str = "") -> tuple[str, list[object]]:
    """
    The C{WHERE} clause of C{query} (and C{condition}) on one file, with
    the time window also as bounds on ids.
    """
    where, params = where_clause(query)
    clauses = [where.removeprefix(" WHERE ")] if where else []
    if query.since is not None:
        clauses.append(f"id >= {int(schema.first_id_since(conn, query.since))}")
    if query.until is not None:
        bound = schema.id_above_until(conn, query.until)
        clauses.append(f"id < {int(bound)}")
    if condition:
        clauses.append(f"({condition})")
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), params


class _Ahead:
    """
    The rows C{rows()} gives, produced by a thread of its own, started at
    once, up to four chunks of L{CHUNK} ahead of the reader; an error there
    is raised to the reader.
    """

    def __init__(self, rows: Callable[[], Iterable[Any]]) -> None:
        self._rows = rows
        self._chunks: queue.Queue[Any] = queue.Queue(maxsize=4)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._produce, name="journal stats", daemon=True)
        self._thread.start()

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._chunks.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _produce(self) -> None:
        try:
            chunk: list[Any] = []
            for row in self._rows():
                chunk.append(row)
                if len(chunk) >= CHUNK:
                    if not self._put(chunk):
                        return
                    chunk = []
            if self._put(chunk):
                self._put(None)
        except Exception as e:
            self._put(e)

    def __iter__(self) -> Iterator[Any]:
        while True:
            item = self._chunks.get()
            if item is None:
                return
            if isinstance(item, Exception):
                raise item
            yield from item

    def close(self) -> None:
        """
        Stop the thread (at its next chunk) and wait for it: its statement
        may be running still.
        """
        self._stop.set()
        self._thread.join()


class FileSource:
    """
    An SQLite journal's files as one L{primecount.journal.interface.Source}.
    """

    def __init__(self, files: JournalFiles) -> None:
        self._conns = list(files.conns.values())
        self._ahead: list[_Ahead] = []
        self.files = len(self._conns)

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[None]:
        """
        A read transaction on every file (WAL: it holds no lock the
        server's writer waits for); the files' threads are stopped before
        it ends.
        """
        for conn in self._conns:
            conn.execute("BEGIN")
        try:
            yield
        finally:
            self._close()
            for conn in self._conns:
                conn.execute("ROLLBACK")

    def _close(self) -> None:
        for ahead in self._ahead:
            ahead.close()
        self._ahead.clear()

    def _each(self, rows: Callable[[sqlite3.Connection], Iterable[Any]]) -> list[Iterator[Any]]:
        """
        C{rows(conn)} of each file as a stream; each file in a thread of its
        own, all started at once, when there are several files.
        """
        if len(self._conns) == 1:
            return [iter(rows(self._conns[0]))]
        self._close()
        ahead = [_Ahead(functools.partial(rows, conn)) for conn in self._conns]
        self._ahead.extend(ahead)
        return [iter(a) for a in ahead]

    def buckets(self, query: Query, seconds: int) -> Iterator[tuple[int, int, int]]:
        def rows(conn: sqlite3.Connection) -> Iterable[tuple[int, int, int]]:
            where, params = _where(conn, query)
            return conn.execute(
                f"SELECT CAST(time / {int(seconds)} AS INTEGER) AS bucket, count(*), "
                f"count(error) FROM requests{where} GROUP BY bucket ORDER BY bucket",
                params,
            )

        return merged_sums(self._each(rows))

    def outcomes(self, query: Query) -> Iterable[tuple[str, str | None, int, int]]:
        def rows(conn: sqlite3.Connection) -> Iterable[tuple[str, str | None, int, int]]:
            where, params = _where(conn, query, "error IS NOT NULL OR protocol = 'range'")
            return conn.execute(
                "SELECT protocol, error, count(*), coalesce(sum(sum_ok = 0), 0) "
                f"FROM requests{where} GROUP BY protocol, error",
                params,
            )

        for stream in self._each(rows):
            yield from stream

    def edge(self, query: Query, newest: bool) -> float | None:
        found = []
        for conn in self._conns:
            where, params = _where(conn, query)
            row = conn.execute(
                f"SELECT {'max' if newest else 'min'}(time) FROM requests{where}", params
            ).fetchone()
            if row is not None and row[0] is not None:
                found.append(float(row[0]))
        if not found:
            return None
        return max(found) if newest else min(found)

    def peers(self, query: Query, top: int) -> tuple[list[Peer], list[Peer]]:
        # Each file's peers in the order of their UTF-8 bytes (SQLite's
        # BINARY collation of the text column), which is how Python
        # compares the bytes; grouping the text itself sorts a third faster
        # than grouping the bytes.
        def rows(conn: sqlite3.Connection) -> Iterable[tuple[bytes, int, int]]:
            where, params = _where(conn, query)
            return conn.execute(
                "SELECT CAST(host AS BLOB), count(*), count(error) "
                f"FROM requests{where} GROUP BY host ORDER BY host",
                params,
            )

        return top_peers(
            (
                Peer(bytes(peer).decode("utf-8", "surrogateescape"), requests, errors)
                for peer, requests, errors in merged_sums(self._each(rows))
            ),
            top,
        )
