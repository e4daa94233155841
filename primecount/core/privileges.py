# -*- test-case-name: tests.unit.test_privileges,tests.system.test_security_process -*-
"""
Least privilege under twistd's C{--uid}/C{--gid}: twistd starts as root,
builds the service, binds its ports (C{privilegedStartService}), then
switches to that user and group and starts the service. What primecount
creates before the switch (the journal file its start check opens, the
supervisor's scratch directory and shared counts, a UNIX socket) must
belong to that user, or the server cannot write it afterwards (SQLite:
"attempt to write a readonly database").

L{acting_as} runs a block with that user's effective ids, so such a file
is created by the user who will use it, and a start check tests what that
user can do, not what root can. Pure Python, no Twisted.
"""

from __future__ import annotations

import os
import pwd
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass


@dataclass(frozen=True)
class Owner:
    """
    The user and groups the server runs as once twistd has switched.

    @ivar uid: the user id.
    @ivar gid: the primary group id.
    @ivar groups: the supplementary groups, or C{None} to keep the
        process's own (twistd sets them only when it switches user).
    """

    uid: int
    gid: int
    groups: tuple[int, ...] | None = None


def switched_to(uid: int | None, gid: int | None) -> Owner | None:
    """
    Whom twistd's C{--uid}/C{--gid} switch this process to, as twistd
    does it: without C{--gid}, the user's primary group; with C{--uid}, the
    user's supplementary groups (C{initgroups}).

    @return: C{None} when neither is given (no switch).
    """
    if uid is None and gid is None:
        return None
    if uid is None:
        return Owner(os.geteuid(), gid if gid is not None else os.getegid())
    try:
        entry = pwd.getpwuid(uid)
    except KeyError:
        # twistd itself cannot switch to a user without a passwd entry.
        return Owner(uid, gid if gid is not None else os.getegid(), ())
    primary = entry.pw_gid if gid is None else gid
    return Owner(uid, primary, tuple(os.getgrouplist(entry.pw_name, primary)))


@contextmanager
def acting_as(owner: Owner | None) -> Iterator[None]:
    """
    Run the block with C{owner}'s effective user, group and supplementary
    groups, then come back: files it creates belong to C{owner}, and what
    it opens is checked against C{owner}'s permissions.

    Nothing changes when C{owner} is C{None} or this process is not root
    (it cannot switch; twistd's own switch then fails or does nothing).
    Meant for the start, before the reactor's threads exist: the ids are
    the process's.
    """
    if owner is None or os.geteuid() != 0:
        yield
        return
    groups, gid = os.getgroups(), os.getegid()
    if owner.groups is not None:
        os.setgroups(list(owner.groups))
    os.setegid(owner.gid)
    os.seteuid(owner.uid)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(gid)
        os.setgroups(groups)


def give(directory: str, owner: Owner | None) -> None:
    """
    Hand C{directory} and the files in it to C{owner}: for what must be
    made before the switch by this process itself (the supervisor's own
    metric files), and used by C{owner} after it.

    Nothing changes when C{owner} is C{None} or this process is not root.
    """
    if owner is None or os.geteuid() != 0:
        return
    os.chown(directory, owner.uid, owner.gid)
    for name in os.listdir(directory):
        os.lchown(os.path.join(directory, name), owner.uid, owner.gid)
