# -*- test-case-name: tests.system.test_postgresql_journal_process -*-
"""
A throwaway PostgreSQL cluster for the tests and benchmarks, started and
stopped by them.

Debian's C{postgresql} package provides the binaries under
C{/usr/lib/postgresql/VERSION/bin}. As root, the cluster is initialised and
run as the C{postgres} user (PostgreSQL refuses to run as root) in a
C{mkdtemp} directory chowned to it; as any other user, as that user. It
listens on 127.0.0.1 on a free port and on a UNIX socket in its directory,
trusts every local connection (no password) and syncs nothing to disk
(C{fsync=off}: a test cluster need not survive a power loss). Starting one
takes about a second.

Without PostgreSQL (or psycopg) the tests that need one skip loudly, except
under C{CI=true}, where they fail.
"""

from __future__ import annotations

import atexit
import glob
import itertools
import os
import shutil
import subprocess
import tempfile
import time

from primecount.testing.processes import free_port, missing

#: Seconds a cluster may take to start or stop on a loaded machine.
START_TIMEOUT = 60


def bindir() -> str:
    """
    The newest PostgreSQL's binary directory.

    @raise SkipTest: when PostgreSQL or psycopg is missing (outside CI).
    """
    try:
        import psycopg  # noqa: F401
    except ImportError:
        raise missing("psycopg is not installed (pip install 'primecount[postgresql]')") from None
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"),
        key=lambda path: int(path.split("/")[-3]) if path.split("/")[-3].isdigit() else 0,
    )
    if not found:
        raise missing("PostgreSQL is not installed (Debian: apt-get install -y postgresql)")
    return os.path.dirname(found[-1])


class Cluster:
    """
    One throwaway cluster: L{start}, L{stop} (immediate), L{start} again
    (the same data and port), L{destroy}.

    @ivar url: a C{postgresql://} URL of its C{postgres} database over TCP.
    """

    def __init__(self) -> None:
        self.bin = bindir()
        self.root = os.geteuid() == 0
        self.dir = tempfile.mkdtemp(prefix="primecount-pg-")
        self.data = os.path.join(self.dir, "data")
        if self.root:
            shutil.chown(self.dir, "postgres", "postgres")
        self.port = free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self._run("initdb", "-D", self.data, "-A", "trust", "-U", "postgres", "--no-sync")

    def _run(self, program: str, *args: str) -> None:
        argv = [os.path.join(self.bin, program), *args]
        if self.root:
            argv = ["runuser", "-u", "postgres", "--", *argv]
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=START_TIMEOUT, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(f"{program} failed ({done.returncode}):\n{done.stdout}{done.stderr}")

    def start(self) -> None:
        """
        Start the server and wait until it accepts connections.
        """
        options = (
            f"-k {self.dir} -p {self.port} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c full_page_writes=off -c max_connections=50"
        )
        self._run(
            "pg_ctl",
            "-D",
            self.data,
            "-o",
            options,
            "-l",
            os.path.join(self.dir, "log"),
            "-t",
            str(START_TIMEOUT),
            "-w",
            "start",
        )

    def stop(self) -> None:
        """
        Stop the server at once (C{-m immediate}: as if it crashed).
        """
        self._run(
            "pg_ctl", "-D", self.data, "-m", "immediate", "-t", str(START_TIMEOUT), "-w", "stop"
        )

    def running(self) -> bool:
        """
        Whether the server's postmaster is up.
        """
        return os.path.exists(os.path.join(self.data, "postmaster.pid"))

    def execute(self, sql: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
        """
        Run one statement in its own transaction; its rows (none for a
        statement that returns none).
        """
        import psycopg

        with psycopg.connect(self.url, autocommit=True, connect_timeout=10) as conn:
            cursor = conn.execute(sql, params)  # type: ignore[arg-type]
            return cursor.fetchall() if cursor.description is not None else []

    def destroy(self) -> None:
        """
        Stop the server if it runs, and remove its directory.
        """
        try:
            if self.running():
                self.stop()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


_shared: dict[str, Cluster] = {}
_databases = itertools.count(1)


def shared(name: str = "default") -> Cluster:
    """
    The running cluster called C{name}, started on first use and destroyed
    when the test run ends (trial has no class fixtures: one cluster serves
    every test that asks for it, each in a database of its own, see
    L{database}).

    @raise SkipTest: when PostgreSQL or psycopg is missing (outside CI).
    """
    cluster = _shared.get(name)
    if cluster is None:
        cluster = Cluster()
        atexit.register(cluster.destroy)
        _shared[name] = cluster
    if not cluster.running():
        cluster.start()
    return cluster


def database(cluster: Cluster) -> str:
    """
    A new, empty database on C{cluster}; its URL.
    """
    name = f"t{os.getpid()}_{next(_databases)}"
    cluster.execute(f"CREATE DATABASE {name}")
    return cluster.url.rsplit("/", 1)[0] + "/" + name


def wait_for(check: object, timeout: float = 30.0, interval: float = 0.05) -> bool:
    """
    Poll C{check()} until it is true or C{timeout} seconds pass; its last value.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = check()  # type: ignore[operator]
        if value or time.monotonic() >= deadline:
            return bool(value)
        time.sleep(interval)
