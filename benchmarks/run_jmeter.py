# -*- test-case-name: tests.system.test_jmeter -*-
"""
Run a JMeter test plan with Debian's JMeter 2.13, non-GUI, and fail loudly
when JMeter is missing or ran nothing.

For example::

    python -m benchmarks.run_jmeter benchmarks/jmeter/primecount.jmx results.csv -Jport=5050

Needs C{apt-get install -y jmeter jmeter-tcp} (C{JMETER_HOME} names another
installation). Plain C{jmeter -n} cannot load any plan with the XStream
Debian ships, and still exits 0: this starts JMeter through
C{benchmarks/jmeter/JMeterLauncher.java}, which opens XStream's permissions
first. RESULTS gets one CSV row per
sample, JMeter's log goes beside it; options after RESULTS go to JMeter.
Exit status: 0 every sample passed, 3 some failed, 1 JMeter ran no sample,
2 something is missing (one line on stderr). Only the standard library.
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

#: The Java class that opens XStream's permissions, then starts JMeter.
LAUNCHER = Path(__file__).resolve().parent / "jmeter" / "JMeterLauncher.java"

#: Where Debian installs JMeter.
DEFAULT_HOME = "/usr/share/jmeter"

#: How to install what this script needs.
INSTALL = "apt-get install -y jmeter jmeter-tcp"

#: Exit statuses.
PASSED, NOTHING_RAN, MISSING, SAMPLES_FAILED = 0, 1, 2, 3

#: JMeter properties every run gets: CSV results with a header row, and
#: the TCP sampler's text in UTF-8 (the count protocol's replies are).
RESULT_PROPERTIES = (
    "-Jjmeter.save.saveservice.output_format=csv",
    "-Jjmeter.save.saveservice.print_field_names=true",
    "-Jtcp.charset=UTF-8",
)


class Unusable(Exception):
    """
    Something this script needs is missing: said in one line, exit status 2.
    """


def say(text: str) -> None:
    """
    One line on stderr.
    """
    print(f"run_jmeter: {text}", file=sys.stderr, flush=True)


def java_command(home: Path) -> list[str]:
    """
    The start of the command that runs L{LAUNCHER} on JMeter's class path:
    C{ApacheJMeter.jar} (whose manifest names Debian's jars: XStream and
    the rest), JMeter's own libraries and its plugins (C{lib/ext}, where the
    TCP sampler is).

    @raise Unusable: when Java, JMeter or its TCP sampler is missing.
    """
    java = shutil.which("java")
    if java is None:
        raise Unusable(f"java is not installed ({INSTALL} brings it)")
    main = home / "bin" / "ApacheJMeter.jar"
    if not main.is_file():
        raise Unusable(f"JMeter is not installed ({main} is missing): {INSTALL}")
    tcp = home / "lib" / "ext" / "ApacheJMeter_tcp.jar"
    if not tcp.is_file():
        raise Unusable(f"JMeter's TCP sampler is not installed ({tcp} is missing): {INSTALL}")
    jars = [
        main,
        *sorted((home / "lib").glob("*.jar")),
        *sorted((home / "lib" / "ext").glob("*.jar")),
    ]
    return [java, f"-Djmeter.home={home}", "-cp", os.pathsep.join(map(str, jars)), str(LAUNCHER)]


def tally(results: Path) -> tuple[int, int]:
    """
    How many samples the results file holds, and how many of them failed.
    """
    if not results.is_file():
        return 0, 0
    with results.open(newline="", encoding="utf-8", errors="replace") as f:
        rows = list(csv.DictReader(f))
    return len(rows), sum(1 for row in rows if row.get("success") != "true")


def first_error(log: Path) -> str:
    """
    The first ERROR line of JMeter's log, without its time stamp, or C{""}.
    """
    if not log.is_file():
        return ""
    for line in log.read_text(encoding="utf-8", errors="replace").splitlines():
        if " ERROR " in line:
            # "2026/12/02 06:21:38 ERROR - jmeter.JMeter: Error in NonGUIDriver ..."
            text = line.split(" ERROR ", 1)[1].lstrip("- ").strip()
            logger, colon, rest = text.partition(": ")
            return rest if colon and " " not in logger else text
    return ""


def run(plan: Path, results: Path, options: list[str], home: Path) -> int:
    """
    Run C{plan} and write its samples to C{results}; the exit status.
    """
    command = java_command(home)
    if not plan.is_file():
        raise Unusable(f"no test plan at {plan}")
    results = results.resolve()
    results.unlink(missing_ok=True)
    log = results.with_name(results.stem + ".jmeter.log")
    log.unlink(missing_ok=True)
    # JMeter writes files into its working directory: keep them out of the
    # user's.
    with tempfile.TemporaryDirectory(prefix="run_jmeter-") as scratch:
        done = subprocess.run(
            [
                *command,
                "-n", "-t", str(plan.resolve()), "-l", str(results), "-j", str(log),
                *RESULT_PROPERTIES, *options,
            ],
            cwd=scratch,
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
    if done.returncode == MISSING:
        return MISSING  # JMeterLauncher said why
    if done.returncode != 0:
        say(f"JMeter failed (exit status {done.returncode}); its log: {log}")
        return NOTHING_RAN
    samples, failed = tally(results)
    if samples == 0:
        why = first_error(log) or "its log names no error: a thread group with no threads or loops?"
        say(f"JMeter ran no sample ({why}); its log: {log}")
        return NOTHING_RAN
    print(f"run_jmeter: {samples} samples, {failed} failed; results in {results}", flush=True)
    return SAMPLES_FAILED if failed else PASSED


def main(argv: list[str] | None = None) -> int:
    """
    The command line; the exit status.
    """
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run_jmeter",
        description="Run a JMeter test plan with Debian's JMeter 2.13, non-GUI.",
        epilog="Options after RESULTS go to JMeter as they are (-Jport=5050). Exit status: "
        "0 every sample passed, 3 some failed, 1 JMeter ran no sample, 2 something is missing.",
    )
    parser.add_argument("plan", metavar="PLAN.jmx", help="the test plan")
    parser.add_argument("results", metavar="RESULTS.csv", help="the samples, one CSV row each")
    args, options = parser.parse_known_args(argv)
    home = Path(os.environ.get("JMETER_HOME", DEFAULT_HOME))
    try:
        return run(Path(args.plan), Path(args.results), options, home)
    except Unusable as e:
        say(str(e))
        return MISSING
    except KeyboardInterrupt:
        say("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
