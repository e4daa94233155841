# -*- test-case-name: tests.unit.test_count -*-
"""
The count protocol's codec: what a request line means and what its reply is.

Pure functions, free of Twisted, shared by the server, the command-line
client and the load generator so they can never disagree on the wire format.

A request is one line. Its I{message} is the line decoded as UTF-8 with the
surrounding whitespace removed; its I{count} is how often the message's last
code point occurs in it; I{prime} says whether that count is prime. How a
request ended is its L{Outcome}, from L{primecount.core.outcomes}.
"""

from __future__ import annotations

import codecs
from typing import NamedTuple

from primecount.core.outcomes import EMPTY_MESSAGE, INVALID_UTF8, OK, Outcome
from primecount.core.primes import is_prime

YES = "sí"
NO = "no"

#: How much of an unreadable or oversized line is kept for the journal.
EXCERPT_BYTES = 128


class Evaluation(NamedTuple):
    """
    The evaluation of one request line: what the reply and the journal
    record are made of.

    @ivar message: the message as text; for a line that is not valid UTF-8,
        its bytes as they arrived (without the LF or CR LF), so the journal
        tells them apart from text (see L{excerpt} for an over-long line).
    @ivar count: occurrences of the last code point, or C{None} on error.
    @ivar prime: whether C{count} is prime, or C{None} on error.
    @ivar outcome: L{OK}, or the error that is the reply.
    """

    message: str | bytes
    count: int | None = None  # type: ignore[assignment]  # shadows tuple.count
    prime: bool | None = None
    outcome: Outcome = OK

    @property
    def error(self) -> str | None:
        """
        The journal's C{error}: C{None} for a good request.
        """
        return self.outcome.error

    def reply(self) -> bytes:
        """
        The reply line, newline included, UTF-8 encoded.
        """
        if self.outcome != OK:
            return self.outcome.reply()
        return format_reply(self.count or 0, bool(self.prime))


def count_last(message: str) -> int:
    """
    How often the last code point of a non-empty C{message} occurs in it.
    """
    return message.count(message[-1])


def evaluate(line: bytes) -> Evaluation:
    """
    Evaluate one request line (without its LF; a trailing CR is dropped).
    """
    if line.endswith(b"\r"):
        line = line[:-1]
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        return Evaluation(line, outcome=INVALID_UTF8)
    message = text.strip()
    if not message:
        return Evaluation(message, outcome=EMPTY_MESSAGE)
    k = count_last(message)
    return Evaluation(message, k, is_prime(k))


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

    @ivar count: the count, or C{None} for an C{ERR} reply.
    @ivar prime: whether the count is prime, or C{None} for an C{ERR} reply.
    @ivar error: the C{ERR} reason, or C{None}.
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
