# -*- test-case-name: tests.unit.test_tap,tests.system.test_tap_process -*-
"""
The twistd plugin's options and service: C{twistd primecount --port 5050}.

L{Options} parses and checks the command line; L{makeService} composes the
server from it: one serving process, or with C{--workers N} a supervisor
of N worker processes (each of which runs this same plugin).
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any, ClassVar

from twisted.application import service
from twisted.internet import endpoints
from twisted.logger import Logger
from twisted.python import usage

from primecount import __version__
from primecount.core import options as coerce
from primecount.journal import DEFAULT_URL, JournalURL, JournalURLError, parse_url
from primecount.journal.sqlite import check_writable
from primecount.server import placement
from primecount.server.connections import Connections
from primecount.server.countprotocol import FRAMINGS, READ, READ_WINDOW
from primecount.server.listeners import METRICS, Listener, descriptions, tcp_description
from primecount.server.service import PrimecountService, connection_limit, serve, settings_text
from primecount.workers.environment import WORKER_ENV, WorkerEnvironment
from primecount.workers.shared import Scratch, SharedCounts
from primecount.workers.supervisor import Supervisor, bind, die_with_parent

if TYPE_CHECKING:
    from primecount.metrics.prometheus import Metrics

_log = Logger(namespace="primecount")


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
        ["port", "p", 5050, "TCP port of the count protocol.", coerce.port("port")],
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
            coerce.positive("threads"),
        ],
        [
            "timeout",
            None,
            5.0,
            "Idle seconds before a connection is closed.",
            coerce.seconds("timeout", "0 disables"),
        ],
        [
            "max-line",
            None,
            16384,
            "Longest accepted request line, in bytes.",
            coerce.positive("max-line"),
        ],
        ["framing", None, "line", "How requests are delimited on the count port.", _framing],
        [
            "max-connections",
            None,
            10000,
            "Open connections beyond this get ERR server busy.",
            coerce.positive("max-connections"),
        ],
        ["journal", None, DEFAULT_URL, "Where requests are recorded.", _journal],
        [
            "max-per-peer",
            None,
            None,
            "Open connections one client address may hold (default: no limit of its own)",
            coerce.positive("max-per-peer"),
        ],
        [
            "shutdown-timeout",
            None,
            10.0,
            "On SIGTERM, seconds to finish what was received before closing anyway.",
            coerce.seconds("shutdown-timeout", "0 waits as long as it takes"),
        ],
        [
            "workers",
            None,
            1,
            "Serving processes sharing the listening sockets.",
            coerce.positive("workers"),
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
            coerce.port("metrics-port"),
        ],
        [
            "range-port",
            None,
            None,
            "TCP port of the range protocol, bound on --interface (default: off)",
            coerce.port("range-port"),
        ],
    ]

    compData = usage.Completions(
        optActions={"interface": usage.CompleteHostnames()},
    )

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []
        self["range-listen"] = []

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

    def opt_range_listen(self, description: str) -> None:
        """
        A Twisted endpoint description for the range protocol, repeatable,
        as for --listen (haproxy:tcp:5051:interface=127.0.0.1 behind
        HAProxy); in addition to --range-port, if given.
        """
        self["range-listen"].append(description)

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
        # A worker serves the sockets its supervisor bound (and checked):
        # those of systemd: descriptions were passed to the supervisor only.
        checked = [("listen", d) for d in self["listen"]]
        checked += [("range-listen", d) for d in self["range-listen"]]
        if os.environ.get(WORKER_ENV):
            checked = []
        for option, description in checked:
            try:
                # Parsing only: no reactor is needed until makeService.
                endpoints.serverFromString(None, description)
            except ImportError as e:
                # ssl: without pyOpenSSL (twisted[tls], a dependency).
                raise usage.UsageError(
                    f"--{option} {description!r} needs TLS support, which is not "
                    f"installed ({e}): pip install 'twisted[tls]'"
                ) from None
            except IndexError:
                # systemd: with no (or too few) sockets passed down.
                raise usage.UsageError(
                    f"--{option} {description!r}: systemd passed no such socket "
                    "(LISTEN_FDS and LISTEN_FDNAMES come from a .socket unit; see deploy/)"
                ) from None
            except Exception as e:
                # A bad description, a missing or bad certificate file.
                raise usage.UsageError(f"bad --{option} {description!r}: {e}") from None
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


def makeService(options: PrimecountOptions, reactor: Any = None) -> service.MultiService:
    """
    Build the server from parsed options: one serving process, or (with
    C{--workers N}) a supervisor of N, or one of those N workers.

    @param reactor: the reactor to run on; the global one when L{None}.
    """
    if reactor is None:
        from twisted.internet import reactor
    told = WorkerEnvironment.decode(os.environ)
    if told is not None:
        return _worker(options, reactor, told)
    if options["workers"] > 1:
        return _supervisor(options, reactor)
    options["max-connections"] = connection_limit(options["max-connections"])
    connections = Connections(options["max-connections"], options["max-per-peer"], clock=reactor)
    reactor.addSystemEventTrigger("before", "shutdown", connections.episodes.flush)
    metrics = _metrics(options, reactor)
    top = serve(options, reactor, connections, metrics=metrics)
    if metrics is not None:
        _metricsListener(options, reactor, metrics).setServiceParent(top)
    return top


def _metrics(options: PrimecountOptions, reactor: Any) -> Metrics | None:
    """
    The metrics recorder C{--metrics-port} asks for, else L{None}.
    """
    if options["metrics-port"] is None:
        return None
    from primecount.metrics.prometheus import Metrics

    return Metrics(clock=reactor)


def _metricsListener(options: PrimecountOptions, reactor: Any, metrics: Any) -> Listener:
    from primecount.metrics.http import metricsSite

    description = tcp_description(options["metrics-port"], options["interface"])
    endpoint = endpoints.serverFromString(reactor, description)
    return Listener(METRICS, description, endpoint, metricsSite(metrics))


def _worker(options: PrimecountOptions, reactor: Any, told: WorkerEnvironment) -> PrimecountService:
    """
    One of C{--workers N}: serve on the sockets the supervisor hands down,
    counting connections in the shared table.
    """
    die_with_parent(told.supervisor)
    counts = SharedCounts(told.counts, told.workers, told.index)
    # The supervisor warned if the open-files limit lowers the limit.
    options["max-connections"] = connection_limit(options["max-connections"], warn=False)
    connections = Connections(
        options["max-connections"], options["max-per-peer"], counts, clock=reactor
    )
    reactor.addSystemEventTrigger("before", "shutdown", connections.episodes.flush)
    # With --metrics-port, values go to the shared directory; the
    # supervisor serves the sum.
    metrics = _metrics(options, reactor)
    return serve(options, reactor, connections, told.adopted(), metrics, told.index)


def _supervisor(options: PrimecountOptions, reactor: Any) -> service.MultiService:
    """
    C{--workers N}: bind the sockets here, serve in N worker processes.
    """
    options["max-connections"] = connection_limit(options["max-connections"])
    bound = bind(
        reactor,
        descriptions(
            options["listen"], options["range-port"], options["interface"], options["range-listen"]
        ),
    )
    scratch = Scratch()
    counts = SharedCounts(os.path.join(scratch.path, "connections"), options["workers"])
    top = service.MultiService()
    bound.setServiceParent(top)
    env: dict[str, str] = {}
    metrics = None
    if options["metrics-port"] is not None:
        from primecount.metrics.prometheus import MULTIPROCESS_DIRECTORY

        shared = os.path.join(scratch.path, "metrics")
        os.makedirs(shared)
        # Before the first Metrics in this process; the workers inherit it.
        os.environ[MULTIPROCESS_DIRECTORY] = env[MULTIPROCESS_DIRECTORY] = shared
        metrics = _metrics(options, reactor)
        _metricsListener(options, reactor, metrics).setServiceParent(top)
    Supervisor(
        reactor,
        options["workers"],
        options.argv,
        bound.sockets,
        counts,
        env=env,
        # Workers get their own --shutdown-timeout, then 5 s more before
        # SIGKILL; 0 ("no bound") never kills them.
        stopTimeout=options["shutdown-timeout"] + 5 if options["shutdown-timeout"] else None,
        metrics=metrics,
    ).setServiceParent(top)
    reactor.callWhenRunning(
        _log.info,
        "primecount {version} listening on {addresses}; {n} worker processes; {settings}",
        version=__version__,
        addresses=", ".join(bound.addresses),
        n=options["workers"],
        settings=settings_text(options),
    )
    reactor.addSystemEventTrigger("after", "shutdown", _cleanup, scratch, counts)
    return top


def _cleanup(scratch: Scratch, counts: SharedCounts) -> None:
    counts.close()
    scratch.remove()
