# -*- test-case-name: tests.unit.test_bench,tests.system.test_bench_runs -*-
"""
What a load run does: the L{Plan}, the built-in message mix, the timing
constants of the generator and the choice of event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, replace

#: The built-in message mix: ASCII and non-ASCII, prime and composite counts,
#: short and long lines.
DEFAULT_MESSAGES: tuple[str, ...] = (
    "abc2a",
    "abacada",
    "abacadabb",
    "a",
    "hello world",
    "mississippi",
    "ñandú ñu ñ",
    "日本語の日本",
    "🙂🙃🙂🙃🙂",
    "la niña pidió una piña",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "the quick brown fox jumps over the lazy dog",
    *("-".join("x" * k) for k in (2, 3, 4, 6, 7, 11, 12, 13, 30, 31)),
    "0123456789" * 20,
)

#: Progress reports and timeout checks happen this often, in seconds.
SWEEP_INTERVAL = 0.25

#: Pause before a failed connection is retried, in seconds.
RETRY_DELAY = 0.05

#: Connections opened before the run (persistent and held) are opened this
#: many at a time.
CONNECT_CHUNK = 100

#: A reply line longer than this is wrong, whatever it says.
MAX_REPLY = 1 << 16


@dataclass(frozen=True)
class Plan:
    """
    What one generator process (or the whole run) does.

    @ivar host: the server's address.
    @ivar port: the server's TCP port.
    @ivar clients: concurrent clients.
    @ivar duration: seconds to run, or C{None} when C{requests} bounds it.
    @ivar requests: requests to resolve, or C{None} when C{duration} does.
    @ivar per_request: one connection per request instead of persistent ones.
    @ivar pipeline: requests in flight per persistent connection.
    @ivar rate: requests per second (open loop), or C{None} (closed loop).
    @ivar hold: extra connections held open and silent during the run.
    @ivar messages: the messages sent, in turn.
    @ivar timeout: seconds a request may wait for its reply.
    @ivar loop: C{"auto"}, C{"uvloop"} or C{"asyncio"}.
    @ivar protocol: C{"count"} or C{"range"}.
    @ivar ranges: the (a, b) requests sent, in turn, with the range protocol.
    @ivar framing: C{"line"} (each request ends with a newline, each reply
        is a line) or C{"read"} (no newline; the reply is all that arrives
        until the server closes; needs C{per_request}).
    """

    host: str
    port: int
    clients: int = 10
    duration: float | None = 10.0
    requests: int | None = None
    per_request: bool = False
    pipeline: int = 1
    rate: float | None = None
    hold: int = 0
    messages: tuple[str, ...] = DEFAULT_MESSAGES
    timeout: float = 5.0
    loop: str = "auto"
    protocol: str = "count"
    ranges: tuple[tuple[int, int], ...] = ((1, 10_000),)
    framing: str = "line"

    def __post_init__(self) -> None:
        if self.framing not in ("line", "read"):
            raise ValueError(f"unknown framing {self.framing!r}")
        if self.framing == "read" and (not self.per_request or self.protocol != "count"):
            raise ValueError("read framing is the count protocol, one connection per request")

    def share(self, index: int, processes: int) -> Plan:
        """
        The part of this plan that generator process C{index} of
        C{processes} runs: clients, requests, rate and held connections
        split as evenly as possible.
        """

        def part(total: int) -> int:
            return total // processes + (1 if index < total % processes else 0)

        return replace(
            self,
            clients=part(self.clients),
            requests=None if self.requests is None else part(self.requests),
            rate=None if self.rate is None else self.rate / processes,
            hold=part(self.hold),
        )


def loop_factory(name: str) -> tuple[Callable[[], asyncio.AbstractEventLoop], str]:
    """
    The event loop factory for C{name} and the name of what it makes.

    @raise ValueError: when uvloop is asked for and not installed.
    """
    if name in ("auto", "uvloop"):
        try:
            import uvloop
        except ImportError:
            if name == "uvloop":
                raise ValueError("uvloop is not installed") from None
        else:
            return uvloop.new_event_loop, "uvloop"
    return asyncio.new_event_loop, "asyncio"
