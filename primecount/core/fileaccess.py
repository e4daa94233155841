# -*- test-case-name: tests.unit.test_fileaccess,tests.system.test_messages_process -*-
"""
Why an SQLite file cannot be opened, in words a user can act on.

SQLite says C{unable to open database file} or C{attempt to write a readonly
database} whether the directory is missing, read-only, or owned by another
user, and whether the file itself is the problem. L{access_problem} looks at
the file and its directory as this process sees them and names the cause:
C{directory /srv/pc does not exist}, C{/mnt/ro is on a read-only file
system}, C{permission denied: directory /srv/pc (owner root, mode 0555) is
not writable by user nobody}. A journal in WAL mode needs its directory to
be writable even to be read (SQLite creates the C{-shm} file beside it),
which is the surprise this module exists to explain.

It only explains: nothing here decides whether to open a file.
"""

from __future__ import annotations

import os
import pwd
import stat

#: SQLite's primary result codes that mean the file could not be opened or
#: written (C{SQLITE_READONLY}, C{SQLITE_CANTOPEN}); extended codes carry
#: them in their low byte.
_ACCESS_CODES = (8, 14)

#: SQLite's messages for those codes, for errors that carry no code.
_ACCESS_MESSAGES = ("unable to open database file", "readonly database")


def is_access_error(error: BaseException) -> bool:
    """
    Whether C{error} (an C{sqlite3.Error}) says the file could not be opened
    or written, rather than, say, that it is not a database or is locked.
    """
    code = getattr(error, "sqlite_errorcode", None)
    if isinstance(code, int):
        return code & 0xFF in _ACCESS_CODES
    return any(text in str(error) for text in _ACCESS_MESSAGES)


def _user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def _allowed(path: str, mode: int) -> bool:
    effective = os.access in os.supports_effective_ids
    return os.access(path, mode, effective_ids=effective)


def _read_only_fs(path: str) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def _denied(what: str, path: str, doing: str) -> str:
    """
    C{permission denied: directory /srv/pc (owner root, mode 0555) is not
    writable by user nobody}, or the read-only file system it is on.
    """
    if doing == "writable" and _read_only_fs(path):
        return f"{path} is on a read-only file system"
    try:
        info = os.stat(path)
        owner = f" (owner {_user(info.st_uid)}, mode {stat.S_IMODE(info.st_mode):04o})"
    except OSError:
        owner = ""
    return f"permission denied: {what}{path}{owner} is not {doing} by user {_user(os.geteuid())}"


def access_problem(path: str, *, write: bool) -> str | None:
    """
    What keeps this process from opening the SQLite database at C{path}
    (to write when C{write}, else to read), as one phrase; C{None} when
    neither the file nor its directory is in the way.

    Writing needs the directory to exist and take new files (the database
    itself when missing, its C{-wal} and C{-shm} files) and the file, when
    it exists, to be readable and writable. Reading needs the file to be
    readable and, for a journal in WAL mode, its C{-shm} file: the
    directory must be writable unless the C{-wal} and C{-shm} files are
    already there (a server has it open).
    """
    path = os.path.abspath(path)
    directory = os.path.dirname(path)
    if not os.path.isdir(directory):
        if os.path.exists(directory):
            return f"{directory} is not a directory"
        return f"directory {directory} does not exist"
    if not _allowed(directory, os.X_OK):
        return _denied("directory ", directory, "searchable")
    if os.path.isdir(path):
        return f"{path} is a directory, not an SQLite file"
    exists = os.path.exists(path)
    if not exists and not write:
        return f"{path} does not exist"
    if exists and not _allowed(path, os.R_OK):
        return _denied("", path, "readable")
    if exists and write and not _allowed(path, os.W_OK):
        return _denied("", path, "writable")
    if _allowed(directory, os.W_OK):
        return None
    name = os.path.basename(path)
    if write:
        return _denied("directory ", directory, "writable") + (
            f" (SQLite creates {name}-wal and {name}-shm there)"
        )
    beside = [path + "-wal", path + "-shm"]
    if all(os.path.exists(p) for p in beside):
        unreadable = [p for p in beside if not _allowed(p, os.R_OK)]
        return _denied("", unreadable[0], "readable") if unreadable else None
    return _denied("directory ", directory, "writable") + (
        f", and SQLite must create {name}-shm there to read a journal in WAL mode "
        "(read it as the user who owns it, or copy it to a writable directory)"
    )


def explain(path: str, error: BaseException, *, write: bool) -> str:
    """
    The cause of C{error}, an C{sqlite3.Error} or C{OSError} from creating,
    opening or writing the database at C{path}: L{access_problem}'s words
    when the error is about access and they find the cause, else the
    error's own message.
    """
    if isinstance(error, OSError) or is_access_error(error):
        found = access_problem(path, write=write)
        if found is not None:
            return found
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return str(error)
