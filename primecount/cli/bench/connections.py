# -*- test-case-name: tests.unit.test_bench,tests.system.test_bench_runs -*-
"""
The load generator's connections: plain C{asyncio.Protocol} objects that
split replies and hand them to their L{LoadGenerator}, one per framing
(lines, the original's read-until-close, the range protocol), idle
connections, and the logical client a connection belongs to.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING

from primecount.cli.bench.plan import MAX_REPLY

if TYPE_CHECKING:
    from primecount.cli.bench.generator import LoadGenerator
    from primecount.cli.bench.idle import IdleConnections


class _Connection(asyncio.Protocol):
    """
    One client connection: splits the byte stream into reply lines.
    """

    __slots__ = ("buffer", "client", "transport")

    def __init__(self, client: _Client) -> None:
        self.client: _Client | None = client
        self.transport: asyncio.Transport | None = None
        self.buffer: bytes | bytearray = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.buffer:
            data = bytes(self.buffer) + data
        if b"\n" not in data:
            self.buffer = data
            if len(data) > MAX_REPLY and self.client is not None:
                self.client.generator.overlong(self.client)
            return
        lines = data.split(b"\n")
        self.buffer = lines.pop()
        if self.client is not None:
            self.client.generator.replies(self.client, lines)

    def eof_received(self) -> None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        client = self.client
        if client is not None:
            client.generator.lost(client, self)


class _ReadConnection(_Connection):
    """
    One connection of the read framing: the reply is everything that
    arrives until the server closes the connection.
    """

    __slots__ = ()

    def data_received(self, data: bytes) -> None:
        self.buffer = bytes(self.buffer) + data
        if len(self.buffer) > MAX_REPLY and self.client is not None:
            self.client.generator.overlong(self.client)

    def eof_received(self) -> None:
        client, reply = self.client, bytes(self.buffer)
        if client is None or not reply:
            return None  # closed with no reply: connection_lost counts it
        self.buffer = b""
        # One reply line and its LF, nothing else; anything more is wrong.
        line = reply[:-1] if reply.endswith(b"\n") and reply.count(b"\n") == 1 else reply
        client.generator.replies(client, [line])
        return None


class _RangeConnection(_Connection):
    """
    One range-protocol connection: splits the byte stream into replies,
    each N (C{!I}) followed by N primes.
    """

    __slots__ = ()

    def data_received(self, data: bytes) -> None:
        client = self.client
        if client is None:
            return
        buffer = self.buffer
        if not isinstance(buffer, bytearray):
            buffer = self.buffer = bytearray(buffer)
        buffer.extend(data)
        replies = []
        generator = client.generator
        while len(buffer) >= 4:
            count = int.from_bytes(buffer[:4], "big")
            if count > generator.max_primes:
                generator.overlong(client)
                return
            size = 4 + 4 * count
            if len(buffer) < size:
                break
            replies.append(bytes(buffer[:size]))
            del buffer[:size]
        if replies:
            generator.replies(client, replies)


class _Idle(asyncio.Protocol):
    """
    An extra connection that only stays open.
    """

    def __init__(self, owner: IdleConnections) -> None:
        self.owner = owner
        self.transport: asyncio.BaseTransport | None = None
        self.open = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.open = True

    def connection_lost(self, exc: Exception | None) -> None:
        self.open = False
        self.owner.idle_lost(self)


class _Client:
    """
    One logical client: its connection and its requests in flight, each as
    C{(message index, due time, send time)}.
    """

    __slots__ = ("conn", "connecting", "generator", "inflight", "task")

    def __init__(self, generator: LoadGenerator) -> None:
        self.generator = generator
        self.conn: _Connection | None = None
        self.connecting = False
        self.task: asyncio.Task[None] | None = None
        self.inflight: deque[tuple[int, float, float]] = deque()

    def detach(self) -> _Connection | None:
        """
        Part from the current connection, if any, and return it: its late
        events no longer reach the generator.
        """
        conn = self.conn
        if conn is not None:
            self.conn = None
            conn.client = None
        return conn
