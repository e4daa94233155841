# -*- test-case-name: tests.system.test_jmeter -*-
"""
The original server's own JMeter clients against C{--framing read}: the
seed-style plan in C{benchmarks/seed.jmx}, run by real JMeter through the
project's C{run-jmeter} wrapper, against a real C{twistd -n primecount}.

JMeter is a Debian package (C{jmeter jmeter-tcp}, installed by
C{.ci/debian-packages} under tox). Without it the test fails when C{CI} is
set and is skipped, loudly, otherwise.
"""

from __future__ import annotations

import csv
import os
import shutil
import sqlite3
import subprocess
from collections import Counter
from pathlib import Path

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from tests.helpers import ServerProcess

ROOT = Path(__file__).resolve().parents[2]
PLAN = ROOT / "benchmarks" / "seed.jmx"
JMETER_LIB = Path("/usr/share/jmeter/lib/ext")

#: Where the wrapper is looked for, below the checkout's parent folders,
#: unless C{PRIMECOUNT_RUN_JMETER} names it.
WRAPPER = Path("shared", "tools", "jmeter", "run-jmeter")


def find_run_jmeter() -> str | None:
    """
    The C{run-jmeter} wrapper: C{$PRIMECOUNT_RUN_JMETER}, or
    C{shared/tools/jmeter/run-jmeter} in a folder above the checkout.
    """
    named = os.environ.get("PRIMECOUNT_RUN_JMETER")
    if named:
        return named
    for folder in ROOT.parents:
        candidate = folder / WRAPPER
        if candidate.is_file():
            return str(candidate)
    return None


def missing() -> str | None:
    """
    What is missing to run JMeter here, or L{None}.
    """
    if shutil.which("java") is None or not JMETER_LIB.is_dir():
        return "JMeter is not installed (apt-get install -y jmeter jmeter-tcp)"
    wrapper = find_run_jmeter()
    if wrapper is None or not os.path.isfile(wrapper):
        return (
            f"no run-jmeter wrapper at {wrapper}"
            if wrapper
            else f"no run-jmeter wrapper ({WRAPPER} above the checkout, or PRIMECOUNT_RUN_JMETER)"
        )
    return None


class SeedPlanTests(SynchronousTestCase):
    """
    C{benchmarks/seed.jmx}: no newline, no end-of-line byte, one connection
    per sample, every reply asserted.
    """

    THREADS = 10
    LOOPS = 5

    def setUp(self) -> None:
        why = missing()
        if why is not None:
            if os.environ.get("CI"):
                self.fail(f"CI must run the JMeter test: {why}")
            raise SkipTest(f"NOT TESTED: the seed JMeter plan; {why}")
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)

    def run_plan(self, port: int) -> list[dict[str, str]]:
        results = os.path.join(self.dir, "results.csv")
        done = subprocess.run(
            [
                find_run_jmeter() or "",
                str(PLAN),
                results,
                f"-Jport={port}",
                f"-Jthreads={self.THREADS}",
                f"-Jloops={self.LOOPS}",
                "-Jtimeout=20000",
            ],
            capture_output=True,
            timeout=300,
        )
        self.assertEqual(done.returncode, 0, done.stdout[-2000:] + done.stderr[-2000:])
        with open(results, newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f))

    def test_seedPlanAgainstReadFraming(self) -> None:
        server = ServerProcess(
            "--framing", "read", "--journal", "sqlite:journal.sqlite3", cwd=self.dir
        )
        self.addCleanup(server.stop)
        samples = self.run_plan(server.port)
        samplers = 6
        self.assertEqual(len(samples), self.THREADS * self.LOOPS * samplers)
        failed = [s for s in samples if s["success"] != "true"]
        self.assertEqual(failed, [])
        conn = sqlite3.connect(os.path.join(self.dir, "journal.sqlite3"))
        try:
            rows = conn.execute("SELECT message, error FROM requests").fetchall()
        finally:
            conn.close()
        self.assertEqual(
            Counter(rows),
            Counter(
                {
                    (message, None): self.THREADS * self.LOOPS
                    for message in (
                        "abc2a",
                        "abacada",
                        "abacadabb",
                        "a",
                        "ñandú ñu ñ",
                        "日本語の日本",
                    )
                }
            ),
        )
