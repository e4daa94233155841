"""
primecount through a failover of its PostgreSQL journal.

Real components, started by the test: a Patroni cluster (L{patronicluster}:
one etcd, two PostgreSQL nodes, C{synchronous_mode}, the shipped
C{deploy/patroni/config.yml}), two C{twistd -n primecount} hosts behind
HAProxy with clients connecting from 127.0.0.2 (as in
L{tests.system.test_several_hosts}), and the primary node killed or frozen
under load. Each host finds the primary its own way, the two ways the
operations docs give:

  - host C{a}: a libpq multi-host URL with C{target_session_attrs=read-write};
  - host C{b}: the shipped C{deploy/haproxy-postgresql.cfg} as it is (the
    node addresses from the environment), which asks Patroni's C{GET
    /primary}.

Besides the clients through HAProxy, one client asks each host directly, so
that each way's return after the promotion is timed on its own.

Without Patroni, etcd, PostgreSQL or HAProxy these tests skip, except under
C{CI=true}, where they fail.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from twisted.trial.unittest import SynchronousTestCase

from primecount.testing import patronicluster, pgcluster
from primecount.testing.clients import CLIENT, ClientThread
from primecount.testing.processes import free_port, require_program, stop_process
from primecount.testing.twistd import ServerProcess
from tests.helpers import start_shipped_haproxy
from tests.system.test_postgresql_journal_process import stored

#: The shipped HAProxy configuration of the database side.
PG_HAPROXY = Path(__file__).resolve().parents[2] / "deploy" / "haproxy-postgresql.cfg"

#: Seconds from the promotion to the first C{OK} of each host, after the
#: primary was killed (the issue's bound).
FIRST_OK = 5.0

#: C{--journal-timeout} in the frozen-primary test: the longest a commit
#: waits before its requests are answered C{ERR journal unavailable}.
JOURNAL_TIMEOUT = 5.0

#: Seconds Patroni may take to promote the standby once the primary died or
#: froze: C{ttl} (20) after the last renewal of the leader lock, and margin.
PROMOTION = 60.0

#: Clients through HAProxy.
CLIENTS = 6

#: Numbers the tests' databases.
_databases = itertools.count(1)


@dataclass
class Outage:
    """
    What the clients saw through one failover.

    @ivar faulted: when the primary was killed or frozen.
    @ivar promoted: when the standby was first seen accepting writes.
    @ivar direct: the client asking each host directly, by host name.
    """

    clients: list[ClientThread]
    direct: dict[str, ClientThread]
    faulted: float
    promoted: float
    everyone: list[ClientThread] = field(init=False)

    def __post_init__(self) -> None:
        self.everyone = [*self.clients, *self.direct.values()]

    def acknowledged(self) -> list[str]:
        """
        Every message a client received its correct reply to.
        """
        return [m for c in self.everyone for m, _ in c.acknowledged]

    def first_ok(self, client: ClientThread) -> float | None:
        """
        Seconds from the promotion to C{client}'s first correct reply after
        it, if it got one.
        """
        after = [t for _, t in client.acknowledged if t > self.promoted]
        return min(after) - self.promoted if after else None


class FailoverTests(SynchronousTestCase):
    """
    Two primecount hosts journalling to a Patroni cluster whose primary
    dies or freezes under load.
    """

    def setUp(self) -> None:
        self.haproxy = require_program("haproxy", "haproxy")
        self.cluster = patronicluster.shared()
        self.database = self.cluster.create_database(f"failover_{os.getpid()}_{next(_databases)}")
        self.multihost = self.cluster.url(
            user="primecount", database=self.database, query="target_session_attrs=read-write"
        )

    # -- the pieces ------------------------------------------------------------------

    def start_pg_haproxy(self) -> str:
        """
        Run the shipped C{deploy/haproxy-postgresql.cfg}, the nodes'
        addresses in its environment (the third node's pointing where nothing
        listens: the test cluster has two), and wait until its first health
        checks have marked every server but the primary down (HAProxy starts
        with every server up); the journal URL through it.
        """
        port = free_port()
        env = dict(os.environ, PRIMECOUNT_PG_BIND=f"127.0.0.1:{port}")
        for n in range(1, 4):
            node = self.cluster.nodes[n - 1] if n <= len(self.cluster.nodes) else None
            env[f"PG{n}"] = f"127.0.0.1:{node.port if node else free_port()}"
            env[f"PG{n}_PATRONI_PORT"] = str(node.api if node else free_port())
        leader = self.cluster.with_role("leader")
        assert leader is not None
        standbys = {f"pg{n}" for n in range(1, 4)} - {leader.name}
        path = self.mktemp()
        log = open(path, "wb")  # noqa: SIM115 - closed by cleanup
        self.addCleanup(log.close)
        process = subprocess.Popen(
            [self.haproxy, "-db", "-f", str(PG_HAPROXY)],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.addCleanup(stop_process, process)

        def checked() -> bool:
            with open(path) as f:
                text = f.read()
            return all(f"postgresql_primary/{name} is DOWN" in text for name in standbys)

        patronicluster.wait_for(checked, 30, "HAProxy marks the standbys down")
        password = quote(self.cluster.passwords["primecount"])
        return f"postgresql://primecount:{password}@127.0.0.1:{port}/{self.database}"

    def host(self, journal: str, *options: str) -> ServerProcess:
        """
        A primecount host journalling to C{journal}: PROXY protocol
        listener for HAProxy, plain listener for the direct client.
        """
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        server = ServerProcess(
            "--journal", journal, *options, "--timeout", "60",
            "--listen", "haproxy:tcp:0:interface=127.0.0.1",
            "--listen", "tcp:0:interface=127.0.0.1",
            cwd=directory,
        )  # fmt: skip
        self.addCleanup(server.stop)
        return server

    def outage(self, fault: str, *options: str, client_timeout: float = 30.0) -> Outage:
        """
        Start both hosts and the clients, let them work, then C{fault}
        (C{"kill"} or C{"freeze"}) the primary node; wait for the promotion
        and for each host to answer again (or 30 s), then stop the clients.

        @param options: more primecount options of both hosts.
        """
        a = self.host(self.multihost, *options)
        b = self.host(self.start_pg_haproxy(), *options)
        self.hosts = {"a (multi-host URL)": a, "b (HAProxy)": b}
        # The front HAProxy: the shipped deploy/haproxy.cfg.
        _, front, _ = start_shipped_haproxy(
            self, self.haproxy, [a.ports["proxy"], b.ports["proxy"]]
        )
        deadline = time.monotonic() + 150
        clients = [ClientThread(f"c{i}", front, deadline, client_timeout) for i in range(CLIENTS)]
        direct = {
            name: ClientThread(f"{name}-direct", server.port, deadline, client_timeout)
            for name, server in (("a", a), ("b", b))
        }
        everyone = [*clients, *direct.values()]
        for client in everyone:
            client.start()
        self.addCleanup(lambda: [c.stopping.set() for c in everyone])
        patronicluster.wait_for(
            lambda: all(c.acknowledged for c in everyone), 30, "every client is answered"
        )
        time.sleep(1)

        primary = self.cluster.with_role("leader")
        standby = self.cluster.with_role("sync_standby")
        assert primary is not None and standby is not None
        promotion = patronicluster.Promotion(standby)
        promotion.start()
        self.addCleanup(promotion.stop)
        faulted = time.monotonic()
        if fault == "kill":
            primary.kill()
        else:
            primary.freeze()
            # First of the cleanups: a host cannot stop while its commit
            # waits on a frozen node.
            self.addCleanup(primary.thaw)
        promoted = promotion.wait(PROMOTION)

        def answered_again() -> bool:
            return all(any(t > promoted for _, t in c.acknowledged) for c in direct.values())

        pgcluster.wait_for(answered_again, timeout=30)
        time.sleep(1)
        for client in everyone:
            client.stopping.set()
        for client in everyone:
            client.join(client_timeout + 10)
        return Outage(clients, direct, faulted, promoted)

    def slow(self, client: ClientThread, outage: Outage) -> str:
        """
        What a test failing on C{client}'s slowest reply says: when that
        request was sent, and the hosts' logs.
        """
        logs = []
        for name, server in self.hosts.items():
            server.readLog(0.1)
            logs.append(f"--- host {name}:\n{server.log.decode('utf-8', 'replace')[-6000:]}")
        return (
            f"{client.name}: {client.slowest:.2f} s for a request sent "
            f"{client.slowestSent - outage.faulted:+.2f} s after the fault (promotion "
            f"{outage.promoted - outage.faulted:+.2f} s)\n" + "\n".join(logs)
        )

    # -- the checks ------------------------------------------------------------------

    def assertNothingAcknowledgedMissing(self, outage: Outage) -> None:
        """
        Every acknowledged request is in the journal of the primary now,
        recorded with its client's address (not HAProxy's).
        """
        acknowledged = outage.acknowledged()
        records = stored(self.multihost)
        journalled = {r.message for r in records}
        missing = [m for m in acknowledged if m not in journalled]
        self.assertEqual(
            missing, [], f"{len(missing)} of {len(acknowledged)} acknowledged requests missing"
        )
        asked = set(acknowledged)
        self.assertEqual({r.peer for r in records if r.message in asked}, {CLIENT})

    def assertOnlyCorrectOrUnavailable(self, outage: Outage) -> None:
        """
        No client got a reply other than the correct one or C{ERR journal
        unavailable}, and the outage was answered with the latter.
        """
        for client in outage.everyone:
            self.assertEqual(client.unexpected, [], client.name)
        refused = [t for c in outage.everyone for t in c.refused]
        self.assertTrue(
            any(outage.faulted < t < outage.promoted for t in refused),
            "no ERR journal unavailable between the fault and the promotion",
        )
        # Nothing was acknowledged while no primary accepted writes: from 1 s
        # after the fault (replies already on their way excepted) to 0.5 s
        # before the promotion was seen (it is polled every 50 ms).
        during = [
            m
            for c in outage.everyone
            for m, t in c.acknowledged
            if outage.faulted + 1 < t < outage.promoted - 0.5
        ]
        self.assertEqual(during, [])

    def assertRejoins(self) -> None:
        """
        The old primary, started again (or thawed), rejoins as the
        synchronous standby and holds the primary's journal.
        """
        self.cluster.heal()
        leader = self.cluster.with_role("leader")
        standby = self.cluster.with_role("sync_standby")
        assert leader is not None and standby is not None
        count = "SELECT count(*) FROM primecount_requests"
        on_leader = self.cluster.execute(leader, count, self.database)
        patronicluster.wait_for(
            lambda: self.cluster.execute(standby, count, self.database) == on_leader,
            30,
            "the rejoined standby holds the primary's journal",
        )

    # -- the tests -------------------------------------------------------------------

    def test_primaryKilledUnderLoad(self) -> None:
        """
        The primary node dies (C{kill -9} of Patroni, the postmaster and its
        children): every acknowledged request is on the new primary, the
        outage is answered C{ERR journal unavailable}, each host answers
        C{OK} again within L{FIRST_OK} seconds of the promotion, and the old
        primary, started again, rejoins as the standby.
        """
        outage = self.outage("kill")
        self.assertGreater(len(outage.acknowledged()), 100)
        self.assertOnlyCorrectOrUnavailable(outage)
        for name, client in outage.direct.items():
            first = outage.first_ok(client)
            self.assertIsNotNone(first, f"host {name} never answered OK after the promotion")
            self.assertLessEqual(first, FIRST_OK, f"host {name}")
        # The hosts were never down: no connection failed.
        self.assertEqual([c.failures for c in outage.everyone], [0] * len(outage.everyone))
        self.assertNothingAcknowledgedMissing(outage)
        self.assertRejoins()

    def test_primaryFrozenUnderLoad(self) -> None:
        """
        The primary node freezes (C{SIGSTOP} of its processes, for longer
        than every connection timeout: until after the promotion): every
        request is answered within C{--journal-timeout} and a margin, each
        host answers C{OK} again after the promotion, nothing acknowledged
        is missing, and the old primary, thawed, rejoins as the standby.
        """
        outage = self.outage("freeze", "--journal-timeout", f"{JOURNAL_TIMEOUT:g}")
        self.assertOnlyCorrectOrUnavailable(outage)
        for client in outage.everyone:
            self.assertEqual(client.failures, 0, f"{client.name} waited in vain for a reply")
            self.assertLess(client.slowest, JOURNAL_TIMEOUT + 5, self.slow(client, outage))
        for name, client in outage.direct.items():
            # After the promotion, a multi-host URL may first wait out
            # connect_timeout (5 s) on the frozen node.
            first = outage.first_ok(client)
            self.assertIsNotNone(first, f"host {name} never answered OK after the promotion")
            self.assertLessEqual(first, 15.0, f"host {name}")
        self.assertRejoins()
        self.assertNothingAcknowledgedMissing(outage)


class ShippedFilesTests(SynchronousTestCase):
    """
    The shipped Patroni and HAProxy files, checked by the programs that read
    them.
    """

    def test_haproxyConfigValid(self) -> None:
        """
        C{haproxy -c} accepts C{deploy/haproxy-postgresql.cfg} as shipped,
        without warnings.
        """
        haproxy = require_program("haproxy", "haproxy")
        done = subprocess.run(
            [haproxy, "-c", "-f", str(PG_HAPROXY)], capture_output=True, text=True, timeout=60
        )
        self.assertEqual(done.returncode, 0, done.stdout + done.stderr)
        self.assertNotIn("WARNING", done.stdout + done.stderr)

    def test_patroniConfigValid(self) -> None:
        """
        C{patroni --validate-config} accepts C{deploy/patroni/config.yml}
        with the node settings of C{deploy/patroni/patroni_env.conf}, etcd's
        address excepted (Patroni checks it is reachable).
        """
        patroni, _ = patronicluster.programs()
        cluster = patronicluster.shared()
        env = dict(
            os.environ,
            **patronicluster.environment_file(patronicluster.DEPLOY_PATRONI / "patroni_env.conf"),
            PATRONI_ETCD_HOSTS=f"127.0.0.1:{cluster.etcd_port}",
        )
        config = patronicluster.DEPLOY_PATRONI / "config.yml"
        done = subprocess.run(
            [patroni, "--validate-config", str(config)],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )
        self.assertEqual(done.returncode, 0, done.stdout + done.stderr)

    def test_harnessSetsWhatEachNodeSets(self) -> None:
        """
        The test cluster's nodes get every variable C{patroni_env.conf}
        sets (with their own values): they run the shipped configuration
        the way a production node does.
        """
        shipped = patronicluster.environment_file(
            patronicluster.DEPLOY_PATRONI / "patroni_env.conf"
        )
        cluster = patronicluster.shared()
        self.assertLessEqual(set(shipped), set(cluster.nodes[0].environment()))
