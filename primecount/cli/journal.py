# -*- test-case-name: tests.test_journalcli -*-
"""
C{primecount journal}: read the request journal back, follow it, prune it.

The reader opens the SQLite journal read-only and never takes a lock the
server's writer would wait for (the journal is in WAL mode), so it is safe to
run against a live server. Pruning writes, in short batches, so the server's
group commits slip in between them.

Output formats (one record is always exactly one line):

  - C{seed}: the original server's log line,
    C{2026-02-16 10:37:12 | 127.0.0.1 | abc2a | 2 | sí}; an error as
    C{2026-02-16 10:37:12 | 127.0.0.1 |  | ERR empty message}; a range
    request as C{2026-02-16 10:37:12 | 127.0.0.1 | range [10, 20] | 4 | sum ok}.
  - C{jsonl}: one JSON object per record.
  - C{csv}: a header row, then one row per record.

In C{seed} and C{csv}, control characters in messages and errors are
escaped with L{escape}; JSON escapes them itself (and this module also
escapes the few that JSON leaves raw but some readers split lines on).

A message that was not valid UTF-8 is kept in the journal as the bytes that
arrived (L{message_text}): C{seed} and C{csv} show each byte that is not
part of UTF-8 text as C{\\udcXX} (XX its value in hex: C{ab\\udcff} for
C{b"ab\\xff"}), which no client's text can produce (the server stores as
text only what decoded as UTF-8, and a backslash sent as text is shown
C{\\\\}); C{jsonl} gives C{"message": null} and the bytes in hex as
C{"message_hex"}. Older journals kept such messages as text with
C{\\xNN} escapes; they read as the text they hold.
"""

from __future__ import annotations

import argparse
import csv
import functools
import ipaddress
import json
import math
import os
import re
import sqlite3
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TextIO

from primecount import journal
from primecount.core.count import NO, YES
from primecount.journal import schema
from primecount.journal.records import RANGE, Record

#: The journal read when C{--journal} is not given.
DEFAULT_JOURNAL = "sqlite:primecount.sqlite3"

#: The output formats, the first being the default.
FORMATS = ("seed", "jsonl", "csv")

#: How many records C{--follow} shows before waiting for new ones, unless
#: C{--limit} says otherwise (as C{tail -f} does).
FOLLOW_BACKLOG = 10

#: Seconds between two polls of C{--follow}.
POLL_INTERVAL = 0.2

#: Records deleted per transaction when pruning; small enough that the
#: server's writer never waits long for its next group commit.
PRUNE_BATCH = 5000

#: Seconds a pruning transaction waits for the server's writer to finish.
PRUNE_BUSY_TIMEOUT = 30.0

#: The columns of C{--format csv} and the keys of C{--format jsonl}.
CSV_COLUMNS = tuple("peer" if column == "host" else column for column in schema.COLUMNS)

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_RELATIVE = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
_SHORT_ESCAPES = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}

#: Replaced by tests, to step through C{--follow} without waiting.
_sleep: Callable[[float], None] = time.sleep


class JournalError(Exception):
    """
    A problem the user can fix, reported as one line on stderr.
    """


#: What L{escape} rewrites: the backslash; C0 controls, DEL and C1 controls
#: (Unicode category Cc); U+2028 and U+2029 (Zl, Zp); lone surrogates (Cs),
#: which could not even be written to a UTF-8 stdout.
_ESCAPED = re.compile(r"[\\\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")

#: The same without the backslash, for JSON, whose backslashes are escapes.
_JSON_ESCAPED = re.compile(r"[\x7f-\x9f\u2028\u2029\ud800-\udfff]")


def _escape_char(match: re.Match[str]) -> str:
    char = match.group()
    short = _SHORT_ESCAPES.get(char)
    if short is not None:
        return short
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape(text: str) -> str:
    """
    Make C{text} safe to print on one line, reversibly.

    A backslash becomes C{\\\\}; newline, carriage return and tab become
    C{\\n}, C{\\r} and C{\\t}; every other control character (C0, DEL, C1)
    becomes C{\\xNN}; the line and paragraph separators U+2028/U+2029 and
    lone surrogates become C{\\uNNNN}. Everything else, including non-ASCII
    letters, is kept. Because the backslash itself is escaped, L{unescape}
    recovers the original exactly.
    """
    return _ESCAPED.sub(_escape_char, text)


_UNESCAPE = re.compile(r"\\(?:x([0-9a-f]{2})|u([0-9a-f]{4})|(.))", re.DOTALL)
_SHORT_UNESCAPES = {"\\": "\\", "n": "\n", "r": "\r", "t": "\t"}


def unescape(text: str) -> str:
    """
    The inverse of L{escape}.

    @raise ValueError: when C{text} holds an escape L{escape} never writes.
    """

    def replace(match: re.Match[str]) -> str:
        hex2, hex4, other = match.groups()
        if hex2 or hex4:
            return chr(int(hex2 or hex4, 16))
        if other in _SHORT_UNESCAPES:
            return _SHORT_UNESCAPES[other]
        raise ValueError(f"unknown escape \\{other} in {text!r}")

    return _UNESCAPE.sub(replace, text)


def _split_time(when: float) -> tuple[int, int]:
    # Whole seconds and microseconds, rounded to the microsecond first, as
    # datetime.fromtimestamp does: 12.3449999 is 12.345000, not 12.344999.
    second = math.floor(when)
    micro = round((when - second) * 1_000_000)
    if micro == 1_000_000:
        return second + 1, 0
    return second, micro


@functools.lru_cache(maxsize=256)
def _utc_second(second: int) -> datetime:
    # Records come in bursts within one second: format each second once.
    return datetime.fromtimestamp(second, UTC)


def format_seed_time(when: float) -> str:
    """
    C{2026-02-16 10:37:12}: UTC, to the second (truncated), as the seed logged.
    """
    return f"{_utc_second(_split_time(when)[0]):%Y-%m-%d %H:%M:%S}"


def format_iso_time(when: float) -> str:
    """
    C{2026-02-16T10:37:12.345Z}: ISO 8601, UTC, to the millisecond (truncated).
    """
    second, micro = _split_time(when)
    return f"{_utc_second(second):%Y-%m-%dT%H:%M:%S}.{micro // 1000:03d}Z"


def _verdict(prime: bool | None) -> str:
    return "?" if prime is None else (YES if prime else NO)


def message_text(message: str | bytes | None) -> str:
    """
    A message as text for L{escape}: bytes that are not UTF-8 (a message
    kept as bytes) become lone surrogates U+DC80..U+DCFF, which L{escape}
    shows as C{\\udcXX}; C{unescape(...).encode("utf-8",
    "surrogateescape")} gives the bytes back.
    """
    if message is None:
        return ""
    if isinstance(message, bytes):
        return message.decode("utf-8", "surrogateescape")
    return message


def _error(error: str) -> str:
    return "ERR " + escape(error)


def format_seed(record: Record) -> str:
    """
    One record as the original server's log line (without line end).

    Fields are separated by C{" | "}: time, peer IP, what was asked, then
    the answer. A count request asked its message (escaped) and is answered
    C{count | sí} or C{count | no}; a range request asked C{range [a, b]} and
    is answered C{N | sum ok} (or C{sum mismatch}, or C{sum unknown}). A
    failed request of either kind is answered C{ERR reason}. A missing value
    is shown as C{?}.
    """
    head = f"{format_seed_time(record.time)} | {record.host}"
    if record.protocol == RANGE:
        bounds = ", ".join("?" if v is None else str(v) for v in (record.a, record.b))
        asked = f"range [{bounds}]"
        if record.error is not None:
            return f"{head} | {asked} | {_error(record.error)}"
        summed = {True: "sum ok", False: "sum mismatch", None: "sum unknown"}
        count = "?" if record.count is None else str(record.count)
        return f"{head} | {asked} | {count} | {summed[record.sum_ok]}"
    asked = escape(message_text(record.message))
    if record.error is not None:
        return f"{head} | {asked} | {_error(record.error)}"
    count = "?" if record.count is None else str(record.count)
    return f"{head} | {asked} | {count} | {_verdict(record.prime)}"


def _json_escape(match: re.Match[str]) -> str:
    return f"\\u{ord(match.group()):04x}"


def record_dict(record: Record) -> dict[str, object]:
    """
    One record as the object C{--format jsonl} prints: keys C{time, peer,
    port, protocol, message, count, prime, error}; for a range request
    also C{a, b, sum_ok}; for a message kept as bytes (not UTF-8),
    C{message} is L{None} and C{message_hex} holds the bytes in hex.
    """
    fields: dict[str, object] = {
        "time": format_iso_time(record.time),
        "peer": record.host,
        "port": record.port,
        "protocol": record.protocol,
        "message": record.message,
    }
    if isinstance(record.message, bytes):
        fields["message"] = None
        fields["message_hex"] = record.message.hex()
    fields.update(count=record.count, prime=record.prime, error=record.error)
    if record.protocol == RANGE:
        fields.update(a=record.a, b=record.b, sum_ok=record.sum_ok)
    return fields


def format_jsonl(record: Record) -> str:
    """
    One record as one line of JSON (without line end), non-ASCII kept as is.

    JSON escapes C0 controls itself; DEL, C1 controls, U+2028/U+2029 and
    lone surrogates are escaped here too (as C{\\uNNNN}, still valid JSON),
    so no reader can see a line break inside a record.
    """
    text = json.dumps(record_dict(record), ensure_ascii=False, separators=(",", ":"))
    return _JSON_ESCAPED.sub(_json_escape, text)


def _csv_cell(value: object) -> object:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return escape(value)
    return value


def csv_row(record: Record) -> list[object]:
    """
    One record as a row of C{--format csv}, in the order of L{CSV_COLUMNS}.

    Flags are C{true}/C{false}, a missing value is an empty cell, and text
    is escaped with L{escape} so that a row is exactly one line (a message
    kept as bytes as in C{seed}, see L{message_text}).
    """
    values = record_dict(record)
    values["message"] = message_text(record.message) if record.message is not None else None
    return [_csv_cell(values.get(column)) for column in CSV_COLUMNS]


@dataclass(frozen=True)
class Query:
    """
    Which records to show.

    @ivar since: only records at or after this time (epoch seconds), if set.
    @ivar until: only records before this time (epoch seconds), if set.
    @ivar peer: only records from a client whose IP is spelt one of these
        ways, if set (see L{parse_peer}).
    @ivar limit: only the last this many matching records, if set.
    """

    since: float | None = None
    until: float | None = None
    peer: tuple[str, ...] | None = None
    limit: int | None = None

    def where(
        self, after_id: int | None = None, upto_id: int | None = None
    ) -> tuple[str, list[object]]:
        """
        The C{WHERE} clause (possibly empty) and its parameters, for the
        records that match and whose id is above C{after_id} and at most
        C{upto_id} (when given).
        """
        clauses: list[str] = []
        params: list[object] = []
        if after_id is not None:
            clauses.append("id > ?")
            params.append(after_id)
        if upto_id is not None:
            clauses.append("id <= ?")
            params.append(upto_id)
        if self.since is not None:
            clauses.append("time >= ?")
            params.append(self.since)
        if self.until is not None:
            clauses.append("time < ?")
            params.append(self.until)
        if self.peer is not None:
            clauses.append(f"host IN ({', '.join('?' for _ in self.peer)})")
            params.extend(self.peer)
        sql = " WHERE " + " AND ".join(clauses) if clauses else ""
        return sql, params


_SELECT_ID = schema.SELECT.replace("SELECT ", "SELECT id, ", 1)


def select(
    conn: sqlite3.Connection,
    query: Query,
    after_id: int | None = None,
    upto_id: int | None = None,
) -> Iterator[tuple[int, Record]]:
    """
    The matching records as C{(id, record)}, oldest first, optionally only
    those whose id is above C{after_id} and at most C{upto_id}.

    With a limit, the last C{query.limit} of them (still oldest first).
    """
    where, params = query.where(after_id, upto_id)
    # Narrow the scan to the ids that can hold the time window (there is no
    # index on time); the time conditions in `where` stay exact.
    bounds = []
    if query.since is not None:
        bounds.append(f"id >= {schema.first_id_since(conn, query.since)}")
    if query.until is not None:
        bounds.append(f"id < {schema.first_id_since(conn, query.until + 2 * schema.TIME_SLACK)}")
    if bounds:
        where = (where + " AND " if where else " WHERE ") + " AND ".join(bounds)
    if query.limit is None:
        rows = conn.execute(f"{_SELECT_ID}{where} ORDER BY id", params)
        for row in rows:
            yield row[0], schema.from_row(row[1:])
        return
    newest = conn.execute(
        f"{_SELECT_ID}{where} ORDER BY id DESC LIMIT ?", [*params, query.limit]
    ).fetchall()
    for row in reversed(newest):
        yield row[0], schema.from_row(row[1:])


def parse_time(text: str, now: float | None = None) -> float:
    """
    A time given on the command line, as seconds since the epoch.

    Either an ISO 8601 date or date-time (C{2026-02-16},
    C{2026-02-16T10:37}, C{2026-02-16 10:37:12.5+01:00}, C{…Z}), read as UTC
    unless it carries an offset; or a duration ago: a number and a unit,
    C{s}, C{m}, C{h}, C{d} or C{w} (C{90s}, C{10m}, C{2h}, C{3d}, C{1.5w}).

    @raise JournalError: when C{text} is neither.
    """
    match = _RELATIVE.fullmatch(text.strip())
    if match:
        number, unit = match.groups()
        base = time.time() if now is None else now
        return base - float(number) * _UNITS[unit]
    try:
        stamp = datetime.fromisoformat(text.strip())
        if stamp.tzinfo is None:
            stamp = stamp.replace(tzinfo=UTC)
        return stamp.timestamp()
    except (ValueError, OverflowError):
        raise JournalError(
            f"not a time: {text!r} (expected an ISO 8601 date or date-time, "
            "UTC unless an offset is given, or an age like 10m, 2h, 3d)"
        ) from None


def parse_limit(text: str) -> int:
    """
    The value of C{--limit}: a whole number, zero or more.

    @raise JournalError: otherwise.
    """
    if not (text.strip().isascii() and text.strip().isdigit()):
        raise JournalError(f"not a record count: {text!r} (expected 0 or more)")
    return int(text)


def parse_peer(text: str) -> tuple[str, ...]:
    """
    The value of C{--peer}: the spellings of one IP address that the journal
    may hold for it.

    Those are the address as given and in its canonical form, and for IPv4
    also the IPv4-mapped IPv6 form (C{::ffff:192.0.2.1}) that a server
    listening on C{::} sees; for such a mapped address, also the IPv4 one.

    @raise JournalError: when C{text} is not an IPv4 or IPv6 address.
    """
    text = text.strip()
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise JournalError(f"not an IP address: {text!r}") from None
    spellings = [text, str(address)]
    if isinstance(address, ipaddress.IPv4Address):
        spellings.append(f"::ffff:{address}")
    elif address.ipv4_mapped is not None:
        spellings.append(str(address.ipv4_mapped))
        spellings.append(f"::ffff:{address.ipv4_mapped}")
    return tuple(dict.fromkeys(spellings))


def journal_path(url: str) -> str:
    """
    The file named by a journal URL, as the server reads C{--journal}
    (L{primecount.journal.sqlite.parse_url}).

    @raise JournalError: for C{none} or a URL that names no journal.
    """
    try:
        parsed = journal.parse_url(url)
    except journal.JournalURLError as e:
        raise JournalError(str(e)) from None
    if parsed.scheme == "none":
        raise JournalError("the journal is off (--journal none): nothing to read")
    return parsed.path


def _decode(data: bytes) -> str:
    # A damaged or foreign text value must not abort the whole listing;
    # its undecodable bytes come out as lone surrogates, which escape() shows.
    return data.decode("utf-8", "surrogateescape")


def open_journal(path: str, *, readonly: bool = True) -> sqlite3.Connection:
    """
    Open an existing journal file, checking that it is one.

    @raise JournalError: when the file is missing or not a journal.
    """
    if not os.path.isfile(path):
        raise JournalError(f"no journal at {path}")
    try:
        if readonly:
            conn = schema.connect(path, readonly=True)
        else:
            conn = schema.connect(path, timeout=PRUNE_BUSY_TIMEOUT)
        conn.text_factory = _decode
        conn.execute("SELECT id FROM requests LIMIT 0")
    except sqlite3.Error as e:
        doing = "read" if readonly else "write"
        raise JournalError(f"cannot {doing} journal {path}: {e}") from None
    return conn


def _writer(fmt: str, out: TextIO) -> Callable[[Record], None]:
    if fmt == "csv":
        rows = csv.writer(out, lineterminator="\n")
        rows.writerow(CSV_COLUMNS)

        def write_row(record: Record) -> None:
            rows.writerow(csv_row(record))

        return write_row
    line = format_jsonl if fmt == "jsonl" else format_seed

    def write_line(record: Record) -> None:
        out.write(line(record) + "\n")

    return write_line


def _top_id(conn: sqlite3.Connection) -> int:
    top = conn.execute("SELECT max(id) FROM requests").fetchone()[0]
    return int(top or 0)


def show(conn: sqlite3.Connection, query: Query, fmt: str, out: TextIO, *, follow: bool) -> None:
    """
    Print the matching records; with C{follow}, keep printing new ones as
    they are committed until interrupted (C{KeyboardInterrupt}).
    """
    write = _writer(fmt, out)
    # Records committed while the backlog is printed are left to the loop.
    last_id = _top_id(conn) if follow else None
    for _, record in select(conn, query, upto_id=last_id):
        write(record)
    out.flush()
    if last_id is None:
        return
    unlimited = Query(query.since, query.until, query.peer, None)
    while True:
        _sleep(POLL_INTERVAL)
        top = _top_id(conn)
        if top < last_id:
            # Ids restart at 1 only when every record was pruned.
            last_id = 0
        if top == last_id:
            continue
        for _, record in select(conn, unlimited, after_id=last_id, upto_id=top):
            write(record)
        out.flush()
        last_id = top


def prune(conn: sqlite3.Connection, before: float, *, vacuum: bool) -> int:
    """
    Delete the records older than C{before}; return how many.

    Deletes in batches of L{PRUNE_BATCH}, one short transaction each, so a
    server writing meanwhile waits at most one batch. The freed pages are
    reused by new records; when the file uses incremental auto-vacuum they
    are also returned to the file system. With C{vacuum}, the file is
    rebuilt to its smallest size, which holds a write lock for the whole
    rebuild: the server's requests fail with C{ERR journal unavailable}
    meanwhile if it takes longer than the server's busy timeout.
    """
    total = 0
    while True:
        deleted = conn.execute(
            "DELETE FROM requests WHERE id IN "
            "(SELECT id FROM requests WHERE time < ? AND id < ? ORDER BY id LIMIT ?)",
            (before, schema.first_id_since(conn, before + 2 * schema.TIME_SLACK), PRUNE_BATCH),
        ).rowcount
        total += deleted
        if deleted < PRUNE_BATCH:
            break
    if vacuum:
        conn.execute("VACUUM")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    elif conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2:
        conn.execute("PRAGMA incremental_vacuum")
    return total


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """
    Declare the options of C{primecount journal} on C{parser}.

    Values are checked by L{run}, not by argparse, so that a bad one is
    reported as one line.
    """
    parser.add_argument(
        "--journal",
        default=DEFAULT_JOURNAL,
        metavar="URL",
        help="the journal to read: sqlite:PATH or postgresql://USER@HOST:PORT/DB "
        f"(default {DEFAULT_JOURNAL})",
    )
    parser.add_argument(
        "--format",
        default=FORMATS[0],
        choices=FORMATS,
        help="seed: the original log lines (default); jsonl: one JSON object "
        "per line; csv: a header row, then one row per record",
    )
    parser.add_argument(
        "--since",
        metavar="TIME",
        help="only records at or after TIME: an ISO 8601 date or date-time "
        "(UTC unless an offset is given) or an age such as 10m, 2h, 3d",
    )
    parser.add_argument(
        "--until",
        metavar="TIME",
        help="only records before TIME (same forms as --since)",
    )
    parser.add_argument("--peer", metavar="IP", help="only records from this client IP")
    parser.add_argument(
        "--limit",
        metavar="N",
        help="only the last N matching records (still printed oldest first)",
    )
    parser.add_argument(
        "--follow",
        "-f",
        action="store_true",
        help=f"like tail -f: after the last {FOLLOW_BACKLOG} matching records "
        "(or --limit N), print new ones as they are committed; Ctrl-C stops",
    )
    parser.add_argument(
        "--prune-before",
        metavar="TIME",
        help="delete the records older than TIME (same forms as --since) "
        "and print how many; safe while the server runs",
    )
    parser.add_argument(
        "--vacuum",
        action="store_true",
        help="with --prune-before: also shrink the file (blocks the server's writes while it runs)",
    )


def _check(args: argparse.Namespace) -> None:
    if args.prune_before is not None:
        clash = [
            option
            for option, value in (
                ("--since", args.since),
                ("--until", args.until),
                ("--peer", args.peer),
                ("--limit", args.limit),
                ("--follow", args.follow or None),
            )
            if value is not None
        ]
        if clash:
            raise JournalError(f"--prune-before cannot be combined with {clash[0]}")
    elif args.vacuum:
        raise JournalError("--vacuum only goes with --prune-before")
    if args.follow and args.until is not None:
        raise JournalError("--follow cannot be combined with --until")


def query_of(args: argparse.Namespace) -> Query:
    """
    The records the options of a listing (or C{--follow}) ask for.

    @raise JournalError: for a bad value.
    """
    limit = None if args.limit is None else parse_limit(args.limit)
    if limit is None and args.follow:
        limit = FOLLOW_BACKLOG
    return Query(
        since=None if args.since is None else parse_time(args.since),
        until=None if args.until is None else parse_time(args.until),
        peer=None if args.peer is None else parse_peer(args.peer),
        limit=limit,
    )


def _run(args: argparse.Namespace, out: TextIO) -> int:
    _check(args)
    if args.journal.startswith(journal.POSTGRESQL_SCHEMES):
        try:
            from primecount.journal import pgreader
        except ImportError:
            raise JournalError(
                "reading a PostgreSQL journal needs psycopg: pip install 'primecount[postgresql]'"
            ) from None
        return pgreader.run(args, out)
    path = journal_path(args.journal)
    if args.prune_before is not None:
        before = parse_time(args.prune_before)
        conn = open_journal(path, readonly=False)
        try:
            count = prune(conn, before, vacuum=args.vacuum)
        except sqlite3.Error as e:
            raise JournalError(f"cannot prune journal {path}: {e}") from None
        finally:
            conn.close()
        out.write(f"pruned {count} records older than {format_iso_time(before)}\n")
        return 0
    query = query_of(args)
    conn = open_journal(path)
    try:
        show(conn, query, args.format, out, follow=args.follow)
    except KeyboardInterrupt:
        if args.follow:
            return 0
        raise
    except sqlite3.Error as e:
        raise JournalError(f"cannot read journal {path}: {e}") from None
    finally:
        conn.close()
    return 0


def _silence_stdout() -> None:
    # After a closed pipe, point stdout at /dev/null so the interpreter's
    # final flush does not complain again.
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass


def run(args: argparse.Namespace) -> int:
    """
    Carry out C{primecount journal} with options parsed by L{add_arguments}.

    Records go to stdout. A problem is one line on stderr and exit status 1;
    a closed stdout (C{| head}) ends quietly with 0; Ctrl-C ends C{--follow}
    with 0 and anything else with 130.

    @return: the exit status.
    """
    out = sys.stdout
    try:
        return _run(args, out)
    except JournalError as e:
        sys.stderr.write(f"primecount journal: {e}\n")
        return 1
    except BrokenPipeError:
        _silence_stdout()
        return 0
    except KeyboardInterrupt:
        return 130
