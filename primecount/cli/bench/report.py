# -*- test-case-name: tests.unit.test_bench,tests.system.test_bench_runs -*-
"""
How a load-generator run is shown: the text summary, the JSON document and
the PNG plot.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from primecount.cli.bench.stats import Result


class PlotUnavailable(Exception):
    """
    matplotlib is not installed, so no plot can be drawn.
    """


#: What --plot needs and how to get it (the extra the README names).
PLOT_HINT = (
    "--plot needs matplotlib, which is not installed: pip install '.[bench]' (the bench extra)"
)


def check_plot() -> None:
    """
    @raise PlotUnavailable: when matplotlib, which L{plot} needs, is missing.
    """
    import importlib.util

    try:
        found = importlib.util.find_spec("matplotlib") is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        raise PlotUnavailable(PLOT_HINT)


def summary_lines(result: Result, title: str) -> list[str]:
    """
    The human-readable summary of C{result}, one string per line.
    """
    latency = result.summary()["latency_ms"]
    errors = ", ".join(f"{kind} {n}" for kind, n in result.errors.items())
    lines = [
        title,
        f"requests     {result.requests}  (ok {result.ok}, wrong {result.wrong}, "
        f"errors {result.error_count}: {errors})",
        f"elapsed      {result.elapsed:.2f} s",
        f"throughput   {result.throughput:,.1f} req/s (correct replies only)",
        "latency ms   "
        + "  ".join(f"{key} {latency[key]:.3f}" for key in ("p50", "p90", "p99", "p99.9", "max")),
    ]
    idle = result.idle
    if any(idle.values()):
        lines.append(
            f"idle conns   open {idle['open']}, reopened {idle['reopened']}, "
            f"failed {idle['failed']}"
        )
    if result.wrong:
        lines.append(f"WRONG REPLIES: {result.wrong} replies differ from the expected ones")
    return lines


def write_json(path: str, result: Result, settings: dict[str, Any]) -> None:
    """
    Write the whole result, the settings and the per-second timeline.
    """
    document = {"settings": settings, **result.summary()}
    Path(path).write_text(json.dumps(document, indent=1, ensure_ascii=False) + "\n")


def plot(path: str, result: Result, title: str) -> None:
    """
    Draw throughput and latency over time into a PNG file.

    @raise PlotUnavailable: when matplotlib is missing.
    """
    check_plot()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # A last second shorter than 0.2 s (the drain at the end) says little.
    timeline = [e for e in result.timeline_summary() if e["length"] >= 0.2]
    seconds = [entry["second"] + entry["length"] for entry in timeline]
    figure, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(9, 6))
    top.plot(seconds, [e["throughput"] for e in timeline], label="correct replies/s")
    if any(e["errors"] or e["wrong"] for e in timeline):
        top.plot(
            seconds,
            [(e["errors"] + e["wrong"]) / e["length"] for e in timeline],
            label="errors + wrong/s",
            color="tab:red",
        )
    top.set_ylabel("requests per second")
    top.set_ylim(bottom=0)
    top.legend(loc="lower right")
    top.set_title(title, fontsize=9)
    for key, style in (("p50", "-"), ("p99", "--"), ("max", ":")):
        bottom.plot(seconds, [max(e[key], 1e-3) for e in timeline], style, label=key)
    bottom.set_yscale("log")
    bottom.set_ylabel("latency (ms)")
    bottom.set_xlabel("second of the run")
    bottom.legend(loc="upper right")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
