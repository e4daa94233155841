# -*- test-case-name: tests.system.test_testing_twistd -*-
"""
A real C{twistd -n primecount} in a subprocess, on free ports of 127.0.0.1
(L{ServerProcess}), for the tests and the benchmarks: the ports it listens
on are read from its start line, its log is collected (through a pipe, or
in a file for a server that may log much).
"""

from __future__ import annotations

import os
import re
import select
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from typing import IO

from primecount.workers.environment import primecount_argv, twistd_argv

#: How twistd is started: the interpreter running the caller, so the
#: primecount package it imports is the one served.
TWISTD = twistd_argv()


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
    @ivar log: the server's output read so far (see L{readLog}).
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
        output: str | None = None,
    ) -> None:
        """
        @param launcher: a command that runs the rest of the command line
            (twistd) in its own process, with the same pid (by C{exec}).
        @param pass_fds: descriptors the server inherits.
        @param twistdOptions: twistd's own options (before C{primecount}),
            e.g. C{--uid}.
        @param python: the interpreter to run twistd with, if not this one.
        @param environment: more environment variables for the server.
        @param output: a file the server writes its output to, instead of a
            pipe: a server that logs much (under a benchmark's load) never
            waits for this process to read it.
        """
        command = primecount_argv("--port", "0", "--interface", "127.0.0.1", *args)
        at = len(TWISTD)  # after the interpreter and its program: twistd's options
        command[at:at] = twistdOptions
        if python is not None:
            command[0] = python
        argv = [*launcher, *command]
        env = dict(os.environ, PYTHONUNBUFFERED="1", **(environment or {}))
        sink = subprocess.PIPE if output is None else open(output, "wb")  # noqa: SIM115
        try:
            self.process = subprocess.Popen(
                argv,
                cwd=cwd,
                env=env,
                stdout=sink,
                stderr=subprocess.STDOUT,
                preexec_fn=preexec_fn,
                pass_fds=pass_fds,
            )
        finally:
            if output is not None:
                sink.close()  # type: ignore[union-attr]
        self._piped = output is None
        self._output: IO[bytes]
        if output is None:
            assert self.process.stdout is not None
            self._output = self.process.stdout
        else:
            self._output = open(output, "rb")  # noqa: SIM115 - closed by stop()
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
        if not self._piped:
            chunk = self._output.read()
            if chunk:
                self.log += chunk
                return True
            if self.process.poll() is not None:
                return False
            time.sleep(min(max(timeout, 0), 0.05))
            return True
        ready, _, _ = select.select([self._output], [], [], max(timeout, 0))
        if not ready:
            return True
        chunk = os.read(self._output.fileno(), 65536)
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
            if self._piped and not select.select([self._output], [], [], 0)[0]:
                break
        if self.process.poll() is None:
            self.process.kill()
        return self.process.wait()

    def stop(self) -> int:
        """
        Stop the server with SIGTERM (SIGKILL if it lingers).
        """
        if self._output.closed:
            return self.process.wait()
        self.signal(signal.SIGTERM)
        status = self.wait()
        self._output.close()
        return status
