# -*- test-case-name: tests.unit.test_count -*-
"""
How a request ended: the one table of outcomes.

Every outcome carries the three forms it takes: its I{text} (the reason of
an C{ERR} reply on the count protocol, and the C{error} column of the
journal on either protocol), its I{label} (the C{outcome} label of
C{primecount_requests_total}) and, for the count protocol, its wire
bytes (L{Outcome.reply}). A request carries its L{Outcome} from where it is decided to where
it is answered, journalled and counted, so nothing parses reply bytes
back into an outcome.

Pure: no Twisted.
"""

from __future__ import annotations

from typing import NamedTuple


class Outcome(NamedTuple):
    """
    How a request ended: L{OK} or one named error.

    @ivar text: the C{ERR} reason and the journal's C{error}; C{"ok"} for
        L{OK}, which the journal records as no error.
    @ivar label: the metric's C{outcome} label: a bounded word, shared by
        outcomes that a dashboard need not tell apart.
    """

    text: str
    label: str

    @property
    def error(self) -> str | None:
        """
        The journal's C{error} text: C{None} for L{OK}, else L{text}.
        """
        return None if self == OK else self.text

    def reply(self) -> bytes:
        """
        The count protocol's reply line of an error, C{b"ERR <text>\\n"}.
        """
        return f"ERR {self.text}\n".encode()


OK = Outcome("ok", "ok")

# Either protocol.
SERVER_BUSY = Outcome("server busy", "server_busy")
INTERNAL_ERROR = Outcome("internal error", "internal_error")

# The count protocol: the reasons of its ERR replies.
EMPTY_MESSAGE = Outcome("empty message", "empty_message")
INVALID_UTF8 = Outcome("invalid UTF-8", "invalid_utf8")
LINE_TOO_LONG = Outcome("line too long", "line_too_long")
JOURNAL_UNAVAILABLE = Outcome("journal unavailable", "journal_unavailable")
BAD_PROXY_HEADER = Outcome("bad PROXY header", "bad_proxy_header")
# Either protocol: a connection on a haproxy: listener from an address
# that is not one of --trusted-proxies (the range protocol closes it).
UNTRUSTED_PROXY = Outcome("untrusted proxy", "untrusted_proxy")

# The range protocol: it has no error message; these are journalled.
BAD_SUM = Outcome("bad sum", "bad_sum")
DISCONNECTED_BEFORE_REPLY = Outcome("client disconnected before the reply", "disconnected")
DISCONNECTED_MID_STREAM = Outcome("client disconnected mid-stream", "disconnected")
DISCONNECTED_BEFORE_SUM = Outcome("client disconnected before sending the sum", "disconnected")
STOPPED_READING = Outcome("client stopped reading", "stopped_reading")
NO_SUM = Outcome("no sum within the timeout", "no_sum")
INCOMPLETE_REQUEST = Outcome("incomplete request", "incomplete_request")

#: Every outcome, in the order above.
OUTCOMES: tuple[Outcome, ...] = (
    OK,
    SERVER_BUSY,
    INTERNAL_ERROR,
    EMPTY_MESSAGE,
    INVALID_UTF8,
    LINE_TOO_LONG,
    JOURNAL_UNAVAILABLE,
    BAD_PROXY_HEADER,
    UNTRUSTED_PROXY,
    BAD_SUM,
    DISCONNECTED_BEFORE_REPLY,
    DISCONNECTED_MID_STREAM,
    DISCONNECTED_BEFORE_SUM,
    STOPPED_READING,
    NO_SUM,
    INCOMPLETE_REQUEST,
)

#: Every value the metric's C{outcome} label can take.
LABELS: frozenset[str] = frozenset(outcome.label for outcome in OUTCOMES)
