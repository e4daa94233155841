"""
Journal insert micro-benchmark: figures for issue 12.

How much does one journal record cost the process, and above all the
reactor thread, which shares the GIL with the thread that commits? For
batches of 50 count-protocol records, in process, on a WAL database set up
as the journal sets it up (no network, no server), each way of inserting a
batch is measured three ways:

1. I{bind (dry)}: the same calls on a connection that runs each
   statement's parameters through a trivial C{SELECT ?, ?, ...} instead:
   building and binding the parameters, which hold the GIL (plus a trivial
   step), per record; the steady estimate of the GIL each way holds;
2. I{alone}: wall time and the committing thread's CPU time per record
   (the CPU time includes SQLite's own work, done with the GIL released,
   which still takes a core from a 2-core machine's other processes);
3. I{beside a reactor}: a second thread plays the reactor, running Python
   work in slices of about 10 microseconds, each followed by a system call
   that releases the GIL (as a reactor's C{send}/C{recv}/C{epoll_wait}
   do); the work it loses while the batches are inserted, against its rate
   with the inserting thread asleep just before and after, is the time
   the inserts take from the reactor: the GIL, the cost of handing it
   over, and (on a loaded machine) the core SQLite's own work occupies.
   Noisy when other processes compete for the cores.

Every figure is the median over rounds; the ways alternate within each
round. Before measuring, every way's rows are checked against the records
(exactness, including BLOB and NUL messages, which the JSON ways hand to
the bound-parameter path).

    python benchmarks/journal_insert.py [--rounds 5] [--batches 60]
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import random
import select
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from itertools import chain

from primecount.journal.records import PROTOCOL_COUNT, PROTOCOL_RANGE, Record
from primecount.journal.sqlite import schema

BATCH = 50

Insert = Callable[[sqlite3.Connection, Sequence[Record]], None]


def _transaction(conn: sqlite3.Connection, body: Callable[[], object]) -> None:
    conn.execute("BEGIN IMMEDIATE")
    body()
    conn.execute("COMMIT")


#: One row, every column: what the first journal ran per record.
INSERT_ONE = (
    f"INSERT INTO requests ({', '.join(schema.COLUMNS)}) "
    f"VALUES ({', '.join('?' for _ in schema.COLUMNS)})"
)


def executemany(conn: sqlite3.Connection, records: Sequence[Record]) -> None:
    """
    The first journal's way: C{executemany} of the records as tuples.
    """
    _transaction(conn, lambda: conn.executemany(INSERT_ONE, records))


def _run_statements(conn: sqlite3.Connection, statements: list[tuple[str, list[object]]]) -> None:
    if len(statements) == 1:
        conn.execute(*statements[0])
        return

    def run() -> None:
        for sql, params in statements:
            conn.execute(sql, params)

    _transaction(conn, run)


@functools.cache
def _insert_sql_before(columns: tuple[str, ...], rows: int) -> str:
    """
    One INSERT of C{rows} rows of C{columns}, a parameter per column, as
    before issue 12 (and before each row carried its group id).
    """
    row = f"({', '.join('?' for _ in columns)})"
    return f"INSERT INTO requests ({', '.join(columns)}) VALUES {', '.join([row] * rows)}"


def _inserts_before(records: Sequence[Record]) -> Iterator[tuple[str, list[object]]]:
    """
    L{schema.inserts} before issue 12: eight parameters a count row.
    """
    start = 0
    while start < len(records):
        short = schema._short(records[start])
        end = start + 1
        while (
            end < len(records)
            and end - start < schema.MAX_ROWS
            and schema._short(records[end]) == short
        ):
            end += 1
        group = records[start:end]
        columns = schema.COUNT_COLUMNS if short else schema.COLUMNS
        yield (
            _insert_sql_before(columns, len(group)),
            list(chain.from_iterable(record[: len(columns)] for record in group)),
        )
        start = end


def values_before(conn: sqlite3.Connection, records: Sequence[Record]) -> None:
    """
    The journal's way before issue 12: cached multi-row C{VALUES}
    statements, one implicit transaction when one statement does.
    """
    _run_statements(conn, list(_inserts_before(records)))


def values(conn: sqlite3.Connection, records: Sequence[Record]) -> None:
    """
    The journal's way now (L{schema.inserts}): as before, but an answered
    count row binds six parameters (protocol and error are literals).
    """
    _run_statements(conn, list(schema.inserts(records)))


def _json_sql(extract: Callable[[int], str]) -> str:
    columns = ", ".join(extract(i) for i in range(len(schema.COLUMNS)))
    return (
        f"INSERT INTO requests ({', '.join(schema.COLUMNS)}) "
        f"SELECT {columns} FROM json_each(?) ORDER BY key"
    )


JSON_ARROW = _json_sql(lambda i: f"value ->> {i}")
JSON_EXTRACT = _json_sql(lambda i: f"json_extract(value, '$[{i}]')")


def _json_way(sql: str, ensure_ascii: bool) -> Insert:
    def insert(conn: sqlite3.Connection, records: Sequence[Record]) -> None:
        try:
            text = json.dumps(records, ensure_ascii=ensure_ascii)
        except TypeError:  # bytes: a message that was not UTF-8
            values(conn, records)
            return
        if "\\u0000" in text:  # SQLite < 3.45 cuts a JSON string at \u0000
            values(conn, records)
            return
        conn.execute(sql, (text,))

    return insert


#: name: (how, whether bool has its sqlite3 adapter registered).
WAYS: dict[str, tuple[Insert, bool]] = {
    "executemany": (executemany, False),
    "values (before)": (values_before, False),
    "values, bool adapter": (values_before, True),
    "values 6 params": (values, False),
    "values 6 + adapter (now)": (values, True),
    "json_each ->>": (_json_way(JSON_ARROW, ensure_ascii=True), True),
    "json_each ->> utf8": (_json_way(JSON_ARROW, ensure_ascii=False), True),
    "json_each extract": (_json_way(JSON_EXTRACT, ensure_ascii=True), True),
}

_BOOL = (bool, sqlite3.PrepareProtocol)
_BOOL_ADAPTER = sqlite3.adapters.get(_BOOL)


def bool_adapter(registered: bool) -> None:
    """
    Register the adapter L{schema} registers for bool, or take it away.
    """
    if registered and _BOOL_ADAPTER is not None:
        sqlite3.adapters[_BOOL] = _BOOL_ADAPTER
    else:
        sqlite3.adapters.pop(_BOOL, None)


def count_records(n: int, rng: random.Random, when: float) -> list[Record]:
    """
    C{n} count-protocol records as the pipeline builds them.
    """
    out = []
    for _ in range(n):
        message = "".join(rng.choice("abcdefgh ") for _ in range(rng.randint(5, 40))).strip()
        message = message or "x"
        k = message.count(message[-1])
        out.append(
            Record(
                when,
                "127.0.0.1",
                rng.randint(30000, 60999),
                PROTOCOL_COUNT,
                message,
                k,
                k in (2, 3, 5, 7),
            )
        )
    return out


def tricky_records() -> list[Record]:
    """
    Records every column of which must come back exactly.
    """
    return [
        Record(1.0e9 + 0.1, "::1", 0, PROTOCOL_COUNT, "a\x00b", 2, True, None),
        Record(
            1.7e9 + 1 / 3, "10.0.0.1", 65535, PROTOCOL_COUNT, b"\xff\xfe", None, None, "not UTF-8"
        ),
        Record(5e-324, "h", 1, PROTOCOL_COUNT, "\U0001f600\u00e9", 1, False, None),
        Record(
            2.0**60, "h", 2, PROTOCOL_RANGE, None, 2**63 - 1, None, None, -(2**63), 2**31 - 1, True
        ),
        Record(-0.5, "h", 3, PROTOCOL_RANGE, None, None, None, "ERR x", 0, 10, False),
        Record(123.456, "h", 4, PROTOCOL_COUNT, 'q"\\\n\t\u2028', 7, True, None),
    ]


def check_exact(conn: sqlite3.Connection) -> None:
    """
    Each way stores the tricky records (alone, and mixed with ordinary
    ones) exactly.
    """
    ordinary = count_records(10, random.Random(1), 1.7e9)
    for name, (insert, adapter) in WAYS.items():
        bool_adapter(adapter)
        for batch in (tricky_records(), ordinary, ordinary + tricky_records()[2:4]):
            conn.execute("DELETE FROM requests")
            insert(conn, batch)
            back = [schema.from_row(r) for r in conn.execute(schema.SELECT + " ORDER BY id")]
            if back != list(batch):
                sys.exit(f"{name}: rows differ from records: {back!r} != {batch!r}")
    conn.execute("DELETE FROM requests")


class Reactor(threading.Thread):
    """
    Python work in slices of about 10 microseconds, each followed by a
    system call that releases the GIL; C{work} counts the slices done.
    """

    def __init__(self, slice_loops: int) -> None:
        super().__init__(daemon=True)
        self.work = 0
        self.stopping = False
        self._loops = slice_loops

    def run(self) -> None:
        loops = self._loops
        poll = select.select
        while not self.stopping:
            for _ in range(loops):
                pass
            self.work += 1
            # A poll that returns at once, as a busy reactor's epoll_wait
            # does (time.sleep(0) would idle for ~75 microseconds here).
            poll([], [], [], 0)


def calibrate_slice() -> int:
    """
    Loop iterations for about 10 microseconds of Python work.
    """
    n = 200_000
    started = time.perf_counter()
    for _ in range(n):
        pass
    return max(1, int(n * 10e-6 / (time.perf_counter() - started)))


class DryConnection:
    """
    Runs each statement's parameters through a C{SELECT ?, ?, ...} of as
    many parameters instead (statements without any do nothing): what is
    left of an insert is building and binding its parameters, the part that
    holds the GIL, and the step of a trivial statement.
    """

    def __init__(self) -> None:
        self._conn = sqlite3.connect(":memory:", cached_statements=64)

    def execute(self, sql: str, params: Sequence[object] = ()) -> None:
        if params:
            self._conn.execute(_select(len(params)), params)

    def executemany(self, sql: str, rows: Sequence[Sequence[object]]) -> None:
        raise NotImplementedError("executemany steps inside sqlite3: no dry run")


@functools.cache
def _select(n: int) -> str:
    return f"SELECT {', '.join('?' for _ in range(n))}"


def dry_run(insert: Insert, batches: list[list[Record]]) -> float:
    """
    Microseconds per record of C{insert} on a L{DryConnection}, or NaN.
    """
    conn = DryConnection()
    started = time.perf_counter()
    try:
        for batch in batches:
            insert(conn, batch)  # type: ignore[arg-type]
    except NotImplementedError:
        return math.nan
    return (time.perf_counter() - started) / sum(len(b) for b in batches) * 1e6


def open_journal(path: str) -> sqlite3.Connection:
    """
    The database as L{primecount.journal.SQLiteJournal} opens it.
    """
    conn = schema.connect(path)
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA wal_autocheckpoint=0")
    conn.execute("PRAGMA busy_timeout=50")
    return conn


def measure(
    conn: sqlite3.Connection, insert: Insert, batches: list[list[Record]], loops: int
) -> dict[str, float]:
    """
    One round of one way: per record, wall and CPU time alone, and the
    reactor's lost time beside it.
    """
    records = sum(len(b) for b in batches)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    wall0, cpu0 = time.perf_counter(), time.thread_time()
    for batch in batches:
        insert(conn, batch)
    wall1, cpu1 = time.perf_counter(), time.thread_time()
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    reactor = Reactor(loops)
    reactor.start()
    try:
        idle = 0.05
        time.sleep(0.02)
        w0, t0 = reactor.work, time.perf_counter()
        time.sleep(idle)
        w1, t1 = reactor.work, time.perf_counter()
        for batch in batches:
            insert(conn, batch)
        w2, t2 = reactor.work, time.perf_counter()
        time.sleep(idle)
        w3, t3 = reactor.work, time.perf_counter()
    finally:
        reactor.stopping = True
        reactor.join(5)
    rate = ((w1 - w0) + (w3 - w2)) / ((t1 - t0) + (t3 - t2))
    lost = max(0.0, (t2 - t1) - (w2 - w1) / rate)
    return {
        "bind (dry)": dry_run(insert, batches),
        "wall": (wall1 - wall0) / records * 1e6,
        "cpu": (cpu1 - cpu0) / records * 1e6,
        "contended wall": (t2 - t1) / records * 1e6,
        "GIL taken": lost / records * 1e6,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batches", type=int, default=60, help="batches of 50 per measurement")
    parser.add_argument(
        "--bytes-every",
        type=int,
        default=0,
        help="make one record in N a non-UTF-8 message (BLOB): the JSON ways' fallback",
    )
    args = parser.parse_args(argv)
    rounds = max(1, min(args.rounds, 50))
    nbatches = max(1, min(args.batches, 1000))

    print(f"Python {sys.version.split()[0]}, SQLite {sqlite3.sqlite_version}, batch {BATCH}")
    rng = random.Random(12)
    batches = [count_records(BATCH, rng, 1.7e9 + i) for i in range(nbatches)]
    if args.bytes_every > 0:
        flat = [r for b in batches for r in b]
        for i in range(0, len(flat), args.bytes_every):
            message = flat[i].message
            assert isinstance(message, str)
            flat[i] = flat[i]._replace(message=b"\xff" + message.encode())
        batches = [flat[i : i + BATCH] for i in range(0, len(flat), BATCH)]
    loops = calibrate_slice()

    with tempfile.TemporaryDirectory() as tmp:
        conn = open_journal(os.path.join(tmp, "bench.sqlite3"))
        check_exact(conn)
        print("exactness: every way returns every column of the tricky records")
        figures: dict[str, list[dict[str, float]]] = {name: [] for name in WAYS}
        names = list(WAYS)
        for r in range(rounds):
            order = names[r % len(names) :] + names[: r % len(names)]
            for name in order:
                insert, adapter = WAYS[name]
                bool_adapter(adapter)
                figures[name].append(measure(conn, insert, batches, loops))
        conn.close()

    keys = ["bind (dry)", "wall", "cpu", "contended wall", "GIL taken"]
    print(f"\nmicroseconds per record, medians of {rounds} rounds of {nbatches} batches:")
    print(f"{'way':<26}" + "".join(f"{k:>16}" for k in keys))
    base = {k: statistics.median(f[k] for f in figures["values (before)"]) for k in keys}
    for name in names:
        med = {k: statistics.median(f[k] for f in figures[name]) for k in keys}
        print(
            f"{name:<26}"
            + "".join(f"{med[k]:>16.2f}" for k in keys)
            + f"   dry {med['bind (dry)'] / base['bind (dry)']:.2f}x,"
            + f" taken {med['GIL taken'] / base['GIL taken']:.2f}x before"
        )


if __name__ == "__main__":
    main()
