# -*- test-case-name: tests.unit.test_privileges -*-
"""
Least privilege and private files, in process: whom twistd's C{--uid/--gid}
switch to (L{primecount.core.privileges}), what the start creates as that
user (the journal its check opens, the supervisor's scratch directory), and
the journal files' mode. The tests that switch users need root: CI runs as
root and fails them otherwise (L{tests.helpers.require_root}). The whole
server under C{twistd --uid nobody} is in L{tests.system.test_security_process}.
"""

from __future__ import annotations

import os
import pwd
import shutil
import sqlite3
import stat
import tempfile

from twisted.internet import endpoints
from twisted.internet.protocol import Factory
from twisted.internet.testing import MemoryReactorClock
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from primecount import tap
from primecount.core.privileges import Owner, acting_as, give, switched_to
from primecount.journal.sqlite import schema
from primecount.server.listeners import Listener
from primecount.workers.shared import SCRATCH_PREFIX, Scratch
from tests.helpers import require_root

NOBODY = pwd.getpwnam("nobody")


def nobody() -> Owner:
    """
    The user C{twistd --uid nobody} switches to.
    """
    owner = switched_to(NOBODY.pw_uid, None)
    assert owner is not None
    return owner


def owned(path: str) -> tuple[int, int, int]:
    """
    (uid, gid, permission bits) of C{path}, not following a symlink.
    """
    info = os.lstat(path)
    return info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)


def scratchDirectory(test: SynchronousTestCase, owner: Owner | None = None) -> str:
    """
    A fresh directory in the temporary directory (which every user can
    reach, unlike a checkout under /root), given to C{owner}, removed after
    C{test}.
    """
    directory = tempfile.mkdtemp(prefix="pc-priv-")
    test.addCleanup(shutil.rmtree, directory, True)
    if owner is not None:
        os.chown(directory, owner.uid, owner.gid)
    return directory


class SwitchedToTests(SynchronousTestCase):
    """
    L{switched_to}: twistd's C{--uid}/C{--gid}, as twistd applies them.
    """

    def test_noSwitch(self) -> None:
        self.assertIsNone(switched_to(None, None))

    def test_userWithItsGroups(self) -> None:
        """
        C{--uid} alone: the user's primary group and supplementary groups
        (twistd calls C{initgroups}).
        """
        owner = nobody()
        self.assertEqual((owner.uid, owner.gid), (NOBODY.pw_uid, NOBODY.pw_gid))
        self.assertEqual(owner.groups, tuple(os.getgrouplist("nobody", NOBODY.pw_gid)))
        self.assertEqual(
            switched_to(NOBODY.pw_uid, 0),
            Owner(NOBODY.pw_uid, 0, tuple(os.getgrouplist("nobody", 0))),
        )

    def test_groupOnly(self) -> None:
        """
        C{--gid} alone: this user, that group, supplementary groups kept.
        """
        self.assertEqual(switched_to(None, 4321), Owner(os.geteuid(), 4321, None))


class ActingAsTests(SynchronousTestCase):
    """
    L{acting_as}: a block run with another user's effective ids.
    """

    def test_filesCreatedBelongToTheOwner(self) -> None:
        require_root("switch effective user ids")
        owner = nobody()
        directory = scratchDirectory(self, owner)
        before = (os.geteuid(), os.getegid(), sorted(os.getgroups()))
        with acting_as(owner):
            self.assertEqual(
                (os.geteuid(), os.getegid(), sorted(os.getgroups())),
                (owner.uid, owner.gid, sorted(owner.groups or ())),
            )
            path = os.path.join(directory, "made")
            open(path, "w").close()
            # And what the owner may not do, it cannot do.
            self.assertRaises(PermissionError, os.mkdir, "/pc-priv-not-nobodys")
        self.assertEqual(owned(path)[:2], (owner.uid, owner.gid))
        self.assertEqual((os.geteuid(), os.getegid(), sorted(os.getgroups())), before)

    def test_idsComeBackAfterAnError(self) -> None:
        require_root("switch effective user ids")
        before = (os.geteuid(), os.getegid(), sorted(os.getgroups()))
        with self.assertRaises(ZeroDivisionError), acting_as(nobody()):
            1 / 0  # noqa: B018
        self.assertEqual((os.geteuid(), os.getegid(), sorted(os.getgroups())), before)

    def test_noOwnerChangesNothing(self) -> None:
        before = (os.geteuid(), os.getegid(), sorted(os.getgroups()))
        with acting_as(None):
            self.assertEqual((os.geteuid(), os.getegid(), sorted(os.getgroups())), before)

    def test_giveHandsADirectoryOver(self) -> None:
        require_root("change owners")
        directory = scratchDirectory(self)
        open(os.path.join(directory, "a"), "w").close()
        os.symlink("/etc/passwd", os.path.join(directory, "link"))
        owner = nobody()
        give(directory, owner)
        for path in (directory, os.path.join(directory, "a"), os.path.join(directory, "link")):
            self.assertEqual(owned(path)[:2], (owner.uid, owner.gid), path)
        self.assertEqual(os.stat("/etc/passwd").st_uid, 0)  # a link's target is left alone
        give(directory, None)
        self.assertEqual(owned(directory)[:2], (owner.uid, owner.gid))


class JournalFileTests(SynchronousTestCase):
    """
    The SQLite journal's files are private: the database, its C{-wal} and
    C{-shm}, whatever the umask.
    """

    def setUp(self) -> None:
        self.directory = scratchDirectory(self)
        self.path = os.path.join(self.directory, "j.sqlite3")

    def write(self) -> None:
        """
        Open the journal as the server does and leave a record in its WAL
        (the connection stays open, so -wal and -shm stay).
        """
        conn = schema.connect(self.path)
        self.addCleanup(conn.close)
        conn.execute("PRAGMA wal_autocheckpoint=0")
        conn.execute(
            "INSERT INTO requests (time, host, port, protocol) VALUES (0, 'h', 1, 'count')"
        )

    def test_createdPrivate(self) -> None:
        """
        A new journal is 0600 even under umask 000 (SQLite alone makes it
        0644 less the umask: readable by every local user), and SQLite gives
        its -wal and -shm the same mode.
        """
        old = os.umask(0)
        self.addCleanup(os.umask, old)
        self.write()
        for suffix in ("", "-wal", "-shm"):
            self.assertEqual(owned(self.path + suffix)[2], 0o600, suffix)

    def test_existingFileKeepsItsMode(self) -> None:
        """
        A journal that exists keeps the mode its operator gave it.
        """
        open(self.path, "w").close()
        os.chmod(self.path, 0o640)
        self.write()
        self.assertEqual(owned(self.path)[2], 0o640)
        self.assertEqual(owned(self.path + "-wal")[2], 0o640)

    def test_walAndShmTakeTheJournalsOwner(self) -> None:
        """
        Root opening a journal that belongs to the service user (a root
        C{primecount journal --prune}, a start check) leaves -wal and -shm
        that user's, not root's: SQLite gives them the database's owner.
        """
        require_root("open another user's journal")
        owner = nobody()
        open(self.path, "w").close()
        os.chown(self.path, owner.uid, owner.gid)
        self.write()
        for suffix in ("-wal", "-shm"):
            self.assertEqual(owned(self.path + suffix)[:2], (owner.uid, owner.gid), suffix)

    def test_uncreatableIsAnOSError(self) -> None:
        self.assertRaises(OSError, schema.connect, os.path.join(self.directory, "no", "j"))


class StartCheckTests(SynchronousTestCase):
    """
    The start's journal check, under C{twistd --uid}: it runs as the user
    twistd switches to, so it leaves no root-owned file behind, and a
    journal that user could not write stops the start.
    """

    def parse(self, *args: str) -> tap.PrimecountOptions:
        """
        Parse C{args} as twistd does after C{--uid nobody}: twistd's own
        options are the parent's.
        """
        options = tap.PrimecountOptions()
        options.parent = usage.Options()
        options.parent.update(uid=NOBODY.pw_uid, gid=None)
        options.parseOptions(list(args))
        return options

    def test_journalBelongsToTheUser(self) -> None:
        """
        The journal file (and with C{--workers}, every worker's part) the
        check creates is the unprivileged user's, 0600, and nothing else is
        left beside it.
        """
        require_root("check a journal as another user")
        owner = nobody()
        directory = scratchDirectory(self, owner)
        path = os.path.join(directory, "j.sqlite3")
        self.parse("--journal", f"sqlite:{path}", "--workers", "2")
        self.assertEqual(
            sorted(os.listdir(directory)), ["j.sqlite3", "j.sqlite3.worker0", "j.sqlite3.worker1"]
        )
        for name in os.listdir(directory):
            self.assertEqual(
                owned(os.path.join(directory, name)), (owner.uid, owner.gid, 0o600), name
            )
        with sqlite3.connect(path) as conn:
            self.assertEqual(conn.execute("SELECT count(*) FROM requests").fetchone(), (0,))

    def test_journalTheUserCannotWriteStopsTheStart(self) -> None:
        """
        Root could create it, the server could not write it: the start
        stops with one line, and leaves no file.
        """
        require_root("check a journal as another user")
        directory = scratchDirectory(self)
        os.chmod(directory, 0o755)
        path = os.path.join(directory, "j.sqlite3")
        e = self.assertRaises(usage.UsageError, self.parse, "--journal", f"sqlite:{path}")
        self.assertEqual(
            str(e),
            f"cannot write journal {path}: permission denied: directory {directory} "
            "(owner root, mode 0755) is not writable by user nobody "
            "(SQLite creates j.sqlite3-wal and j.sqlite3-shm there)",
        )
        self.assertEqual(os.listdir(directory), [])


class ScratchTests(SynchronousTestCase):
    """
    The supervisor's scratch directory, made as the user its workers run
    as.
    """

    def test_madeAndCleanedUpAsTheOwner(self) -> None:
        """
        Made as C{nobody}, the directory and its lock are nobody's, 0700
        and 0600; the next supervisor, as nobody too, removes it once its
        owner is gone (killed, say).
        """
        require_root("make files as another user")
        owner = nobody()
        base = scratchDirectory(self, owner)
        with acting_as(owner):
            first = Scratch(base)
        self.assertEqual(owned(first.path), (owner.uid, owner.gid, 0o700))
        self.assertEqual(owned(os.path.join(first.path, "owner")), (owner.uid, owner.gid, 0o600))
        os.close(first._lock)  # as a killed supervisor's would be
        with acting_as(owner):
            second = Scratch(base)
        self.addCleanup(second.remove)
        self.assertEqual(
            [n for n in os.listdir(base) if n.startswith(SCRATCH_PREFIX)],
            [os.path.basename(second.path)],
        )


class UnixListenerTests(SynchronousTestCase):
    """
    A UNIX-socket listener binds after twistd's switch (C{startService}),
    as the user that serves on it and removes it at the stop; a TCP
    listener before it (C{privilegedStartService}: a port below 1024).
    """

    def test_unixAfterTheSwitchTcpBefore(self) -> None:
        reactor = MemoryReactorClock()
        unix = Listener(
            "count", "unix:/run/pc.sock", endpoints.UNIXServerEndpoint(reactor, "/run/pc.sock"),
            Factory(),
        )  # fmt: skip
        tcp = Listener("count", "tcp:80", endpoints.TCP4ServerEndpoint(reactor, 80), Factory())
        for listener in (unix, tcp):
            listener.privilegedStartService()
        self.assertEqual((len(reactor.unixServers), len(reactor.tcpServers)), (0, 1))
        for listener in (unix, tcp):
            listener.startService()
        self.assertEqual((len(reactor.unixServers), len(reactor.tcpServers)), (1, 1))
