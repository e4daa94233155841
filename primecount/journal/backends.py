# -*- test-case-name: tests.unit.test_journal_interface,tests.system.test_journal_interface_process -*-
"""
The backend table: which package serves a journal URL, for the server
(L{open_journal}, L{check_journal}) and for C{primecount journal} (its
listing, C{--follow}, C{--stats} and C{--prune-before}: L{reader_for})
alike.

A journal URL (L{parse_url}) names its backend by its scheme; the table
(L{BACKENDS}) says which package that is, what durability it defaults
to, and which optional driver it needs. A backend package is imported
only when a journal of its kind is used, so PostgreSQL's driver is only
needed for a PostgreSQL journal. The packages import nothing of this
module, so there is no circle.
"""

from __future__ import annotations

import importlib
import os
import re
from dataclasses import dataclass
from typing import Any, cast

from primecount.journal.interface import (
    DEFAULT_TIMEOUT,
    DISK,
    DURABILITIES,
    PROCESS,
    STANDBY,
    Backend,
    Journal,
    JournalError,
    JournalURL,
    JournalURLError,
    NullJournal,
    Reader,
    mask_password,
)
from primecount.metrics.recorder import MetricsRecorder

#: The journal of C{twistd primecount} and C{primecount journal} unless
#: C{--journal} names another.
DEFAULT_URL = "sqlite:primecount.sqlite3"

#: The schemes of a PostgreSQL connection URL (libpq accepts both).
POSTGRESQL_SCHEMES = ("postgresql://", "postgres://")


@dataclass(frozen=True)
class BackendEntry:
    """
    One row of the backend table: what is known of a backend without
    importing it.

    @ivar package: the backend package (a L{Backend}), imported when used.
    @ivar name: the backend's name in messages.
    @ivar durability: its durability when C{--journal-durability} is not
        given.
    @ivar fsync: what the older C{--journal-fsync} means for it.
    @ivar durabilities: the levels of L{DURABILITIES} it offers.
    @ivar driver: the optional distribution it needs, if any, and the
        extra of primecount that installs it.
    """

    package: str
    name: str
    durability: str
    fsync: str
    durabilities: tuple[str, ...]
    driver: tuple[str, str] | None = None

    def needs(self, doing: str) -> str:
        """
        One line saying that C{doing} this backend's journal needs its
        driver, and how to install it.
        """
        assert self.driver is not None
        driver, extra = self.driver
        return f"{doing} {self.name} journal needs {driver}: pip install 'primecount[{extra}]'"


#: Each journal URL scheme's backend (C{none} has none: L{NullJournal}).
BACKENDS = {
    "sqlite": BackendEntry(
        "primecount.journal.sqlite", "SQLite", PROCESS, DISK, durabilities=(PROCESS, DISK)
    ),
    "postgresql": BackendEntry(
        "primecount.journal.postgresql",
        "PostgreSQL",
        STANDBY,
        STANDBY,
        durabilities=DURABILITIES,
        driver=("psycopg", "postgresql"),
    ),
}


def resolve_durability(scheme: str, level: str | None, fsync: bool = False) -> str:
    """
    The durability a journal of C{scheme} runs with: C{level} when given,
    else what C{fsync} (C{--journal-fsync}, the older spelling) or the
    backend's default says (L{BackendEntry}; C{process} for C{none}).

    @raise ValueError: in one line, for a level the backend cannot give, or
        for both C{level} and C{fsync}.
    """
    entry = BACKENDS.get(scheme)
    if level is None:
        if entry is None:
            return PROCESS
        return entry.fsync if fsync else entry.durability
    if fsync:
        raise ValueError(
            "--journal-fsync is the older spelling of --journal-durability: give one of them"
        )
    if entry is not None and level not in entry.durabilities:
        # Only SQLite lacks a level: it has no standby.
        raise ValueError(
            "--journal-durability standby needs a PostgreSQL journal with a synchronous "
            "standby; an SQLite journal offers process or disk"
        )
    return level


#: A URL scheme (RFC 3986) and its colon: what tells C{sqlite:PATH} and
#: C{mysql://…} from a bare file path.
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):")


def parse_url(value: str, *, base: str | None = None) -> JournalURL:
    """
    Parse C{sqlite:PATH} or a bare C{PATH} (an SQLite file; relative paths
    against C{base}, default the current directory), a PostgreSQL URL
    (C{postgresql://USER@HOST:PORT/DB?...}, checked when connecting) or
    C{none}.

    @raise JournalURLError: for anything else.
    """
    if value == "none":
        return JournalURL("none")
    if value.startswith(POSTGRESQL_SCHEMES):
        return JournalURL("postgresql", value)
    scheme = _SCHEME.match(value)
    if scheme is None:
        # A bare path (/srv/pc.sqlite3, journal.db): what people type first.
        rest = value
    elif scheme.group(1) == "sqlite":
        rest = value[scheme.end() :]
    else:
        raise JournalURLError(
            f"unknown journal {mask_password(value)!r}: expected sqlite:PATH or a file path "
            "(an SQLite file), postgresql://USER@HOST:PORT/DB or none"
        )
    if not rest:
        raise JournalURLError("sqlite: needs a file path, e.g. sqlite:primecount.sqlite3")
    return JournalURL("sqlite", os.path.abspath(os.path.join(base or os.getcwd(), rest)))


def for_worker(url: JournalURL, index: int) -> JournalURL:
    """
    The journal worker C{index} of C{--workers N} writes for C{url}: its own
    part of an SQLite journal (L{primecount.journal.sqlite.schema.part_path}),
    so that no worker waits for another's write lock, and which C{primecount
    journal} reads as one with the rest; any other journal as it is (one
    PostgreSQL database takes every worker's writes without such waits).
    """
    if url.scheme != "sqlite":
        return url
    from primecount.journal.sqlite.schema import part_path

    return JournalURL("sqlite", part_path(url.path, index))


def backend(scheme: str, doing: str = "the") -> Backend:
    """
    The backend package of C{scheme}, imported now.

    @param doing: how the message for a missing driver begins (C{"the"}:
        "the PostgreSQL journal needs psycopg: ...").
    @raise JournalURLError: when its driver is missing.
    """
    entry = BACKENDS[scheme]
    try:
        return cast(Backend, importlib.import_module(entry.package))
    except ImportError:
        if entry.driver is None:
            raise
        raise JournalURLError(entry.needs(doing)) from None


def check_journal(url: JournalURL) -> None:
    """
    Open the journal C{url} names once, creating its schema, to fail early
    and clearly: at the start, not at the first request.

    @raise JournalURLError: in one line (any password masked), when the
        journal cannot be written or its backend's driver is missing.
    """
    if url.scheme != "none":
        backend(url.scheme).check_writable(url)


def open_journal(
    url: JournalURL | str,
    reactor: Any,
    *,
    durability: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    metrics: MetricsRecorder | None = None,
) -> Journal:
    """
    The journal C{url} names, not yet started.

    @param url: a journal URL, parsed (L{parse_url}) or not.
    @param reactor: the reactor the journal hands its results back on.
    @param durability: one of L{DURABILITIES}; C{None} for the backend's
        default (L{BackendEntry.durability}).
    @param timeout: seconds a commit may take before it is given up.
    @param metrics: a L{primecount.metrics.recorder.MetricsRecorder} told
        of commits and failures, or C{None}.
    @raise JournalURLError: for a value that names no journal, or a
        PostgreSQL journal without its driver (psycopg).
    """
    if isinstance(url, str):
        url = parse_url(url)
    if url.scheme == "none":
        return NullJournal()
    level = durability if durability is not None else BACKENDS[url.scheme].durability
    return backend(url.scheme).open_journal(
        url, reactor, durability=level, timeout=timeout, metrics=metrics
    )


def reader_for(url: str) -> Reader:
    """
    How C{primecount journal} reads the journal at C{url} (C{sqlite:PATH},
    a file path or a PostgreSQL URL).

    @raise JournalError: for C{none}, a URL that names no journal, or a
        backend whose driver is missing.
    """
    try:
        parsed = parse_url(url)
        if parsed.scheme == "none":
            raise JournalError("the journal is off (--journal none): nothing to read")
        return backend(parsed.scheme, "reading a").reader_for(parsed)
    except JournalURLError as e:
        raise JournalError(str(e)) from None
