"""
The three holes of issue 20, each against a real C{twistd primecount}:

    - L{ForgedHeaderTests}: only trusted proxies name the client
      (C{--trusted-proxies}); a PROXY header from anyone else is refused,
      never journalled under the address it claims;
    - L{PrivilegeDropTests}: C{twistd --uid nobody} (bind as root, then run
      unprivileged) serves and journals, its files nobody's (needs root:
      CI runs as root and fails these tests otherwise);
    - L{PrivateJournalTests}: the journal's files are 0600.

The in-process tests of the same rules are in L{tests.unit.test_privileges},
L{tests.unit.test_countprotocol} and L{tests.unit.test_rangeprotocol}.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import socket
import sqlite3
import stat
import subprocess
import sys
import tempfile
import time
import urllib.request

from twisted.trial.unittest import TestCase

from primecount.core import rangecodec
from primecount.journal.sqlite.schema import part_paths
from primecount.testing.processes import free_port
from primecount.testing.twistd import TWISTD, ServerProcess
from primecount.workers.shared import SCRATCH_PREFIX
from tests.helpers import recv_all, recv_lines, require_root

#: The forgery of the issue: a header naming 6.6.6.6, then a request.
FORGED = b"PROXY TCP4 6.6.6.6 1.2.3.4 1111 2222\r\nabc2a\n"

#: How long one reply may take on a loaded machine.
DEADLINE = 30.0


def connect_from(source: str, port: int) -> socket.socket:
    """
    A TCP connection from C{source} (a loopback address) to 127.0.0.1:C{port}.
    """
    sock = socket.socket()
    sock.settimeout(DEADLINE)
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", port))
    return sock


def ask(sock: socket.socket, data: bytes, lines: int = 1) -> list[bytes]:
    """
    Send C{data} and read C{lines} reply lines (fewer if the server closes).
    """
    sock.sendall(data)
    return recv_lines(sock, lines, timeout=DEADLINE)


def rows(path: str) -> list[tuple[object, ...]]:
    """
    (peer, port, message) of every record of the journal at C{path} and
    its worker parts.
    """
    found: list[tuple[object, ...]] = []
    for file in [path, *part_paths(path)]:
        conn = sqlite3.connect(file)
        try:
            found += conn.execute("SELECT host, port, message FROM requests ORDER BY id")
        finally:
            conn.close()
    return found


def owned(path: str) -> tuple[int, int, int]:
    """
    (uid, gid, permission bits) of C{path}.
    """
    info = os.lstat(path)
    return info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)


class ForgedHeaderTests(TestCase):
    """
    Hole 1: a C{haproxy:} listener believed every PROXY header, from anyone
    who could reach it. From 127.0.0.3, C{PROXY TCP4 6.6.6.6 …} was answered
    and journalled as peer 6.6.6.6, and escaped C{--max-per-peer}.
    """

    def start(self, *args: str) -> tuple[ServerProcess, str]:
        """
        A server with an SQLite journal in a fresh directory, and C{args}.
        """
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        journal = os.path.join(directory, "j.sqlite3")
        server = ServerProcess("--journal", f"sqlite:{journal}", *args, cwd=directory)
        self.addCleanup(server.stop)
        return server, journal

    def test_untrustedAddressCannotNameTheClient(self) -> None:
        """
        By default only HAProxy on this host (127.0.0.1) is trusted: the
        forger at 127.0.0.3 gets C{ERR untrusted proxy}, whatever client it
        names and however often (C{--max-per-peer} cannot be escaped), and
        nothing of it is journalled; the same header through 127.0.0.1 is
        served under the client it names. One log line says so.
        """
        server, journal = self.start(
            "--listen", "haproxy:tcp:0:interface=127.0.0.1", "--max-per-peer", "1"
        )
        port = server.ports["proxy"]
        for n in range(3):
            with connect_from("127.0.0.3", port) as forger:
                forged = FORGED.replace(b"6.6.6.6", f"6.6.6.{n}".encode())
                self.assertEqual(ask(forger, forged), [b"ERR untrusted proxy\n"])
                self.assertEqual(recv_all(forger, timeout=DEADLINE), b"")  # closed
        with connect_from("127.0.0.1", port) as proxy:
            self.assertEqual(ask(proxy, FORGED), ["2 sí\n".encode()])
        server.stop()
        self.assertEqual(rows(journal), [("6.6.6.6", 1111, "abc2a")])
        self.assertEqual(server.log.count(b"is not a trusted proxy"), 1, server.log)
        self.assertIn(b"127.0.0.3", server.log)

    def test_behindWorkers(self) -> None:
        """
        The same with C{--workers 2}: each worker refuses the forger.
        """
        server, journal = self.start(
            "--listen", "haproxy:tcp:0:interface=127.0.0.1", "--workers", "2"
        )
        port = server.ports["proxy"]
        for _ in range(4):
            with connect_from("127.0.0.3", port) as forger:
                self.assertEqual(ask(forger, FORGED), [b"ERR untrusted proxy\n"])
        with connect_from("127.0.0.1", port) as proxy:
            self.assertEqual(ask(proxy, FORGED), ["2 sí\n".encode()])
        server.stop()
        self.assertEqual(rows(journal), [("6.6.6.6", 1111, "abc2a")])

    def test_rangeProtocolClosesTheForger(self) -> None:
        """
        The range protocol has no error message: the forger's connection is
        closed with nothing written, and nothing journalled.
        """
        server, journal = self.start("--range-listen", "haproxy:tcp:0:interface=127.0.0.1")
        with connect_from("127.0.0.3", server.ports["range-proxy"]) as forger:
            forger.sendall(FORGED[: FORGED.index(b"\n") + 1] + rangecodec.encode_request(2, 30))
            self.assertEqual(recv_all(forger, timeout=DEADLINE), b"")
        server.stop()
        self.assertEqual(rows(journal), [])
        self.assertIn(b"127.0.0.3", server.log)

    def test_trustedProxiesOption(self) -> None:
        """
        C{--trusted-proxies 127.0.0.3} trusts that address, and only it.
        """
        server, journal = self.start(
            "--listen", "haproxy:tcp:0:interface=127.0.0.1", "--trusted-proxies", "127.0.0.3"
        )
        port = server.ports["proxy"]
        with connect_from("127.0.0.3", port) as proxy:
            self.assertEqual(ask(proxy, FORGED), ["2 sí\n".encode()])
        with connect_from("127.0.0.1", port) as other:
            self.assertEqual(ask(other, FORGED), [b"ERR untrusted proxy\n"])
        server.stop()
        self.assertEqual(rows(journal), [("6.6.6.6", 1111, "abc2a")])

    def test_unixSocketIsTrustedOnlyWhenSaid(self) -> None:
        """
        A C{haproxy:unix:} listener's peers have no address: without
        C{unix} in C{--trusted-proxies} the start stops with one line;
        with it, whoever may connect to the socket names the client.
        """
        directory = tempfile.mkdtemp(prefix="pc-")  # short: UNIX paths are at most 107 bytes
        self.addCleanup(shutil.rmtree, directory, True)
        path = os.path.join(directory, "pc.sock")
        listen = f"haproxy:unix:{path}:mode=600"
        refused = subprocess.run(
            [*TWISTD, "-n", "--pidfile=", "primecount", "--journal", "none", "--listen", listen],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=directory,
        )
        self.assertEqual(refused.returncode, 1, refused.stdout + refused.stderr)
        self.assertEqual(
            refused.stderr.splitlines(),
            [
                f"twistd primecount: error: --listen {listen}: a UNIX-socket peer has no "
                "address to trust; add 'unix' to --trusted-proxies once the socket's "
                "permissions (mode=660 and its directory) let only the proxy connect"
            ],
        )
        journal = os.path.join(directory, "j.sqlite3")
        server = ServerProcess(
            "--journal", f"sqlite:{journal}", "--listen", listen,
            "--trusted-proxies", "127.0.0.1,::1,unix", cwd=directory,
        )  # fmt: skip
        self.addCleanup(server.stop)
        with socket.socket(socket.AF_UNIX) as proxy:
            proxy.settimeout(DEADLINE)
            proxy.connect(path)
            self.assertEqual(ask(proxy, FORGED), ["2 sí\n".encode()])
        server.stop()
        self.assertEqual(rows(journal), [("6.6.6.6", 1111, "abc2a")])


def _normalised(name: str) -> str:
    """
    A distribution's name as packaging compares them (PEP 503).
    """
    return re.sub(r"[-_.]+", "-", name).lower()


def _distributions(name: str) -> set[str]:
    """
    The distribution C{name} and every one it needs to run, as installed
    here (requirement markers evaluated; extras a requirement names
    followed).
    """
    from importlib import metadata

    from packaging.requirements import Requirement

    found: set[str] = set()
    todo: list[tuple[str, frozenset[str]]] = [(name, frozenset())]
    while todo:
        dist_name, extras = todo.pop()
        key = _normalised(dist_name)
        if key in found and not extras:
            continue
        try:
            requires = metadata.distribution(dist_name).requires or []
        except metadata.PackageNotFoundError:
            if key != "primecount":
                continue
            requires = _checkout_requirements()
        found.add(key)
        for line in requires:
            requirement = Requirement(line)
            wanted = requirement.marker is None or any(
                requirement.marker.evaluate({"extra": extra}) for extra in ("", *extras)
            )
            if wanted:
                todo.append((requirement.name, frozenset(requirement.extras)))
    return found


def _checkout_requirements() -> list[str]:
    """
    primecount's requirements from the checkout's C{pyproject.toml}, when it
    runs from a checkout rather than an install.
    """
    import tomllib

    import primecount as package

    top = os.path.dirname(os.path.dirname(package.__file__ or ""))
    with open(os.path.join(top, "pyproject.toml"), "rb") as f:
        return list(tomllib.load(f)["project"]["dependencies"])


def nobody_site() -> str:
    """
    A directory the user C{nobody} can read, holding primecount and every
    package it needs: a copy of what this interpreter imports them from.
    The test environment is often where nobody may not enter (a tox
    environment is 0700, this Python lives under C{/root}).
    """
    from importlib import metadata

    import primecount as package

    site = tempfile.mkdtemp(prefix="pc-site-")
    os.chmod(site, 0o755)
    names = _distributions("primecount")
    for dist in metadata.distributions():
        name = _normalised(dist.metadata["Name"] or "")
        if name not in names:
            continue
        if name == "primecount":
            continue  # copied from where it is imported (an install or a checkout)
        for file in dist.files or []:
            source = str(dist.locate_file(file))
            if file.parts[0] == ".." or not os.path.isfile(source):
                continue
            target = os.path.join(site, *file.parts)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            shutil.copy2(source, target)
    shutil.copytree(
        os.path.dirname(package.__file__ or ""),
        os.path.join(site, "primecount"),
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    # The dropin, from wherever twistd finds it (an install or a checkout).
    import twisted.plugins

    plugins = os.path.join(site, "twisted", "plugins")
    os.makedirs(plugins, exist_ok=True)
    for directory in twisted.plugins.__path__:
        dropin = os.path.join(directory, "primecount_plugin.py")
        if os.path.exists(dropin):
            shutil.copy2(dropin, plugins)
            break
    for directory, subdirectories, files in os.walk(site):
        for name in subdirectories:
            os.chmod(os.path.join(directory, name), 0o755)
        for name in files:
            os.chmod(os.path.join(directory, name), 0o644)
    return site


def nobody_python(site: str) -> tuple[str, dict[str, str]] | None:
    """
    An interpreter of this Python version that the user C{nobody} can run
    and that imports this primecount from C{site} (L{nobody_site}): this
    one, or else the system's. L{None} when neither works.
    """
    system = shutil.which("python3", path="/usr/bin:/bin")
    candidates = [sys.executable] + ([system] if system else [])
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    env = {"PYTHONPATH": site}
    for python in candidates:
        probe = (
            "import sys, primecount.tap, twisted.scripts.twistd; "
            f"assert '{version}' == '%d.%d' % sys.version_info[:2]"
        )
        try:
            result = subprocess.run(
                ["runuser", "-u", "nobody", "--", "env", f"PYTHONPATH={site}", python, "-c", probe],
                capture_output=True, timeout=60, cwd="/",
            )  # fmt: skip
        except (OSError, subprocess.TimeoutExpired):
            continue
        if result.returncode == 0:
            return python, env
    return None


class PrivilegeDropTests(TestCase):
    """
    Hole 2: C{twistd --uid nobody} created the journal as root during the
    option check; after the switch every request was answered C{ERR
    journal unavailable}, forever. Now what the server creates is
    nobody's, and what nobody cannot write stops the start.
    """

    def setUp(self) -> None:
        require_root("run twistd --uid nobody")
        self.nobody = pwd.getpwnam("nobody")
        # A directory nobody can write to, that nobody can reach.
        self.directory = tempfile.mkdtemp(prefix="pc-uid-")
        self.addCleanup(shutil.rmtree, self.directory, True)
        os.chown(self.directory, self.nobody.pw_uid, self.nobody.pw_gid)
        self.journal = os.path.join(self.directory, "j.sqlite3")
        self.uid = ["--uid", "nobody", "--gid", str(self.nobody.pw_gid)]

    def assertNobodys(self, *paths: str, mode: int | None = 0o600) -> None:
        for path in paths:
            uid, gid, bits = owned(path)
            self.assertEqual((uid, gid), (self.nobody.pw_uid, self.nobody.pw_gid), path)
            if mode is not None:
                self.assertEqual(bits, mode, path)

    def test_servesAndJournalsAsNobody(self) -> None:
        """
        Bound as root, run as nobody: correct replies on TCP and on a UNIX
        socket; the journal, its -wal and -shm are nobody's and 0600, the
        socket is nobody's; the stop removes the socket.
        """
        sock = os.path.join(self.directory, "pc.sock")
        server = ServerProcess(
            "--journal", f"sqlite:{self.journal}", "--listen", "tcp:0:interface=127.0.0.1",
            "--listen", f"unix:{sock}",
            cwd=self.directory, twistdOptions=self.uid,
        )  # fmt: skip
        self.addCleanup(server.stop)
        with socket.create_connection(("127.0.0.1", server.port), timeout=DEADLINE) as client:
            self.assertEqual(ask(client, b"abc2a\nabacada\n", 2), ["2 sí\n".encode(), b"4 no\n"])
        with socket.socket(socket.AF_UNIX) as client:
            client.settimeout(DEADLINE)
            client.connect(sock)
            self.assertEqual(ask(client, b"abacadabb\n"), ["3 sí\n".encode()])
        self.assertNobodys(self.journal, self.journal + "-wal", self.journal + "-shm")
        self.assertNobodys(sock, mode=None)
        self.assertEqual(server.stop(), -15)
        self.assertNotIn(b"journal unavailable", server.log)
        self.assertEqual([m for _, _, m in rows(self.journal)], ["abc2a", "abacada", "abacadabb"])
        self.assertFalse(os.path.exists(sock))

    def test_workersServeAsNobody(self) -> None:
        """
        With C{--workers 2}: every worker part, the supervisor's scratch
        directory, shared counts and metric files are nobody's, so the
        workers (started after the switch) serve, the supervisor's
        C{/metrics} sums them, and the stop removes the scratch directory.
        """
        site = nobody_site()
        self.addCleanup(shutil.rmtree, site, True)
        found = nobody_python(site)
        self.assertIsNotNone(
            found, "no Python of this version that nobody can run (Debian: python3)"
        )
        assert found is not None
        python, env = found

        def scratch() -> set[str]:
            # The supervisors' scratch directories that are nobody's.
            base = tempfile.gettempdir()
            return {
                path
                for path in (os.path.join(base, n) for n in os.listdir(base))
                if os.path.basename(path).startswith(SCRATCH_PREFIX)
                and os.lstat(path).st_uid == self.nobody.pw_uid
            }

        before = scratch()
        metricsPort = free_port()
        server = ServerProcess(
            "--journal", f"sqlite:{self.journal}", "--workers", "2",
            "--metrics-port", str(metricsPort),
            cwd=self.directory, twistdOptions=self.uid, python=python, environment=env,
        )  # fmt: skip
        self.addCleanup(server.stop)
        messages = [f"m{n}{'z' * n}" for n in range(8)]
        for message in messages:
            with server.connect(timeout=DEADLINE) as client:
                self.assertEqual(len(ask(client, message.encode() + b"\n")), 1)
        # A worker counts a request just after writing its reply: the last
        # one may reach the shared files a moment after the client has it.
        counted = b'primecount_requests_total{outcome="ok",protocol="count"} 8.0'
        deadline = time.monotonic() + DEADLINE
        while True:
            page = urllib.request.urlopen(
                f"http://127.0.0.1:{metricsPort}/metrics", timeout=DEADLINE
            ).read()
            if counted in page or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        self.assertIn(counted, page)
        parts = part_paths(self.journal)
        self.assertEqual(len(parts), 2)
        self.assertNobodys(self.journal, *parts)
        [made] = scratch() - before
        self.assertNobodys(made, mode=0o700)
        self.assertNobodys(*(os.path.join(made, n) for n in ("connections", "owner")))
        self.assertEqual(server.stop(), -15)
        self.assertFalse(os.path.exists(made))  # removed by nobody at the stop
        self.assertNotIn(b"cannot", server.log)
        self.assertEqual(sorted(m for _, _, m in rows(self.journal)), sorted(messages))

    def test_journalNobodyCannotWriteStopsTheStart(self) -> None:
        """
        Root could create the journal, nobody could not write it: the start
        stops with one line naming it, and leaves no file behind.
        """
        os.chown(self.directory, 0, 0)
        os.chmod(self.directory, 0o755)
        result = subprocess.run(
            [*TWISTD, *self.uid, "-n", "--pidfile=", "primecount", "--journal",
             f"sqlite:{self.journal}", "--port", "0", "--interface", "127.0.0.1"],
            capture_output=True, text=True, timeout=60, cwd=self.directory,
        )  # fmt: skip
        self.assertEqual(result.returncode, 1, result.stdout + result.stderr)
        self.assertEqual(
            result.stderr.splitlines(),
            [
                f"twistd primecount: error: cannot write journal {self.journal}: "
                f"permission denied: directory {self.directory} (owner root, mode 0755) "
                "is not writable by user nobody (SQLite creates j.sqlite3-wal and "
                "j.sqlite3-shm there)"
            ],
        )
        self.assertEqual(os.listdir(self.directory), [])


class PrivateJournalTests(TestCase):
    """
    Hole 3: the SQLite journal and its -wal and -shm were created 0644:
    every local user could read every client's address and message.
    """

    def test_journalFilesAreTheOwnersAlone(self) -> None:
        """
        Under the usual umask 022, the journal, its -wal and -shm (while the
        server runs) and, with C{--workers}, every part are 0600.
        """
        for workers in ("1", "2"):
            directory = os.path.abspath(self.mktemp())
            os.makedirs(directory)
            journal = os.path.join(directory, "j.sqlite3")
            server = ServerProcess(
                "--journal", f"sqlite:{journal}", "--workers", workers,
                cwd=directory, preexec_fn=lambda: os.umask(0o022) and None,
            )  # fmt: skip
            self.addCleanup(server.stop)
            with server.connect(timeout=DEADLINE) as client:
                self.assertEqual(ask(client, b"abc2a\n"), ["2 sí\n".encode()])
            files = sorted(os.listdir(directory))
            self.assertTrue(any(name.endswith("-wal") for name in files), files)
            for name in files:
                self.assertEqual(owned(os.path.join(directory, name))[2], 0o600, (workers, name))
            server.stop()


#: This page's PostgreSQL grants are run by L{PostgresGrantsTests}, as written.
SECURITY_PAGE = os.path.join(
    os.path.dirname(__file__), os.pardir, os.pardir, "docs", "operations", "security.md"
)


def documented_grants() -> str:
    """
    The C{sql} block of the security page: the grants of the writer and
    reader roles.
    """
    with open(SECURITY_PAGE, encoding="utf-8") as f:
        text = f.read()
    start = text.index("```sql\n") + len("```sql\n")
    return "\n".join(line.strip() for line in text[start : text.index("```", start)].splitlines())


class PostgresGrantsTests(TestCase):
    """
    The PostgreSQL grants the security page documents are enough for the
    hosts and the reader, and no more: run as written on a throwaway
    cluster (L{primecount.testing.pgcluster}).
    """

    def test_documentedGrantsServeAndNoMore(self) -> None:
        import psycopg

        from primecount.testing import pgcluster

        cluster = pgcluster.shared()
        url = pgcluster.database(cluster)
        base, name = url.rsplit("/", 1)
        roles = {role: f"pc{os.getpid()}_{name}_{role}" for role in ("owner", "writer", "reader")}

        def as_role(role: str) -> str:
            return base.replace("postgres@", f"{roles[role]}@") + "/" + name

        for role in roles.values():
            cluster.execute(f"CREATE ROLE {role} LOGIN")
        cluster.execute(f"ALTER DATABASE {name} OWNER TO {roles['owner']}")
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        # The owner's first start creates the tables.
        ServerProcess("--journal", as_role("owner"), cwd=directory).stop()
        grants = documented_grants()
        for role in roles:
            grants = grants.replace(f"primecount_{role}", roles[role])
        with psycopg.connect(as_role("owner"), autocommit=True) as conn:
            conn.execute(grants.encode())
        server = ServerProcess("--journal", as_role("writer"), "--range-port", "0", cwd=directory)
        self.addCleanup(server.stop)
        with server.connect(timeout=DEADLINE) as client:
            self.assertEqual(ask(client, b"abc2a\n"), ["2 sí\n".encode()])
        from primecount.cli.primes import fetch, send_sum

        with socket.create_connection(("127.0.0.1", server.ports["range"]), DEADLINE) as client:
            send_sum(client, fetch(client, 10, 30))
        self.assertEqual(server.stop(), -15)
        self.assertNotIn(b"journal unavailable", server.log)
        read = subprocess.run(
            [sys.executable, "-m", "primecount", "journal", "--journal", as_role("reader"),
             "--format", "jsonl"],
            capture_output=True, text=True, timeout=60, cwd=directory,
        )  # fmt: skip
        self.assertEqual(read.returncode, 0, read.stderr)
        records = [line for line in read.stdout.splitlines() if line]
        self.assertEqual(len(records), 2, read.stdout)
        self.assertIn('"sum_ok":true', records[1])
        for role, statement in (
            ("writer", "DELETE FROM primecount_requests"),
            ("writer", "DROP TABLE primecount_requests"),
            ("reader", "INSERT INTO primecount_requests (time, host, port, protocol) "
             "VALUES (now(), '6.6.6.6', 1, 'count')"),
            ("reader", "UPDATE primecount_requests SET host = '6.6.6.6'"),
        ):  # fmt: skip
            with psycopg.connect(as_role(role), autocommit=True) as conn:
                self.assertRaises(psycopg.errors.InsufficientPrivilege, conn.execute, statement)
