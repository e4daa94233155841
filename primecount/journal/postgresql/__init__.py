# -*- test-case-name: tests.unit.test_journal_interface,tests.system.test_journal_interface_process -*-
"""
The PostgreSQL journal: C{--journal postgresql://USER@HOST:PORT/DB?...},
one table shared by every host and every worker that journal to it. It
needs psycopg (C{pip install 'primecount[postgresql]'}), which this
package imports.

  - L{primecount.journal.postgresql.writer}: L{PostgresJournal}, the
    server's writer (one COPY per group, durability, faults, commits in
    doubt);
  - L{primecount.journal.postgresql.schema}: the table, its rows and
    connections, shared by the writer and the readers;
  - L{primecount.journal.postgresql.reader}: C{primecount journal}'s
    listing, C{--follow} and C{--prune-before};
  - L{primecount.journal.postgresql.stats}: C{primecount journal --stats}.

This module is what the backend table (L{primecount.journal.backends})
uses of them (a L{primecount.journal.interface.Backend}):
L{check_writable}, L{open_journal} and L{reader_for}.
"""

from __future__ import annotations

from typing import Any

import psycopg

from primecount.journal.interface import JournalURL, Reader, mask_password
from primecount.journal.postgresql.reader import open_database, prune, show
from primecount.journal.postgresql.schema import why
from primecount.journal.postgresql.stats import DatabaseSource
from primecount.journal.postgresql.writer import PostgresJournal, check_writable
from primecount.metrics.recorder import MetricsRecorder

__all__ = ["PostgresJournal", "check_writable", "open_journal", "reader_for"]


def open_journal(
    url: JournalURL,
    reactor: Any,
    *,
    durability: str,
    timeout: float,
    metrics: MetricsRecorder | None,
) -> PostgresJournal:
    """
    The PostgreSQL journal at C{url}, not yet started.
    """
    return PostgresJournal(
        url.path, reactor, durability=durability, timeout=timeout, metrics=metrics
    )


def reader_for(url: JournalURL) -> Reader:
    """
    How C{primecount journal} reads the PostgreSQL journal at C{url}.
    """
    return Reader(
        shown=mask_password(url.path),
        connect=lambda readonly: open_database(url.path),
        show=show,
        prune=prune,
        stats=DatabaseSource,
        errors=psycopg.Error,
        why=why,
    )
