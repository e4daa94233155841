# -*- test-case-name: tests.unit.test_metricsport -*-
"""
The metrics port's limits (L{primecount.server.metricsport}) and its share
of descriptors, in units; a real server with a flooded metrics port is in
L{tests.system.test_metricsport_process}.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import formatEvent
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.test.requesthelper import DummyChannel

from primecount import compose
from primecount.metrics.http import BodilessRequest, metricsSite
from primecount.metrics.prometheus import Metrics
from primecount.server.listeners import metrics_wanted
from primecount.server.metricsport import BUSY, METRICS_CONNECTIONS, MetricsGate
from tests.unit.test_episodes import capture

GET = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"


class GateTests(SynchronousTestCase):
    """
    L{MetricsGate}: a connection limit and an idle timeout in front of the
    C{/metrics} site.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        site = metricsSite(Metrics(), self.clock)
        self.gate = MetricsGate(site, self.clock, maxConnections=2, timeout=10)
        self.addCleanup(self.gate.stopFactory)

    def connect(self, n: int = 1) -> tuple[Any, StringTransport]:
        peer = IPv4Address("TCP", "192.0.2.9", 40000 + n)
        protocol = self.gate.buildProtocol(peer)
        transport = StringTransport(peerAddress=peer)
        protocol.makeConnection(transport)
        return protocol, transport

    def test_servesMetrics(self) -> None:
        protocol, transport = self.connect()
        protocol.dataReceived(GET)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 200 OK"), transport.value()[:80])
        self.assertIn(b"primecount_requests_total", transport.value())

    def test_beyondTheLimitA503ThenRoomAgain(self) -> None:
        first, _ = self.connect(1)
        self.connect(2)
        _, refused = self.connect(3)
        self.assertEqual(refused.value(), BUSY)
        self.assertTrue(refused.disconnecting)
        first.connectionLost(None)
        protocol, transport = self.connect(4)
        protocol.dataReceived(GET)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 200 OK"))

    def test_idleConnectionsAreDropped(self) -> None:
        idle, idleTransport = self.connect(1)
        busy, busyTransport = self.connect(2)
        for _ in range(3):
            self.clock.advance(6)
            busy.dataReceived(GET)
        self.assertTrue(idleTransport.disconnected)
        self.assertFalse(busyTransport.disconnected)
        idle.connectionLost(None)
        # Its place is free.
        _, transport = self.connect(3)
        self.assertEqual(transport.value(), b"")

    def test_refusalsAndIdleClosesAreLoggedOncePerEpisode(self) -> None:
        events = capture(self)
        for n in range(100):
            protocol, _ = self.connect(n)
            if n % 2:
                protocol.connectionLost(None)
            self.clock.advance(0.5)
        said = [formatEvent(e) for e in events if "metrics" in e.get("log_format", "").lower()]
        self.assertEqual(len(said), 2, said)
        self.assertIn("limit of 2 open reached", said[0])
        self.assertIn("closing idle metrics connection", said[1])


class BodyTests(SynchronousTestCase):
    """
    The metrics site keeps no request body.
    """

    def test_bodyIsDropped(self) -> None:
        request = BodilessRequest(DummyChannel())
        request.gotLength(10**9)
        request.handleContentChunk(b"x" * 65536)
        self.assertEqual(request.content.getvalue(), b"")


class DescriptorShareTests(SynchronousTestCase):
    """
    L{compose.connection_limit} sets the metrics port's connections aside
    before the count port's share of descriptors.
    """

    def test_metricsConnectionsComeOffTheLimit(self) -> None:
        self.patch(compose, "raise_open_files_limit", lambda wanted: 256)
        alone = compose.connection_limit(10000, warn=False)
        withMetrics = compose.connection_limit(
            10000, warn=False, others=compose.metrics_connections(metrics_wanted(9100, "127.0.0.1"))
        )
        self.assertEqual(alone, 256 - compose.SPARE_DESCRIPTORS)
        self.assertEqual(alone - withMetrics, METRICS_CONNECTIONS)
        self.assertEqual(compose.metrics_connections(None), 0)
