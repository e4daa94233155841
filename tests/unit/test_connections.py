# -*- test-case-name: tests.unit.test_connections -*-
"""
Connection limits and the orderly stop, in units (a real server:
L{tests.system.test_connections_process}).
"""

from __future__ import annotations

import errno
import socket
from typing import Any

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.protocol import Factory
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import formatEvent
from twisted.trial.unittest import SynchronousTestCase, TestCase

from primecount.journal import NullJournal
from primecount.server import connections as connections_module
from primecount.server.connections import (
    Connections,
    LocalCounts,
    RefusingPort,
    address_text,
    no_delay,
    peer_of,
)
from primecount.server.service import PrimecountService
from tests.doubles import Harness
from tests.helpers import recv_all
from tests.unit.test_episodes import capture


class LocalCountsTests(SynchronousTestCase):
    """
    L{LocalCounts}: total and per-address limits.
    """

    def test_totalAndPerPeer(self) -> None:
        counts = LocalCounts()
        self.assertTrue(counts.acquire("a", 3, 2))
        self.assertTrue(counts.acquire("a", 3, 2))
        self.assertFalse(counts.acquire("a", 3, 2))
        self.assertTrue(counts.acquire("b", 3, 2))
        self.assertFalse(counts.acquire("c", 3, 2))
        counts.release("a")
        self.assertTrue(counts.acquire("c", 3, 2))
        self.assertEqual((counts.total, dict(counts.perPeer)), (3, {"a": 1, "b": 1, "c": 1}))

    def test_releaseForgetsIdleAddresses(self) -> None:
        counts = LocalCounts()
        counts.acquire("a", 10, None)
        counts.release("a")
        self.assertEqual(dict(counts.perPeer), {})


class PeerTests(SynchronousTestCase):
    """
    L{peer_of} names every kind of address.
    """

    def test_listeningAddressText(self) -> None:
        self.assertEqual(address_text(IPv4Address("TCP", "127.0.0.1", 5050)), "127.0.0.1:5050")
        self.assertEqual(address_text(IPv6Address("TCP", "::", 5050)), "[::]:5050")
        self.assertEqual(address_text(UNIXAddress(b"/run/pc.sock")), "/run/pc.sock")

    def test_addresses(self) -> None:
        self.assertEqual(peer_of(IPv4Address("TCP", "127.0.0.1", 5)), ("127.0.0.1", 5))
        self.assertEqual(peer_of(IPv6Address("TCP", "::1", 6)), ("::1", 6))

    def test_unixClientsAreUnixAndTheSocketPath(self) -> None:
        listening = UNIXAddress(b"/run/pc.sock")
        self.assertEqual(peer_of(UNIXAddress(None), listening), ("unix:/run/pc.sock", 0))
        self.assertEqual(peer_of(UNIXAddress(b""), listening), ("unix:/run/pc.sock", 0))
        # A client that bound a path of its own is named by it.
        self.assertEqual(peer_of(UNIXAddress(b"/tmp/me"), listening), ("unix:/tmp/me", 0))
        self.assertEqual(peer_of(UNIXAddress(None)), ("unix:", 0))

    def test_unixClientJournalledAsUnixPath(self) -> None:
        h = Harness()
        transport = StringTransport(
            hostAddress=UNIXAddress(b"/run/pc.sock"), peerAddress=UNIXAddress(None)
        )
        protocol = h.factory.buildProtocol(UNIXAddress(None))
        protocol.makeConnection(transport)
        h.send(b"abc2a\n", protocol)
        self.assertEqual(transport.value(), "2 sí\n".encode())
        record = h.journal.records[-1]
        self.assertEqual((record.peer, record.port), ("unix:/run/pc.sock", 0))


class NoDelayTests(SynchronousTestCase):
    """
    L{no_delay} turns Nagle's algorithm off where the transport can.
    """

    def test_setsNoDelay(self) -> None:
        calls: list[bool] = []
        transport = type("T", (), {"setTcpNoDelay": lambda self, on: calls.append(on)})()
        no_delay(transport)
        self.assertEqual(calls, [True])

    def test_transportsWithoutItAreLeftAlone(self) -> None:
        no_delay(object())

    def test_countConnectionsSetIt(self) -> None:
        from twisted.internet import tcp
        from twisted.internet.testing import StringTransport

        from primecount.server.countprotocol import CountProtocol

        set_: list[bool] = []
        h = Harness()
        transport = StringTransport()
        transport.setTcpNoDelay = set_.append  # type: ignore[attr-defined]
        protocol = CountProtocol()
        protocol.factory = h.factory
        protocol.makeConnection(transport)
        self.assertEqual(set_, [True])
        # The real transports have it.
        self.assertTrue(hasattr(tcp.Connection, "setTcpNoDelay"))


class Closable:
    def __init__(self) -> None:
        self.closing = 0
        self.transport: Any = None

    def closeWhenDone(self) -> None:
        self.closing += 1


class ConnectionsTests(SynchronousTestCase):
    """
    L{Connections}: admission, and closing everything.
    """

    def test_refusalsLoggedOncePerEpisodeNotEndedByTheNextAdmission(self) -> None:
        """
        Clients knocking at a full server, let in as others leave: refusals
        and admissions alternate, and that is one episode, logged when it
        starts and when no connection was refused for C{quiet} seconds.
        """
        clock = Clock()
        connections = Connections(1, clock=clock)
        events = capture(self)
        for _ in range(500):  # 50 s of churn
            holder = Closable()
            self.assertTrue(connections.admit("a"))
            connections.opened(holder, "a")
            for _ in range(3):
                self.assertFalse(connections.admit("b"))
            connections.closed(holder)
            clock.advance(0.1)
        said = [
            formatEvent(e) for e in events if e.get("log_namespace", "").endswith("Connections")
        ]
        self.assertEqual(len(said), 1, said)
        self.assertIn("limit of 1 open connection reached (first refused: b", said[0])
        for _ in range(11):
            clock.advance(1)
        said = [
            formatEvent(e) for e in events if e.get("log_namespace", "").endswith("Connections")
        ]
        self.assertEqual(
            said[1:],
            ["connections refused at the connection limit: 1500 in 50 s; none for 10 s now"],
        )

    def test_closeAllWaitsForEveryConnection(self) -> None:
        connections = Connections()
        one, two = Closable(), Closable()
        for p in (one, two):
            connections.admit("h")
            connections.opened(p, "h")
        closed = connections.closeAll()
        self.assertEqual((one.closing, two.closing), (1, 1))
        connections.closed(one)
        self.assertNoResult(closed)
        connections.closed(two)
        self.successResultOf(closed)

    def test_noNewConnectionsWhileClosing(self) -> None:
        connections = Connections()
        self.successResultOf(connections.closeAll())
        self.assertFalse(connections.admit("h"))


class GracefulStopTests(SynchronousTestCase):
    """
    L{PrimecountService.stopService}: answer, then close, within a bound.
    """

    def service(self, h: Harness, timeout: float = 10.0) -> PrimecountService:
        service = PrimecountService(
            h.pipeline, NullJournal(), h.connections, "", timeout, h.reactor
        )
        service.startService()
        return service

    def test_receivedRequestsAnsweredBeforeStop(self) -> None:
        h = Harness()
        service = self.service(h)
        h.pool.hold = True
        h.send(b"abc2a\nabacada\n")
        stopped = service.stopService()
        self.assertNoResult(stopped)
        h.pool.release()
        self.assertEqual(h.replies(), ["2 sí\n".encode(), b"4 no\n"])
        self.assertTrue(h.transport.disconnecting)
        h.protocol.connectionLost(None)
        self.successResultOf(stopped)

    def test_stuckConnectionsDroppedAfterTimeout(self) -> None:
        h = Harness()
        service = self.service(h, timeout=3)
        h.pool.hold = True
        h.send(b"abc2a\n")
        aborted: list[bool] = []
        h.transport.abortConnection = lambda: aborted.append(True)  # type: ignore[method-assign]
        stopped = service.stopService()
        h.reactor.advance(2.9)
        self.assertEqual(aborted, [])
        h.reactor.advance(0.2)
        self.assertEqual(aborted, [True])
        h.protocol.connectionLost(None)
        # The request still in the journal's hands is waited for.
        self.assertNoResult(stopped)
        h.pool.release()
        self.successResultOf(stopped)


class FakeListener:
    """
    A listening socket whose C{accept} fails with EMFILE while the reserve
    descriptor is held, and hands out the client ends of socket pairs.
    """

    def __init__(self, waiting: int) -> None:
        self.waiting = waiting
        self.peers: list[socket.socket] = []

    def accept(self) -> tuple[socket.socket, tuple[str, int]]:
        if not self.waiting:
            raise OSError(errno.EAGAIN, "no more")
        if connections_module.reserve()._fd is not None:
            raise OSError(errno.EMFILE, "Too many open files")
        self.waiting -= 1
        server, client = socket.socketpair()
        client.sendall(b"abc2a\n")  # a request, unread
        self.peers.append(client)
        return server, ("192.0.2.9", 40000 + self.waiting)


class RefusingPortTests(SynchronousTestCase):
    """
    L{RefusingPort}: with no descriptor left, accept on the reserve one and
    answer ERR server busy.
    """

    def test_outOfDescriptorsRefusesWithReply(self) -> None:
        events = capture(self)
        clock = Clock()
        port = RefusingPort(0, Factory(), reactor=clock)  # type: ignore[arg-type]
        listener = FakeListener(waiting=5)
        port.socket = listener  # type: ignore[assignment]
        port.refusal = b"ERR server busy\n"
        port.episodes = Connections(clock=clock).episodes
        port.doRead()
        self.assertEqual(port.refused, 5)
        for peer in listener.peers:
            self.assertEqual(recv_all(peer, timeout=5), b"ERR server busy\n")
            peer.close()
        # The reserve is held again, and the episode was logged once.
        self.assertIsNotNone(connections_module.reserve()._fd)
        said = [e for e in events if "out of file descriptors" in e.get("log_format", "")]
        self.assertEqual(len(said), 1)
        clock.advance(60)
        summary = [e for e in events if "4 more" in formatEvent(e)]
        self.assertEqual(len(summary), 1, [formatEvent(e) for e in events])


class InheritedNoDelayTests(TestCase):
    """
    C{TCP_NODELAY} is set once on the listening socket and inherited by the
    sockets it accepts: no C{setsockopt} per connection.
    """

    def test_acceptedSocketsInheritNoDelay(self) -> Any:
        from twisted.internet import reactor as globalReactor
        from twisted.internet.defer import Deferred
        from twisted.internet.protocol import Protocol

        from primecount.server.connections import RefusingReactor, no_delay

        made: Deferred[Any] = Deferred()

        class Probe(Protocol):
            def connectionMade(self) -> None:
                calls: list[bool] = []
                transport: Any = self.transport
                original = transport.setTcpNoDelay
                transport.setTcpNoDelay = lambda on: (calls.append(on), original(on))
                no_delay(transport)
                handle = transport.getHandle()
                made.callback((handle.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY), calls))
                transport.loseConnection()

        factory = Factory.forProtocol(Probe)
        port = RefusingReactor(globalReactor, b"", None).listenTCP(
            0, factory, interface="127.0.0.1"
        )
        self.addCleanup(port.stopListening)
        client = socket.create_connection(("127.0.0.1", port.getHost().port), timeout=10)
        self.addCleanup(client.close)

        def check(result: tuple[int, list[bool]]) -> None:
            self.assertEqual(result, (1, []))

        return made.addCallback(check)
