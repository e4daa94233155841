# -*- test-case-name: tests.unit.test_journalstats,tests.system.test_postgresql_journal_process -*-
"""
C{primecount journal --stats}: the journal summed up by the database.

What the records of a query come to, L{summarize}: the requests per
minute, the totals by outcome, the range protocol's bad sums, the peers
that sent most requests and most errors; and the series alone,
L{buckets}: requests and errors per stretch of time, oldest first.

Everything is counted by SQL aggregates (C{GROUP BY}) in the database:
what comes back is one row per minute, per error text or per peer, never
one per record, so memory does not grow with the records. The sources
are each backend's: L{primecount.journal.sqlite.stats} (an SQLite
journal, every worker file of it) and L{primecount.journal.postgresql.stats}
(PostgreSQL), given by the journal's L{primecount.journal.interface.Reader};
each answers four questions (L{Source}), and this module puts the answers
together the same way for all:

  - the requests and errors per minute; their sums are the totals (and
    the C{ok} count), so the series and the totals always agree;
  - the errors by text and the range records: the few records that are
    not answered count requests;
  - the times of the oldest and newest record, looked for only in the
    first and last minute that has one;
  - the peers, of which only the top few of each list are kept.

All four read one snapshot of the journal (a read transaction), so a
server writing meanwhile cannot make them disagree.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any

from primecount.journal.interface import Peer, Query, Source

#: How many peers each of the top lists holds unless told otherwise.
TOP = 10

#: Seconds in a minute, the stretch of the series.
MINUTE = 60


@dataclass
class Summary:
    """
    What the matching records come to.

    @ivar requests: how many records.
    @ivar outcomes: records by their error text, C{None} for C{ok}.
    @ivar range_requests: records of the range protocol.
    @ivar bad_sums: range records whose client sent a wrong sum.
    @ivar first: the time of the oldest record, if any.
    @ivar last: the time of the newest record, if any.
    @ivar by_requests: the peers with most requests, most first.
    @ivar by_errors: the peers with most errors (at least one), most first.
    @ivar files: how many files (SQLite) or databases were read.
    """

    requests: int = 0
    outcomes: dict[str | None, int] = field(default_factory=dict)
    range_requests: int = 0
    bad_sums: int = 0
    first: float | None = None
    last: float | None = None
    by_requests: list[Peer] = field(default_factory=list)
    by_errors: list[Peer] = field(default_factory=list)
    files: int = 1

    @property
    def errors(self) -> int:
        """
        Records that did not end C{ok}.
        """
        return self.requests - self.outcomes.get(None, 0)

    @property
    def error_share(self) -> float | None:
        """
        The errors' share of the records (0 to 1), C{None} without records.
        """
        return self.errors / self.requests if self.requests else None

    def add_outcome(self, protocol: str, error: str | None, n: int, bad_sums: int) -> None:
        """
        Count C{n} records of C{protocol} that ended with C{error} among
        the errors and the range protocol's records (the totals and the
        C{ok} count come from the minutes), C{bad_sums} of them with a
        wrong sum.
        """
        if error is not None:
            self.outcomes[error] = self.outcomes.get(error, 0) + n
        if protocol == "range":
            self.range_requests += n
            self.bad_sums += bad_sums


class _Top:
    """
    The C{n} largest of a stream, kept in a heap of C{n}: ties go to the
    smaller peer (by its text), so the lists do not depend on the order
    the peers come in.
    """

    def __init__(self, n: int) -> None:
        self._n = n
        self._heap: list[tuple[int, _Reversed, Peer]] = []

    def offer(self, value: int, peer: Peer) -> None:
        if self._n <= 0:
            return
        item = (value, _Reversed(peer.peer), peer)
        if len(self._heap) < self._n:
            heapq.heappush(self._heap, item)
        elif item[:2] > self._heap[0][:2]:
            heapq.heapreplace(self._heap, item)

    def largest(self) -> list[Peer]:
        return [peer for _, _, peer in sorted(self._heap, key=itemgetter(0, 1), reverse=True)]


class _Reversed:
    """
    A text that orders backwards: in a heap of (count, text), the smaller
    text wins a tie.
    """

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def __lt__(self, other: _Reversed) -> bool:
        return self.text > other.text

    def __gt__(self, other: _Reversed) -> bool:
        return self.text < other.text

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Reversed) and self.text == other.text

    def __hash__(self) -> int:
        return hash(self.text)


def top_peers(peers: Iterable[Peer], n: int) -> tuple[list[Peer], list[Peer]]:
    """
    The C{n} peers with most requests and the C{n} with most errors (at
    least one), from a stream of them, in memory for C{n} peers.
    """
    by_requests, by_errors = _Top(n), _Top(n)
    for peer in peers:
        by_requests.offer(peer.requests, peer)
        if peer.errors:
            by_errors.offer(peer.errors, peer)
    return by_requests.largest(), by_errors.largest()


def merged_sums(
    streams: Iterable[Iterator[tuple[Any, int, int]]],
) -> Iterator[tuple[Any, int, int]]:
    """
    Several streams of C{(key, requests, errors)}, each in key order, as one
    in key order with the rows of equal keys added up.
    """
    for key, rows in itertools.groupby(heapq.merge(*streams, key=itemgetter(0)), itemgetter(0)):
        requests = errors = 0
        for _, r, e in rows:
            requests += r
            errors += e
        yield key, requests, errors


def filled(found: Iterable[tuple[int, int, int]]) -> Iterator[tuple[int, int, int]]:
    """
    C{(bucket, requests, errors)} rows in bucket order, with the buckets
    missing between them added as zeros.
    """
    expected = None
    for bucket, requests, errors in found:
        if expected is not None:
            for gap in range(expected, bucket):
                yield gap, 0, 0
        yield bucket, requests, errors
        expected = bucket + 1


def within(query: Query, since: float, until: float) -> Query:
    """
    C{query} narrowed to [C{since}, C{until}).
    """
    return Query(
        since if query.since is None else max(query.since, since),
        until if query.until is None else min(query.until, until),
        query.peer,
    )


def summarize(
    source: Source,
    query: Query,
    top: int = TOP,
    minutes: Callable[[int, int, int], None] | None = None,
) -> Summary:
    """
    What the records of C{query} come to (its C{limit} aside).

    @param source: the journal, as its
        L{primecount.journal.interface.Reader}'s C{stats} gives it.
    @param top: how many peers each top list holds.
    @param minutes: called with C{(start, requests, errors)} for each
        minute from the first record's to the last's, in order, C{start}
        in seconds since the epoch.
    """
    summary = Summary(files=source.files)
    with source.snapshot():
        first = last = None
        for minute, requests, errors in filled(source.buckets(query, MINUTE)):
            first = minute if first is None else first
            last = minute
            summary.requests += requests
            summary.outcomes[None] = summary.outcomes.get(None, 0) + requests - errors
            if minutes is not None:
                minutes(minute * MINUTE, requests, errors)
        if first is None or last is None:
            return summary
        for protocol, error, n, bad in source.outcomes(query):
            summary.add_outcome(protocol, error, n, bad)
        summary.first = source.edge(within(query, first * MINUTE, (first + 1) * MINUTE), False)
        summary.last = source.edge(within(query, last * MINUTE, (last + 1) * MINUTE), True)
        summary.by_requests, summary.by_errors = source.peers(query, top)
    return summary


def buckets(source: Source, query: Query, seconds: int = MINUTE) -> Iterator[tuple[int, int, int]]:
    """
    The requests and errors of C{query} per C{seconds} of time, as
    C{(start, requests, errors)} with C{start} in seconds since the epoch
    (a multiple of C{seconds}), oldest first, from the first stretch with a
    record to the last; stretches without one in between are there, with
    zeros.

    @param source: as for L{summarize}.
    """
    for bucket, requests, errors in filled(source.buckets(query, seconds)):
        yield bucket * seconds, requests, errors
