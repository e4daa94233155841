# -*- test-case-name: tests.system.test_journal_interface_process -*-
"""
The benchmark range server that runs without a journal
(C{benchmarks/range_server.py}), as a process.
"""

from __future__ import annotations

import os
import select
import socket
import subprocess
import sys
import time

from twisted.trial.unittest import TestCase

from primecount.cli.primes import fetch, send_sum
from primecount.testing.processes import stop_process
from tests.unit.test_journal_interface import BENCHMARKS


def read_line(process: subprocess.Popen[bytes], timeout: float = 30.0) -> bytes:
    """
    The first line C{process} prints on stdout, or what it printed before
    exiting or before C{timeout} passed.
    """
    assert process.stdout is not None
    data = b""
    deadline = time.monotonic() + timeout
    while b"\n" not in data and time.monotonic() < deadline:
        ready, _, _ = select.select([process.stdout], [], [], 0.1)
        if ready:
            chunk = os.read(process.stdout.fileno(), 4096)
            if not chunk:
                break
            data += chunk
    return data


class RangeServerScriptTests(TestCase):
    """
    C{benchmarks/range_server.py}, the range benchmark's fallback server,
    as a real process on 127.0.0.1.
    """

    def test_sumEndsTheRequestAndTheConnectionStaysUsable(self) -> None:
        """
        A range request and its sum are served, and the same connection
        then takes the next request: the server settles the request's
        record without a journal instead of dropping the connection.
        """
        process = subprocess.Popen(
            [sys.executable, str(BENCHMARKS / "range_server.py"), "0", "2"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        self.addCleanup(process.stdout.close)  # type: ignore[union-attr]
        self.addCleanup(stop_process, process)
        line = read_line(process)
        self.assertTrue(line.startswith(b"listening "), line)
        port = int(line.split()[1])
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            primes = fetch(sock, 10, 30)
            self.assertEqual(primes.tolist(), [11, 13, 17, 19, 23, 29])
            self.assertEqual(send_sum(sock, primes), 112)
            self.assertEqual(fetch(sock, 2, 3).tolist(), [2, 3])
