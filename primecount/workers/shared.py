"""
What the supervisor and its workers share on disk: the connection counts
(a shared memory file) and the supervisor's scratch directory that holds
it. Both are its owner's alone (0700, 0600). Under twistd's C{--uid} the
supervisor makes them as that user (see L{primecount.core.privileges}), so
that its workers, started after the switch, can open them.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import shutil
import stat
import struct
import tempfile
import zlib


class SharedCounts:
    """
    Connection counts in a shared memory file, so that several worker
    processes enforce one C{--max-connections} and C{--max-per-peer}.

    Each worker owns a section (its total and a table of per-address
    counters indexed by a CRC of the address); limits are checked against
    the sums over all sections, under an C{fcntl} lock (two system calls per
    connection opened or closed). When a worker dies, the supervisor zeroes
    its section, so its connections stop counting. Two addresses that share
    a table slot share its count: the per-address limit errs on the side of
    refusing.
    """

    SLOTS = 1 << 14
    _TOTAL = struct.Struct("=q")
    _SLOT = struct.Struct("=i")
    SECTION = _TOTAL.size + SLOTS * _SLOT.size

    def __init__(self, path: str, workers: int, index: int = 0) -> None:
        """
        @param path: the file; created (zeroed) when missing.
        @param workers: how many sections (workers) it has.
        @param index: the section this process counts its connections in.
        """
        self.path = path
        self.workers = workers
        self.index = index
        size = workers * self.SECTION
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        if os.fstat(self._fd).st_size < size:
            os.ftruncate(self._fd, size)
        self._map = mmap.mmap(self._fd, size)

    def _sum(self, offset: int, kind: struct.Struct) -> int:
        return sum(
            kind.unpack_from(self._map, w * self.SECTION + offset)[0] for w in range(self.workers)
        )

    def _slot(self, peer: str) -> int:
        return self._TOTAL.size + (zlib.crc32(peer.encode()) % self.SLOTS) * self._SLOT.size

    def acquire(self, peer: str, total: int, perPeer: int | None) -> bool:
        """
        Count one more connection from C{peer} in this process's section,
        unless the sums over all sections forbid it.
        """
        slot = self._slot(peer)
        mine = self.index * self.SECTION
        fcntl.lockf(self._fd, fcntl.LOCK_EX)
        try:
            if self._sum(0, self._TOTAL) >= total:
                return False
            if perPeer is not None and self._sum(slot, self._SLOT) >= perPeer:
                return False
            self._add(mine, self._TOTAL, 1)
            self._add(mine + slot, self._SLOT, 1)
            return True
        finally:
            fcntl.lockf(self._fd, fcntl.LOCK_UN)

    def release(self, peer: str) -> None:
        """
        Count one connection from C{peer} less.
        """
        mine = self.index * self.SECTION
        fcntl.lockf(self._fd, fcntl.LOCK_EX)
        try:
            self._add(mine, self._TOTAL, -1)
            self._add(mine + self._slot(peer), self._SLOT, -1)
        finally:
            fcntl.lockf(self._fd, fcntl.LOCK_UN)

    def _add(self, offset: int, kind: struct.Struct, n: int) -> None:
        (value,) = kind.unpack_from(self._map, offset)
        kind.pack_into(self._map, offset, max(0, value + n))

    def reset(self, index: int) -> None:
        """
        Forget every connection counted in section C{index} (its worker died).
        """
        start = index * self.SECTION
        fcntl.lockf(self._fd, fcntl.LOCK_EX)
        try:
            self._map[start : start + self.SECTION] = bytes(self.SECTION)
        finally:
            fcntl.lockf(self._fd, fcntl.LOCK_UN)

    @property
    def total(self) -> int:
        """
        Open connections across all processes.
        """
        return self._sum(0, self._TOTAL)

    def close(self) -> None:
        """
        Unmap and close the file (it stays on disk).
        """
        self._map.close()
        os.close(self._fd)


#: The scratch directories of supervisors (shared counts, metrics files)
#: are C{primecount-*} in the temporary directory.
SCRATCH_PREFIX = "primecount-"
#: In a scratch directory: the file its supervisor holds locked (C{flock})
#: for as long as it lives.
OWNER = "owner"


class Scratch:
    """
    A supervisor's scratch directory: locked while the supervisor lives,
    so that the next supervisor to start removes it if this one was killed
    outright (SIGKILL gives it no chance to clean up).

    @ivar path: the directory.
    """

    def __init__(self, base: str | None = None) -> None:
        """
        Remove the scratch directories of supervisors that are gone, then
        make one for this process in C{base} (default: the temporary
        directory).
        """
        base = base if base is not None else tempfile.gettempdir()
        remove_stale_scratch(base)
        # Made and locked under a name the removal skips, then renamed.
        building = tempfile.mkdtemp(prefix="." + SCRATCH_PREFIX, dir=base)
        self._lock = os.open(
            os.path.join(building, OWNER), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600
        )
        fcntl.flock(self._lock, fcntl.LOCK_EX)
        self.path = os.path.join(base, os.path.basename(building)[1:])
        os.rename(building, self.path)

    def remove(self) -> None:
        """
        Remove the directory (at a normal stop).
        """
        shutil.rmtree(self.path, ignore_errors=True)
        os.close(self._lock)


def remove_stale_scratch(base: str) -> list[str]:
    """
    Remove the scratch directories in C{base} whose supervisor is gone
    (their L{OWNER} file is not locked) and that belong to this process's
    effective user (the user the supervisor makes them as).

    @return: the directories removed.
    """
    removed: list[str] = []
    try:
        names = os.listdir(base)
    except OSError:
        return removed
    for name in names:
        if not name.startswith(SCRATCH_PREFIX):
            continue
        path = os.path.join(base, name)
        try:
            info = os.lstat(path)
            if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid():
                continue
            fd = os.open(os.path.join(path, OWNER), os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except OSError:
            continue  # not ours, or not one we can tell is stale
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            continue  # its supervisor is alive
        finally:
            os.close(fd)
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed
