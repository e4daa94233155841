"""
L{primecount.core.fileaccess}: the cause of an SQLite file that cannot be
opened, in words; L{primecount.core.wording}: counted nouns.

What only another user can see (permission denied, a read-only directory)
is checked with real processes in L{tests.system.test_messages_process}.
"""

from __future__ import annotations

import os
import sqlite3

from twisted.trial.unittest import SynchronousTestCase

from primecount.core.fileaccess import access_problem, explain, is_access_error
from primecount.core.wording import plural


class AccessProblemTests(SynchronousTestCase):
    """
    L{access_problem} names what is in the way, or nothing.
    """

    def setUp(self) -> None:
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)

    def test_missingDirectory(self) -> None:
        path = os.path.join(self.dir, "nope", "j.sqlite3")
        for write in (True, False):
            self.assertEqual(
                access_problem(path, write=write),
                f"directory {self.dir}/nope does not exist",
            )

    def test_directoryIsAFile(self) -> None:
        open(os.path.join(self.dir, "file"), "w").close()
        self.assertEqual(
            access_problem(os.path.join(self.dir, "file", "j.sqlite3"), write=True),
            f"{self.dir}/file is not a directory",
        )

    def test_pathIsADirectory(self) -> None:
        self.assertEqual(
            access_problem(self.dir, write=True),
            f"{self.dir} is a directory, not an SQLite file",
        )

    def test_missingFileToRead(self) -> None:
        path = os.path.join(self.dir, "j.sqlite3")
        self.assertEqual(access_problem(path, write=False), f"{path} does not exist")
        # To write, a missing file is created: nothing in the way.
        self.assertIsNone(access_problem(path, write=True))

    def test_nothingInTheWay(self) -> None:
        path = os.path.join(self.dir, "j.sqlite3")
        sqlite3.connect(path).close()
        self.assertIsNone(access_problem(path, write=True))
        self.assertIsNone(access_problem(path, write=False))


class ExplainTests(SynchronousTestCase):
    """
    L{explain} replaces SQLite's words only for access errors it can
    explain.
    """

    def test_accessErrorExplained(self) -> None:
        directory = os.path.abspath(self.mktemp())
        path = os.path.join(directory, "j.sqlite3")
        e = self.assertRaises(sqlite3.OperationalError, sqlite3.connect, path)
        self.assertEqual(str(e), "unable to open database file")
        self.assertTrue(is_access_error(e))
        self.assertEqual(explain(path, e, write=True), f"directory {directory} does not exist")

    def test_otherErrorKeepsSQLiteWords(self) -> None:
        """
        A file that is not a database is not an access problem, whatever
        the file system says.
        """
        path = os.path.abspath(self.mktemp())
        with open(path, "wb") as f:
            f.write(b"not a database at all, " * 100)
        conn = sqlite3.connect(path)
        self.addCleanup(conn.close)
        e = self.assertRaises(sqlite3.DatabaseError, conn.execute, "SELECT * FROM requests")
        self.assertFalse(is_access_error(e))
        self.assertEqual(explain(path, e, write=True), str(e))

    def test_unexplainedAccessErrorKeepsSQLiteWords(self) -> None:
        """
        An access error whose cause is not in sight (here: made up) keeps
        SQLite's message rather than a wrong guess.
        """
        path = os.path.abspath(self.mktemp())
        sqlite3.connect(path).close()
        error = sqlite3.OperationalError("unable to open database file")
        self.assertEqual(explain(path, error, write=True), "unable to open database file")


class PluralTests(SynchronousTestCase):
    """
    L{plural}: C{1 transaction}, never C{1 transactions}.
    """

    def test_plural(self) -> None:
        self.assertEqual(plural(1, "transaction"), "1 transaction")
        self.assertEqual(plural(0, "record"), "0 records")
        self.assertEqual(plural(2, "open connection"), "2 open connections")
        self.assertEqual(plural(1, "process", "processes"), "1 process")
        self.assertEqual(plural(3, "process", "processes"), "3 processes")
