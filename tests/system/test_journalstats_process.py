"""
C{primecount journal --stats} on a PostgreSQL journal (a real throwaway
cluster, L{primecount.testing.pgcluster}): the journal of known content of
L{tests.unit.test_journalstats} gives exactly its expected figures, and
every format and filter says what the SQLite journal with the same
records says.

Without PostgreSQL or psycopg these tests skip loudly, except under
C{CI=true}, where they fail.
"""

from __future__ import annotations

import json

from twisted.trial.unittest import TestCase

from tests.system.test_postgresql_journal_process import _Database, run_journal
from tests.unit.test_journalstats import EXPECTED, KNOWN, known_journal, without_name


class PostgresStatsTests(_Database, TestCase):
    """
    L{KNOWN}, committed to PostgreSQL as the hosts would (in the SQLite
    journal's id order), against its worker files in SQLite.
    """

    def setUp(self) -> None:
        super().setUp()
        self.journal().commit([r for part in KNOWN for r in part])
        self.sqlite = "sqlite:" + known_journal(self)

    def stats(self, url: str, *argv: str) -> str:
        status, out, err = run_journal("--journal", url, "--stats", *argv)
        self.assertEqual((status, err), (0, ""))
        return out

    def test_everyFigureExact(self) -> None:
        found = json.loads(self.stats(self.url, "--format", "jsonl"))
        self.assertEqual(found["files"], 1)
        self.assertEqual(without_name(found), EXPECTED)

    def test_sameAsSQLite(self) -> None:
        for argv in (
            ("--format", "original"),
            ("--format", "csv"),
            ("--format", "jsonl", "--top", "2"),
            ("--format", "jsonl", "--since", "2026-02-16T10:02"),
            ("--format", "jsonl", "--until", "2026-02-16T10:02"),
            ("--format", "jsonl", "--peer", "10.0.0.2"),
            ("--format", "original", "--since", "2027-01-01"),
        ):
            pg, lite = self.stats(self.url, *argv), self.stats(self.sqlite, *argv)
            if "jsonl" in argv:
                self.assertEqual(without_name(json.loads(pg)), without_name(json.loads(lite)), argv)
            else:
                # The first line names the journal.
                self.assertEqual(pg.splitlines()[1:], lite.splitlines()[1:], argv)
