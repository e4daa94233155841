# -*- test-case-name: tests.unit.test_top -*-
"""
What C{primecount top} shows: the hosts' figures assembled into a
L{Snapshot} (L{build}), drawn as text tables (L{render}, the same for the
live view and C{--once}) or given as JSON (L{as_json}).

The tables fit an 80-column terminal: one of requests (rates, latency,
connections, the pool), one of the journal and the process (commit
latency, batch size, state, restarts, uptime), then the errors by outcome
and the hosts that are down. A server with C{--workers N} has a row per
worker under its own.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from primecount.cli.texts import duration_text
from primecount.cli.top.figures import Figures, JournalState, host_figures, total, worker_figures
from primecount.cli.top.scrape import Scrape


@dataclass(frozen=True)
class HostState:
    """
    What is known of one host now.

    @ivar url: its metrics URL.
    @ivar name: how the view names it.
    @ivar old: the scrape before L{new}, if any.
    @ivar new: the latest scrape, if the latest attempt succeeded.
    @ivar error: why the latest attempt failed, if it did.
    @ivar down_since: when it began to fail (seconds since the epoch).
    """

    url: str
    name: str
    old: Scrape | None = None
    new: Scrape | None = None
    error: str | None = None
    down_since: float | None = None


@dataclass(frozen=True)
class HostView:
    """
    One host as the view shows it.

    @ivar figures: its figures, C{None} when it is down (or not scraped yet).
    @ivar error: why it is down; C{None} when it is up, or not scraped yet.
    @ivar workers: the figures of each of its worker processes, by pid.
    """

    url: str
    name: str
    figures: Figures | None
    workers: dict[str, Figures] = field(default_factory=dict)
    error: str | None = None
    down_since: float | None = None

    @property
    def up(self) -> bool:
        """
        Whether its latest scrape succeeded.
        """
        return self.figures is not None


@dataclass(frozen=True)
class Snapshot:
    """
    Every host, and all of them together, at one moment.

    @ivar taken: when, seconds since the epoch.
    @ivar interval: the seconds asked for between scrapes.
    @ivar total: the sum of the hosts that are up.
    """

    taken: float
    interval: float
    hosts: list[HostView]
    total: Figures


def build(states: list[HostState], taken: float, interval: float) -> Snapshot:
    """
    The snapshot of some hosts' latest scrapes.
    """
    hosts = []
    for state in states:
        if state.new is None:
            hosts.append(
                HostView(
                    state.url,
                    state.name,
                    None,
                    error=state.error,
                    down_since=state.down_since,
                )
            )
            continue
        hosts.append(
            HostView(
                state.url,
                state.name,
                host_figures(state.old, state.new),
                worker_figures(state.old, state.new),
            )
        )
    figures = [h.figures for h in hosts if h.figures is not None]
    return Snapshot(taken, interval, hosts, total(figures))


def _desc(get: Callable[[Figures], float | None]) -> Callable[[HostView], tuple[float, str]]:
    """
    A sort key: hosts with the largest value first, those without one next.
    """

    def key(host: HostView) -> tuple[float, str]:
        value = None if host.figures is None else get(host.figures)
        return (-value if value is not None else math.inf, host.name)

    return key


#: The orders of the hosts: name -> (key pressed, sort key).
SORTS: dict[str, tuple[str, Callable[[HostView], Any]]] = {
    "throughput": ("t", _desc(lambda f: f.rate)),
    "errors": ("e", _desc(lambda f: f.errors)),
    "latency": ("l", _desc(lambda f: f.p99)),
    "name": ("n", lambda host: (0, host.name)),
}


def ordered(hosts: list[HostView], sort: str) -> list[HostView]:
    """
    The hosts in the order C{sort} names (L{SORTS}); hosts that are down
    come last.
    """
    key = SORTS[sort][1]
    return sorted(hosts, key=lambda h: (not h.up, key(h)))


# -- numbers as text ----------------------------------------------------------

NONE = "-"


def rate_text(value: float | None) -> str:
    """
    Requests per second: C{12,345}, C{98.5}, C{0}.
    """
    if value is None:
        return NONE
    if value == 0:
        return "0"
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:.1f}"


def seconds_text(value: float | None) -> str:
    """
    A latency: C{0.41ms}, C{12.3ms}, C{1.20s} (ASCII, for any terminal).
    """
    if value is None:
        return NONE
    if value < 0.01:
        return f"{value * 1000:.2f}ms"
    if value < 1:
        return f"{value * 1000:.1f}ms"
    return f"{value:.2f}s"


def age_text(value: float | None) -> str:
    """
    A duration: C{45s}, C{12m03s}, C{3h02m}, C{4d03h}.
    """
    return NONE if value is None else duration_text(value)


def count_text(value: float | None) -> str:
    """
    A level or a total: C{1,024}.
    """
    return NONE if value is None else f"{value:,.0f}"


def _clock(when: float) -> str:
    return datetime.fromtimestamp(when, UTC).strftime("%H:%M:%S")


def journal_text(state: JournalState | None) -> str:
    """
    C{writing}, or C{unavailable 12s} (with how many journals fail, when
    not all of several do).
    """
    if state is None:
        return NONE
    if state.since is None:
        return "writing"
    some = f" ({state.failing}/{state.of})" if state.of > 1 and state.failing < state.of else ""
    return f"unavailable {age_text(state.age)}{some}"


# -- tables -------------------------------------------------------------------


def _status(host: HostView) -> str:
    """
    What a host without figures is: down, or not scraped yet.
    """
    return "down" if host.error is not None else "waiting"


def _requests_row(name: str, f: Figures | None, status: str = "down") -> list[str]:
    if f is None:
        return [name, status, "", "", "", "", "", ""]
    return [
        name,
        rate_text(f.rate),
        rate_text(f.errors),
        seconds_text(f.p50),
        seconds_text(f.p99),
        count_text(f.connections),
        count_text(f.busy),
        count_text(f.queue),
    ]


def _journal_row(name: str, f: Figures | None, status: str = "down") -> list[str]:
    if f is None:
        return [name, status, "", "", "", ""]
    return [
        name,
        journal_text(f.journal),
        seconds_text(f.commit_p99),
        NONE if f.batch is None else f"{f.batch:.1f}",
        count_text(f.restarts),
        age_text(f.uptime),
    ]


def _errors_text(outcomes: Mapping[str, float] | None) -> str:
    if not outcomes:
        return ""
    errors = sorted(((v, k) for k, v in outcomes.items() if k != "ok" and v > 0), reverse=True)
    return ", ".join(f"{k} {rate_text(v)}/s" for v, k in errors)


def _worker_name(pid: str) -> str:
    return f"  pid {pid}"


def render(snapshot: Snapshot, sort: str, *, keys: bool = False) -> Any:
    """
    The snapshot as a rich renderable: a title line, the requests table,
    the journal table, the errors by outcome and the hosts down.

    @param sort: the order of the hosts (a key of L{SORTS}).
    @param keys: whether to say which keys do what (the live view).
    """
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    hosts = ordered(snapshot.hosts, sort)
    several = len(hosts) > 1
    up = sum(h.up for h in hosts)
    title = Text(
        f"primecount top  {_clock(snapshot.taken)} UTC  {len(hosts)} host"
        f"{'s' if several else ''}, {up} up  every {snapshot.interval:g}s  by {sort}",
        style="bold",
    )

    def table(*headers: str) -> Table:
        t = Table(box=None, padding=(0, 1), pad_edge=False, show_edge=False, header_style="bold")
        t.add_column(headers[0], no_wrap=True, overflow="ellipsis", max_width=24)
        for header in headers[1:]:
            left = header == "JOURNAL"
            t.add_column(header, justify="left" if left else "right", no_wrap=True)
        return t

    requests = table("HOST", "REQ/S", "ERR/S", "P50", "P99", "CONN", "BUSY", "QUEUE")
    journal = table("HOST", "JOURNAL", "COMMIT P99", "BATCH", "RESTARTS", "UPTIME")
    for host in hosts:
        style = "red" if host.error is not None else None if host.up else "dim"
        if host.figures is not None and host.figures.errors:
            style = "yellow"
        requests.add_row(*_requests_row(host.name, host.figures, _status(host)), style=style)
        journal_style = "red" if host.error is not None or _failing(host.figures) else None
        journal.add_row(*_journal_row(host.name, host.figures, _status(host)), style=journal_style)
        for pid, worker in sorted(host.workers.items(), key=lambda item: int(item[0])):
            requests.add_row(
                _worker_name(pid),
                rate_text(worker.rate),
                "",
                "",
                "",
                count_text(worker.connections),
                "",
                "",
                style="dim",
            )
            journal.add_row(
                _worker_name(pid),
                journal_text(worker.journal),
                "",
                "",
                "",
                age_text(worker.uptime),
                style="red" if _failing(worker) else "dim",
            )
    if several:
        requests.add_row(*_requests_row("TOTAL", snapshot.total), style="bold")
        row = _journal_row("TOTAL", snapshot.total)
        row[-1] = ""
        journal.add_row(*row, style="bold")
    parts: list[Any] = [title, Text(""), requests, Text(""), journal]
    lines = []
    for host in hosts:
        if host.figures is None:
            if host.error is None:
                continue
            since = "" if host.down_since is None else f" since {_clock(host.down_since)}"
            lines.append(Text(f"{host.name} down{since}: {host.error}", style="red"))
            continue
        state = host.figures.journal
        if state is not None and state.since is not None:
            some = f", {state.failing} of {state.of} journals" if state.of > 1 else ""
            lines.append(
                Text(
                    f"{host.name} journal unavailable since {_clock(state.since)} "
                    f"({age_text(state.age)}{some})",
                    style="red",
                )
            )
        text = _errors_text(host.figures.outcomes)
        if text:
            lines.append(Text(f"{host.name} errors: {text}", style="yellow"))
    text = _errors_text(snapshot.total.outcomes) if several else ""
    if text:
        lines.append(Text(f"TOTAL errors: {text}", style="yellow"))
    if lines:
        parts.append(Text(""))
        parts.extend(lines)
    if keys:
        parts.append(Text(""))
        parts.append(Text("q quit   sort: t throughput  e errors  l latency  n name", style="dim"))
    return Group(*parts)


def as_text(snapshot: Snapshot, sort: str, width: int = 80) -> str:
    """
    The snapshot as plain text lines of at most C{width} columns, without
    colours or trailing blanks (C{--once}).
    """
    import io

    from rich.console import Console

    console = Console(
        file=io.StringIO(), width=width, color_system=None, highlight=False, soft_wrap=False
    )
    with console.capture() as captured:
        console.print(render(snapshot, sort))
    return "".join(line.rstrip() + "\n" for line in captured.get().splitlines())


def _failing(figures: Figures | None) -> bool:
    return figures is not None and figures.journal is not None and figures.journal.since is not None


# -- JSON -----------------------------------------------------------------------


def _journal_json(state: JournalState | None) -> dict[str, Any] | None:
    if state is None:
        return None
    return {
        "writing": state.since is None,
        "unavailable_since": state.since,
        "unavailable_seconds": state.age,
        "failing": state.failing,
        "journals": state.of,
    }


def figures_json(f: Figures) -> dict[str, Any]:
    """
    One host's, worker's or the total's figures as JSON: rates per second,
    durations in seconds, C{None} (C{null}) where unknown.
    """
    return {
        "requests_per_second": f.rate,
        "errors_per_second": f.errors,
        "outcomes_per_second": f.outcomes,
        "latency_p50_seconds": f.p50,
        "latency_p99_seconds": f.p99,
        "open_connections": f.connections,
        "pool_busy_threads": f.busy,
        "pool_queue": f.queue,
        "journal_commit_p99_seconds": f.commit_p99,
        "journal_batch_size": f.batch,
        "journal": _journal_json(f.journal),
        "worker_restarts": f.restarts,
        "uptime_seconds": f.uptime,
    }


def as_json(snapshot: Snapshot) -> dict[str, Any]:
    """
    The snapshot for machines (C{--json}).
    """
    hosts = []
    for host in snapshot.hosts:
        entry: dict[str, Any] = {"url": host.url, "name": host.name, "up": host.up}
        if host.figures is None:
            entry["error"] = host.error
            entry["down_since"] = host.down_since
        else:
            entry.update(figures_json(host.figures))
            entry["workers"] = [
                {
                    "pid": int(pid),
                    "requests_per_second": w.rate,
                    "open_connections": w.connections,
                    "journal": _journal_json(w.journal),
                    "uptime_seconds": w.uptime,
                }
                for pid, w in sorted(host.workers.items(), key=lambda item: int(item[0]))
            ]
        hosts.append(entry)
    return {
        "time": datetime.fromtimestamp(snapshot.taken, UTC).isoformat().replace("+00:00", "Z"),
        "interval_seconds": snapshot.interval,
        "hosts": hosts,
        "total": figures_json(snapshot.total),
    }
