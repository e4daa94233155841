# -*- test-case-name: tests.system.test_cload -*-
"""
Tests for the C benchmark programs: C{benchmarks/cload.c} (the load
generator) and C{benchmarks/baselines/c_epoll_server.c} (the limit server).
How L{benchmarks.compare} uses them is in L{tests.system.test_compare}.

Both programs are compiled once per test run with C{cc -O2} (through
L{benchmarks.harness.build_c}, as the benchmarks build them). Without a
compiler these tests are skipped with a loud reason, except under CI
(C{CI=true}), where they fail.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import select
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from unittest import SkipTest

from twisted.trial.unittest import TestCase

from benchmarks import harness
from primecount.cli.bench.plan import DEFAULT_MESSAGES
from primecount.core.count import expected_reply
from primecount.core.outcomes import LINE_TOO_LONG
from primecount.testing.processes import stop_process
from primecount.testing.twistd import ServerProcess
from tests.doubles import LineHandler, ThreadedServer, serve_in_thread
from tests.helpers import recv_all, recv_lines

_built: dict[str, Path] = {}


def programs(test: TestCase) -> dict[str, Path]:
    """
    C{cload} and C{c_epoll} built (once) with L{harness.build_c}.

    @raise SkipTest: without a C compiler, unless C{CI=true} (then the
        test fails).
    """
    if _built:
        return _built
    if harness.c_compiler() is None:
        reason = "NO C COMPILER (cc): the C benchmark tests did not run; install gcc"
        if os.environ.get("CI") == "true":
            test.fail(reason)
        raise SkipTest(reason)
    directory = Path(tempfile.mkdtemp(prefix="primecount-cbench-"))
    atexit.register(shutil.rmtree, directory, True)
    _built.update(harness.build_c(directory, ["cload", "c_epoll"]))
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
        A run with correct replies only, and the fields compare reads.
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
        JSON fields compare reads.
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

    def test_requestCapPipelineThreadsHeld(self) -> None:
        """
        C{--requests} bounds the run exactly, with a pipeline, two threads,
        clients that do not divide evenly and held connections (C{--hold}).
        """
        status, document, _ = self.cload(
            self.c_server(),
            *("--clients", "7", "--pipeline", "4", "--threads", "2"),
            *("--hold", "20", "--requests", "5000"),
        )
        self.assertClean(status, document)
        self.assertEqual((document["requests"], document["ok"]), (5000, 5000))
        self.assertEqual(document["held"]["open"], 20)
        self.assertEqual(document["settings"]["hold"], 20)

    def test_idleIsTheFormerNameOfHold(self) -> None:
        """
        C{--idle N}, the former name of C{--hold N}, still holds N
        connections.
        """
        status, document, _ = self.cload(self.c_server(), "--idle", "5", "--requests", "100")
        self.assertClean(status, document)
        self.assertEqual(document["held"]["open"], 5)

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
