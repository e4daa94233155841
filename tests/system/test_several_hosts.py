"""
End to end beyond one machine: HAProxy in front of two primecount hosts
sharing one PostgreSQL journal; one host is killed (SIGKILL) under load.

Real components, started by the test: a throwaway PostgreSQL cluster
(L{pgcluster}), two C{twistd -n primecount} processes listening behind
HAProxy (PROXY protocol version 2), and C{haproxy -db} with the shipped
C{deploy/haproxy.cfg} (its addresses from its environment variables, under
a container's open-files limit). Clients connect from 127.0.0.2 and HAProxy
from 127.0.0.1, so the journal shows whose address it kept.
"""

from __future__ import annotations

import os
import signal
import time

from twisted.trial.unittest import SynchronousTestCase

from primecount.testing import pgcluster
from primecount.testing.clients import CLIENT, ClientThread
from primecount.testing.processes import require_program
from primecount.testing.twistd import ServerProcess
from tests.helpers import start_shipped_haproxy
from tests.system.test_postgresql_journal_process import stored


class SeveralHostsTests(SynchronousTestCase):
    """
    HAProxy + two hosts + one PostgreSQL journal, one host killed.
    """

    def setUp(self) -> None:
        self.haproxy = require_program("haproxy", "haproxy")
        self.cluster = pgcluster.shared()
        self.url = pgcluster.database(self.cluster)

    def host(self, name: str) -> ServerProcess:
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        server = ServerProcess(
            "--journal", self.url, "--timeout", "30",
            "--listen", "haproxy:tcp:0:interface=127.0.0.1",
            cwd=directory,
        )  # fmt: skip
        self.addCleanup(server.stop)
        return server

    def test_hostKilledUnderLoadLosesNothingAcknowledged(self) -> None:
        first, second = self.host("a"), self.host("b")
        # The shipped configuration, as shipped: only the addresses come
        # from its environment variables.
        _, front, _ = start_shipped_haproxy(
            self, self.haproxy, [first.ports["proxy"], second.ports["proxy"]]
        )
        deadline = time.monotonic() + 60
        clients = [ClientThread(f"c{i}", front, deadline) for i in range(6)]
        for client in clients:
            client.start()
        time.sleep(2)
        killed_at = time.monotonic()
        os.kill(first.process.pid, signal.SIGKILL)
        time.sleep(3)
        for client in clients:
            client.stopping.set()
        for client in clients:
            client.join(30)
        second.stop()

        acknowledged = [m for c in clients for m, _ in c.acknowledged]
        after = [m for c in clients for m, t in c.acknowledged if t > killed_at + 1]
        self.assertGreater(len(acknowledged), 100)
        # Service went on through the other host.
        self.assertGreater(len(after), 50)
        records = stored(self.url)
        journalled = {r.message for r in records}
        missing = [m for m in acknowledged if m not in journalled]
        self.assertEqual(missing, [], f"{len(missing)} acknowledged requests not in the journal")
        # The journal names the clients, not HAProxy.
        asked = set(acknowledged)
        peers = {r.peer for r in records if r.message in asked}
        self.assertEqual(peers, {CLIENT})
