# -*- test-case-name: tests.test_count -*-
"""
The count protocol's codec: what a request line means and what its reply is.

Pure functions, free of Twisted, shared by the server, the command-line
client and the load generator so they can never disagree on the wire format.

A request is one line. Its I{message} is the line decoded as UTF-8 with the
surrounding whitespace removed; its I{count} is how often the message's last
code point occurs in it; the I{verdict} is whether that count is prime.
"""

from __future__ import annotations

import codecs
from typing import NamedTuple

from primecount.core.primes import is_prime

#: The reason words of C{ERR} replies; one fixed phrase per failure.
EMPTY = "empty message"
INVALID_UTF8 = "invalid UTF-8"
LINE_TOO_LONG = "line too long"
JOURNAL_UNAVAILABLE = "journal unavailable"
SERVER_BUSY = "server busy"
INTERNAL_ERROR = "internal error"

YES = "sí"
NO = "no"

#: How much of an unreadable or oversized line is kept for the journal.
EXCERPT_BYTES = 128


class Verdict(NamedTuple):
    """
    The evaluation of one request line.

    @ivar message: the message as text; for a line that is not valid UTF-8,
        its bytes as they arrived (without the LF or CR LF), so the journal
        tells them apart from text (see L{excerpt} for an over-long line).
    @ivar count: occurrences of the last code point, or L{None} on error.
    @ivar prime: whether C{count} is prime, or L{None} on error.
    @ivar error: the C{ERR} reason, or L{None} for a good request.
    """

    message: str | bytes
    count: int | None = None  # type: ignore[assignment]  # shadows tuple.count
    prime: bool | None = None
    error: str | None = None

    def reply(self) -> bytes:
        """
        The reply line for this verdict, newline included, UTF-8 encoded.
        """
        if self.error is not None:
            return error_reply(self.error)
        return format_reply(self.count or 0, bool(self.prime))


def count_last(message: str) -> int:
    """
    How often the last code point of a non-empty C{message} occurs in it.
    """
    return message.count(message[-1])


def evaluate(line: bytes) -> Verdict:
    """
    Evaluate one request line (without its LF; a trailing CR is dropped).
    """
    if line.endswith(b"\r"):
        line = line[:-1]
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        return Verdict(line, error=INVALID_UTF8)
    message = text.strip()
    if not message:
        return Verdict(message, error=EMPTY)
    k = count_last(message)
    return Verdict(message, k, is_prime(k))


def excerpt(data: bytes) -> str | bytes:
    """
    What the journal keeps of an over-long line: its first L{EXCERPT_BYTES}
    bytes. As text when they are UTF-8 (a character cut at the end is
    dropped), followed by C{…} when the line is longer; otherwise as bytes.
    """
    head = data[:EXCERPT_BYTES]
    try:
        # Not final: an incomplete last character is left out, not an error.
        text = codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
    except UnicodeDecodeError:
        return head
    return text + "…" if len(data) > len(text.encode("utf-8")) else text


def format_reply(count: int, prime: bool) -> bytes:
    """
    The wire form of a good answer: C{b"2 s\\xc3\\xad\\n"} or C{b"4 no\\n"}.
    """
    return f"{count} {YES if prime else NO}\n".encode()


def error_reply(reason: str) -> bytes:
    """
    The wire form of an error: C{b"ERR <reason>\\n"}.
    """
    return f"ERR {reason}\n".encode()


def expected_reply(message: str | bytes) -> bytes:
    """
    The reply a correct server gives to one request line; for clients that
    verify what they receive.
    """
    if isinstance(message, str):
        message = message.encode("utf-8")
    return evaluate(message).reply()


class Reply(NamedTuple):
    """
    A reply line as a client reads it.

    @ivar count: the count, or L{None} for an C{ERR} reply.
    @ivar prime: the verdict, or L{None} for an C{ERR} reply.
    @ivar error: the C{ERR} reason, or L{None}.
    """

    count: int | None  # type: ignore[assignment]  # shadows tuple.count
    prime: bool | None
    error: str | None = None


def parse_reply(line: bytes) -> Reply:
    """
    Parse one reply line (with or without its LF).

    @raise ValueError: when the line is not a well-formed reply.
    """
    text = line.rstrip(b"\n").decode("utf-8")
    if text.startswith("ERR "):
        return Reply(None, None, text[4:])
    number, _, word = text.partition(" ")
    if not number.isdigit() or word not in (YES, NO):
        raise ValueError(f"not a count reply: {text!r}")
    return Reply(int(number), word == YES)
