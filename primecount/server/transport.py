# -*- test-case-name: tests.unit.test_transport -*-
"""
A TCP server transport that sends a reply at once when nothing is queued.

Twisted's C{FileDescriptor.write} never sends: it queues the bytes and asks
the reactor to watch the socket for writability, so every reply costs a
second reactor event (wrapped, like every event, in C{callWithLogger}), the
C{send()} from there, and two C{epoll_ctl} calls to start and stop watching.
asyncio's transports try C{send()} first and queue only what the kernel did
not take; on keep-alive traffic, where a reply always fits the socket buffer,
that is one event and one system call per reply instead of two and three.

L{WriteThroughServer} does what asyncio does: when nothing is queued it
sends at once and hands only the unsent rest (or everything, on any error)
to Twisted's own buffered path, which keeps its ordering, flow control,
producers, half-close and error handling. It is the C{transport} class of
our listening ports (L{primecount.server.connections.RefusingPort}), a
documented extension point of C{tcp.Port}; nothing in Twisted is patched.
"""

from __future__ import annotations

from collections.abc import Iterable

from twisted.internet import tcp


class WriteThroughServer(tcp.Server):
    """
    A L{tcp.Server} whose L{write} sends at once when nothing is queued.

    Whether something is queued is read from C{FileDescriptor}'s buffer
    attributes (C{dataBuffer}, C{offset}, C{_tempDataLen}), the state its
    own C{doWrite} keeps; they have had these names and meanings since
    Twisted 8, and the tests of this module check the behaviour against
    the installed Twisted.
    """

    def write(self, data: bytes) -> None:
        """
        Send C{data} now if nothing is queued before it and the connection
        is open for writing; queue what the kernel does not take.
        """
        if (
            data
            and type(data) is bytes
            and self.connected
            and not self._writeDisconnected
            and not self._tempDataLen
            and self.offset == len(self.dataBuffer)
        ):
            sent = self.writeSomeData(data)
            # An exception instance (connection lost) is left to the
            # buffered path: doWrite meets it again and closes as usual.
            if type(sent) is int and sent > 0:
                if sent == len(data):
                    return
                data = data[sent:]
        super().write(data)

    def writeSequence(self, iovec: Iterable[bytes]) -> None:
        """
        Write the chunks of C{iovec} as one L{write}.
        """
        chunks = list(iovec)
        for chunk in chunks:
            if not isinstance(chunk, bytes):
                # Twisted's own check and its error message.
                super().writeSequence(chunks)
                return
        self.write(b"".join(chunks))
