"""
The open-files limit: raised as far as the hard limit allows, for a server
that holds many connections or a load generator that opens many.
"""

from __future__ import annotations

import resource


def raise_open_files_limit(wanted: int) -> int:
    """
    Raise the soft limit of open files toward C{wanted} (up to the hard
    limit).

    @return: the effective soft limit (C{resource.RLIM_INFINITY} for none).
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft
