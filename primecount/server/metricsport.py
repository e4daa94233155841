# -*- test-case-name: tests.unit.test_metricsport,tests.system.test_metricsport_process -*-
"""
The metrics port's own limits: L{MetricsGate} wraps the C{/metrics} site.

Twisted's HTTP server has no connection limit and closes an idle
connection only after 12 hours: 300 idle connections to the metrics port
took every descriptor of the process, and then neither the count port nor
C{/metrics} answered. Here the metrics port serves at most
L{METRICS_CONNECTIONS} connections at once (more are answered C{503} and
closed) and closes a connection that sent nothing for L{METRICS_TIMEOUT}
seconds. Those connections are reserved from the open-files limit before
the count port's share is computed
(L{primecount.compose.connection_limit}), and the port accepts
through a L{primecount.server.connections.RefusingPort} sharing the
process's reserve descriptor, so that it never takes a descriptor the
count port counts on, and out of descriptors it answers C{503} instead of
leaving the client waiting. Refusals and idle closes are logged once per
episode.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.protocol import Protocol
from twisted.logger import Logger, LogLevel
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory

from primecount.metrics.episodes import Episodes
from primecount.server.connections import address_text, peer_of
from primecount.server.idle import IdleSweep

#: The most connections the metrics port serves at once: a Prometheus
#: server or two, a dashboard, someone with curl.
METRICS_CONNECTIONS = 10

#: Idle seconds before a metrics connection is closed: scrapes come every
#: 15 to 60 s and take milliseconds; a scraper that keeps its connection
#: between them just reconnects.
METRICS_TIMEOUT = 10.0

_BUSY_BODY = b"too many connections to the metrics port\n"

#: What a client beyond the metrics port's limits is told.
BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Length: %d\r\n"
    b"Connection: close\r\n\r\n%s" % (len(_BUSY_BODY), _BUSY_BODY)
)


class _Busy(Protocol):
    """
    Tells a client beyond the limit so, then closes.
    """

    def connectionMade(self) -> None:
        transport: Any = self.transport
        transport.write(BUSY)
        transport.loseConnection()


class _Watched(ProtocolWrapper):
    """
    A metrics connection, watched for idleness.

    @ivar lastActive: when its client last sent something.
    """

    factory: MetricsGate
    lastActive: float | None = None

    def connectionMade(self) -> None:
        self.factory.idle.watch(self)
        super().connectionMade()

    def dataReceived(self, data: bytes) -> None:
        self.lastActive = self.factory.idle.now()
        super().dataReceived(data)

    def connectionLost(self, reason: Any = None) -> None:
        self.factory.idle.unwatch(self)
        super().connectionLost(reason)

    def idleTimeout(self) -> None:
        """
        Nothing came for L{METRICS_TIMEOUT} seconds: drop it (a response
        the client does not read would keep a graceful close waiting).
        """
        transport: Any = self.transport
        self.factory.episodes.event(
            "idle metrics connections closed",
            "closing idle metrics connection from {peer} (more such are counted, not logged)",
            peer=address_text(transport.getPeer()),
        )
        transport.abortConnection()


class MetricsGate(WrappingFactory):
    """
    The metrics site behind a connection limit and an idle timeout.

    @ivar maxConnections: the most connections served at once.
    @ivar idle: closes connections idle for the timeout.
    @ivar episodes: where refusals and idle closes are logged, once per
        episode.
    """

    protocol = _Watched
    noisy = False
    _log = Logger()

    def __init__(
        self,
        site: Any,
        clock: Any,
        maxConnections: int = METRICS_CONNECTIONS,
        timeout: float = METRICS_TIMEOUT,
        episodes: Episodes | None = None,
    ) -> None:
        """
        @param site: the HTTP site serving C{/metrics}.
        @param clock: the reactor's C{IReactorTime}.
        @param maxConnections: the most connections served at once.
        @param timeout: idle seconds before a connection is closed.
        @param episodes: where refusals and idle closes are logged.
        """
        super().__init__(site)
        self.maxConnections = maxConnections
        self.idle = IdleSweep(clock, timeout)
        self.episodes = episodes if episodes is not None else Episodes(self._log, clock)

    def buildProtocol(self, addr: Any) -> Any:
        """
        A watched connection of the site, or within the limit a C{503}.
        """
        if len(self.protocols) < self.maxConnections:
            return super().buildProtocol(addr)
        self.episodes.event(
            "metrics connections refused at their limit",
            "refusing metrics connections with 503: limit of {limit} open reached (first "
            "refused: {peer}; more are counted, not logged)",
            level=LogLevel.warn,
            ended="metrics connections refused at their limit: {total} in {seconds:.0f} s",
            limit=self.maxConnections,
            peer=peer_of(addr)[0],
        )
        busy = _Busy()
        busy.factory = self
        return busy

    def stopFactory(self) -> None:
        """
        The port closed: stop sweeping, log what the episodes counted.
        """
        self.idle.stop()
        self.episodes.flush()
        super().stopFactory()
