# -*- test-case-name: tests.unit.test_tap,tests.system.test_tap_process -*-
"""
The twistd plugin's options and service: C{twistd primecount --port 5050}.

L{Options} parses and checks the command line; L{settings} unpacks it, once,
into the typed L{Settings} of this process; L{makeService} hands those to
L{primecount.compose}, which builds one serving process, or with
C{--workers N} a supervisor of N worker processes (each of which runs this
same plugin), or one of those workers. Only this module reads the options
by their names.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from typing import Any, ClassVar

from twisted.application import service
from twisted.python import usage

from primecount import compose
from primecount.compose import Framing, JournalSettings, Limits, Listening, Processes, Settings
from primecount.core import options as coerce
from primecount.core.privileges import Owner, acting_as, switched_to
from primecount.core.proxyheader import DEFAULT_TRUSTED, TrustedProxies
from primecount.journal import (
    DEFAULT_TIMEOUT,
    DEFAULT_URL,
    DURABILITIES,
    JournalURL,
    JournalURLError,
    check_journal,
    for_worker,
    parse_url,
    resolve_durability,
)
from primecount.journal.sqlite import check_writable
from primecount.server import placement
from primecount.server.budget import parse_size
from primecount.server.countprotocol import parse_framing
from primecount.server.listeners import (
    Wanted,
    check_description,
    descriptions,
    metrics_wanted,
    repeated_port,
    tcp_description,
)
from primecount.server.proxy import check_trusted
from primecount.workers.environment import WorkerEnvironment


def _journal(value: str) -> JournalURL:
    try:
        return parse_url(value)
    except JournalURLError as e:
        raise ValueError(f"--journal: {e}") from None


_journal.coerceDoc = (  # type: ignore[attr-defined]
    "PATH or sqlite:PATH (an SQLite file), postgresql://USER@HOST:PORT/DB?... or none."
)


def _durability(value: str) -> str:
    if value not in DURABILITIES:
        raise ValueError(
            f"--journal-durability wants one of {', '.join(DURABILITIES)}; got {value!r}"
        )
    return value


_durability.coerceDoc = (  # type: ignore[attr-defined]
    "process: primecount being killed; disk: also a crash or power loss of the "
    "database's host; standby: also a failover to a synchronous standby "
    "(PostgreSQL only)."
)


def _cpus(value: str) -> placement.Placement:
    try:
        return placement.parse(value)
    except ValueError as e:
        raise ValueError(f"--cpu-affinity wants {e}") from None


_cpus.coerceDoc = (  # type: ignore[attr-defined]
    "auto: each serving process on its own CPU; none: leave it to the scheduler; "
    "or CPU numbers such as 0,1 or 0-3."
)


def _trusted(value: str) -> TrustedProxies:
    try:
        return TrustedProxies.parse(value)
    except ValueError as e:
        raise ValueError(f"--trusted-proxies: {e}") from None


_trusted.coerceDoc = (  # type: ignore[attr-defined]
    "Comma-separated IP addresses and networks (CIDR, e.g. 10.0.0.0/8), and "
    "'unix' to trust connections on UNIX sockets (whoever the socket's "
    "permissions let connect). Connections to a haproxy: listener from any "
    "other address get ERR untrusted proxy (the range protocol: closed)."
)


def _owner(options: usage.Options) -> Owner | None:
    """
    Whom twistd switches to after binding (C{twistd --uid U --gid G
    primecount}): our options are a twistd subcommand, whose parent holds
    twistd's own options, parsed before ours.
    """
    parent = getattr(options, "parent", None)
    if parent is None:
        return None
    return switched_to(parent.get("uid"), parent.get("gid"))


def _framing(value: str) -> tuple[str, float]:
    return parse_framing(value)


_framing.coerceDoc = (  # type: ignore[attr-defined]
    "line: one request per LF-terminated line, many per connection. "
    "read: as the original server's clients, one request per connection, no "
    "newline needed: the connection's first read is the message (up to its "
    "first LF; over --max-line is ERR line too long), answered, then the "
    "connection is closed. read:MS: also wait up to MS milliseconds after "
    "the first byte for more segments of the message, unless a LF or the "
    "client's half-close ends it."
)


def _maxMemory(value: str) -> int:
    return parse_size(value)


_maxMemory.coerceDoc = (  # type: ignore[attr-defined]
    "MiB, or a size with a unit: 512K, 256M, 1G. What each serving process may hold "
    "for its clients (unread input, unanswered requests, unsent replies), all "
    "connections together; past it, the connections holding the most are not read "
    "until it drains."
)


#: How twistd's option parser prefixes a coercer's error; our coercers name
#: the option themselves.
_COERCE_FAILED = "Parameter type enforcement failed: "


class PrimecountOptions(usage.Options):
    """
    The options of C{twistd primecount}; bad values raise C{usage.UsageError}.
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
            "Close each connection after its first reply (the original server's behaviour).",
        ],
        [
            "journal-fsync",
            None,
            "The older spelling of --journal-durability disk (SQLite) or standby (PostgreSQL).",
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
            "max-memory",
            None,
            "96",
            "Memory budget for what clients make a serving process hold.",
            _maxMemory,
        ],
        [
            "journal-durability",
            None,
            None,
            "What an acknowledged record survives (default: process for SQLite, "
            "standby for PostgreSQL)",
            _durability,
        ],
        [
            "journal-timeout",
            None,
            DEFAULT_TIMEOUT,
            "Seconds a journal commit may take (a frozen database or file system, a "
            "table lock) before its requests are answered ERR journal unavailable.",
            coerce.number(
                float, "a number of seconds, at least 0.1", 0.1, option="journal-timeout"
            ),
        ],
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
            "On SIGTERM (or SIGINT, SIGHUP), seconds to finish what was received before "
            "closing anyway.",
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
            "HTTP port serving Prometheus metrics at /metrics, bound on --metrics-interface "
            "(default: off)",
            coerce.port("metrics-port"),
        ],
        [
            "metrics-interface",
            None,
            "127.0.0.1",
            "Address the metrics port binds: this machine only by default; 0.0.0.0 (or an "
            "address of the monitoring network) for a Prometheus elsewhere.",
        ],
        [
            "range-port",
            None,
            None,
            "TCP port of the range protocol, bound on --interface (default: off)",
            coerce.port("range-port"),
        ],
        [
            "trusted-proxies",
            None,
            DEFAULT_TRUSTED,
            "The proxies allowed to name the client in a PROXY header on haproxy: "
            "listeners; by default HAProxy on this host, over loopback.",
            _trusted,
        ],
    ]

    compData = usage.Completions(
        optActions={
            "interface": usage.CompleteHostnames(),
            "metrics-interface": usage.CompleteHostnames(),
        },
    )

    #: Whom twistd runs the server as after binding (C{--uid/--gid}), if
    #: anyone: what the start creates is created as that user.
    owner: Owner | None = None
    #: What the supervisor told this process in its environment, when it is
    #: one of C{--workers N}; else C{None}.
    worker: WorkerEnvironment | None = None
    #: The command line after C{primecount}: each worker runs with the same.
    argv: list[str]

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        """
        @param environ: the process's environment (C{os.environ} when
            C{None}), where a supervisor tells its workers what they are.
        """
        super().__init__()
        self._environ = os.environ if environ is None else environ
        self.argv = []
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
        try:
            self["journal-durability"] = resolve_durability(
                self["journal"].scheme, self["journal-durability"], bool(self["journal-fsync"])
            )
        except ValueError as e:
            raise usage.UsageError(str(e)) from None
        if isinstance(self["cpu-affinity"], str):
            self["cpu-affinity"] = _cpus(self["cpu-affinity"])
        try:
            for index in range(self["workers"]):
                placement.choose(self["cpu-affinity"], index, placement.allowed_cpus())
        except ValueError as e:
            raise usage.UsageError(f"--cpu-affinity: {e}") from None
        if isinstance(self["framing"], str):
            self["framing"] = _framing(self["framing"])
        if isinstance(self["trusted-proxies"], str):
            self["trusted-proxies"] = _trusted(self["trusted-proxies"])
        if isinstance(self["max-memory"], str):
            self["max-memory"] = _maxMemory(self["max-memory"])
        self.owner = _owner(self)
        if not self["listen"]:
            self["listen"] = [tcp_description(self["port"], self["interface"])]
        self.worker = WorkerEnvironment.decode(self._environ)
        if self.worker is not None:
            # Its supervisor checked the listeners (systemd: sockets are the
            # supervisor's alone) and every journal part before starting it.
            return
        checked = [("listen", d) for d in self["listen"]]
        checked += [("range-listen", d) for d in self["range-listen"]]
        try:
            for option, description in checked:
                check_description(option, description)
            check_trusted(checked, self["trusted-proxies"])
        except ValueError as e:
            raise usage.UsageError(str(e)) from None
        wanted = _listeners(self)
        metrics = _metrics(self)
        if metrics is not None:
            wanted.append(metrics)
        twice = repeated_port(wanted)
        if twice is not None:
            raise usage.UsageError(twice)
        journals = [self["journal"]]
        if self["workers"] > 1 and self["journal"].scheme == "sqlite":
            # Each worker writes its own part: one an earlier run left
            # unwritable stops the start here, not at the first commit.
            journals += [for_worker(self["journal"], i) for i in range(self["workers"])]
        try:
            for url in journals:
                if url.scheme == "sqlite":
                    # As the user twistd switches to: the file is created as
                    # that user's, and what that user cannot write stops the
                    # start here (its code is loaded: it may not be readable
                    # by that user, twistd --chroot or a root-only Python).
                    with acting_as(self.owner):
                        check_writable(url)
                else:
                    check_journal(url)
        except JournalURLError as e:
            raise usage.UsageError(str(e)) from None


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


def _listeners(options: PrimecountOptions) -> list[Wanted]:
    """
    The count and range listeners the options ask for.
    """
    return descriptions(
        options["listen"],
        options["range-port"],
        options["interface"],
        options["range-listen"],
        options["port"],
    )


def _metrics(options: PrimecountOptions) -> Wanted | None:
    """
    The metrics listener the options ask for, if any.
    """
    if options["metrics-port"] is None:
        return None
    return metrics_wanted(options["metrics-port"], options["metrics-interface"])


def settings(options: PrimecountOptions) -> Settings:
    """
    The settings of this process, from its parsed options: the options'
    values, typed, and what they imply here, computed once. A worker of
    C{--workers N} (see L{PrimecountOptions.worker}) journals to its own
    part (L{for_worker}); the connection limit is what the open-files limit
    allows (L{compose.effective_connections}, which raises that limit as
    far as it goes).
    """
    worker = options.worker
    metrics = _metrics(options)
    url = options["journal"] if worker is None else for_worker(options["journal"], worker.index)
    kind, readWindow = options["framing"]
    shape = compose.shape_of(options["workers"], worker)
    return Settings(
        listening=Listening(
            listeners=tuple(_listeners(options)),
            metrics=metrics,
            trustedProxies=options["trusted-proxies"],
        ),
        limits=Limits(
            maxConnections=compose.effective_connections(
                shape, options["max-connections"], metrics
            ),
            maxPerPeer=options["max-per-peer"],
            maxMemory=options["max-memory"],
            maxLine=options["max-line"],
            timeout=options["timeout"],
            shutdownTimeout=options["shutdown-timeout"],
        ),
        framing=Framing(
            kind=kind, readWindow=readWindow, closeAfterReply=bool(options["close-after-reply"])
        ),
        journal=JournalSettings(
            url=url,
            durability=options["journal-durability"],
            timeout=options["journal-timeout"],
        ),
        processes=Processes(
            workers=options["workers"],
            threads=options["threads"],
            placement=options["cpu-affinity"],
            owner=options.owner,
            argv=tuple(options.argv),
            worker=worker,
        ),
    )


def makeService(options: PrimecountOptions, reactor: Any = None) -> service.MultiService:
    """
    Build the server from parsed options: one serving process, or (with
    C{--workers N}) a supervisor of N, or one of those N workers.

    @param reactor: the reactor to run on; the global one when C{None}.
    """
    if reactor is None:
        from twisted.internet import reactor
    return compose.process(settings(options), reactor)
