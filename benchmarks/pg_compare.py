"""
The PostgreSQL journal against the SQLite journal, under the same load, at
the durabilities that matter.

    python benchmarks/pg_compare.py                           # 3 rounds of 5 s
    python benchmarks/pg_compare.py --rounds 5 --duration 10 --placement unpinned
    python benchmarks/pg_compare.py --url postgresql://pc@db:5432/bench   # a real cluster

Starts a throwaway PostgreSQL cluster (as L{tests.pgcluster} does for the
tests: Debian's C{postgresql}, run as C{postgres} when started as root, in
a temporary directory, on a free port of 127.0.0.1), unless C{--url} names
an existing database, then runs C{benchmarks/compare.py} on the
C{persistent} workload (100 keep-alive clients, one request in flight each,
in alternating rounds) with three servers: primecount as it is (the SQLite
journal, durability C{process}), C{pg_standby} (C{--journal postgresql://…}
with its default C{--journal-durability standby}, C{synchronous_commit=on})
and C{pg_process} (C{--journal-durability process},
C{synchronous_commit=off}). compare prints the medians and, per server,
SQLite's throughput over its own ("vs primecount", median of the per-round
ratios); C{pg_process}'s over C{pg_standby}'s is what durability costs.

The throwaway cluster runs with C{fsync=off} (a shared disk: what is
measured is CPU and round trips, and C{on} still waits for the WAL write
and the WAL writer, not for a disk flush), and has no standby (C{on} then
waits as C{local} does). Measure on a real cluster with C{--url} for the
cost of flushes and of a synchronous standby. Other options go to
compare.py as they are. The throwaway cluster is removed at the end.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from primecount.testing import pgcluster  # noqa: E402


def main(argv: list[str]) -> int:
    """
    Run the comparison; compare.py's exit status.
    """
    url = None
    rest = list(argv)
    if "--url" in rest:
        at = rest.index("--url")
        url = rest[at + 1] if at + 1 < len(rest) else None
        if url is None:
            print("pg_compare: --url needs a postgresql:// URL", file=sys.stderr)
            return 2
        del rest[at : at + 2]
    cluster = None
    try:
        if url is None:
            cluster = pgcluster.Cluster()
            cluster.start()
            url = pgcluster.database(cluster)
        command = [
            sys.executable,
            str(HERE / "compare.py"),
            "--workload",
            "persistent",
            "--servers",
            "primecount",
            f"--variant=pg_standby=--journal {url} --journal-durability standby",
            f"--variant=pg_process=--journal {url} --journal-durability process",
            *rest,
        ]
        print("$", " ".join(command), flush=True)
        return subprocess.run(command, env=dict(os.environ), check=False).returncode
    finally:
        if cluster is not None:
            cluster.destroy()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
