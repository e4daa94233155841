"""
The PostgreSQL journal through a failover: what each durability loses, how
soon service returns, and what durability costs.

    python benchmarks/pg_failover.py                       # every durability, 20 clients, 10 s
    python benchmarks/pg_failover.py --clients 20 --seconds 20 --durability process,standby

Starts a Patroni cluster (L{tests.patronicluster}: one etcd, two
PostgreSQL 15 nodes, C{synchronous_mode}, the shipped
C{deploy/patroni/config.yml}; Patroni's C{ttl} 20), then, for each
durability in turn: a new database, one primecount host journalling to it
through a libpq multi-host URL (C{target_session_attrs=read-write}), N
keep-alive clients (one request in flight each, from 127.0.0.2) for
C{--seconds}, then the primary node killed (C{kill -9} of its Patroni, its
postmaster and the postmaster's children) while they go on; once the
standby is promoted and answers again, the clients stop and the journal on
the new primary is read back. The killed node rejoins (rewound) before the
next durability.

Prints, for each durability: requests per second before the kill (and its
ratio to the first durability's), acknowledged requests, how many of them
are missing from the new primary, seconds from the kill to the promotion and
from the promotion to the first correct reply, and how many requests were
answered C{ERR journal unavailable}.

Durabilities: C{process} (C{synchronous_commit=off}: acknowledged once
PostgreSQL has the commit in memory), C{disk} (C{local}: on the primary's
disk), C{standby} (C{on}: on the synchronous standby's disk too). With a
primecount that has no C{--journal-durability} yet, C{process} is its
default (no option) and C{standby} is C{--journal-fsync}; C{disk} is not
available there.

The nodes run with C{fsync=off} (a shared test disk: what differs between
the durabilities is who has the commit when the reply leaves, not this
disk's flush time); a process kill loses nothing the kernel holds.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from primecount.journal import pgreader  # noqa: E402
from primecount.tap import PrimecountOptions  # noqa: E402
from primecount.testing import patronicluster, pgcluster  # noqa: E402
from primecount.testing.clients import ClientThread as Client  # noqa: E402
from primecount.testing.twistd import ServerProcess  # noqa: E402

#: PostgreSQL's synchronous_commit for each durability (primecount's
#: --journal-durability values).
DURABILITIES = {"process": "off", "disk": "local", "standby": "on"}


def options(durability: str) -> list[str] | None:
    """
    The primecount options of C{durability}, or L{None} when this primecount
    cannot ask for it.
    """
    if "journal-durability" in PrimecountOptions().synonyms:
        return ["--journal-durability", durability]
    return {"process": [], "standby": ["--journal-fsync"]}.get(durability)


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
) -> dict[str, float] | None:
    """
    One failover under load with C{durability}; its figures.
    """
    extra = options(durability)
    if extra is None:
        return None
    database = cluster.create_database(f"failover_{durability}_{n}")
    url = cluster.url(user="primecount", database=database, query="target_session_attrs=read-write")
    directory = tempfile.mkdtemp(prefix="primecount-failover-")
    server = ServerProcess("--journal", url, *extra, "--timeout", "120", cwd=directory)
    running: list[Client] = []
    try:
        deadline = time.monotonic() + seconds + 120
        running = [Client(f"{durability}{i}", server.port, deadline, 30.0) for i in range(clients)]
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
        pgcluster.wait_for(
            lambda: any(t > promoted for c in running for _, t in c.acknowledged), timeout=60
        )
        time.sleep(1)
    finally:
        for client in running:
            client.stopping.set()
        for client in running:
            client.join(40)
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)
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


def main(argv: list[str]) -> int:
    """
    Run every durability asked for; print the table.
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
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
    started = time.monotonic()
    cluster = patronicluster.PatroniCluster()
    try:
        cluster.start()
        cluster.create_role()
        print(f"Patroni cluster up in {time.monotonic() - started:.1f} s ({cluster.dir})")
        print(
            f"{'durability':<10} {'sync_commit':<11} {'req/s':>8} {'ratio':>6} "
            f"{'acked':>8} {'missing':>8} {'kill→promo s':>12} {'promo→OK s':>10} "
            f"{'ERR unavail':>11} {'other':>5}",
            flush=True,
        )
        base = None
        for n, durability in enumerate(wanted):
            figures = run(cluster, durability, n, args.clients, args.seconds)
            if figures is None:
                print(f"{durability:<10} (this primecount cannot ask for it)", flush=True)
                continue
            base = base or figures["rate"]
            print(
                f"{durability:<10} {DURABILITIES[durability]:<11} {figures['rate']:>8.0f} "
                f"{figures['rate'] / base:>6.2f} {figures['acknowledged']:>8.0f} "
                f"{figures['missing']:>8.0f} {figures['promotion']:>12.1f} "
                f"{figures['first_ok']:>10.2f} {figures['refused']:>11.0f} "
                f"{figures['unexpected']:>5.0f}",
                flush=True,
            )
    finally:
        cluster.destroy()
    print(f"cpus: {os.cpu_count()}; total {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
