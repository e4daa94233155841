"""
Helpers shared by the test modules: a real server (C{twistd -n primecount}
in a subprocess), blocking socket reads, subprocess stops and required
programs. The test doubles are in L{tests.doubles}.
"""

from __future__ import annotations

import os
import re
import select
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
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


_LISTENING = re.compile(rb"listening on (.*?);")
_ADDRESS = re.compile(r"([a-z-]+) ([0-9.:a-f\[\]]+):(\d+)")


class ServerProcess:
    """
    A real C{twistd -n primecount} in a subprocess, on free ports of
    127.0.0.1, its log collected.

    @ivar ports: listener label (C{"count"}, C{"range"}, C{"proxy"},
        C{"range-proxy"}) -> port.
    """

    def __init__(
        self,
        *args: str,
        cwd: str,
        startTimeout: float = 20.0,
        preexec_fn: Callable[[], None] | None = None,
        launcher: Sequence[str] = (),
        pass_fds: Sequence[int] = (),
    ) -> None:
        """
        @param launcher: a command that runs the rest of the command line
            (twistd) in its own process, with the same pid (by C{exec}).
        @param pass_fds: descriptors the server inherits.
        """
        argv = [*launcher, *primecount_argv("--port", "0", "--interface", "127.0.0.1", *args)]
        env = dict(os.environ, PYTHONUNBUFFERED="1")
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
                for label, _, port in _ADDRESS.findall(found.group(1).decode()):
                    self.ports[label] = int(port)
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
    server: ServerProcess, clients: int = 6, requests: int = 300, tag: str = "c"
) -> tuple[int, list[str]]:
    """
    Pipeline C{requests} lines on each of C{clients} connections, send
    SIGTERM once the server has read from every one (its first reply is
    back), then read every connection to its end.

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
    server.signal(signal.SIGTERM)
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

    from primecount.journal import schema

    found = set()
    for file in [path, *schema.part_paths(path)]:
        conn = sqlite3.connect(file, timeout=5)
        try:
            found |= {m for (m,) in conn.execute("SELECT message FROM requests")}
        finally:
            conn.close()
    return found
