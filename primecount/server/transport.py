# -*- test-case-name: tests.unit.test_countprotocol -*-
"""
Sending a reply at once when nothing is queued.

Twisted's C{FileDescriptor.write} never sends: it queues the bytes and asks
the reactor to watch the socket for writability, so every reply costs a
second reactor event (wrapped, like every event, in C{callWithLogger}), the
C{send()} from there, and two C{epoll_ctl} calls to start and stop watching.
asyncio's transports try C{send()} first and queue only what the kernel did
not take. L{write_now} does what asyncio does, for one write; nothing in
Twisted is patched.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import tcp


def write_now(transport: Any, data: bytes) -> None:
    """
    Write C{data}, sending it at once when nothing is queued before it.

    C{transport.write} only buffers: the bytes leave on the reactor's next
    turn, after two C{epoll_ctl} calls to watch and unwatch the socket for
    writing. For a reply of a few bytes to a client that is reading, that is
    most of the cost of answering. A plain TCP or UNIX connection with an
    empty buffer is offered the bytes directly (C{writeSomeData}, one
    C{send}); whatever the socket does not take goes through C{write} as
    usual, keeping order and flow control. TLS and anything else always use
    C{write}.
    """
    if (
        isinstance(transport, tcp.Connection)
        and not getattr(transport, "TLS", True)
        and transport.connected
        and not transport.disconnecting
        and not transport.dataBuffer
        and not getattr(transport, "_tempDataBuffer", True)
    ):
        sent = transport.writeSomeData(data)
        if isinstance(sent, int) and sent >= 0:
            data = data[sent:]
        if not data:
            return
    transport.write(data)


#: What L{buffered} assumes a transport it cannot look into holds once it
#: has paused its producer: Twisted's high-water mark (C{bufferSize}).
HIGH_WATER = 1 << 16


def buffered(transport: Any) -> int:
    """
    The bytes written to C{transport} and not yet sent: what a
    C{FileDescriptor} (TCP, UNIX) holds in its buffers; for any other
    transport (TLS), its high-water mark, L{HIGH_WATER}.
    """
    data = getattr(transport, "dataBuffer", None)
    if data is None:
        return HIGH_WATER
    return len(data) - getattr(transport, "offset", 0) + getattr(transport, "_tempDataLen", 0)
