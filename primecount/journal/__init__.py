# -*- test-case-name: tests.unit.test_journal_interface,tests.system.test_journal_interface_process -*-
"""
The request journal: every request recorded before it is answered.

One interface, L{Journal}, for every backend: L{NullJournal}
(C{--journal none}), L{primecount.journal.sqlite.SQLiteJournal} and
L{primecount.journal.postgresql.PostgresJournal}. L{open_journal} picks the
backend from a journal URL (L{parse_url}); the server never holds L{None}
for "no journal".

This module imports no backend at load time (the backends import it), so
PostgreSQL's driver is only needed for a PostgreSQL journal.
"""

from __future__ import annotations

import importlib
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed

from primecount.journal.records import Record

#: The journal of C{twistd primecount} and C{primecount journal} unless
#: C{--journal} names another.
DEFAULT_URL = "sqlite:primecount.sqlite3"

#: The schemes of a PostgreSQL connection URL (libpq accepts both).
POSTGRESQL_SCHEMES = ("postgresql://", "postgres://")


#: C{--journal-durability}: what an acknowledged record survives, weakest
#: first. C{process}: primecount being killed (SQLite C{synchronous=NORMAL},
#: PostgreSQL C{synchronous_commit=off}); C{disk}: also a crash or power loss
#: of the database's host (SQLite C{FULL}, PostgreSQL C{local}); C{standby}:
#: also a failover to a synchronous standby (PostgreSQL C{on}; SQLite has
#: no standby).
PROCESS = "process"
DISK = "disk"
STANDBY = "standby"
DURABILITIES = (PROCESS, DISK, STANDBY)

#: Each backend's durability when C{--journal-durability} is not given, and
#: what the older C{--journal-fsync} means for it.
DEFAULT_DURABILITY = {"sqlite": PROCESS, "postgresql": STANDBY, "none": PROCESS}
FSYNC_DURABILITY = {"sqlite": DISK, "postgresql": STANDBY, "none": PROCESS}

#: Seconds a commit may take before its requests are answered C{ERR
#: journal unavailable} and it is given up (C{--journal-timeout}).
DEFAULT_TIMEOUT = 5.0


def resolve_durability(scheme: str, level: str | None, fsync: bool = False) -> str:
    """
    The durability a journal of C{scheme} runs with: C{level} when given,
    else what C{fsync} (C{--journal-fsync}, the older spelling) or the
    backend's default says.

    @raise ValueError: in one line, for a level the backend cannot give, or
        for both C{level} and C{fsync}.
    """
    if level is None:
        return (FSYNC_DURABILITY if fsync else DEFAULT_DURABILITY)[scheme]
    if fsync:
        raise ValueError(
            "--journal-fsync is the older spelling of --journal-durability: give one of them"
        )
    if level == STANDBY and scheme == "sqlite":
        raise ValueError(
            "--journal-durability standby needs a PostgreSQL journal with a synchronous "
            "standby; an SQLite journal offers process or disk"
        )
    return level


class JournalUnavailable(Exception):
    """
    The journal could not commit these records.
    """


class JournalURLError(ValueError):
    """
    A C{--journal} value that names no usable journal.
    """


class Journal(Protocol):
    """
    What the server needs of a journal: records committed from a pool
    thread (L{commit}) or queued from the reactor thread (L{append},
    L{settle}), and the service's start and stop.

    @ivar keepsRecords: whether records are kept at all; when not, callers
        may skip building them.
    @ivar running: whether the service is started.
    @ivar committed: how many records were committed.
    @ivar batches: how many transactions committed them.
    @ivar stuck: whether a thread is still inside a commit that was given
        up (see L{onAbandon}): it may keep the process from exiting.
    """

    keepsRecords: bool
    running: bool | int
    committed: int
    batches: int
    stuck: bool

    def commit(self, records: Sequence[Record]) -> None:
        """
        Commit C{records}, blocking until they are committed; call it from
        a thread-pool thread.

        @raise JournalUnavailable: when they could not be committed.
        """

    def append(self, records: Sequence[Record]) -> Deferred[None]:
        """
        Queue C{records} for commit (reactor thread).

        @return: fires once they are committed; fails with
            L{JournalUnavailable} if they could not be.
        """

    def settle(self, records: Sequence[Record]) -> Deferred[None]:
        """
        Complete pending range records (reactor thread): each goes onto the
        latest record of the same peer, port and range that has neither a
        sum check nor an error yet.

        @return: fires once done; fails with L{JournalUnavailable}.
        """

    def startService(self) -> None:
        """
        Start accepting records.
        """

    def stopService(self) -> Deferred[None] | None:
        """
        Commit everything queued, then close.
        """

    def hurry(self) -> None:
        """
        The stop's deadline is near: wait for the database no longer.
        """

    def onAbandon(self, callback: Callable[[frozenset[int]], None]) -> None:
        """
        Call C{callback} (reactor thread) each time a commit in progress is
        given up for taking longer than the journal's timeout, with the ids
        of the threads whose L{commit}s were given up: whoever waits for
        such a commit answers its requests then.
        """


class NullJournal(Service):
    """
    C{--journal none}: accepts every record, keeps none, answers at once.
    """

    keepsRecords = False
    committed = 0
    batches = 0
    stuck = False

    def commit(self, records: Sequence[Record]) -> None:
        """
        Accept and forget C{records}.
        """

    def append(self, records: Sequence[Record]) -> Deferred[None]:
        """
        Accept and forget C{records}.
        """
        return succeed(None)

    def settle(self, records: Sequence[Record]) -> Deferred[None]:
        """
        Accept and forget C{records}.
        """
        return succeed(None)

    def hurry(self) -> None:
        """
        Nothing waits for a database here.
        """

    def onAbandon(self, callback: Callable[[frozenset[int]], None]) -> None:
        """
        Nothing is ever given up here.
        """


@dataclass(frozen=True)
class JournalURL:
    """
    A parsed C{--journal} value.

    @ivar scheme: C{"sqlite"}, C{"postgresql"} or C{"none"}.
    @ivar path: the database file (absolute), for C{sqlite}; the connection
        URL as given, for C{postgresql}.
    """

    scheme: str
    path: str = ""

    def __str__(self) -> str:
        if self.scheme == "postgresql":
            return mask_password(self.path)
        return "none" if self.scheme == "none" else f"sqlite:{self.path}"


_PASSWORD_IN_QUERY = re.compile(r"(?<=[?&]password=)[^&#]*")


def mask_password(url: str) -> str:
    """
    C{url} with its password, if any (C{user:PASSWORD@} or
    C{?password=PASSWORD}), replaced by C{***}: fit to print.
    """
    scheme, sep, rest = url.partition("://")
    authority, slash, tail = rest.partition("/")
    userinfo, at, hostport = authority.rpartition("@")
    if at and ":" in userinfo:
        userinfo = userinfo.split(":", 1)[0] + ":***"
    return _PASSWORD_IN_QUERY.sub("***", f"{scheme}{sep}{userinfo}{at}{hostport}{slash}{tail}")


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
    part of an SQLite journal (L{primecount.journal.schema.part_path}), so
    that no worker waits for another's write lock, and which C{primecount
    journal} reads as one with the rest; any other journal as it is (one
    PostgreSQL database takes every worker's writes without such waits).
    """
    if url.scheme != "sqlite":
        return url
    from primecount.journal.sqlite import schema

    return JournalURL("sqlite", schema.part_path(url.path, index))


#: Each backend's module and journal class, imported only when it is
#: used (PostgreSQL's driver is an optional dependency).
_BACKENDS = {
    "sqlite": ("primecount.journal.sqlite", "SQLiteJournal"),
    "postgresql": ("primecount.journal.postgresql", "PostgresJournal"),
}


def _backend(url: JournalURL) -> tuple[Any, Any]:
    """
    The module and journal class of C{url}'s backend.

    @raise JournalURLError: for a PostgreSQL journal without its driver.
    """
    module, name = _BACKENDS[url.scheme]
    try:
        found = importlib.import_module(module)
    except ImportError:
        raise JournalURLError(
            "the PostgreSQL journal needs psycopg: pip install 'primecount[postgresql]'"
        ) from None
    return found, getattr(found, name)


def check_journal(url: JournalURL) -> None:
    """
    Open the journal C{url} names once, creating its schema, to fail early
    and clearly: at the start, not at the first request.

    @raise JournalURLError: in one line (any password masked), when the
        journal cannot be written or its backend's driver is missing.
    """
    if url.scheme != "none":
        module, _ = _backend(url)
        module.check_writable(url)


def open_journal(
    url: JournalURL | str,
    reactor: Any,
    *,
    durability: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    metrics: Any = None,
) -> Journal:
    """
    The journal C{url} names, not yet started.

    @param url: a journal URL, parsed (L{parse_url}) or not.
    @param reactor: the reactor the journal hands its results back on.
    @param durability: one of L{DURABILITIES}; L{None} for the backend's
        default (L{DEFAULT_DURABILITY}).
    @param timeout: seconds a commit may take before it is given up.
    @param metrics: a L{primecount.metrics.prometheus.MetricsRecorder} told
        of commits and failures, or L{None}.
    @raise JournalURLError: for a value that names no journal, or a
        PostgreSQL journal without its driver (psycopg).
    """
    if isinstance(url, str):
        url = parse_url(url)
    if url.scheme == "none":
        return NullJournal()
    _, journal = _backend(url)
    level = durability if durability is not None else DEFAULT_DURABILITY[url.scheme]
    return journal(  # type: ignore[no-any-return]
        url.path, reactor, durability=level, timeout=timeout, metrics=metrics
    )
