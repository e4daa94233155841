# -*- test-case-name: tests.unit.test_journal_interface -*-
"""
The journal interface: L{primecount.journal.NullJournal}, L{open_journal}.
"""

from __future__ import annotations

import os

from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

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
