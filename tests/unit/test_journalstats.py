"""
Tests for C{primecount journal --stats}: L{primecount.journal.stats},
L{primecount.journal.sqlite.stats} and L{primecount.cli.journalstats}.

One journal of known content (L{KNOWN}: fifteen records over five
minutes, four peers, four kinds of error, the range protocol's bad sum,
a minute without records and one record out of time order) is summed up,
and every figure is checked against what was written (L{EXPECTED}); the
same records spread over worker files (as C{--workers 2} writes them)
must give exactly what one file gives. L{tests.system.test_journalstats_process}
checks a PostgreSQL journal against the same L{EXPECTED}.
"""

from __future__ import annotations

import io
import json
import os
import sqlite3
import threading
from array import array
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase, TestCase

from primecount.cli import journalstats
from primecount.journal.records import PROTOCOL_COUNT, PROTOCOL_RANGE, Record
from primecount.journal.sqlite import schema
from primecount.journal.sqlite import stats as sqlitestats
from primecount.journal.sqlite.reader import JournalFiles, Query
from primecount.journal.sqlite.stats import FileSource
from primecount.journal.stats import Peer, buckets, merged_sums, summarize, top_peers
from tests.unit.test_journalcli import RunMixin, append, temp_path

#: 2026-02-16 10:00:00 UTC, the start of a minute.
T0 = datetime(2026, 2, 16, 10, 0, tzinfo=UTC).timestamp()


def count(t: float, peer: str, error: str | None = None) -> Record:
    """
    A count-protocol record at C{T0 + t}.
    """
    if error is not None:
        return Record(T0 + t, peer, 40000, PROTOCOL_COUNT, "", error=error)
    return Record(T0 + t, peer, 40000, PROTOCOL_COUNT, "abc2a", 2, True)


def ranged(t: float, peer: str, sum_ok: bool | None, error: str | None = None) -> Record:
    """
    A range-protocol record at C{T0 + t}.
    """
    return Record(
        T0 + t, peer, 40001, PROTOCOL_RANGE, None, 4, a=10, b=20, sum_ok=sum_ok, error=error
    )


#: The journal's files: C{PATH}, then worker 0's, then worker 1's, each in
#: commit (id) order.
KNOWN: list[list[Record]] = [
    [
        count(0.5, "10.0.0.1"),
        count(1.0, "10.0.0.1"),
        count(2.0, "10.0.0.1"),
        count(3.0, "10.0.0.1", "empty message"),
    ],
    [
        count(10.0, "10.0.0.2"),
        count(11.0, "10.0.0.2"),
        count(20.0, "192.0.2.9", "invalid UTF-8"),
        count(125.0, "10.0.0.1", "empty message"),
    ],
    [
        count(120.5, "10.0.0.2"),
        count(121.0, "10.0.0.2"),
        ranged(122.0, "10.0.0.2", True),
        ranged(123.0, "10.0.0.2", False, "bad sum"),
        ranged(124.0, "10.0.0.3", None, "client disconnected before the reply"),
        # Timed in the minute before, committed after: time order is not
        # id order to the millisecond.
        count(119.9, "10.0.0.3"),
        count(240.5, "10.0.0.3"),
    ],
]

#: What C{--stats --format jsonl} says of L{KNOWN}, its name aside.
EXPECTED: dict[str, Any] = {
    "per_minute": [
        {"minute": "2026-02-16T10:00:00.000Z", "requests": 7, "errors": 2},
        {"minute": "2026-02-16T10:01:00.000Z", "requests": 1, "errors": 0},
        {"minute": "2026-02-16T10:02:00.000Z", "requests": 6, "errors": 3},
        {"minute": "2026-02-16T10:03:00.000Z", "requests": 0, "errors": 0},
        {"minute": "2026-02-16T10:04:00.000Z", "requests": 1, "errors": 0},
    ],
    "since": None,
    "until": None,
    "first": "2026-02-16T10:00:00.500Z",
    "last": "2026-02-16T10:04:00.500Z",
    "requests": 15,
    "ok": 10,
    "errors": 5,
    "error_share": 5 / 15,
    "outcomes": {
        "ok": 10,
        "empty message": 2,
        "bad sum": 1,
        "client disconnected before the reply": 1,
        "invalid UTF-8": 1,
    },
    "range_requests": 3,
    "bad_sums": 1,
    "top_peers_by_requests": [
        {"peer": "10.0.0.2", "requests": 6, "errors": 1},
        {"peer": "10.0.0.1", "requests": 5, "errors": 2},
        {"peer": "10.0.0.3", "requests": 3, "errors": 1},
        {"peer": "192.0.2.9", "requests": 1, "errors": 1},
    ],
    "top_peers_by_errors": [
        {"peer": "10.0.0.1", "requests": 5, "errors": 2},
        {"peer": "10.0.0.2", "requests": 6, "errors": 1},
        {"peer": "10.0.0.3", "requests": 3, "errors": 1},
        {"peer": "192.0.2.9", "requests": 1, "errors": 1},
    ],
}


def without_name(found: dict[str, Any]) -> dict[str, Any]:
    """
    C{--stats --format jsonl} output without what names the journal.
    """
    return {k: v for k, v in found.items() if k not in ("journal", "files")}


def known_journal(case: TestCase, parts: bool = True) -> str:
    """
    A journal holding L{KNOWN}: C{PATH} and two worker files, or (without
    C{parts}) one file with every record; its path.
    """
    path = os.path.abspath(temp_path(case) + ".sqlite3")
    if parts:
        append(path, KNOWN[0])
        for n, records in enumerate(KNOWN[1:]):
            append(schema.part_path(path, n), records)
    else:
        append(path, sorted((r for f in KNOWN for r in f), key=lambda r: r.time))
    return path


class StatsTests(RunMixin, TestCase):
    """
    C{primecount journal --stats} on a journal of known content, in worker
    files.
    """

    def setUp(self) -> None:
        self.path = known_journal(self)
        self.url = "sqlite:" + self.path

    def stats(self, *argv: str) -> dict[str, Any]:
        found = json.loads(
            self.lines("--journal", self.url, "--stats", "--format", "jsonl", *argv)[0]
        )
        self.assertEqual((found["journal"], found["files"]), (self.path, 3))
        return without_name(found)

    def test_everyFigureExact(self) -> None:
        self.assertEqual(self.stats(), EXPECTED)

    def test_partsReadAsOneFile(self) -> None:
        """
        Records spread over worker files sum up exactly as in one file:
        totals added, a peer's requests in several files added.
        """
        one = "sqlite:" + known_journal(self, parts=False)
        together = json.loads(self.lines("--journal", one, "--stats", "--format", "jsonl")[0])
        self.assertEqual(together["files"], 1)
        self.assertEqual(without_name(together), EXPECTED)
        for fmt in ("original", "csv"):
            split = self.lines("--journal", self.url, "--stats", "--format", fmt)
            whole = self.lines("--journal", one, "--stats", "--format", fmt)
            self.assertEqual(split[1:], whole[1:])

    def test_seedIsTheOriginalReport(self) -> None:
        """
        C{--stats --format seed}, the original format's older name, gives
        the report of C{--format original}.
        """
        self.assertEqual(
            self.lines("--journal", self.url, "--stats", "--format", "seed"),
            self.lines("--journal", self.url, "--stats", "--format", "original"),
        )

    def test_topCutsBothLists(self) -> None:
        found = self.stats("--top", "2")
        self.assertEqual(found["top_peers_by_requests"], EXPECTED["top_peers_by_requests"][:2])
        self.assertEqual(found["top_peers_by_errors"], EXPECTED["top_peers_by_errors"][:2])
        found = self.stats("--top", "0")
        self.assertEqual((found["top_peers_by_requests"], found["top_peers_by_errors"]), ([], []))
        self.assertEqual(found["requests"], 15)

    def test_since(self) -> None:
        found = self.stats("--since", "2026-02-16T10:02")
        self.assertEqual(found["requests"], 7)
        self.assertEqual(found["since"], "2026-02-16T10:02:00.000Z")
        self.assertEqual(found["first"], "2026-02-16T10:02:00.500Z")
        self.assertEqual(
            found["outcomes"],
            {"ok": 4, "bad sum": 1, "client disconnected before the reply": 1, "empty message": 1},
        )
        self.assertEqual([m["requests"] for m in found["per_minute"]], [6, 0, 1])

    def test_until(self) -> None:
        """
        C{--until} is exclusive, and a record out of time order is counted
        by its time.
        """
        found = self.stats("--until", "2026-02-16T10:02")
        self.assertEqual(found["requests"], 8)
        self.assertEqual(found["last"], "2026-02-16T10:01:59.900Z")
        self.assertEqual([m["requests"] for m in found["per_minute"]], [7, 1])
        self.assertEqual((found["range_requests"], found["bad_sums"]), (0, 0))

    def test_peer(self) -> None:
        found = self.stats("--peer", "::ffff:10.0.0.2")
        self.assertEqual(found["requests"], 6)
        self.assertEqual((found["range_requests"], found["bad_sums"]), (2, 1))
        self.assertEqual(found["outcomes"], {"ok": 5, "bad sum": 1})
        self.assertEqual(found["top_peers_by_requests"], [EXPECTED["top_peers_by_requests"][0]])
        self.assertEqual([m["requests"] for m in found["per_minute"]], [2, 0, 4])

    def test_nothingMatches(self) -> None:
        found = self.stats("--since", "2027-01-01")
        self.assertEqual(found["requests"], 0)
        self.assertEqual(found["per_minute"], [])
        self.assertIsNone(found["error_share"])
        self.assertEqual(
            self.lines("--journal", self.url, "--stats", "--since", "2027-01-01")[1:],
            ["no records"],
        )
        self.assertEqual(
            self.lines(
                "--journal", self.url, "--stats", "--since", "2027-01-01", "--format", "csv"
            ),
            ["minute,requests,errors"],
        )

    def test_csvSeries(self) -> None:
        self.assertEqual(
            self.lines("--journal", self.url, "--stats", "--format", "csv"),
            ["minute,requests,errors"]
            + [f"{m['minute']},{m['requests']},{m['errors']}" for m in EXPECTED["per_minute"]],
        )

    def test_report(self) -> None:
        """
        The report for a person, whole.
        """
        out = io.StringIO()
        files = JournalFiles(self.path)
        self.addCleanup(files.close)
        journalstats.write(FileSource(files), Query(), "original", self.path, out, top=3, width=80)
        self.assertEqual(
            out.getvalue().splitlines(),
            [
                f"journal {self.path} (3 files)",
                "2026-02-16 10:00:00 to 2026-02-16 10:04:00 UTC (4m00s)",
                "",
                "requests                                           15",
                "ok                                                 10  66.7%",
                "errors                                              5  33.3%",
                "  empty message                                     2  13.3%",
                "  bad sum                                           1   6.7%",
                "  client disconnected before the reply              1   6.7%",
                "  invalid UTF-8                                     1   6.7%",
                "range protocol                                      3 requests, 1 bad sum",
                "",
                "top peers by requests                       requests      errors",
                "  10.0.0.2                                         6           1",
                "  10.0.0.1                                         5           2",
                "  10.0.0.3                                         3           1",
                "",
                "top peers by errors                           errors    requests",
                "  10.0.0.1                                         2           5",
                "  10.0.0.2                                         1           6",
                "  10.0.0.3                                         1           3",
                "",
                "requests per minute (one column: minute): peak 7, mean 3.0",
                "  █▂▇ ▂",
                "  2026-02-16 10:00 to 2026-02-16 10:04",
            ],
        )

    def test_optionsThatDoNotGoTogether(self) -> None:
        for argv, complaint in (
            (["--stats", "--limit", "5"], "--stats cannot be combined with --limit"),
            (["--stats", "--follow"], "--stats cannot be combined with --follow"),
            (["--stats", "--prune-before", "1d"], "--stats cannot be combined with --prune-before"),
            (["--top", "3"], "--top only goes with --stats"),
            (["--stats", "--top", "x"], "not a peer count: 'x' (expected 0 or more)"),
        ):
            status, out, err = self.journal("--journal", self.url, *argv)
            self.assertEqual((status, out), (1, ""), argv)
            self.assertEqual(err, f"primecount journal: {complaint}\n")

    def test_missingJournal(self) -> None:
        status, out, err = self.journal("--journal", self.url + ".absent", "--stats")
        self.assertEqual((status, out), (1, ""))
        self.assertEqual(err, f"primecount journal: no journal at {self.path}.absent\n")


class SeriesTests(SynchronousTestCase):
    """
    The series at other widths, and the sparkline.
    """

    def test_bucketsOfSeveralMinutes(self) -> None:
        path = known_journal(self)  # type: ignore[arg-type]
        files = JournalFiles(path)
        self.addCleanup(files.close)
        self.assertEqual(
            list(buckets(FileSource(files), Query(), 120)),
            [(T0, 8, 2), (T0 + 120, 6, 3), (T0 + 240, 1, 0)],
        )

    def test_minutesFolded(self) -> None:
        """
        A series longer than the terminal is wide is folded: each column
        the mean of the minutes it covers.
        """
        series, per = journalstats.columns_of(array("q", [1, 3, 5, 7, 9]), 2)
        self.assertEqual((series, per), ([3.0, 8.0], 3))
        series, per = journalstats.columns_of(array("q", [1, 3, 5, 7, 9]), 3)
        self.assertEqual((series, per), ([2.0, 6.0, 9.0], 2))
        self.assertEqual(journalstats.columns_of(array("q", [4, 0]), 10), ([4.0, 0.0], 1))

    def test_sparkline(self) -> None:
        self.assertEqual(journalstats.sparkline([0, 1, 4, 8, 7.9]), " ▁▄██")
        self.assertEqual(journalstats.sparkline([0, 0]), "  ")
        self.assertEqual(journalstats.sparkline([]), "")


class MergeTests(SynchronousTestCase):
    """
    Merging the files' sorted streams, keeping the top peers.
    """

    @given(
        st.lists(
            st.dictionaries(
                st.sampled_from("abcdefgh"), st.tuples(st.integers(0, 9), st.integers(0, 9))
            ),
            max_size=4,
        )
    )
    @settings(max_examples=80, deadline=None)
    def test_mergedSumsAddEqualKeys(self, files: list[dict[str, tuple[int, int]]]) -> None:
        streams = [iter(sorted((k, r, e) for k, (r, e) in f.items())) for f in files]
        expected: dict[str, list[int]] = {}
        for f in files:
            for k, (r, e) in f.items():
                expected.setdefault(k, [0, 0])
                expected[k][0] += r
                expected[k][1] += e
        self.assertEqual(
            list(merged_sums(streams)), [(k, r, e) for k, (r, e) in sorted(expected.items())]
        )

    @given(
        st.dictionaries(
            st.text("ab.:1", max_size=4), st.tuples(st.integers(1, 5), st.integers(0, 3))
        ),
        st.integers(0, 6),
    )
    @settings(max_examples=80, deadline=None)
    def test_topPeersAsSortingWould(self, peers: dict[str, tuple[int, int]], n: int) -> None:
        """
        The top lists are the first C{n} of the peers sorted by count,
        most first, ties by address, whatever order they come in.
        """
        given_ = [Peer(p, r, e) for p, (r, e) in peers.items()]
        by_requests, by_errors = top_peers(given_, n)
        self.assertEqual(by_requests, sorted(given_, key=lambda p: (-p.requests, p.peer))[:n])
        self.assertEqual(
            by_errors,
            sorted((p for p in given_ if p.errors), key=lambda p: (-p.errors, p.peer))[:n],
        )

    def test_summaryOfAnEmptyJournal(self) -> None:
        path = os.path.abspath(temp_path(self) + ".sqlite3")  # type: ignore[arg-type]
        append(path, [])
        files = JournalFiles(path)
        self.addCleanup(files.close)
        summary = summarize(FileSource(files), Query())
        self.assertEqual((summary.requests, summary.first, summary.by_requests), (0, None, []))


class AheadTests(SynchronousTestCase):
    """
    A worker file read in a thread of its own
    (L{primecount.journal.sqlite.stats._Ahead}).
    """

    def test_startsAtOnce(self) -> None:
        """
        The thread starts when the stream is made, not when it is first
        read: the merge reads the files' streams one after the other, so
        a lazy start would sum the files one after the other too.
        """
        started = threading.Event()

        def rows() -> list[int]:
            started.set()
            return [1, 2, 3]

        ahead = sqlitestats._Ahead(rows)
        self.addCleanup(ahead.close)
        self.assertTrue(started.wait(10))
        self.assertEqual(list(ahead), [1, 2, 3])

    def test_manyRowsInOrder(self) -> None:
        ahead = sqlitestats._Ahead(lambda: range(sqlitestats.CHUNK * 10 + 7))
        self.addCleanup(ahead.close)
        self.assertEqual(list(ahead), list(range(sqlitestats.CHUNK * 10 + 7)))

    def test_errorRaisedToTheReader(self) -> None:
        def rows() -> Iterator[int]:
            yield 1
            raise sqlite3.OperationalError("database disk image is malformed")

        ahead = sqlitestats._Ahead(rows)
        self.addCleanup(ahead.close)
        e = self.assertRaises(sqlite3.OperationalError, list, ahead)
        self.assertEqual(str(e), "database disk image is malformed")

    def test_closeStopsAReaderLeftBehind(self) -> None:
        ahead = sqlitestats._Ahead(lambda: range(sqlitestats.CHUNK * 100))
        next(iter(ahead))
        ahead.close()
        self.assertFalse(ahead._thread.is_alive())
