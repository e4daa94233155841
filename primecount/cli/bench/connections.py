# -*- test-case-name: tests.unit.test_bench,tests.system.test_bench_runs -*-
"""
The load generator's connections: plain C{asyncio.Protocol} objects that
split replies and hand them to a L{ReplySink} (the generator), one per
framing (lines, the original's read-until-close, the range protocol); the
held connections of C{--hold}, which only stay open; and the logical
L{Client} a connection belongs to.

The two protocols here are the seams: a connection knows its sink and a
held connection its L{HeldOwner} only by them, so this module imports
neither the generator nor the held connections' owner.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Protocol

from primecount.cli.bench.plan import MAX_REPLY


class ReplySink(Protocol):
    """
    Where a client's connection hands what it received: the load
    generator, which checks and records it.

    @ivar max_primes: range protocol: the largest N a reply may announce
        before it counts as overlong.
    """

    max_primes: int

    def replies(self, client: Client, lines: list[bytes]) -> None:
        """
        Reply lines (or range replies) arrived for C{client}.
        """

    def overlong(self, client: Client) -> None:
        """
        C{client}'s connection received a reply longer than any correct one.
        """

    def lost(self, client: Client, conn: Connection) -> None:
        """
        C{client}'s connection C{conn} closed without being asked to.
        """


class HeldOwner(Protocol):
    """
    What keeps the held connections: told when the server closes one.
    """

    def held_lost(self, held: HeldConnection) -> None:
        """
        The server closed C{held}.
        """


class Connection(asyncio.Protocol):
    """
    One client connection: splits the byte stream into reply lines.
    """

    __slots__ = ("buffer", "client", "transport")

    def __init__(self, client: Client) -> None:
        self.client: Client | None = client
        self.transport: asyncio.Transport | None = None
        self.buffer: bytes | bytearray = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """
        Keep the transport, to write requests on.
        """
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        """
        Split complete reply lines off and hand them on; keep the rest.
        """
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
        """
        The server closed its side: let the transport close ours.
        """
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        """
        Tell the sink, unless the client has parted from this connection.
        """
        client = self.client
        if client is not None:
            client.generator.lost(client, self)


class ReadConnection(Connection):
    """
    One connection of the read framing: the reply is everything that
    arrives until the server closes the connection.
    """

    __slots__ = ()

    def data_received(self, data: bytes) -> None:
        """
        Keep what arrived; the reply ends when the server closes.
        """
        self.buffer = bytes(self.buffer) + data
        if len(self.buffer) > MAX_REPLY and self.client is not None:
            self.client.generator.overlong(self.client)

    def eof_received(self) -> None:
        """
        The server closed: what arrived is the reply.
        """
        client, reply = self.client, bytes(self.buffer)
        if client is None or not reply:
            return None  # closed with no reply: connection_lost counts it
        self.buffer = b""
        # One reply line and its LF, nothing else; anything more is wrong.
        line = reply[:-1] if reply.endswith(b"\n") and reply.count(b"\n") == 1 else reply
        client.generator.replies(client, [line])
        return None


class RangeConnection(Connection):
    """
    One range-protocol connection: splits the byte stream into replies,
    each N (C{!I}) followed by N primes.
    """

    __slots__ = ()

    def data_received(self, data: bytes) -> None:
        """
        Split complete replies off and hand them on; keep the rest.
        """
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


class HeldConnection(asyncio.Protocol):
    """
    An extra connection that only stays open, silent (C{--hold}).
    """

    def __init__(self, owner: HeldOwner) -> None:
        self.owner = owner
        self.transport: asyncio.BaseTransport | None = None
        self.open = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """
        It is open.
        """
        self.transport = transport
        self.open = True

    def connection_lost(self, exc: Exception | None) -> None:
        """
        It closed: tell the owner.
        """
        self.open = False
        self.owner.held_lost(self)


class Client:
    """
    One logical client: its connection and its requests in flight, each as
    C{(message index, due time, send time)}.
    """

    __slots__ = ("conn", "connecting", "generator", "inflight", "task")

    def __init__(self, generator: ReplySink) -> None:
        self.generator = generator
        self.conn: Connection | None = None
        self.connecting = False
        self.task: asyncio.Task[None] | None = None
        self.inflight: deque[tuple[int, float, float]] = deque()

    def detach(self) -> Connection | None:
        """
        Part from the current connection, if any, and return it: its late
        events no longer reach the generator.
        """
        conn = self.conn
        if conn is not None:
            self.conn = None
            conn.client = None
        return conn
