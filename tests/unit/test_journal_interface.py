# -*- test-case-name: tests.unit.test_journal_interface -*-
"""
The journal interface: the same tests (L{JournalContract}) run against the
SQLite journal and the test double (L{tests.doubles.FakeJournal}) here, and
against the PostgreSQL journal in
L{tests.system.test_journal_interface_process}; L{NullJournal}; the
backend table (L{open_journal}, L{check_journal}, L{reader_for}), which
imports PostgreSQL's driver only for a PostgreSQL journal; no import circle
in the journal's package. Also the range benchmark noticing a request that
does not complete.
"""

from __future__ import annotations

import importlib
import importlib.util
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from twisted.internet import defer, reactor, task
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

import primecount
from primecount.journal import (
    DEFAULT_URL,
    Journal,
    JournalError,
    JournalUnavailable,
    JournalURLError,
    NullJournal,
    Query,
    check_journal,
    open_journal,
    parse_url,
    reader_for,
)
from primecount.journal.backends import BACKENDS
from primecount.journal.records import PROTOCOL_COUNT, PROTOCOL_RANGE, Record
from primecount.journal.sqlite import SQLiteJournal
from primecount.journal.sqlite import schema as sqlite_schema
from primecount.journal.stats import summarize
from tests.doubles import FakeJournal
from tests.unit.test_layout import PACKAGE, imports
from tests.unit.test_sqlite_journal import Control, FlakyConnection

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
        self.assertEqual((journal.committed, journal.groups), (0, 0))

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


#: A range request's record before its sum arrives, and the same request
#: of the same connection again, later.
PENDING = Record(1_700_000_001.0, "198.51.100.4", 4242, PROTOCOL_RANGE, count=4, a=10, b=20)
PENDING_LATER = PENDING._replace(time=1_700_000_002.0)
#: The same connection and range, already failed: never settled.
FAILED = PENDING._replace(time=1_700_000_003.0, error="range too wide")


def numbered(i: int) -> Record:
    """
    A count-protocol record told apart by its port and message.
    """
    return Record(1_700_000_000.0 + i, "127.0.0.1", 1000 + i, PROTOCOL_COUNT, f"m{i}", 1, False)


class JournalContract:
    """
    What every journal does, whatever keeps its records: the tests run
    against the SQLite journal (L{SQLiteContractTests}), the PostgreSQL
    journal (L{tests.system.test_journal_interface_process}) and the test
    double (L{FakeContractTests}), so the double cannot drift from them.

    A subclass (also a C{TestCase}) says how to make a started journal that
    is stopped at the end of the test (L{makeJournal}), how to read back
    what it holds (L{stored}), and how to make it unable to write for a
    while (L{cannotWrite}, L{canWrite}).
    """

    def makeJournal(self) -> Journal:
        raise NotImplementedError

    def stored(self) -> list[Record]:
        raise NotImplementedError

    def cannotWrite(self) -> None:
        raise NotImplementedError

    def canWrite(self) -> None:
        raise NotImplementedError

    def test_keepsRecordsOnceStarted(self) -> None:
        """
        A started journal keeps records, is running, and has no thread
        stuck in a commit.
        """
        journal = self.makeJournal()
        self.assertTrue(journal.keepsRecords)  # type: ignore[attr-defined]
        self.assertTrue(journal.running)  # type: ignore[attr-defined]
        self.assertFalse(journal.stuck)  # type: ignore[attr-defined]
        self.assertEqual((journal.committed, journal.groups), (0, 0))  # type: ignore[attr-defined]

    def test_commitKeepsRecordsInOrderAndCounts(self) -> None:
        """
        L{Journal.commit} returns once its records are kept, in order;
        C{committed} counts the records and C{groups} the group commits.
        """
        journal = self.makeJournal()
        journal.commit([numbered(0), numbered(1)])
        self.assertEqual(self.stored(), [numbered(0), numbered(1)])
        journal.commit([numbered(2)])
        self.assertEqual(self.stored(), [numbered(0), numbered(1), numbered(2)])
        self.assertEqual((journal.committed, journal.groups), (3, 2))  # type: ignore[attr-defined]
        self.assertFalse(journal.stuck)  # type: ignore[attr-defined]

    @defer.inlineCallbacks
    def test_appendFiresOnceKept(self) -> Any:
        """
        The L{Journal.append} Deferred fires once the records are kept.
        """
        journal = self.makeJournal()
        yield journal.append([numbered(0)])
        self.assertEqual(self.stored(), [numbered(0)])
        yield defer.gatherResults([journal.append([numbered(i)]) for i in range(1, 4)])
        self.assertEqual(sorted(r.port for r in self.stored()), [1000, 1001, 1002, 1003])

    @defer.inlineCallbacks
    def test_settleCompletesTheLatestPendingRecord(self) -> Any:
        """
        L{Journal.settle} completes the latest record of the same peer,
        port and range that has neither a sum check nor an error; a failed
        one is never completed.
        """
        journal = self.makeJournal()
        yield journal.append([PENDING, PENDING_LATER, FAILED])
        yield journal.settle([PENDING._replace(count=5, sum_ok=True)])
        self.assertEqual(
            self.stored(), [PENDING, PENDING_LATER._replace(count=5, sum_ok=True), FAILED]
        )
        yield journal.settle([PENDING._replace(sum_ok=False, error="wrong sum")])
        self.assertEqual(
            self.stored(),
            [
                PENDING._replace(sum_ok=False, error="wrong sum"),
                PENDING_LATER._replace(count=5, sum_ok=True),
                FAILED,
            ],
        )

    @defer.inlineCallbacks
    def test_stopKeepsWhatWasGivenThenRefuses(self) -> Any:
        """
        Records appended before the stop are kept by the time it is done;
        after it, commits raise L{JournalUnavailable} and appends and
        settles fail with it.
        """
        journal = self.makeJournal()
        appended = [journal.append([numbered(i)]) for i in range(5)]
        yield defer.maybeDeferred(journal.stopService)
        yield defer.gatherResults(appended)
        self.assertEqual(sorted(r.port for r in self.stored()), [1000 + i for i in range(5)])
        self.assertRaises(JournalUnavailable, journal.commit, [numbered(5)])  # type: ignore[attr-defined]
        yield self.assertFailure(journal.append([numbered(6)]), JournalUnavailable)  # type: ignore[attr-defined]
        yield self.assertFailure(journal.settle([PENDING]), JournalUnavailable)  # type: ignore[attr-defined]
        self.assertEqual(len(self.stored()), 5)

    @defer.inlineCallbacks
    def test_unwritableThenWritableAgain(self) -> Any:
        """
        While the journal cannot write, commits raise L{JournalUnavailable}
        and appends fail with it, keeping nothing; once it can again, they
        succeed again (within seconds: a real journal probes for the end of
        the episode).
        """
        journal = self.makeJournal()
        self.cannotWrite()
        self.assertRaises(JournalUnavailable, journal.commit, [numbered(0)])  # type: ignore[attr-defined]
        yield self.assertFailure(journal.append([numbered(1)]), JournalUnavailable)  # type: ignore[attr-defined]
        self.assertEqual(self.stored(), [])
        self.canWrite()
        deadline = time.monotonic() + 10
        while True:
            try:
                journal.commit([numbered(2)])
                break
            except JournalUnavailable:
                if time.monotonic() > deadline:
                    raise
                yield task.deferLater(reactor, 0.01, lambda: None)
        yield journal.append([numbered(3)])
        self.assertEqual(self.stored(), [numbered(2), numbered(3)])


class SQLiteContractTests(JournalContract, TestCase):
    """
    L{JournalContract} on L{SQLiteJournal}: a real file, a real writer
    thread; it cannot write while its connections' inserts fail.
    """

    def setUp(self) -> None:
        self.path = os.path.abspath(self.mktemp())
        self.control = Control()

    def makeJournal(self) -> Journal:
        journal = SQLiteJournal(
            self.path,
            reactor,
            connect=lambda path, **options: FlakyConnection(path, self.control, **options),
        )
        journal.startService()
        self.addCleanup(lambda: journal.stopService() if journal.running else None)
        return journal

    def stored(self) -> list[Record]:
        conn = sqlite_schema.connect(self.path, readonly=True)
        try:
            return [
                sqlite_schema.from_row(r)
                for r in conn.execute(sqlite_schema.SELECT + " ORDER BY id")
            ]
        finally:
            conn.close()

    def cannotWrite(self) -> None:
        self.control.broken = True

    def canWrite(self) -> None:
        self.control.broken = False


class FakeContractTests(JournalContract, TestCase):
    """
    L{JournalContract} on the test double, L{FakeJournal}.
    """

    def makeJournal(self) -> Journal:
        self.journal = FakeJournal()
        self.journal.startService()
        return self.journal

    def stored(self) -> list[Record]:
        return list(self.journal.records)

    def cannotWrite(self) -> None:
        self.journal.failing = True

    def canWrite(self) -> None:
        self.journal.failing = False


class BackendTableTests(TestCase):
    """
    One backend table serves the server (L{open_journal},
    L{check_journal}) and C{primecount journal} (L{reader_for}).
    """

    def test_everySchemeHasABackendPackage(self) -> None:
        """
        Each scheme's package provides what the table calls, and its
        journal class is what L{open_journal} gives.
        """
        self.assertEqual(sorted(BACKENDS), ["postgresql", "sqlite"])
        for scheme, entry in BACKENDS.items():
            package = importlib.import_module(entry.package)
            for name in ("check_writable", "open_journal", "reader_for"):
                self.assertTrue(callable(getattr(package, name)), (scheme, name))
            self.assertIn(entry.durability, entry.durabilities)

    def test_sqliteReaderReadsWhatTheJournalWrote(self) -> None:
        """
        L{reader_for} an SQLite URL opens the journal that L{open_journal}
        wrote, lists it, and sums it up.
        """
        path = os.path.abspath(self.mktemp())
        check_journal(parse_url(path))
        journal = open_journal("sqlite:" + path, Clock())
        journal.commit([numbered(0), numbered(1)])
        journal.stopService()
        reader = reader_for(path)
        self.assertEqual(reader.shown, path)
        out = io.StringIO()
        conn = reader.connect(True)
        try:
            reader.show(conn, Query(), "jsonl", out, follow=False)
            self.assertEqual(summarize(reader.stats(conn), Query()).requests, 2)
        finally:
            conn.close()
        self.assertEqual(
            [json.loads(line)["port"] for line in out.getvalue().splitlines()], [1000, 1001]
        )

    def test_noneIsNothingToRead(self) -> None:
        """
        C{none} names no journal to read: one line says so.
        """
        error = self.assertRaises(JournalError, reader_for, "none")
        self.assertEqual(str(error), "the journal is off (--journal none): nothing to read")


class OptionalDriverTests(SynchronousTestCase):
    """
    PostgreSQL's driver (psycopg) is optional: the journal, the SQLite
    backend and C{primecount journal} import it only for a PostgreSQL
    journal, and without it a PostgreSQL journal is refused in one line.
    """

    def python(self, code: str) -> list[str]:
        """
        The lines C{code} prints, run by a new interpreter of this checkout.
        """
        root = Path(primecount.__file__).resolve().parents[1]
        done = subprocess.run(
            [sys.executable, "-c", code],
            env=dict(os.environ, PYTHONPATH=str(root)),
            capture_output=True,
            text=True,
            timeout=60,
        )
        self.assertEqual((done.returncode, done.stderr), (0, ""))
        return done.stdout.splitlines()

    def test_sqliteImportsNoPsycopg(self) -> None:
        """
        Importing the journal, the SQLite backend and C{primecount journal}
        (and opening an SQLite journal) loads no module of psycopg.
        """
        found = self.python(
            "import sys, tempfile\n"
            "import primecount.journal, primecount.journal.sqlite\n"
            "import primecount.cli.journal, primecount.cli.journalstats\n"
            "from twisted.internet.task import Clock\n"
            "path = tempfile.mkdtemp() + '/j.sqlite3'\n"
            "primecount.journal.open_journal(path, Clock()).commit([])\n"
            "primecount.journal.reader_for(path).connect(True).close()\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'psycopg'))\n"
        )
        self.assertEqual(found, ["[]"])

    def test_withoutPsycopgOneLine(self) -> None:
        """
        Without psycopg, a PostgreSQL journal is refused in one line, by
        the server and by C{primecount journal}.
        """
        found = self.python(
            "import sys\n"
            "sys.modules['psycopg'] = None\n"
            "from primecount.journal import (JournalError, JournalURLError, check_journal,\n"
            "    open_journal, parse_url, reader_for)\n"
            "url = 'postgresql://pc@127.0.0.1:1/j'\n"
            "for call in (lambda: open_journal(url, None), lambda: check_journal(parse_url(url)),\n"
            "             lambda: reader_for(url)):\n"
            "    try:\n"
            "        call()\n"
            "    except (JournalURLError, JournalError) as e:\n"
            "        print(type(e).__name__, e)\n"
        )
        self.assertEqual(
            found,
            [
                "JournalURLError the PostgreSQL journal needs psycopg: "
                "pip install 'primecount[postgresql]'",
                "JournalURLError the PostgreSQL journal needs psycopg: "
                "pip install 'primecount[postgresql]'",
                "JournalError reading a PostgreSQL journal needs psycopg: "
                "pip install 'primecount[postgresql]'",
            ],
        )


def journal_graph() -> dict[str, set[str]]:
    """
    The imports between the modules of C{primecount.journal}, at any depth
    of each file: an edge to C{X} for every C{from X import Y} (and to
    C{X.Y} when that is a module too), to C{X} for C{import X}, and from
    the backend table to each backend package it imports by name
    (L{BACKENDS}). Parent packages that Python runs first are not edges.
    """
    journal = PACKAGE / "journal"
    modules: dict[str, Path] = {}
    for path in journal.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        graph[name] = {found for found in imports(path) if found in modules and found != name}
    graph["primecount.journal.backends"] |= {entry.package for entry in BACKENDS.values()}
    return graph


def circle(graph: dict[str, set[str]]) -> list[str] | None:
    """
    One circle of C{graph}, as the modules along it, or C{None}.
    """
    done: set[str] = set()
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        if node in path:
            return [*path[path.index(node) :], node]
        if node in done:
            return None
        path.append(node)
        for following in sorted(graph.get(node, ())):
            found = visit(following)
            if found:
                return found
        path.pop()
        done.add(node)
        return None

    for node in sorted(graph):
        found = visit(node)
        if found:
            return found
    return None


class JournalLayoutTests(SynchronousTestCase):
    """
    The journal's package: no import circle, and no module of it imports
    the package's own top (C{primecount.journal}, which only names the
    entry points of the others).
    """

    def test_noCircle(self) -> None:
        """
        No chain of imports (at module level or inside functions) leads a
        module of the journal back to itself.
        """
        self.assertIsNone(circle(journal_graph()))

    def test_circleFound(self) -> None:
        """
        L{circle} finds a circle where there is one (the test above could
        not fail otherwise): the old reader imported the PostgreSQL reader,
        which imported it back.
        """
        graph = {"reader": {"pgreader", "schema"}, "pgreader": {"reader"}, "schema": set()}
        self.assertEqual(circle(graph), ["pgreader", "reader", "pgreader"])
        self.assertIsNone(circle({"reader": {"schema"}, "schema": set()}))

    def test_noModuleImportsThePackageTop(self) -> None:
        """
        The backends, the table and the neutral modules import the modules
        they use, never C{primecount.journal} itself.
        """
        wrong = [name for name, found in journal_graph().items() if "primecount.journal" in found]
        self.assertEqual(wrong, [])
