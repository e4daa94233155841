"""
Tests for L{primecount.cli.journal}: C{primecount journal}.

Journals are built, in temporary directories, with L{schema.connect} and L{schema.inserts}, as the server's
writer builds them. Most tests call L{journalcli.run} with stdout and stderr
captured; L{tests.system.test_journalcli_process} runs C{python -m primecount
journal} in a subprocess to check what only a real process shows (exit
status, Ctrl-C, a closed pipe).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import TestCase

from primecount.cli import journal as journalcli
from primecount.journal import JournalURL, for_worker, formats, parse_url
from primecount.journal.records import Record
from primecount.journal.sqlite import reader, schema

#: 2026-02-16 10:37:12.345 UTC.
T = datetime(2026, 2, 16, 10, 37, 12, 345000, tzinfo=UTC).timestamp()

GOOD = Record(T, "127.0.0.1", 50000, "count", "abc2a", 2, True)
COMPOSITE = Record(T + 1, "127.0.0.1", 50001, "count", "abcd", 1, False)
EMPTY = Record(T + 2, "10.0.0.7", 40000, "count", "", error="empty message")
RANGE = Record(T + 3, "10.0.0.7", 40001, "range", None, 4, a=10, b=20, sum_ok=True)

#: A message with every kind of character that could break a line, and a
#: backslash sequence that must not be confused with an escape.
NASTY = "a\nb\\nc\r\td\x00\x1b\x7f\x85\u2028\u2029é|,\"'"


def temp_path(case: TestCase) -> str:
    """
    A path where nothing is yet, in a temporary directory removed after
    C{case}; unlike C{case.mktemp()} it never lands in the working tree
    when pytest runs the tests.
    """
    directory = tempfile.mkdtemp(prefix="primecount-journalcli-")
    case.addCleanup(shutil.rmtree, directory, True)
    return os.path.join(directory, "journal")


def make_journal(case: TestCase, records: list[Record]) -> str:
    """
    A new journal file in C{case}'s temporary directory holding C{records}.
    """
    path = os.path.abspath(temp_path(case) + ".sqlite3")
    append(path, records)
    return path


def append(path: str, records: list[Record]) -> None:
    """
    Commit C{records} to the journal at C{path}, as the server's writer does.
    """
    conn = schema.connect(path)
    try:
        conn.execute("BEGIN")
        for sql, params in schema.inserts(records):
            conn.execute(sql, params)
        conn.execute("COMMIT")
    finally:
        conn.close()


def stored(path: str) -> list[Record]:
    """
    Every record in the journal at C{path}, oldest first.
    """
    conn = schema.connect(path, readonly=True)
    try:
        return [schema.from_row(r) for r in conn.execute(schema.SELECT + " ORDER BY id")]
    finally:
        conn.close()


def parse(*argv: str) -> argparse.Namespace:
    """
    C{argv} parsed as C{primecount journal} parses it.
    """
    parser = argparse.ArgumentParser(prog="primecount journal")
    journalcli.add_arguments(parser)
    return parser.parse_args(list(argv))


class RunMixin:
    """
    Run C{primecount journal} in-process, capturing its output.
    """

    def journal(self, *argv: str) -> tuple[int, str, str]:
        """
        Run C{primecount journal argv…}; return status, stdout and stderr.
        """
        out, err = io.StringIO(), io.StringIO()
        self.patch(sys, "stdout", out)  # type: ignore[attr-defined]
        self.patch(sys, "stderr", err)  # type: ignore[attr-defined]
        status = journalcli.run(parse(*argv))
        return status, out.getvalue(), err.getvalue()

    def lines(self, *argv: str) -> list[str]:
        """
        The lines C{primecount journal argv…} prints, checking it succeeds
        quietly.
        """
        status, out, err = self.journal(*argv)
        self.assertEqual((status, err), (0, ""))  # type: ignore[attr-defined]
        return out.splitlines()


class FormatTests(RunMixin, TestCase):
    """
    Each output format, line by line.
    """

    def setUp(self) -> None:
        self.url = "sqlite:" + make_journal(self, [GOOD, COMPOSITE, EMPTY, RANGE])

    def test_originalIsTheDefault(self) -> None:
        """
        Without C{--format}, records come out as the original server's log
        lines: UTC to the second; an error as C{ERR reason}; a range request
        as its bounds, its count and its sum check.
        """
        self.assertEqual(
            self.lines("--journal", self.url),
            [
                "2026-02-16 10:37:12 | 127.0.0.1 | abc2a | 2 | sí",
                "2026-02-16 10:37:13 | 127.0.0.1 | abcd | 1 | no",
                "2026-02-16 10:37:14 | 10.0.0.7 |  | ERR empty message",
                "2026-02-16 10:37:15 | 10.0.0.7 | range [10, 20] | 4 | sum ok",
            ],
        )

    def test_seedIsTheOriginalFormatsOlderName(self) -> None:
        """
        C{--format seed}, the original format's older name, still gives the
        original server's log lines, and C{--help} says so.
        """
        original = self.lines("--journal", self.url, "--format", "original")
        self.assertEqual(self.lines("--journal", self.url, "--format", "seed"), original)
        self.assertEqual(self.lines("--journal", self.url), original)
        self.assertEqual(parse("--format", "seed").format, "original")
        parser = argparse.ArgumentParser(prog="primecount journal")
        journalcli.add_arguments(parser)
        shown = " ".join(parser.format_help().split())
        self.assertIn("{original,jsonl,csv}", shown)
        self.assertIn(
            "original: the original server's log lines (default; seed, its older name", shown
        )

    def test_originalRangeOutcomes(self) -> None:
        """
        A range request whose sum was wrong, unknown, or that failed.
        """
        url = "sqlite:" + make_journal(
            self,
            [
                Record(T, "::1", 1, "range", count=4, a=10, b=20, sum_ok=False),
                Record(T, "::1", 1, "range", count=4, a=10, b=20),
                Record(T, "::1", 1, "range", a=20, b=10, error="bad range"),
                Record(T, "::1", 1, "range", error="not a range request"),
            ],
        )
        self.assertEqual(
            self.lines("--journal", url),
            [
                "2026-02-16 10:37:12 | ::1 | range [10, 20] | 4 | sum mismatch",
                "2026-02-16 10:37:12 | ::1 | range [10, 20] | 4 | sum unknown",
                "2026-02-16 10:37:12 | ::1 | range [20, 10] | ERR bad range",
                "2026-02-16 10:37:12 | ::1 | range [?, ?] | ERR not a range request",
            ],
        )

    def test_jsonl(self) -> None:
        """
        C{--format jsonl}: one compact JSON object per record, time in ISO
        8601 UTC with milliseconds; range records add C{a}, C{b}, C{sum_ok}.
        """
        self.assertEqual(
            self.lines("--journal", self.url, "--format", "jsonl"),
            [
                '{"time":"2026-02-16T10:37:12.345Z","peer":"127.0.0.1","port":50000,'
                '"protocol":"count","message":"abc2a","count":2,"prime":true,'
                '"error":null}',
                '{"time":"2026-02-16T10:37:13.345Z","peer":"127.0.0.1","port":50001,'
                '"protocol":"count","message":"abcd","count":1,"prime":false,'
                '"error":null}',
                '{"time":"2026-02-16T10:37:14.345Z","peer":"10.0.0.7","port":40000,'
                '"protocol":"count","message":"","count":null,"prime":null,'
                '"error":"empty message"}',
                '{"time":"2026-02-16T10:37:15.345Z","peer":"10.0.0.7","port":40001,'
                '"protocol":"range","message":null,"count":4,"prime":null,'
                '"error":null,"a":10,"b":20,"sum_ok":true}',
            ],
        )

    def test_csv(self) -> None:
        """
        C{--format csv}: a header row, then one row per record; flags as
        C{true}/C{false}, missing values as empty cells.
        """
        self.assertEqual(
            self.lines("--journal", self.url, "--format", "csv"),
            [
                "time,peer,port,protocol,message,count,prime,error,a,b,sum_ok",
                "2026-02-16T10:37:12.345Z,127.0.0.1,50000,count,abc2a,2,true,,,,",
                "2026-02-16T10:37:13.345Z,127.0.0.1,50001,count,abcd,1,false,,,,",
                "2026-02-16T10:37:14.345Z,10.0.0.7,40000,count,,,,empty message,,,",
                "2026-02-16T10:37:15.345Z,10.0.0.7,40001,range,,4,,,10,20,true",
            ],
        )

    def test_emptyJournal(self) -> None:
        """
        An empty journal prints nothing (csv: just its header).
        """
        url = "sqlite:" + make_journal(self, [])
        self.assertEqual(self.lines("--journal", url), [])
        self.assertEqual(
            self.lines("--journal", url, "--format", "csv"),
            ["time,peer,port,protocol,message,count,prime,error,a,b,sum_ok"],
        )

    def test_defaultJournalInCurrentDirectory(self) -> None:
        """
        Without C{--journal}, C{primecount.sqlite3} in the current directory
        is read.
        """
        here = os.path.abspath(temp_path(self))
        os.makedirs(here)
        append(os.path.join(here, "primecount.sqlite3"), [GOOD])
        self.addCleanup(os.chdir, os.getcwd())
        os.chdir(here)
        self.assertEqual(self.lines(), ["2026-02-16 10:37:12 | 127.0.0.1 | abc2a | 2 | sí"])


class EscapeTests(RunMixin, TestCase):
    """
    Control characters never break a record over two lines, and the escaping
    can be undone.
    """

    def setUp(self) -> None:
        self.url = "sqlite:" + make_journal(
            self, [Record(T, "127.0.0.1", 1, "count", NASTY, 1, False)]
        )

    def test_escape(self) -> None:
        """
        The backslash and each kind of control character have their escape.
        """
        self.assertEqual(
            formats.escape(NASTY),
            "a\\nb\\\\nc\\r\\td\\x00\\x1b\\x7f\\x85\\u2028\\u2029é|,\"'",
        )

    def test_escapedBackslashIsNotANewline(self) -> None:
        """
        A message holding a backslash and an C{n} and one holding a newline
        print differently.
        """
        self.assertNotEqual(formats.escape("a\\nb"), formats.escape("a\nb"))

    @given(st.text())
    def test_escapeRoundTrips(self, text: str) -> None:
        """
        L{formats.unescape} undoes L{formats.escape}, whose result is
        one line.
        """
        escaped = formats.escape(text)
        self.assertEqual(len((escaped + "x").splitlines()), 1)
        self.assertEqual(formats.unescape(escaped), text)

    def test_originalOneLine(self) -> None:
        """
        In original format the message is escaped and the record is one line.
        """
        out = self.journal("--journal", self.url)[1]
        self.assertEqual(len(out.splitlines()), 1)
        self.assertEqual(
            out,
            "2026-02-16 10:37:12 | 127.0.0.1 | " + formats.escape(NASTY) + " | 1 | no\n",
        )
        message = out.split(" | ", 2)[2].rsplit(" | ", 2)[0]
        self.assertEqual(formats.unescape(message), NASTY)

    def test_csvOneLine(self) -> None:
        """
        In csv format the message is escaped, the row is one line, and the
        csv module reads the message back.
        """
        out = self.journal("--journal", self.url, "--format", "csv")[1]
        self.assertEqual(len(out.splitlines()), 2)
        rows = list(csv.DictReader(io.StringIO(out)))
        self.assertEqual(formats.unescape(rows[0]["message"]), NASTY)

    def test_jsonlOneLine(self) -> None:
        """
        In jsonl format the record is one line even for readers that split
        on U+2028, DEL or C1 controls, and JSON gives the message back.
        """
        out = self.journal("--journal", self.url, "--format", "jsonl")[1]
        self.assertEqual(len(out.splitlines()), 1)
        self.assertFalse({"\x7f", "\x85", "\u2028", "\u2029"} & set(out))
        self.assertEqual(json.loads(out)["message"], NASTY)


class ByteMessageTests(RunMixin, TestCase):
    """
    A message that was not UTF-8 is kept as its bytes and shown so that it
    cannot be taken for text, in every format; older journals, which kept
    it as text with C{\\xNN} escapes, still read.
    """

    RAW = Record(T, "127.0.0.1", 1, "count", b"ab\xff", error="invalid UTF-8")
    TEXT = Record(T, "127.0.0.1", 2, "count", "ab\\xff", 1, False)
    OLD = Record(T, "127.0.0.1", 3, "count", "ab\\xff", error="invalid UTF-8")

    def setUp(self) -> None:
        self.path = make_journal(self, [self.RAW, self.TEXT, self.OLD])
        self.url = "sqlite:" + self.path

    def test_storedAsBytes(self) -> None:
        self.assertEqual([r.message for r in stored(self.path)], [b"ab\xff", "ab\\xff", "ab\\xff"])

    def test_original(self) -> None:
        raw, text, old = self.lines("--journal", self.url)
        self.assertEqual(raw, "2026-02-16 10:37:12 | 127.0.0.1 | ab\\udcff | ERR invalid UTF-8")
        self.assertEqual(text, "2026-02-16 10:37:12 | 127.0.0.1 | ab\\\\xff | 1 | no")
        self.assertEqual(old, "2026-02-16 10:37:12 | 127.0.0.1 | ab\\\\xff | ERR invalid UTF-8")
        shown = raw.split(" | ")[2]
        self.assertEqual(formats.unescape(shown).encode("utf-8", "surrogateescape"), b"ab\xff")

    def test_jsonl(self) -> None:
        raw, text, old = [
            json.loads(line) for line in self.lines("--journal", self.url, "--format", "jsonl")
        ]
        self.assertEqual((raw["message"], raw["message_hex"]), (None, "6162ff"))
        self.assertEqual(text["message"], "ab\\xff")
        self.assertNotIn("message_hex", text)
        self.assertEqual(old["message"], "ab\\xff")

    def test_csv(self) -> None:
        out = self.journal("--journal", self.url, "--format", "csv")[1]
        raw, text, old = [row["message"] for row in csv.DictReader(io.StringIO(out))]
        self.assertEqual((raw, text, old), ("ab\\udcff", "ab\\\\xff", "ab\\\\xff"))


class FilterTests(RunMixin, TestCase):
    """
    C{--since}, C{--until}, C{--peer} and C{--limit}.
    """

    def setUp(self) -> None:
        self.records = [
            Record(T + 3600 * i, f"192.0.2.{i % 2}", 1, "count", f"m{i}", 1, False)
            for i in range(6)
        ]
        self.url = "sqlite:" + make_journal(self, self.records)

    def messages(self, *argv: str) -> list[str]:
        """
        The messages of the records shown by C{primecount journal argv…}.
        """
        lines = self.lines("--journal", self.url, "--format", "jsonl", *argv)
        return [json.loads(line)["message"] for line in lines]

    def test_since(self) -> None:
        """
        C{--since} keeps records at or after the time, read as UTC.
        """
        self.assertEqual(
            self.messages("--since", "2026-02-16T12:37:12.345"),
            ["m2", "m3", "m4", "m5"],
        )
        self.assertEqual(self.messages("--since", "2026-02-16 15:00"), ["m5"])
        self.assertEqual(self.messages("--since", "2026-02-17"), [])

    def test_sinceWithOffset(self) -> None:
        """
        An ISO time with an offset (or C{Z}) means that offset.
        """
        self.assertEqual(self.messages("--since", "2026-02-16T16:00+01:00"), ["m5"])
        self.assertEqual(self.messages("--since", "2026-02-16T15:00Z"), ["m5"])

    def test_until(self) -> None:
        """
        C{--until} keeps records before the time; a date means its midnight.
        """
        self.assertEqual(self.messages("--until", "2026-02-16T12:37:12.345"), ["m0", "m1"])
        self.assertEqual(self.messages("--until", "2026-02-16"), [])
        self.assertEqual(
            self.messages("--since", "2026-02-16T11:00", "--until", "2026-02-16T13:00"),
            ["m1", "m2"],
        )

    def test_relative(self) -> None:
        """
        C{10m}, C{2h}, C{3d} mean that long ago.
        """
        now = time.time()
        url = "sqlite:" + make_journal(
            self,
            [
                Record(now - 4 * 86400, "::1", 1, "count", "4d", 1, False),
                Record(now - 3 * 3600, "::1", 1, "count", "3h", 1, False),
                Record(now - 60, "::1", 1, "count", "1m", 1, False),
            ],
        )

        def messages(*argv: str) -> list[str]:
            lines = self.lines("--journal", url, "--format", "jsonl", *argv)
            return [json.loads(line)["message"] for line in lines]

        self.assertEqual(messages("--since", "10m"), ["1m"])
        self.assertEqual(messages("--since", "2h"), ["1m"])
        self.assertEqual(messages("--since", "3d"), ["3h", "1m"])
        self.assertEqual(messages("--until", "90s"), ["4d", "3h"])
        self.assertEqual(messages("--since", "1w", "--until", "1.5h"), ["4d", "3h"])

    def test_parseTime(self) -> None:
        """
        L{journalcli.parse_time} against a fixed now.
        """
        self.assertEqual(journalcli.parse_time("10m", now=1000.0), 400.0)
        self.assertEqual(journalcli.parse_time("1970-01-01T00:01:40"), 100.0)
        self.assertEqual(journalcli.parse_time("1970-01-01T01:01:40+01:00"), 100.0)

    def test_peer(self) -> None:
        """
        C{--peer} keeps the records of one client IP.
        """
        self.assertEqual(self.messages("--peer", "192.0.2.1"), ["m1", "m3", "m5"])
        self.assertEqual(self.messages("--peer", "192.0.2.9"), [])

    def test_peerMatchesMappedAddress(self) -> None:
        """
        An IPv4 C{--peer} also finds the IPv4-mapped form that a server
        listening on C{::} records, and the other way round.
        """
        url = "sqlite:" + make_journal(
            self,
            [
                Record(T, "::ffff:192.0.2.1", 1, "count", "mapped", 1, False),
                Record(T, "192.0.2.1", 1, "count", "plain", 1, False),
                Record(T, "2001:db8::1", 1, "count", "six", 1, False),
            ],
        )
        for peer in ("192.0.2.1", "::ffff:192.0.2.1"):
            lines = self.lines("--journal", url, "--peer", peer)
            self.assertEqual([line.split(" | ")[2] for line in lines], ["mapped", "plain"])
        lines = self.lines("--journal", url, "--peer", "2001:DB8:0::1")
        self.assertEqual([line.split(" | ")[2] for line in lines], ["six"])

    def test_limitShowsTheLast(self) -> None:
        """
        C{--limit N} shows the last N matching records, oldest first.
        """
        self.assertEqual(self.messages("--limit", "2"), ["m4", "m5"])
        self.assertEqual(self.messages("--limit", "2", "--peer", "192.0.2.0"), ["m2", "m4"])
        self.assertEqual(self.messages("--limit", "99"), [f"m{i}" for i in range(6)])
        self.assertEqual(self.messages("--limit", "0"), [])


class FollowTests(RunMixin, TestCase):
    """
    C{--follow} prints records committed after it started.
    """

    def test_followPrintsNewRecords(self) -> None:
        """
        After the backlog (the last 10 by default), each poll prints what was
        committed since; Ctrl-C ends it with status 0.
        """
        old = [Record(T + i, "::1", 1, "count", f"old{i}", 1, False) for i in range(12)]
        path = make_journal(self, old)
        polls = []

        def sleep(seconds: float) -> None:
            polls.append(seconds)
            if len(polls) == 1:
                append(path, [Record(T + 20, "::1", 1, "count", "new", 2, True)])
            elif len(polls) == 2:
                append(path, [Record(T + 21, "::2", 1, "count", "other", 2, True)])
            else:
                raise KeyboardInterrupt()

        self.patch(reader, "_sleep", sleep)
        status, out, err = self.journal("--journal", "sqlite:" + path, "--follow", "--peer", "::1")
        self.assertEqual((status, err), (0, ""))
        self.assertEqual(
            [line.split(" | ")[2] for line in out.splitlines()],
            [f"old{i}" for i in range(2, 12)] + ["new"],
        )
        self.assertEqual(len(polls), 3)

    def test_followAfterEverythingPruned(self) -> None:
        """
        When every record was pruned, ids start again at 1: follow still
        sees the new records.
        """
        path = make_journal(
            self,
            [Record(T + i, "::1", 1, "count", f"old{i}", 1, False) for i in range(3)],
        )
        polls = []

        def sleep(seconds: float) -> None:
            polls.append(seconds)
            if len(polls) == 1:
                conn = schema.connect(path)
                conn.execute("DELETE FROM requests")
                conn.close()
                append(path, [Record(T, "::1", 1, "count", "fresh", 1, False)])
            elif len(polls) > 2:
                raise KeyboardInterrupt()

        self.patch(reader, "_sleep", sleep)
        status, out, err = self.journal("--journal", "sqlite:" + path, "--follow", "--limit", "0")
        self.assertEqual((status, out.split(" | ")[2:3], err), (0, ["fresh"], ""))


class PruneTests(RunMixin, TestCase):
    """
    C{--prune-before} deletes old records.
    """

    def setUp(self) -> None:
        self.records = [
            Record(T + 86400 * i, "::1", 1, "count", f"day{i}", 1, False) for i in range(5)
        ]
        self.path = make_journal(self, self.records)
        self.url = "sqlite:" + self.path

    def test_prune(self) -> None:
        """
        Records before the time are deleted, the count is printed, the rest
        stay.
        """
        self.assertEqual(
            self.lines("--journal", self.url, "--prune-before", "2026-02-18"),
            ["pruned 2 records older than 2026-02-18T00:00:00.000Z"],
        )
        self.assertEqual(stored(self.path), self.records[2:])

    def test_pruneInChunks(self) -> None:
        """
        Several chunks delete everything that is old enough, and nothing
        else.
        """
        self.patch(reader, "PRUNE_CHUNK", 2)
        self.assertEqual(
            self.lines("--journal", self.url, "--prune-before", "2026-02-20T10:37:12"),
            ["pruned 4 records older than 2026-02-20T10:37:12.000Z"],
        )
        self.assertEqual(stored(self.path), self.records[4:])

    def test_pruneWhileWriterConnected(self) -> None:
        """
        Pruning works while the server's writer holds its connection open,
        and the writer can commit afterwards.
        """
        writer = schema.connect(self.path)
        self.addCleanup(writer.close)
        writer.execute("SELECT count(*) FROM requests").fetchone()
        self.assertEqual(
            self.lines("--journal", self.url, "--prune-before", "2030-01-01"),
            ["pruned 5 records older than 2030-01-01T00:00:00.000Z"],
        )
        for sql, params in schema.inserts([GOOD]):
            writer.execute(sql, params)
        self.assertEqual(stored(self.path), [GOOD])

    def test_vacuumShrinks(self) -> None:
        """
        With C{--vacuum}, the file shrinks after pruning.
        """
        append(
            self.path,
            [Record(T, "::1", 1, "count", "x" * 200, 1, False) for _ in range(2000)],
        )
        before = os.path.getsize(self.path)
        self.lines("--journal", self.url, "--prune-before", "2030-01-01", "--vacuum")
        self.assertLess(os.path.getsize(self.path), before / 10)
        self.assertEqual(stored(self.path), [])

    def test_pruneNothing(self) -> None:
        """
        A time before every record prunes nothing.
        """
        self.assertEqual(
            self.lines("--journal", self.url, "--prune-before", "2000-01-01"),
            ["pruned 0 records older than 2000-01-01T00:00:00.000Z"],
        )
        self.assertEqual(stored(self.path), self.records)


class WorkerPartsTests(RunMixin, TestCase):
    """
    With C{--workers N} each worker writes its own part beside the journal
    C{sqlite:PATH} (C{PATH.worker0}, ...); C{primecount journal} reads
    C{PATH} and every part as one journal, in time order.
    """

    def setUp(self) -> None:
        # Hours 0..8 spread over the three files, interleaved; peers alternate.
        self.records = [
            Record(T + 3600 * i, f"192.0.2.{i % 2}", 1, "count", f"m{i}", 1, False)
            for i in range(9)
        ]
        self.path = make_journal(self, self.records[0::3])
        append(schema.part_path(self.path, 0), self.records[1::3])
        append(schema.part_path(self.path, 1), self.records[2::3])
        self.url = "sqlite:" + self.path

    def messages(self, *argv: str) -> list[str]:
        """
        The messages of the records shown by C{primecount journal argv…}.
        """
        lines = self.lines("--journal", self.url, "--format", "jsonl", *argv)
        return [json.loads(line)["message"] for line in lines]

    def test_partNames(self) -> None:
        """
        Worker i writes C{PATH.worker<i>}; L{schema.part_paths} finds the
        parts that exist, in worker order, and not their C{-wal}/C{-shm}
        files or other names.
        """
        self.assertEqual(schema.part_path("/srv/j.sqlite3", 3), "/srv/j.sqlite3.worker3")
        for name in ("-wal", "-shm"):
            with open(schema.part_path(self.path, 1) + name, "a"):
                pass
        for other in (".worker", ".workerx", ".worker2.bak", "x.worker2"):
            with open(self.path + other, "w"):
                pass
        with open(schema.part_path(self.path, 10), "w"):
            pass
        self.assertEqual(
            schema.part_paths(self.path),
            [schema.part_path(self.path, i) for i in (0, 1, 10)],
        )

    def test_forWorker(self) -> None:
        """
        L{for_worker} gives a worker its part of an SQLite journal, and any
        other journal unchanged.
        """
        self.assertEqual(
            for_worker(parse_url("sqlite:/srv/j.sqlite3"), 2),
            JournalURL("sqlite", "/srv/j.sqlite3.worker2"),
        )
        pg = parse_url("postgresql://u@db/primecount")
        self.assertEqual(for_worker(pg, 2), pg)
        self.assertEqual(for_worker(parse_url("none"), 2), parse_url("none"))

    def test_mergedInTimeOrder(self) -> None:
        """
        Every record of every file, once, in time order.
        """
        self.assertEqual(self.messages(), [f"m{i}" for i in range(9)])

    def test_filters(self) -> None:
        """
        C{--since}, C{--until} and C{--peer} apply to every part.
        """
        self.assertEqual(
            self.messages("--since", "2026-02-16T12:37:12.345", "--until", "2026-02-16T16:00"),
            ["m2", "m3", "m4", "m5"],
        )
        self.assertEqual(self.messages("--peer", "192.0.2.1"), ["m1", "m3", "m5", "m7"])

    def test_limitIsTheLastOfTheMergedStream(self) -> None:
        """
        C{--limit N} shows the last N records of all files together.
        """
        self.assertEqual(self.messages("--limit", "4"), ["m5", "m6", "m7", "m8"])
        self.assertEqual(self.messages("--limit", "2", "--peer", "192.0.2.0"), ["m6", "m8"])
        self.assertEqual(self.messages("--limit", "0"), [])

    def test_leftoverPartIsRead(self) -> None:
        """
        A part left by an earlier run with more workers is still read.
        """
        append(schema.part_path(self.path, 7), [Record(T + 0.5, "::1", 1, "count", "old", 1, True)])
        self.assertEqual(self.messages()[:3], ["m0", "old", "m1"])

    def test_partBeingCreatedIsSkipped(self) -> None:
        """
        A part a worker is creating this moment (no table yet) holds no
        record: it is not an error.
        """
        with open(schema.part_path(self.path, 2), "w"):
            pass
        self.assertEqual(self.messages(), [f"m{i}" for i in range(9)])

    def test_partNotAJournal(self) -> None:
        """
        A part that is not an SQLite file is one line naming it.
        """
        part = schema.part_path(self.path, 2)
        with open(part, "w") as f:
            f.write("hello\n" * 1000)
        status, out, err = self.journal("--journal", self.url)
        self.assertEqual((status, out), (1, ""))
        self.assertEqual(len(err.splitlines()), 1, err)
        self.assertIn(f"cannot read journal {part}", err)

    def test_followEveryPartAndNewOnes(self) -> None:
        """
        C{--follow} prints what is committed to any part, and to a part
        that appears after it started, in time order.
        """
        polls = []

        def sleep(seconds: float) -> None:
            polls.append(seconds)
            if len(polls) == 1:
                append(
                    schema.part_path(self.path, 1),
                    [Record(T + 40000, "::1", 1, "count", "b", 1, False)],
                )
                append(self.path, [Record(T + 39999, "::1", 1, "count", "a", 1, False)])
            elif len(polls) == 2:
                append(
                    schema.part_path(self.path, 5),
                    [Record(T + 40001, "::1", 1, "count", "new", 1, False)],
                )
            else:
                raise KeyboardInterrupt()

        self.patch(reader, "_sleep", sleep)
        status, out, err = self.journal("--journal", self.url, "--follow", "--limit", "2")
        self.assertEqual((status, err), (0, ""))
        self.assertEqual(
            [line.split(" | ")[2] for line in out.splitlines()], ["m7", "m8", "a", "b", "new"]
        )

    def test_pruneEveryPart(self) -> None:
        """
        C{--prune-before} deletes old records from every file.
        """
        self.assertEqual(
            self.lines("--journal", self.url, "--prune-before", "2026-02-16T15:00"),
            ["pruned 5 records older than 2026-02-16T15:00:00.000Z"],
        )
        self.assertEqual(self.messages(), ["m5", "m6", "m7", "m8"])
        self.assertEqual(stored(schema.part_path(self.path, 0)), [self.records[7]])


class ErrorTests(RunMixin, TestCase):
    """
    Every problem is one line on stderr and status 1, never a traceback.
    """

    def assertOneLineError(self, *argv: str, says: str) -> None:
        """
        C{primecount journal argv…} fails with one line containing C{says}.
        """
        status, out, err = self.journal(*argv)
        self.assertEqual((status, out), (1, ""))
        self.assertEqual(len(err.splitlines()), 1, err)
        self.assertTrue(err.startswith("primecount journal: "), err)
        self.assertIn(says, err)

    def test_missingFile(self) -> None:
        """
        A journal file that does not exist (and is not created).
        """
        path = os.path.abspath(temp_path(self))
        self.assertOneLineError("--journal", "sqlite:" + path, says="no journal at")
        self.assertOneLineError(
            "--journal", "sqlite:" + path, "--prune-before", "1d", says="no journal"
        )
        self.assertFalse(os.path.exists(path))

    def test_none(self) -> None:
        """
        C{--journal none}: there is nothing to read.
        """
        self.assertOneLineError("--journal", "none", says="journal is off")

    def test_unknownScheme(self) -> None:
        """
        A URL that is not C{sqlite:PATH}.
        """
        self.assertOneLineError("--journal", "mysql://db/x", says="mysql")
        self.assertOneLineError("--journal", "sqlite:", says="sqlite:")

    def test_notAJournal(self) -> None:
        """
        A file that is not SQLite, or SQLite without the journal's table.
        """
        path = temp_path(self)
        with open(path, "w") as f:
            f.write("hello\n" * 1000)
        self.assertOneLineError("--journal", "sqlite:" + path, says="cannot read")
        other = temp_path(self)
        sqlite = schema.sqlite3.connect(other)
        sqlite.execute("CREATE TABLE t (x)")
        sqlite.close()
        self.assertOneLineError("--journal", "sqlite:" + other, says="cannot read")

    def test_badValues(self) -> None:
        """
        A bad time, number or address.
        """
        url = "sqlite:" + make_journal(self, [GOOD])
        for option, value in [
            ("--since", "yesterday"),
            ("--until", "2026-13-01"),
            ("--since", "10x"),
            ("--prune-before", "3 days"),
            ("--limit", "-1"),
            ("--limit", "ten"),
            ("--peer", "localhost"),
        ]:
            self.assertOneLineError("--journal", url, option, value, says=repr(value))
        self.assertEqual(stored(url.removeprefix("sqlite:")), [GOOD])

    def test_clashingOptions(self) -> None:
        """
        Options that make no sense together.
        """
        url = "sqlite:" + make_journal(self, [GOOD])
        for argv, says in [
            (("--follow", "--until", "1h"), "--until"),
            (("--prune-before", "1d", "--peer", "::1"), "--peer"),
            (("--prune-before", "1d", "--follow"), "--follow"),
            (("--vacuum",), "--prune-before"),
        ]:
            self.assertOneLineError("--journal", url, *argv, says=says)
        self.assertEqual(stored(url.removeprefix("sqlite:")), [GOOD])
