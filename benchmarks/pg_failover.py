# -*- test-case-name: tests.system.test_database_failover -*-
"""
The PostgreSQL journal through a failover: for each durability, what it
loses, how soon service returns, and what it costs.

For example::

    python -m benchmarks.pg_failover --clients 20 --seconds 20 --durability process,standby

Starts a throwaway Patroni cluster (one etcd, two PostgreSQL nodes,
synchronous replication, the shipped C{deploy/patroni/config.yml}); for each
durability, runs one primecount host journalling to it through a multi-host
URL under C{--clients} keep-alive clients for C{--seconds}, kills the
primary node (C{kill -9}) while they go on, and once the standby is promoted
reads the journal back. Prints per durability: requests per second before
the kill, acknowledged requests missing from the new primary, seconds to
the promotion and to the first correct reply after it, and C{ERR journal
unavailable} replies.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

from benchmarks.harness import BenchmarkError, patroni_cluster, reported, start_server
from primecount.journal.postgresql import reader as pgreader
from primecount.testing import patronicluster, pgcluster
from primecount.testing.clients import ClientThread

#: PostgreSQL's synchronous_commit for each durability (primecount's
#: --journal-durability values).
DURABILITIES = {"process": "off", "disk": "local", "standby": "on"}


def journalled(url: str) -> set[str]:
    """
    The messages in the journal at C{url}.
    """
    conn = pgreader.open_database(url)
    try:
        return {str(r.message) for _, r in pgreader.select(conn, pgreader.Query())}
    finally:
        conn.close()


def run(
    cluster: patronicluster.PatroniCluster, durability: str, n: int, clients: int, seconds: float
) -> dict[str, float]:
    """
    One failover under load with C{durability}; its figures.
    """
    database = cluster.create_database(f"failover_{durability}_{n}")
    url = cluster.url(user="primecount", database=database, query="target_session_attrs=read-write")
    directory = tempfile.mkdtemp(prefix="primecount-failover-")
    served = False
    server = start_server(
        *("--journal", url, "--journal-durability", durability, "--timeout", "120"),
        cwd=directory,
    )
    running: list[ClientThread] = []
    try:
        # Bounded in time only: a fast client would run out of questions
        # before the promotion.
        deadline = time.monotonic() + seconds + 120
        running = [
            ClientThread(f"{durability}{i}", server.port, deadline, 30.0, questions=10**9)
            for i in range(clients)
        ]
        for client in running:
            client.start()
        time.sleep(1)
        counted = sum(len(c.acknowledged) for c in running)
        started = time.monotonic()
        time.sleep(seconds)
        rate = (sum(len(c.acknowledged) for c in running) - counted) / (time.monotonic() - started)

        primary = cluster.with_role("leader")
        standby = cluster.with_role("sync_standby")
        assert primary is not None and standby is not None
        promotion = patronicluster.Promotion(standby)
        promotion.start()
        killed = time.monotonic()
        primary.kill()
        promoted = promotion.wait(120)
        promotion.stop()
        served = pgcluster.wait_for(
            lambda: any(t > promoted for c in running for _, t in c.acknowledged), timeout=60
        )
        time.sleep(1)
    finally:
        for client in running:
            client.stopping.set()
        for client in running:
            client.join(40)
        server.stop()
        if served:
            shutil.rmtree(directory, ignore_errors=True)
    if not served:
        raise BenchmarkError(
            f"{durability}: no correct reply within 60 s of the promotion; the server's log "
            f"is in {directory}"
        )
    acknowledged = [m for c in running for m, _ in c.acknowledged]
    stored = journalled(url)
    after = [t for c in running for _, t in c.acknowledged if t > promoted]
    figures = {
        "rate": rate,
        "acknowledged": len(acknowledged),
        "missing": sum(1 for m in acknowledged if m not in stored),
        "promotion": promoted - killed,
        "first_ok": min(after) - promoted,
        "refused": sum(len(c.refused) for c in running),
        "unexpected": sum(len(c.unexpected) for c in running),
    }
    cluster.heal()
    return figures


def main(argv: list[str] | None = None) -> int:
    """
    Parse the command line and run every durability asked for; the exit
    status.
    """
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.pg_failover", description=__doc__.strip().split("\n\n")[0]
    )
    parser.add_argument("--clients", type=int, default=20, help="keep-alive clients (20)")
    parser.add_argument(
        "--seconds", type=float, default=10.0, help="load before the kill, seconds (10)"
    )
    parser.add_argument(
        "--durability",
        default=",".join(DURABILITIES),
        help="comma-separated durabilities (process,disk,standby)",
    )
    args = parser.parse_args(argv)
    wanted = [d.strip() for d in args.durability.split(",") if d.strip()]
    unknown = [d for d in wanted if d not in DURABILITIES]
    if unknown:
        parser.error(f"unknown durability: {', '.join(unknown)}")
    return reported("pg_failover", lambda: measure(wanted, args.clients, args.seconds))


def measure(wanted: list[str], clients: int, seconds: float) -> int:
    """
    Start the cluster, run each durability in C{wanted}, print the table.
    """
    started = time.monotonic()
    with patroni_cluster() as cluster:
        print(f"Patroni cluster up in {time.monotonic() - started:.1f} s ({cluster.dir})")
        print(
            f"{'durability':<10} {'sync_commit':<11} {'req/s':>8} {'ratio':>6} "
            f"{'acked':>8} {'missing':>8} {'kill→promo s':>12} {'promo→OK s':>10} "
            f"{'ERR unavail':>11} {'other':>5}",
            flush=True,
        )
        base = None
        for n, durability in enumerate(wanted):
            figures = run(cluster, durability, n, clients, seconds)
            base = base or figures["rate"]
            print(
                f"{durability:<10} {DURABILITIES[durability]:<11} {figures['rate']:>8.0f} "
                f"{figures['rate'] / base:>6.2f} {figures['acknowledged']:>8.0f} "
                f"{figures['missing']:>8.0f} {figures['promotion']:>12.1f} "
                f"{figures['first_ok']:>10.2f} {figures['refused']:>11.0f} "
                f"{figures['unexpected']:>5.0f}",
                flush=True,
            )
    print(f"cpus: {os.cpu_count()}; total {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
