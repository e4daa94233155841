"""
Tests for the C benchmark pieces: C{benchmarks/cload.c} (the load
generator), C{benchmarks/baselines/c_epoll_server.c} (the limit server)
and how C{benchmarks/compare.py} builds and uses them.

Both programs are compiled once per test run with C{cc -O2} (through
compare.py's own L{build_c}). Without a compiler these tests are skipped
with a loud reason, except under CI (C{CI=true}), where they fail.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import io
import json
import os
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any
from unittest import SkipTest

from twisted.trial.unittest import TestCase

from primecount.cli.bench.plan import DEFAULT_MESSAGES
from primecount.core.count import expected_reply
from primecount.core.outcomes import LINE_TOO_LONG
from primecount.testing.processes import stop_process
from primecount.testing.twistd import ServerProcess
from tests.doubles import LineHandler, ThreadedServer, serve_in_thread
from tests.helpers import recv_all, recv_lines

HERE = Path(__file__).resolve().parent
COMPARE = HERE.parents[1] / "benchmarks" / "compare.py"


def load_compare() -> ModuleType:
    """
    C{benchmarks/compare.py} as a module (C{benchmarks} is no package).
    """
    spec = importlib.util.spec_from_file_location("compare_under_test", COMPARE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


compare = load_compare()

_built: dict[str, Path] = {}


def programs(test: TestCase) -> dict[str, Path]:
    """
    C{cload} and C{c_epoll} built (once) with compare.py's L{build_c}.

    @raise SkipTest: without a C compiler, unless C{CI=true} (then the
        test fails).
    """
    if _built:
        return _built
    if compare.c_compiler() is None:
        reason = "NO C COMPILER (cc): the C benchmark tests did not run; install gcc"
        if os.environ.get("CI") == "true":
            test.fail(reason)
        raise SkipTest(reason)
    directory = Path(tempfile.mkdtemp(prefix="primecount-cbench-"))
    atexit.register(shutil.rmtree, directory, True)
    _built.update(compare.build_c(directory, ["cload", "c_epoll"]))
    return _built


class CBenchTestCase(TestCase):
    """
    Helpers: the built programs, the C server and Python servers on free
    ports of 127.0.0.1, one cload run.
    """

    def setUp(self) -> None:
        self.programs = programs(self)
        self.tmp = Path(self.mktemp())
        self.tmp.mkdir(parents=True)

    def c_server(self, *options: str) -> int:
        """
        Start C{c_epoll_server --port 0} for this test; its port.
        """
        process = subprocess.Popen(
            [str(self.programs["c_epoll"]), "--port", "0", *options],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )

        def stop() -> None:
            stop_process(process)
            assert process.stdout is not None
            process.stdout.close()

        self.addCleanup(stop)
        assert process.stdout is not None
        ready, _, _ = select.select([process.stdout], [], [], 20)
        line = process.stdout.readline().decode() if ready else ""
        if not line.startswith("listening on 127.0.0.1:"):
            self.fail(f"c_epoll_server did not start: {line!r}")
        return int(line.rsplit(":", 1)[1])

    def python_server(self, answer: Callable[[bytes], bytes | None]) -> int:
        """
        A threaded Python server answering with C{answer}; its port.
        """
        server = ThreadedServer(("127.0.0.1", 0), LineHandler)
        server.answer = answer  # type: ignore[attr-defined]
        return serve_in_thread(self, server)

    def cload(self, port: int, *options: str) -> tuple[int, dict[str, Any], str]:
        """
        Run cload against C{port}; its exit status, JSON document and stderr.
        """
        output = self.tmp / f"run-{time.monotonic_ns()}.json"
        command = [str(self.programs["cload"]), "--port", str(port), "--quiet"]
        completed = subprocess.run(
            [*command, "--json", str(output), "--timeout", "3", *options],
            capture_output=True,
            text=True,
            timeout=60,
        )
        document = json.loads(output.read_text()) if output.exists() else {}
        return completed.returncode, document, completed.stderr

    def assertClean(self, status: int, document: dict[str, Any]) -> None:
        """
        A run with correct replies only, and the fields compare.py reads.
        """
        self.assertEqual(status, 0, document)
        self.assertEqual(document["wrong"], 0)
        self.assertEqual(document["errors"]["total"], 0)
        self.assertGreater(document["ok"], 0)
        self.assertGreater(document["throughput"], 0)
        self.assertGreater(document["elapsed"], 0)
        self.assertGreater(document["latency_ms"]["p99"], 0)
        self.assertGreaterEqual(document["latency_ms"]["p99"], document["latency_ms"]["p50"])
        self.assertGreater(document["generator"]["cpu_us_per_request"], 0)
        self.assertLessEqual(
            document["generator"]["user_seconds"], document["generator"]["cpu_seconds"]
        )
        self.assertGreaterEqual(document["generator"]["resolved"], document["requests"])


class CodecTests(CBenchTestCase):
    """
    The C programs agree with L{primecount.core.count} on what a reply is.
    """

    def test_expectedRepliesMatchTheCodec(self) -> None:
        """
        cload expects, for each of its messages (the same mix as
        primecount.cli.bench), exactly what L{expected_reply} says.
        """
        printed = subprocess.run(
            [str(self.programs["cload"]), "--print-expected"], capture_output=True, timeout=30
        ).stdout
        lines = printed.split(b"\n")[:-1]
        self.assertEqual(len(lines), len(DEFAULT_MESSAGES))
        for message, line in zip(DEFAULT_MESSAGES, lines, strict=True):
            sent, reply = line.split(b"\t")
            self.assertEqual(sent, message.encode())
            self.assertEqual(reply + b"\n", expected_reply(message))

    def test_messageStrippedAsPython(self) -> None:
        """
        A C{--message} with Unicode whitespace around it is stripped as
        C{str.strip} does before the last code point is counted.
        """
        message = "\u3000ña ña\u2003\x1f"
        printed = subprocess.run(
            [str(self.programs["cload"]), "--print-expected", "--message", message],
            capture_output=True,
            timeout=30,
        ).stdout
        self.assertEqual(printed, message.encode() + b"\t" + expected_reply(message))

    def test_serverAnswersAsTheCodec(self) -> None:
        """
        c_epoll_server answers pipelined lines, good and bad, as
        L{expected_reply} does, in order.
        """
        lines = [
            b"abc2a",
            "日本語の日本".encode(),
            b"x-x-x-x-x-x-x\r",
            "\u2003 ñ ñ \u3000".encode(),
            b"",
            b"   ",
            b"\xff\xfe",
            b"\xc0\x80",
            b"\xed\xa0\x80",
            "🙂🙃🙂".encode(),
        ]
        port = self.c_server()
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"".join(line + b"\n" for line in lines))
            replies = recv_lines(sock, len(lines))
        self.assertEqual(replies, [expected_reply(line) for line in lines])

    def test_serverAnswersTheLastLineAtHalfClose(self) -> None:
        """
        An unterminated last line is answered when the client shuts its
        side, then the server closes.
        """
        port = self.c_server()
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"abacada\nmississippi")
            sock.shutdown(socket.SHUT_WR)
            data = recv_all(sock)
        self.assertEqual(data, expected_reply("abacada") + expected_reply("mississippi"))

    def test_serverRefusesAnOverlongLine(self) -> None:
        """
        A line over 16384 bytes gets C{ERR line too long} and a close.
        """
        port = self.c_server()
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            with contextlib.suppress(OSError):
                sock.sendall(b"a" * 20000)
            data = recv_all(sock)
        self.assertEqual(data, LINE_TOO_LONG.reply())

    def test_closeAfterReply(self) -> None:
        """
        With C{--close-after-reply} a connection gets one reply, then EOF,
        even when it sent more lines.
        """
        port = self.c_server("--close-after-reply")
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"abc2a\nabacada\n")
            data = recv_all(sock)
        self.assertEqual(data, expected_reply("abc2a"))


class GeneratorTests(CBenchTestCase):
    """
    cload against the C server: every mode gives correct replies only.
    """

    def test_persistent(self) -> None:
        """
        Persistent connections for about a second: correct replies, the
        JSON fields compare.py reads.
        """
        status, document, _ = self.cload(self.c_server(), "--clients", "20", "--duration", "1")
        self.assertClean(status, document)
        self.assertFalse(document["settings"]["connection_per_request"])

    def test_connectionPerRequest(self) -> None:
        """
        One connection per request for about a second, read to the LF.
        """
        status, document, _ = self.cload(
            self.c_server(), "--clients", "10", "--duration", "1", "--connection-per-request"
        )
        self.assertClean(status, document)
        self.assertTrue(document["settings"]["connection_per_request"])

    def test_noNewlineReadToEof(self) -> None:
        """
        Against a server that closes after its reply, messages sent
        without LF and replies read to EOF (C{--framing read} for short)
        are all correct.
        """
        port = self.c_server("--close-after-reply")
        for framing in (("--no-newline", "--read-to-eof"), ("--framing", "read")):
            status, document, _ = self.cload(
                port,
                *("--clients", "10", "--duration", "0.5", "--connection-per-request"),
                *framing,
            )
            self.assertClean(status, document)
            self.assertTrue(document["settings"]["no_newline"])
            self.assertTrue(document["settings"]["read_to_eof"])

    def test_requestCapPipelineThreadsIdle(self) -> None:
        """
        C{--requests} bounds the run exactly, with a pipeline, two threads,
        clients that do not divide evenly and idle connections held open.
        """
        status, document, _ = self.cload(
            self.c_server(),
            *("--clients", "7", "--pipeline", "4", "--threads", "2"),
            *("--idle", "20", "--requests", "5000"),
        )
        self.assertClean(status, document)
        self.assertEqual((document["requests"], document["ok"]), (5000, 5000))
        self.assertEqual(document["idle"]["open"], 20)

    def test_settleIsNotMeasured(self) -> None:
        """
        Replies during C{--settle} are verified but not counted: the
        generator resolved more requests than the measured ones.
        """
        status, document, _ = self.cload(self.c_server(), "--duration", "0.5", "--settle", "0.5")
        self.assertClean(status, document)
        self.assertGreater(document["generator"]["resolved"], document["requests"])
        self.assertLess(document["elapsed"], 0.9)


class FailureTests(CBenchTestCase):
    """
    Wrong or failing servers show up as wrong replies and errors, exit 3.
    """

    def test_wrongServerPersistent(self) -> None:
        """
        A server answering a wrong count gets wrong replies, no
        throughput, exit status 3.
        """
        port = self.python_server(lambda line: b"0 no\n")
        status, document, _ = self.cload(port, "--clients", "4", "--duration", "0.5")
        self.assertEqual(status, 3)
        self.assertGreater(document["wrong"], 0)
        self.assertEqual((document["ok"], document["throughput"]), (0, 0))

    def test_wrongServerPerRequest(self) -> None:
        """
        The same, one connection per request; an off-by-one count is wrong.
        """

        def off_by_one(line: bytes) -> bytes:
            count = int(expected_reply(line).split(b" ")[0])
            return f"{count + 1} no\n".encode()

        port = self.python_server(off_by_one)
        status, document, _ = self.cload(
            port, "--clients", "4", "--duration", "0.5", "--connection-per-request"
        )
        self.assertEqual(status, 3)
        self.assertGreater(document["wrong"], 0)
        self.assertEqual(document["ok"], 0)

    def test_droppingServer(self) -> None:
        """
        A server that hangs up instead of answering causes reset errors,
        exit status 3.
        """
        port = self.python_server(lambda line: None)
        status, document, _ = self.cload(port, "--clients", "2", "--requests", "50")
        self.assertEqual(status, 3)
        self.assertGreater(document["errors"]["reset"], 0)
        self.assertEqual(document["ok"], 0)

    def test_unreachableServer(self) -> None:
        """
        Nothing listening: one line on stderr, exit status 2, no JSON.
        """
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        status, document, stderr = self.cload(port, "--duration", "1")
        self.assertEqual((status, document), (2, {}))
        self.assertEqual(len(stderr.strip().splitlines()), 1)
        self.assertIn("cannot connect", stderr)

    def test_otherHostsRefused(self) -> None:
        """
        Traffic goes to 127.0.0.1 only.
        """
        status, _, stderr = self.cload(5050, "--host", "192.0.2.1")
        self.assertEqual(status, 2)
        self.assertIn("127.0.0.1 only", stderr)


class PrimecountTests(CBenchTestCase):
    """
    cload against a real primecount (twistd), both modes: no wrong reply.
    """

    def test_bothModes(self) -> None:
        """
        Persistent and connection-per-request runs of about a second each
        get correct replies only.
        """
        server = ServerProcess("--timeout", "60", cwd=str(self.tmp))
        self.addCleanup(server.stop)
        status, document, _ = self.cload(server.port, "--clients", "20", "--duration", "1")
        self.assertClean(status, document)
        status, document, _ = self.cload(
            server.port, "--clients", "10", "--duration", "1", "--connection-per-request"
        )
        self.assertClean(status, document)


def measurement(throughput: float) -> Any:
    """
    A compare.py measurement with only a throughput.
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
    compare.py builds the C programs, reports the generator's headroom and
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
        self.patch(compare, "C_SOURCES", {"cload": broken})
        with self.assertRaises(compare.CompareError) as raised:
            compare.build_c(Path(self.mktemp()).parent, ["cload"])
        self.assertIn("could not build", str(raised.exception))
        self.assertIn("nonsense", str(raised.exception))

    def test_generatorCommands(self) -> None:
        """
        cload gets the workload's options, its threads and the settle time;
        the Python generator its processes.
        """
        workload = compare.WORKLOADS["seed"]
        output = Path("out.json")
        c = compare.Generator("c", Path("/x/cload"), 1.5).command(5, workload, 2.0, 3, output)
        self.assertEqual(c[:5], ["/x/cload", "--threads", "3", "--settle", "1.5"])
        self.assertEqual(c[-3:], ["--clients", "10", "--connection-per-request"])
        python = compare.Generator("python").command(5, workload, 2.0, 3, output)
        self.assertEqual(python[1:5], ["-m", "primecount.cli.bench", "--processes", "3"])

    def test_headroom(self) -> None:
        """
        The headroom is c_epoll's throughput over what a target asks of
        primecount (bound x the baseline's): PASS from 1.5x.
        """
        results = {
            "seed": {
                "seed_threadpool": compare.Cell([measurement(5000)]),
                "c_epoll": compare.Cell([measurement(14000)]),
            },
            "persistent": {
                "asyncio_server": compare.Cell([measurement(100_000)]),
                "c_epoll": compare.Cell([measurement(300_000)]),
            },
        }
        checks = compare.headroom(results)
        self.assertEqual([round(ratio, 2) for _t, ratio, _ok in checks], [1.4, 4.0])
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
