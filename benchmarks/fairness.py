# -*- test-case-name: tests.system.test_compare -*-
"""
One interactive client beside deep pipeliners: its latency, which fair
batching keeps within a few milliseconds however deep the others pipeline.

For example::

    python -m benchmarks.fairness --rounds 3 --duration 5
    python -m benchmarks.fairness --variant-code before=/tmp/before   # another checkout too

Each round starts primecount (its defaults, journal on), loads it with
C{--pipeliners} clients that each keep C{--depth} requests in flight and,
a second later, measures one client that sends a request at a time; prints
the medians over the rounds as a markdown table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.harness import BenchmarkError, Generator, Servers, reported, variant_code


def start_load(
    port: int, duration: float, options: list[str], output: Path
) -> subprocess.Popen[bytes]:
    """
    Start one quiet C{primecount bench} run writing its result to C{output}.
    """
    command = Generator("python").command(port, options, duration, 1, output)
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL)


def round_of(servers: Servers, name: str, args: argparse.Namespace, work: Path) -> dict[str, float]:
    """
    One measurement of server C{name}: the interactive client's latency
    and both loads' throughput.

    @raise BenchmarkError: when a generator fails or a reply is wrong.
    """
    port = servers.ports[name]
    deep, alone = work / f"{name}-deep.json", work / f"{name}-alone.json"
    load = start_load(
        port,
        args.duration + 2,
        ["--clients", str(args.pipeliners), "--pipeline", str(args.depth)],
        deep,
    )
    time.sleep(1)
    probe = start_load(port, args.duration, ["--clients", "1", "--pipeline", "1"], alone)
    for process in (probe, load):
        if process.wait(args.duration + 60) not in (0, 3):
            raise BenchmarkError(f"the load generator failed against {name}")
    interactive = json.loads(alone.read_text())
    pipelined = json.loads(deep.read_text())
    if interactive["wrong"] or pipelined["wrong"]:
        raise BenchmarkError(f"{name} gave wrong replies")
    return {
        "p50": interactive["latency_ms"]["p50"],
        "p99": interactive["latency_ms"]["p99"],
        "interactive": interactive["throughput"],
        "pipelined": pipelined["throughput"],
    }


def fairness(args: argparse.Namespace) -> int:
    """
    Every round for every server; print the table.
    """
    code = dict(args.variant_code)
    names = ["primecount", *code]
    results: dict[str, list[dict[str, float]]] = {name: [] for name in names}
    with tempfile.TemporaryDirectory(prefix="primecount-fairness-") as tmp:
        work = Path(tmp)
        for n in range(args.rounds):
            order = names if n % 2 == 0 else names[::-1]
            for name in order:
                servers = Servers([name], work, variants={v: [] for v in code}, code=code)
                with servers.running():
                    results[name].append(round_of(servers, name, args, work))
                print(f"round {n + 1}/{args.rounds} {name}: {results[name][-1]}", file=sys.stderr)
    print(
        f"| server | interactive p50 ms | p99 ms | interactive req/s | "
        f"{args.pipeliners} × {args.depth}-deep pipeliners req/s |"
    )
    print("|---|---:|---:|---:|---:|")
    for name in names:
        median = {k: statistics.median(r[k] for r in results[name]) for k in results[name][0]}
        print(
            f"| {name} | {median['p50']:.2f} | {median['p99']:.2f} | "
            f"{median['interactive']:,.0f} | {median['pipelined']:,.0f} |"
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    """
    Parse the command line and measure; the exit status.
    """
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.fairness", description=__doc__.strip().split("\n\n")[0]
    )
    parser.add_argument("--pipeliners", type=int, default=10, help="pipelining clients (10)")
    parser.add_argument("--depth", type=int, default=1000, help="their requests in flight (1000)")
    parser.add_argument("--duration", type=float, default=5, help="seconds a round (5)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (3)")
    parser.add_argument(
        "--variant-code", type=variant_code, action="append", default=[],
        metavar="NAME=DIR", help="also run primecount from another checkout",
    )  # fmt: skip
    args = parser.parse_args(argv)
    return reported("fairness", lambda: fairness(args))


if __name__ == "__main__":
    sys.exit(main())
