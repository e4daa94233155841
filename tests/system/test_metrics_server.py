# -*- test-case-name: tests.system.test_metrics_server -*-
"""
--metrics-port on a real server: the families move with traffic, also
summed across --workers.
"""

from __future__ import annotations

import os
import signal
import socket
import time
import urllib.request

from prometheus_client.parser import text_string_to_metric_families
from twisted.trial.unittest import SynchronousTestCase

from primecount.testing.twistd import ServerProcess
from tests.helpers import recv_lines
from tests.system.test_workers_process import children, wait_for


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


class MetricsServerTests(SynchronousTestCase):
    """
    Scrape a real server after known traffic.
    """

    def start(self, *args: str) -> tuple[ServerProcess, int]:
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        port = free_port()
        server = ServerProcess(
            "--journal", "sqlite:j.sqlite3", "--metrics-port", str(port), *args, cwd=directory
        )
        self.addCleanup(server.stop)
        return server, port

    def traffic(self, server: ServerProcess, rounds: int) -> None:
        for _ in range(rounds):
            with server.connect() as sock:
                sock.sendall(b"abc2a\n\n\xff\nx\n")
                self.assertEqual(len(recv_lines(sock, 4)), 4)

    def assertCounted(
        self, port: int, rounds: int
    ) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        values = scrape(port)

        def requests(outcome: str) -> float:
            key = ("primecount_requests_total", (("outcome", outcome), ("protocol", "count")))
            return values.get(key, 0.0)

        self.assertEqual(requests("ok"), 2 * rounds)
        self.assertEqual(requests("empty_message"), rounds)
        self.assertEqual(requests("invalid_utf8"), rounds)
        self.assertEqual(
            values[("primecount_request_duration_seconds_count", (("protocol", "count"),))],
            4 * rounds,
        )
        self.assertEqual(values[("primecount_journal_batch_size_sum", ())], 4 * rounds)
        families = {name for name, _ in values if name.startswith("primecount_")}
        self.assertGreaterEqual(len({n.rsplit("_", 1)[0] for n in families}), 5, families)
        return values

    def test_familiesMoveWithTraffic(self) -> None:
        server, port = self.start()
        self.traffic(server, 5)
        values = self.assertCounted(port, 5)
        self.assertEqual(values[("primecount_open_connections", (("protocol", "count"),))], 0)
        with server.connect() as held:
            held.sendall(b"a\n")
            recv_lines(held, 1)
            self.assertEqual(
                scrape(port)[("primecount_open_connections", (("protocol", "count"),))], 1
            )

    def test_summedAcrossWorkersAndRestartsCounted(self) -> None:
        server, port = self.start("--workers", "2")
        self.assertTrue(wait_for(lambda: len(children(server.process.pid)) == 2))
        time.sleep(0.5)
        self.traffic(server, 12)
        self.assertCounted(port, 12)
        os.kill(sorted(children(server.process.pid))[0], signal.SIGKILL)
        self.assertTrue(
            wait_for(lambda: scrape(port).get(("primecount_worker_restarts_total", ())) == 1)
        )
        # The dead worker's counts stay in the totals.
        self.assertCounted(port, 12)
