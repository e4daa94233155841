# -*- test-case-name: tests.test_pgjournal -*-
"""
The PostgreSQL journal against a real throwaway cluster (L{tests.pgcluster}):
the writer, its faults, the reader, and a real twistd journalling to it.

Without PostgreSQL or psycopg these tests skip loudly, except under
C{CI=true}, where they fail.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.task import deferLater
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase

from primecount.journal import JournalUnavailable, JournalURLError, parse_url
from primecount.records import COUNT, RANGE, Record

from . import pgcluster


def record(i: int, message: str | bytes | None = None) -> Record:
    return Record(
        1_700_000_000.25 + i,
        "127.0.0.1",
        1000 + i,
        COUNT,
        f"m{i}" if message is None else message,
        1,
        False,
    )


def stored(url: str) -> list[Record]:
    """
    Every record in the journal at C{url}, in id order.
    """
    from primecount import pgreader

    conn = pgreader.open_journal(url)
    try:
        return [r for _, r in pgreader.select(conn, pgreader.Query())]
    finally:
        conn.close()


class _Database:
    """
    Each test in a new database of the shared cluster C{cluster}.
    """

    cluster = "default"

    def setUp(self) -> None:
        self.pg = pgcluster.shared(self.cluster)
        self.url = pgcluster.database(self.pg)

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        """
        The rows of C{sql} run on this test's database.
        """
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as conn:
            return conn.execute(sql).fetchall()  # type: ignore[arg-type]

    def journal(self, **kw: Any) -> Any:
        """
        A started L{PostgresJournal} on this test's database, stopped at
        the end of the test.
        """
        from primecount.pgjournal import PostgresJournal

        journal = PostgresJournal(self.url, reactor, **kw)
        journal.startService()
        self.addCleanup(lambda: journal.stopService() if journal.running else None)  # type: ignore[attr-defined]
        return journal


class WriterTests(_Database, TestCase):
    """
    L{PostgresJournal} writing to a real PostgreSQL.
    """

    def test_commitRoundTrip(self) -> None:
        journal = self.journal()
        journal.commit([record(0), record(1)])
        journal.commit([record(2)])
        self.assertEqual(stored(self.url), [record(0), record(1), record(2)])
        self.assertEqual((journal.batches, journal.committed), (2, 3))

    def test_oneCopyPerGroup(self) -> None:
        # A group is one transaction: its rows share one transaction id.
        journal = self.journal()
        journal.commit([record(i) for i in range(5)])
        journal.commit([record(5)])
        xacts = [x for (x,) in self.query("SELECT xact FROM primecount_requests ORDER BY id")]
        self.assertEqual(len(set(xacts[:5])), 1)
        self.assertNotEqual(xacts[4], xacts[5])

    def test_messagesWithNulAndNotUtf8(self) -> None:
        # PostgreSQL text cannot hold NUL: such a message must not fail its
        # batch, and every message reads back exactly as it arrived.
        journal = self.journal()
        records = [
            record(0, "a\x00b"),
            record(1, b"\xff\x00z"),
            record(2, b"ab\xc3"),
            record(3, "sí \\x00"),
            record(4, "\x00"),
        ]
        journal.commit(records)
        self.assertEqual(stored(self.url), records)

    @defer.inlineCallbacks
    def test_appendThenSettle(self) -> Any:
        journal = self.journal()
        pending = Record(1_700_000_000.5, "10.0.0.1", 4242, RANGE, count=21, a=100, b=200)
        yield journal.append([pending])
        self.assertEqual(stored(self.url), [pending])
        done = pending._replace(sum_ok=True)
        yield journal.settle([done])
        failed = Record(1_700_000_001.0, "10.0.0.1", 4242, RANGE, count=4, a=10, b=20)
        yield journal.append([failed])
        yield journal.settle([failed._replace(error="client disconnected before sending the sum")])
        self.assertEqual(
            stored(self.url),
            [done, failed._replace(error="client disconnected before sending the sum")],
        )

    def test_twoWritersAtOnce(self) -> None:
        # Two journals (two hosts, or two workers) and several pool threads
        # each, committing at the same time: every record lands once.
        journals = [self.journal(), self.journal()]
        errors: list[BaseException] = []

        def write(j: int, t: int) -> None:
            try:
                for i in range(25):
                    journals[j].commit([record(10_000 * j + 100 * t + i)])
            except BaseException as e:
                errors.append(e)

        threads = [threading.Thread(target=write, args=(j, t)) for j in (0, 1) for t in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        self.assertEqual(errors, [])
        ports = sorted(r.port for r in stored(self.url))
        self.assertEqual(
            ports,
            sorted(
                1000 + 10_000 * j + 100 * t + i for j in (0, 1) for t in range(4) for i in range(25)
            ),
        )

    def test_fsyncMeansSynchronousCommit(self) -> None:
        for fsync, expected in ((True, "on"), (False, "off")):
            journal = self.journal(fsync=fsync)
            journal.commit([record(0)])
            assert journal._conn is not None
            (setting,) = journal._conn.execute("SHOW synchronous_commit").fetchone()
            self.assertEqual(setting, expected)

    def test_schemaCreatedOnceAndVersioned(self) -> None:
        from primecount.pgjournal import SCHEMA_VERSION, check_writable

        check_writable(parse_url(self.url))
        check_writable(parse_url(self.url))
        self.assertEqual(self.query("SELECT version FROM primecount_schema"), [(SCHEMA_VERSION,)])
        indexes = set(
            self.query(
                "SELECT c.relname, a.amname FROM pg_index i "
                "JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_am a ON a.oid = c.relam "
                "WHERE i.indrelid = 'primecount_requests'::regclass"
            )
        )
        self.assertIn(("primecount_requests_time", "brin"), indexes)
        self.query("UPDATE primecount_schema SET version = version + 1 RETURNING version")
        e = self.assertRaises(JournalURLError, check_writable, parse_url(self.url))
        self.assertIn("upgrade primecount", str(e))


class URLTests(SynchronousTestCase):
    """
    C{--journal postgresql://…}, and its password never shown.
    """

    def test_parsed(self) -> None:
        url = parse_url("postgresql://pc@db.example:5433/journal?sslmode=require")
        self.assertEqual(url.scheme, "postgresql")
        self.assertEqual(url.path, "postgresql://pc@db.example:5433/journal?sslmode=require")
        self.assertEqual(str(url), url.path)
        self.assertEqual(parse_url("postgres://h/db").scheme, "postgresql")

    def test_passwordMasked(self) -> None:
        self.assertEqual(
            str(parse_url("postgresql://pc:s3cr:et@db:5432/j")), "postgresql://pc:***@db:5432/j"
        )
        self.assertEqual(
            str(parse_url("postgresql://db/j?sslmode=disable&password=s3cret&x=1")),
            "postgresql://db/j?sslmode=disable&password=***&x=1",
        )

    def test_unreachableFailsInOneLineWithoutPassword(self) -> None:
        try:
            from primecount.pgjournal import check_writable
        except ImportError:
            raise pgcluster._missing("psycopg is not installed") from None
        # A port nothing listens on (bound, never listening).
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
            url = parse_url(f"postgresql://pc:s3cret@127.0.0.1:{port}/j?connect_timeout=2")
            e = self.assertRaises(JournalURLError, check_writable, url)
        self.assertIn("cannot connect to journal postgresql://pc:***@127.0.0.1:", str(e))
        self.assertNotIn("s3cret", str(e))
        self.assertNotIn("\n", str(e))


class FaultTests(_Database, TestCase):
    """
    The database going away and coming back (its own cluster, as these
    tests stop and restart it).
    """

    cluster = "faults"

    def setUp(self) -> None:
        super().setUp()
        self.addCleanup(self.ensureRunning)

    def journal(self, **kw: Any) -> Any:
        # synchronous_commit=on: what was acknowledged survives the
        # immediate stop (a crash) of PostgreSQL.
        return super().journal(fsync=True, **kw)

    def ensureRunning(self) -> None:
        if not self.pg.running():
            self.pg.start()

    @defer.inlineCallbacks
    def test_errWithinSecondsThenOkAfterRestart(self) -> Any:
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        journal = self.journal()
        journal.commit([record(0)])
        self.pg.stop()
        started = time.monotonic()
        self.assertRaises(JournalUnavailable, journal.commit, [record(1)])
        self.assertLess(time.monotonic() - started, 10)
        # During the episode, commits fail at once (the probe runs aside).
        started = time.monotonic()
        for i in range(20):
            self.assertRaises(JournalUnavailable, journal.commit, [record(2 + i)])
        self.assertLess(time.monotonic() - started, 1.0)
        self.pg.start()
        deadline = time.monotonic() + 30
        while True:
            try:
                journal.commit([record(99)])
                break
            except JournalUnavailable:
                self.assertLess(time.monotonic(), deadline, "no recovery within 30 s")
                time.sleep(0.05)
        self.assertEqual(stored(self.url), [record(0), record(99)])
        # The log lines come through the reactor.
        yield deferLater(reactor, 0.1, lambda: None)
        said = [
            e["log_format"]
            for e in events
            if e.get("log_namespace", "").startswith("primecount.pgjournal")
        ]
        self.assertEqual(len(said), 2, said)
        self.assertIn("cannot commit", said[0])
        self.assertIn("writable again", said[1])

    def test_restartWhileIdleCostsNoError(self) -> None:
        # PostgreSQL restarted while the journal's connection was idle: the
        # dead connection is noticed before use, and the commit goes through.
        journal = self.journal()
        journal.commit([record(0)])
        self.pg.stop()
        self.pg.start()
        journal.commit([record(1)])
        self.assertEqual(stored(self.url), [record(0), record(1)])
        self.assertEqual(journal.failed, 0)

    @defer.inlineCallbacks
    def test_appendFailsThenRecovers(self) -> Any:
        journal = self.journal()
        yield journal.append([record(0)])
        self.pg.stop()
        with self.assertRaises(JournalUnavailable):
            yield journal.append([record(1)])
        self.pg.start()
        deadline = time.monotonic() + 30
        while True:
            try:
                yield journal.append([record(2)])
                break
            except JournalUnavailable:
                self.assertLess(time.monotonic(), deadline, "no recovery within 30 s")
                yield deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(stored(self.url), [record(0), record(2)])
