# -*- test-case-name: tests.unit.test_proxyheader -*-
"""
Connections behind HAProxy: L{ProxyHeaderReceiver}, mixed into the count and
range protocols, reads the PROXY protocol header before a connection's own
bytes and admits the connection under the client address it names.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from primecount.core import proxyheader
from primecount.core.outcomes import BAD_PROXY_HEADER, SERVER_BUSY, Outcome
from primecount.journal.records import PROTOCOL_COUNT


def proxy_peer(source: tuple[str, int]) -> tuple[str, int]:
    """
    The peer to journal for the client a PROXY header names: an IP address
    as it is, a UNIX socket as C{unix:PATH} (as for a client connected
    over a UNIX socket directly).
    """
    host, port = source
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return f"unix:{host}", 0
    return host, port


class ProxyHeaderReceiver:
    """
    Reads the PROXY protocol header (version 1 or 2) that HAProxy sends
    before a relayed connection's own bytes (C{--listen haproxy:…},
    C{--range-listen haproxy:…}), takes the client's address from it, and
    only then admits the connection, under that address (C{--max-per-peer},
    the journal). A C{LOCAL} header (HAProxy's own health check) and
    C{PROXY UNKNOWN} keep the connection's own address.

    Mixed into a protocol, which sets C{_awaitingProxy} when a connection
    behind HAProxy is made, passes every read to L{_proxyHeader} while it is
    set, and provides C{factory} (with C{connections} and C{metrics}), the
    C{peer} and C{port} of the client, C{_admitted()} (count the connection
    open) and C{_refuse(outcome)} (say why if the protocol can, and close).
    A refused connection is logged once per episode, never counted open.

    @cvar metricsProtocol: the protocol's name in metrics (L{PROTOCOL_COUNT}, ...).
    @cvar refusals: how the episodes of refusals are named, before the
        outcome.
    """

    metricsProtocol = PROTOCOL_COUNT
    refusals = "connections closed with ERR"
    factory: Any
    peer: str
    port: int
    _awaitingProxy = False  # behind HAProxy, before its header
    _proxyBuffer = b""
    _proxyRefused = False

    def _admitted(self) -> None:
        raise NotImplementedError

    def _refuse(self, outcome: Outcome) -> None:
        raise NotImplementedError

    def _proxyHeader(self, data: bytes) -> bytes:
        """
        Take C{data}, the next bytes of the connection while it waits for
        its header; admit the connection once the header is complete.

        @return: the bytes after the header (empty while it is incomplete
            or when the connection was refused).
        """
        if self._proxyRefused:
            return b""
        result = proxyheader.parse(self._proxyBuffer + data)
        if isinstance(result, proxyheader.Incomplete):
            self._proxyBuffer += data
            return b""
        self._proxyBuffer = b""
        if isinstance(result, proxyheader.Bad):
            self._proxyRefuse(BAD_PROXY_HEADER)
            return b""
        if result.source is not None:
            self.peer, self.port = proxy_peer(result.source)
        if not self.factory.connections.admit(self.peer):
            self.factory.metrics.requests(self.metricsProtocol, SERVER_BUSY)
            self._proxyRefuse(SERVER_BUSY)
            return b""
        self._awaitingProxy = False
        self._admitted()
        return result.rest

    def _proxyRefuse(self, outcome: Outcome) -> None:
        """
        Refuse the connection before admitting it (C{_awaitingProxy} stays
        set: connectionLost has nothing to release).
        """
        self._proxyRefused = True
        self.factory.connections.episodes.event(
            f"{self.refusals} {outcome.text}",
            "{peer}:{port}: {reason}; closing (more such are counted, not logged)",
            peer=self.peer,
            port=self.port,
            reason=outcome.text,
        )
        self._refuse(outcome)
