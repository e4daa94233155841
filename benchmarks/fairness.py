"""
One interactive client beside ten deep pipeliners: does it wait for them?

    python benchmarks/fairness.py                       # this checkout
    git worktree add /tmp/before HEAD~1
    python benchmarks/fairness.py --variant-code before=/tmp/before

Each round starts every server (primecount with its defaults, journal on),
loads it with C{--pipeliners} clients that each keep C{--depth} requests in
flight, and after a second of that measures a single client that sends one
request at a time. The interactive client's latency percentiles are the
figure: with fair batching it stays within a few milliseconds, however deep
the others pipeline. Rounds alternate the order of the servers; figures are
medians over the rounds.
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

from compare import Servers, variant_code


def bench(port: int, duration: float, options: list[str], output: Path) -> subprocess.Popen[bytes]:
    """
    Start one C{primecount bench} subprocess writing its result to C{output}.
    """
    command = [
        sys.executable, "-m", "primecount.cli.bench", "--port", str(port),
        "--duration", str(duration), "--quiet", "--json", str(output), *options,
    ]  # fmt: skip
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL)


def round_of(servers: Servers, name: str, args: argparse.Namespace, work: Path) -> dict[str, float]:
    """
    One measurement of server C{name}: the interactive client's latency
    and both loads' throughput.
    """
    port = servers.ports[name]
    deep, alone = work / f"{name}-deep.json", work / f"{name}-alone.json"
    load = bench(
        port,
        args.duration + 2,
        ["--clients", str(args.pipeliners), "--pipeline", str(args.depth)],
        deep,
    )
    time.sleep(1)
    probe = bench(port, args.duration, ["--clients", "1", "--pipeline", "1"], alone)
    for process in (probe, load):
        if process.wait(args.duration + 60) not in (0, 3):
            raise SystemExit(f"fairness: the load generator failed against {name}")
    interactive = json.loads(alone.read_text())
    pipelined = json.loads(deep.read_text())
    if interactive["wrong"] or pipelined["wrong"]:
        raise SystemExit(f"fairness: {name} gave wrong replies")
    return {
        "p50": interactive["latency_ms"]["p50"],
        "p99": interactive["latency_ms"]["p99"],
        "interactive": interactive["throughput"],
        "pipelined": pipelined["throughput"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("--pipeliners", type=int, default=10)
    parser.add_argument("--depth", type=int, default=1000)
    parser.add_argument("--duration", type=float, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--variant-code", type=variant_code, action="append", default=[],
        metavar="NAME=DIR", help="also run primecount from another checkout",
    )  # fmt: skip
    args = parser.parse_args(argv)
    code = dict(args.variant_code)
    names = ["primecount", *code]
    results: dict[str, list[dict[str, float]]] = {name: [] for name in names}
    with tempfile.TemporaryDirectory(prefix="fairness-") as tmp:
        work = Path(tmp)
        for n in range(args.rounds):
            order = names if n % 2 == 0 else names[::-1]
            for name in order:
                servers = Servers([name], work, [], None, {v: [] for v in code}, code)
                servers.start()
                try:
                    results[name].append(round_of(servers, name, args, work))
                finally:
                    servers.stop()
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


if __name__ == "__main__":
    raise SystemExit(main())
