"""
How the client tools write figures for people: one way for every command.
"""

from __future__ import annotations


def duration_text(seconds: float) -> str:
    """
    A duration in its two largest units, whole: C{45s}, C{12m03s},
    C{3h02m}, C{4d03h}.
    """
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"
