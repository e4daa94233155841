# -*- test-case-name: tests.unit.test_sqlite_journal -*-
"""
The SQLite journal's schema, and the mapping between rows and L{Record}s
(the table C{requests} holds a record in the columns L{COLUMNS}).

Shared by the writer (L{primecount.journal.sqlite.writer}) and the readers
(L{primecount.journal.sqlite.reader}, L{primecount.journal.sqlite.stats}),
so they can never disagree on a column.
"""

from __future__ import annotations

import functools
import glob
import os
import re
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import chain, pairwise
from operator import itemgetter
from urllib.parse import quote

from primecount.journal.records import COLUMNS, PROTOCOL_COUNT, Record

CREATE = """
CREATE TABLE IF NOT EXISTS requests (
    id       INTEGER PRIMARY KEY,
    time     REAL    NOT NULL,   -- seconds since the epoch, UTC
    host     TEXT    NOT NULL,
    port     INTEGER NOT NULL,
    protocol TEXT    NOT NULL,   -- 'count' or 'range'
    message  TEXT,               -- BLOB: the bytes of a message not UTF-8
    count    INTEGER,
    prime    INTEGER,            -- 0/1, NULL when not a count verdict
    error    TEXT,
    a        INTEGER,
    b        INTEGER,
    sum_ok   INTEGER,            -- 0/1, NULL when unknown
    group_id INTEGER             -- the group commit that wrote it
);
-- The groups whose clients were told ERR journal unavailable although
-- they may have been committed (see the docs, "Commits in doubt"):
-- readers show their records with that error.
CREATE TABLE IF NOT EXISTS failed_groups (group_id INTEGER PRIMARY KEY, time REAL);
-- One row, rewritten by the probe that tests the journal takes writes.
CREATE TABLE IF NOT EXISTS probe (id INTEGER PRIMARY KEY CHECK (id = 1), time REAL);
-- No index on time: it would cost 40% of every insert. Records are stored
-- in commit order, so time is non-decreasing up to milliseconds of jitter
-- (but for steps of the wall clock back, which the writer notes in
-- clock_steps); readers find a time window by binary search over ids
-- (first_id_since).
DROP INDEX IF EXISTS requests_time;
"""

#: How far out of order a record's time may be relative to its id (commit
#: order) within one run of the clock: records are timed in the pool just
#: before their group commit, so milliseconds in practice.
TIME_SLACK = 60.0

#: A record timed more than this before the latest time of the records
#: committed before it in the file marks a step of the wall clock back (NTP,
#: an operator's C{date}): the writer notes its id in L{CLOCK_STEPS}, and
#: the readers search each run of ids between two steps apart. Well below
#: L{TIME_SLACK}, so that the writer's approximation of the latest time when
#: it reopens a file (L{latest_time}) still leaves the search its slack.
STEP_BACK = 10.0

#: The ids of the records that follow a step of the wall clock back
#: (L{STEP_BACK}), with their time and the latest time before them. Created
#: by the writer at the first step: a file without one has no step.
CLOCK_STEPS = """
CREATE TABLE IF NOT EXISTS clock_steps (id INTEGER PRIMARY KEY, time REAL, latest REAL)
"""

#: Records looked at by L{latest_time}.
LATEST_WINDOW = 1000


def latest_time(conn: sqlite3.Connection) -> float | None:
    """
    The latest time of the newest L{LATEST_WINDOW} records (C{None} in an
    empty file): where the writer starts looking for clock steps when it
    opens a file, without scanning it.
    """
    row = conn.execute(
        f"SELECT max(time) FROM (SELECT time FROM requests ORDER BY id DESC LIMIT {LATEST_WINDOW})"
    ).fetchone()
    return None if row is None or row[0] is None else float(row[0])


def clock_steps(times: Sequence[float], latest: float | None) -> tuple[list[int], float | None]:
    """
    Where the wall clock stepped back among records about to be committed in
    this order, after records whose latest time was C{latest}.

    @param times: the records' times, in commit order.
    @param latest: the latest time before them (C{None}: none).
    @return: the indexes (into C{times}) of the records that follow a step
        back of more than L{STEP_BACK} seconds, and the latest time after
        them (since the last step: a step starts the count afresh).
    """
    if not times:
        return [], latest
    low, high = min(times), max(times)
    if high - low <= STEP_BACK and (latest is None or low >= latest - STEP_BACK):
        # No record is that far before another: the usual group, in C.
        return [], high if latest is None else max(latest, high)
    found = []
    for index, when in enumerate(times):
        if latest is not None and when < latest - STEP_BACK:
            found.append(index)
            latest = when
        elif latest is None or when > latest:
            latest = when
    return found, latest


def _runs(conn: sqlite3.Connection) -> list[tuple[int, int]]:
    """
    The runs of ids between clock steps (L{CLOCK_STEPS}): C{[low, high)}
    each, in order, covering every record; none when the file is empty.
    """
    # Two subqueries: SQLite takes min() or max() from the b-tree's ends
    # only when it is the query's one aggregate; together they scan.
    low, high = conn.execute(
        "SELECT (SELECT min(id) FROM requests), (SELECT max(id) FROM requests)"
    ).fetchone()
    if low is None:
        return []
    high += 1
    steps: list[int] = []
    has_steps = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'clock_steps'"
    ).fetchone()
    if has_steps:
        steps = [
            row[0]
            for row in conn.execute(
                "SELECT id FROM clock_steps WHERE id > ? AND id < ? ORDER BY id", (low, high)
            )
        ]
    edges = [low, *steps, high]
    return list(pairwise(edges))


def _search(conn: sqlite3.Connection, bound: float, low: int, high: int) -> int:
    """
    The lowest id in C{[low, high)} whose record may have C{time >= bound}
    (C{high} when none), for ids whose times grow up to L{TIME_SLACK}: a
    binary search, each probe one rowid look-up.
    """
    # Invariant: records with id < low have time < bound; the answer <= high.
    while low < high:
        middle = (low + high) // 2
        row = conn.execute(
            "SELECT id, time FROM requests WHERE id >= ? AND id < ? ORDER BY id LIMIT 1",
            (middle, high),
        ).fetchone()
        if row is None or row[1] >= bound:
            high = middle
        else:
            low = row[0] + 1
    return low


def first_id_since(conn: sqlite3.Connection, when: float) -> int:
    """
    The lowest id whose record may have C{time >= when}: every record at or
    after C{when} has an id at least this (given L{TIME_SLACK} within each
    run of ids between two clock steps, L{CLOCK_STEPS}). A binary search
    over each run's ids, each probe one rowid look-up: no index on time
    needed.
    """
    runs = _runs(conn)
    if not runs:
        return 1
    found = [
        start for low, high in runs if (start := _search(conn, when - TIME_SLACK, low, high)) < high
    ]
    return min(found) if found else runs[-1][1]


def id_above_until(conn: sqlite3.Connection, when: float) -> int:
    """
    An id above that of every record with C{time < when} (given
    L{TIME_SLACK} within each run of ids between two clock steps): the
    highest of each run's bound.
    """
    runs = _runs(conn)
    if not runs:
        return 1
    return max(_search(conn, when + TIME_SLACK, low, high) for low, high in runs)


#: The version of the schema above, kept in C{PRAGMA user_version}:
#: 2 added C{group_id}, C{failed_groups} and C{probe}.
VERSION = 2

#: The error readers show for a record whose group is in C{failed_groups}:
#: what its client was told (the C{journal unavailable} outcome's text).
FAILED_ERROR = "journal unavailable"

SELECT = f"SELECT {', '.join(COLUMNS)} FROM requests"

#: L{SELECT} for a journal of L{VERSION} 2 or later: the error of a record
#: whose group is in C{failed_groups} is L{FAILED_ERROR}.
SELECT_MARKED = (
    "SELECT "
    + ", ".join(
        f"CASE WHEN group_id IN (SELECT group_id FROM failed_groups) THEN '{FAILED_ERROR}' "
        "ELSE error END"
        if column == "error"
        else column
        for column in COLUMNS
    )
    + " FROM requests"
)


def select_sql(conn: sqlite3.Connection) -> str:
    """
    The SELECT of records for the journal C{conn} has open: L{SELECT_MARKED},
    or L{SELECT} for a file written before version 2 (read-only readers
    cannot migrate it).
    """
    columns = {row[1] for row in conn.execute("PRAGMA table_info(requests)")}
    marked = (
        "group_id" in columns
        and conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'failed_groups'"
        ).fetchone()
    )
    return SELECT_MARKED if marked else SELECT


#: What follows C{PATH} in the name of worker C{N}'s part of the journal
#: C{sqlite:PATH} (C{PATH.worker0}, C{PATH.worker1}, ...).
PART_SUFFIX = ".worker"

_PART = re.compile(re.escape(PART_SUFFIX) + r"([0-9]+)")


def part_path(path: str, index: int) -> str:
    """
    The file worker C{index} of C{--workers N} writes for the journal
    C{sqlite:PATH}: C{PATH.worker<index>}, beside C{PATH}, so that each
    worker commits without waiting for another's write lock.
    """
    return f"{path}{PART_SUFFIX}{index}"


def part_paths(path: str) -> list[str]:
    """
    The worker parts of the journal at C{path} that exist now (whatever
    C{--workers} is today: a part left by more workers before still holds
    records), in worker order; not their C{-wal} and C{-shm} files.
    """
    found = []
    for candidate in glob.glob(glob.escape(path + PART_SUFFIX) + "*"):
        match = _PART.fullmatch(candidate, len(path))
        if match:
            found.append((int(match.group(1)), candidate))
    return [candidate for _, candidate in sorted(found)]


#: The columns a count-protocol record fills: the rest (a, b, sum_ok) are
#: range-protocol columns, NULL for it. Inserting only these costs about a
#: third less SQLite time per row than binding the three NULLs too.
COUNT_COLUMNS = COLUMNS[:8]
_COUNT_WIDTH = len(COUNT_COLUMNS)


#: The most rows one INSERT statement carries. A group of up to this many
#: records of one kind is one statement, hence one implicit transaction
#: with no BEGIN/COMMIT round trips; larger groups are split.
MAX_ROWS = 128

#: Enough prepared statements for every insert size of the three row
#: shapes, plus the reader's and the settle statement (sqlite3's default
#: keeps 128).
CACHED_STATEMENTS = 3 * MAX_ROWS + 32

#: The row of an answered count-protocol request (no error, no range
#: columns), the common case: the protocol is a literal and the error is
#: left NULL, so it binds six parameters, not eight. The parameter binding
#: holds the GIL, and sqlite3 binds a C{None} four times slower than an int
#: (it searches for an adapter first).
_PLAIN_ROW = "(?, ?, ?, 'count', ?, ?, ?)"
_PLAIN_COLUMNS = COLUMNS[:7]
_plain_params = itemgetter(0, 1, 2, 4, 5, 6)

# A bool binds as the integer 1 or 0 either way; with an adapter registered
# sqlite3 finds it at once instead of searching for one, which halves the
# cost of binding the prime column (on every connection of the process,
# with the same value stored).
sqlite3.register_adapter(bool, int)


@functools.cache
def _insert_sql(columns: tuple[str, ...], rows: int, row: str = "") -> str:
    """
    One INSERT of C{rows} rows of C{columns} and C{group_id}: one statement
    step for many rows costs ~40% less per row than executemany's step per
    row. Each row is C{row}, by default one parameter per column; the
    group id is one parameter for the whole statement, the first.
    """
    row = row or f"({', '.join('?' for _ in columns)})"
    # ?1 comes first, so every plain ? after it numbers from 2 on.
    row = f"(?1, {row[1:]}"
    return f"INSERT INTO requests (group_id, {', '.join(columns)}) VALUES {', '.join([row] * rows)}"


def _plain(records: Sequence[Record]) -> bool:
    """
    Whether every record is an answered count-protocol request (see
    L{_PLAIN_ROW}).
    """
    return all(
        r[7] is None and r[8] is None and r[9] is None and r[10] is None and r[3] == PROTOCOL_COUNT
        for r in records
    )


def _short(record: Record) -> bool:
    """
    Whether C{record} leaves every range-protocol column NULL.
    """
    return record.a is None and record.b is None and record.sum_ok is None


def inserts(
    records: Sequence[Record], group: int | None = None
) -> Iterator[tuple[str, list[object]]]:
    """
    The statements that insert C{records}, in order, each row with the
    group id C{group}, as (SQL, parameters):
    runs of count-protocol records bind only L{COUNT_COLUMNS}, and each
    statement carries at most L{MAX_ROWS} rows. When every record is an
    answered count-protocol request, each row binds only six parameters
    (L{_PLAIN_ROW}).
    """
    if _plain(records):
        for start in range(0, len(records), MAX_ROWS):
            part = records[start : start + MAX_ROWS]
            params: list[object] = [group]
            params.extend(chain.from_iterable(map(_plain_params, part)))
            yield _insert_sql(_PLAIN_COLUMNS, len(part), _PLAIN_ROW), params
        return
    start = 0
    while start < len(records):
        short = _short(records[start])
        end = start + 1
        while end < len(records) and end - start < MAX_ROWS and _short(records[end]) == short:
            end += 1
        part = records[start:end]
        values: list[object] = [group]
        if short:
            sql = _insert_sql(COUNT_COLUMNS, len(part))
            values.extend(chain.from_iterable(record[:_COUNT_WIDTH] for record in part))
        else:
            sql = _insert_sql(COLUMNS, len(part))
            values.extend(chain.from_iterable(part))
        yield sql, values
        start = end


#: Completes a pending range record: the latest row of that connection and
#: range without a sum verdict or an error (scanned from the newest id: it
#: was written moments ago). Parameters: L{settle_row}.
SETTLE = """
UPDATE requests SET count = ?, error = ?, sum_ok = ?
WHERE id = (
    SELECT id FROM requests
    WHERE protocol = 'range' AND host = ? AND port = ? AND a = ? AND b = ?
      AND sum_ok IS NULL AND error IS NULL
    ORDER BY id DESC LIMIT 1
)
"""


def settle_row(record: Record) -> tuple[object, ...]:
    """
    The parameters of L{SETTLE} for a completed range record.
    """
    return (
        record.count,
        record.error,
        record.sum_ok,
        record.peer,
        record.port,
        record.a,
        record.b,
    )


def from_row(row: Iterable[object]) -> Record:
    """
    The record of one row of L{SELECT}.
    """
    (time, peer, port, protocol, message, count, prime, error, a, b, sum_ok) = row
    return Record(
        time=float(time),  # type: ignore[arg-type]
        peer=str(peer),
        port=int(port),  # type: ignore[call-overload]
        protocol=str(protocol),
        message=message,  # type: ignore[arg-type]
        count=count,  # type: ignore[arg-type]
        prime=None if prime is None else bool(prime),
        error=error,  # type: ignore[arg-type]
        a=a,  # type: ignore[arg-type]
        b=b,  # type: ignore[arg-type]
        sum_ok=None if sum_ok is None else bool(sum_ok),
    )


#: Seconds a write waits for another writer before failing.
BUSY_TIMEOUT = 5.0


def connect(
    path: str,
    *,
    readonly: bool = False,
    timeout: float = BUSY_TIMEOUT,
    create: bool = True,
    check: Callable[[], object] | None = None,
) -> sqlite3.Connection:
    """
    Open the journal database at C{path}.

    C{timeout} is SQLite's busy timeout: how long a write waits for another
    writer (another worker's group commit, a prune) before failing.

    A writable connection creates the file when it is missing (unless
    C{create} is false), readable and writable by its owner only
    (L{create_private}), then the schema, and switches the file to WAL, so
    readers never block the writer. SQLite itself never creates the file:
    when it is gone by the time SQLite opens it, the open fails. A
    read-only connection fails with C{sqlite3.OperationalError} when the
    file does not exist.

    C{check}, when given, runs once SQLite has opened the file and before
    the first statement, which is when SQLite opens the C{-wal} and C{-shm}
    named after C{path}: an exception from it closes the connection, having
    touched nothing but the file, and is raised. The journal checks there
    that C{path} still names the file it holds (a file renamed meanwhile
    still owns the C{-wal} named after C{path}; see
    L{primecount.journal.sqlite}).

    @raise OSError: when the missing file cannot be created.
    """
    if readonly:
        conn = sqlite3.connect(
            f"file:{path}?mode=ro", uri=True, timeout=timeout, check_same_thread=False
        )
        return conn
    if create:
        refuse_stray_wal(path)
        create_private(path)
    conn = sqlite3.connect(
        _uri(path, "rw"),
        uri=True,
        timeout=timeout,
        check_same_thread=False,
        isolation_level=None,
        cached_statements=CACHED_STATEMENTS,
    )
    try:
        if check is not None:
            check()
        conn.execute("PRAGMA journal_mode=WAL")
        migrate(conn)
    except BaseException:
        conn.close()
        raise
    return conn


def _uri(path: str, mode: str) -> str:
    """
    The SQLite URI opening the file at C{path} in C{mode} (C{rw}: not
    created when missing). The path is %-escaped, so that a C{?}, C{#} or
    C{%} in a name is not read as URI syntax (nor a byte that is not UTF-8
    lost), and an absolute path has an empty authority (C{file:///…}), so
    that a path starting with C{//} is not read as a host.
    """
    prefix = "file://" if path.startswith("/") else "file:"
    return f"{prefix}{quote(os.fsencode(path))}?mode={mode}"


#: The mode of a journal file primecount creates: its owner's alone. The
#: journal holds every client's address and message.
FILE_MODE = 0o600


def create_private(path: str) -> None:
    """
    Create the journal file at C{path}, empty and L{FILE_MODE}, unless
    something is there already. SQLite would create it 0644 (less the
    umask): readable by every local user. It gives the C{-wal} and C{-shm}
    files it creates later the mode and owner of the database file, so
    they are private too (checked by
    C{tests.unit.test_privileges.JournalFileTests}).

    @raise OSError: when it cannot be created (no such directory, no
        permission).
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
    except FileExistsError:
        return
    os.close(fd)


#: The length of a WAL file's header: a C{-wal} longer than this holds
#: frames (committed pages, possibly not yet in any database file).
WAL_HEADER = 32


class StrayWAL(sqlite3.DatabaseError):
    """
    The journal file is missing but the C{-wal} named after it holds
    frames: they belong to the file that was there before.
    """


def refuse_stray_wal(path: str) -> None:
    """
    Refuse to start a journal at C{path} over another file's WAL.

    SQLite names the C{-wal} after the path, not the file. A journal
    renamed or deleted without its C{-wal} while its last commits were
    only there (after a C{kill -9}, a power loss, or a rename that came
    while a reader held the checkpoint back) leaves them in C{PATH-wal}; a
    new, empty file at C{PATH} would make SQLite discard them. This stops
    instead, and says how to put them back.

    Only a missing file is checked: while the journal holds its file, it
    never opens a connection that may create one (see
    L{primecount.journal.sqlite.writer}), so a C{-wal} without a file is
    never its own.

    @raise StrayWAL: when C{PATH} is missing and C{PATH-wal} holds frames.
    """
    if os.path.lexists(path):
        # A file there owns its -wal (a new one is empty until its first
        # checkpoint, its commits all in the -wal: that is no stray).
        return
    wal = path + "-wal"
    try:
        size = os.stat(wal).st_size
    except FileNotFoundError:
        return
    if size > WAL_HEADER:
        raise StrayWAL(
            f"{path} is missing but {wal} ({size} bytes) is there: it holds the last commits "
            f"of the file that was at {path} (renamed or deleted without it); put it back "
            f"beside that file (mv {wal} OLD-wal; rm -f {path}-shm) or remove it, then start "
            "again: a new journal here would discard it"
        )


class SchemaError(sqlite3.DatabaseError):
    """
    The file's schema is newer than this primecount knows.
    """


def migrate(conn: sqlite3.Connection) -> None:
    """
    Create the schema in a new file, or bring an older file's up to
    L{VERSION} (adding C{group_id}: no rewrite of the rows), in one
    transaction.

    @raise SchemaError: for a file of a newer version.
    """
    (version,) = conn.execute("PRAGMA user_version").fetchone()
    if version == VERSION:
        return
    if version > VERSION:
        raise SchemaError(
            f"the journal's schema is version {version}; this primecount knows "
            f"up to {VERSION}: upgrade primecount"
        )
    columns = {row[1] for row in conn.execute("PRAGMA table_info(requests)")}
    missing = columns and "group_id" not in columns
    add = "ALTER TABLE requests ADD COLUMN group_id INTEGER;" if missing else ""
    try:
        conn.executescript(
            f"BEGIN IMMEDIATE; {add} {CREATE}; PRAGMA user_version = {VERSION}; COMMIT;"
        )
    except sqlite3.OperationalError as e:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        if "duplicate column" not in str(e):
            raise
        # Another connection migrated it meanwhile.
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
