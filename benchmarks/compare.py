"""
Run primecount and the baseline servers side by side under the same load.

    python benchmarks/compare.py                      # every workload, every server
    python benchmarks/compare.py --workload seed --servers primecount,seed_threadpool
    python benchmarks/compare.py --workload seed,seed_read \
        --servers primecount,primecount_read,seed_threadpool   # both framings
    python benchmarks/compare.py --rounds 5 --duration 10 --primecount-args="--journal none"

    # this checkout against an earlier revision, both with the journal on and off
    git worktree add /tmp/before HEAD~3
    python benchmarks/compare.py --workload persistent --servers primecount \
        --variant nojournal='--journal none' --variant before= \
        --variant before_nojournal='--journal none' \
        --variant-code before=/tmp/before --variant-code before_nojournal=/tmp/before

Every server runs as its own subprocess on a free port of 127.0.0.1; the
load comes from C{cload} (C{benchmarks/cload.c}, a closed-loop generator in
C that verifies every reply), built with C{cc -O2} (or C{$CC}) into a
temporary directory at the start of each run; without a compiler compare
stops with one line, and C{--generator python} runs
C{python -m primecount.cli.bench} instead (which costs several times more CPU
per request: the fastest servers are then measured against it). Each
measured run follows C{--settle} seconds (default 1) of load that is
verified but not timed. Within a round
every server gets each workload once, and the order of the servers is
reversed from one round to the next, so slow drifts of the machine (other
processes, thermal limits) hit every server alike. Figures are medians over
the rounds; ratios are medians of the per-round ratios (each round's pair is
measured minutes apart at most).

Workloads:

  seed        one message per connection (connect, send, read, close), 10 clients
  seed_read   the same as the original's own clients did it: no newline, the
              reply read until the server closes (C{primecount bench
              --framing read}); primecount takes it as C{primecount_read},
              the same server started with C{--framing read}
  persistent  persistent connections, 100 clients, one request in flight each
  active10    persistent connections, 10 clients (the reference for C{idle})
  idle        C{active10} plus 1000 idle connections held open

Servers: primecount, the baselines in C{benchmarks/baselines/} and
C{c_epoll} (C{baselines/c_epoll_server.c}, one epoll loop in C, no journal,
built like cload): the limit, what this machine can serve at all.

CPU placement (C{--placement}, both by default, one after the other, the
servers restarted for each): C{pinned} puts the servers on CPU 0 and the
generator on CPU 1 (C{os.sched_setaffinity}), so the generator never takes
CPU time from the server under test (each Python server is bound by its
GIL to about one core anyway); C{unpinned} lets the kernel place them, as
users run them. C{--no-pin} is C{--placement unpinned}.

The generator is not the bottleneck when the limit server runs well above
what primecount is asked for: for each target of primecount against a
baseline, compare prints "generator headroom: c_epoll X req/s = Y×
primecount's target" and checks Y >= 1.5 (PASS/FAIL). The table also gives
the generator's CPU time per request.

primecount runs with its defaults (the SQLite journal on, in a temporary
directory) plus C{--timeout 60}, so idle connections stay open for the whole
run as they do on the baselines, which have no idle timeout; add options
with C{--primecount-args}. seed_threadpool writes its text log (the
original design includes it); the other baselines have no journal.
seed_threadpool answers one message per connection, so it only takes part
in the C{seed} and C{seed_read} workloads; C{primecount_read} (primecount
with C{--framing read}) only in C{seed_read}, the only workload whose
clients send no newline.

Output: a markdown table on stdout, and in C{benchmarks/results/} (not in
git) a JSON file, the table and a PNG per run; C{--markdown FILE} also
writes the table there (e.g. C{benchmarks/RESULTS.md}; in a file that holds
the markers C{<!-- compare:begin -->} and C{<!-- compare:end -->} only the
text between them is replaced) and the PNG beside it (C{RESULTS.png}).

Targets checked (PASS/FAIL, per placement; exit status 1 when one fails):
primecount >= 2.0x seed_threadpool on C{seed}; primecount >= 0.75x
asyncio_server on C{persistent}; primecount on C{idle} >= 0.9x primecount
on C{active10}; when the run has the variant C{--variant nojournal='--journal
none'}, primecount >= 0.9x nojournal on C{persistent} (the journal's cost);
when it has C{--variant workers2='--workers 2'}, workers2 >= 1.0x
primecount on C{seed} and C{persistent}; and the generator headroom above.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import resource
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from primecount.core.wording import plural
from primecount.workers.environment import primecount_argv

HERE = Path(__file__).resolve().parent
BASELINES = HERE / "baselines"

#: Every server the comparison knows, primecount first.
SERVERS = (
    "primecount",
    "primecount_read",
    "seed_threadpool",
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
            "seed",
            "one message per connection, 10 clients",
            ("--clients", "10", "--connection-per-request"),
            one_message_servers_too=True,
        ),
        Workload(
            "seed_read",
            "the original's clients: no newline, read to close, 10 clients",
            ("--clients", "10", "--framing", "read"),
            one_message_servers_too=True,
            framing="read",
        ),
        Workload("persistent", "persistent, 100 clients", ("--clients", "100")),
        Workload("active10", "persistent, 10 clients", ("--clients", "10")),
        Workload(
            "idle",
            "persistent, 10 clients + 1000 idle connections",
            ("--clients", "10", "--idle", "1000"),
        ),
    )
}

#: Servers that close after one message and cannot hold connections.
ONE_MESSAGE_SERVERS = frozenset({"seed_threadpool"})

#: primecount servers started with C{--framing read}: their clients send no
#: newline, so they only take the read-framing workloads.
READ_SERVERS = {"primecount_read": ["--framing", "read"]}


class CompareError(Exception):
    """
    The comparison cannot run; reported as one line.
    """


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


def free_port() -> int:
    """
    A TCP port of 127.0.0.1 that nothing listens on right now.
    """
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def pinned(cpus: set[int] | None) -> Callable[[], None] | None:
    """
    A C{preexec_fn} that confines a child process to C{cpus}.
    """
    if cpus is None:
        return None
    return lambda: os.sched_setaffinity(0, cpus)


class Servers:
    """
    The servers under test, each a subprocess on its own port.
    """

    def __init__(
        self,
        names: list[str],
        workdir: Path,
        primecount_args: list[str],
        cpus: set[int] | None,
        variants: dict[str, list[str]] | None = None,
        code: dict[str, str] | None = None,
        programs: dict[str, Path] | None = None,
    ) -> None:
        self.names = names
        self.programs = programs or {}
        self.code = code or {}
        self.workdir = workdir
        self.primecount_args = primecount_args
        self.variants = variants or {}
        self.cpus = cpus
        self.ports: dict[str, int] = {}
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def command(self, name: str, port: int) -> list[str]:
        """
        The command line that starts server C{name} on C{port}.
        """
        if name == "primecount" or name in READ_SERVERS or name in self.variants:
            return primecount_argv(
                "--port",
                str(port),
                "--interface",
                "127.0.0.1",
                "--timeout",
                "60",
                *self.primecount_args,
                *READ_SERVERS.get(name, []),
                *self.variants.get(name, []),
            )
        if name in self.programs:
            return [str(self.programs[name]), "--port", str(port)]
        command = [sys.executable, str(BASELINES / f"{name}.py"), "--port", str(port)]
        if name == "seed_threadpool":
            command += ["--log", str(self.workdir / "seed.log")]
        return command

    def start(self) -> None:
        """
        Start every server and wait until each accepts connections.
        """
        for name in self.names:
            port = free_port()
            log = open(self.workdir / f"{name}.out", "wb")  # noqa: SIM115
            env = None
            if name in self.code:
                # The variant's own primecount comes first on the path.
                env = {**os.environ, "PYTHONPATH": self.code[name]}
            process = subprocess.Popen(
                self.command(name, port),
                cwd=self.workdir,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                preexec_fn=pinned(self.cpus),
            )
            log.close()
            self.ports[name] = port
            self.processes[name] = process
        for name in self.names:
            self.wait_ready(name)

    def wait_ready(self, name: str) -> None:
        """
        Wait (at most 20 s) until server C{name} accepts a connection.
        """
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.processes[name].poll() is not None:
                tail = (self.workdir / f"{name}.out").read_text(errors="replace")
                last = tail.strip().splitlines()[-1:] or ["no output"]
                raise CompareError(f"{name} exited at start: {last[0]}")
            try:
                with socket.create_connection(("127.0.0.1", self.ports[name]), 1):
                    return
            except OSError:
                time.sleep(0.1)
        raise CompareError(f"{name} did not accept connections within 20 s")

    def stop(self) -> None:
        """
        Stop every server (SIGTERM, then SIGKILL after 5 s).
        """
        for process in self.processes.values():
            if process.poll() is None:
                process.terminate()
        for process in self.processes.values():
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)


def cpu_seconds(pid: int) -> float:
    """
    The CPU time (user + system) process C{pid} has used, all its threads.
    """
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy_seconds() -> float:
    """
    The CPU time all processors of the machine have spent busy so far.
    """
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except OSError:
        return 0.0
    ticks = [int(f) for f in fields]
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)
    guest = sum(ticks[8:10]) if len(ticks) > 9 else 0
    return (sum(ticks) - idle - guest) / os.sysconf("SC_CLK_TCK")


#: The C programs compare builds at run time: cload, and the limit server.
C_SOURCES = {"cload": HERE / "cload.c", "c_epoll": BASELINES / "c_epoll_server.c"}


def build_c(directory: Path, names: list[str], compiler: str | None = None) -> dict[str, Path]:
    """
    Compile the C programs C{names} (keys of L{C_SOURCES}) with C{cc -O2}
    into C{directory}; their paths by name.

    @param compiler: the compiler; default C{$CC}, else C{cc}.
    @raise CompareError: when there is no compiler or a build fails.
    """
    compiler = compiler or os.environ.get("CC") or "cc"
    found = shutil.which(compiler)
    if found is None:
        raise CompareError(
            f"no C compiler: {compiler!r} not found; install one (apt-get install gcc) "
            "or set CC, or run the Python generator with --generator python"
        )
    programs = {}
    for name in names:
        program = directory / name
        try:
            built = subprocess.run(
                [found, "-O2", "-o", str(program), str(C_SOURCES[name]), "-lpthread"],
                capture_output=True,
                text=True,
                timeout=120,
            )
        except (OSError, subprocess.TimeoutExpired) as e:
            raise CompareError(f"{compiler} could not build {C_SOURCES[name].name}: {e}") from None
        if built.returncode != 0:
            errors = [line for line in built.stderr.splitlines() if "error" in line]
            first = (errors or built.stderr.strip().splitlines() or ["no message"])[0]
            raise CompareError(f"{compiler} could not build {C_SOURCES[name].name}: {first}")
        programs[name] = program
    return programs


@dataclass(frozen=True)
class Generator:
    """
    The load generator of a comparison: C{cload} (the C program, when
    C{program} is set) or C{python -m primecount.cli.bench}.

    @ivar settle: seconds of load before each measured run (C only):
        verified, neither timed nor counted as throughput.
    """

    name: str
    program: Path | None = None
    settle: float = 0.0

    def command(
        self, port: int, workload: Workload, duration: float, processes: int, output: Path
    ) -> list[str]:
        """
        The command line of one generator run (both take the workloads'
        options).
        """
        if self.program is not None:
            common = [str(self.program), "--threads", str(processes)]
            common += ["--settle", str(self.settle)]
        else:
            common = [sys.executable, "-m", "primecount.cli.bench", "--processes", str(processes)]
        return [
            *common,
            "--port",
            str(port),
            "--duration",
            str(duration),
            "--quiet",
            "--json",
            str(output),
            *workload.options,
        ]


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
    command = generator.command(port, workload, duration, processes, output)
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
        raise CompareError(f"the generator did not finish: {shlex.join(command)}") from None
    children_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    server_used = cpu_seconds(server_pid) - server_before
    busy = machine_busy_seconds() - busy_before
    generator_used = (children_after.ru_utime - children_before.ru_utime) + (
        children_after.ru_stime - children_before.ru_stime
    )
    if completed.returncode not in (0, 3):
        message = completed.stderr.strip().splitlines()[-1:] or ["no message"]
        raise CompareError(f"the generator failed: {message[0]}")
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


def machine() -> str:
    """
    A one-line description of this machine.
    """
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return (
        f"{model}, {os.cpu_count()} CPUs, {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}"
    )


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


@dataclass
class Target:
    """
    One goal: a ratio of two medians that must reach a bound.
    """

    text: str
    workload: str
    server: str
    reference_workload: str
    reference_server: str
    bound: float


TARGETS = (
    Target(
        "primecount >= 2.0x seed_threadpool, one message per connection",
        "seed",
        "primecount",
        "seed",
        "seed_threadpool",
        2.0,
    ),
    Target(
        "primecount --framing read >= 2.0x seed_threadpool, the original's own clients",
        "seed_read",
        "primecount_read",
        "seed_read",
        "seed_threadpool",
        2.0,
    ),
    Target(
        "primecount >= 0.75x asyncio_server, persistent 100 clients",
        "persistent",
        "primecount",
        "persistent",
        "asyncio_server",
        0.75,
    ),
    Target(
        "primecount (journal on) >= 0.9x nojournal (--journal none), persistent 100 clients",
        "persistent",
        "primecount",
        "persistent",
        "nojournal",
        0.9,
    ),
    Target(
        "workers2 (--workers 2) >= 1.0x primecount, one message per connection",
        "seed",
        "workers2",
        "seed",
        "primecount",
        1.0,
    ),
    Target(
        "workers2 (--workers 2) >= 1.0x primecount, persistent 100 clients",
        "persistent",
        "workers2",
        "persistent",
        "primecount",
        1.0,
    ),
    Target(
        "primecount with 1000 idle >= 0.9x without",
        "idle",
        "primecount",
        "active10",
        "primecount",
        0.9,
    ),
)


#: The limit server must beat primecount's target by this much under the
#: same generator, or the generator (not the server) may be what a run
#: measures.
HEADROOM = 1.5


def headroom(results: dict[str, dict[str, Cell]]) -> list[tuple[str, float, bool]]:
    """
    The generator-headroom checks: for each target of primecount against a
    baseline, C{c_epoll}'s throughput divided by the throughput the target
    asks of primecount (bound x the baseline's, per round; median), which
    must reach L{HEADROOM}.
    """
    outcomes = []
    for target in TARGETS:
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
            f"{target.reference_server}) on {target.workload}; needs >= {HEADROOM:g}x"
        )
        outcomes.append((text, ratio, ratio >= HEADROOM))
    return outcomes


def target_ratio(results: dict[str, dict[str, Cell]], target: Target) -> float | None:
    """
    The measured ratio for C{target}, or L{None} when it was not measured.
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
    results: dict[str, dict[str, Cell]], header: str
) -> tuple[str, list[tuple[str, float, bool]]]:
    """
    The results as a markdown document, and the targets' outcomes.
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
    for target in TARGETS:
        measured = target_ratio(results, target)
        if measured is None:
            continue
        passed = measured >= target.bound
        outcomes.append((target.text, measured, passed))
        target_lines.append(f"- {'PASS' if passed else 'FAIL'}: {target.text}: {measured:.2f}x")
    if target_lines:
        lines += ["", "Targets:", "", *target_lines]
    checks = headroom(results)
    if checks:
        lines += ["", *(f"- {'PASS' if ok else 'FAIL'}: {text}" for text, _r, ok in checks)]
        outcomes += checks
    return "\n".join(lines) + "\n", outcomes


#: In a C{--markdown} file holding both markers, only the text between
#: them is replaced.
BEGIN, END = "<!-- compare:begin -->", "<!-- compare:end -->"


def write_markdown(path: Path, table: str) -> None:
    """
    Put C{table} into C{path}: between the L{BEGIN} and L{END} markers when
    the file has them, else as the whole file.
    """
    text = path.read_text() if path.exists() else ""
    if BEGIN in text and END in text.split(BEGIN, 1)[1]:
        head, rest = text.split(BEGIN, 1)
        tail = rest.split(END, 1)[1]
        path.write_text(f"{head}{BEGIN}\n{table}{END}{tail}")
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
    The CPUs for the servers and for the generator, or L{None} for no pinning.
    """
    if not pin:
        return None, None
    available = sorted(os.sched_getaffinity(0))
    if len(available) < 2:
        return None, None
    return {available[0]}, set(available[1:])


@contextlib.contextmanager
def servers_running(servers: Servers) -> Iterator[Servers]:
    """
    Start the servers and stop them afterwards, whatever happens.
    """
    try:
        servers.start()
        yield servers
    finally:
        servers.stop()


def parse_list(text: str, known: tuple[str, ...] | list[str], what: str) -> list[str]:
    """
    A comma-separated list of names, each one of C{known} (or C{all}).
    """
    if text == "all":
        return list(known)
    names = [name.strip() for name in text.split(",") if name.strip()]
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
    if not sep or not name or name in SERVERS:
        raise argparse.ArgumentTypeError(f"expected NAME=OPTIONS with a new name, not {text!r}")
    return name, shlex.split(options)


def variant_code(text: str) -> tuple[str, str]:
    """
    C{NAME=DIR}: the source tree (holding C{primecount/}) a variant runs.
    """
    name, sep, directory = text.partition("=")
    path = Path(directory).resolve()
    if not sep or not name or not (path / "primecount" / "tap.py").is_file():
        raise argparse.ArgumentTypeError(
            f"expected NAME=DIR where DIR holds a primecount source tree, not {text!r}"
        )
    return name, str(path)


def arguments(argv: list[str] | None) -> argparse.Namespace:
    """
    Parse the command line.
    """
    parser = argparse.ArgumentParser(
        description="Run primecount and the baselines side by side.",
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
        "compare code versions side by side",
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
    parser.add_argument("--markdown", help="also write the table to this file")
    args = parser.parse_args(argv)
    unknown = {name for name, _ in args.variant_code} - {name for name, _ in args.variants}
    if unknown:
        parser.error(f"--variant-code names no --variant: {', '.join(sorted(unknown))}")
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


def c_compiler() -> str | None:
    """
    The C compiler compare would use (C{$CC}, else C{cc}), or L{None}.
    """
    return shutil.which(os.environ.get("CC") or "cc")


def c_setup(
    args: argparse.Namespace, names: list[str], directory: Path
) -> tuple[Generator, dict[str, Path], list[str]]:
    """
    Build the C programs the run needs into C{directory}: the generator
    (unless C{--generator python}) and the C{c_epoll} server when selected.

    @return: the generator, the built servers by name, and the server
        names left (C{c_epoll} is left out, with a warning, when the
        Python generator was asked for and there is no compiler).
    @raise CompareError: when a needed program cannot be built.
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
    work: Path,
) -> tuple[dict[str, dict[str, Cell]], str] | None:
    """
    Every round of every workload under one placement, the servers started
    for it; the results and a description of the placement, or L{None}
    when it cannot be had here (pinning on a single CPU).
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
        dict(args.variants),
        dict(args.variant_code),
        programs,
    )
    with servers_running(servers):
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
    workloads = [WORKLOADS[name] for name in args.workloads]
    if "idle" in args.workloads and "active10" not in args.workloads:
        workloads.insert(args.workloads.index("idle"), WORKLOADS["active10"])
    variants = dict(args.variants)
    names = [
        name for name in args.servers if any(takes_part(name, workload) for workload in workloads)
    ] + list(variants)
    if not names:
        raise CompareError("no selected server can take the selected workloads")
    results_dir = Path(args.results)
    results_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    measured: dict[str, tuple[dict[str, dict[str, Cell]], str]] = {}
    with tempfile.TemporaryDirectory(prefix="primecount-compare-") as work:
        generator, programs, names = c_setup(args, names, Path(work))
        for placement in args.placements:
            outcome = run_placement(
                args, placement, names, workloads, generator, programs, Path(work)
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
        f"`python benchmarks/compare.py {shlex.join(sys.argv[1:])}`: "
        f"{args.rounds} rounds of {args.duration:g} s, alternating order, {load}{extra}.\n"
    ]
    outcomes: list[tuple[str, float, bool]] = []
    for placement, (results, pinning) in measured.items():
        table, found = markdown(results, f"#### {placement}: {pinning}")
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
        "argv": sys.argv[1:],
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
    Entry point: one clear line on failure, never a traceback.
    """
    args = arguments(argv)
    try:
        return compare(args)
    except CompareError as e:
        print(f"compare: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("compare: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
