# -*- test-case-name: tests.test_tap -*-
"""
The twistd plugin's options and service: C{twistd primecount --port 5050}.
"""

from __future__ import annotations

import math
import os
import resource
import sys
from collections.abc import Callable
from typing import Any, ClassVar

from twisted.application import service
from twisted.application.internet import StreamServerEndpointService
from twisted.internet import defer, endpoints, protocol
from twisted.internet.error import CannotListenError
from twisted.logger import Logger
from twisted.python import failure, usage

from primecount import __version__
from primecount.core.count import SERVER_BUSY, error_reply
from primecount.journal import (
    DEFAULT_URL,
    Journal,
    JournalURL,
    JournalURLError,
    open_journal,
    parse_url,
)
from primecount.journal.sqlite import check_writable
from primecount.server import placement
from primecount.server.connections import Connections, RefusingReactor, address_text
from primecount.server.countprotocol import FRAMINGS, READ, READ_WINDOW, CountFactory
from primecount.server.pipeline import Pipeline
from primecount.workers import supervisor as workers

_log = Logger(namespace="primecount")


def _number(
    option: str, kind: Callable[[str], Any], rule: str, low: float, high: float | None = None
) -> Callable[[str], Any]:
    """
    The coercer of a numeric option: a bad value raises a C{ValueError}
    that names the option and the rule (C{--threads wants a whole number,
    at least 1; got 'abc'}).
    """

    def coerce(value: str) -> Any:
        try:
            number = kind(value)
        except ValueError:
            number = None
        if (
            number is None
            or not math.isfinite(number)
            or number < low
            or (high is not None and number > high)
        ):
            raise ValueError(f"--{option} wants {rule}; got {value!r}")
        return number

    coerce.coerceDoc = f"({rule})"  # type: ignore[attr-defined]
    return coerce


def _positive(option: str) -> Callable[[str], Any]:
    return _number(option, int, "a whole number, at least 1", 1)


def _port(option: str) -> Callable[[str], Any]:
    return _number(option, int, "a whole number from 0 to 65535 (0: any free port)", 0, 65535)


def _seconds(option: str, zero: str) -> Callable[[str], Any]:
    return _number(option, float, f"a number of seconds, 0 or more ({zero})", 0)


def _journal(value: str) -> JournalURL:
    try:
        return parse_url(value)
    except JournalURLError as e:
        raise ValueError(f"--journal: {e}") from None


_journal.coerceDoc = "sqlite:PATH, postgresql://USER@HOST:PORT/DB?... or none."  # type: ignore[attr-defined]


def _cpus(value: str) -> placement.Placement:
    try:
        return placement.parse(value)
    except ValueError as e:
        raise ValueError(f"--cpu-affinity wants {e}") from None


_cpus.coerceDoc = (  # type: ignore[attr-defined]
    "auto: each serving process on its own CPU; none: leave it to the scheduler; "
    "or CPU numbers such as 0,1 or 0-3."
)


def _framing(value: str) -> tuple[str, float]:
    kind, sep, window = value.partition(":")
    if kind not in FRAMINGS or (sep and kind != READ):
        raise ValueError(f"--framing wants line, read or read:MS; got {value!r}")
    if not sep:
        return kind, READ_WINDOW
    try:
        ms = float(window)
    except ValueError:
        ms = -1.0
    if not 0 <= ms <= MAX_READ_WINDOW_MS:
        raise ValueError(
            f"--framing read:MS wants MS from 0 to {MAX_READ_WINDOW_MS} milliseconds; got {value!r}"
        )
    return kind, ms / 1000


#: The longest read window C{--framing read:MS} accepts.
MAX_READ_WINDOW_MS = 1000

_framing.coerceDoc = (  # type: ignore[attr-defined]
    "line: one request per LF-terminated line, many per connection. "
    "read: as the original server's clients, one request per connection, no "
    "newline needed: the connection's first read is the message (up to its "
    "first LF; over --max-line is ERR line too long), answered, then the "
    "connection is closed. read:MS: also wait up to MS milliseconds after "
    "the first byte for more segments of the message, unless a LF or the "
    "client's half-close ends it."
)

#: How twistd's option parser prefixes a coercer's error; our coercers name
#: the option themselves.
_COERCE_FAILED = "Parameter type enforcement failed: "


#: Accept queue of the listening sockets: Twisted's default of 50 makes a
#: burst of connections wait for SYN retransmissions (1 s and more); the
#: kernel caps this at net.core.somaxconn.
BACKLOG = 4096


#: The endpoint prefix for listening behind HAProxy (PROXY protocol v1).
HAPROXY = "haproxy:"


def tcp_description(port: int, interface: str) -> str:
    """
    The endpoint description for C{--port}/C{--interface}-style options.
    """
    interface = interface.replace(":", "\\:")
    return f"tcp:{port}:interface={interface}:backlog={BACKLOG}"


class PrimecountOptions(usage.Options):
    """
    The options of C{twistd primecount}; bad values raise L{usage.UsageError}.
    """

    synopsis = "[options]"
    longdesc = (
        "Answer prime questions over TCP. Each line sent to the count port is "
        "answered with how often its last character occurs and whether that "
        "count is prime ('2 sí', '4 no'); every request is journalled before "
        "it is answered."
    )

    optFlags: ClassVar[list[list[Any]]] = [
        [
            "close-after-reply",
            None,
            "Close each connection after its first reply (seed behaviour).",
        ],
        [
            "journal-fsync",
            None,
            "fsync every journal commit: survives power loss, not only a crash.",
        ],
    ]

    optParameters: ClassVar[list[list[Any]]] = [
        ["port", "p", 5050, "TCP port of the count protocol.", _port("port")],
        [
            "interface",
            None,
            "0.0.0.0",
            "Address to bind: 127.0.0.1 for this machine only, :: for IPv6.",
        ],
        [
            "threads",
            None,
            10,
            "Size of the thread pool: count requests use one thread at a time (one "
            "batch in flight); range requests sieve on the others.",
            _positive("threads"),
        ],
        [
            "timeout",
            None,
            5.0,
            "Idle seconds before a connection is closed.",
            _seconds("timeout", "0 disables"),
        ],
        [
            "max-line",
            None,
            16384,
            "Longest accepted request line, in bytes.",
            _positive("max-line"),
        ],
        ["framing", None, "line", "How requests are delimited on the count port.", _framing],
        [
            "max-connections",
            None,
            10000,
            "Open connections beyond this get ERR server busy.",
            _positive("max-connections"),
        ],
        ["journal", None, DEFAULT_URL, "Where requests are recorded.", _journal],
        [
            "max-per-peer",
            None,
            None,
            "Open connections one client address may hold (default: no limit of its own)",
            _positive("max-per-peer"),
        ],
        [
            "shutdown-timeout",
            None,
            10.0,
            "On SIGTERM, seconds to finish what was received before closing anyway.",
            _seconds("shutdown-timeout", "0 waits as long as it takes"),
        ],
        [
            "workers",
            None,
            1,
            "Serving processes sharing the listening sockets.",
            _positive("workers"),
        ],
        [
            "cpu-affinity",
            None,
            placement.AUTO,
            "Which CPU each serving process runs on (its threads share one GIL: kept "
            "on one core, their hand-offs are cheapest).",
            _cpus,
        ],
        [
            "metrics-port",
            None,
            None,
            "HTTP port serving Prometheus metrics at /metrics, bound on --interface (default: off)",
            _port("metrics-port"),
        ],
        [
            "range-port",
            None,
            None,
            "TCP port of the range protocol, bound on --interface (default: off)",
            _port("range-port"),
        ],
    ]

    compData = usage.Completions(
        optActions={"interface": usage.CompleteHostnames()},
    )

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []

    def parseOptions(self, options: list[str] | None = None) -> None:
        # Kept for --workers: each worker runs with the same options.
        self.argv = list(sys.argv[1:] if options is None else options)
        try:
            super().parseOptions(options)
        except usage.UsageError as e:
            message = str(e)
            if message.startswith(_COERCE_FAILED):
                raise usage.UsageError(message[len(_COERCE_FAILED) :]) from None
            raise

    def opt_listen(self, description: str) -> None:
        """
        A Twisted endpoint description for the count protocol (tcp:5050,
        tcp6:5050:interface=\\:\\:, unix:/path, ssl:..., systemd:...);
        repeatable; replaces --port and --interface.
        """
        self["listen"].append(description)

    def postOptions(self) -> None:
        if isinstance(self["journal"], str):  # the default, not yet coerced
            self["journal"] = _journal(self["journal"])
        if isinstance(self["cpu-affinity"], str):
            self["cpu-affinity"] = _cpus(self["cpu-affinity"])
        try:
            for index in range(self["workers"]):
                placement.choose(self["cpu-affinity"], index, placement.allowed_cpus())
        except ValueError as e:
            raise usage.UsageError(f"--cpu-affinity: {e}") from None
        if isinstance(self["framing"], str):
            self["framing"] = _framing(self["framing"])
        if not self["listen"]:
            self["listen"] = [tcp_description(self["port"], self["interface"])]
        from twisted.internet import reactor

        for description in self["listen"]:
            try:
                endpoints.serverFromString(reactor, description)
            except ImportError as e:
                # ssl: without pyOpenSSL (twisted[tls], a dependency).
                raise usage.UsageError(
                    f"--listen {description!r} needs TLS support, which is not "
                    f"installed ({e}): pip install 'twisted[tls]'"
                ) from None
            except IndexError:
                # systemd: with no (or too few) sockets passed down.
                raise usage.UsageError(
                    f"--listen {description!r}: systemd passed no such socket "
                    "(LISTEN_FDS and LISTEN_FDNAMES come from a .socket unit; see deploy/)"
                ) from None
            except Exception as e:
                # A bad description, a missing or bad certificate file.
                raise usage.UsageError(f"bad --listen {description!r}: {e}") from None
        try:
            if self["journal"].scheme == "postgresql":
                _check_postgresql(self["journal"])
            else:
                check_writable(self["journal"])
        except JournalURLError as e:
            raise usage.UsageError(str(e)) from None


def _check_postgresql(url: JournalURL) -> None:
    """
    Connect to the PostgreSQL journal once (creating its schema), or say in
    one line why not (its password masked).

    @raise JournalURLError: when psycopg is missing or the database cannot
        be written.
    """
    try:
        from primecount.journal import postgresql as pgjournal
    except ImportError:
        raise JournalURLError(
            "the PostgreSQL journal needs psycopg: pip install 'primecount[postgresql]'"
        ) from None
    pgjournal.check_writable(url)


class Options(PrimecountOptions):
    """
    The options as twistd parses them: a bad value stops the start with one
    line on stderr and exit status 1 (twistd itself would print the whole
    help text first).
    """

    def parseOptions(self, options: list[str] | None = None) -> None:
        try:
            super().parseOptions(options)
        except usage.UsageError as e:
            sys.stderr.write(f"twistd primecount: error: {e}\n")
            raise SystemExit(1) from None


class _Listener(StreamServerEndpointService):
    """
    A listening endpoint that fails the start when it cannot bind and can
    say where it listens once it does.
    """

    _raiseSynchronously = True

    def __init__(self, label: str, description: str, endpoint: Any, factory: Any) -> None:
        super().__init__(endpoint, factory)
        self.label = label
        self.description = description

    def privilegedStartService(self) -> None:
        try:
            super().privilegedStartService()
        except CannotListenError as e:
            # One line, not twistd's traceback: the port is taken, or the
            # interface is not an address of this machine.
            _log.critical(
                "cannot listen on {description}: {why}",
                description=self.description,
                why=e.socketError,
            )
            raise SystemExit(1) from None

    def address(self) -> defer.Deferred[str]:
        """
        Fires with the address it listens on, as text.
        """
        waiting: defer.Deferred[Any] = self._waitingForPort  # type: ignore[assignment]
        d: defer.Deferred[str] = defer.Deferred()

        def describe(port: Any) -> Any:
            d.callback(f"{self.label} {address_text(port.getHost())}")
            return port

        waiting.addCallback(describe)
        return d


def _plural(n: int, noun: str) -> str:
    """
    C{1 record}, C{2 records}.
    """
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


class PrimecountService(service.MultiService):
    """
    The whole server: the journal, the listeners, and an orderly stop.

    On stop (SIGTERM): stop accepting; let every connection answer what it
    has received and close (within C{shutdownTimeout} seconds, after which
    the rest are dropped); then flush the journal.
    """

    def __init__(
        self,
        pipeline: Pipeline,
        journal: Journal,
        connections: Connections,
        settings: str,
        shutdownTimeout: float = 10.0,
        clock: Any = None,
    ) -> None:
        super().__init__()
        self.pipeline = pipeline
        self.journal = journal
        self.connections = connections
        self.settings = settings
        self.shutdownTimeout = shutdownTimeout
        self.listeners: list[Any] = []
        if clock is None:
            from twisted.internet import reactor as clock
        self._clock = clock

    def addListener(self, listener: Any) -> None:
        """
        Add a listening endpoint service.
        """
        self.listeners.append(listener)
        listener.setServiceParent(self)

    def startService(self) -> None:
        if self.journal is not None and not self.journal.running:
            self.journal.startService()
        super().startService()
        addresses = defer.gatherResults([lsn.address() for lsn in self.listeners])
        addresses.addCallback(
            lambda found: _log.info(
                "primecount {version} listening on {addresses}; {settings}",
                version=__version__,
                addresses=", ".join(found),
                settings=self.settings,
            )
        )

    @defer.inlineCallbacks
    def stopService(self) -> Any:
        """
        Stop accepting; drain the connections, the pipeline, then the
        journal, all within one deadline, C{shutdownTimeout} seconds away
        (none when it is 0). Shortly before it the journal is hurried (no
        more waiting for another process's lock: what waits is answered
        C{ERR journal unavailable}); at it the connections still open are
        dropped. Connections closed meanwhile have their records (a range's
        settle) queued before the journal stops, so it flushes them too.
        """
        service.Service.stopService(self)
        timers = []
        if self.shutdownTimeout:
            early = min(HURRY_BEFORE, self.shutdownTimeout / 2)
            timers.append(self._clock.callLater(self.shutdownTimeout - early, self._hurry))
            timers.append(self._clock.callLater(self.shutdownTimeout, self._drop))
        try:
            yield defer.DeferredList([defer.maybeDeferred(s.stopService) for s in self])
            busy = len(self.connections)
            if busy:
                _log.info(
                    "stopping: answering what {connections} sent, for up to {t:g} s",
                    connections=_plural(busy, "open connection"),
                    t=self.shutdownTimeout,
                )
                # Fires once every connection is gone, dropped ones included.
                yield self.connections.closeAll()
            yield self.pipeline.whenIdle()
            if self.journal is not None:
                yield self.journal.stopService()
                _log.info(
                    "journal closed: {records} committed since the start, in {b} transactions",
                    records=_plural(self.journal.committed, "record"),
                    b=self.journal.batches,
                )
        finally:
            for timer in timers:
                if timer.active():
                    timer.cancel()

    def _hurry(self) -> None:
        """
        The deadline is near: the journal stops waiting for locks.
        """
        if self.journal is not None:
            self.journal.hurry()

    def _drop(self) -> None:
        """
        The deadline: drop the connections still open.
        """
        if len(self.connections):
            _log.warn(
                "stopping: {connections} still busy after {t:g} s; dropping them",
                connections=_plural(len(self.connections), "connection"),
                t=self.shutdownTimeout,
            )
            self.connections.abortAll()


#: Seconds before the stop's deadline at which the journal is hurried, so
#: that what waits for it is answered before the connections are dropped.
HURRY_BEFORE = 0.5


def raise_open_files_limit(wanted: int) -> int:
    """
    Raise the soft limit of open files toward C{wanted} (up to the hard
    limit).

    @return: the effective soft limit (C{resource.RLIM_INFINITY} for none).
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft


#: Descriptors kept for all but client connections: the journal's files,
#: listening sockets, the log, pipes to workers, what libraries open.
SPARE_DESCRIPTORS = 64


def connection_limit(wanted: int, warn: bool = True) -> int:
    """
    The most connections this process can hold at once: C{wanted}
    (C{--max-connections}), or fewer when the open-files limit, raised as
    far as it goes, cannot cover that many plus L{SPARE_DESCRIPTORS}; then
    one warning names both numbers.
    """
    limit = raise_open_files_limit(wanted + SPARE_DESCRIPTORS)
    if limit == resource.RLIM_INFINITY or limit >= wanted + SPARE_DESCRIPTORS:
        return wanted
    effective = max(1, limit - SPARE_DESCRIPTORS)
    if warn:
        _log.warn(
            "open files limit is {limit}: serving at most {effective} connections at "
            "once, not --max-connections {wanted} (raise the limit, e.g. 'ulimit -n' "
            "or LimitNOFILE=, to serve more)",
            limit=limit,
            effective=effective,
            wanted=wanted,
        )
    return effective


def _descriptions(config: PrimecountOptions) -> list[tuple[str, str]]:
    """
    (label, endpoint description) of every listener the options ask for.
    """
    found = []
    for description in config["listen"]:
        if description.startswith(HAPROXY):
            # We read the PROXY line ourselves (see CountProtocol): Twisted's
            # wrapper would hide half-close and the client's address.
            found.append(("proxy", description[len(HAPROXY) :]))
        else:
            found.append(("count", description))
    if config["range-port"] is not None:
        found.append(("range", tcp_description(config["range-port"], config["interface"])))
    return found


def _framing_text(framing: tuple[str, float]) -> str:
    kind, window = framing
    return f"{kind}:{window * 1000:g}" if window else kind


def _settings(config: PrimecountOptions) -> str:
    url: JournalURL = config["journal"]
    return (
        f"threads={config['threads']} timeout={config['timeout']:g} "
        f"max-line={config['max-line']} max-connections={config['max-connections']} "
        f"max-per-peer={config['max-per-peer'] or 'off'} "
        f"cpu-affinity={config['cpu-affinity']} "
        f"close-after-reply={'on' if config['close-after-reply'] else 'off'} "
        f"framing={_framing_text(config['framing'])} "
        f"journal={url}{' (fsync)' if config['journal-fsync'] and url.scheme != 'none' else ''}"
    )


def makeService(config: PrimecountOptions) -> service.MultiService:
    """
    Build the server from parsed options: one serving process, or (with
    C{--workers N}) a supervisor of N, or one of those N workers.
    """
    from twisted.internet import reactor

    if os.environ.get(workers.WORKER_ENV):
        return _worker(config, reactor)
    if config["workers"] > 1:
        return _supervisor(config, reactor)
    config["max-connections"] = connection_limit(config["max-connections"])
    connections = Connections(config["max-connections"], config["max-per-peer"], clock=reactor)
    reactor.addSystemEventTrigger("before", "shutdown", connections.episodes.flush)  # type: ignore[arg-type]
    if config["metrics-port"] is None:
        return _server(config, reactor, connections)
    from primecount.metrics.prometheus import Metrics

    metrics = Metrics(clock=reactor)
    top = _server(config, reactor, connections, metrics=metrics)
    _metricsListener(config, reactor, metrics).setServiceParent(top)
    return top


class _Placement(service.Service):
    """
    Pins serving process C{index} (and every thread it will start) to the
    CPU C{--cpu-affinity} chooses for it, when the service starts (before
    the pool and the journal start their threads).
    """

    def __init__(self, choice: placement.Placement, index: int) -> None:
        self.choice = choice
        self.index = index

    def startService(self) -> None:
        super().startService()
        cpu = placement.choose(self.choice, self.index, placement.allowed_cpus())
        if cpu is not None:
            placement.pin_process(cpu)
            _log.info("serving process {index} runs on CPU {cpu}", index=self.index, cpu=cpu)


def _metricsListener(config: PrimecountOptions, reactor: Any, metrics: Any) -> service.Service:
    from primecount.metrics.prometheus import metricsSite

    description = tcp_description(config["metrics-port"], config["interface"])
    endpoint = endpoints.serverFromString(reactor, description)
    # A _Listener: a port that is taken is one line and exit status 1.
    return _Listener("metrics", description, endpoint, metricsSite(metrics))


def _server(
    config: PrimecountOptions,
    reactor: Any,
    connections: Connections,
    adopted: list[tuple[str, int, int]] | None = None,
    metrics: Any = None,
    index: int = 0,
) -> PrimecountService:
    """
    A serving process: listening itself, or on C{adopted} sockets
    (label, fd, family) handed down by a supervisor.
    """
    from primecount.metrics.prometheus import NullMetrics

    reactor.suggestThreadPoolSize(config["threads"])
    threadpool = reactor.getThreadPool()
    if metrics is None:
        metrics = NullMetrics()
    metrics.watchThreadPool(threadpool)

    journal = open_journal(
        config["journal"], reactor, fsync=config["journal-fsync"], metrics=metrics
    )
    pipeline = Pipeline(reactor, threadpool, journal, metrics)
    factories: dict[str, Any] = {
        label: CountFactory(
            reactor,
            pipeline,
            timeout=config["timeout"],
            maxLine=config["max-line"],
            closeAfterReply=config["close-after-reply"],
            connections=connections,
            metrics=metrics,
            proxyHeader=label == "proxy",
            framing=config["framing"][0],
            readWindow=config["framing"][1],
        )
        for label in ("count", "proxy")
    }
    if config["range-port"] is not None:
        from primecount.server.rangeprotocol import RangeFactory

        factories["range"] = RangeFactory(
            reactor,
            threadpool,
            journal,
            timeout=config["timeout"],
            connections=connections,
            metrics=metrics,
        )
    busy = error_reply(SERVER_BUSY)
    top = PrimecountService(
        pipeline, journal, connections, _settings(config), config["shutdown-timeout"], reactor
    )
    _Placement(config["cpu-affinity"], index).setServiceParent(top)
    if adopted is None:
        for label, description in _descriptions(config):
            # Out of descriptors, a TCP listener still answers ERR server busy.
            refusing = RefusingReactor(
                reactor, b"" if label == "range" else busy, connections.episodes
            )
            endpoint = endpoints.serverFromString(refusing, description)
            top.addListener(_Listener(label, description, endpoint, factories[label]))
    else:
        for label, fd, family in adopted:
            refusing = RefusingReactor(
                reactor, b"" if label == "range" else busy, connections.episodes
            )
            top.addListener(workers.AdoptedPort(refusing, label, fd, family, factories[label]))
    return top


def _worker(config: PrimecountOptions, reactor: Any) -> PrimecountService:
    """
    One of C{--workers N}: serve on the sockets the supervisor hands down,
    counting connections in the shared table.
    """
    workers.die_with_parent()
    path, _, total = os.environ[workers.COUNTS_ENV].rpartition(":")
    index = int(os.environ.get("PRIMECOUNT_WORKER_INDEX", "0"))
    counts = workers.SharedCounts(path, int(total), index)
    # The supervisor warned if the open-files limit lowers the limit.
    config["max-connections"] = connection_limit(config["max-connections"], warn=False)
    connections = Connections(
        config["max-connections"], config["max-per-peer"], counts, clock=reactor
    )
    reactor.addSystemEventTrigger("before", "shutdown", connections.episodes.flush)
    adopted = workers.decode_sockets(os.environ[workers.WORKER_ENV])
    metrics = None
    if config["metrics-port"] is not None:
        from primecount.metrics.prometheus import Metrics

        # Values go to the shared directory; the supervisor serves the sum.
        metrics = Metrics(clock=reactor)
    return _server(config, reactor, connections, adopted, metrics, index)


class _Bound(service.Service):
    """
    The supervisor's listening sockets: bound at start-up, closed at stop.
    """

    def __init__(self, ports: list[Any]) -> None:
        self.ports = ports

    def stopService(self) -> Any:
        super().stopService()
        return defer.DeferredList([defer.maybeDeferred(p.stopListening) for p in self.ports])


def _supervisor(config: PrimecountOptions, reactor: Any) -> service.MultiService:
    """
    C{--workers N}: bind the sockets here, serve in N worker processes.
    """
    config["max-connections"] = connection_limit(config["max-connections"])
    sockets: dict[str, tuple[int, int]] = {}
    ports = []
    addresses = []
    for n, (label, description) in enumerate(_descriptions(config)):
        endpoint = endpoints.serverFromString(reactor, description)
        bound: list[Any] = []
        placeholder = protocol.Factory()
        placeholder.noisy = False  # never accepts: the workers do
        endpoint.listen(placeholder).addCallbacks(bound.append, bound.append)
        if not bound or isinstance(bound[0], failure.Failure):
            why = bound[0].getErrorMessage() if bound else "not bound at once"
            sys.stderr.write(f"twistd primecount: error: cannot listen on {description}: {why}\n")
            raise SystemExit(1)
        port = bound[0]
        ports.append(port)
        sockets[f"{label}{n}"] = workers.listening_socket(port)
        addresses.append(f"{label} {address_text(port.getHost())}")
    scratchDir = workers.Scratch()
    scratch = scratchDir.path
    counts = workers.SharedCounts(os.path.join(scratch, "connections"), config["workers"])
    top = service.MultiService()
    _Bound(ports).setServiceParent(top)
    env: dict[str, str] = {}
    metrics = None
    if config["metrics-port"] is not None:
        from primecount.metrics.prometheus import MULTIPROCESS_DIRECTORY, Metrics

        shared = os.path.join(scratch, "metrics")
        os.makedirs(shared)
        # Before the first Metrics in this process; the workers inherit it.
        os.environ[MULTIPROCESS_DIRECTORY] = env[MULTIPROCESS_DIRECTORY] = shared
        metrics = Metrics(clock=reactor)
        _metricsListener(config, reactor, metrics).setServiceParent(top)
    supervisor = workers.Supervisor(
        reactor,
        config["workers"],
        config.argv,
        sockets,
        counts,
        env=env,
        # Workers get their own --shutdown-timeout, then 5 s more before
        # SIGKILL; 0 ("no bound") never kills them.
        stopTimeout=config["shutdown-timeout"] + 5 if config["shutdown-timeout"] else None,
        metrics=metrics,
    )
    supervisor.setServiceParent(top)
    reactor.callWhenRunning(
        _log.info,
        "primecount {version} listening on {addresses}; {n} worker processes; {settings}",
        version=__version__,
        addresses=", ".join(addresses),
        n=config["workers"],
        settings=_settings(config),
    )
    reactor.addSystemEventTrigger("after", "shutdown", _cleanup, scratchDir, counts)
    return top


def _cleanup(scratch: workers.Scratch, counts: Any) -> None:
    counts.close()
    scratch.remove()
