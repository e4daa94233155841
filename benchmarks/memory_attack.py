"""
How much memory can clients make the server hold? Peak RSS under an attack.

    python benchmarks/memory_attack.py                       # 300 connections, 16,383-byte lines
    python benchmarks/memory_attack.py --connections 50 --duration 10
    python benchmarks/memory_attack.py --server-args="--max-memory 64 --workers 2"
    python benchmarks/memory_attack.py --line 0              # empty lines: the most requests per byte
    python benchmarks/memory_attack.py --no-read             # clients that never read their replies

Starts C{twistd -n primecount} (its defaults, the SQLite journal in a
temporary directory, plus C{--server-args}) on a free port of 127.0.0.1,
opens C{--connections} connections and has each of them pipeline lines of
C{--line} bytes (the longest the default C{--max-line} allows is 16,383)
as fast as the server takes them, for C{--duration} seconds, reading the
replies as they come (C{--no-read}: never). Every 0.1 s it samples the
resident set size of the server (with C{--workers}, the sum over the
supervisor and its workers). It prints the peak, the RSS at the start and
at the end, and how many replies came back, then stops the server.

Bounded: the attack stops early when the server's RSS passes
C{--rss-cap} MiB (default 3,000), so that measuring an unbounded server
does not take the machine down; the figure is then printed as "> cap".
"""

from __future__ import annotations

import argparse
import os
import re
import selectors
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import primecount
from primecount.core.count import expected_reply
from primecount.workers.environment import primecount_argv

_LISTENING = re.compile(rb"listening on (.*?);")
_ADDRESS = re.compile(r"([a-z-]+) [0-9.]+:(\d+)")


def rss_by_process(pid: int) -> dict[int, int]:
    """
    The resident set size of C{pid} and of every process below it, in KiB
    (a process that is gone is left out).
    """
    found: dict[int, int] = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    found[pid] = int(line.split()[1])
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                for child in f.read().split():
                    found.update(rss_by_process(int(child)))
    except (FileNotFoundError, ProcessLookupError):
        pass
    return found


def rss_kib(pid: int) -> int:
    """
    The resident set size of C{pid} and of every process below it, in KiB.
    """
    return sum(rss_by_process(pid).values())


def _pythonpath() -> str:
    """
    C{PYTHONPATH} for the server: the primecount this script imports
    first, whatever the server's working directory.
    """
    here = os.path.dirname(os.path.dirname(os.path.abspath(primecount.__file__)))
    return os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")]))


def start_server(
    args: list[str],
    cwd: str,
    timeout: float = 30.0,
    preexec_fn: Callable[[], None] | None = None,
) -> tuple[subprocess.Popen[bytes], dict[str, int]]:
    """
    Start C{twistd -n primecount --port 0} with C{args} in C{cwd}; its
    process and the ports it listens on, by label (C{count}, C{metrics},
    ...). Its log goes to C{server.log} in C{cwd}.

    @param preexec_fn: run in the server's process before it starts.
    """
    log = os.path.join(cwd, "server.log")
    with open(log, "wb") as out:
        process = subprocess.Popen(
            primecount_argv("--port", "0", "--interface", "127.0.0.1", *args),
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=_pythonpath()),
            preexec_fn=preexec_fn,
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open(log, "rb") as f:
            found = _LISTENING.search(f.read())
        if found:
            listeners = _ADDRESS.findall(found.group(1).decode())
            return process, {label: int(port) for label, port in listeners}
        if process.poll() is not None:
            break
        time.sleep(0.1)
    stop_server(process)
    with open(log, "rb") as f:
        raise SystemExit(
            f"memory_attack: the server did not start:\n{f.read().decode(errors='replace')}"
        )


def stop_server(process: subprocess.Popen[bytes]) -> None:
    """
    SIGTERM, then SIGKILL after 20 s.
    """
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@dataclass
class Attack:
    """
    What an attack did and what it cost the server.

    @ivar samples: (seconds since the start, server RSS in KiB).
    @ivar largest: the largest RSS of any one process sampled, in KiB.
    """

    sent: int = 0
    replies: int = 0
    wrong: int = 0
    capped: bool = False
    samples: list[tuple[float, int]] = field(default_factory=list)
    largest: int = 0

    @property
    def peak_kib(self) -> int:
        """
        The largest RSS sampled.
        """
        return max((kib for _, kib in self.samples), default=0)


def attack(
    port: int,
    pid: int,
    connections: int,
    line: int,
    duration: float,
    read: bool = True,
    rss_cap_kib: int = 3000 * 1024,
) -> Attack:
    """
    Pipeline lines of C{line} bytes on C{connections} connections to
    C{port} for C{duration} seconds, sampling the RSS of process C{pid};
    count the replies, and those that are not the right one.
    """
    result = Attack()
    payload = (b"a" * line + b"\n") * max(1, 65536 // (line + 1))
    expected = expected_reply(b"a" * line).rstrip(b"\n")
    selector = selectors.DefaultSelector()
    socks = []
    try:
        for i in range(connections):
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            sock.setblocking(False)
            socks.append(sock)
            events = selectors.EVENT_WRITE | (selectors.EVENT_READ if read else 0)
            selector.register(sock, events, [0, b""])
            if i % 50 == 49:
                time.sleep(0.01)
        start = time.monotonic()
        nextSample = start
        while (now := time.monotonic()) < start + duration:
            if now >= nextSample:
                each = rss_by_process(pid)
                kib = sum(each.values())
                result.largest = max(result.largest, *each.values(), 0)
                result.samples.append((now - start, kib))
                nextSample = now + 0.1
                if kib > rss_cap_kib:
                    result.capped = True
                    break
            for key, mask in selector.select(0.05):
                conn: Any = key.fileobj
                state = key.data  # [payload offset, partial reply]
                try:
                    if mask & selectors.EVENT_READ:
                        data = conn.recv(65536)
                        if not data:
                            selector.unregister(conn)
                            continue
                        lines = (state[1] + data).split(b"\n")
                        state[1] = lines.pop()
                        result.replies += len(lines)
                        result.wrong += sum(line != expected for line in lines)
                    if mask & selectors.EVENT_WRITE:
                        sent = conn.send(payload[state[0] :])
                        result.sent += sent
                        state[0] = (state[0] + sent) % len(payload)
                except BlockingIOError:
                    pass
                except OSError:
                    selector.unregister(conn)
        result.samples.append((time.monotonic() - start, rss_kib(pid)))
    finally:
        selector.close()
        for sock in socks:
            sock.close()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("--connections", type=int, default=300)
    parser.add_argument("--line", type=int, default=16383, help="bytes per line, LF excluded")
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--no-read", dest="read", action="store_false")
    parser.add_argument("--rss-cap", type=int, default=3000, help="MiB: stop the attack beyond")
    parser.add_argument("--server-args", default="", help="more options for the server")
    parser.add_argument("--log", help="copy the server's log here")
    args = parser.parse_args(argv)
    serverArgs = shlex.split(args.server_args)
    with tempfile.TemporaryDirectory(prefix="pc-memory-") as work:
        process, ports = start_server(serverArgs, work)
        port = ports["count"]
        try:
            before = rss_kib(process.pid)
            result = attack(
                port, process.pid, args.connections, args.line, args.duration, args.read,
                args.rss_cap * 1024,
            )  # fmt: skip
            time.sleep(1)
            after = rss_kib(process.pid)
        finally:
            stop_server(process)
            if args.log:
                shutil.copyfile(os.path.join(work, "server.log"), args.log)
    peak = f"> {args.rss_cap}" if result.capped else f"{result.peak_kib / 1024:.0f}"
    print(
        f"server: primecount {' '.join(serverArgs) or '(defaults)'}\n"
        f"attack: {args.connections} connections pipelining {args.line}-byte lines for "
        f"{result.samples[-1][0]:.1f} s{'' if args.read else ', never reading'}\n"
        f"RSS at start: {before / 1024:.0f} MiB; peak: {peak} MiB; "
        f"1 s after the attack: {after / 1024:.0f} MiB\n"
        f"sent {result.sent / 2**20:.0f} MiB, {result.replies} replies read ({result.wrong} wrong)\n"
        f"largest single process: {result.largest / 1024:.0f} MiB"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
