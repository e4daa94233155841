# -*- test-case-name: tests.unit.test_journalcli,tests.system.test_journalcli_process -*-
"""
C{primecount journal}: read the request journal back, follow it, sum it
up (C{--stats}), prune it.

The options are declared and checked here; reading is the journal's
backend's (L{primecount.journal.reader_for} picks it from the backend
table: L{primecount.journal.sqlite.reader} or
L{primecount.journal.postgresql.reader}), the output formats are
L{primecount.journal.formats}; the sums are L{primecount.journal.stats},
written by L{primecount.cli.journalstats}.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import re
import shutil
import sys
import time
from datetime import UTC, datetime
from typing import TextIO

from primecount.journal import DEFAULT_URL, JournalError, Query, reader_for
from primecount.journal.formats import FORMATS, format_iso_time, format_name
from primecount.journal.stats import TOP

#: How many records C{--follow} shows before waiting for new ones, unless
#: C{--limit} says otherwise (as C{tail -f} does).
FOLLOW_BACKLOG = 10


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


_RELATIVE = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")


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


def parse_limit(text: str, what: str = "record count") -> int:
    """
    The value of C{--limit} (or C{--top}, a C{what} of another kind): a
    whole number, zero or more.

    @raise JournalError: otherwise.
    """
    if not (text.strip().isascii() and text.strip().isdigit()):
        raise JournalError(f"not a {what}: {text!r} (expected 0 or more)")
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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """
    Declare the options of C{primecount journal} on C{parser}.

    Values are checked by L{run}, not by argparse, so that a bad one is
    reported as one line.
    """
    parser.add_argument(
        "--journal",
        default=DEFAULT_URL,
        metavar="URL",
        help="the journal to read: an SQLite file, PATH or sqlite:PATH (with the files "
        "PATH.worker0, PATH.worker1, ... that --workers N writes, read as one), or "
        f"postgresql://USER@HOST:PORT/DB (default {DEFAULT_URL})",
    )
    parser.add_argument(
        "--format",
        default=FORMATS[0],
        type=format_name,
        choices=FORMATS,
        help="original: the original server's log lines (default; seed, its "
        "older name, works too); jsonl: one JSON object per line; csv: a header "
        "row, then one row per record (with --stats: see there)",
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
        "--stats",
        action="store_true",
        help="sum up the matching records instead of listing them: totals by "
        "outcome, error share, top peers, range bad sums, requests per minute "
        "(original: a report with a sparkline; jsonl: one JSON object with the "
        "per-minute series; csv: the per-minute series); counted by the database",
    )
    parser.add_argument(
        "--top",
        metavar="N",
        help=f"with --stats: how many peers each top list shows (default {TOP})",
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
    if args.stats:
        for option, value in (
            ("--limit", args.limit),
            ("--follow", args.follow or None),
            ("--prune-before", args.prune_before),
        ):
            if value is not None:
                raise JournalError(f"--stats cannot be combined with {option}")
    elif args.top is not None:
        raise JournalError("--top only goes with --stats")


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
    reader = reader_for(args.journal)
    if args.prune_before is not None:
        before = parse_time(args.prune_before)
        conn = reader.connect(False)
        try:
            count = reader.prune(conn, before, vacuum=args.vacuum)
        except reader.errors as e:
            raise JournalError(f"cannot prune journal {reader.shown}: {reader.why(e)}") from None
        finally:
            conn.close()
        out.write(f"pruned {count} records older than {format_iso_time(before)}\n")
        return 0
    query = query_of(args)
    top = TOP if args.top is None else parse_limit(args.top, "peer count")
    conn = reader.connect(True)
    try:
        if args.stats:
            from primecount.cli import journalstats

            width = shutil.get_terminal_size().columns
            journalstats.write(
                reader.stats(conn), query, args.format, reader.shown, out, top=top, width=width
            )
            return 0
        reader.show(conn, query, args.format, out, follow=args.follow)
    except KeyboardInterrupt:
        if args.follow:
            return 0
        raise
    except reader.errors as e:
        raise JournalError(f"cannot read journal {reader.shown}: {reader.why(e)}") from None
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
