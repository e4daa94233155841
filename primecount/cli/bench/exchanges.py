# -*- test-case-name: tests.unit.test_bench -*-
"""
What a load generator sends and expects (L{Exchanges}): the request bytes of
every message or range, the exact reply the server must give, and for the
range protocol the sums the client sends back; computed once, before the
run, from the same code the server uses.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from primecount.cli.bench.connections import Connection, RangeConnection, ReadConnection
from primecount.cli.bench.plan import Plan
from primecount.core import rangecodec
from primecount.core.count import expected_reply
from primecount.core.primes import primes_between


@dataclass
class Exchanges:
    """
    The requests of a plan and their exact replies, by index.

    @ivar lines: the bytes of each request.
    @ivar expected: the exact reply to each (without its LF, for the count
        protocol).
    @ivar range: whether these are range-protocol requests.
    @ivar sums: range protocol: the sum to send back after each reply.
    @ivar max_primes: range protocol: the largest N a reply may announce
        before it counts as overlong.
    @ivar connection: the connection kind that splits the replies.
    """

    lines: list[bytes]
    expected: list[bytes]
    range: bool = False
    sums: list[bytes] = field(default_factory=list)
    max_primes: int = 0
    connection: type[Connection] = Connection

    @classmethod
    def of(cls, plan: Plan) -> Exchanges:
        """
        The exchanges of C{plan}: its messages in its framing, or its ranges.
        """
        if plan.protocol == "range":
            return cls.ranges(plan.ranges)
        end = b"\n" if plan.framing == "line" else b""
        return cls(
            lines=[m.encode("utf-8") + end for m in plan.messages],
            expected=[expected_reply(m).rstrip(b"\n") for m in plan.messages],
            connection=ReadConnection if plan.framing == "read" else Connection,
        )

    @classmethod
    def ranges(cls, ranges: tuple[tuple[int, int], ...]) -> Exchanges:
        """
        The requests, exact replies and sums of the range protocol, from the
        same sieve the server uses.
        """
        work = cls([], [], range=True, connection=RangeConnection)
        most = 0
        for a, b in ranges:
            primes = primes_between(a, b) if a <= b else primes_between(1, 0)
            work.lines.append(rangecodec.encode_request(a, b))
            work.expected.append(
                rangecodec.encode_count(len(primes)) + rangecodec.encode_primes(primes)
            )
            work.sums.append(rangecodec.encode_sum(rangecodec.prime_sum(primes)))
            most = max(most, len(primes))
        work.max_primes = 2 * most + 1024
        return work

    def range_sum(self, index: int, reply: bytes, correct: bool) -> bytes:
        """
        The sum a range client sends back: of the primes it received.
        """
        if correct:
            return self.sums[index]
        total = rangecodec.prime_sum(rangecodec.decode_primes(reply[4:]))
        return rangecodec.encode_sum(total)
