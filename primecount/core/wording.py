# -*- test-case-name: tests.unit.test_fileaccess -*-
"""
Counted nouns in log lines and messages: C{1 record}, C{2 records}, never
C{1 records}.
"""

from __future__ import annotations


def plural(n: int, noun: str, nouns: str | None = None) -> str:
    """
    C{n} and C{noun}, or C{nouns} (default C{noun + "s"}) unless C{n} is 1:
    C{plural(1, "transaction")} is C{1 transaction}, C{plural(3, "process",
    "processes")} is C{3 processes}.
    """
    if n == 1:
        return f"{n} {noun}"
    return f"{n} {nouns if nouns is not None else noun + 's'}"
