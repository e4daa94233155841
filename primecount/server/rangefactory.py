# -*- test-case-name: tests.unit.test_rangeserver -*-
"""
L{RangeFactory}: builds the range protocol's connections and holds what they
share: the reactor, the thread pool, the journal, the slots that keep range
jobs fair (see L{primecount.server.rangeprotocol}), the connection limits.
"""

from __future__ import annotations

import copy
import os
from typing import Any

from twisted.internet.defer import Deferred, DeferredSemaphore, maybeDeferred
from twisted.internet.interfaces import IConsumer, IPushProducer, IReactorCore
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.threads import deferToThreadPool
from twisted.logger import LogLevel
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from primecount.core.outcomes import SERVER_BUSY
from primecount.core.primes import SEGMENT_SIZE
from primecount.core.proxyheader import TRUSTED_BY_DEFAULT, TrustedProxies
from primecount.journal import Journal, JournalUnavailable
from primecount.journal.records import PROTOCOL_RANGE, Record
from primecount.metrics.recorder import MetricsRecorder, NullMetrics
from primecount.server.budget import MemoryBudget
from primecount.server.connections import Connections, peer_of
from primecount.server.primestream import PrimeStream
from primecount.server.rangeprotocol import RangeProtocol


class _Refused(Protocol):
    """
    Closes a connection over the limits.
    """

    def connectionMade(self) -> None:
        transport: Any = self.transport
        transport.loseConnection()


class RangeFactory(Factory):
    """
    Builds L{RangeProtocol}s and holds what they share: the reactor, the
    thread pool, the journal and the slots that keep range jobs fair.

    @ivar reactor: the reactor the protocols run on.
    @ivar threadpool: where counting and sieving happen.
    @ivar journal: where records go (a L{primecount.journal.NullJournal}
        for none).
    @ivar timeout: idle seconds before a connection is closed; 0 or L{None}
        disables it.
    @ivar segmentSize: numbers sieved per pool job.
    @ivar maxJobs: how many range jobs may run in the pool at once.
    """

    protocol = RangeProtocol  # type: ignore[assignment]
    noisy = False

    def __init__(
        self,
        reactor: IReactorCore,
        threadpool: ThreadPool,
        journal: Journal,
        timeout: float | None = 5.0,
        segmentSize: int = SEGMENT_SIZE,
        maxJobs: int | None = None,
        connections: Connections | None = None,
        metrics: MetricsRecorder | None = None,
        proxyHeader: bool = False,
        trustedProxies: TrustedProxies = TRUSTED_BY_DEFAULT,
        budget: MemoryBudget | None = None,
    ) -> None:
        """
        @param reactor: provides C{callLater} and C{callFromThread}.
        @param threadpool: a started L{ThreadPool} (or a test double with
            C{callInThreadWithCallback}).
        @param journal: where records go.
        @param timeout: idle seconds before a connection is closed.
        @param segmentSize: numbers sieved per pool job.
        @param maxJobs: range jobs allowed in the pool at once; by default
            the number of CPUs, but always fewer than the pool's threads
            when it has more than one, so other work finds a thread.
        @param connections: the process's open connections and their limits,
            shared with the count protocol's factory.
        @param metrics: counts requests by outcome and open connections.
        @param proxyHeader: connections start with a PROXY protocol header
            (behind HAProxy's C{send-proxy-v2} or C{send-proxy}); limits
            and the journal use the client address it names.
        @param trustedProxies: with C{proxyHeader} (or L{behindProxy}), the
            only addresses whose connections are served; others are closed.
        @param budget: the memory the process's connections may hold for
            their clients, shared with the count protocol's factory.
        """
        self.reactor = reactor
        self.threadpool = threadpool
        self.journal = journal
        self.timeout = timeout
        self.segmentSize = segmentSize
        if maxJobs is None:
            threads = int(getattr(threadpool, "max", 1) or 1)
            maxJobs = max(1, min(os.cpu_count() or 1, threads - 1))
        self.maxJobs = maxJobs
        self._slots = DeferredSemaphore(maxJobs)
        self.connections = connections if connections is not None else Connections(clock=reactor)
        self.metrics: MetricsRecorder = metrics if metrics is not None else NullMetrics()
        self.proxyHeader = proxyHeader
        self.trustedProxies = trustedProxies
        self.budget = budget if budget is not None else MemoryBudget()

    def behindProxy(self) -> RangeFactory:
        """
        This factory for a listener behind HAProxy: the same pool, journal,
        job slots and connections, but every connection starts with a PROXY
        protocol header.
        """
        twin = copy.copy(self)
        twin.proxyHeader = True
        return twin

    def buildProtocol(self, addr: object) -> Protocol:
        """
        A new protocol for a new connection, or one that closes at once when
        the process is at its connection limits (the binary protocol has no
        way to say why). Behind HAProxy, admission waits for the header.
        """
        if self.proxyHeader:
            return RangeProtocol(self)
        if not self.connections.admit(peer_of(addr)[0]):
            self.metrics.requests(PROTOCOL_RANGE, SERVER_BUSY)
            return _Refused()
        return RangeProtocol(self)

    def run(self, f: Any, *args: Any) -> Deferred[Any]:
        """
        Run C{f(*args)} in the pool once a range job slot is free.
        """
        return self._slots.run(deferToThreadPool, self.reactor, self.threadpool, f, *args)

    def stream(
        self,
        consumer: IConsumer,
        a: int,
        b: int,
        producer: IPushProducer | None = None,
    ) -> PrimeStream:
        """
        A L{PrimeStream} of the primes in [a, b] to C{consumer}, registered
        as C{producer} (by default itself).
        """
        return PrimeStream(
            self.reactor,
            self.threadpool,
            self._slots,
            consumer,
            a,
            b,
            self.segmentSize,
            producer,
        )

    def _journal(self, write: Any, record: Record) -> Deferred[bool]:
        """
        C{write([record])} to the journal. The journal logs its own outages
        (L{JournalUnavailable}); any other failure is logged here once per
        episode, which ends once none failed for a while (a journal that
        fails every other write is one episode, not a line per write).

        @return: fires with whether it worked; never errbacks.
        """
        d = maybeDeferred(write, [record])
        d.addCallbacks(lambda _: True, self._journalFailed)
        return d

    def journalAppend(self, record: Record) -> Deferred[bool]:
        """
        Commit a request's record: one about to be answered (its sum check
        still pending) or one that ended before its reply.
        """
        return self._journal(self.journal.append, record)

    def journalSettle(self, record: Record) -> Deferred[bool]:
        """
        Complete a pending record with how its request ended.
        """
        return self._journal(self.journal.settle, record)

    def _journalFailed(self, failure: Failure) -> bool:
        """
        A record could not be committed: log it, once per episode, unless
        the journal logged it itself.
        """
        if not failure.check(JournalUnavailable):
            self.connections.episodes.event(
                "range records the journal failed to write",
                "Journal unavailable ({why}); range requests are refused until it recovers",
                level=LogLevel.error,
                ended="range records the journal failed to write: {total} in {seconds:.0f} s; "
                "none for {quiet:g} s now",
                why=failure.getErrorMessage(),
                quiet=self.connections.episodes.quiet,
            )
        return False
