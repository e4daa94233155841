"""
Tests for L{primecount.cli.journal} that run C{python -m primecount journal}
in a subprocess, to check what only a real process shows (exit status,
Ctrl-C, a closed pipe). The rest is in L{tests.unit.test_journalcli}.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from typing import IO

from twisted.trial.unittest import TestCase

from primecount.journal.records import Record
from tests.unit.test_journalcli import COMPOSITE, GOOD, T, append, make_journal, temp_path


def _command(*argv: str) -> list[str]:
    return [sys.executable, "-m", "primecount", "journal", *argv]


def _read_line(pipe: IO[bytes], timeout: float) -> bytes:
    """
    One line from C{pipe}, or C{b""} when none arrives within C{timeout}.
    """
    deadline = time.monotonic() + timeout
    line = b""
    while not line.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([pipe], [], [], left)[0]:
            return b""
        chunk = os.read(pipe.fileno(), 1)
        if not chunk:
            return line
        line += chunk
    return line


class ProcessTests(TestCase):
    """
    C{python -m primecount journal} as a real process.
    """

    def start(self, *argv: str) -> subprocess.Popen[bytes]:
        """
        Start C{primecount journal argv…}, killed at the end of the test.
        """
        process = subprocess.Popen(
            _command(*argv),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            # As from a terminal: a runner started in the background has
            # SIGINT ignored, and the child would inherit that (then Python
            # installs no KeyboardInterrupt handler and Ctrl-C does nothing).
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )

        def stop() -> None:
            if process.poll() is None:
                process.kill()
            process.wait()
            for pipe in (process.stdout, process.stderr):
                if pipe is not None:
                    pipe.close()

        self.addCleanup(stop)
        return process

    def test_prints(self) -> None:
        """
        The records go to stdout; status 0.
        """
        url = "sqlite:" + make_journal(self, [GOOD])
        done = subprocess.run(_command("--journal", url), capture_output=True, timeout=30)
        self.assertEqual(
            (done.returncode, done.stdout, done.stderr),
            (0, "2026-02-16 10:37:12 | 127.0.0.1 | abc2a | 2 | sí\n".encode(), b""),
        )

    def test_errorIsOneLine(self) -> None:
        """
        A missing journal: one line on stderr, non-zero status, no traceback.
        """
        path = os.path.abspath(temp_path(self))
        done = subprocess.run(
            _command("--journal", "sqlite:" + path), capture_output=True, timeout=30
        )
        self.assertNotEqual(done.returncode, 0)
        self.assertEqual(done.stdout, b"")
        self.assertEqual(len(done.stderr.splitlines()), 1, done.stderr)
        self.assertIn(b"no journal at", done.stderr)

    def test_followAndCtrlC(self) -> None:
        """
        C{--follow} prints a record committed after it started (it polls
        every 0.2 s; the bound is generous for a loaded machine), and Ctrl-C
        (SIGINT) ends it quietly with status 0.
        """
        path = make_journal(self, [GOOD])
        process = self.start("--journal", "sqlite:" + path, "--follow", "--limit", "1")
        assert process.stdout is not None
        # The backlog line shows the process is following.
        self.assertEqual(
            _read_line(process.stdout, 20),
            "2026-02-16 10:37:12 | 127.0.0.1 | abc2a | 2 | sí\n".encode(),
        )
        append(path, [COMPOSITE])
        self.assertEqual(
            _read_line(process.stdout, 10),
            b"2026-02-16 10:37:13 | 127.0.0.1 | abcd | 1 | no\n",
        )
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=30)
        self.assertEqual((process.returncode, out, err), (0, b"", b""))

    def test_closedPipe(self) -> None:
        """
        When the reader goes away (C{| head -1}), the process ends quietly.
        """
        many = [Record(T + i, "::1", 1, "count", "m" * 50, 1, False) for i in range(20000)]
        path = make_journal(self, many)
        process = self.start("--journal", "sqlite:" + path)
        assert process.stdout is not None and process.stderr is not None
        self.assertTrue(_read_line(process.stdout, 20))
        process.stdout.close()
        self.assertEqual(process.wait(timeout=20), 0)
        self.assertEqual(process.stderr.read(), b"")
