# -*- test-case-name: tests.system.test_postgresql_journal_process -*-
"""
The PostgreSQL journal against a real throwaway cluster (L{primecount.testing.pgcluster}):
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
from primecount.journal.records import PROTOCOL_COUNT, PROTOCOL_RANGE, Record
from primecount.testing import pgcluster


def record(i: int, message: str | bytes | None = None) -> Record:
    return Record(
        1_700_000_000.25 + i,
        "127.0.0.1",
        1000 + i,
        PROTOCOL_COUNT,
        f"m{i}" if message is None else message,
        1,
        False,
    )


def stored(url: str) -> list[Record]:
    """
    Every record in the journal at C{url}, in id order.
    """
    from primecount.journal.postgresql import reader as pgreader

    conn = pgreader.open_database(url)
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
        from primecount.journal.postgresql import PostgresJournal

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
        self.assertEqual((journal.groups, journal.committed), (2, 3))

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
        pending = Record(1_700_000_000.5, "10.0.0.1", 4242, PROTOCOL_RANGE, count=21, a=100, b=200)
        yield journal.append([pending])
        self.assertEqual(stored(self.url), [pending])
        done = pending._replace(sum_ok=True)
        yield journal.settle([done])
        failed = Record(1_700_000_001.0, "10.0.0.1", 4242, PROTOCOL_RANGE, count=4, a=10, b=20)
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

    def test_durabilityMeansSynchronousCommit(self) -> None:
        for durability, expected in (
            (None, "on"),
            ("standby", "on"),
            ("disk", "local"),
            ("process", "off"),
        ):
            kw = {} if durability is None else {"durability": durability}
            journal = self.journal(**kw)
            journal.commit([record(0)])
            assert journal._conn is not None
            (setting,) = journal._conn.execute("SHOW synchronous_commit").fetchone()
            self.assertEqual(setting, expected)

    def test_schemaCreatedOnceAndVersioned(self) -> None:
        from primecount.journal.postgresql import check_writable
        from primecount.journal.postgresql.schema import SCHEMA_VERSION

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

    def test_hurryCancelsAWaitingCommit(self) -> None:
        # Another session locks the table: the COPY waits (up to the
        # statement timeout, 10 s). The stop's hurry cancels it at once.
        import psycopg

        journal = self.journal()
        journal.commit([record(0)])
        locker = psycopg.connect(self.url)
        self.addCleanup(locker.close)
        locker.execute("LOCK TABLE primecount_requests IN ACCESS EXCLUSIVE MODE")
        timer = threading.Timer(0.5, journal.hurry)
        timer.start()
        self.addCleanup(timer.cancel)
        started = time.monotonic()
        self.assertRaises(JournalUnavailable, journal.commit, [record(1)])
        self.assertLess(time.monotonic() - started, 5)
        locker.rollback()
        self.assertEqual(stored(self.url), [record(0)])


class TableLockTests(_Database, TestCase):
    """
    Another session holds C{LOCK TABLE … ACCESS EXCLUSIVE}: one episode,
    not a stall per batch (the probe must take the table's lock, not merely
    connect).
    """

    @defer.inlineCallbacks
    def test_tableLockIsOneEpisode(self) -> Any:
        import psycopg
        from twisted.internet.threads import deferToThread

        from primecount.journal.postgresql import writer as postgresql

        self.patch(postgresql, "PROBE_INTERVAL", 0.05)
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        journal = self.journal(timeout=1.0)
        journal.commit([record(0)])
        locker = psycopg.connect(self.url)
        self.addCleanup(locker.close)
        locker.execute("LOCK TABLE primecount_requests IN ACCESS EXCLUSIVE MODE")
        started = time.monotonic()
        with self.assertRaises(JournalUnavailable):
            yield deferToThread(journal.commit, [record(1)])
        self.assertLess(time.monotonic() - started, 5)
        # While the lock is held, every commit fails at once: the probe
        # never ends the episode.
        until = time.monotonic() + 3
        while time.monotonic() < until:
            started = time.monotonic()
            with self.assertRaises(JournalUnavailable):
                yield deferToThread(journal.commit, [record(2)])
            self.assertLess(time.monotonic() - started, 0.5)
            yield deferLater(reactor, 0.05, lambda: None)
        locker.rollback()
        deadline = time.monotonic() + 30
        while True:
            try:
                yield deferToThread(journal.commit, [record(3)])
                break
            except JournalUnavailable:
                self.assertLess(time.monotonic(), deadline, "no recovery within 30 s")
                yield deferLater(reactor, 0.05, lambda: None)
        yield deferLater(reactor, 0.1, lambda: None)
        said = [e.get("log_format", "") for e in events]
        self.assertEqual(len([f for f in said if "cannot commit" in f]), 1, said)
        self.assertEqual(len([f for f in said if "writable again" in f]), 1, said)
        self.assertEqual([r.port for r in stored(self.url)], [1000, 1003])


class InDoubtTests(_Database, TestCase):
    """
    The connection cut right after the end of a COPY was sent: the client
    is told ERR, and once the database answers again the record (if it was
    committed) reads back with that error.
    """

    @defer.inlineCallbacks
    def test_cutAtCopyEndIsRecordedAsFailed(self) -> Any:
        from twisted.internet.threads import deferToThread

        from primecount.journal.postgresql import writer as postgresql
        from tests.doubles import CopyCuttingRelay

        self.patch(postgresql, "PROBE_INTERVAL", 0.05)
        relay = CopyCuttingRelay(self.pg.port)
        self.addCleanup(relay.close)
        through = self.url.replace(f":{self.pg.port}/", f":{relay.port}/")
        from primecount.journal.postgresql import PostgresJournal

        journal = PostgresJournal(through, reactor)
        journal.startService()
        self.addCleanup(journal.stopService)
        yield deferToThread(journal.commit, [record(0)])
        relay.armed = True
        with self.assertRaises(JournalUnavailable):
            yield deferToThread(journal.commit, [record(1)])
        self.assertEqual(relay.cuts, 1)
        deadline = time.monotonic() + 30
        while True:
            try:
                yield deferToThread(journal.commit, [record(2)])
                break
            except JournalUnavailable:
                self.assertLess(time.monotonic(), deadline, "no recovery within 30 s")
                yield deferLater(reactor, 0.05, lambda: None)
        found = {r.port: r.error for r in stored(self.url)}
        # PostgreSQL got the whole COPY: it committed the group, whose
        # client was told ERR; the reader says so.
        self.assertEqual(found, {1000: None, 1001: "journal unavailable", 1002: None})
        status, out, _ = run_journal("--journal", self.url, "--format", "jsonl")
        self.assertEqual(status, 0)
        self.assertIn('"error":"journal unavailable"', out.splitlines()[1])


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
        # The default, synchronous_commit=on: what was acknowledged
        # survives the immediate stop (a crash) of PostgreSQL.
        return super().journal(**kw)

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
            if e.get("log_namespace", "").startswith("primecount.journal.postgresql")
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


#: Records of every kind, for the reader: count (good, error, NUL, bytes),
#: range (settled, failed), from two peers, over three minutes.
T = 1_771_238_232.5
MIXED = [
    Record(T, "127.0.0.1", 5000, PROTOCOL_COUNT, "abc2a", 2, True),
    Record(T + 1, "::ffff:192.0.2.7", 5001, PROTOCOL_COUNT, "", None, None, "empty message"),
    Record(T + 2, "127.0.0.1", 5002, PROTOCOL_COUNT, "a\x00b\nc", 0, False),
    Record(T + 60, "192.0.2.7", 5003, PROTOCOL_COUNT, b"ab\xff", None, None, "invalid UTF-8"),
    Record(T + 61, "127.0.0.1", 5004, PROTOCOL_RANGE, count=4, a=10, b=20, sum_ok=True),
    Record(T + 120, "127.0.0.1", 5005, PROTOCOL_RANGE, count=21, a=100, b=200, error="timeout"),
    Record(T + 121, "192.0.2.7", 5006, PROTOCOL_COUNT, "sí \\ ok", 3, False),
]


def run_journal(*argv: str) -> tuple[int, str, str]:
    """
    C{primecount journal argv…} in-process: its status, stdout and stderr.
    """
    import argparse
    import io
    import sys

    from primecount.cli import journal as journalcli

    parser = argparse.ArgumentParser(prog="primecount journal")
    journalcli.add_arguments(parser)
    args = parser.parse_args(list(argv))
    out, err = io.StringIO(), io.StringIO()
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = out, err
    try:
        status = journalcli.run(args)
    finally:
        sys.stdout, sys.stderr = saved
    return status, out.getvalue(), err.getvalue()


class ReaderTests(_Database, TestCase):
    """
    C{primecount journal --journal postgresql://…}: what the SQLite journal
    with the same records prints, for every format and filter.
    """

    def setUp(self) -> None:
        super().setUp()
        self.journal().commit(MIXED)
        from primecount.journal.sqlite import SQLiteJournal

        path = self.mktemp()
        sqlite = SQLiteJournal(path, reactor)
        sqlite.commit(MIXED)
        self.sqlite = "sqlite:" + path

    def same(self, *argv: str) -> str:
        """
        Check that both journals print the same for C{argv}; that output.
        """
        pg = run_journal("--journal", self.url, *argv)
        lite = run_journal("--journal", self.sqlite, *argv)
        self.assertEqual(pg, lite)
        self.assertEqual(pg[0], 0, pg)
        return pg[1]

    def test_formats(self) -> None:
        for fmt in ("original", "jsonl", "csv"):
            out = self.same("--format", fmt)
            self.assertEqual(len(out.splitlines()), len(MIXED) + (fmt == "csv"))
        self.assertIn("a\\x00b\\nc", self.same())
        self.assertIn('"message_hex":"6162ff"', self.same("--format", "jsonl"))

    def test_filters(self) -> None:
        since = "2026-02-16T10:38:00Z"
        self.assertEqual(len(self.same("--since", since).splitlines()), 4)
        self.assertEqual(len(self.same("--until", since).splitlines()), 3)
        self.assertEqual(len(self.same("--peer", "192.0.2.7").splitlines()), 3)
        self.assertEqual(len(self.same("--limit", "2").splitlines()), 2)
        self.same("--since", since, "--peer", "127.0.0.1", "--limit", "1", "--format", "jsonl")

    def test_prune(self) -> None:
        from primecount.journal.postgresql import reader as pgreader

        self.patch(pgreader, "PRUNE_CHUNK", 2)
        status, out, err = run_journal(
            "--journal", self.url, "--prune-before", "2026-02-16T10:38:00Z"
        )
        self.assertEqual(
            (status, out, err), (0, "pruned 3 records older than 2026-02-16T10:38:00.000Z\n", "")
        )
        self.assertEqual(stored(self.url), MIXED[3:])

    def test_noJournalThere(self) -> None:
        url = pgcluster.database(self.pg)
        self.assertEqual(
            run_journal("--journal", url), (1, "", f"primecount journal: no journal at {url}\n")
        )

    def test_unreachableOneLinePasswordMasked(self) -> None:
        status, out, err = run_journal(
            "--journal", "postgresql://u:s3cret@127.0.0.1:1/db?connect_timeout=2"
        )
        self.assertEqual((status, out), (1, ""))
        self.assertTrue(
            err.startswith("primecount journal: cannot connect to journal postgresql://u:***@"), err
        )
        self.assertNotIn("s3cret", err)
        self.assertEqual(err.count("\n"), 1)


class FollowTests(_Database, TestCase):
    """
    C{--follow} on PostgreSQL never skips a record committed out of id order.
    """

    def test_neverSkipsARecordCommittedLate(self) -> None:
        import psycopg

        from primecount.journal.postgresql import reader as pgreader
        from primecount.journal.postgresql.schema import COPY, COPY_TYPES, to_row

        journal = self.journal()
        journal.commit([record(0)])
        reader = pgreader.open_database(self.url)
        self.addCleanup(reader.close)
        follower = pgreader.Follower(reader, pgreader.Query())
        self.assertEqual(follower.backlog(), [record(0)])
        # Another host's transaction takes an id first, and commits late.
        late = psycopg.connect(self.url)
        self.addCleanup(late.close)
        with late.cursor() as cursor, cursor.copy(COPY) as copy:
            copy.set_types(COPY_TYPES)
            copy.write_row(to_row(record(1)))
        journal.commit([record(2)])
        seen = follower.poll()
        late.commit()
        deadline = time.monotonic() + 30
        while len(seen) < 2 and time.monotonic() < deadline:
            seen += follower.poll()
        self.assertEqual(sorted(seen), [record(1), record(2)])
        # The late record really has the lower id of the two: a follower
        # that went by ids would have passed it by.
        ids = dict(self.query("SELECT port, id FROM primecount_requests"))
        self.assertLess(ids[1001], ids[1002])

    def test_followCommand(self) -> None:
        from primecount.journal.postgresql import reader as pgreader

        journal = self.journal()
        journal.commit([record(i) for i in range(12)])
        steps: list[int] = []

        def wait(conn: object) -> None:
            steps.append(1)
            if len(steps) == 1:
                journal.commit([record(20)])
                journal.commit([record(21, "sí")])
            elif len(steps) > 20 or len(stdout()) >= 12:
                raise KeyboardInterrupt()

        def stdout() -> list[str]:
            import sys

            return sys.stdout.getvalue().splitlines()  # type: ignore[attr-defined]

        self.patch(pgreader, "wait", wait)
        status, out, err = run_journal("--journal", self.url, "--follow", "--format", "jsonl")
        self.assertEqual((status, err), (0, ""))
        import json

        self.assertEqual(
            [json.loads(line)["message"] for line in out.splitlines()],
            [f"m{i}" for i in range(2, 12)] + ["m20", "sí"],
        )


class ServerTests(_Database, SynchronousTestCase):
    """
    A real C{twistd -n primecount --journal postgresql://…}.
    """

    def test_servesAndJournals(self) -> None:
        import os
        import socket

        from primecount.cli.primes import fetch, send_sum
        from primecount.core.count import expected_reply
        from primecount.testing.twistd import ServerProcess
        from tests.helpers import recv_lines

        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        server = ServerProcess("--journal", self.url, "--range-port", "0", cwd=directory)
        self.addCleanup(server.stop)
        messages = [b"abc2a", b"a\x00b", b"\xff\xfe", b"xy"]
        with server.connect() as sock:
            sock.sendall(b"".join(m + b"\n" for m in messages))
            replies = recv_lines(sock, len(messages))
        self.assertEqual(replies, [expected_reply(m) for m in messages])
        with socket.create_connection(("127.0.0.1", server.ports["range"]), timeout=10) as sock:
            send_sum(sock, fetch(sock, 10, 20))
        self.assertEqual(server.stop(), -15)
        found = stored(self.url)
        self.assertEqual(
            [r.message for r in found if r.protocol == PROTOCOL_COUNT],
            ["abc2a", "a\x00b", b"\xff\xfe", "xy"],
        )
        ranges = [(r.a, r.b, r.count, r.sum_ok) for r in found if r.protocol == PROTOCOL_RANGE]
        self.assertEqual(ranges, [(10, 20, 4, True)])
        log = server.log.decode("utf-8", "replace")
        self.assertIn(f"journal={self.url} durability=standby", log)

    def test_unreachableStopsTheStartInOneLine(self) -> None:
        import subprocess

        from primecount.testing.twistd import TWISTD

        done = subprocess.run(
            [
                *TWISTD,
                "-n",
                "--pidfile=",
                "primecount",
                "--port",
                "0",
                "--journal",
                "postgresql://pc:s3cret@127.0.0.1:1/j?connect_timeout=2",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        output = done.stdout + done.stderr
        self.assertNotEqual(done.returncode, 0)
        self.assertIn("cannot connect to journal postgresql://pc:***@127.0.0.1:1/j", output)
        self.assertNotIn("s3cret", output)
        self.assertNotIn("Traceback", output)
        self.assertEqual(output.strip().count("\n"), 0, output)
