# -*- test-case-name: tests.unit.test_cli_primes -*-
"""
Tests for L{primecount.cli.primes}: verification, arguments, errors, and a
run against a real server.
"""

from __future__ import annotations

import argparse
import io
import socket
from contextlib import redirect_stderr, redirect_stdout

import numpy as np
from twisted.internet import reactor as globalReactor
from twisted.internet import threads
from twisted.python.threadpool import ThreadPool
from twisted.trial.unittest import TestCase

from primecount.cli import primes as command
from primecount.core.primes import primes_between
from primecount.server.rangeprotocol import RangeFactory
from tests.doubles import FakeJournal


def parse(*argv: str) -> argparse.Namespace:
    """
    Parse C{primes} arguments as the dispatcher would.
    """
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    return parser.parse_args(argv)


def runQuietly(args: argparse.Namespace) -> tuple[int, str, str]:
    """
    Run the command; return its status, stdout and stderr.
    """
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        status = command.run(args)
    return status, out.getvalue(), err.getvalue()


class VerifyTests(TestCase):
    """
    L{primecount.cli.primes.verify} accepts exactly the right answer.
    """

    def test_rightAnswer(self) -> None:
        """
        The primes of the range pass.
        """
        self.assertIsNone(command.verify(primes_between(100, 200), 100, 200))
        self.assertIsNone(command.verify(primes_between(5, 4), 5, 4))

    def test_wrongAnswers(self) -> None:
        """
        Missing, composite, unordered and out-of-range numbers are caught.
        """
        good = primes_between(100, 200)
        cases = {
            "missing": good[1:],
            "composite": np.concatenate((good[:-1], np.array([195], np.uint32))),
            "unordered": good[::-1].copy(),
            "outside": np.concatenate((good, np.array([211], np.uint32))),
        }
        for name, primes in cases.items():
            self.assertIsNotNone(command.verify(primes, 100, 200), name)


class ArgumentTests(TestCase):
    """
    Arguments and ranges.
    """

    def test_clientsAreShiftedByAThousand(self) -> None:
        """
        Client i asks for [A + 1000 i, B + 1000 i].
        """
        self.assertEqual(command.ranges(100, 200, 3), [(100, 200), (1100, 1200), (2100, 2200)])

    def test_outOfInt32IsOneLine(self) -> None:
        """
        A shifted range beyond int32 is one line on stderr and status 1.
        """
        args = parse("2147483000", "2147483600", "-t", "2")
        status, out, err = runQuietly(args)
        self.assertEqual((status, out), (1, ""))
        self.assertEqual(err.count("\n"), 1)
        self.assertIn("outside the 32-bit range", err)

    def test_badNumbersRefused(self) -> None:
        """
        Non-integers and bounds beyond int32 are refused by the parser.
        """
        for argv in (["x", "3"], ["1", "3000000000"], ["1", "2", "-t", "0"]):
            with redirect_stderr(io.StringIO()):
                self.assertRaises(SystemExit, parse, *argv)

    def test_serverDownIsOneLine(self) -> None:
        """
        A refused connection is one line on stderr and status 1.
        """
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        status, out, err = runQuietly(parse("1", "100", "-t", "3", "--port", str(port)))
        self.assertEqual((status, out), (1, ""))
        self.assertEqual(err.count("\n"), 1)
        self.assertIn(f"127.0.0.1:{port}", err)


class RunTests(TestCase):
    """
    C{primecount primes} against a real server.
    """

    async def test_tableOfVerifiedClients(self) -> None:
        """
        Ten clients each get a verified reply, one table row each.
        """
        pool = ThreadPool(minthreads=0, maxthreads=4, name="range-test")
        pool.start()
        self.addCleanup(pool.stop)
        factory = RangeFactory(globalReactor, pool, FakeJournal())
        port = globalReactor.listenTCP(0, factory, interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)
        args = parse("100", "200", "-t", "10", "--port", str(port.getHost().port))
        status, out, err = await threads.deferToThread(runQuietly, args)
        self.assertEqual((status, err), (0, ""))
        lines = out.splitlines()
        self.assertEqual(len(lines), 11)
        self.assertTrue(lines[1].startswith("[100, 200]"))
        self.assertIn(" 21 ", lines[1])
        self.assertIn("3167", lines[1])
        self.assertTrue(all(" yes " in line for line in lines[1:]))
