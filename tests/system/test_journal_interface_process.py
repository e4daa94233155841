# -*- test-case-name: tests.system.test_journal_interface_process -*-
"""
The journal interface against a real PostgreSQL (a throwaway cluster,
L{primecount.testing.pgcluster}): the same tests (L{JournalContract}) that
the SQLite journal and the test double pass in
L{tests.unit.test_journal_interface}, and the backend table serving a
PostgreSQL journal. Without PostgreSQL or psycopg these skip loudly, except
under C{CI=true}, where they fail.

Also the range protocol without a journal (C{--journal none}), in a real
server process.
"""

from __future__ import annotations

import os
import socket
from typing import Any

from twisted.internet import reactor
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from primecount.cli.primes import fetch, send_sum
from primecount.journal import Journal, Query, check_journal, open_journal, parse_url, reader_for
from primecount.journal.records import Record
from primecount.journal.stats import summarize
from primecount.testing.twistd import ServerProcess
from tests.system.test_postgresql_journal_process import _Database, stored
from tests.unit.test_journal_interface import JournalContract, numbered


class RangeWithoutJournalTests(TestCase):
    """
    C{twistd -n primecount --range-port 0 --journal none} on 127.0.0.1.
    """

    def test_sumEndsTheRequestAndTheConnectionStaysUsable(self) -> None:
        """
        A range request and its sum are served, and the same connection
        then takes the next request: the server settles the request's
        record without a journal instead of dropping the connection.
        """
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        server = ServerProcess("--range-port", "0", "--journal", "none", cwd=directory)
        self.addCleanup(server.stop)
        with socket.create_connection(("127.0.0.1", server.ports["range"]), timeout=30) as sock:
            primes = fetch(sock, 10, 30)
            self.assertEqual(primes.tolist(), [11, 13, 17, 19, 23, 29])
            self.assertEqual(send_sum(sock, primes), 112)
            self.assertEqual(fetch(sock, 2, 3).tolist(), [2, 3])


class PostgresContractTests(_Database, JournalContract, TestCase):
    """
    L{JournalContract} on the PostgreSQL journal: a real database; it
    cannot write while new connections to it fail (the journal connects
    when it first commits, and again to probe).
    """

    def setUp(self) -> None:
        super().setUp()
        self.broken = False

    def connect(self, url: str) -> Any:
        import psycopg

        from primecount.journal.postgresql.schema import connect

        if self.broken:
            raise psycopg.OperationalError("test says no")
        return connect(url)

    def makeJournal(self) -> Journal:
        from primecount.journal.postgresql import PostgresJournal

        # As the server does at its start: the schema exists before any
        # commit.
        check_journal(parse_url(self.url))
        journal = PostgresJournal(self.url, reactor, connect=self.connect)
        journal.startService()
        self.addCleanup(lambda: journal.stopService() if journal.running else None)
        return journal

    def stored(self) -> list[Record]:
        return stored(self.url)

    def cannotWrite(self) -> None:
        self.broken = True

    def canWrite(self) -> None:
        self.broken = False


class PostgresBackendTableTests(_Database, TestCase):
    """
    The backend table serves a PostgreSQL journal: L{check_journal} and
    L{open_journal} for the server, L{reader_for} for C{primecount journal}.
    """

    def test_readerReadsWhatTheJournalWrote(self) -> None:
        url = parse_url(self.url)
        check_journal(url)
        journal = open_journal(url, Clock())
        self.assertEqual(journal.durability, "standby")  # type: ignore[attr-defined]
        journal.commit([numbered(0), numbered(1)])
        journal.stopService()
        reader = reader_for(self.url)
        self.assertEqual(reader.shown, str(url))
        conn = reader.connect(True)
        try:
            self.assertEqual(summarize(reader.stats(conn), Query()).requests, 2)
        finally:
            conn.close()
        self.assertEqual(stored(self.url), [numbered(0), numbered(1)])
