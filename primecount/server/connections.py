# -*- test-case-name: tests.unit.test_connections,tests.system.test_connections_process -*-
"""
Open connections of both protocols: admission limits and orderly closing.

One L{Connections} is shared by the count and range factories of a process,
so C{--max-connections} and C{--max-per-peer} count every connection the
process holds, whichever protocol it speaks. Limits are enforced in the
factories' C{buildProtocol} (Twisted's C{LimitConnectionsByPeer} breaks on
IPv4 addresses and its wrapping hides half-close).

The counts themselves live in a L{Counts}: a plain in-process one here, or
one in shared memory (L{primecount.workers.shared}) so that several worker
processes enforce one limit together.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import sys
from collections import Counter
from collections.abc import Iterator
from typing import Any, Protocol

from twisted.internet import tcp
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.defer import Deferred
from twisted.internet.posixbase import PosixReactorBase
from twisted.logger import Logger, LogLevel

from primecount.metrics.episodes import Episodes

#: How the journal names the host of a client on a UNIX socket: this
#: prefix and the socket's path (C{unix:/run/primecount.sock}), port 0.
UNIX_HOST = "unix:"


def peer_of(address: object, local: object = None) -> tuple[str, int]:
    """
    The (host, port) to journal for a transport's peer address.

    A client of a UNIX socket has no address of its own (unless it bound
    one): it is C{("unix:" + path, 0)}, with the path it bound or else the
    path of the socket it connected to (C{local}, the transport's host).
    """
    if isinstance(address, IPv4Address | IPv6Address):
        return address.host, address.port
    if isinstance(address, UNIXAddress):
        for named in (address, local):
            name = getattr(named, "name", None)
            if name:
                path = name.decode("utf-8", "backslashreplace") if isinstance(name, bytes) else name
                return UNIX_HOST + path, 0
        return UNIX_HOST, 0
    return type(address).__name__, 0


def no_delay(transport: object) -> None:
    """
    Send small replies at once (C{TCP_NODELAY}): with Nagle's algorithm a
    reply written while the previous one is unacknowledged waits for the
    client's delayed ACK, up to 40 ms, on request/response traffic.

    Free for connections accepted by a L{RefusingPort}: Linux passes the
    listening socket's C{TCP_NODELAY} on to every socket it accepts, so the
    port sets it once and nothing is done here per connection.
    """
    if getattr(getattr(transport, "server", None), "noDelay", False):
        return
    set_no_delay = getattr(transport, "setTcpNoDelay", None)
    if set_no_delay is not None:
        with contextlib.suppress(OSError):
            set_no_delay(True)


def address_text(address: object) -> str:
    """
    A listening address as people write it: C{127.0.0.1:5050}, C{[::]:5050},
    C{/run/primecount.sock}.
    """
    if isinstance(address, IPv6Address):
        return f"[{address.host}]:{address.port}"
    if isinstance(address, IPv4Address):
        return f"{address.host}:{address.port}"
    name = getattr(address, "name", None)
    if isinstance(name, bytes):
        return name.decode("utf-8", "replace")
    return str(name if name is not None else address)


class Counts(Protocol):
    """
    Where open connections are counted, in total and per client address.
    """

    def acquire(self, peer: str, total: int, perPeer: int | None) -> bool:
        """
        Count one more connection from C{peer} unless that would exceed
        C{total} open connections, or C{perPeer} from C{peer}.
        """

    def release(self, peer: str) -> None:
        """
        Count one connection from C{peer} less.
        """


class LocalCounts:
    """
    L{Counts} for a single process.
    """

    def __init__(self) -> None:
        self.total = 0
        self.perPeer: Counter[str] = Counter()

    def acquire(self, peer: str, total: int, perPeer: int | None) -> bool:
        if self.total >= total or (perPeer is not None and self.perPeer[peer] >= perPeer):
            return False
        self.total += 1
        self.perPeer[peer] += 1
        return True

    def release(self, peer: str) -> None:
        self.total -= 1
        self.perPeer[peer] -= 1
        if self.perPeer[peer] <= 0:
            del self.perPeer[peer]


class Closable(Protocol):
    """
    What L{Connections} needs of a connection's protocol.
    """

    transport: Any

    def closeWhenDone(self) -> None:
        """
        Stop reading requests; close once every received one is answered.
        """


class Connections:
    """
    The open connections of one process, with their limits.

    @ivar maxConnections: the most open connections, all protocols together.
    @ivar maxPerPeer: the most open connections from one address, or C{None}.
    @ivar episodes: logs what clients do wrong once per episode, with counts.
    @ivar refused: connections refused at the limits since the start.
    """

    _log = Logger()

    def __init__(
        self,
        maxConnections: int = 10000,
        maxPerPeer: int | None = None,
        counts: Counts | None = None,
        clock: Any = None,
    ) -> None:
        """
        @param clock: an C{IReactorTime} that ends the episodes of
            L{episodes} (see L{Episodes}).
        """
        self.maxConnections = maxConnections
        self.maxPerPeer = maxPerPeer
        self._counts: Counts = counts if counts is not None else LocalCounts()
        self._open: dict[Closable, str] = {}
        self._empty: list[Deferred[None]] = []
        self.refused = 0
        self.closing = False
        self.episodes = Episodes(self._log, clock)

    def __len__(self) -> int:
        return len(self._open)

    def __iter__(self) -> Iterator[Closable]:
        return iter(list(self._open))

    def admit(self, peer: str) -> bool:
        """
        Whether a new connection from C{peer} may be served; counts it if so.
        A refusal is logged once per episode, which ends once no connection
        was refused for L{Episodes.quiet} seconds (not at the next one let
        in: clients knocking at a full server are let in as others leave),
        with how many were refused.
        """
        if not self.closing and self._counts.acquire(peer, self.maxConnections, self.maxPerPeer):
            return True
        self.refused += 1
        if not self.closing:
            self.episodes.event(
                "connections refused at the connection limit",
                "refusing connections with ERR server busy: limit of {limit} open "
                "{connections}{perPeer} reached (first refused: {peer}; more are counted, "
                "not logged)",
                level=LogLevel.warn,
                ended="connections refused at the connection limit: {total} in {seconds:.0f} s; "
                "none for {quiet:g} s now",
                limit=self.maxConnections,
                connections="connection" if self.maxConnections == 1 else "connections",
                perPeer=f", {self.maxPerPeer} per address" if self.maxPerPeer else "",
                peer=peer,
                quiet=self.episodes.quiet,
            )
        return False

    def opened(self, protocol: Closable, peer: str) -> None:
        """
        An admitted connection is open.
        """
        self._open[protocol] = peer
        if self.closing:
            protocol.closeWhenDone()

    def closed(self, protocol: Closable) -> None:
        """
        A connection given to L{opened} closed.
        """
        peer = self._open.pop(protocol, None)
        if peer is None:
            return
        self._counts.release(peer)
        if not self._open and self._empty:
            empty, self._empty = self._empty, []
            for d in empty:
                d.callback(None)

    def closeAll(self) -> Deferred[None]:
        """
        Graceful stop: every connection stops reading, answers what it has
        received, then closes. Fires when none is left.
        """
        self.closing = True
        for protocol in self:
            protocol.closeWhenDone()
        return self.whenEmpty()

    def abortAll(self) -> None:
        """
        Drop every connection still open, now.
        """
        for protocol in self:
            if protocol.transport is not None:
                protocol.transport.abortConnection()

    def whenEmpty(self) -> Deferred[None]:
        """
        Fires once no connection is open.
        """
        d: Deferred[None] = Deferred()
        if self._open:
            self._empty.append(d)
        else:
            d.callback(None)
        return d


#: accept() errors that mean this process (EMFILE) or the whole system
#: (ENFILE) has no descriptor left for the new connection.
_NO_DESCRIPTORS = (errno.EMFILE, errno.ENFILE)
#: accept() errors about one connection only (reset before it was accepted,
#: refused by a firewall rule): go on with the next.
_SKIP = (errno.ECONNABORTED, errno.EPERM, errno.EPROTO)
#: accept() errors that mean trying again on the next readiness.
_RETRY_LATER = (errno.EAGAIN, errno.EWOULDBLOCK, errno.ENOBUFS, errno.ENOMEM, errno.EINTR)


class Reserve:
    """
    One descriptor held in reserve (on C{/dev/null}): released to accept a
    connection when there is no other descriptor left, then taken again.
    """

    def __init__(self) -> None:
        self._fd: int | None = None
        self.take()

    def take(self) -> bool:
        """
        Hold the reserve descriptor again; whether it could be had.
        """
        if self._fd is None:
            try:
                self._fd = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                return False
        return True

    def release(self) -> bool:
        """
        Close the reserve descriptor, so that the next descriptor opened can
        have its number; whether there was one to release.
        """
        if self._fd is None:
            return False
        os.close(self._fd)
        self._fd = None
        return True


_reserves: list[Reserve] = []


def reserve() -> Reserve:
    """
    The reserve descriptor of this process, shared by its listening ports.
    """
    if not _reserves:
        _reserves.append(Reserve())
    return _reserves[0]


class RefusingPort(tcp.Port):
    """
    A TCP listening port that answers C{ERR server busy} (and closes) when
    there is no descriptor left for a new connection, as nginx and HAProxy
    do: release the reserve descriptor, accept, write the refusal, close,
    take the reserve again. Without this a client waits in the accept queue
    until it gives up, or is closed with no word, and Twisted logs lines for
    each one.

    Twisted's accept loop (C{tcp.Port.doRead}) closes such connections
    silently and offers no hook to do otherwise, so L{doRead} is our own;
    making a transport for an accepted socket (L{_serve}) mirrors Twisted's
    and is the one use of C{tcp.Port}'s private API here (C{_buildAddr}).

    @ivar refusal: what a refused client is sent (empty: it is just closed).
    @ivar episodes: where running out of descriptors is logged, once per
        episode with a count.
    @ivar refused: connections refused for want of descriptors.
    """

    #: The most connections accepted in one readiness of the socket.
    maxAccepts = 100

    refusal = b""
    episodes: Episodes | None = None
    refused = 0

    #: Whether accepted sockets inherit C{TCP_NODELAY} from this one.
    noDelay = False

    def startListening(self) -> None:
        """
        Listen, with C{TCP_NODELAY} set on the listening socket so that the
        sockets it accepts start with it (Linux): one C{setsockopt} per
        port instead of one per connection.
        """
        super().startListening()
        if sys.platform.startswith("linux"):
            with contextlib.suppress(OSError):
                self.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                self.noDelay = True

    def doRead(self) -> None:
        """
        Accept what is waiting (up to L{maxAccepts}); refuse what cannot be
        served for want of descriptors.
        """
        for _ in range(self.maxAccepts):
            try:
                client, address = self.socket.accept()
            except OSError as e:
                if e.errno in _NO_DESCRIPTORS:
                    if not self._refuse(e.errno):
                        return
                    continue
                if e.errno in _SKIP:
                    continue
                if e.errno in _RETRY_LATER:
                    return
                raise
            self._serve(client, address)

    def _serve(self, client: socket.socket, address: Any) -> None:
        """
        Make a connection of the factory's protocol on an accepted socket.
        """
        if len(address) == 4:
            # IPv6: keep the scope ID, as tcp.Port.doRead does.
            host = socket.getnameinfo(address, socket.NI_NUMERICHOST | socket.NI_NUMERICSERV)
            address = (host[0], *address[1:])
        factory: Any = self.factory
        protocol = factory.buildProtocol(self._buildAddr(address))
        if protocol is None:
            client.close()
            return
        session = self.sessionno
        self.sessionno = session + 1
        transport: Any = self.transport(client, protocol, address, self, session, self.reactor)
        protocol.makeConnection(transport)

    def _refuse(self, error: int) -> bool:
        """
        Out of descriptors: accept one connection with the reserve
        descriptor and refuse it.

        @return: whether one was refused (else none is waiting, or there is
            no reserve to accept it with).
        """
        spare = reserve()
        spare.take()  # in case it could not be taken back last time
        if not spare.release():
            return False
        try:
            client, address = self.socket.accept()
        except OSError:
            spare.take()
            return False
        try:
            client.setblocking(False)
            if self.refusal:
                client.send(self.refusal)
            client.shutdown(socket.SHUT_WR)
            # Unread request bytes would make close() send a reset, which
            # can destroy the refusal before the client reads it.
            client.recv(65536)
        except OSError:
            pass
        finally:
            client.close()
            spare.take()
        self.refused += 1
        if self.episodes is not None:
            self.episodes.event(
                "connections refused for want of file descriptors",
                "out of file descriptors ({error}): refusing new connections with ERR "
                "server busy (first refused: {peer}; more are counted, not logged)",
                level=LogLevel.warn,
                error=errno.errorcode.get(error, str(error)),
                peer=address[0] if isinstance(address, tuple) else address,
            )
        return True


class RefusingReactor:
    """
    A reactor whose C{listenTCP} makes a L{RefusingPort}; all else is the
    wrapped reactor's. Given to C{serverFromString}, it makes C{tcp:} and
    C{tcp6:} endpoints refuse with a reply when out of descriptors.
    """

    def __init__(self, reactor: Any, refusal: bytes, episodes: Episodes | None) -> None:
        self._reactor = reactor
        self._refusal = refusal
        self._episodes = episodes

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reactor, name)

    def listenTCP(
        self, port: int, factory: Any, backlog: int = 50, interface: str = ""
    ) -> RefusingPort:
        """
        Listen as C{IReactorTCP.listenTCP} does, on a L{RefusingPort}; on
        a reactor that is not a posix one (a test's memory reactor), on
        that reactor's own port.
        """
        if not isinstance(self._reactor, PosixReactorBase):
            return self._reactor.listenTCP(port, factory, backlog, interface)  # type: ignore[no-any-return]
        return self._start(RefusingPort(port, factory, backlog, interface, self._reactor))

    def adoptStreamPort(self, fileDescriptor: int, addressFamily: int, factory: Any) -> Any:
        """
        Accept on an inherited listening socket as
        C{IReactorSocket.adoptStreamPort} does; on a L{RefusingPort} when it
        is a TCP one.
        """
        if addressFamily not in (socket.AF_INET, socket.AF_INET6) or not isinstance(
            self._reactor, PosixReactorBase
        ):
            return self._reactor.adoptStreamPort(fileDescriptor, addressFamily, factory)
        # The constructor Twisted's adoptStreamPort uses (private API, as
        # RefusingPort._serve, for the same reason).
        port = RefusingPort._fromListeningDescriptor(  # type: ignore[attr-defined]
            self._reactor, fileDescriptor, addressFamily, factory
        )
        return self._start(port)

    def _start(self, port: RefusingPort) -> RefusingPort:
        reserve()
        port.refusal = self._refusal
        port.episodes = self._episodes
        port.startListening()
        return port
