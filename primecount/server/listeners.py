# -*- test-case-name: tests.unit.test_tap,tests.system.test_tap_process -*-
"""
The server's listening sockets: which ones the options ask for, and
L{Listener}, the service that listens on one of them (bound here, or
inherited from the supervisor with C{--workers}).
"""

from __future__ import annotations

import errno
import re
from collections.abc import Iterable
from typing import Any, NamedTuple

from twisted.application import service
from twisted.internet import defer, endpoints
from twisted.internet.address import UNIXAddress
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


class Wanted(NamedTuple):
    """
    A listener the options ask for.

    @ivar label: the protocol it serves (L{COUNT}, L{PROXY}, L{RANGE},
        L{RANGE_PROXY}, L{METRICS}).
    @ivar description: the endpoint description to listen on (without
        C{haproxy:}: the label says it).
    @ivar option: how the command line asked for it, for messages:
        C{--port 5050}, C{--listen 'unix:/run/pc.sock'}, C{--range-port 5051}.
    """

    label: str
    description: str
    option: str


def descriptions(
    listen: Iterable[str],
    rangePort: int | None,
    interface: str,
    rangeListen: Iterable[str] = (),
    port: int | None = None,
) -> list[Wanted]:
    """
    Every listener of the count and range protocols: one for each
    C{--listen} (C{haproxy:} ones labelled L{PROXY}), one on C{rangePort}
    when it is given, and one for each C{--range-listen} (C{haproxy:} ones
    labelled L{RANGE_PROXY}).

    @param port: C{--port}: a C{--listen} value that is what C{--port} and
        C{--interface} stand for is named C{--port} in messages.
    """
    found = []
    for description in listen:
        if port is not None and description == tcp_description(port, interface):
            option = f"--port {port}"
        else:
            option = f"--listen {description!r}"
        if description.startswith(HAPROXY):
            # We read the PROXY line ourselves (see CountProtocol): Twisted's
            # wrapper would hide half-close and the client's address.
            found.append(Wanted(PROXY, description[len(HAPROXY) :], option))
        else:
            found.append(Wanted(COUNT, description, option))
    if rangePort is not None:
        found.append(
            Wanted(RANGE, tcp_description(rangePort, interface), f"--range-port {rangePort}")
        )
    for description in rangeListen:
        option = f"--range-listen {description!r}"
        if description.startswith(HAPROXY):
            found.append(Wanted(RANGE_PROXY, description[len(HAPROXY) :], option))
        else:
            found.append(Wanted(RANGE, description, option))
    return found


def metrics_wanted(port: int, interface: str) -> Wanted:
    """
    The listener of C{--metrics-port}, on C{--metrics-interface}.
    """
    return Wanted(METRICS, tcp_description(port, interface), f"--metrics-port {port}")


def _fields(description: str) -> tuple[list[str], dict[str, str]]:
    """
    An endpoint description's positional and keyword fields, as Twisted
    reads them (C{:} between fields, the first C{=} of a field between key
    and value, a backslash escaping the next character).
    """
    fields: list[list[str]] = [[""]]
    chars = iter(description)
    for char in chars:
        if char == "\\":
            fields[-1][-1] += next(chars, "")
        elif char == ":":
            fields.append([""])
        elif char == "=" and len(fields[-1]) == 1:
            fields[-1].append("")
        else:
            fields[-1][-1] += char
    positional = [f[0] for f in fields if len(f) == 1]
    return positional, {f[0]: f[1] for f in fields if len(f) == 2}


#: Endpoint types that listen on a TCP port: C{tcp:PORT:interface=…}.
_TCP_KINDS = ("tcp", "tcp6", "ssl")

#: The wildcard interfaces: every address of the machine.
_EVERYWHERE = ("", "0.0.0.0", "::")


def tcp_address(description: str) -> tuple[str, str] | None:
    """
    The (interface, port) text of a TCP-style endpoint description
    (C{tcp:}, C{tcp6:}, C{ssl:}, also after C{haproxy:}), else C{None}.
    """
    if description.startswith(HAPROXY):
        description = description[len(HAPROXY) :]
    positional, keywords = _fields(description)
    if positional[0] not in _TCP_KINDS:
        return None
    port = keywords.get("port", positional[1] if len(positional) > 1 else "")
    default = "::" if positional[0] == "tcp6" else ""
    return keywords.get("interface", default), port


def repeated_port(wanted: Iterable[Wanted]) -> str | None:
    """
    Two listeners asked for on the same TCP port (of the same address, or
    one of them on every address): C{port 5058 is given twice: --port 5058
    and --range-port 5058}; else C{None}. Port 0 (any free port) never
    repeats.
    """
    seen: list[tuple[str, str, str]] = []
    for _label, description, option in wanted:
        address = tcp_address(description)
        if address is None or address[1] in ("", "0"):
            continue
        interface, port = address
        for otherInterface, otherPort, otherOption in seen:
            overlap = (
                interface == otherInterface
                or interface in _EVERYWHERE
                or otherInterface in _EVERYWHERE
            )
            if port == otherPort and overlap:
                return (
                    f"port {port} is given twice: {otherOption} and {option} "
                    "(each listener needs a port of its own)"
                )
        seen.append((interface, port, option))
    return None


_NOT_A_NUMBER = re.compile(r"invalid literal for int\(\) with base 10: '(.*)'")
_UNKNOWN_KIND = re.compile(r"Unknown endpoint type: '(.*)'")
_UNKNOWN_KEY = re.compile(r"unexpected keyword argument '(.*)'")

#: What --listen accepts, for a description of no known type.
_KINDS_HINT = (
    "tcp:PORT, tcp6:PORT, unix:PATH, ssl:PORT:privateKey=FILE, systemd:domain=INET:index=N, "
    "or haproxy: before one of them"
)


def _explain_description(description: str, error: Exception) -> str:
    """
    What is wrong with an endpoint description Twisted refused, in words
    (Twisted's own are C{invalid literal for int() with base 10: 'abc'}).
    """
    positional, keywords = _fields(description)
    text = str(error)
    found = _NOT_A_NUMBER.search(text)
    if found:
        value = found.group(1)
        if len(positional) > 1 and positional[1] == value:
            return f"the port {value!r} is not a number (e.g. {positional[0]}:5050)"
        key = next((k for k, v in keywords.items() if v == value), None)
        if key is not None:
            return f"{key}={value!r} is not a whole number"
        return f"{value!r} is not a number"
    found = _UNKNOWN_KIND.search(text)
    if found:
        kind = found.group(1)
        if kind.isdigit():
            return f"no endpoint type: did you mean tcp:{kind} (or --port {kind})?"
        return f"unknown endpoint type {kind!r}: expected {_KINDS_HINT}"
    found = _UNKNOWN_KEY.search(text)
    if found:
        return f"{positional[0]}: has no parameter {found.group(1)!r}"
    if isinstance(error, OSError) and error.filename:
        return f"cannot read {error.filename}: {error.strerror}"
    return text


def check_description(option: str, description: str) -> None:
    """
    Parse an endpoint description given to C{--option}, without listening
    (no reactor is needed until the server is built).

    @raise ValueError: in one line naming C{--option} and what to do.
    """
    address = tcp_address(description)
    if address is not None and address[1].isdigit() and not 0 <= int(address[1]) <= 65535:
        raise ValueError(
            f"bad --{option} {description!r}: the port {address[1]} is not from 0 to 65535"
        )
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
        why = _explain_description(description, e)
        raise ValueError(f"bad --{option} {description!r}: {why}") from None


#: Why a port cannot be bound, by errno, in words that say what to do.
_LISTEN_CAUSES = {
    errno.EADDRINUSE: "the address is already in use (another program listens there)",
    errno.EACCES: "permission denied (a port below 1024 needs root or CAP_NET_BIND_SERVICE)",
    errno.EADDRNOTAVAIL: "that interface is not an address of this machine",
}


def cannot_listen(option: str, error: BaseException) -> str:
    """
    One line saying which option's listener could not be bound, where, and
    why: C{--metrics-port 9109: cannot listen on 127.0.0.1:9109: the
    address is already in use (another program listens there)}. The same
    words with and without C{--workers}.

    @param error: a C{CannotListenError}, or the C{OSError} of a UNIX
        socket's lock file.
    """
    if not isinstance(error, CannotListenError):
        # A lock file's symlink names the pid first, the path second.
        name = getattr(error, "filename2", None) or getattr(error, "filename", None)
        where = f": {name.decode() if isinstance(name, bytes) else name}" if name else ""
        cause = getattr(error, "strerror", None) or str(error)
        return f"{option}: cannot listen: {cause}{where}"
    why = error.socketError
    number = getattr(why, "errno", None)
    if isinstance(error.port, int):
        host = error.interface or "0.0.0.0"
        where = f"[{host}]:{error.port}" if ":" in host else f"{host}:{error.port}"
        cause = _LISTEN_CAUSES.get(number or 0)
    else:  # a UNIX socket's path
        where = str(error.port)
        cause = None
    if cause is None:
        cause = getattr(why, "strerror", None) or str(why)
    return f"{option}: cannot listen on {where}: {cause}"


def listener_text(label: str, description: str, address: Any) -> str:
    """
    Where a listener listens and what it expects, for the start's log line:
    C{count 127.0.0.1:5050}, C{count 127.0.0.1:5443 (TLS)},
    C{count /run/pc.sock (UNIX)}, C{range 127.0.0.1:6001 (PROXY header)},
    C{metrics http://127.0.0.1:9109/metrics}.
    """
    where = address_text(address)
    if label == METRICS:
        return f"metrics http://{where}/metrics"
    kinds = []
    if label in (PROXY, RANGE_PROXY):
        kinds.append("PROXY header")
    kind = _fields(description)[0][0]
    if kind == "ssl":
        kinds.append("TLS")
    if isinstance(address, UNIXAddress):
        kinds.append("UNIX")
    if kind == "systemd":
        kinds.append("socket from systemd")
    protocol = RANGE if label in (RANGE, RANGE_PROXY) else COUNT
    return f"{protocol} {where}" + (f" ({', '.join(kinds)})" if kinds else "")


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
    @ivar port: the listening port once bound, else C{None}.
    """

    def __init__(
        self, label: str, description: str, endpoint: Any, factory: Any, option: str = ""
    ) -> None:
        """
        @param endpoint: an C{IStreamServerEndpoint} to listen on.
        @param option: how the command line asked for it (L{Wanted.option}),
            for the message when it cannot listen.
        """
        self.label = label
        self.description = description
        self.option = option or description
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
        if failed[0].check(CannotListenError, OSError):
            # One line, not twistd's traceback: the port is taken, or the
            # interface is not an address of this machine, or a UNIX
            # socket's directory is missing.
            _log.critical("{why}", why=cannot_listen(self.option, failed[0].value))
            raise SystemExit(1)
        failed[0].raiseException()

    def _listening(self, port: Any) -> Any:
        self.port = port
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.callback(self._where(port))
        return port

    def _where(self, port: Any) -> str:
        return listener_text(self.label, self.description, port.getHost())

    def address(self) -> defer.Deferred[str]:
        """
        Fires with where it listens, as text (C{count 127.0.0.1:5050},
        L{listener_text}), once it does.
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
