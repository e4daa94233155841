# -*- test-case-name: tests.unit.test_tap,tests.system.test_tap_process -*-
"""
The server's listening sockets: which ones the options ask for, and
L{Listener}, the service that listens on one of them (bound here, or
inherited from the supervisor with C{--workers}).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from twisted.application import service
from twisted.internet import defer, endpoints
from twisted.internet.error import CannotListenError
from twisted.logger import Logger

from primecount.server.connections import address_text

_log = Logger(namespace="primecount")

#: Accept queue of the listening sockets: Twisted's default of 50 makes a
#: burst of connections wait for SYN retransmissions (1 s and more); the
#: kernel caps this at net.core.somaxconn.
BACKLOG = 4096

#: The endpoint prefix for listening behind HAProxy (PROXY protocol v1 or v2).
HAPROXY = "haproxy:"

#: The labels of the listeners, by the protocol they serve (C{PROXY} and
#: C{RANGE_PROXY}: behind HAProxy, reading a PROXY header first).
COUNT, PROXY, RANGE, RANGE_PROXY, METRICS = "count", "proxy", "range", "range-proxy", "metrics"


def tcp_description(port: int, interface: str) -> str:
    """
    The endpoint description for C{--port}/C{--interface}-style options.
    """
    interface = interface.replace(":", "\\:")
    return f"tcp:{port}:interface={interface}:backlog={BACKLOG}"


def descriptions(
    listen: Iterable[str],
    rangePort: int | None,
    interface: str,
    rangeListen: Iterable[str] = (),
) -> list[tuple[str, str]]:
    """
    (label, endpoint description) of every listener of the count and range
    protocols: one for each C{--listen} (C{haproxy:} ones labelled
    L{PROXY}), one on C{rangePort} when it is given, and one for each
    C{--range-listen} (C{haproxy:} ones labelled L{RANGE_PROXY}).
    """
    found = []
    for description in listen:
        if description.startswith(HAPROXY):
            # We read the PROXY line ourselves (see CountProtocol): Twisted's
            # wrapper would hide half-close and the client's address.
            found.append((PROXY, description[len(HAPROXY) :]))
        else:
            found.append((COUNT, description))
    if rangePort is not None:
        found.append((RANGE, tcp_description(rangePort, interface)))
    for description in rangeListen:
        if description.startswith(HAPROXY):
            found.append((RANGE_PROXY, description[len(HAPROXY) :]))
        else:
            found.append((RANGE, description))
    return found


def check_description(option: str, description: str) -> None:
    """
    Parse an endpoint description given to C{--option}, without listening
    (no reactor is needed until the server is built).

    @raise ValueError: in one line naming C{--option} and what to do.
    """
    try:
        endpoints.serverFromString(None, description)
    except ImportError as e:
        # ssl: without pyOpenSSL (twisted[tls], a dependency).
        raise ValueError(
            f"--{option} {description!r} needs TLS support, which is not "
            f"installed ({e}): pip install 'twisted[tls]'"
        ) from None
    except IndexError:
        # systemd: with no (or too few) sockets passed down.
        raise ValueError(
            f"--{option} {description!r}: systemd passed no such socket "
            "(LISTEN_FDS and LISTEN_FDNAMES come from a .socket unit; see deploy/)"
        ) from None
    except Exception as e:
        # A bad description, a missing or bad certificate file.
        raise ValueError(f"bad --{option} {description!r}: {e}") from None


class Listener(service.Service):
    """
    Listens on one endpoint while running: a start that cannot bind is one
    line in the log and exit status 1, and the listener can say where it
    listens.

    @ivar label: which protocol it serves (L{COUNT}, L{PROXY}, L{RANGE},
        L{METRICS}).
    @ivar description: where, as the endpoint description or inherited
        descriptor it was made from.
    @ivar factory: the protocol factory of its connections.
    @ivar port: the listening port once bound, else L{None}.
    """

    def __init__(self, label: str, description: str, endpoint: Any, factory: Any) -> None:
        """
        @param endpoint: an C{IStreamServerEndpoint} to listen on.
        """
        self.label = label
        self.description = description
        self.endpoint = endpoint
        self.factory = factory
        self.port: Any = None
        self._bound: defer.Deferred[Any] | None = None
        self._waiting: list[defer.Deferred[str]] = []

    @classmethod
    def adopted(cls, reactor: Any, label: str, fd: int, family: int, factory: Any) -> Listener:
        """
        A listener accepting on listening socket C{fd} inherited from the
        supervisor (which it closes once the reactor has its own copy).
        """
        endpoint = endpoints.AdoptedStreamServerEndpoint(reactor, fd, family)
        return cls(label, f"fd:{fd}", endpoint, factory)

    def privilegedStartService(self) -> None:
        # Bind before twistd drops privileges (a port below 1024); a UNIX
        # socket after, as the user who serves on it and removes it at the
        # stop (twistd --uid).
        super().privilegedStartService()
        if not isinstance(self.endpoint, endpoints.UNIXServerEndpoint):
            self._listen()

    def startService(self) -> None:
        super().startService()
        if self._bound is None:
            self._listen()

    def _listen(self) -> None:
        failed: list[Any] = []
        self._bound = self.endpoint.listen(self.factory)
        self._bound.addCallbacks(self._listening, failed.append)
        if not failed:
            return
        if failed[0].check(CannotListenError):
            # One line, not twistd's traceback: the port is taken, or the
            # interface is not an address of this machine.
            _log.critical(
                "cannot listen on {description}: {why}",
                description=self.description,
                why=failed[0].value.socketError,
            )
            raise SystemExit(1)
        failed[0].raiseException()

    def _listening(self, port: Any) -> Any:
        self.port = port
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.callback(self._where(port))
        return port

    def _where(self, port: Any) -> str:
        return f"{self.label} {address_text(port.getHost())}"

    def address(self) -> defer.Deferred[str]:
        """
        Fires with where it listens, as text (C{count 127.0.0.1:5050}),
        once it does.
        """
        if self.port is not None:
            return defer.succeed(self._where(self.port))
        d: defer.Deferred[str] = defer.Deferred()
        self._waiting.append(d)
        return d

    def stopService(self) -> Any:
        super().stopService()
        port, self.port, self._bound = self.port, None, None
        if port is not None:
            return port.stopListening()
        return None
