# -*- test-case-name: tests.unit.test_budget -*-
"""
One memory budget for what a serving process holds on behalf of its clients.

Each connection is bounded on its own (C{--max-line}, a cap on unanswered
requests, the transport's write buffer), but nothing bounded the sum: 300
clients pipelining the longest lines made one process hold gigabytes. Here
every connection counts, in one L{MemoryBudget} per process, the bytes it
holds for its client:

  - unread input: a partial line, or lines read but not parsed yet;
  - pending requests: each unanswered line, plus L{REQUEST_OVERHEAD} for the
    objects that carry it through the pipeline;
  - unsent replies: what the transport still buffers once the client stops
    reading (its buffer passed Twisted's 64 KiB high-water mark); on the
    range protocol, the primes written and not yet sent, likewise.

When the total passes the budget, a connection that reads more while it
holds more than its share (the budget divided among the connections that
count against it) stops being read; it is read again once it holds less
than half its share or has answered everything, or once the total drains
below three quarters of the budget. So the clients that hold the most wait, and the rest are still
served. Nothing is dropped: a paused connection keeps its requests, which
are answered in order, and what its client sends meanwhile waits in the
kernel's socket buffer (and then the client's), not in this process.

The accounting costs a few integer operations per read and per reply
written, none per request beyond the size each request carries.

The budget bounds what grows with input. Beyond it, each connection can
add what one read delivers (64 KiB at most) before it is paused, and a few
KiB of its own (the protocol and transport objects), which the connection
limit bounds.
"""

from __future__ import annotations

import re
from typing import Protocol

from twisted.logger import Logger, LogLevel

from primecount.metrics.episodes import Episodes

#: The default budget: C{--max-memory 96} (MiB).
DEFAULT_MAX_MEMORY = 96 << 20

#: The smallest budget C{--max-memory} accepts.
MIN_MAX_MEMORY = 1 << 20

#: What one parsed request costs beyond the bytes of its line: the line's
#: bytes object header, its place in its connection's reply order, its
#: entries in the pipeline's queue and batch (measured with tracemalloc:
#: about 200 bytes).
REQUEST_OVERHEAD = 256

_SIZE = re.compile(r"\s*(\d+)\s*([kmg]?)(i?b)?\s*", re.IGNORECASE)
_UNITS = {"": 20, "k": 10, "m": 20, "g": 30}


def parse_size(value: str) -> int:
    """
    Parse C{--max-memory}: MiB (C{256}), or a number with a unit (C{512K},
    C{256M}, C{1G}, also C{256MiB}, C{256MB}: powers of 1024 either way).

    @return: bytes.
    @raise ValueError: in one line naming the option.
    """
    found = _SIZE.fullmatch(value)
    if found is None:
        raise ValueError(
            f"--max-memory wants MiB (256) or a size with a unit (512K, 256M, 1G); got {value!r}"
        )
    size = int(found.group(1)) << _UNITS[found.group(2).lower()]
    if size < MIN_MAX_MEMORY:
        raise ValueError(f"--max-memory must be at least 1 MiB; got {value!r}")
    return size


def size_text(size: int) -> str:
    """
    A size in bytes as people write it: C{128 MiB}, C{512 KiB}, C{1.5 GiB}.
    """
    for shift, unit in ((30, "GiB"), (20, "MiB"), (10, "KiB")):
        if size >= 1 << shift:
            return f"{size / (1 << shift):.4g} {unit}"
    return f"{size} bytes"


class Holder(Protocol):
    """
    A connection that holds memory for its client.

    @ivar held: the bytes it holds, as it last told its budget.
    """

    held: int
    peer: str

    def pauseForMemory(self) -> bool:
        """
        Stop reading from the client (and producing for it) until
        L{resumeForMemory}; unless it has nothing to answer, when stopping
        would free nothing (its unread input is bounded on its own).

        @return: whether it stopped.
        """

    def resumeForMemory(self) -> None:
        """
        Read from the client again, unless something else keeps it paused.
        """


class MemoryBudget:
    """
    The bytes every connection of a process holds for its client, against
    one limit.

    Connections L{join} when they open and L{leave} once they hold nothing
    more (a closed connection may still have requests in the pipeline).
    They L{charge} what they take on and L{release} what they let go.

    @ivar limit: the budget, in bytes.
    @ivar held: the bytes held, all connections together.
    @ivar members: the connections counted (open, or closed with requests
        still to answer).
    @ivar paused: the connections not read for want of memory, in the
        order they were paused.
    @ivar pauses: how many times a connection was paused.
    """

    _log = Logger()

    def __init__(self, limit: int = DEFAULT_MAX_MEMORY, episodes: Episodes | None = None) -> None:
        """
        @param limit: the budget, in bytes.
        @param episodes: where pausing is logged, once per episode.
        """
        self.limit = limit
        self._resumeAt = limit * 3 // 4
        self.held = 0
        self.members = 0
        self.paused: dict[Holder, None] = {}
        self.pauses = 0
        self.episodes = episodes if episodes is not None else Episodes(self._log)

    def join(self, holder: Holder) -> None:
        """
        A connection opened: it counts in the shares from now on.
        """
        self.members += 1

    def leave(self, holder: Holder) -> None:
        """
        A connection closed and holds nothing any more.
        """
        self.members -= 1
        self.paused.pop(holder, None)

    def share(self) -> int:
        """
        What one connection may hold while the total is over the limit.
        """
        return self.limit // max(1, self.members)

    def charge(self, holder: Holder, n: int) -> None:
        """
        C{holder} took on C{n} more bytes; past the limit, stop reading from
        it if it holds more than its share.

        (A connection on the hot path may do this arithmetic itself and
        call L{overLimit} only when C{held} passed C{limit}.)
        """
        holder.held += n
        self.held += n
        if self.held > self.limit:
            self.overLimit(holder)

    def release(self, holder: Holder, n: int) -> None:
        """
        C{holder} let C{n} bytes go; read again from what waited.

        (A connection on the hot path may do this arithmetic itself and
        call L{eased} only while something is C{paused}.)
        """
        holder.held -= n
        self.held -= n
        if self.paused:
            self.eased(holder)

    def room(self, holder: Holder, n: int) -> bool:
        """
        Whether C{holder} may take on C{n} bytes it does not hold yet (a
        range stream's next segment, before it is sieved): while the total
        stays within the limit with them, or C{holder} within its share.
        Else it waits, paused, until L{Holder.resumeForMemory}: a segment
        sieved is memory held until its client reads it, however many
        connections ask for one.
        """
        if self.held + n <= self.limit or holder.held + n <= self.share():
            return True
        if holder not in self.paused:
            self._paused(holder)
        return False

    def overLimit(self, holder: Holder) -> None:
        """
        The total is over the limit after C{holder} took on more: stop
        reading from it if it holds more than its share.
        """
        if holder.held > self.share() and holder not in self.paused:
            self._pause(holder)

    def eased(self, holder: Holder) -> None:
        """
        C{holder} let bytes go while connections are paused: read again from
        all of them once the total is down to three quarters of the limit,
        or from C{holder} once it holds less than half its share.
        """
        if self.held <= self._resumeAt:
            self._resumeAll()
        elif holder.held <= self.share() // 2:
            self.resume(holder)

    def resume(self, holder: Holder) -> None:
        """
        Read from C{holder} again, if it was paused (it has answered
        everything it was holding, say).
        """
        if holder in self.paused:
            del self.paused[holder]
            holder.resumeForMemory()

    def _pause(self, holder: Holder) -> None:
        if holder.pauseForMemory():
            self._paused(holder)

    def _paused(self, holder: Holder) -> None:
        self.paused[holder] = None
        self.pauses += 1
        self.episodes.event(
            "connections paused for the memory budget",
            "holding {held} for clients, over --max-memory {limit}: not reading from the "
            "connections that hold the most until it drains (first: {peer}, holding {own}; "
            "more are counted, not logged)",
            level=LogLevel.warn,
            held=size_text(self.held),
            limit=size_text(self.limit),
            peer=holder.peer,
            own=size_text(holder.held),
        )

    def _resumeAll(self) -> None:
        paused, self.paused = self.paused, {}
        for holder in paused:
            holder.resumeForMemory()
