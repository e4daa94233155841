# -*- test-case-name: tests.unit.test_postgresql_journal,tests.system.test_postgresql_journal_process -*-
"""
The PostgreSQL journal's schema and connections, shared by the writer
(L{primecount.journal.postgresql.writer}) and the readers
(L{primecount.journal.postgresql.reader},
L{primecount.journal.postgresql.stats}): the table, the COPY row of a
record and its message read back, connecting with timeouts, creating the
schema.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict

from primecount.journal.interface import JournalURLError, mask_password
from primecount.journal.records import COLUMNS, Record

#: Connection settings used unless the URL gives its own: a connection
#: attempt gives up after 5 s; data unacknowledged by the server for 10 s,
#: or an idle connection whose peer stays silent for 5 + 3 × 2 s, breaks the
#: connection (so a partition fails commits within seconds).
CONNECTION_DEFAULTS = {
    "connect_timeout": "5",
    "tcp_user_timeout": "10000",
    "keepalives": "1",
    "keepalives_idle": "5",
    "keepalives_interval": "2",
    "keepalives_count": "3",
    "application_name": "primecount",
}

#: The version of the schema below, kept in C{primecount_schema}: 2 added
#: C{group_id}, C{primecount_failed_groups} and C{primecount_probe}
#: (L{MIGRATE}).
SCHEMA_VERSION = 2

#: Serialises schema creation between hosts starting at once.
_SCHEMA_LOCK = 0x7072696D65  # "prime"

#: The journal's table.
TABLE = "primecount_requests"

#: The channel the journal NOTIFYs (after commits, rate-limited) and
#: C{primecount journal --follow} LISTENs on.
CHANNEL = "primecount_journal"

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS primecount_schema (version integer NOT NULL);
CREATE TABLE IF NOT EXISTS {TABLE} (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- the inserting transaction: readers follow the journal by it, as ids
    -- are assigned at insert, not in commit order
    xact          bigint NOT NULL DEFAULT (pg_current_xact_id()::text::bigint),
    time          timestamptz NOT NULL,
    host          text NOT NULL,
    port          integer NOT NULL,
    protocol      text NOT NULL,      -- 'count' or 'range'
    message       text,               -- a message that is UTF-8 without NUL
    message_bytes bytea,              -- any other message, as it arrived
    count         bigint,
    prime         boolean,
    error         text,
    a             bigint,
    b             bigint,
    sum_ok        boolean,
    group_id      bigint              -- the group commit that wrote it
);
CREATE INDEX IF NOT EXISTS {TABLE}_time ON {TABLE} USING brin (time);
CREATE INDEX IF NOT EXISTS {TABLE}_xact ON {TABLE} USING brin (xact);
-- the range records waiting for their settle: few at any time
CREATE INDEX IF NOT EXISTS {TABLE}_pending ON {TABLE} (host, port, a, b)
    WHERE protocol = 'range' AND sum_ok IS NULL AND error IS NULL;
INSERT INTO primecount_schema (version)
    SELECT {SCHEMA_VERSION} WHERE NOT EXISTS (SELECT FROM primecount_schema);
"""

#: What version 2 added; run on every journal older than that, and on a new
#: one after L{SCHEMA}.
MIGRATE = f"""
ALTER TABLE {TABLE} ADD COLUMN IF NOT EXISTS group_id bigint;
-- The groups whose clients were told ERR journal unavailable although they
-- may have been committed ("Commits in doubt"): readers show their records
-- with that error.
CREATE TABLE IF NOT EXISTS primecount_failed_groups (
    group_id bigint PRIMARY KEY,
    marked   timestamptz NOT NULL DEFAULT now()
);
-- One row, rewritten by the probe that tests the journal takes writes.
CREATE TABLE IF NOT EXISTS primecount_probe (
    id   integer PRIMARY KEY CHECK (id = 1),
    time timestamptz NOT NULL
);
UPDATE primecount_schema SET version = {SCHEMA_VERSION} WHERE version < {SCHEMA_VERSION};
"""

#: The table of groups in doubt.
FAILED_GROUPS = "primecount_failed_groups"

#: The error readers show for a record of a group in L{FAILED_GROUPS}.
FAILED_ERROR = "journal unavailable"

#: The columns a record fills, in COPY order, and their types: the SQLite
#: journal's columns, the message split in two (text and bytes). C{host}
#: holds L{Record.peer}: the column keeps its old name, since renaming it
#: in existing journals needs a migration.
_MESSAGE = COLUMNS.index("message") + 1
COPY_COLUMNS = (*COLUMNS[:_MESSAGE], "message_bytes", *COLUMNS[_MESSAGE:], "group_id")
COPY_TYPES = (
    "timestamptz",
    "text",
    "int4",
    "text",
    "text",
    "bytea",
    "int8",
    "bool",
    "text",
    "int8",
    "int8",
    "bool",
    "int8",
)
COPY = f"COPY {TABLE} ({', '.join(COPY_COLUMNS)}) FROM STDIN (FORMAT BINARY)"

#: Completes a pending range record, as the SQLite journal's settle does.
SETTLE = f"""
UPDATE {TABLE} SET count = %s, error = %s, sum_ok = %s
WHERE id = (
    SELECT id FROM {TABLE}
    WHERE protocol = 'range' AND host = %s AND port = %s AND a = %s AND b = %s
      AND sum_ok IS NULL AND error IS NULL
    ORDER BY id DESC LIMIT 1
)
"""


def to_row(record: Record, group: int | None = None) -> tuple[object, ...]:
    """
    The COPY row of a record, written by the group commit C{group}: a message that PostgreSQL text can hold (no
    NUL) goes to C{message}; bytes (not UTF-8) and text with NUL go to
    C{message_bytes}, as the bytes that arrived (readers give text back when
    they are UTF-8: see L{message_of}).
    """
    message = record.message
    raw = None
    if isinstance(message, bytes):
        message, raw = None, message
    elif message is not None and "\x00" in message:
        raw = message.encode("utf-8", "surrogatepass")
        message = None
    return (
        datetime.fromtimestamp(record.time, UTC),
        record.peer,
        record.port,
        record.protocol,
        message,
        raw,
        record.count,
        record.prime,
        record.error,
        record.a,
        record.b,
        record.sum_ok,
        group,
    )


def message_of(text: str | None, raw: bytes | None) -> str | bytes | None:
    """
    A record's message from its two columns: the server keeps a message as
    bytes only when it is not UTF-8, so bytes that decode were text (with a
    NUL).
    """
    if raw is None:
        return text
    try:
        return bytes(raw).decode("utf-8")
    except UnicodeDecodeError:
        return bytes(raw)


def connection_params(url: str) -> dict[str, str]:
    """
    The libpq parameters of C{url}, with L{CONNECTION_DEFAULTS} for those it
    does not give.

    @raise JournalURLError: when C{url} is not a valid connection URL.
    """
    try:
        given = conninfo_to_dict(url)
    except psycopg.Error as e:
        raise JournalURLError(f"bad journal URL {mask_password(url)}: {e}") from None
    return {**CONNECTION_DEFAULTS, **{k: str(v) for k, v in given.items() if v is not None}}


def connect(url: str, *, autocommit: bool = True) -> psycopg.Connection[Any]:
    """
    A connection to the journal's database, with L{connection_params}.

    @raise psycopg.Error: when it cannot be made.
    """
    conn = psycopg.connect(autocommit=autocommit, **connection_params(url))  # type: ignore[arg-type]
    return conn


def ensure_schema(conn: psycopg.Connection[Any]) -> None:
    """
    Create the journal's tables and indexes when missing (once, under an
    advisory lock, whoever starts first), and check the schema's version.

    @raise JournalURLError: for a journal written by a newer primecount.
    """
    found = conn.execute(
        "SELECT to_regclass(%s) IS NOT NULL AND to_regclass('primecount_schema') IS NOT NULL",
        (TABLE,),
    ).fetchone()
    version = None
    if found and found[0]:
        row = conn.execute("SELECT max(version) FROM primecount_schema").fetchone()
        version = row[0] if row else None
    if version is None or version < SCHEMA_VERSION:
        with conn.transaction():
            # Durable whatever the session's synchronous_commit says.
            conn.execute("SET LOCAL synchronous_commit = on")
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
            conn.execute(SCHEMA.encode())
            conn.execute(MIGRATE.encode())
        row = conn.execute("SELECT max(version) FROM primecount_schema").fetchone()
        version = row[0] if row else None
    if version is not None and version > SCHEMA_VERSION:
        raise JournalURLError(
            f"the journal's schema is version {version}; this primecount knows "
            f"up to {SCHEMA_VERSION}: upgrade primecount"
        )


def why(error: BaseException) -> str:
    """
    One line saying why a database call failed.
    """
    text = " ".join(str(error).split())
    return text or type(error).__name__
