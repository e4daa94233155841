# -*- test-case-name: tests.unit.test_count -*-
"""
The count protocol's codec, against the spec's examples and a slow,
obvious reference.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from primecount.core import outcomes
from primecount.core.count import (
    EXCERPT_BYTES,
    Reply,
    evaluate,
    excerpt,
    expected_reply,
    parse_reply,
)
from primecount.core.primes import is_prime


def slow_reply(line: bytes) -> bytes:
    """
    The reply by the letter of C{docs/user/count-protocol.md}, written as
    plainly as possible.
    """
    if line[-1:] == b"\r":
        line = line[:-1]
    try:
        message = line.decode("utf-8").strip()
    except UnicodeDecodeError:
        return b"ERR invalid UTF-8\n"
    if message == "":
        return b"ERR empty message\n"
    k = sum(1 for c in message if c == message[-1])
    prime = k > 1 and all(k % d for d in range(2, k))
    return (str(k) + (" sí" if prime else " no") + "\n").encode("utf-8")


class EvaluateTests(SynchronousTestCase):
    """
    L{evaluate} and the reply it gives.
    """

    def test_designExamples(self) -> None:
        self.assertEqual(evaluate(b"abc2a").reply(), "2 sí\n".encode())
        self.assertEqual(evaluate(b"abacada").reply(), b"4 no\n")
        self.assertEqual(evaluate(b"abacadabb").reply(), "3 sí\n".encode())
        self.assertEqual(evaluate(b"a").reply(), b"1 no\n")

    def test_errors(self) -> None:
        self.assertEqual(evaluate(b"").error, "empty message")
        self.assertEqual(evaluate(b" \t\r").error, "empty message")
        self.assertEqual(evaluate(b"ab\xc3").error, "invalid UTF-8")
        self.assertEqual(evaluate(b"ab\xc3").message, b"ab\xc3")
        self.assertEqual(evaluate(b"\xffab\r").message, b"\xffab")

    def test_excerptOfAnOverLongLine(self) -> None:
        self.assertEqual(excerpt(b"a" * 200), "a" * EXCERPT_BYTES + "…")
        # A character cut at the end is dropped, not escaped.
        cut = b"a" * (EXCERPT_BYTES - 1) + "ñ".encode()
        self.assertEqual(excerpt(cut + b"x"), "a" * (EXCERPT_BYTES - 1) + "…")
        self.assertEqual(excerpt(b"\xff" * 200), b"\xff" * EXCERPT_BYTES)

    @given(st.text(max_size=60))
    def test_matchesReferenceOnText(self, text: str) -> None:
        line = text.encode("utf-8", "surrogatepass")
        self.assertEqual(evaluate(line).reply(), slow_reply(line))

    @given(st.binary(max_size=40))
    def test_matchesReferenceOnBytes(self, line: bytes) -> None:
        self.assertEqual(evaluate(line).reply(), slow_reply(line))

    @given(st.text(alphabet="ab\x00\t ñ😀", min_size=1, max_size=400))
    def test_matchesReferenceOnRepeats(self, text: str) -> None:
        line = text.encode()
        self.assertEqual(evaluate(line).reply(), slow_reply(line))


class ReplyParsingTests(SynchronousTestCase):
    """
    L{parse_reply} reads what servers send.
    """

    def test_parse(self) -> None:
        self.assertEqual(parse_reply("2 sí\n".encode()), Reply(2, True))
        self.assertEqual(parse_reply(b"4 no"), Reply(4, False))
        self.assertEqual(parse_reply(b"ERR line too long\n"), Reply(None, None, "line too long"))

    def test_malformed(self) -> None:
        for line in (b"", b"2", b"2 yes\n", b"x no\n", b"-1 no\n"):
            self.assertRaises(ValueError, parse_reply, line)

    def test_expectedReplyAcceptsText(self) -> None:
        self.assertEqual(expected_reply("abc2a"), expected_reply(b"abc2a"))


class IsPrimeTests(SynchronousTestCase):
    """
    L{is_prime} over the table and beyond it.
    """

    def test_againstTrialDivision(self) -> None:
        def slow(n: int) -> bool:
            return n > 1 and all(n % d for d in range(2, int(n**0.5) + 1))

        for n in [*range(-3, 2000), *range(65_000, 66_500), 2**31 - 1, 2**31 + 11]:
            self.assertEqual(is_prime(n), slow(n), n)

    def test_largeKnownValues(self) -> None:
        self.assertTrue(is_prime(2**61 - 1))
        self.assertFalse(is_prime(3_215_031_751))  # strong pseudoprime to 2, 3, 5, 7


class OutcomeTableTests(SynchronousTestCase):
    """
    L{primecount.core.outcomes}: one table gives the wire bytes, the
    journal's error and the metric label, exactly as they were before the
    table existed.
    """

    def test_wireJournalAndLabel(self) -> None:
        self.assertEqual(
            [(o.reply(), o.error, o.label) for o in outcomes.OUTCOMES],
            [
                (b"ERR ok\n", None, "ok"),
                (b"ERR server busy\n", "server busy", "server_busy"),
                (b"ERR internal error\n", "internal error", "internal_error"),
                (b"ERR empty message\n", "empty message", "empty_message"),
                (b"ERR invalid UTF-8\n", "invalid UTF-8", "invalid_utf8"),
                (b"ERR line too long\n", "line too long", "line_too_long"),
                (b"ERR journal unavailable\n", "journal unavailable", "journal_unavailable"),
                (b"ERR bad PROXY header\n", "bad PROXY header", "bad_proxy_header"),
                (b"ERR untrusted proxy\n", "untrusted proxy", "untrusted_proxy"),
                (b"ERR bad sum\n", "bad sum", "bad_sum"),
                (
                    b"ERR client disconnected before the reply\n",
                    "client disconnected before the reply",
                    "disconnected",
                ),
                (
                    b"ERR client disconnected mid-stream\n",
                    "client disconnected mid-stream",
                    "disconnected",
                ),
                (
                    b"ERR client disconnected before sending the sum\n",
                    "client disconnected before sending the sum",
                    "disconnected",
                ),
                (b"ERR client stopped reading\n", "client stopped reading", "stopped_reading"),
                (b"ERR no sum within the timeout\n", "no sum within the timeout", "no_sum"),
                (b"ERR incomplete request\n", "incomplete request", "incomplete_request"),
            ],
        )

    def test_textsAreDistinct(self) -> None:
        texts = [o.text for o in outcomes.OUTCOMES]
        self.assertEqual(len(set(texts)), len(texts))

    def test_evaluationCarriesItsOutcome(self) -> None:
        self.assertIs(evaluate(b"abc2a").outcome, outcomes.OK)
        self.assertIs(evaluate(b" ").outcome, outcomes.EMPTY_MESSAGE)
        self.assertIs(evaluate(b"\xff").outcome, outcomes.INVALID_UTF8)
        self.assertIsNone(evaluate(b"abc2a").error)
