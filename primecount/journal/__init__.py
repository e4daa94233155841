"""
The request journal: every request recorded before it is answered, and
read back by C{primecount journal}.

One interface, L{Journal}, for every backend: L{NullJournal}
(C{--journal none}), the SQLite journal (L{primecount.journal.sqlite}) and
the PostgreSQL journal (L{primecount.journal.postgresql}), one package
each (writer, schema, reader, stats). L{open_journal} picks the backend
from a journal URL (L{parse_url}) in the backend table
(L{primecount.journal.backends}), which also serves C{primecount journal}
(L{reader_for}); the server never holds C{None} for "no journal".

The layout:

  - L{primecount.journal.interface}: the backend-neutral types;
  - L{primecount.journal.backends}: the backend table;
  - L{primecount.journal.records}: what is kept of a request;
  - L{primecount.journal.base}: the group commit every writer shares;
  - L{primecount.journal.formats}, L{primecount.journal.stats}: what
    C{primecount journal} prints, whatever the backend;
  - L{primecount.journal.sqlite}, L{primecount.journal.postgresql}: the
    backends.

This module holds no code: it names the entry points of the modules above.
It imports no backend, so PostgreSQL's driver is only needed for a
PostgreSQL journal.
"""

from primecount.journal.backends import (
    DEFAULT_URL,
    POSTGRESQL_SCHEMES,
    check_journal,
    for_worker,
    open_journal,
    parse_url,
    reader_for,
    resolve_durability,
)
from primecount.journal.interface import (
    DEFAULT_TIMEOUT,
    DISK,
    DURABILITIES,
    PROCESS,
    STANDBY,
    Journal,
    JournalError,
    JournalUnavailable,
    JournalURL,
    JournalURLError,
    NullJournal,
    Query,
    Reader,
    mask_password,
)

__all__ = [
    "DEFAULT_TIMEOUT",
    "DEFAULT_URL",
    "DISK",
    "DURABILITIES",
    "POSTGRESQL_SCHEMES",
    "PROCESS",
    "STANDBY",
    "Journal",
    "JournalError",
    "JournalURL",
    "JournalURLError",
    "JournalUnavailable",
    "NullJournal",
    "Query",
    "Reader",
    "check_journal",
    "for_worker",
    "mask_password",
    "open_journal",
    "parse_url",
    "reader_for",
    "resolve_durability",
]
