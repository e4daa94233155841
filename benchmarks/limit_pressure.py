# -*- test-case-name: tests.system.test_episodes_process -*-
"""
Clients pressing on the server's limits: how many log lines does the
pressure write, and is the count service still there?

For example::

    python -m benchmarks.limit_pressure --pattern churn --duration 10
    python -m benchmarks.limit_pressure --pattern metrics-flood

Each pattern (C{--help} lists them) starts its own C{twistd -n primecount}
(journal off, on free ports of 127.0.0.1), presses on one limit for
C{--duration} seconds, waits for the episodes to end, and prints what the
clients got and how many log lines were written during and after.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import socket
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from benchmarks.harness import reported, start_server
from primecount.testing.processes import free_port

#: How long an episode must be quiet before it ends (Episodes.QUIET), plus
#: a margin: the pressure's last lines come that long after it stops.
SETTLE = 12.0


@dataclass
class Pressure:
    """
    What a pattern did and what the server logged meanwhile.

    @ivar during: log lines written while the pressure lasted.
    @ivar after: log lines written once it stopped, until its episodes ended.
    @ivar outcomes: what the clients got, counted (C{answered}, C{busy}, ...).
    @ivar figures: other numbers the pattern measured.
    @ivar lines: the log lines of both periods.
    """

    during: int = 0
    after: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    figures: dict[str, float] = field(default_factory=dict)
    lines: list[str] = field(default_factory=list)


def _exchange(port: int, data: bytes, timeout: float = 5.0) -> bytes:
    """
    Connect, send C{data}, read until the server closes or one line came.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        with contextlib.suppress(OSError):
            sock.sendall(data)
        received = b""
        with contextlib.suppress(OSError):
            while b"\n" not in received:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                received += chunk
        return received


def _classify(reply: bytes) -> str:
    if reply.startswith(b"ERR server busy"):
        return "busy"
    if reply.startswith(b"ERR "):
        return reply.decode(errors="replace").strip()
    if reply.startswith(b"HTTP/1.1 503"):
        return "503"
    return "answered" if reply else "closed"


def _loop(clients: int, duration: float, one: Callable[[], str], outcomes: Counter[str]) -> None:
    """
    Run C{one} in a loop in C{clients} threads for C{duration} seconds,
    counting what each call returns.
    """
    deadline = time.monotonic() + duration
    lock = threading.Lock()

    def client() -> None:
        while time.monotonic() < deadline:
            try:
                outcome = one()
            except OSError as e:
                outcome = type(e).__name__
            with lock:
                outcomes[outcome] += 1

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(duration + 30)


def _idle(port: int, timeout: float = 10.0) -> str:
    """
    Connect, send nothing, wait until the server closes.
    """
    with (
        socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock,
        contextlib.suppress(OSError),
    ):
        return _classify(sock.recv(4096))
    return "timeout"


#: pattern -> (server options, label of the port pressed on, clients, one client's turn)
PATTERNS: dict[str, tuple[list[str], str, int, Callable[[int], str]]] = {
    "churn": (
        ["--max-connections", "20"], "count", 50,
        lambda port: _classify(_exchange(port, b"abc2a\n")),
    ),
    "per-peer": (
        ["--max-per-peer", "3"], "count", 5,
        lambda port: _classify(_exchange(port, b"abc2a\n")),
    ),
    "idle": (["--timeout", "1"], "count", 50, _idle),
    "proxy": (
        ["--listen", "haproxy:tcp:0:interface=127.0.0.1"], "proxy", 20,
        lambda port: _classify(_exchange(port, b"GET / HTTP/1.0\r\n\r\n")),
    ),
    "too-long": (
        ["--max-line", "16"], "count", 20,
        lambda port: _classify(_exchange(port, b"y" * 40 + b"\n")),
    ),
}  # fmt: skip


def _logLines(cwd: str) -> list[str]:
    with open(os.path.join(cwd, "server.log"), "rb") as f:
        return f.read().decode(errors="replace").splitlines()


def _ready(cwd: str, options: list[str] | tuple[str, ...], limit: float = 30.0) -> int:
    """
    Wait until the server and its workers (C{--workers} in C{options}) have
    all logged that they listen, and the log has then been quiet for half
    a second; how many lines it has.
    """
    workers = int(options[options.index("--workers") + 1]) if "--workers" in options else 0
    deadline = time.monotonic() + limit
    lines = _logLines(cwd)
    still = time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = _logLines(cwd)
        if len(now) != len(lines):
            lines, still = now, time.monotonic()
        started = sum("listening on" in line for line in lines) > workers
        if started and time.monotonic() - still >= 0.5:
            break
    return len(lines)


def press(pattern: str, duration: float, settle: float = SETTLE) -> Pressure:
    """
    Run C{pattern} (a key of L{PATTERNS}) against a fresh server.
    """
    options, label, clients, one = PATTERNS[pattern]
    result = Pressure()
    with tempfile.TemporaryDirectory(prefix="primecount-pressure-") as cwd:
        server = start_server("--journal", "none", *options, cwd=cwd)
        try:
            before = _ready(cwd, options)
            port = server.ports[label]
            _loop(clients, duration, lambda: one(port), result.outcomes)
            during = _logLines(cwd)
            time.sleep(settle)
            after = _logLines(cwd)
        finally:
            server.stop()
    result.during = len(during) - before
    result.after = len(after) - len(during)
    result.lines = after[before:]
    return result


def _lowOpenFiles(limit: int) -> Callable[[], None]:
    def lower() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

    return lower


def _getMetrics(port: int, timeout: float = 2.0) -> str:
    reply = _exchange(
        port, b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", timeout
    )
    if reply.startswith(b"HTTP/1.1 200"):
        return "200"
    return _classify(reply)


def flood_metrics(
    connections: int = 300,
    requests: int = 30,
    openFiles: int = 256,
    wait: float = 30.0,
    settle: float = SETTLE,
    options: tuple[str, ...] = (),
) -> Pressure:
    """
    Hold C{connections} idle connections to the metrics port of a server
    whose open-files limit is C{openFiles}; send C{requests} count requests
    meanwhile (outcomes C{answered}, C{busy}, ...); then ask C{/metrics}
    every 0.5 s (up to C{wait} seconds) until it answers (figure
    C{metrics_after_s}, from the start of the flood; absent if it never
    did).

    @param options: more options for the server (C{--workers 2}).
    """
    result = Pressure()
    metricsPort = free_port()
    with tempfile.TemporaryDirectory(prefix="primecount-pressure-") as cwd:
        server = start_server(
            *("--journal", "none", "--metrics-port", str(metricsPort), "--timeout", "60"),
            *options,
            cwd=cwd,
            preexec_fn=_lowOpenFiles(openFiles),
        )
        ports = {**server.ports, "metrics": metricsPort}
        held: list[socket.socket] = []
        try:
            before = _ready(cwd, options)
            start = time.monotonic()
            for _ in range(connections):
                try:
                    held.append(
                        socket.create_connection(("127.0.0.1", ports["metrics"]), timeout=2)
                    )
                except OSError as e:
                    result.outcomes[f"metrics connect {type(e).__name__}"] += 1
            time.sleep(1)
            for _ in range(requests):
                try:
                    result.outcomes[_classify(_exchange(ports["count"], b"abc2a\n"))] += 1
                except OSError as e:
                    result.outcomes[type(e).__name__] += 1
            while time.monotonic() - start < wait:
                try:
                    if _getMetrics(ports["metrics"]) == "200":
                        result.figures["metrics_after_s"] = time.monotonic() - start
                        break
                except OSError:
                    pass
                time.sleep(0.5)
            during = _logLines(cwd)
            for sock in held:
                sock.close()
            time.sleep(settle)
            after = _logLines(cwd)
        finally:
            for sock in held:
                sock.close()
            server.stop()
    result.during = len(during) - before
    result.after = len(after) - len(during)
    result.lines = after[before:]
    return result


#: What each pattern does, for C{--help}.
PATTERN_HELP = (
    "churn: 50 clients connect, ask once, close, in a loop, against --max-connections 20; "
    "per-peer: 5 clients from one address against --max-per-peer 3; "
    "idle: 50 clients that send nothing against --timeout 1; "
    "proxy: 20 clients sending HTTP to a --listen haproxy: port; "
    "too-long: 20 clients sending 40-byte lines against --max-line 16; "
    "metrics-flood: 300 idle connections to --metrics-port under ulimit -n 256 while 30 "
    "count requests are sent, then /metrics asked until it answers"
)


def run(args: argparse.Namespace) -> int:
    """
    Press with every pattern asked for; print what each did.
    """
    for pattern in args.pattern or [*PATTERNS, "metrics-flood"]:
        if pattern == "metrics-flood":
            result = flood_metrics()
            took = result.figures.get("metrics_after_s")
            print(
                f"metrics-flood: count requests {dict(result.outcomes)}; /metrics answered "
                f"{f'after {took:.1f} s' if took is not None else 'never (30 s)'}; "
                f"log lines {result.during} + {result.after} after"
            )
        else:
            result = press(pattern, args.duration)
            print(
                f"{pattern}: {args.duration:g} s, {dict(result.outcomes)}; log lines "
                f"{result.during} during + {result.after} after"
            )
        if args.show_log:
            for line in result.lines:
                print("    " + line)
    return 0


def main(argv: list[str] | None = None) -> int:
    """
    Parse the command line and press; the exit status.
    """
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.limit_pressure",
        description=__doc__.strip().split("\n\n")[0],
        epilog=PATTERN_HELP,
    )
    parser.add_argument(
        "--pattern", action="append", choices=[*PATTERNS, "metrics-flood"],
        help="one pattern (repeatable; default every one)",
    )  # fmt: skip
    parser.add_argument("--duration", type=float, default=5.0, help="seconds a pattern (5)")
    parser.add_argument("--show-log", action="store_true", help="print the lines too")
    args = parser.parse_args(argv)
    return reported("limit_pressure", lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
