# -*- test-case-name: tests.unit.test_journal_interface,tests.system.test_journal_interface_process -*-
"""
The journal's backend-neutral types: what the server writes into
(L{Journal}, L{NullJournal}, L{JournalUnavailable}), what names a journal
(L{JournalURL}, L{JournalURLError}), what C{primecount journal} reads with
(L{Query}, L{Reader}, L{Source}, L{Peer}, L{JournalError}), the
durability levels, and what a backend package provides (L{Backend}).

Every backend package (L{primecount.journal.sqlite},
L{primecount.journal.postgresql}) and the backend table
(L{primecount.journal.backends}) import this module; it imports none of
them, so there is no circle, and PostgreSQL's driver is loaded only for
a PostgreSQL journal.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed

from primecount.journal.records import Record
from primecount.metrics.recorder import MetricsRecorder

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

#: Seconds a commit may take before its requests are answered C{ERR
#: journal unavailable} and it is given up (C{--journal-timeout}).
DEFAULT_TIMEOUT = 5.0


class JournalUnavailable(Exception):
    """
    The journal could not commit these records.
    """


class JournalURLError(ValueError):
    """
    A C{--journal} value that names no usable journal.
    """


class JournalError(Exception):
    """
    A problem the user of C{primecount journal} can fix, reported as one
    line on stderr.
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
    @ivar groups: how many group commits (transactions) committed them.
    @ivar stuck: whether a thread is still inside a commit that was given
        up (see L{onAbandon}): it may keep the process from exiting.
    """

    keepsRecords: bool
    running: bool | int
    committed: int
    groups: int
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
    groups = 0
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
    A parsed C{--journal} value (see L{primecount.journal.backends.parse_url}).

    @ivar scheme: C{"sqlite"}, C{"postgresql"} or C{"none"}: a key of the
        backend table (L{primecount.journal.backends.BACKENDS}), or none.
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


@dataclass(frozen=True)
class Query:
    """
    Which records to show.

    @ivar since: only records at or after this time (epoch seconds), if set.
    @ivar until: only records before this time (epoch seconds), if set.
    @ivar peer: only records from a client whose IP is spelt one of these
        ways, if set (see L{primecount.cli.journal.parse_peer}).
    @ivar limit: only the last this many matching records, if set.
    """

    since: float | None = None
    until: float | None = None
    peer: tuple[str, ...] | None = None
    limit: int | None = None


@dataclass(frozen=True)
class Peer:
    """
    One client address and what it sent.

    @ivar peer: the address, as the journal holds it.
    @ivar requests: its requests.
    @ivar errors: those that did not end C{ok}.
    """

    peer: str
    requests: int
    errors: int


class Source(Protocol):
    """
    A journal that answers the questions of
    L{primecount.journal.stats.summarize}, each by SQL aggregates.

    @ivar files: how many files (or databases) it reads.
    """

    files: int

    def snapshot(self) -> AbstractContextManager[None]:
        """
        One read transaction for every question asked within.
        """

    def buckets(self, query: Query, seconds: int) -> Iterator[tuple[int, int, int]]:
        """
        C{(bucket, requests, errors)} of C{query}'s records, C{bucket}
        being their time divided by C{seconds} and rounded down, in bucket
        order, only the buckets with records.
        """

    def outcomes(self, query: Query) -> Iterable[tuple[str, str | None, int, int]]:
        """
        C{(protocol, error, records, bad sums)} of the records of C{query}
        that ended in an error or are of the range protocol.
        """

    def edge(self, query: Query, newest: bool) -> float | None:
        """
        The time of the oldest (or C{newest}) record of C{query}.
        """

    def peers(self, query: Query, top: int) -> tuple[list[Peer], list[Peer]]:
        """
        The C{top} peers with most requests and the C{top} with most
        errors (at least one), as L{primecount.journal.stats.top_peers}
        orders them.
        """


@dataclass(frozen=True)
class Reader:
    """
    How to read one kind of journal: the same steps for every backend, so
    C{primecount journal} has one path for all of them.

    @ivar shown: the journal, fit to print (no password).
    @ivar connect: opens it, read-only or (C{False}) for pruning.
    @ivar show: prints the records of a L{Query} from what C{connect}
        opened, in a format of L{primecount.journal.formats.FORMATS}, and
        with C{follow} keeps printing new ones.
    @ivar prune: deletes the records older than a time from what
        C{connect} opened; returns how many.
    @ivar stats: the L{Source} of C{primecount journal --stats} on what
        C{connect} opened.
    @ivar errors: the driver's exceptions, reported as one line.
    @ivar why: one line of text for such an exception.
    """

    shown: str
    connect: Callable[[bool], Any]
    show: Callable[..., None]
    prune: Callable[..., int]
    stats: Callable[[Any], Source]
    errors: type[Exception]
    why: Callable[[BaseException], str] = str


class Backend(Protocol):
    """
    What a backend package (L{primecount.journal.sqlite},
    L{primecount.journal.postgresql}) provides at its top, for the backend
    table (L{primecount.journal.backends}).
    """

    def check_writable(self, url: JournalURL) -> None:
        """
        Open the journal C{url} names once, creating its schema, to fail
        early and clearly.

        @raise JournalURLError: in one line, when it cannot be written.
        """

    def open_journal(
        self,
        url: JournalURL,
        reactor: Any,
        *,
        durability: str,
        timeout: float,
        metrics: MetricsRecorder | None,
    ) -> Journal:
        """
        The journal C{url} names, not yet started.
        """

    def reader_for(self, url: JournalURL) -> Reader:
        """
        How C{primecount journal} reads the journal C{url} names.
        """
