# -*- test-case-name: tests.system.test_connections_process -*-
"""
Connection limits and the orderly stop against a real server: SIGTERM with
requests in flight, a low open-files limit, a UNIX socket. The units are in
L{tests.unit.test_connections}.
"""

from __future__ import annotations

import os
import resource
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Callable

from twisted.trial.unittest import SynchronousTestCase

from primecount.testing.twistd import ServerProcess
from tests.helpers import journal_messages, recv_all, recv_lines, sigterm_in_flight


class SigtermTests(SynchronousTestCase):
    """
    SIGTERM with clients in flight: answered, journalled, clean exit.
    """

    def test_sigtermAnswersInFlightAndLosesNoRecord(self) -> None:
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        server = ServerProcess("--journal", "sqlite:j.sqlite3", "--journal-fsync", cwd=directory)
        self.addCleanup(server.stop)
        status, answered = sigterm_in_flight(server, clients=8, requests=500)
        self.assertIn(status, (0, -signal.SIGTERM))
        self.assertGreater(len(answered), 0)
        stored = journal_messages(os.path.join(directory, "j.sqlite3"))
        self.assertEqual([m for m in answered if m not in stored], [])
        self.assertIn(b"journal closed: ", server.log)
        self.assertNotIn(b"Traceback", server.log)


def _lowOpenFilesLimit(limit: int) -> Callable[[], None]:
    def lower() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

    return lower


class DescriptorExhaustionTests(SynchronousTestCase):
    """
    A real server under a low open-files limit: the connection limit is
    lowered to fit, and a burst beyond it gets ERR server busy, not silence.
    """

    def test_burstUnderLowLimitIsAnsweredOrRefused(self) -> None:
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        server = ServerProcess(
            "--journal", "sqlite:j.sqlite3", "--timeout", "60",
            cwd=directory, preexec_fn=_lowOpenFilesLimit(128),
        )  # fmt: skip
        self.addCleanup(server.stop)
        self.assertIn(
            b"open files limit is 128: serving at most 64 connections at once, "
            b"not --max-connections 10000",
            server.log,
        )
        started = server.log.count(b"\n")
        # Hold every connection the server will serve: 64, all answered.
        held = [server.connect() for _ in range(64)]
        self.addCleanup(lambda: [s.close() for s in held])
        for sock in held:
            sock.sendall(b"abc2a\n")
        for sock in held:
            self.assertEqual(recv_lines(sock, 1), ["2 sí\n".encode()])
        # A burst waiting in the accept queue while the server is stopped,
        # so that one accept loop runs out of descriptors.
        server.signal(signal.SIGSTOP)
        try:
            burst = [server.connect() for _ in range(200)]
            for sock in burst:
                sock.sendall(b"abc2a\n")
        finally:
            server.signal(signal.SIGCONT)
        replies = []
        for sock in burst:
            replies.append(b"".join(recv_lines(sock, 1, timeout=15)))
            sock.close()
        self.assertEqual(set(replies), {b"ERR server busy\n"})
        # Still serving once the held connections go.
        for sock in held:
            sock.close()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            with server.connect() as sock:
                sock.sendall(b"abc2a\n")
                reply = b"".join(recv_lines(sock, 1))
            if reply == "2 sí\n".encode():
                break
            time.sleep(0.2)
        self.assertEqual(reply, "2 sí\n".encode())
        server.readLog(0.5)
        log = server.log.decode(errors="replace").splitlines()[started:]
        self.assertIn("out of file descriptors", "\n".join(log))
        self.assertLessEqual(len(log), 4, log)
        self.assertNotIn(b"Traceback", server.log)


class UnixSocketTests(SynchronousTestCase):
    """
    A real server on a UNIX socket journals its clients as C{unix:PATH}.
    """

    def test_unixClientJournalled(self) -> None:
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        # AF_UNIX paths are short (108 bytes): not under _trial_temp.
        short = tempfile.mkdtemp(prefix="pc-")
        self.addCleanup(shutil.rmtree, short, True)
        path = os.path.join(short, "pc.sock")
        server = ServerProcess(
            "--journal", "sqlite:j.sqlite3", "--listen", f"unix:{path}", cwd=directory
        )
        self.addCleanup(server.stop)
        with socket.socket(socket.AF_UNIX) as sock:
            sock.connect(path)
            sock.sendall(b"abc2a\n")
            sock.shutdown(socket.SHUT_WR)
            self.assertEqual(recv_all(sock), "2 sí\n".encode())
        self.assertIn(server.stop(), (0, -signal.SIGTERM))
        import sqlite3

        conn = sqlite3.connect(os.path.join(directory, "j.sqlite3"))
        self.addCleanup(conn.close)
        self.assertEqual(
            conn.execute("SELECT host, port FROM requests").fetchall(), [(f"unix:{path}", 0)]
        )
