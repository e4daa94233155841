# -*- test-case-name: tests.unit.test_workers -*-
"""
C{--workers N}, in process: the shared counts and the sockets' environment.
"""

from __future__ import annotations

import os
import tempfile

from twisted.trial.unittest import SynchronousTestCase

from primecount.workers.environment import WorkerEnvironment, decode_sockets, encode_sockets
from primecount.workers.shared import SharedCounts


class SharedCountsTests(SynchronousTestCase):
    """
    L{SharedCounts}: one limit over several processes' sections.
    """

    def setUp(self) -> None:
        directory = tempfile.mkdtemp()
        self.addCleanup(
            lambda: [os.remove(os.path.join(directory, f)) for f in os.listdir(directory)]
        )
        self.path = os.path.join(directory, "counts")
        self.first = SharedCounts(self.path, 2, 0)
        self.second = SharedCounts(self.path, 2, 1)
        self.addCleanup(self.first.close)
        self.addCleanup(self.second.close)

    def test_totalLimitSpansSections(self) -> None:
        self.assertTrue(self.first.acquire("a", 3, None))
        self.assertTrue(self.second.acquire("b", 3, None))
        self.assertTrue(self.second.acquire("c", 3, None))
        self.assertFalse(self.first.acquire("d", 3, None))
        self.assertEqual(self.first.total, 3)
        self.second.release("b")
        self.assertTrue(self.first.acquire("d", 3, None))

    def test_perPeerLimitSpansSections(self) -> None:
        self.assertTrue(self.first.acquire("10.0.0.1", 100, 2))
        self.assertTrue(self.second.acquire("10.0.0.1", 100, 2))
        self.assertFalse(self.first.acquire("10.0.0.1", 100, 2))
        self.assertTrue(self.first.acquire("10.0.0.2", 100, 2))

    def test_resetForgetsADeadWorker(self) -> None:
        for host in ("a", "b", "c"):
            self.assertTrue(self.second.acquire(host, 3, 1))
        self.assertFalse(self.first.acquire("a", 3, 1))
        self.first.reset(1)
        self.assertEqual(self.first.total, 0)
        self.assertTrue(self.first.acquire("a", 3, 1))


class SocketsEnvTests(SynchronousTestCase):
    """
    The worker's socket list survives the environment.
    """

    def test_roundTrip(self) -> None:
        value = encode_sockets({"count0": (3, 2), "count1": (4, 10), "range2": (5, 2)})
        self.assertEqual(
            decode_sockets(value), [("count", 3, 2), ("count", 4, 10), ("range", 5, 2)]
        )

    def test_workerEnvironmentRoundTrip(self) -> None:
        """
        What the supervisor encodes is what the worker decodes.
        """
        told = WorkerEnvironment({"count0": (3, 2), "range1": (4, 10)}, "/tmp/x:y", 4, 2, 99)
        environ = {"HOME": "/root", **told.encode()}
        self.assertEqual(WorkerEnvironment.decode(environ), told)
        self.assertEqual(told.adopted(), [("count", 3, 2), ("range", 4, 10)])

    def test_notAWorker(self) -> None:
        self.assertIsNone(WorkerEnvironment.decode({"HOME": "/root"}))
