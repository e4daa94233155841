# -*- test-case-name: tests.unit.test_bench,tests.system.test_bench_runs -*-
"""
How a load-generator run is shown: the text summary, the JSON document and
the PNG plot.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from primecount.cli.bench.plan import Plan
from primecount.cli.bench.stats import Result
from primecount.core.wording import plural


class PlotUnavailable(Exception):
    """
    matplotlib is not installed, so no plot can be drawn.
    """


#: What --plot needs and how to get it (the extra C{docs/user/install.md} names).
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


def summary_lines(result: Result, title: str, plan: Plan | None = None) -> list[str]:
    """
    The human-readable summary of C{result}, one string per line.

    @param plan: the run's plan, to say why a timed run took longer than
        its C{--duration}.
    """
    latency = result.summary()["latency_ms"]
    errors = ", ".join(f"{kind} {n}" for kind, n in result.errors.items())
    elapsed = f"elapsed      {result.elapsed:.2f} s"
    if plan is not None and plan.duration is not None and result.elapsed > plan.duration + 0.5:
        elapsed += (
            f" ({plan.duration:g} s of requests, then up to --timeout {plan.timeout:g} s "
            "for the replies still due)"
        )
    lines = [
        title,
        f"requests     {result.requests}  (ok {result.ok}, wrong {result.wrong}, "
        f"errors {result.error_count}: {errors})",
        elapsed,
        f"throughput   {result.throughput:,.1f} req/s (correct replies only)",
        "latency ms   "
        + "  ".join(f"{key} {latency[key]:.3f}" for key in ("p50", "p90", "p99", "p99.9", "max")),
    ]
    held = result.held
    if any(held.values()):
        lines.append(
            f"held conns   open {held['open']}, reopened {held['reopened']}, "
            f"failed {held['failed']}"
        )
    if result.wrong:
        differ = "differs" if result.wrong == 1 else "differ"
        lines.append(
            f"WRONG REPLIES: {plural(result.wrong, 'reply', 'replies')} {differ} "
            "from the expected ones"
        )
    return lines


def diagnosis(result: Result, plan: Plan) -> str | None:
    """
    Why a run in which a third or more of the requests failed failed, in
    one line with the likely cause (nothing listening, the other
    protocol's port, the other framing); C{None} when fewer failed.

    The guess comes from how they failed: every kind of mismatch between
    C{primecount bench} and a server has its own signature (a range client
    on a count port waits for a newline that never comes; a line client on
    a C{--framing read} server gets one reply per connection, then a
    close; a count client on a range port gets binary replies).
    """
    failed = result.wrong + result.error_count
    if failed == 0 or failed * 3 < result.requests:
        return None
    where = f"{plan.host}:{plan.port}"
    kinds = {"wrong": result.wrong, **result.errors}
    kind = max(kinds, key=lambda k: kinds[k])
    if result.ok == 0 and failed == kinds[kind]:
        share = "every"
    else:
        share = "most" if kinds[kind] > result.requests / 2 else "many a"
    if plan.protocol == "range":
        port = f"is {where} the server's --range-port"
        if kind == "connect":
            return f"{share} connection to {where} failed: is the server running with --range-port?"
        if kind == "timeout":
            return (
                f"{share} range request got no reply within --timeout {plan.timeout:g} s: "
                f"{port}? (a count port waits for a newline the range protocol never sends)"
            )
        if kind == "reset":
            return f"the server closed {share} connection before its reply: {port}?"
        return f"{share} reply was wrong (the first: {result.wrong_sample!r}): {port}?"
    if kind == "connect":
        return f"{share} connection to {where} failed: is the server running there?"
    if kind == "timeout" and plan.framing == "read":
        return (
            f"{share} request got no reply within --timeout {plan.timeout:g} s: is the server "
            "running with --framing read? (with --framing line it waits for a newline, "
            "which --framing read does not send)"
        )
    if kind == "timeout":
        return (
            f"{share} request got no reply within --timeout {plan.timeout:g} s: is {where} a "
            "count port? (a range port waits for 8-byte requests; or the server is stalled)"
        )
    if kind == "reset" and not plan.per_request and result.ok:
        resets = plural(result.errors["reset"], "reset")
        return (
            f"the server closed the connection after each reply ({resets}, "
            f"{plural(result.ok, 'correct reply', 'correct replies')}): is it running with "
            "--framing read or --close-after-reply? Then use --framing read or "
            "--connection-per-request"
        )
    if kind == "reset":
        return (
            f"the server closed {share} connection without a reply: is {where} a count port, "
            "and is the server running with the same --framing as this run?"
        )
    sample = result.wrong_sample or b""
    if sample.startswith(b"ERR "):
        return (
            f"{share} reply was an ERR (the first: {sample!r}): the server refused the "
            "requests; its log says why"
        )
    return (
        f"{share} reply was wrong (the first: {sample!r}): is {where} a count port? "
        "(--protocol range for the server's --range-port)"
    )


def write_json(path: str, result: Result, settings: dict[str, Any]) -> None:
    """
    Write the whole result, the settings and the per-second timeline.
    """
    document = {"settings": settings, **result.summary()}
    Path(path).write_text(json.dumps(document, indent=1, ensure_ascii=False) + "\n")


def plot(path: str, result: Result, title: str) -> None:
    """
    Draw throughput, failed requests and latency over time (L{draw}) into a
    PNG file.

    @raise PlotUnavailable: when matplotlib is missing.
    """
    check_plot()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure = draw(result, title)
    figure.savefig(path, dpi=100)
    plt.close(figure)


def draw(result: Result, title: str) -> Any:
    """
    The figure of a run: throughput and failed requests above, latency
    below, over time.

    The throughput axis leaves headroom above its peak, so an open-loop
    run's flat rate is not drawn on the frame; failed requests (errors and
    wrong replies, in every second of the run, the drain at the end
    included) have an axis of their own, so that a handful among
    thousands of replies per second still shows; legends stand beside
    the plots, never on a curve.

    @return: a matplotlib C{Figure} (C{plt.close} it when done).
    """
    import matplotlib.pyplot as plt

    everything = result.timeline_summary()
    # A last second shorter than 0.2 s (the drain at the end) says little
    # about throughput or latency; its failures still count.
    timeline = [e for e in everything if e["length"] >= 0.2]
    # Each second's figures stand at its middle, where its bar of failures is.
    seconds = [entry["second"] + entry["length"] / 2 for entry in timeline]
    figure, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(10, 6), layout="constrained")
    throughput = [e["throughput"] for e in timeline]
    top.plot(seconds, throughput, label="correct replies/s")
    top.set_ylabel("correct replies per second")
    top.set_ylim(0, max([*throughput, 1.0]) * HEADROOM)
    handles, labels = top.get_legend_handles_labels()
    failed = [e["errors"] + e["wrong"] for e in everything]
    if any(failed):
        right = top.twinx()
        right.bar(
            [e["second"] + e["length"] / 2 for e in everything],
            failed,
            width=[max(e["length"], 0.05) * 0.8 for e in everything],
            color="tab:red",
            alpha=0.4,
            label="failed requests (errors + wrong)",
        )
        # The throughput line in front of the bars.
        top.set_zorder(right.get_zorder() + 1)
        top.patch.set_visible(False)
        right.set_ylabel("failed requests", color="tab:red")
        right.set_ylim(0, max(failed) * HEADROOM)
        more, names = right.get_legend_handles_labels()
        handles, labels = handles + more, labels + names
    # Beside the plots: past the failures' axis labels when there are some.
    beside = (1.1 if any(failed) else 1.02, 1.0)
    top.legend(handles, labels, loc="upper left", bbox_to_anchor=beside, borderaxespad=0)
    top.set_title(title, fontsize=9)
    for key, style in (("p50", "-"), ("p99", "--"), ("max", ":")):
        bottom.plot(seconds, [max(e[key], 1e-3) for e in timeline], style, label=key)
    bottom.set_yscale("log")
    bottom.set_ylabel("latency (ms)")
    bottom.set_xlabel("second of the run")
    bottom.legend(loc="upper left", bbox_to_anchor=beside, borderaxespad=0)
    return figure


#: How far above its peak an axis of the plot reaches.
HEADROOM = 1.2
