# -*- test-case-name: tests.unit.test_postgresql_journal -*-
"""
C{--journal postgresql://…} URLs, which need no database. The PostgreSQL
journal itself is tested in L{tests.system.test_postgresql_journal_process}.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from primecount.journal import JournalURLError, parse_url
from primecount.testing import pgcluster


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
            from primecount.journal.postgresql import check_writable
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
