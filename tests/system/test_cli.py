# -*- test-case-name: tests.system.test_cli -*-
"""
The C{primecount} command's dispatcher and C{primecount ask}.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

from twisted.trial.unittest import SynchronousTestCase

from primecount.testing.twistd import ServerProcess


def primecount(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "primecount", *args], capture_output=True, timeout=60
    )


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class AskTests(SynchronousTestCase):
    """
    C{primecount ask} against a real server.
    """

    def test_printsRepliesInOrder(self) -> None:
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        server = ServerProcess("--journal", "none", cwd=directory)
        self.addCleanup(server.stop)
        result = primecount("ask", "--port", str(server.port), "abc2a", "abacada", "ñañ")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(result.stdout.decode(), "2 sí\n4 no\n2 sí\n")
        result = primecount("ask", "--port", str(server.port), "abc2a", " ")
        self.assertEqual(result.returncode, 1)
        self.assertEqual(result.stdout.decode(), "2 sí\nERR empty message\n")

    def test_serverDownIsOneLine(self) -> None:
        result = primecount("ask", "--port", str(closed_port()), "abc")
        self.assertEqual(result.returncode, 1)
        self.assertEqual(result.stdout, b"")
        lines = result.stderr.decode().splitlines()
        self.assertEqual(len(lines), 1, lines)
        self.assertIn("refused", lines[0])


class DispatchTests(SynchronousTestCase):
    """
    Usage errors are one line and exit 2.
    """

    def test_usageErrorsAreOneLine(self) -> None:
        for args in ([], ["nope"], ["ask"], ["ask", "--port", "x", "m"]):
            result = primecount(*args)
            self.assertEqual(result.returncode, 2, args)
            lines = result.stderr.decode().splitlines()
            self.assertEqual(len(lines), 1, (args, lines))
            self.assertIn("error:", lines[0])
