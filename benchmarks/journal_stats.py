"""
How long primecount journal --stats takes on a big journal, and how much
memory it needs.

For example::

    python -m benchmarks.journal_stats --records 1000000 --parts 2
    python -m benchmarks.journal_stats --postgresql postgresql://USER@HOST:PORT/DB

Builds a journal of C{--records} records with bulk SQL (SQLite, spread over
C{--parts} worker files as C{--workers N} writes them, in a temporary
directory; or the table in an expendable PostgreSQL database, dropped at
the end), made to look like a busy day, then runs C{primecount journal
--stats} on it once per output format, as a user would, and prints each
run's wall time, CPU time and peak resident memory.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

from benchmarks.harness import reported
from primecount.journal.formats import FORMATS
from primecount.journal.sqlite import schema

#: 2026-02-16 00:00:00 UTC.
START = 1771200000.0

#: The columns after the time of record i: half of the records from 10
#: heavy peers, the rest spread; errors, range requests and bad sums.
_COLUMNS = """
    CASE WHEN i % 2 = 0 THEN '192.0.2.' || (i / 2 % 10)
         ELSE '10.' || (i / 7 % 256) || '.' || (i % 251) || '.1' END,
    40000 + i % 20000,
    CASE WHEN i % 100 = 3 THEN 'range' ELSE 'count' END,
    CASE WHEN i % 100 = 3 THEN NULL WHEN i % 50 = 1 THEN '' ELSE 'message' || (i % 1000) END,
    CASE WHEN i % 100 = 3 THEN 25 WHEN i % 50 = 1 OR i % 100 = 5 THEN NULL ELSE i % 7 END,
    CASE WHEN i % 100 = 3 OR i % 50 = 1 OR i % 100 = 5 THEN NULL ELSE i % 7 IN (2, 3, 5) END,
    CASE WHEN i % 50 = 1 THEN 'empty message' WHEN i % 100 = 5 THEN 'invalid UTF-8'
         WHEN i % 1000 = 3 THEN 'bad sum' END,
    CASE WHEN i % 100 = 3 THEN 1 END,
    CASE WHEN i % 100 = 3 THEN 100 END,
    CASE WHEN i % 100 = 3 THEN i % 1000 != 3 END
"""

_INTO = "(time, host, port, protocol, message, count, prime, error, a, b, sum_ok)"

_SQLITE = (
    f"INSERT INTO requests {_INTO} "
    "WITH RECURSIVE n(i) AS (SELECT {first} UNION ALL SELECT i + {step} FROM n "
    "WHERE i + {step} < {end}) "
    f"SELECT {{start}} + i * 0.001, {_COLUMNS} FROM n"
)

_POSTGRESQL = (
    f"INSERT INTO primecount_requests {_INTO} "
    f"SELECT to_timestamp({{start}} + i * 0.001), {_COLUMNS} "
    "FROM generate_series(0::bigint, {end} - 1) AS i"
)


def build_sqlite(path: str, records: int, parts: int) -> list[str]:
    """
    The journal at C{path}: empty when C{parts} > 0 (as a supervisor
    leaves it) with the records spread over its worker files, else holding
    them all. Returns every file written.
    """
    files = [path]
    schema.connect(path).close()
    targets = [schema.part_path(path, n) for n in range(parts)] if parts else [path]
    for n, target in enumerate(targets):
        conn = schema.connect(target)
        conn.execute("PRAGMA synchronous = OFF")
        conn.execute("BEGIN")
        conn.execute(_SQLITE.format(first=n, step=len(targets), end=records, start=START))
        conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.close()
        if target != path:
            files.append(target)
    return files


def build_postgresql(url: str, records: int) -> None:
    """
    The journal's table in the database at C{url}, holding the records.
    """
    from primecount.journal.postgresql import schema as pgschema

    with pgschema.connect(url) as conn:
        pgschema.ensure_schema(conn)
        conn.execute(_POSTGRESQL.format(start=START, end=records).encode())
        conn.execute(f"VACUUM ANALYZE {pgschema.TABLE}".encode())


def drop_postgresql(url: str) -> None:
    """
    Drop the journal's tables from the database at C{url}.
    """
    from primecount.journal.postgresql import schema as pgschema

    with pgschema.connect(url) as conn:
        conn.execute(f"DROP TABLE {pgschema.TABLE}, primecount_schema".encode())


def run_stats(journal: str, fmt: str) -> tuple[float, float, float]:
    """
    Run C{primecount journal --stats} once; its wall seconds, CPU seconds
    (user and system: what a loaded machine does not inflate) and peak
    resident memory in MiB.
    """
    started = time.perf_counter()
    # A wrapper process per run reports its child's use: this process's
    # RUSAGE_CHILDREN would give the largest peak of all runs so far.
    wrapper = (
        "import resource, subprocess, sys\n"
        "subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL)\n"
        "used = resource.getrusage(resource.RUSAGE_CHILDREN)\n"
        "print(used.ru_utime + used.ru_stime, used.ru_maxrss)\n"
    )
    command = [sys.executable, "-m", "primecount", "journal", "--journal", journal, "--stats"]
    done = subprocess.run(
        [sys.executable, "-c", wrapper, *command, "--format", fmt],
        check=True,
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - started
    cpu, peak = done.stdout.split()
    return seconds, float(cpu), int(peak) / 1024


def measure(args: argparse.Namespace) -> int:
    """
    Build the journal, time every format, remove the journal.
    """
    started = time.perf_counter()
    if args.postgresql:
        build_postgresql(args.postgresql, args.records)
        journal, where, cleanup = (
            args.postgresql,
            "PostgreSQL",
            lambda: drop_postgresql(args.postgresql),
        )
        size = ""
    else:
        directory = tempfile.mkdtemp(prefix="primecount-stats-", dir=args.directory)
        path = os.path.join(directory, "journal.sqlite3")
        files = build_sqlite(path, args.records, args.parts)
        journal = f"sqlite:{path}"
        where = f"SQLite, {len(files)} files"
        size = f", {sum(os.path.getsize(f) for f in files) / 2**20:,.0f} MiB"
        cleanup = lambda: shutil.rmtree(directory)  # noqa: E731
    print(
        f"built {args.records:,} records ({where}{size}) in {time.perf_counter() - started:.1f} s"
    )
    try:
        for fmt in FORMATS:
            seconds, cpu, peak = run_stats(journal, fmt)
            print(
                f"--stats --format {fmt:<5}  {seconds:6.1f} s   CPU {cpu:6.1f} s   "
                f"peak RSS {peak:6.1f} MiB"
            )
    finally:
        cleanup()
    return 0


def main(argv: list[str] | None = None) -> int:
    """
    Parse the command line and measure; the exit status.
    """
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.journal_stats", description=__doc__.strip().split("\n\n")[0]
    )
    parser.add_argument("--records", type=int, default=10_000_000, help="records (10 million)")
    parser.add_argument("--parts", type=int, default=2, help="worker files (SQLite; 0: one file)")
    parser.add_argument("--directory", default=None, help="where the SQLite journal goes")
    parser.add_argument("--postgresql", metavar="URL", help="measure this database instead")
    args = parser.parse_args(argv)
    return reported("journal_stats", lambda: measure(args))


if __name__ == "__main__":
    sys.exit(main())
