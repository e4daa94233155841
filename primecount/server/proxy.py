# -*- test-case-name: tests.unit.test_proxyheader -*-
"""
Connections behind HAProxy: L{ProxyHeaderReceiver}, mixed into the count and
range protocols, refuses a connection that does not come from a trusted
proxy (C{--trusted-proxies}), reads the PROXY protocol header before a
connection's own bytes and admits the connection under the client address
it names.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from typing import Any, Protocol

from twisted.internet.address import UNIXAddress
from twisted.logger import LogLevel

from primecount.core import proxyheader
from primecount.core.outcomes import BAD_PROXY_HEADER, SERVER_BUSY, UNTRUSTED_PROXY, Outcome
from primecount.journal.records import PROTOCOL_COUNT
from primecount.metrics.episodes import Episodes
from primecount.metrics.recorder import MetricsRecorder
from primecount.server.connections import Connections
from primecount.server.listeners import HAPROXY

#: An endpoint description (after C{haproxy:}) of a UNIX socket: C{unix:…},
#: or a socket systemd passes with C{domain=UNIX}.
_UNIX_DESCRIPTION = re.compile(r"unix:|systemd:(.*:)?domain=UNIX(:|$)")


def check_trusted(
    descriptions: Iterable[tuple[str, str]], trusted: proxyheader.TrustedProxies
) -> None:
    """
    Refuse at start a C{haproxy:} listener on a UNIX socket unless
    C{--trusted-proxies} trusts UNIX sockets: every connection to it would
    be refused (its peers have no address to trust), and trusting them is
    the operator's statement that the socket's permissions let only the
    proxy connect.

    @param descriptions: (option, endpoint description) of every listener.
    @raise ValueError: in one line naming the listener and what to do.
    """
    if trusted.unix:
        return
    for option, description in descriptions:
        if description.startswith(HAPROXY) and _UNIX_DESCRIPTION.match(description[len(HAPROXY) :]):
            raise ValueError(
                f"--{option} {description}: a UNIX-socket peer has no address to trust; "
                f"add {proxyheader.UNIX!r} to --trusted-proxies once the socket's "
                "permissions (mode=660 and its directory) let only the proxy connect"
            )


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


class ProxyFactory(Protocol):
    """
    What the factory of a connection behind HAProxy provides to
    L{ProxyHeaderReceiver} (L{primecount.server.countprotocol.CountFactory}
    and L{primecount.server.rangeprotocol.RangeFactory} do).
    """

    @property
    def trustedProxies(self) -> proxyheader.TrustedProxies:
        """
        The only addresses whose connections may name a client
        (C{--trusted-proxies}).
        """

    @property
    def connections(self) -> Connections:
        """
        The process's open connections and their limits: the header's
        client is admitted under them.
        """

    @property
    def metrics(self) -> MetricsRecorder:
        """
        Where refusals are counted.
        """

    @property
    def episodes(self) -> Episodes:
        """
        Where refusals are logged, once per episode.
        """


class ProxyHost(Protocol):
    """
    What a protocol that mixes in L{ProxyHeaderReceiver} provides to it
    (mypy checks it wherever the host calls the receiver's methods).
    """

    @property
    def factory(self) -> ProxyFactory:
        """
        The factory that made the connection.
        """

    @property
    def transport(self) -> Any:
        """
        The connection's transport; its peer is the proxy's address.
        """

    #: The client's address: the proxy's until the header names the client.
    peer: str
    #: The client's port.
    port: int

    def connectionAdmitted(self) -> None:
        """
        The connection is admitted under its client's address: count it
        open.
        """

    def refuseConnection(self, outcome: Outcome) -> None:
        """
        The connection is refused (C{outcome} says why): say so if the
        protocol can, and close.
        """


class _Receiving(ProxyHost, Protocol):
    """
    A L{ProxyHost} with L{ProxyHeaderReceiver} mixed in: what the
    receiver's own methods use.
    """

    metricsProtocol: str
    refusals: str
    awaitingProxyHeader: bool
    _proxyBuffer: bytes
    _proxyRefused: bool

    def _proxyRefuse(
        self, outcome: Outcome, text: str = ..., level: LogLevel = ..., **fields: Any
    ) -> None: ...


class ProxyHeaderReceiver:
    """
    Reads the PROXY protocol header (version 1 or 2) that HAProxy sends
    before a relayed connection's own bytes (C{--listen haproxy:…},
    C{--range-listen haproxy:…}), takes the client's address from it, and
    only then admits the connection, under that address (C{--max-per-peer},
    the journal). A C{LOCAL} header (HAProxy's own health check) and
    C{PROXY UNKNOWN} keep the connection's own address. A connection whose
    own address is not a trusted proxy's (the factory's C{trustedProxies})
    is refused before a byte of it is read: it could name any client.

    Mixed into a protocol that provides L{ProxyHost} (a factory that
    provides L{ProxyFactory}, the transport, the client's C{peer} and
    C{port}, L{ProxyHost.connectionAdmitted} and
    L{ProxyHost.refuseConnection}). The protocol calls
    L{awaitProxyHeader} when a connection behind HAProxy is made, and
    passes every read to L{proxyHeaderReceived} while
    L{awaitingProxyHeader} is set. A refused connection is logged once per
    episode, never counted open, never journalled.

    @cvar metricsProtocol: the protocol's name in metrics (L{PROTOCOL_COUNT}, ...).
    @cvar refusals: how the episodes of refusals are named, before the
        outcome.
    @ivar awaitingProxyHeader: the connection is behind HAProxy and not
        admitted yet (its header is incomplete, or it was refused).
    """

    metricsProtocol = PROTOCOL_COUNT
    refusals = "connections closed with ERR"
    awaitingProxyHeader = False
    _proxyBuffer = b""
    _proxyRefused = False

    def awaitProxyHeader(self: _Receiving) -> bool:
        """
        A connection on a listener behind HAProxy is made: wait for its
        header if it comes from a trusted proxy, else refuse it (C{ERR
        untrusted proxy} on the count protocol, a close on the range
        protocol).

        @return: whether the connection waits for its header.
        """
        self.awaitingProxyHeader = True
        trusted = self.factory.trustedProxies
        own = self.transport.getPeer()
        if trusted.trusts(None if isinstance(own, UNIXAddress) else self.peer):
            return True
        self.factory.metrics.requests(self.metricsProtocol, UNTRUSTED_PROXY)
        self._proxyRefuse(
            UNTRUSTED_PROXY,
            "{peer}:{port} is not a trusted proxy (--trusted-proxies {trusted}); refusing"
            " its connection before reading a PROXY header (more such are counted, not logged)",
            LogLevel.warn,
            trusted=str(trusted),
        )
        return False

    def proxyHeaderReceived(self: _Receiving, data: bytes) -> bytes:
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
        self.awaitingProxyHeader = False
        self.connectionAdmitted()
        return result.rest

    def _proxyRefuse(
        self: _Receiving,
        outcome: Outcome,
        text: str = "{peer}:{port}: {reason}; closing (more such are counted, not logged)",
        level: LogLevel = LogLevel.info,
        **fields: Any,
    ) -> None:
        """
        Refuse the connection before admitting it (L{awaitingProxyHeader}
        stays set: connectionLost has nothing to release), logging once per
        episode C{text} at C{level} with the peer, its port, the C{reason}
        and C{fields}.
        """
        self._proxyRefused = True
        self.factory.episodes.event(
            f"{self.refusals} {outcome.text}",
            text,
            level,
            peer=self.peer,
            port=self.port,
            reason=outcome.text,
            **fields,
        )
        self.refuseConnection(outcome)
