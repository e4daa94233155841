"""
L{primecount.core.options}: one coercer serves twistd's options and
argparse alike, each error one line naming the rule.
"""

from __future__ import annotations

import argparse
import io
import sys

from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from primecount.core import options


class CoercerTests(SynchronousTestCase):
    """
    L{options.positive}, L{options.port}, L{options.seconds}.
    """

    def test_values(self) -> None:
        self.assertEqual(options.positive()("7"), 7)
        self.assertEqual(options.port()("0"), 0)
        self.assertEqual(options.seconds()("0.5"), 0.5)
        for coerce, bad in (
            (options.positive(), "0"),
            (options.positive(), "1.5"),
            (options.port(), "65536"),
            (options.seconds(), "nan"),
            (options.seconds(), "-1"),
        ):
            self.assertRaises(ValueError, coerce, bad)

    def test_usageOptionsMessageNamesTheOption(self) -> None:
        class Opts(usage.Options):
            optParameters = [["n", None, 1, "", options.positive("n")]]  # noqa: RUF012

        e = self.assertRaises(usage.UsageError, Opts().parseOptions, ["--n", "x"])
        self.assertIn("--n wants a whole number, at least 1; got 'x'", str(e))

    def test_argparseTypeIsOneLineWithTheRule(self) -> None:
        parser = argparse.ArgumentParser(prog="p")
        parser.add_argument("--clients", type=options.positive())
        stderr = io.StringIO()
        self.patch(sys, "stderr", stderr)
        e = self.assertRaises(SystemExit, parser.parse_args, ["--clients", "0"])
        self.assertEqual(e.code, 2)
        self.assertIn(
            "p: error: argument --clients: wants a whole number, at least 1; got '0'",
            stderr.getvalue(),
        )
