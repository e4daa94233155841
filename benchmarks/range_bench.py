# -*- test-case-name: tests.unit.test_journal_interface -*-
"""
The range protocol end to end, and the sieve against the original design's
trial division.

For example::

    python -m benchmarks.range_bench --runs 5 --streams 2

Prints: [0, 10**8] streamed by C{twistd -n primecount --range-port}, every
one of its 5,761,455 primes checked (order, count, sum) with numpy, wall
time and the server's peak memory; count protocol round trips while clients
stream all of [0, 2**31 - 1]; the sieve's and trial division's time for
[0, 10**6].
"""

from __future__ import annotations

import argparse
import math
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable

import numpy as np

from benchmarks.harness import BenchmarkError, reported, start_server
from primecount.cli.primes import ProtocolError, fetch, send_sum
from primecount.core import rangecodec
from primecount.core.primes import primes_between
from primecount.testing.twistd import ServerProcess

EXPECTED_COUNT = 5761455
EXPECTED_SUM = 279209790387276


def peak_rss_mb(server: ServerProcess) -> float:
    """
    The server's peak resident memory (VmHWM), in MiB.
    """
    with open(f"/proc/{server.process.pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return math.nan


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
    @raise BenchmarkError: when a reply is wrong or a request does not
        complete.
    """
    start = time.perf_counter()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            primes = fetch(sock, a, b)
            total = rangecodec.prime_sum(primes)
            ascending = bool(np.all(primes[1:] > primes[:-1]))
            if (len(primes), total, ascending) != (*expected, True):
                raise BenchmarkError(f"wrong reply: {len(primes)} primes, sum {total}")
            send_sum(sock, primes)
            wall = time.perf_counter() - start
            if fetch(sock, 2, 3).tolist() != [2, 3]:
                raise BenchmarkError("wrong reply to [2, 3] after the sum")
            send_sum(sock, np.array([2, 3], np.uint32))
    except (OSError, ProtocolError) as e:
        raise BenchmarkError(f"request [{a}, {b}] did not complete: {e}") from None
    return wall


def trial_division_is_prime(n: int) -> bool:
    """
    The original design's per-number test: divide by every d up to sqrt(n).
    """
    if n < 2:
        return False
    for d in range(2, math.isqrt(n) + 1):  # noqa: SIM110 (the original's loop, as it was)
        if n % d == 0:
            return False
    return True


def trial_division(a: int, b: int) -> list[int]:
    """
    The primes in [a, b], one number at a time, as the original did.
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


def measure(args: argparse.Namespace) -> int:
    """
    Run the benchmarks and print the figures.
    """
    with tempfile.TemporaryDirectory(prefix="primecount-range-") as work:
        server = start_server("--range-port", "0", "--journal", "none", cwd=work)
        try:
            served(server, args)
        finally:
            server.stop()
    sieve = median_time(lambda: primes_between(0, 10**6), max(args.runs, 5))
    trial = median_time(lambda: trial_division(0, 10**6), min(args.runs, 3))
    if primes_between(0, 10**6).tolist() != trial_division(0, 10**6):
        raise BenchmarkError("the sieve and trial division disagree on [0, 10^6]")
    print(
        f"[0, 10^6] trial division {trial * 1000:.1f} ms vs sieve "
        f"{sieve * 1000:.2f} ms (medians): sieve {trial / sieve:.0f}x faster"
    )
    return 0


def served(server: ServerProcess, args: argparse.Namespace) -> None:
    """
    The figures of the running server: end to end, then fairness.
    """
    port = server.ports["range"]
    end_to_end(port)  # warm up: imports, base primes
    wall = [end_to_end(port) for _ in range(args.runs)]
    print(
        f"[0, 10^8] end to end, {EXPECTED_COUNT} primes verified: "
        f"median {statistics.median(wall):.3f} s, best {min(wall):.3f} s "
        f"over {args.runs} runs"
    )
    print(f"server peak RSS (VmHWM): {peak_rss_mb(server):.1f} MiB")
    alone = count_round_trips(server.port, 1.0)
    print(f"count protocol, alone: {describe(alone)}")
    stop, done = threading.Event(), list[int]()
    streams = [
        threading.Thread(target=stream_everything, args=(port, stop, done))
        for _ in range(args.streams)
    ]
    for t in streams:
        t.start()
    time.sleep(0.5)
    loaded = count_round_trips(server.port, 3.0)
    stop.set()
    for t in streams:
        t.join()
    print(
        f"count protocol, while {args.streams} clients stream [0, 2^31-1]: "
        f"{describe(loaded)}; streamed {sum(done) / 2**20:.0f} MiB"
    )
    print(f"server peak RSS after streaming: {peak_rss_mb(server):.1f} MiB")


def main(argv: list[str] | None = None) -> int:
    """
    Parse the command line and measure; the exit status.
    """
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.range_bench", description=__doc__.strip().split("\n\n")[0]
    )
    parser.add_argument("--runs", type=int, default=5, help="runs per figure (5)")
    parser.add_argument("--streams", type=int, default=2, help="streaming clients (2)")
    args = parser.parse_args(argv)
    return reported("range_bench", lambda: measure(args))


if __name__ == "__main__":
    sys.exit(main())
