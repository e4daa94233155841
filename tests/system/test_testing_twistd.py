"""
Tests for the test helpers that drive real processes (L{tests.helpers}).
"""

from __future__ import annotations

import os
import signal
import threading

from twisted.trial.unittest import SynchronousTestCase

from primecount.testing.twistd import ServerProcess


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
