"""
Helpers shared by the test modules: blocking socket reads, signals in
flight, the shipped HAProxy, limits root steps over. The real server,
clusters and required programs are in L{primecount.testing} (the
benchmarks use them too); the test doubles are in L{tests.doubles}.
"""

from __future__ import annotations

import ctypes
import os
import resource
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any
from unittest import SkipTest

from primecount.testing.processes import free_port, stop_process
from primecount.testing.twistd import ServerProcess

#: Linux's C{prctl} request that takes a capability out of the bounding
#: set: a program C{exec}ed afterwards, root or not, does without it.
PR_CAPBSET_DROP = 24

#: Capabilities by number (C{linux/capability.h}): those that let root
#: ignore file permissions, and the one that lets it raise a hard limit.
CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER, CAP_SYS_RESOURCE = 1, 2, 3, 24


def restricted(
    capabilities: Sequence[int] = (), open_files: int | None = None
) -> Callable[[], None]:
    """
    A C{preexec_fn} for a child that must meet limits root steps over: it
    runs without C{capabilities} (when the tests run as root; other users
    have none to drop) and, with C{open_files}, under that open-files hard
    limit (or the current one, if lower).
    """

    def apply() -> None:
        if open_files is not None:
            soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            if hard == resource.RLIM_INFINITY or hard > open_files:
                hard = open_files
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, hard), hard))
        if os.geteuid() == 0 and capabilities:
            libc = ctypes.CDLL(None, use_errno=True)
            for capability in capabilities:
                if libc.prctl(PR_CAPBSET_DROP, capability, 0, 0, 0) != 0:
                    raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")

    return apply


def require_root(why: str) -> None:
    """
    Go on only as root (C{why}: what the test does that needs it).

    @raise SkipTest: when not root, outside CI.
    @raise AssertionError: when not root and C{CI=true}: CI runs as root
        and must run the test, never skip it.
    """
    if os.geteuid() == 0:
        return
    message = f"needs root to {why}"
    if os.environ.get("CI") == "true":
        raise AssertionError(f"CI=true and not root: {message}")
    raise SkipTest(f"SKIPPED, NOT TESTED: {message}")


#: The shipped HAProxy configuration.
HAPROXY_CFG = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "deploy", "haproxy.cfg"
)

#: An open-files hard limit many containers start with: the shipped
#: HAProxy configuration must start under it.
CONTAINER_OPEN_FILES = 20000


def start_shipped_haproxy(
    case: Any, haproxy: str, hosts: Sequence[int]
) -> tuple[subprocess.Popen[bytes], int, str]:
    """
    Run C{deploy/haproxy.cfg} as shipped (C{haproxy -db}) in front of
    primecount hosts on 127.0.0.1, the addresses given the way the file
    documents (its environment variables): clients and HAProxy's metrics on
    free ports of 127.0.0.1. It runs under an open-files hard limit of
    L{CONTAINER_OPEN_FILES}, which it may not raise (as root, it runs
    without C{CAP_SYS_RESOURCE}).

    @param case: the test case: it stops HAProxy at cleanup, and fails if
        HAProxy does not listen within 20 s.
    @param hosts: the ports of the hosts' C{haproxy:} listeners (two).
    @return: the process, the clients' port, the path of HAProxy's log.
    """
    front = free_port()
    env = dict(
        os.environ,
        PRIMECOUNT_BIND=f"127.0.0.1:{front}",
        PRIMECOUNT_STATS_BIND=f"127.0.0.1:{free_port()}",
        **{f"PRIMECOUNT_HOST{i + 1}": f"127.0.0.1:{port}" for i, port in enumerate(hosts)},
    )
    log_path = os.path.abspath(case.mktemp())
    log = open(log_path, "wb")  # noqa: SIM115 - closed by cleanup
    case.addCleanup(log.close)
    process = subprocess.Popen(
        [haproxy, "-db", "-f", HAPROXY_CFG],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        preexec_fn=restricted((CAP_SYS_RESOURCE,), open_files=CONTAINER_OPEN_FILES),
    )
    case.addCleanup(stop_process, process)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and process.poll() is None:
        try:
            socket.create_connection(("127.0.0.1", front), timeout=1).close()
            return process, front, log_path
        except OSError:
            time.sleep(0.05)
    with open(log_path, "rb") as f:
        said = f.read().decode(errors="replace")
    case.fail(f"haproxy did not start listening (exit status {process.poll()}):\n{said}")
    raise AssertionError("unreachable")


def recv_lines(sock: socket.socket, n: int, timeout: float = 10.0) -> list[bytes]:
    """
    Read until C{n} lines (LF included) arrived, the peer closed, or
    C{timeout} passed.
    """
    data = _recv_until(sock, timeout, lambda data: data.count(b"\n") >= n)
    return [line + b"\n" for line in data.split(b"\n")[:-1]]


def recv_all(sock: socket.socket, timeout: float = 10.0) -> bytes:
    """
    Read until the peer closes (or C{timeout} passes).
    """
    return _recv_until(sock, timeout, lambda data: False)


def _recv_until(sock: socket.socket, timeout: float, enough: Callable[[bytearray], bool]) -> bytes:
    """
    Read until C{enough(data)}, the peer closed or reset, or C{timeout}
    passed; return what arrived.
    """
    sock.settimeout(timeout)
    data = bytearray()
    deadline = time.monotonic() + timeout
    while not enough(data) and time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except (TimeoutError, ConnectionResetError):
            break
        if not chunk:
            break
        data += chunk
    return bytes(data)


def sigterm_in_flight(
    server: ServerProcess,
    clients: int = 6,
    requests: int = 300,
    tag: str = "c",
    signum: int = signal.SIGTERM,
    group: bool = False,
) -> tuple[int, list[str]]:
    """
    Pipeline C{requests} lines on each of C{clients} connections, send
    SIGTERM (or C{signum}; to the server's whole process group if C{group},
    as a closed terminal sends SIGHUP) once the server has read from every
    one (its first reply is back), then read every connection to its end.

    Checks that what each connection got is a correct, in-order prefix of
    its replies; returns the server's exit status and the messages answered.
    """
    from primecount.core.count import expected_reply

    sockets = [server.connect() for _ in range(clients)]
    sent = []
    for n, sock in enumerate(sockets):
        messages = [f"{tag}{n}-{i}{'z' * (i % 3)}" for i in range(requests)]
        sock.sendall("".join(m + "\n" for m in messages).encode())
        sent.append(messages)
    firsts = [recv_lines(sock, 1) for sock in sockets]
    if group:
        os.killpg(server.process.pid, signum)
    else:
        server.signal(signum)
    received = [b""] * clients

    def read(n: int) -> None:
        received[n] = recv_all(sockets[n], timeout=15)

    readers = [threading.Thread(target=read, args=(n,)) for n in range(clients)]
    for t in readers:
        t.start()
    for t in readers:
        t.join(20)
    for sock in sockets:
        sock.close()
    status = server.wait()
    answered: list[str] = []
    for messages, first, data in zip(sent, firsts, received, strict=True):
        replies = first + [line + b"\n" for line in data.split(b"\n")[:-1]]
        if replies != [expected_reply(m) for m in messages[: len(replies)]]:
            raise AssertionError(f"replies are not a correct in-order prefix: {replies[:3]!r}…")
        answered += messages[: len(replies)]
    return status, answered


def journal_messages(path: str) -> set[str]:
    """
    The messages recorded in the journal at C{path}: that file and the
    parts of C{--workers N} beside it.
    """
    import sqlite3

    from primecount.journal.sqlite import schema

    found = set()
    for file in [path, *schema.part_paths(path)]:
        conn = sqlite3.connect(file, timeout=5)
        try:
            found |= {m for (m,) in conn.execute("SELECT message FROM requests")}
        finally:
            conn.close()
    return found
