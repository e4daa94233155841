"""
Helpers shared by the test modules: a real server (C{twistd -n primecount}
in a subprocess), blocking socket reads, subprocess stops and required
programs. The test doubles are in L{tests.doubles}.
"""

from __future__ import annotations

import ctypes
import os
import re
import resource
import select
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from unittest import SkipTest

from primecount.workers.environment import primecount_argv, twistd_argv

#: How tests start twistd: the interpreter running the tests, so the
#: installed package under test is the one served.
TWISTD = twistd_argv()


def stop_process(process: subprocess.Popen[bytes]) -> None:
    """
    Stop a helper subprocess the test started (SIGTERM, then SIGKILL after
    10 s) and reap it.
    """
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


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


def free_port() -> int:
    """
    A TCP port of 127.0.0.1 that nothing listens on right now.
    """
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def require_program(name: str, package: str) -> str:
    """
    The path of the program C{name} (also looked for in the sbin
    directories, which a non-root C{PATH} may lack).

    @raise SkipTest: when it is missing, outside CI.
    @raise AssertionError: when it is missing and C{CI=true}: CI must run
        the test, never skip it.
    """
    found = shutil.which(name) or shutil.which(name, path="/usr/local/sbin:/usr/sbin:/sbin")
    if found:
        return found
    message = f"{name} is not installed (Debian: apt-get install -y {package})"
    if os.environ.get("CI") == "true":
        raise AssertionError(f"CI=true and {message}")
    raise SkipTest(f"SKIPPED, NOT TESTED: {message}")


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


_LISTENING = re.compile(rb"listening on (.*?);")
_ADDRESS = re.compile(r"([a-z]+) (?:http://)?([0-9.:a-f\[\]]+):(\d+)(?:/metrics)?(?: \((.*)\))?")


def listening_ports(line: str) -> dict[str, int]:
    """
    Listener label -> port, from the start's log line's list of listeners
    (C{count 127.0.0.1:5050, count 127.0.0.1:5051 (PROXY header), metrics
    http://127.0.0.1:9109/metrics}): a listener behind HAProxy is
    C{"proxy"} or C{"range-proxy"}; one without a port (UNIX) is left out.
    """
    ports = {}
    for entry in line.split(", "):
        found = _ADDRESS.fullmatch(entry)
        if found is None:
            continue
        label, _, port, kinds = found.groups()
        if kinds and "PROXY header" in kinds:
            label = "proxy" if label == "count" else f"{label}-proxy"
        ports[label] = int(port)
    return ports


class ServerProcess:
    """
    A real C{twistd -n primecount} in a subprocess, on free ports of
    127.0.0.1, its log collected.

    @ivar ports: listener label (C{"count"}, C{"range"}, C{"proxy"},
        C{"range-proxy"}, C{"metrics"}) -> port.
    """

    def __init__(
        self,
        *args: str,
        cwd: str,
        startTimeout: float = 20.0,
        preexec_fn: Callable[[], None] | None = None,
        launcher: Sequence[str] = (),
        pass_fds: Sequence[int] = (),
        twistdOptions: Sequence[str] = (),
        python: str | None = None,
        environment: Mapping[str, str] | None = None,
    ) -> None:
        """
        @param launcher: a command that runs the rest of the command line
            (twistd) in its own process, with the same pid (by C{exec}).
        @param pass_fds: descriptors the server inherits.
        @param twistdOptions: twistd's own options (before C{primecount}),
            e.g. C{--uid}.
        @param python: the interpreter to run twistd with, if not this one.
        @param environment: more environment variables for the server.
        """
        command = primecount_argv("--port", "0", "--interface", "127.0.0.1", *args)
        at = len(TWISTD)  # after the interpreter and its program: twistd's options
        command[at:at] = twistdOptions
        if python is not None:
            command[0] = python
        argv = [*launcher, *command]
        env = dict(os.environ, PYTHONUNBUFFERED="1", **(environment or {}))
        self.process = subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            preexec_fn=preexec_fn,
            pass_fds=pass_fds,
        )
        self.log = b""
        self.ports: dict[str, int] = {}
        deadline = time.monotonic() + startTimeout
        while time.monotonic() < deadline:
            found = _LISTENING.search(self.log)
            if found:
                self.ports = listening_ports(found.group(1).decode())
                return
            if not self.readLog(deadline - time.monotonic()):
                break
        self.stop()
        raise RuntimeError(f"server did not start:\n{self.log.decode(errors='replace')}")

    @property
    def port(self) -> int:
        """
        The count protocol's port.
        """
        return self.ports["count"]

    def readLog(self, timeout: float = 0.0) -> bool:
        """
        Collect log output available within C{timeout}; False at its end.
        """
        assert self.process.stdout is not None
        ready, _, _ = select.select([self.process.stdout], [], [], max(timeout, 0))
        if not ready:
            return True
        chunk = os.read(self.process.stdout.fileno(), 65536)
        self.log += chunk
        return bool(chunk)

    def connect(self, timeout: float = 10.0) -> socket.socket:
        """
        A client socket connected to the count port.
        """
        return socket.create_connection(("127.0.0.1", self.port), timeout=timeout)

    def signal(self, signum: int) -> None:
        """
        Send C{signum} to the server.
        """
        if self.process.poll() is None:
            self.process.send_signal(signum)

    def wait(self, timeout: float = 20.0) -> int:
        """
        Wait for the server to exit, collecting its log; its exit status.
        """
        deadline = time.monotonic() + timeout
        while self.process.poll() is None and time.monotonic() < deadline:
            self.readLog(0.05)
        # Drain what an exited server wrote; one still running past the
        # deadline is killed below (draining it would wait for ever).
        while self.process.poll() is not None and self.readLog(0):
            if not select.select([self.process.stdout], [], [], 0)[0]:
                break
        if self.process.poll() is None:
            self.process.kill()
        return self.process.wait()

    def stop(self) -> int:
        """
        Stop the server with SIGTERM (SIGKILL if it lingers).
        """
        if self.process.stdout is None or self.process.stdout.closed:
            return self.process.wait()
        self.signal(signal.SIGTERM)
        status = self.wait()
        self.process.stdout.close()
        return status


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
