# -*- test-case-name: tests.system.test_journal_interface_process -*-
"""
The range protocol without a journal (C{--journal none}), in a real server
process.
"""

from __future__ import annotations

import os
import socket

from twisted.trial.unittest import TestCase

from primecount.cli.primes import fetch, send_sum
from primecount.testing.twistd import ServerProcess


class RangeWithoutJournalTests(TestCase):
    """
    C{twistd -n primecount --range-port 0 --journal none} on 127.0.0.1.
    """

    def test_sumEndsTheRequestAndTheConnectionStaysUsable(self) -> None:
        """
        A range request and its sum are served, and the same connection
        then takes the next request: the server settles the request's
        record without a journal instead of dropping the connection.
        """
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        server = ServerProcess("--range-port", "0", "--journal", "none", cwd=directory)
        self.addCleanup(server.stop)
        with socket.create_connection(("127.0.0.1", server.ports["range"]), timeout=30) as sock:
            primes = fetch(sock, 10, 30)
            self.assertEqual(primes.tolist(), [11, 13, 17, 19, 23, 29])
            self.assertEqual(send_sum(sock, primes), 112)
            self.assertEqual(fetch(sock, 2, 3).tolist(), [2, 3])
