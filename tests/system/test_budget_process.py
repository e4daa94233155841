# -*- test-case-name: tests.system.test_budget_process -*-
"""
The memory budget against a real server under attack: clients pipelining
the longest lines do not make it hold more than C{--max-memory} and a
margin. The units are in L{tests.unit.test_budget}; the figures for the
defaults come from C{python -m benchmarks.memory_attack}.
"""

from __future__ import annotations

import os
import signal

from twisted.trial.unittest import SynchronousTestCase

from benchmarks import memory_attack as attack
from primecount.testing.twistd import ServerProcess
from tests.helpers import recv_lines
from tests.system.test_hostile import LogPump

#: The budget of the server under attack, in MiB: small, so that the
#: attack fills it in a second.
BUDGET = 32

#: What the process may add to its RSS beyond the budget: what one read
#: adds per connection before it is paused (64 KiB each), the batch being
#: journalled, the allocator's slack. Measured: about 35 MiB.
MARGIN = 80


class AttackTests(SynchronousTestCase):
    """
    100 connections pipelining 16,383-byte lines for 4 s.
    """

    def test_rssStaysWithinTheBudgetUnderAttack(self) -> None:
        cwd = os.path.abspath(self.mktemp())
        os.makedirs(cwd)
        server = ServerProcess(
            "--journal", "sqlite:j.sqlite3", "--max-memory", str(BUDGET), cwd=cwd
        )
        pump = LogPump(server)
        self.addCleanup(server.stop)
        self.addCleanup(pump.stop)
        start = attack.rss_kib(server.process.pid)
        bound = start + (BUDGET + MARGIN) * 1024
        # Stopped at twice the bound: without a budget the server would take
        # gigabytes.
        result = attack.attack(
            server.port, server.process.pid, 100, 16383, 4.0, rss_cap_kib=2 * bound
        )
        self.assertFalse(result.capped)
        self.assertLess(result.peak_kib, bound, (start, result.samples))
        # Served, right, in order (each connection checks its own
        # replies), and still serving.
        self.assertGreater(result.replies, 0)
        self.assertEqual(result.wrong, 0)
        with server.connect() as sock:
            sock.sendall(b"abc2a\n")
            self.assertEqual(recv_lines(sock, 1), ["2 sí\n".encode()])
        pump.stop()
        self.assertIn(server.stop(), (0, -signal.SIGTERM))
        log = server.log.decode(errors="replace")
        self.assertIn(f"over --max-memory {BUDGET} MiB", log)
        self.assertEqual(log.count("over --max-memory"), 1, log)
        self.assertNotIn("Traceback", log)
