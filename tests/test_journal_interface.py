# -*- test-case-name: tests.test_journal_interface -*-
"""
The journal interface: L{primecount.journal.NullJournal}, L{open_journal},
and the benchmark range server that runs without a journal.
"""

from __future__ import annotations

import importlib.util
import os
import select
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import ModuleType

import numpy as np
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from primecount.cli.multiclient import fetch, send_sum
from primecount.core import rangecodec
from primecount.journal import (
    DEFAULT_URL,
    JournalURLError,
    NullJournal,
    open_journal,
    parse_url,
)
from primecount.journal.records import PROTOCOL_COUNT, Record
from primecount.journal.sqlite import SQLiteJournal
from tests.helpers import stop_process

RECORD = Record(1_700_000_000.0, "192.0.2.7", 4000, PROTOCOL_COUNT, "abc2a", 2, True)

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def load_benchmark(name: str) -> ModuleType:
    """
    C{benchmarks/NAME.py} as a module (C{benchmarks} is no package).
    """
    spec = importlib.util.spec_from_file_location(f"{name}_under_test", BENCHMARKS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def read_line(process: subprocess.Popen[bytes], timeout: float = 30.0) -> bytes:
    """
    The first line C{process} prints on stdout, or what it printed before
    exiting or before C{timeout} passed.
    """
    assert process.stdout is not None
    data = b""
    deadline = time.monotonic() + timeout
    while b"\n" not in data and time.monotonic() < deadline:
        ready, _, _ = select.select([process.stdout], [], [], 0.1)
        if ready:
            chunk = os.read(process.stdout.fileno(), 4096)
            if not chunk:
                break
            data += chunk
    return data


class RangeServerScriptTests(TestCase):
    """
    C{benchmarks/range_server.py}, the range benchmark's fallback server,
    as a real process on 127.0.0.1.
    """

    def test_sumEndsTheRequestAndTheConnectionStaysUsable(self) -> None:
        """
        A range request and its sum are served, and the same connection
        then takes the next request: the server settles the request's
        record without a journal instead of dropping the connection.
        """
        process = subprocess.Popen(
            [sys.executable, str(BENCHMARKS / "range_server.py"), "0", "2"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        self.addCleanup(process.stdout.close)  # type: ignore[union-attr]
        self.addCleanup(stop_process, process)
        line = read_line(process)
        self.assertTrue(line.startswith(b"listening "), line)
        port = int(line.split()[1])
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            primes = fetch(sock, 10, 30)
            self.assertEqual(primes.tolist(), [11, 13, 17, 19, 23, 29])
            self.assertEqual(send_sum(sock, primes), 112)
            self.assertEqual(fetch(sock, 2, 3).tolist(), [2, 3])


class RangeBenchTests(TestCase):
    """
    C{benchmarks/range_bench.py} notices a request that does not complete.
    """

    def test_droppedAfterTheSumFailsInOneLine(self) -> None:
        """
        A server that answers the range but drops the connection once the
        sum arrives makes L{end_to_end} stop the benchmark with one line
        (C{SystemExit} with a message: exit status 1).
        """
        bench = load_benchmark("range_bench")
        listener = socket.create_server(("127.0.0.1", 0))
        self.addCleanup(listener.close)
        listener.settimeout(30)

        def serve() -> None:
            conn, _ = listener.accept()
            with conn:
                conn.settimeout(30)
                received = b""
                while len(received) < rangecodec.REQUEST.size:
                    received += conn.recv(rangecodec.REQUEST.size - len(received))
                conn.sendall(
                    rangecodec.encode_count(1) + rangecodec.encode_primes(np.array([2], np.uint32))
                )
                conn.recv(rangecodec.SUM.size)

        server = threading.Thread(target=serve, daemon=True)
        server.start()
        self.addCleanup(server.join, 30)
        port = listener.getsockname()[1]
        error = self.assertRaises(SystemExit, bench.end_to_end, port, 2, 2, (1, 2))
        message = str(error.code)
        self.assertIn("range_bench: request [2, 2] did not complete", message)
        self.assertNotIn("\n", message)


class OpenJournalTests(TestCase):
    """
    L{open_journal} picks the backend from the URL; L{NullJournal} keeps
    nothing and never fails.
    """

    def test_noneIsANullJournal(self) -> None:
        """
        C{none} opens a L{NullJournal}: it accepts records on either path,
        settles, and starts and stops as a service.
        """
        journal = open_journal("none", Clock())
        self.assertIsInstance(journal, NullJournal)
        self.assertFalse(journal.keepsRecords)
        journal.startService()
        self.assertTrue(journal.running)
        journal.commit([RECORD])
        self.assertIsNone(self.successResultOf(journal.append([RECORD])))
        self.assertIsNone(self.successResultOf(journal.settle([RECORD])))
        journal.hurry()
        self.assertIsNone(journal.stopService())
        self.assertEqual((journal.committed, journal.batches), (0, 0))

    def test_sqlitePath(self) -> None:
        """
        C{sqlite:PATH} opens an L{SQLiteJournal} on the file, relative to
        the current directory, keeping its records.
        """
        journal = open_journal("sqlite:j.sqlite3", Clock(), fsync=True)
        self.assertIsInstance(journal, SQLiteJournal)
        assert isinstance(journal, SQLiteJournal)
        self.assertEqual(journal.path, os.path.abspath("j.sqlite3"))
        self.assertTrue(journal.keepsRecords)

    def test_parsedURL(self) -> None:
        """
        An already parsed URL is taken as it is.
        """
        journal = open_journal(parse_url("none"), Clock())
        self.assertIsInstance(journal, NullJournal)

    def test_unknownScheme(self) -> None:
        """
        A URL that names no journal raises L{JournalURLError} in one line.
        """
        error = self.assertRaises(JournalURLError, open_journal, "mysql://x", Clock())
        self.assertIn("unknown journal", str(error))
        self.assertNotIn("\n", str(error))

    def test_defaultURL(self) -> None:
        """
        The default journal URL is an SQLite file.
        """
        self.assertEqual(parse_url(DEFAULT_URL, base="/srv").path, "/srv/primecount.sqlite3")
