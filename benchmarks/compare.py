# -*- test-case-name: tests.system.test_compare -*-
"""
Run primecount and the baseline servers side by side under the same load,
and check the targets of C{benchmarks/targets.toml}: a markdown table of
medians on stdout (also written to C{benchmarks/results/}, with a JSON file
and a PNG), then PASS or FAIL for each target; exit status 1 when one fails.

For example::

    python -m benchmarks.compare --workload original,persistent --rounds 3 --duration 4

How it measures (generator, rounds, placements, headroom) is in
C{benchmarks/RESULTS.md}; C{--help} gives every option.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.harness import (
    HERE,
    BenchmarkError,
    Generator,
    Servers,
    build_c,
    c_compiler,
    cpu_seconds,
    machine,
    machine_busy_seconds,
    patroni_cluster,
    pinned,
    postgresql_database,
    reported,
    variant_code,
)
from primecount.core.wording import plural

#: Every server the comparison knows, primecount first.
SERVERS = (
    "primecount",
    "primecount_read",
    "original_threadpool",
    "select_loop",
    "asyncio_server",
    "uvloop_server",
    "c_epoll",
)


@dataclass(frozen=True)
class Workload:
    """
    One kind of load: the generator options and who can take it.
    """

    name: str
    description: str
    options: tuple[str, ...]
    one_message_servers_too: bool = False
    framing: str = "line"


WORKLOADS = {
    w.name: w
    for w in (
        Workload(
            "original",
            "one message per connection, 10 clients",
            ("--clients", "10", "--connection-per-request"),
            one_message_servers_too=True,
        ),
        Workload(
            "original_read",
            "the original's clients: no newline, read to close, 10 clients",
            ("--clients", "10", "--framing", "read"),
            one_message_servers_too=True,
            framing="read",
        ),
        Workload("persistent", "persistent, 100 clients", ("--clients", "100")),
        Workload("active10", "persistent, 10 clients", ("--clients", "10")),
        Workload(
            "held",
            "persistent, 10 clients + 1000 held connections",
            ("--clients", "10", "--hold", "1000"),
        ),
    )
}

#: Names workloads and servers had before, still accepted (with a note):
#: the original server was called the seed, held connections idle ones.
FORMER_NAMES = {
    "seed": "original",
    "seed_read": "original_read",
    "idle": "held",
    "seed_threadpool": "original_threadpool",
}

#: Servers that close after one message and cannot hold connections.
ONE_MESSAGE_SERVERS = frozenset({"original_threadpool"})

#: primecount servers started with C{--framing read}: their clients send no
#: newline, so they only take the read-framing workloads.
READ_SERVERS = {"primecount_read": ["--framing", "read"]}

#: The variants C{--postgresql} adds: primecount journalling to PostgreSQL at
#: two durabilities (the C{--journal} URL is appended when it is known).
POSTGRESQL_VARIANTS = {
    "pg_standby": ["--journal-durability", "standby"],
    "pg_process": ["--journal-durability", "process"],
}

#: C{--postgresql patroni}: a throwaway Patroni cluster, not a URL.
PATRONI = "patroni"


def postgresql_url(wanted: str, stack: contextlib.ExitStack) -> str:
    """
    The journal URL of C{--postgresql}: C{wanted} itself, or a database on
    a throwaway cluster (C{""}: one node with C{fsync=off};
    L{PATRONI}: two Patroni nodes with a synchronous standby and
    PostgreSQL's own settings) that C{stack} removes afterwards.
    """
    if wanted == PATRONI:
        cluster = stack.enter_context(patroni_cluster(parameters={}))
        database = cluster.create_database()
        return cluster.url(
            user="primecount", database=database, query="target_session_attrs=read-write"
        )
    return wanted or stack.enter_context(postgresql_database())


#: The targets checked after every run, and the generator headroom.
TARGETS_FILE = HERE / "targets.toml"


@dataclass
class Measurement:
    """
    One generator run against one server.

    C{server_cpu} and C{generator_cpu} are the CPU time each used during
    the run as a fraction of the run's wall-clock time (1.0 = one core
    busy all the time): a figure near the number of cores it was pinned to
    says that side was the bottleneck. C{other_cpu} is what the rest of
    the machine used meanwhile: a run with much of it was disturbed.
    C{generator_us} is the generator's CPU time per request, in
    microseconds.
    """

    throughput: float
    p50: float
    p99: float
    errors: int
    wrong: int
    server_cpu: float
    generator_cpu: float
    other_cpu: float
    generator_us: float = 0.0

    @property
    def server_us(self) -> float:
        """
        The server's CPU time per answered request, in microseconds: what
        one request costs it, whatever the run's throughput.
        """
        return self.server_cpu / self.throughput * 1e6 if self.throughput else 0.0


@dataclass
class Cell:
    """
    Every round's measurement of one server under one workload.
    """

    runs: list[Measurement] = field(default_factory=list)

    def median(self, attribute: str) -> float:
        """
        The median of one measured quantity over the rounds.
        """
        values = [getattr(run, attribute) for run in self.runs]
        return statistics.median(values) if values else 0.0


def run_bench(
    port: int,
    server_pid: int,
    workload: Workload,
    duration: float,
    processes: int,
    cpus: set[int] | None,
    output: Path,
    generator: Generator | None = None,
) -> Measurement:
    """
    Run the load generator once and read its JSON result.
    """
    generator = generator or Generator("python")
    command = generator.command(port, workload.options, duration, processes, output)
    server_before = cpu_seconds(server_pid)
    busy_before = machine_busy_seconds()
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    try:
        completed = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=duration + generator.settle + 90,
            preexec_fn=pinned(cpus),
        )
    except subprocess.TimeoutExpired:
        raise BenchmarkError(f"the generator did not finish: {shlex.join(command)}") from None
    children_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    server_used = cpu_seconds(server_pid) - server_before
    busy = machine_busy_seconds() - busy_before
    generator_used = (children_after.ru_utime - children_before.ru_utime) + (
        children_after.ru_stime - children_before.ru_stime
    )
    if completed.returncode not in (0, 3):
        message = completed.stderr.strip().splitlines()[-1:] or ["no message"]
        raise BenchmarkError(f"the generator failed: {message[0]}")
    document = json.loads(output.read_text())
    wall = document["elapsed"] or (time.monotonic() - started)
    total_wall = max(wall, time.monotonic() - started)
    # The settle time's requests (verified, not timed) cost CPU too.
    loaded_wall = min(total_wall, wall + generator.settle)
    resolved = document.get("generator", {}).get("resolved", document["requests"])
    return Measurement(
        other_cpu=max(0.0, busy - server_used - generator_used) / total_wall,
        server_cpu=server_used / loaded_wall,
        generator_us=generator_used / resolved * 1e6 if resolved else 0.0,
        # The generator also spends time starting up; charge it all.
        generator_cpu=generator_used / total_wall,
        throughput=document["throughput"],
        p50=document["latency_ms"]["p50"],
        p99=document["latency_ms"]["p99"],
        errors=document["errors"]["total"],
        wrong=document["wrong"],
    )


def takes_part(server: str, workload: Workload) -> bool:
    """
    Whether C{server} can serve C{workload} at all.
    """
    if workload.framing == "read":
        return server in ONE_MESSAGE_SERVERS or server in READ_SERVERS
    if server in READ_SERVERS:
        return False
    return workload.one_message_servers_too or server not in ONE_MESSAGE_SERVERS


def paired_ratio(cells: dict[str, Cell], numerator: str, denominator: str) -> float:
    """
    The median over rounds of C{numerator}'s throughput divided by
    C{denominator}'s, measured in the same round.
    """
    ratios = [
        a.throughput / b.throughput
        for a, b in zip(cells[numerator].runs, cells[denominator].runs, strict=False)
        if b.throughput > 0
    ]
    return statistics.median(ratios) if ratios else 0.0


@dataclass(frozen=True)
class Target:
    """
    One goal of L{TARGETS_FILE}: C{server} on C{workload} divided by
    C{reference_server} on C{reference_workload} (median of the per-round
    ratios) must reach C{bound}.

    @ivar what: what the goal is about, for the report.
    """

    what: str
    workload: str
    server: str
    reference_workload: str
    reference_server: str
    bound: float

    @property
    def text(self) -> str:
        """
        The goal in one line, as the report prints it.
        """
        if self.workload == self.reference_workload:
            ratio = f"{self.server} >= {self.bound:g}x {self.reference_server} on {self.workload}"
        else:
            ratio = (
                f"{self.server} on {self.workload} >= {self.bound:g}x "
                f"{self.reference_server} on {self.reference_workload}"
            )
        return f"{ratio} ({self.what})"


def load_targets(path: Path = TARGETS_FILE) -> tuple[tuple[Target, ...], float]:
    """
    The targets in C{path} and the generator headroom it asks for.

    @raise BenchmarkError: in one line, when the file cannot be read or a
        target is malformed.
    """
    import tomllib

    try:
        document = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise BenchmarkError(f"{path}: {e}") from None
    targets = []
    for n, entry in enumerate(document.get("target", []), 1):
        try:
            workload = entry["workload"]
            target = Target(
                what=str(entry["what"]),
                workload=workload,
                server=str(entry["server"]),
                reference_workload=entry.get("reference_workload", workload),
                reference_server=str(entry["reference_server"]),
                bound=float(entry["bound"]),
            )
        except KeyError as e:
            raise BenchmarkError(f"{path}: target {n} has no {e.args[0]}") from None
        except (TypeError, ValueError) as e:
            raise BenchmarkError(f"{path}: target {n}: {e}") from None
        unknown = {target.workload, target.reference_workload} - set(WORKLOADS)
        if unknown:
            raise BenchmarkError(f"{path}: target {n}: unknown workload {', '.join(unknown)}")
        targets.append(target)
    try:
        headroom = float(document.get("headroom", 1.5))
    except (TypeError, ValueError):
        raise BenchmarkError(f"{path}: headroom must be a number") from None
    return tuple(targets), headroom


def headroom(
    results: dict[str, dict[str, Cell]],
    targets: tuple[Target, ...],
    needed: float,
) -> list[tuple[str, float, bool]]:
    """
    The generator-headroom checks: for each target of primecount against a
    baseline, C{c_epoll}'s throughput divided by the throughput the target
    asks of primecount (bound x the baseline's, per round; median), which
    must reach C{needed}.
    """
    outcomes = []
    for target in targets:
        if target.server != "primecount" or target.reference_server in ("primecount", "c_epoll"):
            continue
        cells = results.get(target.workload, {})
        reference = results.get(target.reference_workload, {}).get(target.reference_server)
        limit = cells.get("c_epoll")
        if reference is None or limit is None or not reference.runs or not limit.runs:
            continue
        ratios = [
            c.throughput / (target.bound * r.throughput)
            for c, r in zip(limit.runs, reference.runs, strict=False)
            if r.throughput > 0
        ]
        if not ratios:
            continue
        ratio = statistics.median(ratios)
        goal = target.bound * reference.median("throughput")
        text = (
            f"generator headroom: c_epoll {limit.median('throughput'):,.0f} req/s = "
            f"{ratio:.2f}x primecount's target ({goal:,.0f} req/s, {target.bound:g}x "
            f"{target.reference_server}) on {target.workload}; needs >= {needed:g}x"
        )
        outcomes.append((text, ratio, ratio >= needed))
    return outcomes


def target_ratio(results: dict[str, dict[str, Cell]], target: Target) -> float | None:
    """
    The measured ratio for C{target}, or C{None} when it was not measured.
    """
    try:
        a = results[target.workload][target.server]
        b = results[target.reference_workload][target.reference_server]
    except KeyError:
        return None
    if not a.runs or not b.runs:
        return None
    cells = {"a": a, "b": b}
    return paired_ratio(cells, "a", "b")


def markdown(
    results: dict[str, dict[str, Cell]],
    header: str,
    targets: tuple[Target, ...],
    needed: float,
) -> tuple[str, list[tuple[str, float, bool]]]:
    """
    The results as a markdown document, and the outcomes of C{targets}
    and of the generator headroom (C{needed}).
    """
    lines = [header, ""]
    lines.append(
        "| workload | server | req/s (median) | min-max | vs primecount "
        "| p50 ms | p99 ms | errors | wrong | server CPU | server µs/request "
        "| generator CPU | generator µs/request | other CPU |"
    )
    lines.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for workload, cells in results.items():
        # primecount, or on the read-framing workload primecount_read.
        ours = next((s for s in ("primecount", *READ_SERVERS) if s in cells), None)
        for server, cell in cells.items():
            if not cell.runs:
                continue
            values = [run.throughput for run in cell.runs]
            if server == ours or ours is None:
                versus = "1.00" if server == ours else "-"
            else:
                ratio = paired_ratio(cells, ours, server)
                versus = f"{ratio:.2f}x" if ratio else "-"
            lines.append(
                f"| {workload} | {server} | {cell.median('throughput'):,.0f} "
                f"| {min(values):,.0f}-{max(values):,.0f} | {versus} "
                f"| {cell.median('p50'):.2f} | {cell.median('p99'):.2f} "
                f"| {sum(r.errors for r in cell.runs)} "
                f"| {sum(r.wrong for r in cell.runs)} "
                f"| {cell.median('server_cpu'):.0%} "
                f"| {cell.median('server_us'):.1f} "
                f"| {cell.median('generator_cpu'):.0%} "
                f"| {cell.median('generator_us'):.1f} "
                f"| {cell.median('other_cpu'):.0%} |"
            )
    lines.append("")
    lines.append(
        "\"vs primecount\": primecount's throughput divided by this server's, "
        "median of the per-round ratios. CPU: median share of one core used "
        "during a run; a side near 100 % (when pinned to one CPU) was the "
        "bottleneck, so a server measured against a generator near 100 % is "
        "at least that fast. Server µs/request: the server's CPU time per "
        "answered request (for `--workers` variants only the supervisor's "
        "share is counted). Generator µs/request: the load generator's CPU "
        "time per request. Other CPU: what the rest of the machine used "
        "meanwhile (other processes disturb a run)."
    )
    outcomes = []
    target_lines = []
    for target in targets:
        measured = target_ratio(results, target)
        if measured is None:
            continue
        passed = measured >= target.bound
        outcomes.append((target.text, measured, passed))
        target_lines.append(f"- {'PASS' if passed else 'FAIL'}: {target.text}: {measured:.2f}x")
    if target_lines:
        lines += ["", "Targets:", "", *target_lines]
    checks = headroom(results, targets, needed)
    if checks:
        lines += ["", *(f"- {'PASS' if ok else 'FAIL'}: {text}" for text, _r, ok in checks)]
        outcomes += checks
    return "\n".join(lines) + "\n", outcomes


#: In a C{--markdown} file holding both markers, only the text between
#: them is replaced.
BEGIN, END = "<!-- compare:begin -->", "<!-- compare:end -->"


def write_markdown(path: Path, table: str) -> None:
    """
    Put C{table} into C{path}: between the L{BEGIN} and L{END} marker lines
    when the file has them, else as the whole file. A marker counts only
    as a line of its own: prose that names one (as C{RESULTS.md}'s does)
    is left alone.
    """
    lines = path.read_text().splitlines(keepends=True) if path.exists() else []
    marks = [line.strip() for line in lines]
    if BEGIN in marks and END in marks[marks.index(BEGIN) :]:
        begin = marks.index(BEGIN)
        end = marks.index(END, begin)
        head, tail = "".join(lines[: begin + 1]), "".join(lines[end:])
        path.write_text(f"{head}{table.rstrip(chr(10))}\n{tail}")
    else:
        path.write_text(table)


def draw(path: Path, results: dict[str, dict[str, Cell]], title: str) -> bool:
    """
    A bar chart of median throughputs (with the min-max range), one panel
    per workload; False when matplotlib is missing.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    measured = {w: c for w, c in results.items() if any(x.runs for x in c.values())}
    figure, axes = plt.subplots(1, len(measured), figsize=(4.2 * len(measured), 4), squeeze=False)
    for axis, (workload, cells) in zip(axes[0], measured.items(), strict=True):
        names = [name for name, cell in cells.items() if cell.runs]
        medians = [cells[name].median("throughput") for name in names]
        lows = [
            m - min(r.throughput for r in cells[n].runs)
            for n, m in zip(names, medians, strict=True)
        ]
        highs = [
            max(r.throughput for r in cells[n].runs) - m
            for n, m in zip(names, medians, strict=True)
        ]
        colours = ["tab:green" if n == "primecount" else "tab:gray" for n in names]
        axis.bar(names, medians, yerr=[lows, highs], color=colours, capsize=3)
        axis.set_title(f"{workload}: {WORKLOADS[workload].description}", fontsize=8)
        axis.set_ylabel("correct replies per second")
        axis.tick_params(axis="x", labelrotation=30, labelsize=7)
    figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return True


def cpu_plan(pin: bool) -> tuple[set[int] | None, set[int] | None]:
    """
    The CPUs for the servers and for the generator, or C{None} for no pinning.
    """
    if not pin:
        return None, None
    available = sorted(os.sched_getaffinity(0))
    if len(available) < 2:
        return None, None
    return {available[0]}, set(available[1:])


def parse_list(text: str, known: tuple[str, ...] | list[str], what: str) -> list[str]:
    """
    A comma-separated list of names, each one of C{known} (or C{all}); a
    name of L{FORMER_NAMES} is taken for its new one, with a note.
    """
    if text == "all":
        return list(known)
    names = [name.strip() for name in text.split(",") if name.strip()]
    for n, name in enumerate(names):
        if name in FORMER_NAMES and FORMER_NAMES[name] in known:
            names[n] = FORMER_NAMES[name]
            print(f"compare: note: {what} {name} is now called {names[n]}", file=sys.stderr)
    unknown = [name for name in names if name not in known]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown {what}: {', '.join(unknown) or text!r} (known: {', '.join(known)})"
        )
    return names


def variant(text: str) -> tuple[str, list[str]]:
    """
    C{NAME=ARGS}: a primecount run under another name with extra options.
    """
    name, sep, options = text.partition("=")
    if not sep or not name or name in SERVERS or name in POSTGRESQL_VARIANTS:
        raise argparse.ArgumentTypeError(f"expected NAME=OPTIONS with a new name, not {text!r}")
    return name, shlex.split(options)


def arguments(argv: list[str] | None) -> argparse.Namespace:
    """
    Parse the command line.
    """
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.compare",
        description="Run primecount and the baselines side by side; check the targets.",
        epilog="Former names still accepted: "
        + ", ".join(f"{old} (now {new})" for old, new in FORMER_NAMES.items())
        + ".",
    )
    parser.add_argument(
        "--workload",
        "--workloads",
        dest="workloads",
        default="all",
        type=lambda t: parse_list(t, list(WORKLOADS), "workload"),
        help=f"comma-separated: {', '.join(WORKLOADS)} (default all)",
    )
    parser.add_argument(
        "--servers",
        default="all",
        type=lambda t: parse_list(t, SERVERS, "server"),
        help=f"comma-separated: {', '.join(SERVERS)} (default all)",
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds (default 3)")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per run (default 5)")
    parser.add_argument(
        "--generator-processes",
        type=int,
        default=1,
        help="threads (cload) or processes (Python generator) of each generator run (default 1)",
    )
    parser.add_argument(
        "--variant",
        dest="variants",
        action="append",
        default=[],
        metavar="NAME=ARGS",
        type=variant,
        help="also run primecount with these extra options, under this name "
        "(repeatable), e.g. --variant nojournal='--journal none' "
        "--variant workers2='--workers 2'",
    )
    parser.add_argument(
        "--variant-code",
        dest="variant_code",
        action="append",
        default=[],
        metavar="NAME=DIR",
        type=variant_code,
        help="run variant NAME with the primecount package found in DIR (a "
        "checkout of another revision, e.g. from git worktree add), to "
        "compare code versions side by side; a NAME no --variant gives runs "
        "with primecount's defaults",
    )
    parser.add_argument(
        "--postgresql",
        nargs="?",
        const="",
        metavar="URL",
        help="also run primecount with its journal on PostgreSQL, as variants pg_standby "
        "(--journal-durability standby) and pg_process (process): on a throwaway cluster "
        "(fsync off, no standby: CPU and round trips only); with 'patroni', on a throwaway "
        "two-node Patroni cluster (a synchronous standby, PostgreSQL's own settings, fsync "
        "on: what the durability costs); or in the database at URL (default: neither)",
    )
    parser.add_argument(
        "--primecount-args",
        default="",
        help='extra twistd primecount options, e.g. --primecount-args="--journal none"',
    )
    parser.add_argument(
        "--placement",
        "--placements",
        dest="placements",
        default="pinned,unpinned",
        type=lambda t: parse_list(t, PLACEMENTS, "placement"),
        help="comma-separated: pinned (servers on the first CPU, the generator on the "
        "others), unpinned (as users run them); default both, one after the other",
    )
    parser.add_argument("--no-pin", action="store_true", help="the same as --placement unpinned")
    parser.add_argument(
        "--generator",
        choices=("c", "python"),
        default="c",
        help="c (default): cload, built with cc at run time; python: primecount.cli.bench "
        "(slower per request: the fastest servers are then measured against it)",
    )
    parser.add_argument(
        "--settle",
        type=float,
        default=1.0,
        help="seconds of verified, untimed load before each run (C generator; default 1)",
    )
    parser.add_argument(
        "--results", default=str(HERE / "results"), help="directory for the outputs"
    )
    parser.add_argument(
        "--markdown",
        help="also write the table to this file (between its <!-- compare:begin --> and "
        "<!-- compare:end --> lines when it has them) and the PNG beside it",
    )
    parser.add_argument(
        "--targets",
        type=Path,
        default=TARGETS_FILE,
        help="the targets to check (default benchmarks/targets.toml)",
    )
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    named = {name for name, _ in args.variants}
    if args.postgresql is not None:
        named |= set(POSTGRESQL_VARIANTS)
    for name, _ in args.variant_code:
        if name in SERVERS:
            parser.error(f"--variant-code wants a new name for the variant, not the server {name}")
        # Another revision with the defaults: --variant-code alone says it.
        if name not in named:
            args.variants.append((name, []))
            named.add(name)
    if args.rounds < 1 or args.duration <= 0 or args.generator_processes < 1:
        parser.error("--rounds, --duration and --generator-processes must be positive")
    if args.settle < 0:
        parser.error("--settle must not be negative")
    if args.no_pin:
        args.placements = ["unpinned"]
    return args


#: Where the servers and the generator run: C{pinned} (servers on the
#: first CPU, the generator on the others) or C{unpinned} (wherever the
#: kernel puts them, as users run them).
PLACEMENTS = ("pinned", "unpinned")


def c_setup(
    args: argparse.Namespace, names: list[str], directory: Path
) -> tuple[Generator, dict[str, Path], list[str]]:
    """
    Build the C programs the run needs into C{directory}: the generator
    (unless C{--generator python}) and the C{c_epoll} server when selected.

    @return: the generator, the built servers by name, and the server
        names left (C{c_epoll} is left out, with a warning, when the
        Python generator was asked for and there is no compiler).
    @raise BenchmarkError: when a needed program cannot be built.
    """
    wanted = ["c_epoll"] if "c_epoll" in names else []
    if args.generator == "python":
        print(
            "compare: warning: the Python generator (primecount.cli.bench) costs 10-80 µs of "
            "CPU per request and limits the fastest servers; their figures are lower bounds",
            file=sys.stderr,
        )
        if wanted and c_compiler() is None:
            print("compare: warning: no C compiler, c_epoll left out", file=sys.stderr)
            names, wanted = [n for n in names if n != "c_epoll"], []
    else:
        wanted.insert(0, "cload")
    programs = build_c(directory, wanted) if wanted else {}
    if args.generator == "python":
        generator = Generator("python")
    else:
        generator = Generator("c", programs.pop("cload"), args.settle)
    return generator, programs, names


def run_placement(
    args: argparse.Namespace,
    placement: str,
    names: list[str],
    workloads: list[Workload],
    generator: Generator,
    programs: dict[str, Path],
    variants: dict[str, list[str]],
    work: Path,
) -> tuple[dict[str, dict[str, Cell]], str] | None:
    """
    Every round of every workload under one placement, the servers started
    for it; the results and a description of the placement, or C{None}
    when it cannot be had here (pinning on a single CPU).

    @param variants: primecount under other names (C{primecount_read} and
        the run's variants) -> their extra options.
    """
    server_cpus, generator_cpus = cpu_plan(placement == "pinned")
    if placement == "pinned" and not (server_cpus and generator_cpus):
        print("compare: pinned placement skipped: fewer than two CPUs", file=sys.stderr)
        return None
    pinning = (
        f"servers on CPU {sorted(server_cpus)}, generator on CPU {sorted(generator_cpus)}"
        if server_cpus and generator_cpus
        else "no CPU pinning"
    )
    results: dict[str, dict[str, Cell]] = {
        w.name: {n: Cell() for n in names if takes_part(n, w)} for w in workloads
    }
    print(f"compare: {', '.join(names)}; {placement}: {pinning}", file=sys.stderr)
    servers = Servers(
        names,
        work,
        shlex.split(args.primecount_args),
        server_cpus,
        variants,
        dict(args.variant_code),
        programs,
    )
    with servers.running():
        scratch = work / "bench.json"
        for round_number in range(args.rounds):
            for workload in workloads:
                order = list(results[workload.name])
                if round_number % 2:
                    order.reverse()
                for name in order:
                    measurement = run_bench(
                        servers.ports[name],
                        servers.processes[name].pid,
                        workload,
                        args.duration,
                        args.generator_processes,
                        generator_cpus,
                        scratch,
                        generator,
                    )
                    results[workload.name][name].runs.append(measurement)
                    print(
                        f"{placement} round {round_number + 1}/{args.rounds} "
                        f"{workload.name:<10} {name:<16} "
                        f"{measurement.throughput:>10,.0f} req/s  "
                        f"p99 {measurement.p99:.2f} ms  "
                        f"errors {measurement.errors}  wrong {measurement.wrong}  "
                        f"cpu server {measurement.server_cpu:.0%} "
                        f"generator {measurement.generator_cpu:.0%} "
                        f"({measurement.generator_us:.1f} µs/request) "
                        f"others {measurement.other_cpu:.0%}",
                        file=sys.stderr,
                    )
    return results, pinning


def compare(args: argparse.Namespace) -> int:
    """
    Run the comparison; return the exit status (1 when a target fails).
    """
    targets, needed = load_targets(args.targets)
    workloads = [WORKLOADS[name] for name in args.workloads]
    if "held" in args.workloads and "active10" not in args.workloads:
        workloads.insert(args.workloads.index("held"), WORKLOADS["active10"])
    variants = dict(args.variants)
    if args.postgresql is not None:
        variants.update(POSTGRESQL_VARIANTS)
    names = [
        name for name in args.servers if any(takes_part(name, workload) for workload in workloads)
    ] + list(variants)
    if not names:
        raise BenchmarkError("no selected server can take the selected workloads")
    results_dir = Path(args.results)
    results_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    measured: dict[str, tuple[dict[str, dict[str, Cell]], str]] = {}
    with contextlib.ExitStack() as stack:
        if args.postgresql is not None:
            url = postgresql_url(args.postgresql, stack)
            for name, options in POSTGRESQL_VARIANTS.items():
                variants[name] = ["--journal", url, *options]
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="primecount-compare-")))
        generator, programs, names = c_setup(args, names, work)
        for placement in args.placements:
            outcome = run_placement(
                args,
                placement,
                names,
                workloads,
                generator,
                programs,
                {**READ_SERVERS, **variants},
                work,
            )
            if outcome is not None:
                measured[placement] = outcome
    extra = f", primecount args {args.primecount_args!r}" if args.primecount_args else ""
    n = args.generator_processes
    load = (
        f"generator cload (C, {plural(n, 'thread')}, {args.settle:g} s settle)"
        if generator.program is not None
        else f"generator primecount.cli.bench (Python, {plural(n, 'process', 'processes')})"
    )
    sections = [
        f"### Benchmark {stamp}\n\n"
        f"Machine: {machine()}.\n\n"
        f"`python -m benchmarks.compare {shlex.join(args.argv)}`: "
        f"{args.rounds} rounds of {args.duration:g} s, alternating order, {load}{extra}.\n"
    ]
    outcomes: list[tuple[str, float, bool]] = []
    for placement, (results, pinning) in measured.items():
        table, found = markdown(results, f"#### {placement}: {pinning}", targets, needed)
        sections.append(table)
        outcomes += [(f"{placement}: {text}", ratio, ok) for text, ratio, ok in found]
    table = "\n".join(sections)
    print(table)
    (results_dir / f"{stamp}.md").write_text(table)
    if args.markdown:
        write_markdown(Path(args.markdown), table)
    document = {
        "stamp": stamp,
        "machine": machine(),
        "argv": args.argv,
        "generator": load,
        "pinning": {placement: pinning for placement, (_r, pinning) in measured.items()},
        "results": {
            placement: {
                w: {n: [vars(run) for run in cell.runs] for n, cell in cells.items()}
                for w, cells in results.items()
            }
            for placement, (results, _p) in measured.items()
        },
        "targets": [
            {"target": text, "ratio": ratio, "pass": passed} for text, ratio, passed in outcomes
        ],
    }
    (results_dir / f"{stamp}.json").write_text(json.dumps(document, indent=1) + "\n")
    for index, (placement, (results, _p)) in enumerate(measured.items()):
        png = results_dir / f"{stamp}-{placement}.png"
        if draw(png, results, f"primecount compare {stamp}, {placement}"):
            print(f"wrote {png}", file=sys.stderr)
            if args.markdown and index == 0:
                shutil.copyfile(png, Path(args.markdown).with_suffix(".png"))
    return 0 if all(passed for _text, _ratio, passed in outcomes) else 1


def main(argv: list[str] | None = None) -> int:
    """
    Parse the command line and run the comparison; the exit status (one
    line on stderr when it cannot run).
    """
    args = arguments(argv)
    return reported("compare", lambda: compare(args))


if __name__ == "__main__":
    sys.exit(main())
