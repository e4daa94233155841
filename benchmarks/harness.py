# -*- test-case-name: tests.system.test_compare -*-
"""
What the benchmarks share: the servers under test on free ports of
127.0.0.1, the load generators (C{cload}, built at run time, or
C{primecount bench}), the CPU time processes use, throwaway database
clusters, and one line instead of a traceback when something is missing.

The real server, the clusters and the ports come from L{primecount.testing},
as the tests use them.
"""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from unittest import SkipTest

import primecount
from primecount.testing import patronicluster, pgcluster
from primecount.testing.processes import free_port
from primecount.testing.twistd import ServerProcess
from primecount.workers.environment import primecount_argv

HERE = Path(__file__).resolve().parent

#: The baseline servers, one script (or C source) each.
BASELINES = HERE / "baselines"

#: The C programs built at run time: the load generator, and the limit server.
C_SOURCES = {"cload": HERE / "cload.c", "c_epoll": BASELINES / "c_epoll_server.c"}


class BenchmarkError(Exception):
    """
    A benchmark cannot run (a missing program, a server that does not
    start): reported as one line.
    """


def reported(name: str, run: Callable[[], int]) -> int:
    """
    Run a benchmark: C{run}'s exit status, or one line on stderr and status
    2 for a L{BenchmarkError}, 130 for Ctrl-C (never a traceback).

    @param name: the benchmark's name, at the start of the line.
    """
    try:
        return run()
    except BenchmarkError as e:
        print(f"{name}: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        return 130


# -- servers ---------------------------------------------------------------------


def code_path(directory: str | None = None) -> str:
    """
    C{PYTHONPATH} for a server: C{directory} (a checkout holding
    C{primecount/}), or the one this process imports primecount from, first.
    A server runs in a directory of its own and must serve the same code.
    """
    here = directory or str(Path(primecount.__file__).resolve().parents[1])
    return os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")]))


def start_server(
    *args: str, cwd: str, preexec_fn: Callable[[], None] | None = None
) -> ServerProcess:
    """
    C{twistd -n primecount ARGS} on free ports of 127.0.0.1, running in
    C{cwd} with its log in C{cwd/server.log}, serving this process's code.

    @raise BenchmarkError: when it does not start.
    """
    try:
        return ServerProcess(
            *args,
            cwd=cwd,
            output=os.path.join(cwd, "server.log"),
            preexec_fn=preexec_fn,
            environment={"PYTHONPATH": code_path()},
            startTimeout=30.0,
        )
    except RuntimeError as e:
        raise BenchmarkError(str(e)) from None


def pinned(cpus: set[int] | None) -> Callable[[], None] | None:
    """
    A C{preexec_fn} that confines a child process to C{cpus}.
    """
    if cpus is None:
        return None
    return lambda: os.sched_setaffinity(0, cpus)


class Servers:
    """
    Servers under test side by side, each a subprocess on its own port:
    primecount and its variants (other options, other code) and the
    baselines of C{benchmarks/baselines/}.

    @ivar ports: server name -> its port.
    @ivar processes: server name -> its process.
    """

    def __init__(
        self,
        names: list[str],
        workdir: Path,
        primecount_args: Sequence[str] = (),
        cpus: set[int] | None = None,
        variants: Mapping[str, Sequence[str]] | None = None,
        code: Mapping[str, str] | None = None,
        programs: Mapping[str, Path] | None = None,
    ) -> None:
        """
        @param names: the servers: C{primecount}, variants, baselines.
        @param workdir: where they run and write their output.
        @param primecount_args: options every primecount server gets.
        @param cpus: the CPUs they run on (C{None}: any).
        @param variants: primecount under another name -> its extra options.
        @param code: variant name -> the checkout whose primecount it runs.
        @param programs: server name -> a built C program.
        """
        self.names = names
        self.workdir = workdir
        self.primecount_args = list(primecount_args)
        self.cpus = cpus
        self.variants = dict(variants or {})
        self.code = dict(code or {})
        self.programs = dict(programs or {})
        self.ports: dict[str, int] = {}
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def command(self, name: str, port: int) -> list[str]:
        """
        The command line that starts server C{name} on C{port}.
        """
        if name == "primecount" or name in self.variants:
            return primecount_argv(
                *("--port", str(port), "--interface", "127.0.0.1", "--timeout", "60"),
                *self.primecount_args,
                *self.variants.get(name, []),
            )
        if name in self.programs:
            return [str(self.programs[name]), "--port", str(port)]
        command = [sys.executable, str(BASELINES / f"{name}.py"), "--port", str(port)]
        if name == "original_threadpool":
            command += ["--log", str(self.workdir / "original.log")]
        return command

    def start(self) -> None:
        """
        Start every server and wait until each accepts connections.

        @raise BenchmarkError: when one exits or does not accept in time.
        """
        for name in self.names:
            port = free_port()
            env = {**os.environ, "PYTHONPATH": code_path(self.code.get(name))}
            with open(self.workdir / f"{name}.out", "wb") as log:
                self.processes[name] = subprocess.Popen(
                    self.command(name, port),
                    cwd=self.workdir,
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    preexec_fn=pinned(self.cpus),
                )
            self.ports[name] = port
        for name in self.names:
            self.wait_ready(name)

    def wait_ready(self, name: str) -> None:
        """
        Wait (at most 20 s) until server C{name} accepts a connection.

        @raise BenchmarkError: when it exits first, or does not accept.
        """
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.processes[name].poll() is not None:
                tail = (self.workdir / f"{name}.out").read_text(errors="replace")
                last = tail.strip().splitlines()[-1:] or ["no output"]
                raise BenchmarkError(f"{name} exited at start: {last[0]}")
            try:
                with socket.create_connection(("127.0.0.1", self.ports[name]), 1):
                    return
            except OSError:
                time.sleep(0.1)
        raise BenchmarkError(f"{name} did not accept connections within 20 s")

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

    @contextlib.contextmanager
    def running(self) -> Iterator[Servers]:
        """
        Start the servers and stop them afterwards, whatever happens.
        """
        try:
            self.start()
            yield self
        finally:
            self.stop()


def variant_code(text: str) -> tuple[str, str]:
    """
    An argparse type: C{NAME=DIR}, the checkout (holding C{primecount/})
    whose code variant NAME runs.
    """
    import argparse

    name, sep, directory = text.partition("=")
    path = Path(directory).resolve()
    if not sep or not name or not (path / "primecount" / "tap.py").is_file():
        raise argparse.ArgumentTypeError(
            f"expected NAME=DIR where DIR holds a primecount source tree, not {text!r}"
        )
    return name, str(path)


# -- the load generator ------------------------------------------------------------


def c_compiler() -> str | None:
    """
    The C compiler the benchmarks use (C{$CC}, else C{cc}), or C{None}.
    """
    return shutil.which(os.environ.get("CC") or "cc")


def build_c(directory: Path, names: list[str], compiler: str | None = None) -> dict[str, Path]:
    """
    Compile the C programs C{names} (keys of L{C_SOURCES}) with C{cc -O2}
    into C{directory}; their paths by name.

    @param compiler: the compiler; default C{$CC}, else C{cc}.
    @raise BenchmarkError: when there is no compiler or a build fails.
    """
    compiler = compiler or os.environ.get("CC") or "cc"
    found = shutil.which(compiler)
    if found is None:
        raise BenchmarkError(
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
            raise BenchmarkError(
                f"{compiler} could not build {C_SOURCES[name].name}: {e}"
            ) from None
        if built.returncode != 0:
            errors = [line for line in built.stderr.splitlines() if "error" in line]
            first = (errors or built.stderr.strip().splitlines() or ["no message"])[0]
            raise BenchmarkError(f"{compiler} could not build {C_SOURCES[name].name}: {first}")
        programs[name] = program
    return programs


@dataclass(frozen=True)
class Generator:
    """
    A load generator: C{cload} (the C program, when C{program} is set) or
    C{python -m primecount.cli.bench}; both take the same options and
    write the same JSON.

    @ivar settle: seconds of load before each measured run (C only):
        verified, neither timed nor counted as throughput.
    """

    name: str
    program: Path | None = None
    settle: float = 0.0

    def command(
        self, port: int, options: Sequence[str], duration: float, processes: int, output: Path
    ) -> list[str]:
        """
        The command line of one quiet run against C{port} with the load
        C{options}, its result written to C{output}.
        """
        if self.program is not None:
            common = [str(self.program), "--threads", str(processes)]
            common += ["--settle", str(self.settle)]
        else:
            common = [sys.executable, "-m", "primecount.cli.bench", "--processes", str(processes)]
        return [
            *common,
            *("--port", str(port), "--duration", str(duration), "--quiet", "--json", str(output)),
            *options,
        ]


# -- what a run cost ------------------------------------------------------------------


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


# -- clusters ---------------------------------------------------------------------------


def _missing(e: SkipTest) -> BenchmarkError:
    """
    A test's "missing" as a benchmark's one line.
    """
    return BenchmarkError(str(e).removeprefix("SKIPPED, NOT TESTED: "))


@contextlib.contextmanager
def postgresql_database() -> Iterator[str]:
    """
    A new database on a throwaway PostgreSQL cluster (as the tests start
    one: C{fsync=off}, no standby), removed afterwards; its URL.

    @raise BenchmarkError: when PostgreSQL or psycopg is missing.
    """
    try:
        cluster = pgcluster.Cluster()
    except SkipTest as e:
        raise _missing(e) from None
    try:
        cluster.start()
        yield pgcluster.database(cluster)
    finally:
        cluster.destroy()


@contextlib.contextmanager
def patroni_cluster(
    parameters: Mapping[str, str] | None = None,
) -> Iterator[patronicluster.PatroniCluster]:
    """
    A throwaway Patroni cluster (one etcd, two PostgreSQL nodes, the shipped
    configuration) with the C{primecount} role, removed afterwards.

    @param parameters: each node's PostgreSQL settings instead of the
        tests' (C{{}}: PostgreSQL's defaults).
    @raise BenchmarkError: when Patroni, etcd, PostgreSQL or psycopg is
        missing.
    """
    try:
        cluster = patronicluster.PatroniCluster(parameters=parameters)
    except SkipTest as e:
        raise _missing(e) from None
    try:
        cluster.start()
        cluster.create_role()
        yield cluster
    finally:
        cluster.destroy()
