# -*- test-case-name: tests.unit.test_journal_interface -*-
"""
The journal interface: L{primecount.journal.NullJournal}, L{open_journal},
and the range benchmark noticing a request that does not complete.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import sys
import threading
from pathlib import Path
from types import ModuleType

import numpy as np
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

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

RECORD = Record(1_700_000_000.0, "192.0.2.7", 4000, PROTOCOL_COUNT, "abc2a", 2, True)

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


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
                while len(received) < rangecodec.REQUEST_STRUCT.size:
                    received += conn.recv(rangecodec.REQUEST_STRUCT.size - len(received))
                conn.sendall(
                    rangecodec.encode_count(1) + rangecodec.encode_primes(np.array([2], np.uint32))
                )
                conn.recv(rangecodec.SUM_STRUCT.size)

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
        self.assertEqual((journal.committed, journal.groups), (0, 0))

    def test_sqlitePath(self) -> None:
        """
        C{sqlite:PATH} opens an L{SQLiteJournal} on the file, relative to
        the current directory, keeping its records.
        """
        journal = open_journal("sqlite:j.sqlite3", Clock(), durability="disk", timeout=2.0)
        self.assertIsInstance(journal, SQLiteJournal)
        assert isinstance(journal, SQLiteJournal)
        self.assertEqual((journal.durability, journal.timeout), ("disk", 2.0))
        self.assertEqual(open_journal("sqlite:j.sqlite3", Clock()).durability, "process")  # type: ignore[attr-defined]
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
