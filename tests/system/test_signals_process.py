# -*- test-case-name: tests.system.test_signals_process -*-
"""
SIGHUP against real servers, one process and C{--workers 2}: the orderly
stop SIGTERM gets, not instant death. The units are in
L{tests.unit.test_tap} (C{OneStopSignalTests}).
"""

from __future__ import annotations

import os
import signal

from twisted.trial.unittest import SynchronousTestCase

from primecount.testing.twistd import ServerProcess
from tests.helpers import journal_messages, sigterm_in_flight
from tests.system.test_workers_process import alive, children, wait_for


def foreground_job() -> None:
    """
    Start the server as a shell starts a foreground job: in its own process
    group (what a closed terminal sends SIGHUP to), with SIGHUP at its
    default action whatever the test run inherited (under C{nohup} it is
    ignored, and a server keeps an ignored SIGHUP ignored).
    """
    os.setpgrp()
    signal.signal(signal.SIGHUP, signal.SIG_DFL)


class HangUpTests(SynchronousTestCase):
    """
    SIGHUP with requests in flight: answered, journalled, nothing left
    behind (before: exit on the signal at once, clients reset, the
    supervisor's scratch directory left in C{TMPDIR}).
    """

    def setUp(self) -> None:
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(os.path.join(self.dir, "tmp"))
        # The supervisor's scratch directory goes here, where it can be seen.
        self.patch(os, "environ", dict(os.environ, TMPDIR=os.path.join(self.dir, "tmp")))

    def start(self, *args: str) -> ServerProcess:
        server = ServerProcess(
            "--journal", "sqlite:j.sqlite3", *args, cwd=self.dir, preexec_fn=foreground_job
        )
        self.addCleanup(server.stop)
        return server

    def assertStoppedInOrder(self, server: ServerProcess, status: int, answered: list[str]) -> None:
        self.assertIn(status, (0, -signal.SIGHUP))
        self.assertGreater(len(answered), 0)
        stored = journal_messages(os.path.join(self.dir, "j.sqlite3"))
        self.assertEqual([m for m in answered if m not in stored], [])
        log = server.log.decode("utf-8", "replace")
        self.assertIn("Received SIGHUP, shutting down.", log)
        self.assertIn("journal closed: ", log)
        self.assertNotIn("Traceback", log)
        self.assertEqual(os.listdir(os.path.join(self.dir, "tmp")), [])

    def test_oneProcess(self) -> None:
        server = self.start()
        status, answered = sigterm_in_flight(
            server, clients=6, requests=300, signum=signal.SIGHUP, group=True
        )
        self.assertStoppedInOrder(server, status, answered)

    def test_workersSignalledWithTheirSupervisor(self) -> None:
        """
        A closed terminal signals the supervisor and its workers at once:
        each worker stops once, none is restarted, the supervisor removes
        its scratch directory.
        """
        server = self.start("--workers", "2")

        def listening() -> bool:
            server.readLog(0.05)
            return all(b"worker %d: [primecount#info] primecount" % i in server.log for i in (0, 1))

        # Both workers serve (a worker still starting dies of SIGHUP as of
        # SIGTERM: its handlers are installed when its reactor runs).
        self.assertTrue(wait_for(listening, 30), server.log.decode("utf-8", "replace"))
        workers = children(server.process.pid)
        self.assertEqual(len(workers), 2)
        status, answered = sigterm_in_flight(
            server, clients=6, requests=300, tag="w", signum=signal.SIGHUP, group=True
        )
        self.assertStoppedInOrder(server, status, answered)
        self.assertTrue(wait_for(lambda: not any(alive(w) for w in workers)), "orphaned workers")
        log = server.log.decode("utf-8", "replace")
        self.assertEqual(log.count("journal closed: "), 2, log)
        self.assertNotIn("restarting it", log)
