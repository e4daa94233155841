# -*- test-case-name: tests.unit.test_rangeprotocol,tests.system.test_rangeprotocol_sockets -*-
"""
The range protocol server: the primes in [a, b], streamed with flow control.

A client sends a and b (C{!ii}); the server answers N (C{!I}), computed
cheaply in the thread pool before any prime is known, then streams the N
primes segment by segment through a L{PrimeStream}, a push producer
registered with the transport: sieving stops while the transport's buffer
is full and for good when the client goes away, so the server holds at most
two segments per connection whatever the width of the range. The client
then sends its sum (C{!q}); the server compares it with its own, journals a
L{Record} and reads the next request.

L{RangeProtocol} is one connection; L{RangeFactory} builds them and holds
what they share: the reactor, the thread pool, the journal, the slots that
keep range jobs fair, the connection limits.

Fairness: every sieve job covers one segment (a few milliseconds), each
stream has at most one job queued or running, and all range jobs share a
small number of slots (L{RangeFactory.maxJobs}: by default at most the
number of CPUs and always fewer than the pool's threads) taken in arrival
order. Streams therefore take turns segment by segment, and the count
protocol always finds a free thread in the shared pool.
"""

from __future__ import annotations

import contextlib
import copy
import os
import socket
from typing import Any, ClassVar

from twisted.internet.defer import Deferred, DeferredSemaphore, maybeDeferred
from twisted.internet.interfaces import IConsumer, IPushProducer, IReactorCore
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger, LogLevel
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
from primecount.core.primes import SEGMENT_SIZE, count_between, most_primes_between
from primecount.core.proxyheader import TRUSTED_BY_DEFAULT, TrustedProxies
from primecount.core.wording import plural
from primecount.journal import Journal, JournalUnavailable
from primecount.journal.records import PROTOCOL_RANGE, Record, now
from primecount.metrics.episodes import Episodes
from primecount.metrics.recorder import MetricsRecorder, NullMetrics
from primecount.server.budget import MemoryBudget
from primecount.server.connections import Connections, no_delay, peer_of
from primecount.server.primestream import PrimeStream
from primecount.server.proxy import ProxyHeaderReceiver
from primecount.server.transport import buffered

#: Unprocessed input beyond this many bytes stops reading from the client
#: until the protocol catches up.
MAX_BUFFER = 1 << 16

#: Linux's option that sends a pending ACK now (C{None} elsewhere).
_TCP_QUICKACK = getattr(socket, "TCP_QUICKACK", None)


def acknowledge_now(transport: object) -> None:
    """
    Acknowledge what the client sent at once (C{TCP_QUICKACK}), on a TCP
    connection on Linux; elsewhere do nothing.

    The client writes its sum, then its next request: two small writes.
    The server sends nothing after the sum, so its ACK waits for the
    delayed-ACK timer (40 ms on Linux), and a client that leaves Nagle's
    algorithm on holds its request back until that ACK comes: 40 ms per
    request, on every connection that did not set C{TCP_NODELAY}. Setting
    C{TCP_QUICKACK} while an ACK is pending sends it now (the option itself
    does not last: the kernel may delay later ACKs again, so it is set
    after each sum).
    """
    if _TCP_QUICKACK is None:
        return
    handle = getattr(transport, "getHandle", lambda: None)()
    if isinstance(handle, socket.socket) and handle.family in (socket.AF_INET, socket.AF_INET6):
        with contextlib.suppress(OSError):
            handle.setsockopt(socket.IPPROTO_TCP, _TCP_QUICKACK, 1)


_AWAITING_REQUEST = "awaiting request"  # waiting for the next request
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
    names is the one the limits count and the journal records. A bad header,
    or a connection from an address not in the factory's C{trustedProxies},
    is closed (the binary protocol has no error message).

    What it holds for its client counts against the process's memory
    budget (L{primecount.server.budget}): its unread input, and the primes
    the transport has not sent yet once its buffer is full. Over budget,
    a stream whose client is behind sieves nothing ahead (see
    L{PrimeStream.lookahead}) until the transport has sent what it holds.

    @ivar factory: the L{RangeFactory} that made this protocol.
    @ivar peer: the client's address. @ivar port: the client's port.
    @ivar held: the bytes charged to the memory budget.
    """

    _log: ClassVar[Logger] = Logger()
    metricsProtocol = PROTOCOL_RANGE
    refusals = "range connections closed for"

    def __init__(self, factory: RangeFactory) -> None:
        """
        @param factory: supplies the reactor, pool, journal and settings.
        """
        self.factory = factory
        self.callLater = factory.reactor.callLater  # type: ignore[method-assign]
        self._buffer = bytearray()
        self._state = _AWAITING_REQUEST
        self._a: int | None = None
        self._b: int | None = None
        self._count: int | None = None
        self._total = 0
        self._stream: PrimeStream | None = None
        self._readingPaused = False
        self._writePaused = False  # the transport's buffer is full
        self._memoryPaused = False  # the memory budget is spent
        self.held = 0  # charged to the budget: unread input, unsent primes
        self._outputHeld = 0
        self._reserved = 0  # the budget reserved for the segments being sieved
        self._lost = False
        self._timeoutError: Outcome | None = None
        self.peer, self.port = "", 0
        self._closing = False
        self._pending = False  # the current request has a pending record

    def connectionMade(self) -> None:
        """
        Start the idle timeout; behind HAProxy, wait for the PROXY header
        before counting the connection.
        """
        self._closing = False
        transport: Any = self.transport
        self.peer, self.port = peer_of(transport.getPeer(), transport.getHost())
        no_delay(transport)
        self._budget = self.factory.budget
        self._budget.join(self)
        if not self.factory.proxyHeader:
            self.connectionAdmitted()
        elif not self.awaitProxyHeader():
            return  # not from a trusted proxy: closed
        self._waitForClient()

    def connectionAdmitted(self) -> None:
        self.factory.connections.opened(self, self.peer)
        self.factory.metrics.connectionOpened(PROTOCOL_RANGE)

    def refuseConnection(self, outcome: Outcome) -> None:
        transport: Any = self.transport
        transport.loseConnection()

    def closeWhenDone(self) -> None:
        """
        Graceful stop: finish the request in progress (stream, sum, record),
        then close instead of reading the next one.
        """
        self._closing = True
        if self._state == _AWAITING_REQUEST and not self._lost:
            transport: Any = self.transport
            transport.loseConnection()

    def dataReceived(self, data: bytes) -> None:
        """
        Buffer the bytes and act on every complete message in them.
        """
        if self.awaitingProxyHeader:
            data = self.proxyHeaderReceived(data)
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
        if self._state == _AWAITING_REQUEST and len(self._buffer) >= rangecodec.REQUEST_STRUCT.size:
            request = bytes(self._buffer[: rangecodec.REQUEST_STRUCT.size])
            del self._buffer[: rangecodec.REQUEST_STRUCT.size]
            self._request(*rangecodec.decode_request(request))
        elif self._state == _AWAITING_SUM and len(self._buffer) >= rangecodec.SUM_STRUCT.size:
            data = bytes(self._buffer[: rangecodec.SUM_STRUCT.size])
            del self._buffer[: rangecodec.SUM_STRUCT.size]
            acknowledge_now(self.transport)
            self._summed(rangecodec.decode_sum(data))
        self._throttle()
        self._account()

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
        stream.admit = self._admitSegment
        stream.settled = self._segmentSettled
        stream.wrote = self._wrote
        stream.done.addCallbacks(self._streamed, self._failed)
        stream.start()

    def _admitSegment(self, lo: int, hi: int) -> bool:
        """
        Reserve the memory budget for the primes of [lo, hi] before they
        are sieved (at most L{most_primes_between} of them), or wait for
        room (L{MemoryBudget.room}; L{resumeForMemory} asks again).
        """
        need = rangecodec.PRIME_SIZE * most_primes_between(lo, hi)
        if not self._budget.room(self, need):
            return False
        self._reserved += need
        self._account()
        return True

    def _segmentSettled(self, lo: int, hi: int) -> None:
        """
        The segment [lo, hi] is sieved: what it holds is counted once it is
        written (L{_wrote}), not as a reservation any more.
        """
        self._reserved = max(
            0, self._reserved - rangecodec.PRIME_SIZE * most_primes_between(lo, hi)
        )
        self._account()

    def _wrote(self) -> None:
        """
        A segment was written: while the client is behind, the transport
        holds it too (it paused the stream only once, at the first).
        """
        if self._writePaused:
            self._setOutput(buffered(self.transport))

    def pauseProducing(self) -> None:
        """
        The client stopped reading: pause the stream, and start the timeout.
        What the transport holds counts against the memory budget.
        """
        if self._stream is not None:
            self._writePaused = True
            self._stream.pauseProducing()
            self._waitForClient()
            self._setOutput(buffered(self.transport))

    def resumeProducing(self) -> None:
        """
        The client reads again (the transport sent everything): resume the
        stream, stop the timeout.
        """
        self._writePaused = False
        self._setOutput(0)
        if self._memoryPaused:
            # Holding nothing but its input now: pausing it frees no more.
            self._budget.resume(self)
        if self._stream is not None:
            self.setTimeout(None)
            self._stream.resumeProducing()

    def stopProducing(self) -> None:
        """
        The connection is going away: stop the stream.
        """
        if self._stream is not None:
            self._stream.stopProducing()

    def _account(self) -> None:
        """
        Tell the budget what this connection holds now.
        """
        delta = len(self._buffer) + self._outputHeld + self._reserved - self.held
        if delta > 0:
            self._budget.charge(self, delta)
        elif delta < 0:
            self._budget.release(self, -delta)

    def _setOutput(self, held: int) -> None:
        """
        The transport holds C{held} bytes of primes not sent yet.
        """
        self._outputHeld = held
        self._account()

    def pauseForMemory(self) -> bool:
        """
        The budget is spent and this connection holds more than its share:
        sieve nothing ahead while the client is behind, so that it holds one
        segment, not two, until the transport has sent it (only a stream
        the transport paused holds anything worth pausing).
        """
        if self._stream is None or not self._writePaused or self._lost:
            return False
        self._memoryPaused = True
        self._stream.lookahead = False
        return True

    def resumeForMemory(self) -> None:
        """
        The budget has room again: sieve ahead again.
        """
        self._memoryPaused = False
        if self._stream is not None:
            self._stream.lookahead = True
            # A segment held back for want of room may be requested now.
            self._stream.retry()

    def _streamed(self, result: tuple[int, int]) -> None:
        """
        Every prime is written: wait for the client's sum.
        """
        count, total = result
        self._stream = None
        # Unregistered: the transport no longer says when it drained.
        self._writePaused = False
        self._budget.resume(self)
        if count != self._count:
            self._log.error(
                "Sent {sent} for [{a}, {b}] after announcing {count}",
                sent=plural(count, "prime"),
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
        # The client read the primes it summed.
        self._setOutput(buffered(self.transport))
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
        self._state = _AWAITING_REQUEST
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
        incomplete = bool(self._buffer)
        self._buffer.clear()
        self._reserved = 0
        self._setOutput(0)
        self._budget.leave(self)
        if self.awaitingProxyHeader:
            return  # never admitted: nothing counted, no request to journal
        self.factory.metrics.connectionClosed(PROTOCOL_RANGE)
        if self._stream is not None:
            self._stream.stopProducing()
            self._stream = None
        if self._state == _COUNTING:
            self._record(DISCONNECTED_BEFORE_REPLY)
        elif self._state == _STREAMING:
            self._record(self._timeoutError or DISCONNECTED_MID_STREAM)
        elif self._state == _AWAITING_SUM:
            self._record(self._timeoutError or DISCONNECTED_BEFORE_SUM)
        elif self._state == _AWAITING_REQUEST and incomplete:
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
            peer=self.peer,
            port=self.port,
            protocol=PROTOCOL_RANGE,
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
        self.factory.metrics.requests(PROTOCOL_RANGE, outcome)
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
    @ivar timeout: idle seconds before a connection is closed; 0 or C{None}
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
        episodes: Episodes | None = None,
    ) -> None:
        """
        @param reactor: provides C{callLater} and C{callFromThread}.
        @param threadpool: a started C{ThreadPool} (or a test double with
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
        @param episodes: where refused PROXY headers and journal failures
            are logged, once per episode; by default the connections' own
            (L{Connections.episodes}).
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
        self.episodes = episodes if episodes is not None else self.connections.episodes

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
            self.episodes.event(
                "range records the journal failed to write",
                "Journal unavailable ({why}); range requests are refused until it recovers",
                level=LogLevel.error,
                ended="range records the journal failed to write: {total} in {seconds:.0f} s; "
                "none for {quiet:g} s now",
                why=failure.getErrorMessage(),
                quiet=self.episodes.quiet,
            )
        return False
