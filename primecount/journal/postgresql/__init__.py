"""
The PostgreSQL journal backend.
"""

from primecount.journal.postgresql.writer import PostgresJournal, check_writable

__all__ = ["PostgresJournal", "check_writable"]
