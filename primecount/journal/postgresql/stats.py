# -*- test-case-name: tests.system.test_journalstats_process -*-
"""
The aggregates of C{primecount journal --stats} (L{primecount.journal.stats})
over a PostgreSQL journal: its one table, every host's records
(L{DatabaseSource}).

PostgreSQL aggregates by hashing, spilling to disk past C{work_mem}, so
memory stays bounded on its side too; the peers come back already cut to
the top few (ties broken by the address in the C collation, bytewise, as
on SQLite), and the minutes are streamed (psycopg's C{stream}). The time
window uses the BRIN index on C{time}.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import Any

import psycopg

from primecount.journal.interface import Peer, Query
from primecount.journal.postgresql.schema import TABLE


def _where(query: Query, condition: str = "") -> tuple[str, list[object]]:
    """
    The C{WHERE} clause of C{query} (its limit aside, and with
    C{condition}) and its parameters.
    """
    clauses: list[str] = []
    params: list[object] = []
    if query.since is not None:
        clauses.append("time >= %s")
        params.append(datetime.fromtimestamp(query.since, UTC))
    if query.until is not None:
        clauses.append("time < %s")
        params.append(datetime.fromtimestamp(query.until, UTC))
    if query.peer is not None:
        clauses.append("host = ANY(%s)")
        params.append(list(query.peer))
    if condition:
        clauses.append(f"({condition})")
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), params


class DatabaseSource:
    """
    A PostgreSQL journal as a L{primecount.journal.interface.Source}.
    """

    files = 1

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self._conn = conn

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[None]:
        """
        One read-only transaction that sees one snapshot throughout.
        """
        with self._conn.transaction():
            self._conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            yield

    def _rows(self, sql: str, params: list[object]) -> Iterator[tuple[Any, ...]]:
        with self._conn.cursor() as cursor:
            yield from cursor.stream(sql.encode(), params)

    def buckets(self, query: Query, seconds: int) -> Iterator[tuple[int, int, int]]:
        where, params = _where(query)
        for bucket, requests, errors in self._rows(
            # date_part gives a float8; extract a numeric, slower to divide.
            f"SELECT floor(date_part('epoch', time) / {int(seconds)})::bigint AS bucket, "
            f"count(*), count(error) FROM {TABLE}{where} GROUP BY bucket ORDER BY bucket",
            params,
        ):
            yield int(bucket), int(requests), int(errors)

    def outcomes(self, query: Query) -> Iterable[tuple[str, str | None, int, int]]:
        where, params = _where(query, "error IS NOT NULL OR protocol = 'range'")
        return [
            (protocol, error, int(n), int(bad))
            for protocol, error, n, bad in self._rows(
                "SELECT protocol, error, count(*), count(*) FILTER (WHERE NOT sum_ok) "
                f"FROM {TABLE}{where} GROUP BY protocol, error",
                params,
            )
        ]

    def edge(self, query: Query, newest: bool) -> float | None:
        where, params = _where(query)
        row = self._conn.execute(
            f"SELECT {'max' if newest else 'min'}(time) FROM {TABLE}{where}".encode(), params
        ).fetchone()
        return None if row is None or row[0] is None else float(row[0].timestamp())

    def peers(self, query: Query, top: int) -> tuple[list[Peer], list[Peer]]:
        where, params = _where(query)
        found: dict[str, list[Peer]] = {"requests": [], "errors": []}
        for kind, peer, requests, errors in self._rows(
            "WITH peers AS (SELECT host, count(*) AS requests, count(error) AS errors "
            f"FROM {TABLE}{where} GROUP BY host) "
            "(SELECT 'requests', host, requests, errors FROM peers "
            'ORDER BY requests DESC, host COLLATE "C" LIMIT %s) '
            "UNION ALL "
            "(SELECT 'errors', host, requests, errors FROM peers WHERE errors > 0 "
            'ORDER BY errors DESC, host COLLATE "C" LIMIT %s)',
            [*params, top, top],
        ):
            found[kind].append(Peer(peer, int(requests), int(errors)))
        return found["requests"], found["errors"]
