# -*- test-case-name: tests.system.test_sqlite_journal_faults_process -*-
"""
The SQLite journal's faults under a real server: a file deleted or replaced under
it, a lock held by another process, a stop that must keep its bound. The
in-process faults are in L{tests.unit.test_sqlite_journal_faults}.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import time
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from primecount.core.count import expected_reply
from primecount.testing.twistd import ServerProcess
from tests.helpers import recv_all, recv_lines


class LockedJournalServerTests(SynchronousTestCase):
    """
    A real server while another process holds the journal's write lock.
    """

    def test_errAtOnceDuringEpisodeOkSoonAfter(self) -> None:
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        server = ServerProcess("--journal", "sqlite:j.sqlite3", cwd=directory)
        self.addCleanup(server.stop)
        path = os.path.join(directory, "j.sqlite3")
        unavailable = [b"ERR journal unavailable\n"]
        with server.connect(timeout=20) as sock:
            sock.sendall(b"first\n")
            self.assertEqual(recv_lines(sock, 1), [b"1 no\n"])
            locker = sqlite3.connect(path, isolation_level=None)
            locker.execute("BEGIN EXCLUSIVE")
            try:
                # The first failure takes SQLite's busy timeout; every later
                # request is answered at once.
                sock.sendall(b"during0\n")
                self.assertEqual(recv_lines(sock, 1, timeout=20), unavailable)
                for i in range(1, 4):
                    started = time.monotonic()
                    sock.sendall(b"during%d\n" % i)
                    self.assertEqual(recv_lines(sock, 1, timeout=20), unavailable)
                    self.assertLess(time.monotonic() - started, 1.0)
            finally:
                locker.execute("ROLLBACK")
                locker.close()
            released = time.monotonic()
            while True:
                sock.sendall(b"after\n")
                reply = recv_lines(sock, 1, timeout=20)
                if reply != unavailable or time.monotonic() - released > 10:
                    break
                time.sleep(0.05)
            self.assertEqual(reply, [b"1 no\n"])
            self.assertLess(time.monotonic() - released, 2.0)
        server.stop()
        log = server.log.decode()
        self.assertEqual(log.count("cannot commit"), 1, log)
        self.assertEqual(log.count("writable again"), 1, log)


def journalRead(path: str) -> list[str]:
    """
    The messages C{primecount journal --format jsonl} prints for C{path}.
    """
    import json
    import subprocess
    import sys

    argv = [sys.executable, "-m", "primecount", "journal", "--journal", f"sqlite:{path}"]
    done = subprocess.run(
        [*argv, "--format", "jsonl"],
        capture_output=True,
        timeout=30,
    )
    if done.returncode != 0:
        # No journal at the path (or not one): it holds no record.
        return []
    return [json.loads(line)["message"] for line in done.stdout.splitlines()]


class ReplacedJournalTests(SynchronousTestCase):
    """
    The journal file deleted, or renamed and replaced, while the server
    runs: every request answered afterwards is in the file at the path.
    """

    def run_with(self, replace: Any, old: str | None = None) -> str:
        """
        Serve, C{replace(path)}, serve on: every request answered is in the
        file at the path, or (given C{old}, the old file's new name) in
        exactly one of the two.
        """
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        server = ServerProcess("--journal", "sqlite:j.sqlite3", cwd=directory)
        self.addCleanup(server.stop)
        path = os.path.join(directory, "j.sqlite3")
        answered = []
        with server.connect(timeout=20) as sock:
            for i in range(5):
                sock.sendall(b"before%d\n" % i)
                self.assertEqual(recv_lines(sock, 1), [b"1 no\n"])
            replace(path)
            for i in range(40):
                message = f"after{i}"
                sock.sendall(message.encode() + b"\n")
                [reply] = recv_lines(sock, 1, timeout=20)
                self.assertIn(reply, [expected_reply(message), b"ERR journal unavailable\n"])
                if reply == expected_reply(message):
                    answered.append(message)
                time.sleep(0.01)
        self.assertGreater(len(answered), 30)
        server.stop()
        stored = journalRead(path)
        both = stored + (journalRead(path + old) if old else [])
        missing = [m for m in answered if both.count(m) != 1]
        self.assertEqual(missing, [], f"answered but not once in {path} and {old}: {missing}")
        # A fresh journal: nothing of the old file came back with it.
        self.assertFalse([m for m in stored if m.startswith("before")], stored)
        log = server.log.decode()
        self.assertEqual(log.count("while in use"), 1, log)
        return path

    def test_deleted(self) -> None:
        self.run_with(os.unlink)

    def test_renamedAndReplaced(self) -> None:
        def rotate(path: str) -> None:
            os.rename(path, path + ".1")
            conn = sqlite3.connect(path)
            conn.execute("CREATE TABLE unrelated (x)")
            conn.close()

        path = self.run_with(rotate, ".1")
        # The rotated file keeps what was written to it, the group whose
        # commit noticed the rotation included (it is not written again).
        rotated = journalRead(path + ".1")
        self.assertEqual(rotated, [f"before{i}" for i in range(5)] + ["after0"])


class BoundedStopTests(SynchronousTestCase):
    """
    SIGTERM while another process holds the journal's write lock: the
    server keeps its --shutdown-timeout, answering ERR to what it could not
    record.
    """

    def test_sigtermWithLockedJournalKeepsTheBound(self) -> None:
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        server = ServerProcess(
            "--journal", "sqlite:j.sqlite3", "--shutdown-timeout", "3", cwd=directory
        )
        self.addCleanup(server.stop)
        path = os.path.join(directory, "j.sqlite3")
        with server.connect(timeout=20) as sock:
            sock.sendall(b"first\n")
            self.assertEqual(recv_lines(sock, 1), [b"1 no\n"])
            locker = sqlite3.connect(path, isolation_level=None)
            self.addCleanup(locker.close)
            locker.execute("BEGIN EXCLUSIVE")
            sock.sendall(b"blocked\n")
            time.sleep(0.5)
            signalled = time.monotonic()
            server.signal(signal.SIGTERM)
            replies = recv_all(sock, timeout=20)
            status = server.wait(timeout=30)
            took = time.monotonic() - signalled
        self.assertEqual(replies, b"ERR journal unavailable\n")
        self.assertIn(status, (0, -signal.SIGTERM))
        self.assertLess(took, 4.0, server.log.decode())


class RangesCutByStopTests(SynchronousTestCase):
    """
    Range requests cut by a stop are settled before the journal stops.
    """

    def run_stop(self, client: Any) -> tuple[list[tuple[object, ...]], str]:
        from primecount.cli.primes import fetch

        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        server = ServerProcess(
            "--journal",
            "sqlite:j.sqlite3",
            "--range-port",
            "0",
            "--shutdown-timeout",
            "2",
            cwd=directory,
        )
        self.addCleanup(server.stop)
        import socket

        with socket.create_connection(("127.0.0.1", server.ports["range"]), timeout=20) as sock:
            self.assertEqual(len(fetch(sock, 100, 200)), 21)
            server.signal(signal.SIGTERM)
            client(sock)
            server.wait(timeout=30)
        conn = sqlite3.connect(os.path.join(directory, "j.sqlite3"), timeout=5)
        try:
            rows = conn.execute(
                "SELECT a, b, count, sum_ok, error FROM requests WHERE protocol = 'range'"
            ).fetchall()
        finally:
            conn.close()
        return rows, server.log.decode()

    def test_clientLeavesDuringTheStop(self) -> None:
        def leave(sock: Any) -> None:
            time.sleep(0.5)
            sock.close()

        rows, log = self.run_stop(leave)
        self.assertEqual(rows, [(100, 200, 21, None, "client disconnected before sending the sum")])
        self.assertNotIn("journal is stopped", log)
        self.assertNotIn("Journal unavailable", log)

    def test_droppedAtTheDeadline(self) -> None:
        rows, log = self.run_stop(lambda sock: recv_all(sock, timeout=20))
        [(a, b, count, sum_ok, error)] = rows
        self.assertEqual((a, b, count, sum_ok), (100, 200, 21, None))
        self.assertIsNotNone(error, "the cut range was left sum unknown")
        self.assertNotIn("journal is stopped", log)
        self.assertNotIn("Journal unavailable", log)
