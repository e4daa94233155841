# -*- test-case-name: tests.system.test_testing_clients -*-
"""
Tests for L{primecount.testing.clients}: a client thread against a real
server.
"""

from __future__ import annotations

import os
import time

from twisted.trial.unittest import SynchronousTestCase

from primecount.testing.clients import ClientThread
from primecount.testing.twistd import ServerProcess


class ClientThreadTests(SynchronousTestCase):
    """
    L{ClientThread} asks until its deadline or its questions run out.
    """

    def test_asksAsManyQuestionsAsAllowed(self) -> None:
        """
        With C{questions=N} it asks N questions, each acknowledged, and
        stops well before its deadline.
        """
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        server = ServerProcess("--journal", "none", cwd=directory)
        self.addCleanup(server.stop)
        client = ClientThread("t", server.port, time.monotonic() + 60, questions=25)
        client.start()
        client.join(30)
        self.assertFalse(client.is_alive())
        self.assertEqual(
            [m for m, _ in client.acknowledged], [f"t-{n}-{'x' * (n % 5)}" for n in range(1, 26)]
        )
        self.assertEqual((client.refused, client.unexpected, client.failures), ([], [], 0))
