# -*- test-case-name: tests.unit.test_range_bench -*-
"""
Tests for L{benchmarks.range_bench}: it notices a request that does not
complete, or a wrong reply, and says so in one line.
"""

from __future__ import annotations

import contextlib
import io
import socket
import threading

import numpy as np
from twisted.trial.unittest import TestCase

from benchmarks import range_bench
from benchmarks.harness import BenchmarkError, reported
from primecount.core import rangecodec


class EndToEndTests(TestCase):
    """
    L{range_bench.end_to_end} against a server that misbehaves.
    """

    def serve_once(self, primes: list[int]) -> int:
        """
        A range server for one request: it reads the request, answers with
        C{primes}, reads the sum and hangs up; its port.
        """
        listener = socket.create_server(("127.0.0.1", 0))
        self.addCleanup(listener.close)
        listener.settimeout(30)

        def serve() -> None:
            conn, _ = listener.accept()
            with conn:
                conn.settimeout(30)
                received = b""
                while len(received) < rangecodec.REQUEST_STRUCT.size:
                    received += conn.recv(rangecodec.REQUEST_STRUCT.size - len(received))
                reply = np.array(primes, np.uint32)
                conn.sendall(rangecodec.encode_count(len(reply)) + rangecodec.encode_primes(reply))
                conn.recv(rangecodec.SUM_STRUCT.size)

        server = threading.Thread(target=serve, daemon=True)
        server.start()
        self.addCleanup(server.join, 30)
        return int(listener.getsockname()[1])

    def test_droppedAfterTheSumFailsInOneLine(self) -> None:
        """
        A server that answers the range but drops the connection once the
        sum arrives stops the benchmark with one line on stderr, exit
        status 2.
        """
        port = self.serve_once([2])
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            status = reported("range_bench", lambda: range_bench.end_to_end(port, 2, 2, (1, 2)))
        self.assertEqual(status, 2)
        lines = err.getvalue().splitlines()
        self.assertEqual(len(lines), 1, lines)
        self.assertTrue(lines[0].startswith("range_bench: request [2, 2] did not complete"))

    def test_wrongReplyIsABenchmarkError(self) -> None:
        """
        A reply with the wrong primes is a L{BenchmarkError} that says what
        came.
        """
        port = self.serve_once([4])
        error = self.assertRaises(BenchmarkError, range_bench.end_to_end, port, 2, 2, (1, 2))
        self.assertEqual(str(error), "wrong reply: 1 primes, sum 4")
