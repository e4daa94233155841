# -*- test-case-name: tests.system.test_episodes_process -*-
"""
Client misbehaviour is logged once per episode, with counts: against a
real server (the units are in L{tests.unit.test_episodes}).
"""

from __future__ import annotations

import os
import signal
import socket

from twisted.trial.unittest import SynchronousTestCase

from tests.helpers import ServerProcess, recv_all


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
