"""
The PostgreSQL journal against the SQLite journal, under the same load.

    python benchmarks/pg_compare.py                           # persistent, 3 rounds of 5 s
    python benchmarks/pg_compare.py --rounds 5 --duration 10 --placement unpinned
    python benchmarks/pg_compare.py --fsync                   # both with --journal-fsync

Starts a throwaway PostgreSQL cluster (as L{tests.pgcluster} does for the
tests: Debian's C{postgresql}, run as C{postgres} when started as root, in
a temporary directory, on a free port of 127.0.0.1), then runs
C{benchmarks/compare.py} on the C{persistent} workload (100 keep-alive
clients, one request in flight each) with primecount as it is (the SQLite
journal) and the variant C{postgresql} (C{--journal postgresql://…}), and
prints compare's table; the ratio to read is C{postgresql} over
C{primecount} (target: at least 0.7). The cluster runs with
C{synchronous_commit}'s default, C{on} (the journal sets it per session:
off without C{--fsync}) and C{fsync=off} (a throwaway cluster on a shared
disk: what is measured is the client's and the server's CPU and the round
trips, not this disk's flushes). Other options go to compare.py as they
are. The cluster is stopped and removed at the end.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from tests import pgcluster  # noqa: E402


def main(argv: list[str]) -> int:
    """
    Run the comparison; compare.py's exit status.
    """
    fsync = "--fsync" in argv
    rest = [a for a in argv if a != "--fsync"]
    cluster = pgcluster.Cluster()
    try:
        cluster.start()
        url = pgcluster.database(cluster)
        extra = " --journal-fsync" if fsync else ""
        command = [
            sys.executable,
            str(HERE / "compare.py"),
            "--workload",
            "persistent",
            "--servers",
            "primecount",
            f"--variant=postgresql=--journal {url}{extra}",
        ]
        if fsync:
            command.append("--primecount-args=--journal-fsync")
        command += rest
        print("$", " ".join(command), flush=True)
        return subprocess.run(command, env=dict(os.environ), check=False).returncode
    finally:
        cluster.destroy()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
