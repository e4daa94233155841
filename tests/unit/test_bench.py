"""
Tests for L{primecount.cli.bench}, quick ones: reply framing, the range
protocol, the statistics and the command line, each against a small
threaded server on 127.0.0.1 port 0 and the generator in this process.
Timed runs, baselines and Ctrl-C are in L{tests.system.test_bench_runs}.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import socket
import socketserver
import sys
import tempfile

from twisted.trial.unittest import TestCase

from primecount.cli import bench
from primecount.cli.bench import report
from primecount.cli.bench.load import measure
from primecount.cli.bench.plan import Plan
from primecount.cli.bench.stats import (
    BIN_EDGES,
    Result,
    Second,
    Tally,
    bin_percentile_ms,
    percentiles_ms,
)
from primecount.core import rangecodec
from primecount.core.count import expected_reply
from primecount.core.primes import primes_between
from primecount.testing.processes import missing
from tests.doubles import Answer, LineHandler, ThreadedServer, serve_in_thread


def correct(line: bytes) -> bytes:
    """
    The right answer.
    """
    return expected_reply(line)


def wrong(line: bytes) -> bytes:
    """
    A well-formed answer that is never right: no message has count 0.
    """
    return b"0 no\n"


def drop(line: bytes) -> None:
    """
    Hang up instead of answering.
    """
    return None


class _OriginalHandler(socketserver.BaseRequestHandler):
    """
    The original server's way: one C{recv(1024)} is the message; write the
    server's C{answer} for it, close.
    """

    def handle(self) -> None:
        answer: Answer = self.server.answer  # type: ignore[attr-defined]
        self.request.settimeout(5)
        try:
            data = self.request.recv(1024)
            reply = answer(data)
            if reply is not None:
                self.request.sendall(reply)
        except OSError:
            return


def no_newline(data: bytes) -> bytes:
    """
    The right answer, to a message sent without a newline only.
    """
    return b"ERR newline\n" if b"\n" in data else expected_reply(data)


def then_more(data: bytes) -> bytes:
    """
    The right answer, then a second line before closing.
    """
    return expected_reply(data) + b"1 no\n"


class BenchTestCase(TestCase):
    """
    Helpers: a server on a free port that is shut down after the test.
    """

    def serve(self, answer: Answer, handler: type = LineHandler) -> int:
        server = ThreadedServer(("127.0.0.1", 0), handler)
        server.answer = answer  # type: ignore[attr-defined]
        return self.start(server)

    def start(self, server: socketserver.TCPServer) -> int:
        """
        Serve C{server} in a thread until the test ends; return its port.
        """
        return serve_in_thread(self, server)

    def run_bench(self, *argv: str) -> tuple[int, str, str]:
        """
        Run C{primecount bench} in this process; (status, stdout, stderr).
        """
        parser = argparse.ArgumentParser(prog="primecount bench")
        bench.add_arguments(parser)
        args = parser.parse_args(list(argv))
        out, err = io.StringIO(), io.StringIO()
        self.patch(sys, "stdout", out)
        self.patch(sys, "stderr", err)
        status = bench.run(args)
        return status, out.getvalue(), err.getvalue()

    def plan(self, port: int, **kwargs: object) -> Plan:
        settings: dict[str, object] = {
            "clients": 4,
            "duration": None,
            "requests": 200,
            "timeout": 2.0,
        }
        settings.update(kwargs)
        return Plan("127.0.0.1", port, **settings)  # type: ignore[arg-type]


class _RangeHandler(socketserver.BaseRequestHandler):
    """
    A range-protocol server: answers each C{!ii} request with N and the
    primes (without the last one when the server's C{short} is set), then
    reads the client's sum and keeps it in the server's C{sums}.
    """

    def handle(self) -> None:
        server = self.server
        self.request.settimeout(5)
        try:
            while True:
                request = self._read(rangecodec.REQUEST_STRUCT.size)
                if request is None:
                    return
                a, b = rangecodec.decode_request(request)
                primes = primes_between(a, b)
                if server.short:  # type: ignore[attr-defined]
                    primes = primes[:-1]
                self.request.sendall(
                    rangecodec.encode_count(len(primes)) + rangecodec.encode_primes(primes)
                )
                total = self._read(rangecodec.SUM_STRUCT.size)
                if total is None:
                    return
                server.sums.append(  # type: ignore[attr-defined]
                    (rangecodec.decode_sum(total), rangecodec.prime_sum(primes))
                )
        except OSError:
            return

    def _read(self, size: int) -> bytes | None:
        data = b""
        while len(data) < size:
            chunk = self.request.recv(size - len(data))
            if not chunk:
                return None
            data += chunk
        return data


class ReadFramingTests(BenchTestCase):
    """
    C{framing="read"}: the original server's clients: no newline, one
    connection per request, the reply is all that arrives until the close.
    """

    def test_messagesWithoutNewlineAllOk(self) -> None:
        port = self.serve(no_newline, _OriginalHandler)
        result = measure(self.plan(port, per_request=True, framing="read", requests=60))
        self.assertEqual((result.ok, result.wrong, result.error_count), (60, 0, 0))

    def test_moreThanOneReplyBeforeTheCloseIsWrong(self) -> None:
        port = self.serve(then_more, _OriginalHandler)
        result = measure(self.plan(port, per_request=True, framing="read", requests=20))
        self.assertEqual((result.ok, result.wrong), (0, 20))

    def test_closeWithoutReplyIsAnError(self) -> None:
        port = self.serve(drop, _OriginalHandler)
        result = measure(self.plan(port, per_request=True, framing="read", requests=20))
        self.assertEqual((result.ok, result.errors["reset"]), (0, 20))

    def test_needsOneConnectionPerRequest(self) -> None:
        self.assertRaises(ValueError, Plan, "127.0.0.1", 1, framing="read")
        self.assertRaises(ValueError, Plan, "127.0.0.1", 1, per_request=True, framing="lines")


class RangeProtocolTests(BenchTestCase):
    """
    The range protocol: replies checked byte for byte, sums sent back.
    """

    def serve_range(self, short: bool) -> tuple[int, list[tuple[int, int]]]:
        server = ThreadedServer(("127.0.0.1", 0), _RangeHandler)
        server.short = short  # type: ignore[attr-defined]
        server.sums = []  # type: ignore[attr-defined]
        return self.start(server), server.sums  # type: ignore[attr-defined]

    def test_correctRangeServer(self) -> None:
        """
        Correct replies count as correct, and the client sends back the sum
        of the primes it received.
        """
        port, sums = self.serve_range(short=False)
        ranges = ((1, 1000), (-5, 2), (10, 1), (2_000_000, 2_001_000))
        result = measure(self.plan(port, protocol="range", ranges=ranges, requests=40))
        self.assertEqual((result.ok, result.wrong, result.error_count), (40, 0, 0))
        self.assertTrue(sums)
        self.assertEqual([got for got, _ in sums], [want for _, want in sums])

    def test_wrongRangeServer(self) -> None:
        """
        A reply missing a prime is wrong; the client still sends the sum of
        what it received, so the server can tell.
        """
        port, sums = self.serve_range(short=True)
        result = measure(self.plan(port, protocol="range", ranges=((1, 100),), requests=10))
        self.assertEqual((result.ok, result.wrong), (0, 10))
        self.assertEqual(sums[0], (1060 - 97, 1060 - 97))


class StatisticsTests(TestCase):
    """
    Percentiles, bins and merging on known inputs.
    """

    def assertClose(self, got: float, want: float, tolerance: float, what: str) -> None:
        """
        C{got} is within C{tolerance} of C{want}.
        """
        self.assertTrue(
            abs(got - want) <= tolerance, f"{what}: {got} not within {tolerance} of {want}"
        )

    def test_percentilesOfKnownLatencies(self) -> None:
        """
        Latencies of 1, 2, ..., 1000 ms give p50 = 500 ms, p90 = 900 ms,
        p99 = 990 ms, p99.9 = 999 ms and max = 1000 ms, within the
        histogram's three significant digits.
        """
        recorder = Tally(0.0)
        for ms in range(1, 1001):
            recorder.reply(ms / 1000.0, True)
        recorder.flush()
        got = percentiles_ms(recorder.result.histogram)
        for key, want in (
            ("p50", 500),
            ("p90", 900),
            ("p99", 990),
            ("p99.9", 999),
            ("max", 1000),
        ):
            self.assertClose(got[key], want, want * 0.001, key)
        self.assertClose(got["mean"], 500.5, 0.5, "mean")

    def test_emptyHistogram(self) -> None:
        """
        No replies: every percentile is zero, not an exception.
        """
        self.assertEqual(set(percentiles_ms(Result().histogram).values()), {0.0})

    def test_binPercentileWithinBinWidth(self) -> None:
        """
        The timeline's bin percentiles are within one bin (about 10 %) above
        the true value.
        """
        recorder = Tally(0.0)
        for ms in range(1, 101):
            recorder.reply(ms / 1000.0, True)
        recorder.flush()
        bins = recorder.result.timeline[0].bins
        p50 = bin_percentile_ms(bins, 50.0)
        self.assertGreaterEqual(p50, 50.0)
        self.assertLessEqual(p50, 50.0 * (BIN_EDGES[1] / BIN_EDGES[0]))

    def test_countsAndTimeline(self) -> None:
        """
        Correct, wrong and failed requests are counted apart, per second.
        """
        recorder = Tally(0.0)
        recorder.reply(0.001, True)
        recorder.reply(0.001, False)
        recorder.error("reset", 3)
        recorder.flush()
        recorder.reply(0.002, True)
        recorder.flush()
        result = recorder.result
        self.assertEqual((result.ok, result.wrong, result.error_count), (2, 1, 3))
        self.assertEqual(result.requests, 6)
        self.assertEqual([s.ok for s in result.timeline], [1, 1])
        self.assertEqual([s.errors for s in result.timeline], [3, 0])

    def test_mergeAddsProcesses(self) -> None:
        """
        Merged results add counts, histograms and timelines and keep the
        longest elapsed time; the wire form survives the trip.
        """
        parts = []
        for base in (1, 1001):
            recorder = Tally(0.0)
            for ms in range(base, base + 1000):
                recorder.reply(ms / 1000.0, True)
            recorder.flush()
            recorder.result.elapsed = base / 1000.0
            parts.append(Result.from_wire(recorder.result.to_wire()))
        merged = Result()
        for part in parts:
            merged.merge(part)
        self.assertEqual(merged.ok, 2000)
        self.assertEqual(merged.elapsed, 1.001)
        self.assertEqual(merged.timeline[0].ok, 2000)
        got = percentiles_ms(merged.histogram)
        self.assertClose(got["p50"], 1000, 1.0, "p50")
        self.assertClose(got["max"], 2000, 2.0, "max")


class CommandLineTests(BenchTestCase):
    """
    C{primecount bench} as a user runs it.
    """

    def test_unreachableServerOneLine(self) -> None:
        """
        An unreachable server is one line on stderr and exit status 2.
        """
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        status, out, err = self.run_bench("--port", str(port), "--requests", "5")
        self.assertEqual(status, 2)
        self.assertEqual(out, "")
        self.assertEqual(len(err.splitlines()), 1)
        self.assertIn("cannot connect", err)

    def test_summaryAndJson(self) -> None:
        """
        A run prints a summary and writes the whole result with its
        timeline as JSON; a clean run exits 0.
        """
        port = self.serve(correct)
        directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, directory, True)
        path = os.path.join(directory, "run.json")
        status, out, _err = self.run_bench("--port", str(port), "--requests", "100", "--json", path)
        self.assertEqual(status, 0)
        self.assertIn("throughput", out)
        self.assertIn("p99.9", out)
        with open(path) as f:
            document = json.load(f)
        self.assertEqual(document["requests"], 100)
        self.assertEqual(document["ok"], 100)
        self.assertEqual(document["settings"]["requests"], 100)
        self.assertIsInstance(document["timeline"], list)
        self.assertIn("p99.9", document["latency_ms"])

    def test_wrongRepliesExitNonZero(self) -> None:
        """
        Wrong replies are reported and make the exit status 3.
        """
        port = self.serve(wrong)
        status, out, _err = self.run_bench(
            "--port", str(port), "--requests", "20", "--message", "abc2a"
        )
        self.assertEqual(status, 3)
        self.assertIn("WRONG REPLIES: 20", out)

    def test_contradictoryOptions(self) -> None:
        """
        Options that contradict each other are one line and status 2.
        """
        port = self.serve(correct)
        status, _out, err = self.run_bench(
            "--port", str(port), "--connection-per-request", "--pipeline", "4"
        )
        self.assertEqual(status, 2)
        self.assertEqual(len(err.splitlines()), 1)

    def test_holdAndItsFormerNameIdle(self) -> None:
        """
        C{--hold N} holds N silent connections open during the run, shown in
        the summary; C{--idle N}, its former name, does the same.
        """
        port = self.serve(correct)
        for option in ("--hold", "--idle"):
            status, out, _err = self.run_bench("--port", str(port), "--requests", "20", option, "3")
            self.assertEqual(status, 0, out)
            self.assertIn("3 held", out.splitlines()[0])
            self.assertIn("held conns   open 3, reopened 0, failed 0", out)

    def test_readFraming(self) -> None:
        """
        C{--framing read} drives one connection per request without a
        newline; it cannot pipeline.
        """
        port = self.serve(no_newline, _OriginalHandler)
        status, out, _err = self.run_bench(
            "--port", str(port), "--requests", "30", "--framing", "read"
        )
        self.assertEqual(status, 0, out)
        self.assertIn("read framing", out)
        status, _out, err = self.run_bench(
            "--port", str(port), "--framing", "read", "--pipeline", "4"
        )
        self.assertEqual(status, 2)
        self.assertEqual(len(err.splitlines()), 1)


def failed_run(ok: int = 0, wrong: int = 0, sample: bytes | None = None, **errors: int) -> Result:
    """
    A result with these counts (and one second of timeline).
    """
    result = Result(elapsed=1.0, ok=ok, wrong=wrong, wrong_sample=sample)
    result.errors.update(errors)
    return result


class AdoptionTests(BenchTestCase):
    """
    What a newcomer meets: the range protocol's port, the defaults in
    C{--help}, a line saying why a run failed, and the plot.
    """

    def args(self, *argv: str) -> argparse.Namespace:
        parser = argparse.ArgumentParser(prog="primecount bench")
        bench.add_arguments(parser)
        return parser.parse_args(list(argv))

    def test_rangeProtocolAimsAtTheRangePort(self) -> None:
        """
        C{--protocol range} without C{--port} used to aim at 5050, the count
        port: every request timed out.
        """
        asked: list[int] = []
        self.patch(bench, "_resolve", lambda host, port, *rest: asked.append(port) or host)
        self.assertEqual(bench.plan_from(self.args("--protocol", "range")).port, 5051)
        self.assertEqual(bench.plan_from(self.args()).port, 5050)
        self.assertEqual(bench.plan_from(self.args("--protocol", "range", "--port", "7")).port, 7)
        self.assertEqual(asked, [5051, 5050, 7])

    def test_helpShowsEveryDefault(self) -> None:
        """
        Every option's help says its default: the value, or what happens
        without it.
        """
        parser = argparse.ArgumentParser(prog="primecount bench")
        bench.add_arguments(parser)
        for action in parser._actions:
            if not action.option_strings or action.dest == "help":
                continue
            text = (action.help or "") % {"default": action.default}
            self.assertIn("default", text, action.dest)
            default = action.default
            if isinstance(default, tuple):
                default = ":".join(map(str, default))
            if default not in (None, False):
                self.assertIn(f"{default:g}" if isinstance(default, float) else str(default), text)

    def test_diagnosisNamesTheLikelyCause(self) -> None:
        plan = self.plan(5050, protocol="range")
        self.assertEqual(
            report.diagnosis(failed_run(timeout=2), plan),
            "every range request got no reply within --timeout 2 s: is 127.0.0.1:5050 the "
            "server's --range-port? (a count port waits for a newline the range protocol "
            "never sends)",
        )
        plan = self.plan(5051)
        self.assertEqual(
            report.diagnosis(failed_run(wrong=21, sample=b"\x00\x00\x00\x19"), plan),
            "every reply was wrong (the first: b'\\x00\\x00\\x00\\x19'): is 127.0.0.1:5051 a "
            "count port? (--protocol range for the server's --range-port)",
        )
        self.assertEqual(
            report.diagnosis(failed_run(ok=290, reset=580), self.plan(5050)),
            "the server closed the connection after each reply (580 resets, 290 correct "
            "replies): is it running with --framing read or --close-after-reply? Then use "
            "--framing read or --connection-per-request",
        )
        read = self.plan(5050, per_request=True, framing="read", timeout=5.0)
        self.assertIn(
            "is the server running with --framing read?",
            report.diagnosis(failed_run(timeout=10), read) or "",
        )
        self.assertIn(
            "the server refused the requests; its log says why",
            report.diagnosis(failed_run(wrong=3, sample=b"ERR journal unavailable"), plan) or "",
        )
        # A run that mostly worked needs no explanation.
        self.assertIsNone(report.diagnosis(failed_run(ok=100, timeout=3), plan))
        self.assertIsNone(report.diagnosis(failed_run(ok=100), plan))

    def test_everyRequestFailedSaysWhyInOneLine(self) -> None:
        """
        A range run against a count port: each request waits for a newline
        that never comes. Before, the summary said C{timeout 2} and nothing
        more.
        """
        port = self.serve(correct)
        status, out, err = self.run_bench(
            "--protocol", "range", "--port", str(port), "--requests", "2",
            "--clients", "2", "--timeout", "0.5", "--quiet",
        )  # fmt: skip
        self.assertEqual(status, 3)
        self.assertEqual(out, "")
        self.assertEqual(
            err.splitlines(),
            [
                "primecount bench: every range request got no reply within --timeout 0.5 s: "
                f"is 127.0.0.1:{port} the server's --range-port? (a count port waits for a "
                "newline the range protocol never sends)"
            ],
        )

    def test_wrongReplyIsKept(self) -> None:
        port = self.serve(wrong)
        result = measure(self.plan(port, requests=5))
        self.assertEqual((result.wrong, result.wrong_sample), (5, b"0 no"))

    def test_summarySaysWhyARunTookLonger(self) -> None:
        plan = self.plan(5050, duration=2.0, requests=None, timeout=5.0)
        lines = report.summary_lines(failed_run(timeout=2), "title", plan)
        self.assertIn(
            "elapsed      1.00 s",
            lines,
        )
        late = failed_run(timeout=2)
        late.elapsed = 5.0
        self.assertIn(
            "elapsed      5.00 s (2 s of requests, then up to --timeout 5 s for the replies "
            "still due)",
            report.summary_lines(late, "title", plan),
        )

    def test_countsInGoodEnglish(self) -> None:
        plan = self.plan(5050, clients=1, requests=1)
        self.assertIn(": 1 client, ", bench.describe(plan, 1))
        self.assertTrue(bench.describe(plan, 1).endswith(", 1 request, 1 process"))
        self.assertIn(
            "WRONG REPLIES: 1 reply differs from the expected ones",
            report.summary_lines(failed_run(wrong=1), "title"),
        )


class PlotTests(TestCase):
    """
    L{report.draw}: headroom above the peak, legends beside the plots, and
    failed requests on an axis of their own. Without matplotlib (the
    C{test} extra brings it) they skip, and fail under C{CI=true}.
    """

    def setUp(self) -> None:
        try:
            report.check_plot()
        except report.PlotUnavailable as e:
            raise missing(str(e)) from None
        import matplotlib

        matplotlib.use("Agg")

    def result(self) -> Result:
        """
        Three seconds at a flat 2,000 replies a second, two requests
        failing in the drain after them (a last second of 0.1 s).
        """
        result = Result(elapsed=3.1)
        for n in range(4):
            second = Second(ok=2000 if n < 3 else 0, errors=2 if n == 3 else 0)
            second.bins[10] = second.ok
            result.timeline.append(second)
        result.ok, result.errors["timeout"] = 6000, 2
        return result

    def test_figure(self) -> None:
        import matplotlib.pyplot as plt

        figure = report.draw(self.result(), "a run")
        self.addCleanup(plt.close, figure)
        figure.canvas.draw()
        top, bottom, failures = figure.axes
        # The flat rate is not drawn on the frame.
        self.assertGreaterEqual(top.get_ylim()[1], 2000 * 1.15)
        # The two failures of the drain are drawn, on their own scale.
        self.assertEqual([round(p.get_height()) for p in failures.patches], [0, 0, 0, 2])
        self.assertGreaterEqual(failures.get_ylim()[1], 2 * 1.15)
        # Each legend stands right of its plot, over no curve.
        for axes, legend in ((top, top.get_legend()), (bottom, bottom.get_legend())):
            box = legend.get_window_extent()
            self.assertGreater(box.x0, failures.get_window_extent().x1 - 1, axes)
