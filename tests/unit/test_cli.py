# -*- test-case-name: tests.unit.test_cli -*-
"""
Tests for L{primecount.cli}, the dispatcher, in process: a command that
needs the C{tools} extra says so in one line when it is missing. The
commands as a user runs them are in L{tests.system.test_cli}.
"""

from __future__ import annotations

import io
import sys

from twisted.trial.unittest import SynchronousTestCase

from primecount import cli
from primecount.cli.bench import __main__ as bench_main


class ToolsExtraTests(SynchronousTestCase):
    """
    C{rich} and C{hdrhistogram} come with C{primecount[tools]}: without
    them, C{primecount bench} and C{primecount top} stop with one line
    that names the extra, never a traceback.
    """

    def without(self, *modules: str) -> None:
        """
        Make C{modules} impossible to import for this test, as if they were
        not installed.
        """
        for name in modules:
            if name in sys.modules:
                self.addCleanup(sys.modules.__setitem__, name, sys.modules[name])
            else:
                self.addCleanup(sys.modules.pop, name, None)
            sys.modules[name] = None  # type: ignore[assignment]

    def stderr(self) -> io.StringIO:
        """
        Collect what the test writes on stderr.
        """
        err = io.StringIO()
        self.patch(sys, "stderr", err)
        return err

    def test_benchWithoutTheToolsIsOneLine(self) -> None:
        """
        C{primecount bench} without C{hdrhistogram} (or C{rich}) exits 2
        with one line naming what is missing and the extra that brings it.
        """
        self.without("hdrh", "rich")
        err = self.stderr()
        status = cli.main(["bench", "--port", "1", "--requests", "1"])
        self.assertEqual(status, 2)
        self.assertEqual(
            err.getvalue(),
            "primecount bench: needs hdrhistogram and rich, which are not installed: "
            "pip install 'primecount[tools]'\n",
        )

    def test_topWithoutRichIsOneLine(self) -> None:
        """
        C{primecount top} without C{rich} exits 2 with one line.
        """
        self.without("rich")
        err = self.stderr()
        status = cli.main(["top", "--once"])
        self.assertEqual(status, 2)
        self.assertEqual(
            err.getvalue(),
            "primecount top: needs rich, which is not installed: pip install 'primecount[tools]'\n",
        )

    def test_moduleEntryOfTheBench(self) -> None:
        """
        C{python -m primecount.cli.bench}, the benchmarks' way in, says the
        same.
        """
        self.without("hdrh")
        err = self.stderr()
        status = bench_main.main(["--port", "1", "--requests", "1"])
        self.assertEqual(status, 2)
        self.assertIn("needs hdrhistogram, which is not installed", err.getvalue())

    def test_othersNeedNoTools(self) -> None:
        """
        C{ask}, C{primes} and C{journal} need nothing from the extra.
        """
        for command in ("ask", "primes", "journal"):
            self.assertIsNone(cli.missing_tools(command), command)
