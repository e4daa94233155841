# -*- test-case-name: tests.unit.test_tap,tests.system.test_tap_process -*-
"""
The three shapes of C{twistd primecount}, composed from parsed options:
L{single} (one serving process), L{supervisor} (C{--workers N}: bind the
sockets, start N workers) and L{worker} (one of those N).

L{primecount.tap.makeService} picks one; everything here takes the reactor
it runs on.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping
from typing import TYPE_CHECKING, Any

from twisted.application import service
from twisted.internet import defer
from twisted.logger import Logger

from primecount import __version__
from primecount.core.privileges import acting_as, give
from primecount.journal import for_worker
from primecount.server.connections import Connections
from primecount.server.listeners import Listener, descriptions
from primecount.server.service import (
    PrimecountService,
    connection_limit,
    metrics_connections,
    metrics_listener,
    metrics_recorder,
    serve,
    settings_text,
)
from primecount.workers.environment import WorkerEnvironment
from primecount.workers.shared import Scratch, SharedCounts
from primecount.workers.supervisor import Supervisor, bind, die_with_parent

if TYPE_CHECKING:
    from primecount.metrics.prometheus import Metrics

_log = Logger(namespace="primecount")


def single(options: MutableMapping[str, Any], reactor: Any) -> service.MultiService:
    """
    One serving process: it binds its own sockets.
    """
    limit = connection_limit(options["max-connections"], others=metrics_connections(options))
    connections = _connections(options, reactor, limit)
    metrics = metrics_recorder(options, reactor)
    top = serve(options, reactor, connections, metrics=metrics)
    if metrics is not None:
        # Added as a listener: the start's log line names it too.
        top.addListener(metrics_listener(options, reactor, metrics))
    return top


def worker(
    options: MutableMapping[str, Any], reactor: Any, told: WorkerEnvironment
) -> PrimecountService:
    """
    One of C{--workers N}: serve on the sockets the supervisor hands down,
    counting connections in the shared table, journalling to its own part
    of an SQLite journal (the same part again after a restart).
    """
    die_with_parent(told.supervisor)
    options["journal"] = for_worker(options["journal"], told.index)
    counts = SharedCounts(told.counts, told.workers, told.index)
    # The supervisor warned if the open-files limit lowers the limit.
    limit = connection_limit(options["max-connections"], warn=False)
    connections = _connections(options, reactor, limit, counts)
    # With --metrics-port, values go to the shared directory; the
    # supervisor serves the sum.
    metrics = metrics_recorder(options, reactor)
    return serve(options, reactor, connections, told.adopted(), metrics, told.index)


def _connections(
    options: MutableMapping[str, Any], reactor: Any, limit: int, counts: SharedCounts | None = None
) -> Connections:
    """
    The table of open connections of a serving process, whose limit
    C{limit} (C{--max-connections}, lowered to what the open-files limit
    allows) is also what the start's log line says.
    """
    options["max-connections"] = limit
    connections = Connections(limit, options["max-per-peer"], counts, clock=reactor)
    reactor.addSystemEventTrigger("before", "shutdown", connections.episodes.flush)
    return connections


def supervisor(options: Any, reactor: Any) -> service.MultiService:
    """
    C{--workers N}: bind the sockets here, serve in N worker processes.

    @param options: the parsed options, with C{argv}, the command line each
        worker is started with, and C{owner}, whom twistd switches to
        (C{--uid/--gid}) before the workers start: what they share is made
        as that user.
    """
    options["max-connections"] = connection_limit(options["max-connections"])
    bound = bind(
        reactor,
        descriptions(
            options["listen"],
            options["range-port"],
            options["interface"],
            options["range-listen"],
            options["port"],
        ),
        owner=options.owner,
    )
    top = service.MultiService()
    bound.setServiceParent(top)
    env: dict[str, str] = {}
    metrics: Metrics | None = None
    listening: list[Listener] = []
    with acting_as(options.owner):
        scratch = Scratch()
        counts = SharedCounts(os.path.join(scratch.path, "connections"), options["workers"])
        shared = os.path.join(scratch.path, "metrics")
        if options["metrics-port"] is not None:
            os.makedirs(shared)
    if options["metrics-port"] is not None:
        from primecount.metrics.prometheus import MULTIPROCESS_DIRECTORY, Metrics

        # Before the first Metrics in this process; the workers inherit it.
        os.environ[MULTIPROCESS_DIRECTORY] = env[MULTIPROCESS_DIRECTORY] = shared
        metrics = Metrics(clock=reactor)
        # Its first files, made before twistd switches user (importing
        # prometheus_client as that user may fail: the code may be root's).
        give(shared, options.owner)
        listening.append(metrics_listener(options, reactor, metrics))
        listening[-1].setServiceParent(top)
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
    addresses = defer.gatherResults([listener.address() for listener in listening])
    addresses.addCallback(
        lambda found: reactor.callWhenRunning(
            _log.info,
            "primecount {version} listening on {addresses}; {n} worker processes; {settings}",
            version=__version__,
            addresses=", ".join(bound.addresses + found),
            n=options["workers"],
            settings=settings_text(options),
        )
    )
    reactor.addSystemEventTrigger("after", "shutdown", _cleanup, scratch, counts)
    return top


def _cleanup(scratch: Scratch, counts: SharedCounts) -> None:
    counts.close()
    scratch.remove()
