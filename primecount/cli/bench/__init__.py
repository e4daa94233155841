# -*- test-case-name: tests.unit.test_bench,tests.system.test_bench_runs -*-
"""
C{primecount bench}: a load generator for the count protocol that verifies
every reply and reports honest latency percentiles::

    primecount bench --clients 100 --duration 10
    primecount bench --connection-per-request --clients 10 --requests 50000
    primecount bench --rate 5000 --clients 50 --json run.json --plot run.png
    primecount bench --hold 1000 --clients 10 --processes 2

Throughput counts correct replies only: a server that answers wrongly
shows up under I{wrong}, one that drops connections under I{errors}, never
as speed. Latency percentiles come from an HDR histogram (three significant
digits). With C{--rate} the load is open-loop and latency runs from the
moment each request was due (see L{primecount.cli.bench.load}).

Exit status: 0 when every request got the right reply, 3 when some replies
were wrong or some requests failed, 2 for bad arguments or an unreachable
server (one line on stderr).

The generator's own ceiling (CPU cost per request, requests per second
per core) is measured and documented in L{primecount.cli.bench.load}.
"""

from __future__ import annotations

import argparse
import signal
import socket
import sys
import time
from typing import TYPE_CHECKING, Any

from primecount.cli.bench.plan import DEFAULT_MESSAGES, Plan
from primecount.core.options import number, positive
from primecount.core.rangecodec import STRIDE
from primecount.core.wording import plural

if TYPE_CHECKING:
    from primecount.cli.bench.stats import Result


#: The server's default count port, and the range port its documentation
#: uses (C{--range-port} has no default: the range protocol is off unless
#: asked for).
COUNT_PORT, RANGE_PORT = 5050, 5051

#: Seconds a run lasts unless C{--duration} or C{--requests} says otherwise.
DEFAULT_DURATION = 10.0


class BenchError(Exception):
    """
    A problem the user can fix: reported as one line, never a traceback.
    """


#: An argparse type: a whole number, at least 1.
_positive_int = positive()


#: An argparse type: a whole number, 0 or more.
_count = number(int, "a whole number, 0 or more", 0)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number: {text}")
    return value


#: An argparse type: a port to connect to.
_port = number(int, "a port number from 1 to 65535", 1, 65535)


def _bounds(text: str) -> tuple[int, int]:
    from primecount.core.rangecodec import check_int32

    a, sep, b = text.partition(":")
    try:
        if not sep:
            raise ValueError("expected A:B")
        low, high = check_int32(int(a)), check_int32(int(b))
        check_int32(low + STRIDE * (RANGE_WINDOWS - 1))
        check_int32(high + STRIDE * (RANGE_WINDOWS - 1))
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"bad range {text!r}: {e}") from None
    return low, high


#: How many shifted copies of C{--range} the range protocol mix holds.
RANGE_WINDOWS = 16


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """
    Declare C{primecount bench}'s options on C{parser}.
    """
    parser.add_argument(
        "--protocol",
        choices=("count", "range"),
        default="count",
        help="count or range (default %(default)s)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="server address (default %(default)s)")
    parser.add_argument(
        "--port",
        type=_port,
        help=f"server port (default {COUNT_PORT}, the count port; with --protocol range "
        f"{RANGE_PORT}, the port the server's --range-port usually names)",
    )
    parser.add_argument(
        "--clients",
        type=_positive_int,
        default=10,
        help="concurrent clients (default %(default)s)",
    )
    amount = parser.add_mutually_exclusive_group()
    amount.add_argument(
        "--duration",
        type=_positive_float,
        metavar="S",
        help=f"seconds to run (default {DEFAULT_DURATION:g}, unless --requests is given)",
    )
    amount.add_argument(
        "--requests",
        type=_positive_int,
        metavar="N",
        help="requests to send, instead of a --duration (default: none)",
    )
    parser.add_argument(
        "--connection-per-request",
        action="store_true",
        help="connect, send one line, read the reply, close (the original's mode; "
        "default: persistent connections)",
    )
    parser.add_argument(
        "--framing",
        choices=("line", "read"),
        default="line",
        help="line (default): each request ends with a newline; read: the "
        "original server's clients, one connection per request, no newline, "
        "the reply read until the server closes (for a server run with "
        "--framing read)",
    )
    parser.add_argument(
        "--pipeline",
        type=_positive_int,
        default=1,
        metavar="K",
        help="requests in flight per persistent connection (default %(default)s)",
    )
    parser.add_argument(
        "--rate",
        type=_positive_float,
        metavar="R",
        help="open loop: R requests per second in all, latency from the due time "
        "(default: closed loop, each client sends when its reply is in)",
    )
    parser.add_argument(
        "--processes",
        type=_positive_int,
        default=1,
        metavar="P",
        help="generator processes sharing the clients (default %(default)s)",
    )
    parser.add_argument(
        "--hold",
        "--idle",
        dest="hold",
        type=_count,
        default=0,
        metavar="N",
        help="extra connections held open, silent, during the run (default %(default)s; "
        "--idle N is the same, its former name)",
    )
    parser.add_argument(
        "--message",
        metavar="TEXT",
        help="send this message every time (default: a varied built-in mix)",
    )
    parser.add_argument(
        "--range",
        dest="bounds",
        type=_bounds,
        default=(1, 10_000),
        metavar="A:B",
        help=f"range protocol: ask for [A+{STRIDE}i, B+{STRIDE}i], i = 0..{RANGE_WINDOWS - 1}"
        " (default 1:10000)",
    )
    parser.add_argument(
        "--timeout",
        type=_positive_float,
        default=5.0,
        metavar="S",
        help="seconds a request may wait for its reply (default %(default)g)",
    )
    parser.add_argument(
        "--loop",
        choices=("auto", "uvloop", "asyncio"),
        default="auto",
        help="event loop of the generator (default %(default)s: uvloop when installed)",
    )
    parser.add_argument(
        "--json", metavar="FILE", help="write the whole result here (default: no file)"
    )
    parser.add_argument(
        "--plot",
        metavar="FILE.png",
        help="draw throughput, failed requests and latency over time (default: no plot)",
    )
    parser.add_argument(
        "--quiet",
        action="store_true",
        help="no progress bar and no summary (default: a progress bar on stderr, the "
        "summary on stdout)",
    )


def plan_from(args: argparse.Namespace) -> Plan:
    """
    The L{Plan} the parsed options describe.

    @raise BenchError: when the options contradict each other.
    """
    if args.connection_per_request and args.pipeline != 1:
        raise BenchError("--pipeline needs persistent connections")
    if args.framing == "read" and args.pipeline != 1:
        raise BenchError("--framing read is one connection per request: no --pipeline")
    if args.framing == "read" and args.protocol == "range":
        raise BenchError("--framing is for the count protocol")
    if args.protocol == "range" and args.pipeline != 1:
        raise BenchError("the range protocol cannot pipeline (the sum comes first)")
    if args.protocol == "range" and args.message is not None:
        raise BenchError("--message is for the count protocol")
    if args.message is not None:
        if "\n" in args.message:
            raise BenchError("--message must not contain a newline")
        messages: tuple[str, ...] = (args.message,)
    else:
        messages = DEFAULT_MESSAGES
    duration = args.duration
    if duration is None and args.requests is None:
        duration = DEFAULT_DURATION
    if args.plot is not None and not args.plot.lower().endswith(".png"):
        raise BenchError(f"--plot wants a .png file name: {args.plot}")
    port = args.port
    if port is None:
        port = RANGE_PORT if args.protocol == "range" else COUNT_PORT
    return Plan(
        host=_resolve(args.host, port, args.timeout, args.protocol),
        port=port,
        clients=args.clients,
        duration=duration,
        requests=args.requests,
        per_request=args.connection_per_request or args.framing == "read",
        pipeline=args.pipeline,
        rate=args.rate,
        hold=args.hold,
        messages=messages,
        timeout=args.timeout,
        loop=args.loop,
        protocol=args.protocol,
        ranges=tuple(
            (args.bounds[0] + STRIDE * i, args.bounds[1] + STRIDE * i) for i in range(RANGE_WINDOWS)
        ),
        framing=args.framing,
    )


def _resolve(host: str, port: int, timeout: float, protocol: str = "count") -> str:
    """
    The address of C{host}, checked to accept a connection on C{port}.

    @raise BenchError: when it cannot be resolved or reached, in one line
        that says which server was expected there.
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as e:
        raise BenchError(f"cannot resolve {host}: {e}") from None
    last: OSError | None = None
    for family, kind, proto, _name, address in infos:
        try:
            with socket.socket(family, kind, proto) as probe:
                probe.settimeout(min(timeout, 5.0))
                probe.connect(address)
        except OSError as e:
            last = e
            continue
        return str(address[0])
    reason = last.strerror or str(last) if last is not None else "no address"
    expected = (
        f"is the server running with --range-port {port}?"
        if protocol == "range"
        else "is the server running (twistd -n primecount)?"
    )
    raise BenchError(f"cannot connect to {host} port {port}: {reason}; {expected}")


def describe(plan: Plan, processes: int) -> str:
    """
    A one-line description of a run, for the summary and the plot.
    """
    mode = "connection per request" if plan.per_request else f"persistent, pipeline {plan.pipeline}"
    if plan.framing == "read":
        mode = "connection per request, read framing (no newline, reply until close)"
    amount = (
        plural(plan.requests, "request") if plan.requests is not None else f"{plan.duration:g} s"
    )
    load = f"open loop {plan.rate:g} req/s" if plan.rate else "closed loop"
    if plan.protocol == "range":
        a, b = plan.ranges[0]
        mode = f"range protocol [{a}, {b}]+{STRIDE}i, {mode}"
    held = f", {plan.hold} held" if plan.hold else ""
    return (
        f"primecount bench {plan.host}:{plan.port}: {plural(plan.clients, 'client')}{held}, "
        f"{mode}, {load}, {amount}, {plural(processes, 'process', 'processes')}"
    )


def settings(plan: Plan, processes: int) -> dict[str, Any]:
    """
    The run's settings, for the JSON document.
    """
    from primecount.cli.bench.plan import loop_factory

    return {
        "host": plan.host,
        "port": plan.port,
        "clients": plan.clients,
        "duration": plan.duration,
        "requests": plan.requests,
        "connection_per_request": plan.per_request,
        "pipeline": plan.pipeline,
        "rate": plan.rate,
        "hold": plan.hold,
        "processes": processes,
        "timeout": plan.timeout,
        "loop": loop_factory(plan.loop)[1],
        "protocol": plan.protocol,
        "messages": list(plan.messages) if plan.protocol == "count" else None,
        "ranges": [list(r) for r in plan.ranges] if plan.protocol == "range" else None,
    }


def _run_with_progress(plan: Plan, processes: int) -> Result:
    from rich.progress import (
        BarColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    total = plan.requests if plan.requests is not None else plan.duration
    unit = "requests" if plan.requests is not None else "seconds"
    columns = (
        TextColumn("[bold]bench[/]"),
        BarColumn(),
        TextColumn("{task.completed:,.0f}/{task.total:,.0f} " + unit),
        TextColumn("{task.fields[rate]:>10,.0f} req/s"),
        TextColumn("errors {task.fields[errors]:,}"),
        TimeElapsedColumn(),
    )
    from rich.console import Console

    from primecount.cli.bench.load import measure

    with Progress(*columns, transient=True, console=Console(stderr=True)) as bar:
        task = bar.add_task("bench", total=total, rate=0.0, errors=0)
        begun = time.monotonic()
        history: list[tuple[float, int]] = []

        def progress(resolved: int, errors: int) -> None:
            now = time.monotonic()
            history.append((now, resolved))
            while len(history) > 2 and now - history[0][0] > 1.0:
                history.pop(0)
            then, before = history[0]
            rate = (resolved - before) / (now - then) if now > then else 0.0
            done = resolved if plan.requests is not None else now - begun
            bar.update(task, completed=min(done, total or 0), rate=rate, errors=errors)

        return measure(plan, processes, progress)


def run(args: argparse.Namespace) -> int:
    """
    Run C{primecount bench} with parsed options; return the exit status.

    The generator and its statistics are imported here, not with this
    module: C{--help} and the dispatcher's check for the C{tools} extra
    (L{primecount.cli.missing_tools}) come first.
    """
    from primecount.cli.bench.load import GeneratorFailed, interrupt, measure
    from primecount.cli.bench.report import (
        PlotUnavailable,
        check_plot,
        diagnosis,
        plot,
        summary_lines,
        write_json,
    )

    interrupted: list[bool] = []

    def on_sigint(signum: int, frame: Any) -> None:
        # The first Ctrl-C ends the run early with a partial summary; a
        # second one stops at once.
        if interrupted:
            raise KeyboardInterrupt
        interrupted.append(True)
        interrupt()

    try:
        plan = plan_from(args)
        if args.plot is not None:
            check_plot()  # before the run, not after it
        previous = signal.signal(signal.SIGINT, on_sigint)
        try:
            if args.quiet:
                result = measure(plan, args.processes)
            else:
                result = _run_with_progress(plan, args.processes)
        finally:
            signal.signal(signal.SIGINT, previous)
        processes = max(1, min(args.processes, plan.clients))
        title = describe(plan, processes)
        if args.json is not None:
            write_json(args.json, result, settings(plan, processes))
        if args.plot is not None:
            plot(args.plot, result, title)
    except (BenchError, GeneratorFailed, PlotUnavailable, ValueError) as e:
        print(f"primecount bench: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"primecount bench: {e.strerror or e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("primecount bench: interrupted", file=sys.stderr)
        return 130
    if interrupted:
        print(
            f"primecount bench: interrupted after {result.elapsed:.1f} s; partial results:",
            file=sys.stderr,
        )
    if not args.quiet or interrupted:
        for line in summary_lines(result, title, plan):
            print(line)
    why = diagnosis(result, plan)
    if why is not None:
        print(f"primecount bench: {why}", file=sys.stderr)
    if interrupted:
        return 130
    return 0 if result.wrong == 0 and result.error_count == 0 else 3
