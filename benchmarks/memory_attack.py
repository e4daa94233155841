# -*- test-case-name: tests.system.test_budget_process -*-
"""
How much memory can clients make the server hold? Its peak RSS under
connections that pipeline long lines as fast as it takes them.

For example::

    python -m benchmarks.memory_attack --connections 50 --duration 10
    python -m benchmarks.memory_attack --server-args="--max-memory 64 --workers 2"

Starts C{twistd -n primecount} (its defaults plus C{--server-args}) on a
free port of 127.0.0.1, attacks it for C{--duration} seconds while sampling
its resident memory (the supervisor's and its workers' together) every
0.1 s, and prints the peak, the RSS before and after, and the replies read.
The attack stops early past C{--rss-cap} MiB so that an unbounded server
cannot take the machine down.
"""

from __future__ import annotations

import argparse
import os
import selectors
import shlex
import shutil
import socket
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

from benchmarks.harness import reported, start_server
from primecount.core.count import expected_reply


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


def run(args: argparse.Namespace) -> int:
    """
    Start the server, attack it, print the figures.
    """
    serverArgs = shlex.split(args.server_args)
    with tempfile.TemporaryDirectory(prefix="primecount-memory-") as work:
        server = start_server(*serverArgs, cwd=work)
        try:
            before = rss_kib(server.process.pid)
            result = attack(
                server.port, server.process.pid, args.connections, args.line, args.duration,
                args.read, args.rss_cap * 1024,
            )  # fmt: skip
            time.sleep(1)
            after = rss_kib(server.process.pid)
        finally:
            server.stop()
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


def main(argv: list[str] | None = None) -> int:
    """
    Parse the command line and attack; the exit status.
    """
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.memory_attack", description=__doc__.strip().split("\n\n")[0]
    )
    parser.add_argument("--connections", type=int, default=300, help="connections (300)")
    parser.add_argument(
        "--line", type=int, default=16383,
        help="bytes a line, LF excluded (16383, the longest the default --max-line allows; "
        "0: empty lines, the most requests a byte)",
    )  # fmt: skip
    parser.add_argument("--duration", type=float, default=20.0, help="seconds (20)")
    parser.add_argument(
        "--no-read", dest="read", action="store_false",
        help="clients that never read their replies",
    )  # fmt: skip
    parser.add_argument("--rss-cap", type=int, default=3000, help="MiB: stop the attack beyond")
    parser.add_argument("--server-args", default="", help="more options for the server")
    parser.add_argument("--log", help="copy the server's log here")
    args = parser.parse_args(argv)
    return reported("memory_attack", lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
