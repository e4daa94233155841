"""
Tests for L{primecount.server.transport}: a reply is sent at once when
nothing is queued, and Twisted's buffered path keeps order and errors.
"""

from __future__ import annotations

import select
import socket
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import TestCase

from primecount.server.connections import RefusingPort
from primecount.server.transport import WriteThroughServer


class Capture(Protocol):
    """
    Runs C{onConnect(transport)} when connected and fires C{lost} when the
    connection ends.
    """

    def __init__(self, onConnect: Any, lost: defer.Deferred[Any]) -> None:
        self.onConnect = onConnect
        self.lost = lost

    def connectionMade(self) -> None:
        self.onConnect(self.transport)

    def connectionLost(self, reason: Any) -> None:
        self.lost.callback(reason.type)


def read_exactly(client: socket.socket, n: int, timeout: float = 10.0) -> bytes:
    """
    Read C{n} bytes from a non-blocking C{client}, waiting at most
    C{timeout} seconds in all.
    """
    chunks = []
    got = 0
    while got < n:
        ready, _, _ = select.select([client], [], [], timeout)
        if not ready:
            break
        chunk = client.recv(min(65536, n - got))
        if not chunk:
            break
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


class WriteThroughTests(TestCase):
    """
    L{WriteThroughServer}, on real sockets on 127.0.0.1.
    """

    def serve(
        self, onConnect: Any, rcvbuf: int | None = None
    ) -> tuple[socket.socket, defer.Deferred[Any]]:
        """
        Listen on a L{RefusingPort}, connect a client, and run
        C{onConnect(transport)} on the server side.

        @param rcvbuf: the client's C{SO_RCVBUF}, set before it connects
            (which turns the kernel's receive buffer autotuning off).

        @return: the client socket (non-blocking) and a Deferred that fires
            when the server side of the connection is lost.
        """
        lost: defer.Deferred[Any] = defer.Deferred()
        factory = Factory.forProtocol(lambda: Capture(onConnect, lost))
        port = RefusingPort(0, factory, 50, "127.0.0.1", reactor)
        port.startListening()
        self.addCleanup(port.stopListening)
        client = socket.socket()
        if rcvbuf is not None:
            client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        client.connect(("127.0.0.1", port.getHost().port))
        client.setblocking(False)
        self.addCleanup(client.close)
        return client, lost

    def test_portsUseIt(self) -> None:
        """
        Our listening ports make L{WriteThroughServer} transports.
        """
        self.assertIs(RefusingPort.transport, WriteThroughServer)

    def test_sentAtOnce(self) -> None:
        """
        With nothing queued, C{write} sends before returning: the bytes are
        in the client's socket and the reactor is not asked to watch for
        writability (Twisted's own transport would be).
        """
        seen: dict[str, Any] = {}
        connected: defer.Deferred[None] = defer.Deferred()

        def onConnect(transport: Any) -> None:
            transport.write(b"2 s\xc3\xad\n")
            transport.writeSequence([b"4 ", b"no\n"])
            seen["watched"] = transport in reactor.getWriters()
            seen["type"] = type(transport)
            connected.callback(None)

        client, lost = self.serve(onConnect)

        def check(_: None) -> defer.Deferred[Any]:
            self.assertIs(seen["type"], WriteThroughServer)
            self.assertFalse(seen["watched"])
            self.assertEqual(read_exactly(client, 11), b"2 s\xc3\xad\n4 no\n")
            client.close()
            return lost

        return connected.addCallback(check)

    def test_restQueuedInOrder(self) -> None:
        """
        What the kernel does not take is queued, and a later write goes
        behind it: the client reads every byte in order.
        """
        # 1 MiB: far more than the 4 KiB send and receive buffers set here.
        big = bytes(range(256)) * (4 * 1024)
        seen: dict[str, Any] = {}
        connected: defer.Deferred[None] = defer.Deferred()

        def onConnect(transport: Any) -> None:
            transport.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
            transport.write(big)
            seen["watched"] = transport in reactor.getWriters()
            transport.write(b"tail\n")
            transport.loseConnection()
            connected.callback(None)

        client, lost = self.serve(onConnect, rcvbuf=4096)
        received: list[bytes] = []

        def drain(_: None) -> defer.Deferred[Any]:
            self.assertTrue(seen["watched"])

            # Read without blocking the reactor, which must flush the rest.
            def poll() -> None:
                if lost.called:
                    return
                try:
                    while chunk := client.recv(1 << 20):
                        received.append(chunk)
                except BlockingIOError:
                    pass
                reactor.callLater(0.001, poll)

            poll()
            return lost

        def check(_: Any) -> None:
            client.setblocking(True)
            client.settimeout(10)
            while chunk := client.recv(1 << 20):
                received.append(chunk)
            self.assertEqual(b"".join(received), big + b"tail\n")

        return connected.addCallback(drain).addCallback(check)

    def test_errorGoesToTwisted(self) -> None:
        """
        A write to a connection the peer has reset raises nothing and ends
        in C{connectionLost}, as with Twisted's transport.
        """
        connected: defer.Deferred[Any] = defer.Deferred()

        def onConnect(transport: Any) -> None:
            # Not reading, the server meets the reset only when it writes.
            transport.stopReading()
            connected.callback(transport)

        client, lost = self.serve(onConnect)

        def reset(transport: Any) -> defer.Deferred[Any]:
            client.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
            )
            client.close()
            # Give the reset time to arrive, then write twice.
            d: defer.Deferred[None] = defer.Deferred()
            reactor.callLater(0.05, d.callback, None)

            def write(_: None) -> defer.Deferred[Any]:
                transport.write(b"after reset\n")
                transport.write(b"and again\n")
                return lost

            return d.addCallback(write)

        return connected.addCallback(reset)
