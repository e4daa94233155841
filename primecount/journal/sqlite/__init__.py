# -*- test-case-name: tests.unit.test_sqlite_journal,tests.unit.test_journal_interface -*-
"""
The SQLite journal: C{--journal sqlite:PATH} (or a bare C{PATH}), the file
C{PATH} and, under C{--workers N}, one part per worker beside it.

  - L{primecount.journal.sqlite.writer}: L{SQLiteJournal}, the server's
    writer (group commit, WAL bounds, faults, rotation);
  - L{primecount.journal.sqlite.schema}: the table, its rows and
    connections, shared by the writer and the readers;
  - L{primecount.journal.sqlite.reader}: C{primecount journal}'s listing,
    C{--follow} and C{--prune-before};
  - L{primecount.journal.sqlite.stats}: C{primecount journal --stats}.

This module is what the backend table (L{primecount.journal.backends})
uses of them (a L{primecount.journal.interface.Backend}):
L{check_writable}, L{open_journal} and L{reader_for}.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from primecount.journal.interface import JournalURL, Reader
from primecount.journal.sqlite.reader import JournalFiles, prune, show
from primecount.journal.sqlite.stats import FileSource
from primecount.journal.sqlite.writer import SQLiteJournal, check_writable
from primecount.metrics.recorder import MetricsRecorder

__all__ = ["SQLiteJournal", "check_writable", "open_journal", "reader_for"]


def open_journal(
    url: JournalURL,
    reactor: Any,
    *,
    durability: str,
    timeout: float,
    metrics: MetricsRecorder | None,
) -> SQLiteJournal:
    """
    The SQLite journal at C{url}'s path, not yet started.
    """
    return SQLiteJournal(url.path, reactor, durability=durability, timeout=timeout, metrics=metrics)


def reader_for(url: JournalURL) -> Reader:
    """
    How C{primecount journal} reads the SQLite journal at C{url}'s path,
    its workers' parts with it (L{JournalFiles}).
    """
    path = url.path
    return Reader(
        shown=path,
        connect=lambda readonly: JournalFiles(path, readonly=readonly),
        show=show,
        prune=prune,
        stats=FileSource,
        errors=sqlite3.Error,
    )
