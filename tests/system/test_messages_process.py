# -*- test-case-name: tests.system.test_messages_process -*-
"""
Errors a newcomer meets first, from real processes: each is one line
naming the option or the file and the cause, with exit status 1, and the
same with and without C{--workers}.

A read-only directory and a file of another user are what a user who is
not root meets; when the tests run as root (which reads and writes
anything) the commands run without root's power over file permissions.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Callable

from twisted.trial.unittest import SynchronousTestCase

from primecount.journal.sqlite import schema
from primecount.testing.twistd import TWISTD, ServerProcess
from tests.helpers import CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER, recv_lines, restricted


def unprivileged() -> Callable[[], None] | None:
    """
    A C{preexec_fn} that takes from root the capabilities that let it read
    and write every file, so that it meets file permissions as any user
    does; or L{None} when the tests do not run as root. Root keeps its uid:
    the interpreter may live where only root can reach it.
    """
    if os.geteuid() != 0:
        return None
    return restricted((CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER))


def user_name() -> str:
    """
    The name of the user the commands run as.
    """
    return pwd.getpwuid(os.geteuid()).pw_name


def someone_else(path: str) -> str:
    """
    Give C{path} to another user when the tests run as root (root without
    its capabilities still owns its own files); the name of its owner.
    """
    if os.geteuid() == 0:
        os.chown(path, NOBODY, NOBODY)
    return pwd.getpwuid(os.stat(path).st_uid).pw_name


#: A user that is not root.
NOBODY = 65534


def run(argv: list[str], cwd: str, as_user: bool = False) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        preexec_fn=unprivileged() if as_user else None,
    )


def twistd(*args: str, cwd: str, as_user: bool = False) -> subprocess.CompletedProcess[str]:
    # On a free port unless told otherwise: a start that should fail but
    # does not must not take 5050.
    argv = [*TWISTD, "-n", "--pidfile=", "primecount", "--port", "0", "--interface", "127.0.0.1"]
    return run([*argv, *args], cwd, as_user)


def journal_cli(*args: str, cwd: str, as_user: bool = False) -> subprocess.CompletedProcess[str]:
    return run([sys.executable, "-m", "primecount", "journal", *args], cwd, as_user)


class MessagesTestCase(SynchronousTestCase):
    maxDiff = None

    """
    Helpers: a scratch directory every user can enter, and the one line a
    failed command must print.
    """

    def scratch(self) -> str:
        """
        A new directory under the system's temporary directory (which every
        user can enter, unlike a checkout in a home directory).
        """
        path = tempfile.mkdtemp(prefix="primecount-messages-")
        os.chmod(path, 0o755)
        self.addCleanup(self.remove, path)
        return path

    def remove(self, path: str) -> None:
        for folder, dirs, _ in os.walk(path):
            for name in dirs:
                os.chmod(os.path.join(folder, name), 0o755)
        os.chmod(path, 0o755)
        shutil.rmtree(path)

    def assertOneLine(self, done: subprocess.CompletedProcess[str], line: str) -> None:
        """
        C{done} failed with exit status 1, printing C{line} and nothing else.
        """
        output = (done.stdout + done.stderr).strip().splitlines()
        self.assertEqual((done.returncode, output), (1, [line]))


class JournalAccessTests(MessagesTestCase):
    """
    A journal this user cannot write or read: SQLite says only C{unable to
    open database file} (or C{attempt to write a readonly database}).
    """

    def readOnlyDirectory(self, journal: bool) -> str:
        directory = os.path.join(self.scratch(), "ro")
        os.mkdir(directory)
        if journal:
            schema.connect(os.path.join(directory, "j.sqlite3")).close()
            os.chmod(os.path.join(directory, "j.sqlite3"), 0o644)
        os.chmod(directory, 0o555)
        return directory

    def deniedDirectory(self, directory: str) -> str:
        owner = pwd.getpwuid(os.stat(directory).st_uid).pw_name
        return (
            f"permission denied: directory {directory} (owner {owner}, mode 0555) "
            f"is not writable by user {user_name()}"
        )

    def test_serverInReadOnlyDirectory(self) -> None:
        """
        Before: C{cannot write journal …: unable to open database file}.
        """
        directory = self.readOnlyDirectory(journal=False)
        path = os.path.join(directory, "j.sqlite3")
        line = (
            f"twistd primecount: error: cannot write journal {path}: "
            f"{self.deniedDirectory(directory)} "
            "(SQLite creates j.sqlite3-wal and j.sqlite3-shm there)"
        )
        for workers in ("1", "2"):
            done = twistd(
                "--journal", path, "--workers", workers, cwd=directory, as_user=True
            )  # fmt: skip
            self.assertOneLine(done, line)

    def test_readerInReadOnlyDirectory(self) -> None:
        """
        Reading a journal in WAL mode needs its directory writable (SQLite
        creates the C{-shm} file). Before: C{cannot read journal …: unable
        to open database file} (or C{attempt to write a readonly database}).
        """
        directory = self.readOnlyDirectory(journal=True)
        path = os.path.join(directory, "j.sqlite3")
        done = journal_cli("--journal", path, cwd=directory, as_user=True)
        self.assertOneLine(
            done,
            f"primecount journal: cannot read journal {path}: {self.deniedDirectory(directory)}"
            ", and SQLite must create j.sqlite3-shm there to read a journal in WAL mode "
            "(read it as the user who owns it, or copy it to a writable directory)",
        )

    def test_fileOfAnotherUser(self) -> None:
        """
        A journal file this user may not read (mode 0600, another owner),
        or may read but not write (mode 0444).
        """
        directory = self.scratch()
        path = os.path.join(directory, "j.sqlite3")
        schema.connect(path).close()
        os.chmod(directory, 0o777)
        owner = someone_else(path)
        mode = 0o600 if os.geteuid() == 0 else 0o000
        os.chmod(path, mode)
        done = journal_cli("--journal", path, cwd=directory, as_user=True)
        self.assertOneLine(
            done,
            f"primecount journal: cannot read journal {path}: permission denied: {path} "
            f"(owner {owner}, mode {mode:04o}) is not readable by user {user_name()}",
        )
        os.chmod(path, 0o444)
        done = twistd("--journal", path, cwd=directory, as_user=True)
        self.assertOneLine(
            done,
            f"twistd primecount: error: cannot write journal {path}: permission denied: "
            f"{path} (owner {owner}, mode 0444) is not writable by user {user_name()}",
        )

    def test_missingDirectory(self) -> None:
        directory = self.scratch()
        path = os.path.join(directory, "nope", "j.sqlite3")
        for workers in ("1", "2"):
            done = twistd("--journal", path, "--workers", workers, cwd=directory)
            self.assertOneLine(
                done,
                f"twistd primecount: error: cannot write journal {path}: "
                f"directory {directory}/nope does not exist",
            )


class JournalPathTests(MessagesTestCase):
    """
    C{--journal /srv/x.sqlite3}, a bare path, is an SQLite file, for the
    server and for C{primecount journal}. Before: C{unknown journal}.
    """

    def test_barePath(self) -> None:
        directory = self.scratch()
        path = os.path.join(directory, "x.sqlite3")
        server = ServerProcess("--journal", path, cwd=directory)
        self.addCleanup(server.stop)
        self.assertIn(f"journal=sqlite:{path}", server.log.decode())
        with server.connect() as sock:
            sock.sendall(b"abc2a\n")
            self.assertEqual(recv_lines(sock, 1), ["2 sí\n".encode()])
        server.stop()
        done = journal_cli("--journal", path, "--format", "csv", cwd=directory)
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertIn(",abc2a,2,", done.stdout)
        conn = sqlite3.connect(path)
        self.addCleanup(conn.close)
        self.assertEqual(conn.execute("SELECT message FROM requests").fetchall(), [("abc2a",)])


class ListenerTests(MessagesTestCase):
    """
    A port that cannot be bound names its option, in the same words with
    and without C{--workers}. Before: C{cannot listen on tcp:9109:…:
    [Errno 98] Address already in use}, or with C{--workers} C{… Couldn't
    listen on 127.0.0.1:9109: [Errno 98] Address already in use.}.
    """

    def taken(self) -> int:
        busy = socket.socket()
        self.addCleanup(busy.close)
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        return int(busy.getsockname()[1])

    def failure(self, *args: str, workers: str) -> str:
        done = twistd(
            "--interface", "127.0.0.1", "--journal", "none", "--workers", workers, *args,
            cwd=self.scratch(),
        )  # fmt: skip
        output = done.stdout + done.stderr
        self.assertEqual(done.returncode, 1, output)
        self.assertNotIn("Traceback", output)
        failed = [line for line in output.splitlines() if "cannot listen" in line]
        self.assertEqual(len(failed), 1, output)
        return failed[0]

    def test_optionInUse(self) -> None:
        port = self.taken()
        for option in ("--port", "--range-port", "--metrics-port"):
            args = ["--port", "0", option, str(port)] if option != "--port" else [option, str(port)]
            cause = (
                f"{option} {port}: cannot listen on 127.0.0.1:{port}: "
                "the address is already in use (another program listens there)"
            )
            for workers in ("1", "2"):
                self.assertTrue(
                    self.failure(*args, workers=workers).endswith(cause), (option, workers)
                )

    def test_portGivenTwice(self) -> None:
        """
        Before: the second listener failed to bind, naming no option (with
        C{--workers 2} in another, doubled form).
        """
        for workers in ("1", "2"):
            done = twistd(
                "--interface", "127.0.0.1", "--journal", "none", "--workers", workers,
                "--port", "5058", "--range-port", "5058", cwd=self.scratch(),
            )  # fmt: skip
            self.assertOneLine(
                done,
                "twistd primecount: error: port 5058 is given twice: --port 5058 and "
                "--range-port 5058 (each listener needs a port of its own)",
            )


class LogLineTests(MessagesTestCase):
    """
    The start's line names every listener with its kind and the metrics
    port; the stop's line counts in good English. Before: TLS and UNIX
    listeners looked like plain ones, the metrics port was missing, and
    one transaction was C{1 transactions}.
    """

    def test_startLineNamesEveryListener(self) -> None:
        directory = self.scratch()
        socket_path = os.path.join(directory, "pc.sock")
        for workers in ("1", "2"):
            server = ServerProcess(
                "--journal", "none", "--workers", workers, "--metrics-port", "0",
                "--listen", "tcp:0:interface=127.0.0.1",
                "--listen", "haproxy:tcp:0:interface=127.0.0.1",
                *(["--listen", f"unix:{socket_path}"] if workers == "1" else []),
                cwd=directory,
            )  # fmt: skip
            self.addCleanup(server.stop)
            line = server.log.decode().split("listening on ")[1].split(";")[0]
            expected = [
                f"count 127.0.0.1:{server.ports['count']}",
                f"count 127.0.0.1:{server.ports['proxy']} (PROXY header)",
                *([f"count {socket_path} (UNIX)"] if workers == "1" else []),
                f"metrics http://127.0.0.1:{server.ports['metrics']}/metrics",
            ]
            self.assertEqual(line.split(", "), expected)
            server.stop()

    def test_oneTransaction(self) -> None:
        directory = self.scratch()
        server = ServerProcess("--journal", "sqlite:j.sqlite3", cwd=directory)
        self.addCleanup(server.stop)
        with server.connect() as sock:
            sock.sendall(b"abc2a\n")
            self.assertEqual(recv_lines(sock, 1), ["2 sí\n".encode()])
        server.stop()
        self.assertIn(
            b"journal closed: 1 record committed since the start, in 1 transaction\n",
            server.log,
        )
