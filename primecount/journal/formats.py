# -*- test-case-name: tests.unit.test_journalcli,tests.system.test_journalcli_process -*-
"""
The journal's output formats (one record is always exactly one line):

  - C{original}: the original server's log line: an answered count
    request, an error (here of an empty message), a range request::

        2026-02-16 10:37:12 | 127.0.0.1 | abc2a | 2 | sí
        2026-02-16 10:37:12 | 127.0.0.1 |  | ERR empty message
        2026-02-16 10:37:12 | 127.0.0.1 | range [10, 20] | 4 | sum ok

  - C{jsonl}: one JSON object per record.
  - C{csv}: a header row, then one row per record.

In C{original} and C{csv}, control characters in messages and errors are
escaped with L{escape}; JSON escapes them itself (and this module also
escapes the few that JSON leaves raw but some readers split lines on).

A message that was not valid UTF-8 is kept in the journal as the bytes that
arrived (L{message_text}): C{original} and C{csv} show each byte that is not
part of UTF-8 text as C{\\udcXX} (XX its value in hex: C{ab\\udcff} for
C{b"ab\\xff"}), which no client's text can produce (the server stores as
text only what decoded as UTF-8, and a backslash sent as text is shown
C{\\\\}); C{jsonl} gives C{"message": null} and the bytes in hex as
C{"message_hex"}. Older journals kept such messages as text with
C{\\xNN} escapes; they read as the text they hold.
"""

from __future__ import annotations

import csv
import functools
import json
import math
import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TextIO

from primecount.core.count import NO, YES
from primecount.journal.records import FIELDS, PROTOCOL_RANGE, Record

#: The output formats, the first being the default.
FORMATS = ("original", "jsonl", "csv")

#: Older names of formats, still accepted: C{seed} is C{original}.
FORMAT_ALIASES = {"seed": "original"}


def format_name(name: str) -> str:
    """
    The format C{name} names: itself, or the format it is an older name of
    (L{FORMAT_ALIASES}).
    """
    return FORMAT_ALIASES.get(name, name)


#: The columns of C{--format csv} and the keys of C{--format jsonl}.
CSV_COLUMNS = FIELDS


_SHORT_ESCAPES = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


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


def format_original_time(when: float) -> str:
    """
    C{2026-02-16 10:37:12}: UTC, to the second (truncated), as the original
    server logged it.
    """
    return f"{_utc_second(_split_time(when)[0]):%Y-%m-%d %H:%M:%S}"


def format_iso_time(when: float) -> str:
    """
    C{2026-02-16T10:37:12.345Z}: ISO 8601, UTC, to the millisecond (truncated).
    """
    second, micro = _split_time(when)
    return f"{_utc_second(second):%Y-%m-%dT%H:%M:%S}.{micro // 1000:03d}Z"


def prime_text(prime: bool | None) -> str:
    """
    How a record's C{prime} reads: C{sí}, C{no}, or C{?} when unknown.
    """
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


def format_original(record: Record) -> str:
    """
    One record as the original server's log line (without line end).

    Fields are separated by C{" | "}: time, peer IP, what was asked, then
    the answer. A count request asked its message (escaped) and is answered
    C{count | sí} or C{count | no}; a range request asked C{range [a, b]} and
    is answered C{N | sum ok} (or C{sum mismatch}, or C{sum unknown}). A
    failed request of either kind is answered C{ERR reason}. A missing value
    is shown as C{?}.
    """
    head = f"{format_original_time(record.time)} | {record.peer}"
    if record.protocol == PROTOCOL_RANGE:
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
    return f"{head} | {asked} | {count} | {prime_text(record.prime)}"


def _json_escape(match: re.Match[str]) -> str:
    return f"\\u{ord(match.group()):04x}"


def record_dict(record: Record) -> dict[str, object]:
    """
    One record as the object C{--format jsonl} prints: keys C{time, peer,
    port, protocol, message, count, prime, error}; for a range request
    also C{a, b, sum_ok}; for a message kept as bytes (not UTF-8),
    C{message} is C{None} and C{message_hex} holds the bytes in hex.
    """
    fields: dict[str, object] = {
        "time": format_iso_time(record.time),
        "peer": record.peer,
        "port": record.port,
        "protocol": record.protocol,
        "message": record.message,
    }
    if isinstance(record.message, bytes):
        fields["message"] = None
        fields["message_hex"] = record.message.hex()
    fields.update(count=record.count, prime=record.prime, error=record.error)
    if record.protocol == PROTOCOL_RANGE:
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
    kept as bytes as in C{original}, see L{message_text}).
    """
    values = record_dict(record)
    values["message"] = message_text(record.message) if record.message is not None else None
    return [_csv_cell(values.get(column)) for column in CSV_COLUMNS]


def writer(fmt: str, out: TextIO) -> Callable[[Record], None]:
    """
    What writes one record to C{out} in format C{fmt} (one of L{FORMATS});
    for C{csv}, the header row is written at once.
    """
    if fmt == "csv":
        rows = csv.writer(out, lineterminator="\n")
        rows.writerow(CSV_COLUMNS)

        def write_row(record: Record) -> None:
            rows.writerow(csv_row(record))

        return write_row
    line = format_jsonl if fmt == "jsonl" else format_original

    def write_line(record: Record) -> None:
        out.write(line(record) + "\n")

    return write_line
