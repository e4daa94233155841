# -*- test-case-name: tests.system.test_episodes_process -*-
"""
Client misbehaviour is logged once per episode, with counts: against a
real server (the units are in L{tests.unit.test_episodes}).
"""

from __future__ import annotations

import os
import signal
import socket
import threading
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from benchmarks import limit_pressure as pressure
from primecount.testing.twistd import ServerProcess
from tests.helpers import recv_all


class RealServerTests(SynchronousTestCase):
    """
    Against a real server: 3,000 too-long lines, a handful of log lines.
    """

    def test_threeThousandLinesTooLong(self) -> None:
        cwd = self.mktemp()
        os.makedirs(cwd)
        server = ServerProcess("--journal", "none", "--max-line", "16", cwd=cwd)
        self.addCleanup(server.stop)
        before = server.log.count(b"\n")
        for _ in range(30):
            batch = [server.connect() for _ in range(100)]
            for sock in batch:
                sock.sendall(b"y" * 40 + b"\n")
            for sock in batch:
                self.assertEqual(recv_all(sock), b"ERR line too long\n")
                sock.close()
        # Ask once more, so the server has logged all it will of the flood.
        with server.connect() as sock:
            sock.sendall(b"abc2a\n")
            sock.shutdown(socket.SHUT_WR)
            self.assertEqual(recv_all(sock), "2 sí\n".encode())
        server.readLog(0.5)
        while server.readLog(0.2) and server.log.count(b"\n") == before:
            pass
        flood = server.log.count(b"\n") - before
        self.assertLessEqual(flood, 2, server.log.decode(errors="replace"))
        self.assertIn(server.stop(), (0, -signal.SIGTERM))
        self.assertIn(b"line too long: 2999 more in the last", server.log)


class LimitPressureTests(SynchronousTestCase):
    """
    Clients pressing on the connection limits for seconds: a few log lines
    (C{python -m benchmarks.limit_pressure} measures the same for longer).
    """

    def test_sustainedRefusalsAreOneEpisodeEach(self) -> None:
        """
        50 clients churning against C{--max-connections 20}, and one
        address against C{--max-per-peer 3}, side by side for 3 s: each
        server logs the start of one episode and, once no connection was
        refused for 10 s, its end with the count (before: 2,263 and 12,955
        lines in 5 s).
        """
        results: dict[str, Any] = {}

        def press(pattern: str) -> None:
            results[pattern] = pressure.press(pattern, 3.0)

        threads = [threading.Thread(target=press, args=(p,)) for p in ("churn", "per-peer")]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        for pattern in ("churn", "per-peer"):
            result = results[pattern]
            log = "\n".join(result.lines)
            self.assertGreater(result.outcomes["busy"], 100, (pattern, result.outcomes))
            self.assertGreater(result.outcomes["answered"], 100, (pattern, result.outcomes))
            self.assertEqual((result.during, result.after), (1, 1), log)
            self.assertIn("refusing connections with ERR server busy", result.lines[0])
            self.assertIn(
                f"connections refused at the connection limit: {result.outcomes['busy']} in",
                result.lines[1],
            )
