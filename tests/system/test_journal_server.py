# -*- test-case-name: tests.system.test_journal_server -*-
"""
The journal under a real server: kill -9 under load loses nothing the
clients were told, and a journal that cannot be written yields
C{ERR journal unavailable} until it can.
"""

from __future__ import annotations

import os
import socket
import sqlite3
import threading
import time

from twisted.trial.unittest import SynchronousTestCase

from primecount.cli.primes import fetch, send_sum
from primecount.core.count import expected_reply
from primecount.testing.twistd import ServerProcess
from tests.helpers import recv_lines

YES = "sí".encode()


def journalled(path: str) -> list[str]:
    conn = sqlite3.connect(path, timeout=5)
    try:
        return [m for (m,) in conn.execute("SELECT message FROM requests")]
    finally:
        conn.close()


class KillNineTests(SynchronousTestCase):
    """
    SIGKILL mid-load: every reply a client received has its record.
    """

    def test_everyAnsweredRequestSurvivesKill9(self) -> None:
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        server = ServerProcess("--journal", "sqlite:j.sqlite3", cwd=directory)
        self.addCleanup(server.stop)
        answered: list[list[str]] = [[] for _ in range(8)]
        wrong: list[tuple[str, bytes]] = []
        deadline = time.monotonic() + 5.0

        def client(n: int) -> None:
            # Persistent connection, 16 requests in flight; stops at the
            # kill (EOF/reset) or at the deadline.
            try:
                sock = server.connect(timeout=5)
            except OSError:
                return
            with sock:
                i = 0
                while time.monotonic() < deadline:
                    batch = [f"c{n}-{i + j}-{'x' * ((i + j) % 5)}a" for j in range(16)]
                    i += 16
                    try:
                        sock.sendall("".join(m + "\n" for m in batch).encode())
                    except OSError:
                        return
                    replies = recv_lines(sock, len(batch), timeout=5)
                    for message, reply in zip(batch, replies, strict=False):
                        if reply != expected_reply(message):
                            wrong.append((message, reply))
                        answered[n].append(message)
                    if len(replies) < len(batch):
                        return

        threads = [threading.Thread(target=client, args=(n,)) for n in range(8)]
        for t in threads:
            t.start()
        time.sleep(1.5)
        server.process.kill()
        server.process.wait()
        for t in threads:
            t.join(10)
        received = [m for per in answered for m in per]
        self.assertEqual(wrong, [])
        self.assertGreater(len(received), 1000, "too little load to mean anything")
        stored = set(journalled(os.path.join(directory, "j.sqlite3")))
        missing = [m for m in received if m not in stored]
        self.assertEqual(missing, [], f"{len(missing)} of {len(received)} answered requests lost")


class UnwritableJournalTests(SynchronousTestCase):
    """
    A journal another process holds locked: ERR, then recovery.
    """

    def test_lockedJournalAnswersErrThenRecovers(self) -> None:
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        server = ServerProcess("--journal", "sqlite:j.sqlite3", cwd=directory)
        self.addCleanup(server.stop)
        path = os.path.join(directory, "j.sqlite3")
        with server.connect() as sock:
            sock.sendall(b"first\n")
            self.assertEqual(recv_lines(sock, 1), [b"1 no\n"])

            locker = sqlite3.connect(path, isolation_level=None)
            locker.execute("BEGIN EXCLUSIVE")
            try:
                sock.sendall(b"during1\nduring2\n")
                self.assertEqual(
                    recv_lines(sock, 2, timeout=15),
                    [b"ERR journal unavailable\n", b"ERR journal unavailable\n"],
                )
            finally:
                locker.execute("ROLLBACK")
                locker.close()

            # Requests get ERR until the journal's probe finds it writable.
            deadline = time.monotonic() + 10
            while True:
                sock.sendall(b"after\n")
                reply = recv_lines(sock, 1)
                if reply != [b"ERR journal unavailable\n"] or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            self.assertEqual(reply, [b"1 no\n"])
        self.assertEqual(sorted(journalled(path)), ["after", "first"])
        server.stop()
        log = server.log.decode()
        self.assertEqual(log.count("cannot commit"), 1, log)
        self.assertEqual(log.count("writable again"), 1, log)


class FsyncOptionTests(SynchronousTestCase):
    """
    --journal-fsync serves and journals like the default.
    """

    def test_fsyncJournal(self) -> None:
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        server = ServerProcess("--journal", "sqlite:j.sqlite3", "--journal-fsync", cwd=directory)
        self.addCleanup(server.stop)
        with server.connect() as sock:
            sock.sendall(b"abc2a\n")
            self.assertEqual(recv_lines(sock, 1), [b"2 " + YES + b"\n"])
        self.assertIn(
            b"journal=sqlite:"
            + os.path.join(directory, "j.sqlite3").encode()
            + b" durability=disk",
            server.log,
        )
        self.assertEqual(journalled(os.path.join(directory, "j.sqlite3")), ["abc2a"])


class RangeJournalTests(SynchronousTestCase):
    """
    Range requests are journalled before their reply, and completed after
    the client's sum.
    """

    def start(self) -> tuple[ServerProcess, str]:
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        server = ServerProcess("--journal", "sqlite:j.sqlite3", "--range-port", "0", cwd=directory)
        self.addCleanup(server.stop)
        return server, os.path.join(directory, "j.sqlite3")

    def rows(self, path: str) -> list[tuple[object, ...]]:
        conn = sqlite3.connect(path, timeout=5)
        try:
            return conn.execute(
                "SELECT a, b, count, sum_ok, error FROM requests WHERE protocol = 'range'"
            ).fetchall()
        finally:
            conn.close()

    def test_answeredRangeSurvivesKill9BeforeItsSum(self) -> None:
        server, path = self.start()
        with socket.create_connection(("127.0.0.1", server.ports["range"]), timeout=10) as sock:
            primes = fetch(sock, 100, 200)
            self.assertEqual(len(primes), 21)
            server.process.kill()
            server.process.wait()
        self.assertEqual(self.rows(path), [(100, 200, 21, None, None)])

    def test_recordCompletedWithTheSum(self) -> None:
        server, path = self.start()
        with socket.create_connection(("127.0.0.1", server.ports["range"]), timeout=10) as sock:
            send_sum(sock, fetch(sock, 100, 200))
            send_sum(sock, fetch(sock, 10, 20))
            self.assertEqual(len(fetch(sock, 2, 2)), 1)
        server.stop()
        self.assertEqual(
            self.rows(path),
            [
                (100, 200, 21, 1, None),
                (10, 20, 4, 1, None),
                (2, 2, 1, None, "client disconnected before sending the sum"),
            ],
        )
