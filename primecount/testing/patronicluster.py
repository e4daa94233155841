# -*- test-case-name: tests.system.test_database_failover -*-
"""
A throwaway highly available PostgreSQL for the tests and benchmarks: one
etcd and two (or more) PostgreSQL nodes run by Patroni, on 127.0.0.1, started
and stopped by them.

Each node runs the shipped C{deploy/patroni/config.yml} as it is: Patroni
reads the node's configuration directory, which holds a copy of that file
and, after it (Patroni merges the files of a directory in name order), the
test's overlay C{zz-test.yml}: faster timing (C{ttl} 20, Patroni's least;
C{loop_wait} 1; C{retry_timeout} 5), no fsync and a small server. What
differs between nodes (name, ports, data directory) and the passwords come
from C{PATRONI_*} environment variables, as C{deploy/patroni/patroni_env.conf}
gives them in production. Data, sockets and logs live in one C{mkdtemp}
directory.

As root, etcd and Patroni run as the C{postgres} user (PostgreSQL refuses to
run as root), started by C{subprocess.Popen} with C{user=}: no C{runuser} in
between, so the process the test holds is Patroni itself and a C{kill -9}
reaches it. One etcd and two nodes come up in about 16 s here.

Without Patroni, etcd or PostgreSQL the tests that need them skip loudly,
except under C{CI=true}, where they fail (Debian: C{patroni}, C{etcd-server},
C{postgresql}; see C{.ci/debian-packages}).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

from primecount.testing import pgcluster
from primecount.testing.processes import free_port, require_program

#: The shipped Patroni files.
DEPLOY_PATRONI = Path(__file__).resolve().parents[2] / "deploy" / "patroni"

#: Patroni's timing in the tests (written to etcd at bootstrap): a dead
#: leader is replaced C{ttl} seconds after its last renewal.
TEST_DCS: dict[str, Any] = {
    "ttl": 20,
    "loop_wait": 1,
    "retry_timeout": 5,
    # A small server: every node of every test cluster on one 2-core machine.
    "postgresql": {
        "parameters": {"max_connections": 50, "max_wal_senders": 5, "max_replication_slots": 5}
    },
}

#: PostgreSQL settings of each test node: a test machine's disk is shared
#: and its crashes are process kills, which lose nothing the kernel holds
#: (C{full_page_writes} stays on: pg_rewind needs it).
TEST_PARAMETERS: dict[str, Any] = {
    "fsync": "off",
    "shared_buffers": "32MB",
}

#: Seconds a node or etcd may take to start or stop on a loaded machine.
START_TIMEOUT = 120


def programs() -> tuple[str, str]:
    """
    The paths of C{patroni} and C{etcd}.

    @raise SkipTest: when one is missing (outside CI).
    @raise AssertionError: when one is missing and C{CI=true}.
    """
    return require_program("patroni", "patroni"), require_program("etcd", "etcd-server")


def _as_postgres() -> dict[str, Any]:
    """
    The C{subprocess.Popen} arguments that run a program as C{postgres}
    when the tests run as root (nothing otherwise).
    """
    if os.geteuid() != 0:
        return {}
    return {"user": "postgres", "group": "postgres", "extra_groups": []}


def _alive(pid: int) -> bool:
    """
    Whether process C{pid} runs (a zombie does not: nothing may reap an
    orphan in a container).
    """
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def _children(pid: int) -> list[int]:
    """
    The processes whose parent is C{pid}.
    """
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        found.append(int(entry))
            except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
                continue
    return found


def environment_file(path: Path) -> dict[str, str]:
    """
    The C{NAME=value} lines of an environment file such as
    C{/etc/default/etcd} (comments and blank lines skipped).
    """
    found = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, _, value = line.partition("=")
            found[name] = value
    return found


def wait_for(check: Callable[[], object], timeout: float, what: str) -> None:
    """
    Poll C{check()} until it is true.

    @raise AssertionError: naming C{what}, when C{timeout} seconds pass.
    """
    if not pgcluster.wait_for(check, timeout=timeout, interval=0.1):
        raise AssertionError(f"{what}: not within {timeout:g} s")


class Node:
    """
    One PostgreSQL node and the Patroni that runs it.

    @ivar name: its Patroni name (C{pg1}, C{pg2}, ...).
    @ivar port: PostgreSQL's port on 127.0.0.1.
    @ivar api: Patroni's REST API port on 127.0.0.1.
    @ivar process: the running Patroni, or C{None}.
    """

    def __init__(self, cluster: PatroniCluster, number: int) -> None:
        self.cluster = cluster
        self.name = f"pg{number}"
        self.port = free_port()
        self.api = free_port()
        self.dir = os.path.join(cluster.dir, self.name)
        self.data = os.path.join(self.dir, "data")
        self.process: subprocess.Popen[bytes] | None = None
        self._frozen: list[int] = []
        os.mkdir(self.dir, 0o700)
        shutil.copyfile(DEPLOY_PATRONI / "config.yml", os.path.join(self.dir, "config.yml"))
        overlay = {
            "bootstrap": {"dcs": cluster.dcs},
            "postgresql": {
                "parameters": {**cluster.parameters, "unix_socket_directories": self.dir},
            },
        }
        # JSON is YAML: Patroni reads it after config.yml and merges it in.
        with open(os.path.join(self.dir, "zz-test.yml"), "w") as f:
            json.dump(overlay, f, indent=2)
        if os.geteuid() == 0:
            for path in (self.dir, *(os.path.join(self.dir, n) for n in os.listdir(self.dir))):
                shutil.chown(path, "postgres", "postgres")

    def environment(self) -> dict[str, str]:
        """
        The node's C{PATRONI_*} variables: the ones
        C{deploy/patroni/patroni_env.conf} sets, plus where this node's data
        and etcd are.
        """
        passwords = self.cluster.passwords
        return {
            "PATRONI_NAME": self.name,
            "PATRONI_RESTAPI_LISTEN": f"127.0.0.1:{self.api}",
            "PATRONI_RESTAPI_CONNECT_ADDRESS": f"127.0.0.1:{self.api}",
            "PATRONI_POSTGRESQL_LISTEN": f"127.0.0.1:{self.port}",
            "PATRONI_POSTGRESQL_CONNECT_ADDRESS": f"127.0.0.1:{self.port}",
            "PATRONI_RESTAPI_PASSWORD": passwords["restapi"],
            "PATRONI_SUPERUSER_PASSWORD": passwords["superuser"],
            "PATRONI_REPLICATION_PASSWORD": passwords["replication"],
            "PATRONI_REWIND_PASSWORD": passwords["rewind"],
            "PATRONI_POSTGRESQL_DATA_DIR": self.data,
            "PATRONI_POSTGRESQL_PGPASS": os.path.join(self.dir, "pgpass"),
            "PATRONI_POSTGRESQL_BIN_DIR": self.cluster.bindir,
            "PATRONI_ETCD_HOSTS": f"127.0.0.1:{self.cluster.etcd_port}",
        }

    def start(self) -> None:
        """
        Start Patroni (which starts, clones or rewinds PostgreSQL by itself).
        """
        assert self.process is None or self.process.poll() is not None
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": self.dir,
            "LANG": "C.UTF-8",
            **self.environment(),
        }
        with open(os.path.join(self.dir, "patroni.log"), "ab") as log:
            self.process = subprocess.Popen(
                [self.cluster.patroni, self.dir],
                env=env,
                cwd=self.dir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                **_as_postgres(),
            )

    def running(self) -> bool:
        """
        Whether its Patroni runs.
        """
        return self.process is not None and self.process.poll() is None

    def postmaster(self) -> int | None:
        """
        The pid of its running postmaster, if one runs.
        """
        try:
            with open(os.path.join(self.data, "postmaster.pid")) as f:
                pid = int(f.readline())
        except (FileNotFoundError, ValueError):
            return None
        return pid if _alive(pid) else None

    def processes(self) -> list[int]:
        """
        Every process of the node: Patroni, the postmaster and the
        postmaster's children (backends, WAL sender or receiver, ...).
        """
        found = []
        if self.running():
            assert self.process is not None
            found.append(self.process.pid)
        postmaster = self.postmaster()
        if postmaster is not None:
            found += [postmaster, *_children(postmaster)]
        return found

    def kill(self) -> None:
        """
        C{kill -9} every process of the node at once, as if its machine
        died (stopped first, so that none reacts to another's death).
        """
        pids = self.processes()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if self.process is not None:
            self.process.wait(START_TIMEOUT)
        wait_for(lambda: not any(_alive(p) for p in pids), START_TIMEOUT, f"{self.name} dies")
        self._frozen = []

    def freeze(self) -> None:
        """
        C{SIGSTOP} every process of the node: a node that hangs (its
        sockets stay open, its kernel still acknowledges what arrives).
        """
        self._frozen = self.processes()
        for pid in self._frozen:
            os.kill(pid, signal.SIGSTOP)

    def thaw(self) -> None:
        """
        C{SIGCONT} what L{freeze} stopped.
        """
        for pid in self._frozen:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        self._frozen = []

    @property
    def frozen(self) -> bool:
        """
        Whether the node is frozen.
        """
        return bool(self._frozen)

    def stop(self) -> None:
        """
        Stop Patroni, which stops PostgreSQL (SIGTERM; SIGKILL for what
        lingers).
        """
        self.thaw()
        if self.running():
            assert self.process is not None
            self.process.terminate()
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        leftover = self.processes()
        for pid in leftover:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def rest(self, path: str, timeout: float = 2.0) -> tuple[int, Any]:
        """
        C{GET} C{path} of the node's REST API: its status and JSON body
        (0 and C{None} when it does not answer).
        """
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.api}{path}", timeout=timeout
            ) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as e:
            try:
                return e.code, json.loads(e.read() or b"null")
            except ValueError:
                return e.code, None
        except (OSError, ValueError):
            return 0, None

    def url(self, database: str = "postgres", user: str = "postgres") -> str:
        """
        A URL of C{database} on this node alone (the superuser's password
        when C{user} is the superuser).
        """
        return self.cluster.url([self], database=database, user=user)


class PatroniCluster:
    """
    One etcd and C{nodes} PostgreSQL nodes under Patroni, with synchronous
    replication (C{synchronous_mode}).

    @ivar nodes: the L{Node}s, by number.
    @ivar passwords: the roles' passwords (C{superuser}, C{replication},
        C{rewind}, C{restapi}), new for each cluster.
    """

    def __init__(
        self,
        nodes: int = 2,
        dcs: Mapping[str, Any] | None = None,
        parameters: Mapping[str, Any] | None = None,
    ) -> None:
        """
        @param dcs: Patroni's bootstrap configuration, instead of
            L{TEST_DCS}.
        @param parameters: each node's PostgreSQL settings, instead of
            L{TEST_PARAMETERS} (a benchmark: C{{}}, PostgreSQL's defaults).
        """
        self.patroni, self.etcd = programs()
        self.bindir = pgcluster.bindir()
        self.dcs = dict(TEST_DCS if dcs is None else dcs)
        self.parameters = dict(TEST_PARAMETERS if parameters is None else parameters)
        self.dir = tempfile.mkdtemp(prefix="primecount-patroni-")
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")
        self.passwords = {
            role: secrets.token_hex(8) for role in ("superuser", "replication", "rewind", "restapi")
        }
        self.etcd_port = free_port()
        self.etcd_peer_port = free_port()
        self.etcd_process: subprocess.Popen[bytes] | None = None
        self.nodes = [Node(self, n + 1) for n in range(nodes)]
        self.passwords["primecount"] = secrets.token_hex(8)

    # -- life ----------------------------------------------------------------------

    def start(self) -> None:
        """
        Start etcd, then every node; wait until a leader runs with a
        synchronous standby.
        """
        self._start_etcd()
        for node in self.nodes:
            node.start()
        self.wait_healthy()

    def _start_etcd(self) -> None:
        """
        Start etcd, one member, with the shipped C{deploy/patroni/etcd.conf}
        as its environment, the addresses and the data directory replaced.
        """
        client = f"http://127.0.0.1:{self.etcd_port}"
        peer = f"http://127.0.0.1:{self.etcd_peer_port}"
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": self.dir,
            **environment_file(DEPLOY_PATRONI / "etcd.conf"),
            "ETCD_NAME": "etcd1",
            "ETCD_DATA_DIR": os.path.join(self.dir, "etcd"),
            "ETCD_LISTEN_PEER_URLS": peer,
            "ETCD_LISTEN_CLIENT_URLS": client,
            "ETCD_INITIAL_ADVERTISE_PEER_URLS": peer,
            "ETCD_ADVERTISE_CLIENT_URLS": client,
            "ETCD_INITIAL_CLUSTER": f"etcd1={peer}",
            "ETCD_INITIAL_CLUSTER_TOKEN": os.path.basename(self.dir),
        }
        with open(os.path.join(self.dir, "etcd.log"), "ab") as log:
            self.etcd_process = subprocess.Popen(
                [self.etcd],
                env=env,
                cwd=self.dir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                **_as_postgres(),
            )

        def healthy() -> bool:
            try:
                with urllib.request.urlopen(f"{client}/health", timeout=2) as response:
                    return bool(json.loads(response.read()).get("health") == "true")
            except (OSError, ValueError):
                return False

        wait_for(healthy, START_TIMEOUT, "etcd answers")

    def destroy(self) -> None:
        """
        Stop every node and etcd, and remove the directory.
        """
        try:
            for node in self.nodes:
                node.thaw()
                if node.process is not None and node.process.poll() is None:
                    node.process.terminate()
            for node in self.nodes:
                node.stop()
            if self.etcd_process is not None and self.etcd_process.poll() is None:
                self.etcd_process.terminate()
                try:
                    self.etcd_process.wait(30)
                except subprocess.TimeoutExpired:
                    self.etcd_process.kill()
                    self.etcd_process.wait(10)
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    # -- state ---------------------------------------------------------------------

    def members(self) -> list[dict[str, Any]]:
        """
        The cluster's members as Patroni's C{GET /cluster} lists them (asked
        of every running, unfrozen node until one answers; none: empty).
        """
        for node in self.nodes:
            if node.running() and not node.frozen:
                status, body = node.rest("/cluster")
                if status == 200 and isinstance(body, dict):
                    return list(body.get("members", []))
        return []

    def node(self, name: str) -> Node:
        """
        The node called C{name}.
        """
        return next(n for n in self.nodes if n.name == name)

    def with_role(self, role: str) -> Node | None:
        """
        The running node Patroni lists with C{role} (C{leader},
        C{sync_standby}), if any.
        """
        for member in self.members():
            if member.get("role") == role and member.get("state") == "running":
                return self.node(member["name"])
        return None

    def healthy(self) -> bool:
        """
        Whether every node runs, one is the leader and accepts writes, and
        every other one streams from it, one of them synchronously (in
        PostgreSQL, and in Patroni's eyes: that one may be promoted).
        """
        members = {m["name"]: m for m in self.members()}
        if set(members) != {n.name for n in self.nodes}:
            return False
        if any(m.get("state") != "running" for m in members.values()):
            return False
        leader = self.with_role("leader")
        if leader is None or self.with_role("sync_standby") is None:
            return False
        if leader.rest("/primary")[0] != 200:
            return False
        try:
            rows = self.execute(
                leader,
                "SELECT application_name, sync_state FROM pg_stat_replication"
                " WHERE state = 'streaming'",
            )
        except Exception:
            return False
        streaming = {name for name, _ in rows}
        return streaming == {n.name for n in self.nodes} - {leader.name} and any(
            state == "sync" for _, state in rows
        )

    def wait_healthy(self, timeout: float = START_TIMEOUT) -> None:
        """
        Wait until L{healthy}.

        @raise AssertionError: with the members' states, after C{timeout}.
        """
        if not pgcluster.wait_for(self.healthy, timeout=timeout, interval=0.2):
            raise AssertionError(
                f"the Patroni cluster is not healthy within {timeout:g} s: {self.members()}"
                f" (logs in {self.dir})"
            )

    def heal(self) -> None:
        """
        Thaw frozen nodes and start dead ones, then wait until L{healthy}
        (an old primary rejoins as a standby by itself, rewound if need be).
        """
        for node in self.nodes:
            if node.frozen:
                node.thaw()
            if not node.running():
                if node.postmaster() is not None:
                    node.stop()
                node.start()
        self.wait_healthy()

    # -- connections ---------------------------------------------------------------

    def url(
        self,
        nodes: Iterable[Node] | None = None,
        *,
        database: str = "postgres",
        user: str = "postgres",
        query: str = "",
    ) -> str:
        """
        A libpq URL naming C{nodes} (all by default) as a host list.

        @param user: C{postgres} (the superuser) or C{primecount} (see
            L{PatroniCluster.create_database}): the URL carries its password.
        @param query: a query string (C{target_session_attrs=read-write}).
        """
        hosts = ",".join(f"127.0.0.1:{n.port}" for n in (self.nodes if nodes is None else nodes))
        password = self.passwords["superuser" if user == "postgres" else user]
        tail = f"?{query}" if query else ""
        return f"postgresql://{user}:{quote(password)}@{hosts}/{database}{tail}"

    def execute(self, node: Node, sql: str, database: str = "postgres") -> list[tuple[object, ...]]:
        """
        Run one statement on C{node} as the superuser, in its own
        transaction; its rows.
        """
        import psycopg

        with psycopg.connect(node.url(database), autocommit=True, connect_timeout=3) as conn:
            cursor = conn.execute(sql)  # type: ignore[arg-type]
            return cursor.fetchall() if cursor.description is not None else []

    def create_role(self) -> None:
        """
        Create the C{primecount} role on the leader, as the operations docs
        say to (its password in L{passwords}).
        """
        leader = self.with_role("leader")
        assert leader is not None
        password = self.passwords["primecount"]
        self.execute(leader, f"CREATE ROLE primecount LOGIN PASSWORD '{password}'")

    def create_database(self, name: str = "primecount") -> str:
        """
        Create the database C{name} owned by C{primecount} on the leader, as
        the operations docs say to; its name.
        """
        leader = self.with_role("leader")
        assert leader is not None
        self.execute(leader, f"CREATE DATABASE {name} OWNER primecount")
        return name


class Promotion(threading.Thread):
    """
    Watches a standby, polling it every 50 ms: C{at} is the moment it was
    first seen accepting writes (C{pg_is_in_recovery()} false), C{None}
    until then.
    """

    def __init__(self, node: Node) -> None:
        super().__init__(name=f"promotion-of-{node.name}", daemon=True)
        self.node = node
        self.at: float | None = None
        self.stopping = threading.Event()

    def run(self) -> None:
        import psycopg

        conn: psycopg.Connection[Any] | None = None
        while self.at is None and not self.stopping.is_set():
            try:
                if conn is None:
                    conn = psycopg.connect(self.node.url(), autocommit=True, connect_timeout=2)
                row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
                if row is not None and not row[0]:
                    self.at = time.monotonic()
            except psycopg.Error:
                if conn is not None:
                    conn.close()
                conn = None
            self.stopping.wait(0.05)
        if conn is not None:
            conn.close()

    def wait(self, timeout: float) -> float:
        """
        When the standby was promoted.

        @raise AssertionError: when it is not within C{timeout} seconds.
        """
        wait_for(lambda: self.at is not None, timeout, f"{self.node.name} is promoted")
        assert self.at is not None
        return self.at

    def stop(self) -> None:
        """
        Stop watching.
        """
        self.stopping.set()
        self.join(10)


_shared: dict[str, PatroniCluster] = {}


def shared(name: str = "default") -> PatroniCluster:
    """
    The cluster called C{name}, started on first use (with the C{primecount}
    role, see L{PatroniCluster.create_role}) and destroyed when the test run
    ends; brought back to health on every call (see L{PatroniCluster.heal}).

    @raise SkipTest: when Patroni, etcd, PostgreSQL or psycopg is missing
        (outside CI).
    """
    cluster = _shared.get(name)
    if cluster is None:
        cluster = PatroniCluster()
        atexit.register(cluster.destroy)
        _shared[name] = cluster
        cluster.start()
        cluster.create_role()
    else:
        cluster.heal()
    return cluster
