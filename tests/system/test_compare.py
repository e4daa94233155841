# -*- test-case-name: tests.system.test_compare -*-
"""
Tests for L{benchmarks.compare} and what it takes from
L{benchmarks.harness}: it builds the C programs, reads its targets from
C{benchmarks/targets.toml}, reports the generator's headroom and its cost
per request, and says in one line why it cannot run.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from twisted.trial.unittest import TestCase

from benchmarks import compare, harness
from tests.system.test_cload import programs


def measurement(throughput: float) -> Any:
    """
    A measurement with only a throughput.
    """
    return compare.Measurement(throughput, 1.0, 2.0, 0, 0, 0.5, 0.5, 0.0)


@contextlib.contextmanager
def captured() -> Iterator[tuple[io.StringIO, io.StringIO]]:
    """
    Collect what is printed on stdout and stderr meanwhile.
    """
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        yield out, err


class CompareTests(TestCase):
    """
    compare builds the C programs, reports the generator's headroom and
    its cost per request.
    """

    def test_noCompilerIsOneLine(self) -> None:
        """
        Without a compiler the C generator cannot run: one line, exit 2.
        """
        self.patch(os, "environ", {**os.environ, "CC": "/nonexistent/cc"})
        with captured() as (_out, err):
            status = compare.main(
                ["--servers", "c_epoll", "--workload", "persistent", "--results", self.mktemp()]
            )
        self.assertEqual(status, 2)
        lines = err.getvalue().strip().splitlines()
        self.assertEqual(len(lines), 1)
        self.assertIn("no C compiler", lines[0])
        self.assertIn("--generator python", lines[0])

    def test_buildErrorIsOneLine(self) -> None:
        """
        A source that does not compile: the compiler's first error line.
        """
        programs(self)
        broken = Path(self.mktemp() + ".c")
        broken.write_text("int main(void) { return nonsense; }\n")
        self.patch(harness, "C_SOURCES", {"cload": broken})
        with self.assertRaises(harness.BenchmarkError) as raised:
            harness.build_c(Path(self.mktemp()).parent, ["cload"])
        self.assertIn("could not build", str(raised.exception))
        self.assertIn("nonsense", str(raised.exception))

    def test_generatorCommands(self) -> None:
        """
        cload gets the workload's options, its threads and the settle time;
        the Python generator its processes.
        """
        options = compare.WORKLOADS["original"].options
        output = Path("out.json")
        c = harness.Generator("c", Path("/x/cload"), 1.5).command(5, options, 2.0, 3, output)
        self.assertEqual(c[:5], ["/x/cload", "--threads", "3", "--settle", "1.5"])
        self.assertEqual(c[-3:], ["--clients", "10", "--connection-per-request"])
        python = harness.Generator("python").command(5, options, 2.0, 3, output)
        self.assertEqual(python[1:5], ["-m", "primecount.cli.bench", "--processes", "3"])

    def test_headroom(self) -> None:
        """
        The headroom is c_epoll's throughput over what a target asks of
        primecount (bound x the baseline's): PASS from 1.5x.
        """
        results = {
            "original": {
                "original_threadpool": compare.Cell([measurement(5000)]),
                "c_epoll": compare.Cell([measurement(14000)]),
            },
            "persistent": {
                "asyncio_server": compare.Cell([measurement(100_000)]),
                "c_epoll": compare.Cell([measurement(300_000)]),
            },
        }
        checks = compare.headroom(results, *compare.load_targets())
        self.assertEqual([round(ratio, 2) for _t, ratio, _ok in checks], [1.4, 3.0])
        self.assertEqual([ok for _t, _r, ok in checks], [False, True])
        self.assertIn("generator headroom: c_epoll 14,000 req/s = 1.40x", checks[0][0])

    def test_runAgainstTheLimitServer(self) -> None:
        """
        A short run against c_epoll alone: built, measured, with the
        generator's CPU per request in the JSON results.
        """
        programs(self)
        results = Path(self.mktemp())
        with captured() as (out, err):
            status = compare.main(
                [
                    *("--servers", "c_epoll", "--workload", "persistent"),
                    *("--rounds", "1", "--duration", "0.5", "--settle", "0.2"),
                    *("--placement", "unpinned", "--results", str(results)),
                ]
            )
        self.assertEqual(status, 0, err.getvalue())
        self.assertIn("generator µs/request", out.getvalue())
        (document,) = [json.loads(p.read_text()) for p in results.glob("*.json")]
        (run,) = document["results"]["unpinned"]["persistent"]["c_epoll"]
        self.assertGreater(run["throughput"], 0)
        self.assertEqual(run["wrong"], 0)
        self.assertGreater(run["generator_us"], 0)

    def test_placements(self) -> None:
        """
        Both placements by default, pinned first; C{--no-pin} is unpinned
        alone.
        """
        self.assertEqual(compare.arguments([]).placements, ["pinned", "unpinned"])
        self.assertEqual(compare.arguments(["--no-pin"]).placements, ["unpinned"])
        self.assertEqual(compare.arguments(["--placement", "pinned"]).placements, ["pinned"])

    def test_pythonGeneratorWithoutCompiler(self) -> None:
        """
        Asked for, the Python generator runs without a compiler, with a
        warning, and c_epoll is left out with another.
        """
        self.patch(os, "environ", {**os.environ, "CC": "/nonexistent/cc"})
        args = compare.arguments(["--generator", "python"])
        with captured() as (_out, err):
            generator, built, names = compare.c_setup(
                args, ["primecount", "c_epoll"], Path(self.mktemp())
            )
        self.assertEqual((generator.program, built, names), (None, {}, ["primecount"]))
        self.assertIn("warning: the Python generator", err.getvalue())
        self.assertIn("c_epoll left out", err.getvalue())


class TargetsTests(TestCase):
    """
    The targets live in C{benchmarks/targets.toml}, beside C{RESULTS.md}:
    compare reads them and prints PASS or FAIL against them.
    """

    def test_shippedTargets(self) -> None:
        """
        The shipped file holds the issue's goals, each on workloads compare
        knows, and the headroom the generator needs.
        """
        targets, needed = compare.load_targets()
        self.assertEqual(needed, 1.5)
        goals = {(t.server, t.reference_server, t.workload, t.bound) for t in targets}
        self.assertIn(("primecount", "original_threadpool", "original", 2.0), goals)
        self.assertIn(("primecount", "asyncio_server", "persistent", 1.0), goals)
        self.assertIn(("primecount", "asyncio_server", "original", 1.0), goals)
        self.assertIn(("primecount", "nojournal", "persistent", 0.9), goals)
        self.assertIn(("workers2", "primecount", "persistent", 1.0), goals)
        for target in targets:
            self.assertIn(target.workload, compare.WORKLOADS)
            self.assertIn(target.reference_workload, compare.WORKLOADS)

    def test_passAndFailFromTheFile(self) -> None:
        """
        A target is checked as the file says: a bound met is PASS, one
        missed is FAIL, and a target whose servers were not measured is
        left out.
        """
        path = Path(self.mktemp())
        path.write_text(
            'headroom = 2.0\n[[target]]\nwhat = "easy"\nserver = "primecount"\n'
            'reference_server = "asyncio_server"\nworkload = "persistent"\nbound = 0.5\n'
            '[[target]]\nwhat = "hard"\nserver = "primecount"\n'
            'reference_server = "asyncio_server"\nworkload = "persistent"\nbound = 1.5\n'
            '[[target]]\nwhat = "absent"\nserver = "workers2"\n'
            'reference_server = "primecount"\nworkload = "persistent"\nbound = 1.0\n'
        )
        results = {
            "persistent": {
                "primecount": compare.Cell([measurement(80_000)]),
                "asyncio_server": compare.Cell([measurement(100_000)]),
            }
        }
        table, outcomes = compare.markdown(results, "#### test", *compare.load_targets(path))
        self.assertIn(
            "- PASS: primecount >= 0.5x asyncio_server on persistent (easy): 0.80x", table
        )
        self.assertIn(
            "- FAIL: primecount >= 1.5x asyncio_server on persistent (hard): 0.80x", table
        )
        self.assertNotIn("absent", table)
        self.assertEqual([ok for _t, _r, ok in outcomes], [True, False])

    def test_malformedTargetIsOneLine(self) -> None:
        """
        A target without its bound, or on an unknown workload, stops
        compare with one line naming the file and the target.
        """
        path = Path(self.mktemp())
        path.write_text('[[target]]\nwhat = "x"\nserver = "primecount"\nworkload = "original"\n')
        with self.assertRaises(harness.BenchmarkError) as raised:
            compare.load_targets(path)
        self.assertEqual(str(raised.exception), f"{path}: target 1 has no reference_server")
        path.write_text(
            '[[target]]\nwhat = "x"\nserver = "primecount"\nreference_server = "c_epoll"\n'
            'workload = "sideways"\nbound = 1\n'
        )
        with captured() as (_out, err):
            status = compare.main(["--targets", str(path), "--results", self.mktemp()])
        self.assertEqual(status, 2)
        self.assertEqual(err.getvalue(), f"compare: {path}: target 1: unknown workload sideways\n")


class NamesTests(TestCase):
    """
    The original server is "original", held connections are "held"; the
    former names still work, with a note.
    """

    def test_formerNamesAccepted(self) -> None:
        """
        C{seed}, C{seed_read}, C{idle} and C{seed_threadpool} are taken for
        their new names, each with a note on stderr.
        """
        with captured() as (_out, err):
            args = compare.arguments(
                ["--workload", "seed,seed_read,idle", "--servers", "primecount,seed_threadpool"]
            )
        self.assertEqual(args.workloads, ["original", "original_read", "held"])
        self.assertEqual(args.servers, ["primecount", "original_threadpool"])
        self.assertIn("compare: note: workload seed is now called original", err.getvalue())
        self.assertIn(
            "compare: note: server seed_threadpool is now called original_threadpool",
            err.getvalue(),
        )

    def test_heldWorkloadHoldsConnections(self) -> None:
        """
        The C{held} workload asks the generator for 1000 held connections.
        """
        self.assertEqual(compare.WORKLOADS["held"].options, ("--clients", "10", "--hold", "1000"))

    def test_markdownBetweenMarkerLines(self) -> None:
        """
        C{--markdown} replaces only what lies between the marker lines:
        prose that names the markers inside a line (as C{RESULTS.md}'s
        method section does) is left as it is; a file without marker lines
        is replaced whole.
        """
        path = Path(self.mktemp())
        prose = (
            "# Results\n"
            f"compare writes the table (between the `{compare.BEGIN}`\n"
            f"and `{compare.END}` lines) here.\n"
            "\n"
        )
        path.write_text(f"{prose}{compare.BEGIN}\nold table\n{compare.END}\nafter\n")
        compare.write_markdown(path, "| new | table |\n")
        self.assertEqual(
            path.read_text(), f"{prose}{compare.BEGIN}\n| new | table |\n{compare.END}\nafter\n"
        )
        compare.write_markdown(path, "| newer |")
        self.assertEqual(
            path.read_text(), f"{prose}{compare.BEGIN}\n| newer |\n{compare.END}\nafter\n"
        )
        plain = Path(self.mktemp())
        plain.write_text(f"a file that names {compare.BEGIN} and {compare.END} in prose\n")
        compare.write_markdown(plain, "| whole |\n")
        self.assertEqual(plain.read_text(), "| whole |\n")

    def test_variantCodeAlone(self) -> None:
        """
        C{--variant-code NAME=DIR} without a C{--variant NAME} runs that
        checkout with primecount's defaults; a server's name is refused.
        """
        checkout = Path(compare.__file__).resolve().parents[1]
        with captured():
            args = compare.arguments(["--variant-code", f"before={checkout}"])
        self.assertEqual(args.variants, [("before", [])])
        self.assertEqual(args.variant_code, [("before", str(checkout))])
        with captured():
            args = compare.arguments(
                ["--variant", "before=--journal none", "--variant-code", f"before={checkout}"]
            )
        self.assertEqual(args.variants, [("before", ["--journal", "none"])])
        with captured() as (_out, err), self.assertRaises(SystemExit):
            compare.arguments(["--variant-code", f"primecount={checkout}"])
        self.assertIn("not the server primecount", err.getvalue())

    def test_postgresqlPatroni(self) -> None:
        """
        C{--postgresql patroni} journals to a database on a throwaway
        Patroni cluster with PostgreSQL's own settings (fsync on), through
        a URL that finds the primary; C{--postgresql URL} uses the URL.
        """
        made: list[object] = []

        class Cluster:
            def create_database(self) -> str:
                return "primecount"

            def url(self, **kwargs: str) -> str:
                made.append(kwargs)
                return "postgresql://primecount@127.0.0.1:1,127.0.0.1:2/primecount"

        @contextlib.contextmanager
        def cluster(parameters: object = None) -> Iterator[Cluster]:
            made.append(parameters)
            yield Cluster()

        self.patch(compare, "patroni_cluster", cluster)
        with contextlib.ExitStack() as stack:
            url = compare.postgresql_url("patroni", stack)
            self.assertEqual(url, "postgresql://primecount@127.0.0.1:1,127.0.0.1:2/primecount")
            self.assertEqual(
                made,
                [
                    {},
                    {
                        "user": "primecount",
                        "database": "primecount",
                        "query": "target_session_attrs=read-write",
                    },
                ],
            )
            self.assertEqual(
                compare.postgresql_url("postgresql://x@h/db", stack), "postgresql://x@h/db"
            )

    def test_postgresqlVariants(self) -> None:
        """
        C{--postgresql} reserves the names of the two variants it adds, and
        C{--variant-code} may name them.
        """
        checkout = Path(compare.__file__).resolve().parents[1]
        with captured():
            args = compare.arguments(
                [
                    *("--postgresql", "postgresql://x@127.0.0.1/db"),
                    *("--variant-code", f"pg_process={checkout}"),
                ]
            )
        self.assertEqual(args.postgresql, "postgresql://x@127.0.0.1/db")
        with captured() as (_out, err), self.assertRaises(SystemExit):
            compare.arguments(["--variant", "pg_standby=--workers 2"])
        self.assertIn("with a new name", err.getvalue())
