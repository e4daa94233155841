# -*- test-case-name: tests.unit.test_sqlite_journal -*-
"""
Journal records: what is kept of every request, on either protocol.

Pure data, free of Twisted and of any storage engine, so the server, every
backend's writer and reader, and C{primecount journal} share one
definition: the record, and the columns that hold it (L{COLUMNS}).
"""

from __future__ import annotations

import time as _time
from typing import NamedTuple

#: The protocols a record can come from, as stored in its C{protocol} field
#: (and used as the C{protocol} label of the metrics).
PROTOCOL_COUNT = "count"
PROTOCOL_RANGE = "range"


class Record(NamedTuple):
    """
    One journalled request.

    A named tuple whose fields are the journal's columns in order, so the
    SQLite writer takes it as it is: one is made per request, and a tuple
    is four times cheaper to build than a frozen dataclass.

    @ivar time: when the request was answered, seconds since the epoch (UTC).
    @ivar peer: the client's address as the journal and the limits see it
        (after a PROXY header): an IP address, or C{unix:PATH}. Stored in
        the C{host} column (see L{COLUMNS}).
    @ivar port: the client's port (0 when the transport has none, e.g. UNIX).
    @ivar protocol: L{PROTOCOL_COUNT} or L{PROTOCOL_RANGE}.
    @ivar message: count protocol: the message, as text, or as the bytes
        that arrived when they were not UTF-8; range protocol: C{None}.
    @ivar count: count protocol: k; range protocol: N, the number of primes.
    @ivar prime: count protocol: whether k is prime; otherwise C{None}.
    @ivar error: the error, if the request failed, else C{None}.
    @ivar a: range protocol: the lower bound.
    @ivar b: range protocol: the upper bound.
    @ivar sum_ok: range protocol: whether the client's sum matched.
    """

    time: float
    peer: str
    port: int
    protocol: str
    message: str | bytes | None = None
    count: int | None = None  # type: ignore[assignment]  # the column; shadows tuple.count
    prime: bool | None = None
    error: str | None = None
    a: int | None = None
    b: int | None = None
    sum_ok: bool | None = None


#: The columns of a journal's table that hold a record, in the order of
#: L{Record}'s fields, in every backend. The C{host} column holds
#: L{Record.peer}: the storage keeps its old name, since renaming a column
#: of existing journals needs a migration.
COLUMNS = (
    "time",
    "host",
    "port",
    "protocol",
    "message",
    "count",
    "prime",
    "error",
    "a",
    "b",
    "sum_ok",
)

#: L{Record}'s field of each column of L{COLUMNS}.
FIELDS = tuple("peer" if column == "host" else column for column in COLUMNS)

assert Record._fields == FIELDS, "Record's fields must be the columns, in order"


def now() -> float:
    """
    The current time for a record (a separate name so tests can replace it).
    """
    return _time.time()
