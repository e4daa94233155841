"""
Tests for L{primecount.cli.bench} that take real time or processes: every
reply of a run against a small threaded server on 127.0.0.1 port 0
(correct, wrong, dropping, silent or slow) is verified, failures are
counted as errors and never as speed, timeouts and durations hold; the
recorded baselines; Ctrl-C and C{--plot}. The quick checks are in
L{tests.unit.test_bench}.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time

from benchmarks.harness import BASELINES
from primecount.cli.bench.held import HeldConnections
from primecount.cli.bench.load import measure
from primecount.cli.bench.stats import (
    percentiles_ms,
)
from primecount.core.count import expected_reply
from primecount.testing.processes import missing
from tests.unit.test_bench import BenchTestCase, correct, drop, wrong


def chatty(line: bytes) -> bytes:
    """
    The right answer followed by a line nobody asked for.
    """
    return expected_reply(line) + b"1 no\n"


def silent(line: bytes) -> bytes:
    """
    Never answer (until the generator gives up).
    """
    time.sleep(2)
    return b""


def slow(line: bytes) -> bytes:
    """
    Answer right, 20 ms late.
    """
    time.sleep(0.02)
    return expected_reply(line)


class VerificationTests(BenchTestCase):
    """
    Every reply is checked; failures never count as throughput.
    """

    def test_correctServerAllOk(self) -> None:
        """
        Against a correct server every request is a correct reply.
        """
        result = measure(self.plan(self.serve(correct)))
        self.assertEqual((result.ok, result.wrong, result.error_count), (200, 0, 0))
        self.assertGreater(result.throughput, 0)
        self.assertEqual(result.histogram.get_total_count(), 200)

    def test_requestsCountHonouredPipelined(self) -> None:
        """
        C{requests} bounds the run exactly, also with pipelining and more
        clients than the count divides evenly.
        """
        result = measure(self.plan(self.serve(correct), clients=7, pipeline=5))
        self.assertEqual(result.requests, 200)
        self.assertEqual(result.ok, 200)

    def test_requestsCountHonouredPerConnection(self) -> None:
        """
        One connection per request resolves exactly C{requests} requests.
        """
        result = measure(self.plan(self.serve(correct), per_request=True, requests=57))
        self.assertEqual((result.requests, result.ok), (57, 57))

    def test_wrongServerShowsAsWrongReplies(self) -> None:
        """
        Replies that differ from L{expected_reply} are wrong, and wrong
        replies are no throughput.
        """
        result = measure(self.plan(self.serve(wrong)))
        self.assertEqual((result.ok, result.wrong, result.error_count), (0, 200, 0))
        self.assertEqual(result.throughput, 0)

    def test_extraLinesAreWrong(self) -> None:
        """
        Reply lines nobody asked for count as wrong replies: each request
        gets its right answer (one C{sendall} with the extra line, so both
        arrive before the next request leaves) and one line too many.
        """
        result = measure(self.plan(self.serve(chatty), requests=50, clients=2))
        self.assertEqual((result.ok, result.wrong, result.error_count), (50, 50, 0))

    def test_droppingServerShowsAsErrors(self) -> None:
        """
        A server that closes instead of answering causes reset errors, on
        persistent connections and one-per-request alike.
        """
        port = self.serve(drop)
        for per_request in (False, True):
            result = measure(self.plan(port, requests=40, per_request=per_request))
            self.assertEqual(result.ok + result.wrong, 0)
            self.assertEqual(result.errors["reset"], 40)
            self.assertEqual(result.throughput, 0)

    def test_refusedConnectionsAreErrors(self) -> None:
        """
        When nothing listens, every request fails as a connect error.
        """
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        result = measure(self.plan(port, requests=20, per_request=True))
        self.assertEqual(result.errors["connect"], 20)
        self.assertEqual(result.ok, 0)

    def test_silentServerTimesOut(self) -> None:
        """
        A request without a reply within the timeout is a timeout error.
        """
        started = time.monotonic()
        result = measure(self.plan(self.serve(silent), requests=4, clients=2, timeout=0.3))
        self.assertEqual(result.errors["timeout"], 4)
        self.assertLess(time.monotonic() - started, 3.0)

    def test_openLoopCountsQueueingDelay(self) -> None:
        """
        With a fixed rate above what the server sustains, latency is measured
        from each request's due time, so it grows with the backlog instead of
        staying at the service time.
        """
        result = measure(self.plan(self.serve(slow), clients=1, requests=20, rate=200.0))
        self.assertEqual(result.ok, 20)
        latency = percentiles_ms(result.histogram)
        # Service time is 20 ms; the 20th request was due at 95 ms and is
        # served around 400 ms.
        self.assertGreater(latency["max"], 200.0)

    def test_durationBounded(self) -> None:
        """
        A timed run stops close to its duration.
        """
        plan = self.plan(self.serve(correct), requests=None, duration=0.5)
        result = measure(plan)
        self.assertGreater(result.ok, 0)
        self.assertLess(result.elapsed, 1.5)

    def test_heldConnectionsStayOpen(self) -> None:
        """
        Held connections (C{--hold}) stay open during the run.
        """
        result = measure(self.plan(self.serve(correct), requests=50, hold=20))
        self.assertEqual(result.ok, 50)
        self.assertEqual(result.held["open"], 20)
        self.assertEqual(result.held["failed"], 0)

    def test_heldConnectionsThatFailToOpenAreCounted(self) -> None:
        """
        A held connection that cannot be opened before the run counts as
        failed in the result: the count survives the start of the run's
        own tally.
        """

        async def refused(held: HeldConnections) -> None:
            raise ConnectionRefusedError("refused")

        self.patch(HeldConnections, "_connect", refused)
        result = measure(self.plan(self.serve(correct), requests=50, hold=7))
        self.assertEqual(result.held, {"open": 0, "reopened": 0, "failed": 7})
        self.assertEqual(result.ok, 50)


class BaselineTests(BenchTestCase):
    """
    The benchmark baselines speak the count protocol: the generator finds
    every reply correct.
    """

    def start_baseline(self, name: str) -> int:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
        process = subprocess.Popen(
            [sys.executable, str(BASELINES / f"{name}.py"), "--port", str(port)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

        def stop() -> None:
            process.terminate()
            process.wait(5)

        self.addCleanup(stop)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", port), 0.5):
                    return port
            except OSError:
                time.sleep(0.05)
        self.fail(f"{name} did not start")

    def check(self, name: str, per_request: bool) -> None:
        port = self.start_baseline(name)
        result = measure(self.plan(port, requests=100, per_request=per_request))
        self.assertEqual((result.ok, result.wrong, result.error_count), (100, 0, 0))

    def test_originalThreadpool(self) -> None:
        """
        The original thread-pool design answers one message per connection.
        """
        self.check("original_threadpool", per_request=True)

    def test_originalThreadpoolReadFraming(self) -> None:
        """
        The original design answers its own clients' way: no newline, the
        reply read until it closes.
        """
        port = self.start_baseline("original_threadpool")
        result = measure(self.plan(port, requests=100, per_request=True, framing="read"))
        self.assertEqual((result.ok, result.wrong, result.error_count), (100, 0, 0))

    def test_selectLoop(self) -> None:
        """
        The select() design answers on persistent connections.
        """
        self.check("select_loop", per_request=False)

    def test_asyncioServer(self) -> None:
        """
        The asyncio baseline answers on persistent connections.
        """
        self.check("asyncio_server", per_request=False)

    def test_uvloopServer(self) -> None:
        """
        The uvloop baseline answers on persistent connections.
        """
        if importlib.util.find_spec("uvloop") is None:
            raise missing("uvloop is not installed (the test extra brings it)")
        self.check("uvloop_server", per_request=False)


class InterruptAndPlotTests(BenchTestCase):
    """
    C{--plot} is checked before the run; Ctrl-C prints the partial summary.
    """

    def test_plotWithoutMatplotlibFailsBeforeRunning(self) -> None:
        asked: list[bytes] = []

        def counting(line: bytes) -> bytes:
            asked.append(line)
            return expected_reply(line)

        port = self.serve(counting)
        saved = sys.modules.get("matplotlib", _MISSING)
        sys.modules["matplotlib"] = None  # type: ignore[assignment]

        def restore() -> None:
            if saved is _MISSING:
                del sys.modules["matplotlib"]
            else:
                sys.modules["matplotlib"] = saved  # type: ignore[assignment]

        self.addCleanup(restore)
        status, _out, err = self.run_bench(
            "--port", str(port), "--requests", "50", "--quiet", "--plot", "run.png",
        )  # fmt: skip
        self.assertEqual(status, 2)
        self.assertEqual(asked, [])
        self.assertEqual(len(err.splitlines()), 1, err)
        self.assertIn("matplotlib", err)
        self.assertIn(".[bench]", err)

    def interrupted(self, *argv: str, early: bool = False) -> tuple[int, str, str]:
        """
        Run C{primecount bench ARGV} and press Ctrl-C: 2.5 s in, or with
        C{early}, as soon as its generator processes exist (while they are
        still starting). The signal goes to its whole process group, as a
        terminal's Ctrl-C does.
        """
        port = self.serve(correct)
        process = subprocess.Popen(
            [sys.executable, "-m", "primecount", "bench", "--port", str(port), *argv],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            # Default Ctrl-C handling, whatever the test runner's.
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
            start_new_session=True,
        )
        try:
            if early:
                # Started, and still importing.
                deadline = time.monotonic() + 30
                while not _started(process.pid) and time.monotonic() < deadline:
                    time.sleep(0.005)
                self.assertTrue(_started(process.pid), "no generator process started")
            else:
                time.sleep(2.5)
            os.killpg(process.pid, signal.SIGINT)
            out, err = process.communicate(timeout=30)
        finally:
            if process.poll() is None:
                process.kill()
                process.communicate()
        return process.returncode, out, err

    def test_ctrlCPrintsPartialSummary(self) -> None:
        status, out, err = self.interrupted("--duration", "60", "--rate", "200", "--clients", "2")
        self.assertEqual(status, 130, err)
        self.assertIn("interrupted after", err)
        self.assertIn("throughput", out)
        self.assertIn("p99.9", out)
        self.assertNotIn("Traceback", err)

    def test_ctrlCWhileGeneratorProcessesStart(self) -> None:
        """
        Ctrl-C while the generator processes are still starting (importing)
        ends the run with the partial summary, not with a generator process
        dying in its imports.
        """
        status, out, err = self.interrupted(
            "--duration", "60", "--rate", "200", "--clients", "2", "--processes", "2", early=True
        )
        self.assertEqual(status, 130, err)
        self.assertIn("interrupted after", err)
        self.assertIn("throughput", out)
        self.assertNotIn("Traceback", err)

    def test_ctrlCWithProcessesPrintsPartialSummary(self) -> None:
        status, out, err = self.interrupted(
            "--duration", "60", "--rate", "200", "--clients", "2", "--processes", "2"
        )
        self.assertEqual(status, 130, err)
        self.assertIn("interrupted after", err)
        self.assertIn("throughput", out)
        self.assertNotIn("Traceback", err)


def _started(pid: int, generators: int = 2) -> bool:
    """
    Whether process C{pid} (C{primecount bench --processes 2}) has started
    its C{generators} generator processes (Linux; multiprocessing's own
    resource tracker is not one).
    """
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            children = f.read().split()
        started = 0
        for child in children:
            with open(f"/proc/{child}/cmdline", "rb") as f:
                started += b"spawn_main" in f.read()
        return started >= generators
    except OSError:
        return False


_MISSING = object()
