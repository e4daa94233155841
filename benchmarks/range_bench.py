# -*- test-case-name: tests.unit.test_journal_interface -*-
"""
Range protocol benchmark: figures for issue 4.

1. [0, 10**8] end to end: a server in a subprocess (C{twistd -n primecount
   --range-port}, or L{benchmarks/range_server.py} when that fails), a
   client that receives all 5,761,455 primes, checks their sum
   (279,209,790,387,276) and order with numpy and sends the sum; wall time
   and the server's peak RSS (VmHWM).
2. The sieve against the original design's per-number trial division on
   [0, 10**6], medians of several runs, and their ratio.
3. Fairness: count protocol round trips while clients stream all of
   [0, 2**31 - 1] (only with C{twistd}, which serves both protocols).

    python benchmarks/range_bench.py [--runs 5] [--streams 2]
"""

from __future__ import annotations

import argparse
import math
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable

import numpy as np

from primecount.cli.primes import ProtocolError, fetch, send_sum
from primecount.core import rangecodec
from primecount.core.primes import primes_between
from primecount.workers.environment import primecount_argv

HERE = os.path.dirname(os.path.abspath(__file__))
EXPECTED_COUNT = 5761455
EXPECTED_SUM = 279209790387276


def free_port() -> int:
    """
    A TCP port nobody listens on right now.
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(port: int, proc: subprocess.Popen[bytes], seconds: float = 20) -> bool:
    """
    Wait until C{port} accepts connections, or C{proc} dies.
    """
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return True
        except OSError:
            time.sleep(0.05)
    return False


class Server:
    """
    A range server in a subprocess.

    @ivar kind: C{"twistd"} or C{"fallback"}.
    @ivar range_port: its range protocol port.
    @ivar count_port: its count protocol port, or L{None} for the fallback.
    """

    def __init__(self) -> None:
        self.tmp = tempfile.TemporaryDirectory()
        self.range_port = free_port()
        self.count_port: int | None = free_port()
        self.kind = "twistd"
        command = primecount_argv(
            "--interface=127.0.0.1",
            f"--port={self.count_port}",
            f"--range-port={self.range_port}",
            "--journal=none",
        )
        self.proc = self._start(command)
        if not wait_for(self.range_port, self.proc):
            self.stop()
            self.kind, self.count_port = "fallback", None
            script = os.path.join(HERE, "range_server.py")
            self.proc = self._start([sys.executable, script, str(self.range_port)])
            if not wait_for(self.range_port, self.proc):
                raise SystemExit("range_bench: could not start a range server")

    def _start(self, command: list[str]) -> subprocess.Popen[bytes]:
        """
        Start C{command} in the scratch directory.
        """
        return subprocess.Popen(
            command,
            cwd=self.tmp.name,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def peak_rss_mb(self) -> float:
        """
        The server's peak resident memory (VmHWM), in MiB.
        """
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        return math.nan

    def stop(self) -> None:
        """
        Stop the server.
        """
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def end_to_end(
    port: int,
    a: int = 0,
    b: int = 10**8,
    expected: tuple[int, int] = (EXPECTED_COUNT, EXPECTED_SUM),
) -> float:
    """
    One full request, verified with numpy, then one small request on the
    same connection (the sum must leave it usable); returns the wall time
    of the full request.

    @param expected: the prime count and the sum of [C{a}, C{b}].
    @raise SystemExit: with one line, when a reply is wrong or a request
        does not complete.
    """
    start = time.perf_counter()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            primes = fetch(sock, a, b)
            total = rangecodec.prime_sum(primes)
            ascending = bool(np.all(primes[1:] > primes[:-1]))
            if (len(primes), total, ascending) != (*expected, True):
                raise SystemExit(f"range_bench: wrong reply: {len(primes)} primes, sum {total}")
            send_sum(sock, primes)
            wall = time.perf_counter() - start
            if fetch(sock, 2, 3).tolist() != [2, 3]:
                raise SystemExit("range_bench: wrong reply to [2, 3] after the sum")
            send_sum(sock, np.array([2, 3], np.uint32))
    except (OSError, ProtocolError) as e:
        raise SystemExit(f"range_bench: request [{a}, {b}] did not complete: {e}") from None
    return wall


def trial_division_is_prime(n: int) -> bool:
    """
    The original design's per-number test: divide by every d up to sqrt(n).
    """
    if n < 2:
        return False
    for d in range(2, math.isqrt(n) + 1):  # noqa: SIM110 (the seed's loop, as it was)
        if n % d == 0:
            return False
    return True


def trial_division(a: int, b: int) -> list[int]:
    """
    The primes in [a, b], one number at a time, as the seed did.
    """
    return [n for n in range(max(a, 0), b + 1) if trial_division_is_prime(n)]


def median_time(f: Callable[[], object], runs: int) -> float:
    """
    The median wall time of C{runs} calls of C{f}.
    """
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        f()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def count_round_trips(port: int, seconds: float) -> list[float]:
    """
    Count protocol round trip times (one request at a time) for C{seconds}.
    """
    times = []
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        stop = time.monotonic() + seconds
        while time.monotonic() < stop:
            start = time.perf_counter()
            sock.sendall(b"abc2a\n")
            reply = b""
            while not reply.endswith(b"\n"):
                reply += sock.recv(64)
            times.append(time.perf_counter() - start)
            time.sleep(0.002)
    return times


def stream_everything(port: int, stop: threading.Event, done: list[int]) -> None:
    """
    Read [0, 2**31 - 1] as fast as possible until C{stop} is set.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(rangecodec.encode_request(0, rangecodec.INT32_MAX))
        received = 0
        while not stop.is_set():
            chunk = sock.recv(1 << 20)
            if not chunk:
                break
            received += len(chunk)
        done.append(received)


def describe(times: list[float]) -> str:
    """
    Median, 99th percentile and maximum of round trip times, in ms.
    """
    ms = sorted(t * 1000 for t in times)
    p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
    return (
        f"n={len(ms)} median {statistics.median(ms):.2f} ms, p99 {p99:.2f} ms, max {ms[-1]:.2f} ms"
    )


def main() -> None:
    """
    Run the benchmarks and print the figures.
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="runs per figure")
    parser.add_argument("--streams", type=int, default=2, help="fairness streams")
    args = parser.parse_args()

    server = Server()
    try:
        end_to_end(server.range_port)  # warm up: imports, base primes
        wall = [end_to_end(server.range_port) for _ in range(args.runs)]
        print(f"server: {server.kind} (pid {server.proc.pid})")
        print(
            f"[0, 10^8] end to end, {EXPECTED_COUNT} primes verified: "
            f"median {statistics.median(wall):.3f} s, best {min(wall):.3f} s "
            f"over {args.runs} runs"
        )
        print(f"server peak RSS (VmHWM): {server.peak_rss_mb():.1f} MiB")

        if server.count_port is not None:
            idle = count_round_trips(server.count_port, 1.0)
            print(f"count protocol, idle: {describe(idle)}")
            stop, done = threading.Event(), list[int]()
            streams = [
                threading.Thread(target=stream_everything, args=(server.range_port, stop, done))
                for _ in range(args.streams)
            ]
            for t in streams:
                t.start()
            time.sleep(0.5)
            loaded = count_round_trips(server.count_port, 3.0)
            stop.set()
            for t in streams:
                t.join()
            print(
                f"count protocol, while {args.streams} clients stream [0, 2^31-1]: "
                f"{describe(loaded)}; streamed {sum(done) / 2**20:.0f} MiB"
            )
            print(f"server peak RSS after streaming: {server.peak_rss_mb():.1f} MiB")
    finally:
        server.stop()

    sieve = median_time(lambda: primes_between(0, 10**6), max(args.runs, 5))
    trial = median_time(lambda: trial_division(0, 10**6), min(args.runs, 3))
    assert primes_between(0, 10**6).tolist() == trial_division(0, 10**6)
    print(
        f"[0, 10^6] trial division {trial * 1000:.1f} ms vs sieve "
        f"{sieve * 1000:.2f} ms (medians): sieve {trial / sieve:.0f}x faster"
    )


if __name__ == "__main__":
    main()
