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
import socket
import threading
import time

from twisted.trial.unittest import SynchronousTestCase

from primecount.core.count import evaluate
from primecount.core.outcomes import JOURNAL_UNAVAILABLE
from tests import pgcluster
from tests.helpers import ServerProcess, require_program, start_shipped_haproxy
from tests.system.test_postgresql_journal_process import stored

#: The client side of every connection: not HAProxy's 127.0.0.1.
CLIENT = "127.0.0.2"


class Client(threading.Thread):
    """
    Asks one question after another from C{CLIENT} (through HAProxy, or
    straight to a host), a new connection for each after a failure, until
    told to stop (bounded by C{deadline}); keeps every message whose correct
    reply it received, and every other reply.

    @ivar acknowledged: (message, when) of each correct reply.
    @ivar refused: when each C{ERR journal unavailable} came.
    @ivar unexpected: (message, reply) of any other reply.
    @ivar slowest: the longest wait for a reply, in seconds.
    @ivar failures: connections that failed, closed or timed out.
    """

    def __init__(self, name: str, port: int, deadline: float, timeout: float = 5.0) -> None:
        """
        @param timeout: seconds to wait for a reply before giving up on the
            connection.
        """
        super().__init__(name=name, daemon=True)
        self.port = port
        self.deadline = deadline
        self.timeout = timeout
        self.stopping = threading.Event()
        self.acknowledged: list[tuple[str, float]] = []
        self.refused: list[float] = []
        self.unexpected: list[tuple[str, bytes]] = []
        self.slowest = 0.0
        self.failures = 0

    def connect(self) -> socket.socket:
        sock = socket.socket()
        sock.settimeout(self.timeout)
        sock.bind((CLIENT, 0))
        sock.connect(("127.0.0.1", self.port))
        return sock

    def run(self) -> None:
        sock: socket.socket | None = None
        n = 0
        while not self.stopping.is_set() and time.monotonic() < self.deadline and n < 100_000:
            n += 1
            message = f"{self.name}-{n}-{'x' * (n % 5)}"
            try:
                if sock is None:
                    sock = self.connect()
                sent = time.monotonic()
                sock.sendall(message.encode() + b"\n")
                reply = b""
                while not reply.endswith(b"\n"):
                    chunk = sock.recv(256)
                    if not chunk:
                        raise ConnectionError("closed")
                    reply += chunk
            except OSError:
                self.failures += 1
                if sock is not None:
                    sock.close()
                sock = None
                time.sleep(0.01)
                continue
            now = time.monotonic()
            self.slowest = max(self.slowest, now - sent)
            if reply == evaluate(message.encode()).reply():
                self.acknowledged.append((message, now))
            elif reply == JOURNAL_UNAVAILABLE.reply():
                self.refused.append(now)
            else:
                self.unexpected.append((message, reply))
        if sock is not None:
            sock.close()


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
        clients = [Client(f"c{i}", front, deadline) for i in range(6)]
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
