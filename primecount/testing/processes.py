# -*- test-case-name: tests.unit.test_proxyheader -*-
"""
What a test or a benchmark needs before it starts a helper program: the
program itself (L{require_program}), a free port of 127.0.0.1
(L{free_port}), and a way to stop it (L{stop_process}).

A missing program skips a test loudly (C{unittest.SkipTest}), except under
C{CI=true}, where it fails it: CI must run every test, never skip one.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from unittest import SkipTest


def missing(message: str) -> SkipTest:
    """
    What to raise when something a test needs is missing: C{SkipTest}, or
    under C{CI=true} an C{AssertionError} (raised here, at once).

    @param message: what is missing and how to install it.
    """
    if os.environ.get("CI") == "true":
        raise AssertionError(f"CI=true and {message}")
    return SkipTest(f"SKIPPED, NOT TESTED: {message}")


def require_program(name: str, package: str) -> str:
    """
    The path of the program C{name} (also looked for in the sbin
    directories, which a non-root C{PATH} may lack).

    @param package: the Debian package that installs it.
    @raise SkipTest: when it is missing, outside CI.
    @raise AssertionError: when it is missing and C{CI=true}.
    """
    found = shutil.which(name) or shutil.which(name, path="/usr/local/sbin:/usr/sbin:/sbin")
    if found:
        return found
    raise missing(f"{name} is not installed (Debian: apt-get install -y {package})")


def free_port() -> int:
    """
    A TCP port of 127.0.0.1 that nothing listens on right now.
    """
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def stop_process(process: subprocess.Popen[bytes]) -> None:
    """
    Stop a helper subprocess (SIGTERM, then SIGKILL after 10 s) and reap it.
    """
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
