"""
Tests for L{primecount.testing.twistd}: a real server in a process.
"""

from __future__ import annotations

import os
import signal
import threading

from twisted.trial.unittest import SynchronousTestCase

from primecount.testing.twistd import ServerProcess
from tests.helpers import recv_lines


class ServerProcessTests(SynchronousTestCase):
    """
    L{ServerProcess}.
    """

    def test_waitKillsAServerThatOutlivesIt(self) -> None:
        """
        L{ServerProcess.wait} kills a server still running when its timeout
        passes (here a stopped one, as a server whose database froze may
        be) and returns, rather than wait for ever.
        """
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        server = ServerProcess("--journal", "none", cwd=directory)
        self.addCleanup(server.process.kill)
        server.signal(signal.SIGSTOP)
        status: list[int] = []
        waiting = threading.Thread(target=lambda: status.append(server.wait(timeout=0.5)))
        waiting.daemon = True
        waiting.start()
        waiting.join(10)
        self.assertEqual(status, [-signal.SIGKILL])

    def test_outputToAFile(self) -> None:
        """
        With C{output}, the server writes its log to that file (no pipe
        for it to fill): its ports are still found, and L{ServerProcess.stop}
        collects the whole log.
        """
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        path = os.path.join(directory, "server.log")
        server = ServerProcess("--journal", "none", cwd=directory, output=path)
        self.addCleanup(server.process.kill)
        with server.connect() as sock:
            sock.sendall(b"abc2a\n")
            self.assertEqual(recv_lines(sock, 1), [b"2 s\xc3\xad\n"])
        # twistd ends on SIGTERM by raising it again.
        self.assertEqual(server.stop(), -signal.SIGTERM)
        with open(path, "rb") as f:
            written = f.read()
        self.assertIn(b"listening on", written)
        self.assertIn(b"Server Shut Down.", written)
        self.assertEqual(server.log, written)
