# -*- test-case-name: tests.test_connections -*-
"""
Open connections of both protocols: admission limits and orderly closing.

One L{Connections} is shared by the count and range factories of a process,
so C{--max-connections} and C{--max-per-peer} count every connection the
process holds, whichever protocol it speaks. Limits are enforced in the
factories' C{buildProtocol} (Twisted's C{LimitConnectionsByPeer} breaks on
IPv4 addresses and its wrapping hides half-close).

The counts themselves live in a L{Counts}: a plain in-process one here, or
one in shared memory (L{primecount.workers}) so that several worker
processes enforce one limit together.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator
from typing import Any, Protocol

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from primecount.episodes import Episodes


def peer_of(address: object) -> tuple[str, int]:
    """
    The (host, port) to journal for a transport's peer address.
    """
    if isinstance(address, IPv4Address | IPv6Address):
        return address.host, address.port
    return type(address).__name__, 0


def no_delay(transport: object) -> None:
    """
    Send small replies at once (C{TCP_NODELAY}): with Nagle's algorithm a
    reply written while the previous one is unacknowledged waits for the
    client's delayed ACK, up to 40 ms, on request/response traffic.
    """
    set_no_delay = getattr(transport, "setTcpNoDelay", None)
    if set_no_delay is not None:
        with contextlib.suppress(OSError):
            set_no_delay(True)


def address_text(address: object) -> str:
    """
    A listening address as people write it: C{127.0.0.1:5050}, C{[::]:5050},
    C{/run/primecount.sock}.
    """
    if isinstance(address, IPv6Address):
        return f"[{address.host}]:{address.port}"
    if isinstance(address, IPv4Address):
        return f"{address.host}:{address.port}"
    name = getattr(address, "name", None)
    if isinstance(name, bytes):
        return name.decode("utf-8", "replace")
    return str(name if name is not None else address)


class Counts(Protocol):
    """
    Where open connections are counted, in total and per client address.
    """

    def acquire(self, host: str, total: int, perPeer: int | None) -> bool:
        """
        Count one more connection from C{host} unless that would exceed
        C{total} open connections, or C{perPeer} from C{host}.
        """

    def release(self, host: str) -> None:
        """
        Count one connection from C{host} less.
        """


class LocalCounts:
    """
    L{Counts} for a single process.
    """

    def __init__(self) -> None:
        self.total = 0
        self.perPeer: Counter[str] = Counter()

    def acquire(self, host: str, total: int, perPeer: int | None) -> bool:
        if self.total >= total or (perPeer is not None and self.perPeer[host] >= perPeer):
            return False
        self.total += 1
        self.perPeer[host] += 1
        return True

    def release(self, host: str) -> None:
        self.total -= 1
        self.perPeer[host] -= 1
        if self.perPeer[host] <= 0:
            del self.perPeer[host]


class Closable(Protocol):
    """
    What L{Connections} needs of a connection's protocol.
    """

    transport: Any

    def closeWhenDone(self) -> None:
        """
        Stop reading requests; close once every received one is answered.
        """


class Connections:
    """
    The open connections of one process, with their limits.

    @ivar maxConnections: the most open connections, all protocols together.
    @ivar maxPerPeer: the most open connections from one address, or L{None}.
    @ivar episodes: logs what clients do wrong once per episode, with counts.
    """

    _log = Logger()

    def __init__(
        self,
        maxConnections: int = 10000,
        maxPerPeer: int | None = None,
        counts: Counts | None = None,
        clock: Any = None,
    ) -> None:
        """
        @param clock: an C{IReactorTime} that ends the episodes of
            L{episodes} (see L{Episodes}).
        """
        self.maxConnections = maxConnections
        self.maxPerPeer = maxPerPeer
        self._counts: Counts = counts if counts is not None else LocalCounts()
        self._open: dict[Closable, str] = {}
        self._empty: list[Deferred[None]] = []
        self._refusing = False
        self.refused = 0
        self.closing = False
        self.episodes = Episodes(self._log, clock)

    def __len__(self) -> int:
        return len(self._open)

    def __iter__(self) -> Iterator[Closable]:
        return iter(list(self._open))

    def admit(self, host: str) -> bool:
        """
        Whether a new connection from C{host} may be served; counts it if so.
        A refusal is logged once per episode, not once per connection.
        """
        if not self.closing and self._counts.acquire(host, self.maxConnections, self.maxPerPeer):
            if self._refusing:
                self._refusing = False
                self._log.info(
                    "accepting connections again ({refused} refused meanwhile)",
                    refused=self.refused,
                )
                self.refused = 0
            return True
        self.refused += 1
        if not self._refusing and not self.closing:
            self._refusing = True
            self._log.warn(
                "refusing connections with ERR server busy: limit of {total} open "
                "connections{perPeer} reached (first refused: {host})",
                total=self.maxConnections,
                perPeer=f", {self.maxPerPeer} per address" if self.maxPerPeer else "",
                host=host,
            )
        return False

    def opened(self, protocol: Closable, host: str) -> None:
        """
        An admitted connection is open.
        """
        self._open[protocol] = host
        if self.closing:
            protocol.closeWhenDone()

    def closed(self, protocol: Closable) -> None:
        """
        A connection given to L{opened} closed.
        """
        host = self._open.pop(protocol, None)
        if host is None:
            return
        self._counts.release(host)
        if not self._open and self._empty:
            empty, self._empty = self._empty, []
            for d in empty:
                d.callback(None)

    def closeAll(self) -> Deferred[None]:
        """
        Graceful stop: every connection stops reading, answers what it has
        received, then closes. Fires when none is left.
        """
        self.closing = True
        for protocol in self:
            protocol.closeWhenDone()
        return self.whenEmpty()

    def abortAll(self) -> None:
        """
        Drop every connection still open, now.
        """
        for protocol in self:
            if protocol.transport is not None:
                protocol.transport.abortConnection()

    def whenEmpty(self) -> Deferred[None]:
        """
        Fires once no connection is open.
        """
        d: Deferred[None] = Deferred()
        if self._open:
            self._empty.append(d)
        else:
            d.callback(None)
        return d
