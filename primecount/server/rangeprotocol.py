# -*- test-case-name: tests.unit.test_rangeserver,tests.system.test_rangeserver_sockets -*-
"""
The range protocol server: the primes in [a, b], streamed with flow control.

A client sends a and b (C{!ii}); the server answers N (C{!I}), computed
cheaply in the thread pool before any prime is known, then streams the N
primes segment by segment through L{PrimeStream}, a push producer
registered with the transport: sieving stops while the transport's buffer
is full and for good when the client goes away, so the server holds at most
two segments per connection whatever the width of the range. The client
then sends its sum (C{!q}); the server compares it with its own, journals a
L{Record} and reads the next request.

Fairness: every sieve job covers one segment (a few milliseconds), each
stream has at most one job queued or running, and all range jobs share a
small number of slots (L{RangeFactory.maxJobs}, by default at most the
number of CPUs and always fewer than the pool's threads) taken in arrival
order. Streams therefore take turns segment by segment, and the count
protocol always finds an idle thread in the shared pool.
"""

from __future__ import annotations

import copy
import os
from typing import Any, ClassVar

from twisted.internet.defer import Deferred, DeferredSemaphore, maybeDeferred, succeed
from twisted.internet.interfaces import IConsumer, IPushProducer, IReactorCore
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from primecount.core import rangecodec
from primecount.core.outcomes import (
    BAD_SUM,
    DISCONNECTED_BEFORE_REPLY,
    DISCONNECTED_BEFORE_SUM,
    DISCONNECTED_MID_STREAM,
    INCOMPLETE_REQUEST,
    INTERNAL_ERROR,
    NO_SUM,
    OK,
    SERVER_BUSY,
    STOPPED_READING,
    Outcome,
)
from primecount.core.primes import (
    SEGMENT_SIZE,
    count_between,
    primes_between,
    segment_bounds,
)
from primecount.journal import Journal, JournalUnavailable
from primecount.journal.records import RANGE, Record, now
from primecount.metrics.recorder import MetricsRecorder, NullMetrics
from primecount.server.connections import Connections, no_delay, peer_of
from primecount.server.countprotocol import ProxyHeaderReceiver

#: Unprocessed input beyond this many bytes stops reading from the client
#: until the protocol catches up.
MAX_BUFFER = 1 << 16


def encoded_segment(lo: int, hi: int) -> tuple[bytes, int, int]:
    """
    Sieve one segment and serialise it: the pool job of L{PrimeStream}.

    @param lo: the segment's lower bound.
    @param hi: the segment's upper bound.
    @return: the wire bytes of the primes in [lo, hi], how many there are
        and their sum.
    """
    primes = primes_between(lo, hi)
    return rangecodec.encode_primes(primes), len(primes), rangecodec.prime_sum(primes)


@implementer(IPushProducer)
class PrimeStream:
    """
    Writes the primes of [a, b] to a consumer, one pool job per segment.

    At most one job is queued or running at a time. The next segment is
    requested before the current one is written, so sieving overlaps
    sending; a paused stream requests nothing more, and a stopped one drops
    what its last job returns.

    @ivar done: fires with C{(count, total)}, the number and sum of the
        primes written, after the last write; errbacks if a sieve job fails;
        never fires once the stream is stopped.
    """

    def __init__(
        self,
        reactor: Any,
        threadpool: ThreadPool,
        slots: DeferredSemaphore,
        consumer: IConsumer,
        a: int,
        b: int,
        segment_size: int = SEGMENT_SIZE,
        producer: IPushProducer | None = None,
    ) -> None:
        """
        @param reactor: delivers pool results on the reactor thread.
        @param threadpool: runs the sieve jobs.
        @param slots: limits how many range jobs run at once, server-wide.
        @param consumer: the transport the primes are written to.
        @param a: the lower bound of the range.
        @param b: the upper bound of the range.
        @param segment_size: numbers sieved per job.
        @param producer: what to register with the consumer: by default the
            stream itself; a protocol that wants to hear of pauses registers
            itself and passes them on.
        """
        self._producer = self if producer is None else producer
        self._reactor = reactor
        self._threadpool = threadpool
        self._slots = slots
        # Any: mypy without the zope plugin misreads interface methods.
        self._consumer: Any = consumer
        self._bounds = segment_bounds(a, b, segment_size)
        self._upcoming: tuple[int, int] | None = next(self._bounds, None)
        self._job: Deferred[Any] | None = None
        self._paused = False
        self._stopped = False
        self._count = 0
        self._total = 0
        self.done: Deferred[tuple[int, int]] = Deferred()

    def start(self) -> None:
        """
        Register with the consumer and request the first segment.
        """
        self._consumer.registerProducer(self._producer, True)
        self._next()
        self._finishIfDone()

    def pauseProducing(self) -> None:
        """
        The consumer's buffer is full: request no more segments.
        """
        self._paused = True

    def resumeProducing(self) -> None:
        """
        The consumer drained its buffer: carry on.
        """
        self._paused = False
        self._next()

    def stopProducing(self) -> None:
        """
        The consumer is gone: no more sieving, and drop the job in flight.
        """
        self._stopped = True
        self._upcoming = None

    def _next(self, lookahead: bool = False) -> None:
        """
        Request the upcoming segment, unless paused, stopped, finished or
        already waiting for one.

        @param lookahead: request it even if paused: the pause came from
            writing the segment just received, and sieving the next one
            while that is sent is what keeps the stream fast. This bounds
            what a paused stream holds to two segments.
        """
        if (self._paused and not lookahead) or self._stopped:
            return
        if self._job is not None:
            return
        if self._upcoming is None:
            return
        lo, hi = self._upcoming
        self._upcoming = next(self._bounds, None)
        job = self._slots.run(self._sieve, lo, hi)
        self._job = job
        job.addCallbacks(self._written, self._failed)

    def _sieve(self, lo: int, hi: int) -> Deferred[tuple[bytes, int, int] | None]:
        """
        Run one segment's job in the pool once a slot is free, unless the
        stream was stopped while it waited for the slot.
        """
        if self._stopped:
            return succeed(None)
        return deferToThreadPool(self._reactor, self._threadpool, encoded_segment, lo, hi)

    def _written(self, result: tuple[bytes, int, int] | None) -> None:
        """
        Write a sieved segment, then request the next one.
        """
        self._job = None
        if self._stopped or result is None:
            return
        data, count, total = result
        self._count += count
        self._total += total
        paused = self._paused
        if data:
            self._consumer.write(data)
        self._next(lookahead=not paused)
        self._finishIfDone()

    def _finishIfDone(self) -> None:
        """
        Unregister and fire L{done} once every segment is written.
        """
        if self._stopped or self._job is not None or self._upcoming is not None:
            return
        if self.done.called:
            return
        self._stopped = True
        self._consumer.unregisterProducer()
        self.done.callback((self._count, self._total))

    def _failed(self, failure: Failure) -> None:
        """
        A sieve job failed: stop and pass the failure on through L{done}.
        """
        self._job = None
        if self._stopped:
            return
        self._stopped = True
        self._consumer.unregisterProducer()
        self.done.errback(failure)


# Where a connection is in its request cycle.
_IDLE = "idle"  # waiting for a request
_COUNTING = "counting"  # N is being computed in the pool
_STREAMING = "streaming"  # the primes are being sent
_AWAITING_SUM = "awaiting sum"  # all sent, waiting for the client's sum
_JOURNALLING = "journalling"  # waiting for the record to be committed


@implementer(IPushProducer)
class RangeProtocol(ProxyHeaderReceiver, Protocol, TimeoutMixin):
    """
    One range protocol connection: request, N, primes, sum, record; repeat.

    The idle timeout runs while the server waits for the client (a request
    or a sum) and while the client stops reading mid-stream; it is suspended
    while the server itself is working.

    Behind HAProxy (L{RangeFactory.proxyHeader}) the connection starts with
    a PROXY protocol header, read before the first request: the client it
    names is the one the limits count and the journal records. A bad header
    closes the connection (the binary protocol has no error message).

    @ivar factory: the L{RangeFactory} that made this protocol.
    @ivar host: the client's address. @ivar port: the client's port.
    """

    _log: ClassVar[Logger] = Logger()
    metricsProtocol = RANGE
    refusals = "range connections closed for"

    def __init__(self, factory: RangeFactory) -> None:
        """
        @param factory: supplies the reactor, pool, journal and settings.
        """
        self.factory = factory
        self.callLater = factory.reactor.callLater  # type: ignore[method-assign]
        self._buffer = bytearray()
        self._state = _IDLE
        self._a: int | None = None
        self._b: int | None = None
        self._count: int | None = None
        self._total = 0
        self._stream: PrimeStream | None = None
        self._readingPaused = False
        self._lost = False
        self._timeoutError: Outcome | None = None
        self.host, self.port = "", 0
        self._closing = False
        self._pending = False  # the current request has a pending record

    def connectionMade(self) -> None:
        """
        Start the idle timeout; behind HAProxy, wait for the PROXY header
        before counting the connection.
        """
        self._closing = False
        transport: Any = self.transport
        self.host, self.port = peer_of(transport.getPeer(), transport.getHost())
        no_delay(transport)
        if self.factory.proxyHeader:
            self._awaitingProxy = True
        else:
            self._admitted()
        self._waitForClient()

    def _admitted(self) -> None:
        self.factory.connections.opened(self, self.host)
        self.factory.metrics.connectionOpened(RANGE)

    def _refuse(self, outcome: Outcome) -> None:
        transport: Any = self.transport
        transport.loseConnection()

    def closeWhenDone(self) -> None:
        """
        Graceful stop: finish the request in progress (stream, sum, record),
        then close instead of reading the next one.
        """
        self._closing = True
        if self._state == _IDLE and not self._lost:
            transport: Any = self.transport
            transport.loseConnection()

    def dataReceived(self, data: bytes) -> None:
        """
        Buffer the bytes and act on every complete message in them.
        """
        if self._awaitingProxy:
            data = self._proxyHeader(data)
            if not data:
                return
        self._buffer += data
        self._process()

    def _process(self) -> None:
        """
        Handle the buffered request or sum the current state waits for.
        """
        if self._lost:
            return
        if self._state == _IDLE and len(self._buffer) >= rangecodec.REQUEST_STRUCT.size:
            request = bytes(self._buffer[: rangecodec.REQUEST_STRUCT.size])
            del self._buffer[: rangecodec.REQUEST_STRUCT.size]
            self._request(*rangecodec.decode_request(request))
        elif self._state == _AWAITING_SUM and len(self._buffer) >= rangecodec.SUM_STRUCT.size:
            data = bytes(self._buffer[: rangecodec.SUM_STRUCT.size])
            del self._buffer[: rangecodec.SUM_STRUCT.size]
            self._summed(rangecodec.decode_sum(data))
        self._throttle()

    def _throttle(self) -> None:
        """
        Stop reading while too much unprocessed input is buffered.
        """
        transport = self.transport
        if transport is None:
            return
        if len(self._buffer) > MAX_BUFFER and not self._readingPaused:
            self._readingPaused = True
            transport.pauseProducing()  # type: ignore[attr-defined]
        elif len(self._buffer) <= MAX_BUFFER and self._readingPaused:
            self._readingPaused = False
            transport.resumeProducing()  # type: ignore[attr-defined]

    def _request(self, a: int, b: int) -> None:
        """
        A request arrived: compute N in the pool.
        """
        self._state = _COUNTING
        self._a, self._b = a, b
        self._count = None
        self.setTimeout(None)
        d = self.factory.run(count_between, a, b)
        d.addCallbacks(self._counted, self._failed)

    def _counted(self, count: int) -> None:
        """
        N is known: journal the request (its sum verdict still pending),
        and reply once that record is committed.
        """
        if self._lost:
            return
        self._count = count
        self._pending = True
        d = self.factory.journalAppend(self._recordOf(None))
        d.addCallback(self._reply)

    def _reply(self, committed: bool) -> None:
        """
        The pending record is committed (or could not be): send N, then
        stream the primes. Nothing is answered without its record; the
        binary protocol has no error message, so a request that could not
        be journalled gets its connection closed.
        """
        if self._lost:
            return
        if not committed:
            self._abort()
            return
        transport: Any = self.transport
        transport.write(rangecodec.encode_count(self._count or 0))
        self._state = _STREAMING
        if not self._count:
            self._streamed((0, 0))
            return
        assert self._a is not None and self._b is not None
        stream = self.factory.stream(transport, self._a, self._b, self)
        self._stream = stream
        stream.done.addCallbacks(self._streamed, self._failed)
        stream.start()

    def pauseProducing(self) -> None:
        """
        The client stopped reading: pause the stream, and start the timeout.
        """
        if self._stream is not None:
            self._stream.pauseProducing()
            self._waitForClient()

    def resumeProducing(self) -> None:
        """
        The client reads again: resume the stream, stop the timeout.
        """
        if self._stream is not None:
            self.setTimeout(None)
            self._stream.resumeProducing()

    def stopProducing(self) -> None:
        """
        The connection is going away: stop the stream.
        """
        if self._stream is not None:
            self._stream.stopProducing()

    def _streamed(self, result: tuple[int, int]) -> None:
        """
        Every prime is written: wait for the client's sum.
        """
        count, total = result
        self._stream = None
        if count != self._count:
            self._log.error(
                "Sent {sent} primes for [{a}, {b}] after announcing {count}",
                sent=count,
                a=self._a,
                b=self._b,
                count=self._count,
            )
            self._record(INTERNAL_ERROR)
            self._state = _JOURNALLING
            self._abort()
            return
        self._total = total
        self._state = _AWAITING_SUM
        self._waitForClient()
        self._process()

    def _summed(self, total: int) -> None:
        """
        The client's sum arrived: journal the request, then read the next.
        """
        self.setTimeout(None)
        ok = total == self._total
        d = self._record(OK if ok else BAD_SUM, sum_ok=ok)
        self._state = _JOURNALLING
        d.addCallback(self._journalled)

    def _journalled(self, _: object) -> None:
        """
        The record is committed (or the journal failed, already logged):
        take the next request.
        """
        if self._lost:
            return
        self._state = _IDLE
        if self._closing:
            transport: Any = self.transport
            transport.loseConnection()
            return
        self._waitForClient()
        self._process()

    def _failed(self, failure: Failure) -> None:
        """
        Computing N or sieving failed: log, journal and drop the connection
        (the client cannot tell a missing prime from a late one).
        """
        self._log.failure("Range request [{a}, {b}] failed", failure, a=self._a, b=self._b)
        if self._lost:
            return
        self._stream = None
        self._record(INTERNAL_ERROR)
        self._state = _JOURNALLING
        self._abort()

    def _waitForClient(self) -> None:
        """
        (Re)start the idle timeout: it is now the client's turn.
        """
        timeout = self.factory.timeout
        self.setTimeout(timeout if timeout else None)

    def timeoutConnection(self) -> None:
        """
        The client kept us waiting for too long: close, or abort when it
        stopped reading (the unsent data would never drain).
        """
        if self._state == _STREAMING:
            self._timeoutError = STOPPED_READING
            self._abort()
        else:
            self._timeoutError = NO_SUM if self._state == _AWAITING_SUM else None
            transport: Any = self.transport
            transport.loseConnection()

    def _abort(self) -> None:
        """
        Drop the connection without flushing what is buffered.
        """
        if self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]

    def connectionLost(self, reason: Failure = Protocol.connectionLost) -> None:  # type: ignore[assignment]
        """
        Stop the stream and journal a request the client walked out of.
        """
        self.setTimeout(None)
        self._lost = True
        if self._awaitingProxy:
            return  # never admitted: nothing counted, no request to journal
        self.factory.metrics.connectionClosed(RANGE)
        if self._stream is not None:
            self._stream.stopProducing()
            self._stream = None
        if self._state == _COUNTING:
            self._record(DISCONNECTED_BEFORE_REPLY)
        elif self._state == _STREAMING:
            self._record(self._timeoutError or DISCONNECTED_MID_STREAM)
        elif self._state == _AWAITING_SUM:
            self._record(self._timeoutError or DISCONNECTED_BEFORE_SUM)
        elif self._state == _IDLE and self._buffer:
            self._a = self._b = None
            self._record(INCOMPLETE_REQUEST)
        self._state = _JOURNALLING
        # Last: during a stop, the last connection closed lets the journal
        # stop, and the record above must be queued before that.
        self.factory.connections.closed(self)

    def _recordOf(self, error: str | None, sum_ok: bool | None = None) -> Record:
        """
        The record of the current request.
        """
        return Record(
            time=now(),
            host=self.host,
            port=self.port,
            protocol=RANGE,
            count=self._count,
            error=error,
            a=self._a,
            b=self._b,
            sum_ok=sum_ok,
        )

    def _record(self, outcome: Outcome, sum_ok: bool | None = None) -> Deferred[bool]:
        """
        Journal how the current request ended: complete its pending record
        when it has one (N was about to be, or was, sent), else add one.

        @param outcome: how it ended (its journal error and metric label).
        @param sum_ok: whether the client's sum matched, when it sent one.
        @return: fires with whether the record was committed; never errbacks.
        """
        self.factory.metrics.requests(RANGE, outcome)
        record = self._recordOf(outcome.error, sum_ok)
        if self._pending:
            self._pending = False
            return self.factory.journalSettle(record)
        return self.factory.journalAppend(record)


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

    _log: ClassVar[Logger] = Logger()
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
        self._journalDown = False
        self.connections = connections if connections is not None else Connections()
        self.metrics: MetricsRecorder = metrics if metrics is not None else NullMetrics()
        self.proxyHeader = proxyHeader

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
            self.metrics.requests(RANGE, SERVER_BUSY)
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
        (L{JournalUnavailable}); any other failure is logged here once, when
        it starts, and once more when the journal works again.

        @return: fires with whether it worked; never errbacks.
        """
        d = maybeDeferred(write, [record])
        d.addCallbacks(self._journalUp, self._journalFailed)
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

    def _journalUp(self, _: object) -> bool:
        """
        A record was committed.
        """
        if self._journalDown:
            self._journalDown = False
            self._log.info("Journal available again; range requests are recorded")
        return True

    def _journalFailed(self, failure: Failure) -> bool:
        """
        A record could not be committed: log it if it is the first failure
        that the journal did not log itself.
        """
        if not self._journalDown and not failure.check(JournalUnavailable):
            self._journalDown = True
            self._log.error(
                "Journal unavailable ({why}); range requests are refused until it recovers",
                why=failure.getErrorMessage(),
            )
        return False
