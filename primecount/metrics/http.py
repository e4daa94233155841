# -*- test-case-name: tests.unit.test_metrics,tests.system.test_metrics_process -*-
"""
The C{/metrics} page: the HTTP site that serves a
L{primecount.metrics.prometheus.Metrics} registry, 404 elsewhere.

The port's connection limit and idle timeout are the server's
(L{primecount.server.metricsport}); the site itself keeps no request body.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Any

from twisted.web import http, pages
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from primecount.metrics.prometheus import Metrics


class _NotFound(Resource):
    """
    A resource whose only content is C{/metrics}: any other path is 404.
    """

    def getChild(self, path: bytes, request: Any) -> Any:
        """
        Not found, with Twisted's escaping page.
        """
        return pages.notFound()


class MetricsResource(_NotFound):
    """
    The Prometheus exposition of one registry, rendered on the reactor
    thread (a scrape reads memory, or a few small memory-mapped files).
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        """
        @param registry: what to expose.
        """
        super().__init__()
        self._registry = registry

    def render_GET(self, request: Request) -> bytes:
        """
        The text format the client asks for (Prometheus text, or
        OpenMetrics when its C{Accept} header prefers it).
        """
        from prometheus_client.exposition import choose_encoder

        accept = request.getHeader(b"accept")
        encoder, contentType = choose_encoder(accept.decode("latin-1") if accept else "")
        request.setHeader(b"content-type", contentType.encode("ascii"))
        return encoder(self._registry)


class _Discarded(io.BytesIO):
    """
    A request body nobody reads: its bytes are dropped as they arrive.
    """

    def write(self, data: Any) -> int:
        """
        Drop C{data}.
        """
        return len(data)


class BodilessRequest(Request):
    """
    A request whose body is dropped: C{/metrics} is only read with GET, and
    Twisted would keep a body in memory or, past 100 kB, in a temporary file
    (a client could fill the disk through the metrics port).
    """

    def gotLength(self, length: int | None) -> None:
        """
        Whatever the body's length, keep none of it.
        """
        self.content = _Discarded()


class QuietSite(Site):
    """
    A site that writes no access log line per scrape and keeps no request
    body.
    """

    noisy = False
    requestFactory = BodilessRequest

    def log(self, request: http.Request) -> None:
        """
        Log nothing.
        """


def metricsSite(metrics: Metrics, clock: Any = None) -> QuietSite:
    """
    The HTTP site serving C{metrics} at C{/metrics}, 404 elsewhere.

    @param clock: the reactor the site runs on (the global one when
        C{None}).
    """
    root = _NotFound()
    # No mypy-zope here: mypy cannot see the classes' @implementer.
    root.putChild(b"metrics", MetricsResource(metrics.registry))  # type: ignore[arg-type]
    # No idle timeout of the site's own (12 hours by default, and a log line
    # each): the server's gate closes idle connections.
    return QuietSite(root, timeout=None, reactor=clock)
