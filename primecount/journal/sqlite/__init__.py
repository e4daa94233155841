"""
The SQLite journal backend.
"""

from primecount.journal.sqlite.writer import SQLiteJournal, check_writable

__all__ = ["SQLiteJournal", "check_writable"]
