# -*- test-case-name: tests.system.test_jmeter -*-
"""
JMeter, run the way the documentation says, through the project's own
launcher (L{benchmarks.run_jmeter}) against a real C{twistd -n primecount}:
the original server's plan (C{benchmarks/jmeter/original.jmx}) against
C{--framing read}, the count protocol's plan
(C{benchmarks/jmeter/primecount.jmx}) against the default framing, and the
launcher failing loudly when JMeter is missing or runs nothing.

JMeter is a Debian package (C{jmeter jmeter-tcp}, installed by
C{.ci/debian-packages} under tox). Without it the tests that run it fail
when C{CI} is set and are skipped, loudly, otherwise.
"""

from __future__ import annotations

import csv
import os
import shutil
import sqlite3
import subprocess
import sys
from collections import Counter
from pathlib import Path

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from primecount.testing.twistd import ServerProcess

ROOT = Path(__file__).resolve().parents[2]
PLANS = ROOT / "benchmarks" / "jmeter"
JMETER_HOME = Path("/usr/share/jmeter")

#: The messages of both plans, each with its reply asserted.
MESSAGES = ("abc2a", "abacada", "abacadabb", "a", "ñandú ñu ñ", "日本語の日本")


def missing() -> str | None:
    """
    What is missing to run JMeter here, or C{None}.
    """
    if shutil.which("java") is None:
        return "Java is not installed (apt-get install -y jmeter jmeter-tcp)"
    for jar in ("bin/ApacheJMeter.jar", "lib/ext/ApacheJMeter_tcp.jar"):
        if not (JMETER_HOME / jar).is_file():
            return f"JMeter is not installed, no {jar} (apt-get install -y jmeter jmeter-tcp)"
    return None


def run_jmeter(
    *args: str, cwd: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """
    C{python -m benchmarks.run_jmeter ARGS}, as the documentation runs it
    (from anywhere: the checkout is on C{PYTHONPATH}).
    """
    env = dict(os.environ if env is None else env)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", "benchmarks.run_jmeter", *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
        env=env,
    )


class JMeterTestCase(SynchronousTestCase):
    """
    A scratch directory; JMeter required.
    """

    THREADS = 10
    LOOPS = 5

    def setUp(self) -> None:
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)

    def requireJMeter(self) -> None:
        why = missing()
        if why is not None:
            if os.environ.get("CI"):
                self.fail(f"CI must run the JMeter test: {why}")
            raise SkipTest(f"NOT TESTED: JMeter; {why}")

    def samples(self, plan: str, port: int, *options: str) -> list[dict[str, str]]:
        """
        Run C{benchmarks/PLAN} against C{port}; its samples.
        """
        self.requireJMeter()
        results = os.path.join(self.dir, "results.csv")
        done = run_jmeter(
            str(PLANS / plan),
            results,
            f"-Jport={port}",
            f"-Jthreads={self.THREADS}",
            f"-Jloops={self.LOOPS}",
            "-Jtimeout=20000",
            *options,
            cwd=self.dir,
        )
        self.assertEqual(done.returncode, 0, done.stdout[-2000:] + done.stderr[-2000:])
        total = self.THREADS * self.LOOPS * len(MESSAGES)
        self.assertIn(f"run_jmeter: {total} samples, 0 failed", done.stdout)
        with open(results, newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f))

    def assertJournalled(self, journal: str) -> None:
        """
        Each message of the plan was journalled once per thread and loop.
        """
        conn = sqlite3.connect(journal)
        try:
            rows = conn.execute("SELECT message, error FROM requests").fetchall()
        finally:
            conn.close()
        self.assertEqual(
            Counter(rows),
            Counter({(message, None): self.THREADS * self.LOOPS for message in MESSAGES}),
        )


class PlanTests(JMeterTestCase):
    """
    The JMeter commands of C{docs/user/bench.md}, with the project's launcher.
    """

    def test_originalPlanAgainstReadFraming(self) -> None:
        """
        C{benchmarks/jmeter/original.jmx}: no newline, no end-of-line byte, one
        connection per sample, every reply asserted.
        """
        server = ServerProcess(
            "--framing", "read", "--journal", "sqlite:journal.sqlite3", cwd=self.dir
        )
        self.addCleanup(server.stop)
        samples = self.samples("original.jmx", server.port)
        self.assertEqual(len(samples), self.THREADS * self.LOOPS * len(MESSAGES))
        self.assertEqual([s for s in samples if s["success"] != "true"], [])
        self.assertJournalled(os.path.join(self.dir, "journal.sqlite3"))

    def test_countPlanAgainstLineFraming(self) -> None:
        """
        C{benchmarks/jmeter/primecount.jmx}: one persistent connection per thread,
        each message ending in a newline, the reply read to the end-of-line
        byte (C{-Jtcp.eolByte=10}, as JMeter 2.13 needs it).
        """
        server = ServerProcess("--journal", "sqlite:journal.sqlite3", cwd=self.dir)
        self.addCleanup(server.stop)
        samples = self.samples("primecount.jmx", server.port, "-Jtcp.eolByte=10")
        self.assertEqual([s for s in samples if s["success"] != "true"], [])
        self.assertJournalled(os.path.join(self.dir, "journal.sqlite3"))


class LauncherFailureTests(JMeterTestCase):
    """
    C{run_jmeter.py} never exits 0 having run nothing (Debian's C{jmeter -n}
    does, when it cannot load the plan): one line on stderr, non-zero exit.
    """

    def assertOneLine(self, done: subprocess.CompletedProcess[str], status: int, text: str) -> None:
        lines = done.stderr.strip().splitlines()
        self.assertEqual((done.returncode, len(lines)), (status, 1), done.stderr)
        self.assertTrue(lines[0].startswith("run_jmeter: "), lines)
        self.assertIn(text, lines[0])

    def test_jmeterMissing(self) -> None:
        """
        Runs anywhere: the JMeter it is pointed at does not exist.
        """
        env = dict(os.environ, JMETER_HOME=os.path.join(self.dir, "no-jmeter"))
        if shutil.which("java") is None:
            env["PATH"] = ""  # the same line either way: something is missing
        done = run_jmeter(str(PLANS / "original.jmx"), "results.csv", cwd=self.dir, env=env)
        self.assertOneLine(done, 2, "apt-get install -y jmeter jmeter-tcp")
        self.assertFalse(os.path.exists(os.path.join(self.dir, "results.csv")))

    def test_planMissing(self) -> None:
        self.requireJMeter()
        done = run_jmeter("nowhere.jmx", "results.csv", cwd=self.dir)
        self.assertOneLine(done, 2, "no test plan at nowhere.jmx")

    def test_planJMeterCannotLoad(self) -> None:
        """
        What C{jmeter -n} does with every plan under Debian's XStream: an
        error in its log, no sample, exit status 0. The launcher says so.
        """
        self.requireJMeter()
        plan = os.path.join(self.dir, "broken.jmx")
        with open(plan, "w") as f:
            f.write("<jmeterTestPlan><hashTree><NoSuchElement/></hashTree></jmeterTestPlan>\n")
        done = run_jmeter(plan, "results.csv", cwd=self.dir)
        self.assertOneLine(done, 1, "JMeter ran no sample (Error in NonGUIDriver")

    def test_noThreads(self) -> None:
        self.requireJMeter()
        done = run_jmeter(
            str(PLANS / "original.jmx"), "results.csv", "-Jport=1", "-Jthreads=0", cwd=self.dir
        )
        self.assertOneLine(done, 1, "JMeter ran no sample")
