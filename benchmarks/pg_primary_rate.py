"""
How many journal records a second one PostgreSQL primary takes with
synchronous replication: the ceiling of the several-hosts design, where
every host writes to one primary.

For example::

    python -m benchmarks.pg_primary_rate --writers 1,4,16 --group 1,50,200 --seconds 10
    python -m benchmarks.pg_primary_rate --synchronous-commit on --fsync-off

Starts a throwaway Patroni cluster (one etcd, two PostgreSQL nodes,
synchronous replication, the shipped configuration, PostgreSQL's own
settings), creates the journal's table, then for each C{synchronous_commit}
and each (writers, group): that many writer processes, each committing as
one primecount process does, a group of records at a time in the journal's
binary C{COPY}, back to back, for C{--seconds}. Prints records and commits
a second and the commit time (median, p99) of each cell. Everything shares
this machine's cores, so the figures are a floor of what a primary on its
own machine takes.
"""

from __future__ import annotations

import argparse
import multiprocessing
import multiprocessing.pool
import os
import statistics
import sys
import time

from benchmarks.harness import patroni_cluster, reported
from primecount.journal.postgresql import schema as pgschema
from primecount.journal.records import PROTOCOL_COUNT, Record


def write(
    url: str, synchronous_commit: str, writer: int, group: int, start: float, seconds: float
) -> tuple[int, list[float]]:
    """
    One writer process: COPY C{group} records at a time from the wall-clock
    time C{start} for C{seconds}; how many commits it made and each one's
    duration.
    """
    conn = pgschema.connect(url)
    conn.execute("SELECT set_config('synchronous_commit', %s, false)", (synchronous_commit,))
    durations: list[float] = []
    n = 0
    time.sleep(max(0.0, start - time.time()))
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        rows = []
        for _ in range(group):
            n += 1
            record = Record(
                time.time(), "127.0.0.2", 40000 + writer, PROTOCOL_COUNT, f"w{writer}-{n}-abc", 1
            )
            rows.append(pgschema.to_row(record))
        began = time.monotonic()
        with conn.cursor() as cursor, cursor.copy(pgschema.COPY) as copy:
            copy.set_types(pgschema.COPY_TYPES)
            for row in rows:
                copy.write_row(row)
        durations.append(time.monotonic() - began)
    conn.close()
    return len(durations), durations


def cell(
    pool: multiprocessing.pool.Pool,
    url: str,
    synchronous_commit: str,
    writers: int,
    group: int,
    seconds: float,
) -> tuple[float, float, float, float]:
    """
    Run C{writers} writers at once; records/s, commits/s, median and p99
    commit time in milliseconds.
    """
    start = time.time() + 1.0
    results = pool.starmap(
        write, [(url, synchronous_commit, w, group, start, seconds) for w in range(writers)]
    )
    commits = sum(c for c, _ in results)
    durations = sorted(d for _, ds in results for d in ds)
    p99 = durations[min(len(durations) - 1, int(len(durations) * 0.99))]
    return (
        commits * group / seconds,
        commits / seconds,
        statistics.median(durations) * 1000,
        p99 * 1000,
    )


def numbers(text: str) -> list[int]:
    """
    C{"1,4,16"} as C{[1, 4, 16]}.
    """
    return [int(part) for part in text.split(",") if part.strip()]


def main(argv: list[str] | None = None) -> int:
    """
    Parse the command line and run the matrix; the exit status.
    """
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.pg_primary_rate", description=__doc__.strip().split("\n\n")[0]
    )
    parser.add_argument("--writers", default="1,4,16", help="writer processes (1,4,16)")
    parser.add_argument(
        "--group",
        "--batch",
        dest="group",
        default="1,50,200",
        help="records a commit (1,50,200; --batch is its former name)",
    )
    parser.add_argument("--seconds", type=float, default=4.0, help="seconds a cell (4)")
    parser.add_argument(
        "--synchronous-commit", default="on,off", help="PostgreSQL's synchronous_commit (on,off)"
    )
    parser.add_argument("--fsync-off", action="store_true", help="run the nodes with fsync=off")
    args = parser.parse_args(argv)
    return reported("pg_primary_rate", lambda: measure(args))


def measure(args: argparse.Namespace) -> int:
    """
    Start the cluster, run every cell, print the table.
    """
    writers, groups = numbers(args.writers), numbers(args.group)
    settings = [s.strip() for s in args.synchronous_commit.split(",") if s.strip()]
    ctx = multiprocessing.get_context("spawn")
    with patroni_cluster({"fsync": "off"} if args.fsync_off else {}) as cluster:
        database = cluster.create_database()
        url = cluster.url(
            user="primecount", database=database, query="target_session_attrs=read-write"
        )
        conn = pgschema.connect(url)
        pgschema.ensure_schema(conn)
        conn.close()
        leader = cluster.with_role("leader")
        assert leader is not None
        print(
            f"Patroni cluster: leader {leader.name}, synchronous standby "
            f"{cluster.execute(leader, 'SHOW synchronous_standby_names')[0][0]}, "
            f"fsync {'off' if args.fsync_off else 'on'}; {os.cpu_count()} cpus"
        )
        print(
            f"{'sync_commit':<11} {'writers':>7} {'group':>6} {'records/s':>10} "
            f"{'commits/s':>10} {'median ms':>9} {'p99 ms':>7}",
            flush=True,
        )
        best: dict[str, float] = {}
        with ctx.Pool(max(writers)) as pool:
            for setting in settings:
                for w in writers:
                    for group in groups:
                        rate, commits, median, p99 = cell(
                            pool, url, setting, w, group, args.seconds
                        )
                        best[setting] = max(best.get(setting, 0.0), rate)
                        print(
                            f"{setting:<11} {w:>7} {group:>6} {rate:>10.0f} {commits:>10.0f} "
                            f"{median:>9.2f} {p99:>7.2f}",
                            flush=True,
                        )
        for setting, rate in best.items():
            print(f"best with synchronous_commit={setting}: {rate:,.0f} records/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
