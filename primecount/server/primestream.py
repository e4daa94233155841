# -*- test-case-name: tests.unit.test_rangeprotocol -*-
"""
The primes of a range, streamed with flow control: L{PrimeStream}, a push
producer that sieves one segment per pool job (L{encoded_segment}) and
writes it to its consumer, requesting the next segment before writing the
current one. The range protocol answers every request through one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, DeferredSemaphore, succeed
from twisted.internet.interfaces import IConsumer, IPushProducer
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from primecount.core import rangecodec
from primecount.core.primes import SEGMENT_SIZE, primes_between, segment_bounds


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
    @ivar lookahead: whether a segment is requested while the one just
        written is still being sent (see L{_next}); off, a paused stream
        holds one segment instead of two (the memory budget is spent).
    """

    lookahead = True

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
        #: Asked before each segment is requested, with its bounds: false
        #: holds the stream (nothing is requested) until L{retry}. The
        #: protocol reserves the segment's bytes of the memory budget here.
        self.admit: Callable[[int, int], bool] | None = None
        #: Told, with its bounds, that an admitted segment is sieved and
        #: about to be written (or dropped), before the write.
        self.settled: Callable[[int, int], None] | None = None
        #: Told after each write to the consumer.
        self.wrote: Callable[[], None] | None = None

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
        if self.admit is not None and not self.admit(lo, hi):
            return
        self._upcoming = next(self._bounds, None)
        job = self._slots.run(self._sieve, lo, hi)
        self._job = job
        job.addCallbacks(self._written, self._failed, callbackArgs=(lo, hi), errbackArgs=(lo, hi))

    def retry(self) -> None:
        """
        Request the segment L{admit} held back, if it may be now.
        """
        self._next()

    def _sieve(self, lo: int, hi: int) -> Deferred[tuple[bytes, int, int] | None]:
        """
        Run one segment's job in the pool once a slot is free, unless the
        stream was stopped while it waited for the slot.
        """
        if self._stopped:
            return succeed(None)
        return deferToThreadPool(self._reactor, self._threadpool, encoded_segment, lo, hi)

    def _settle(self, lo: int, hi: int) -> None:
        if self.settled is not None:
            self.settled(lo, hi)

    def _written(self, result: tuple[bytes, int, int] | None, lo: int, hi: int) -> None:
        """
        Write a sieved segment, then request the next one.
        """
        self._job = None
        self._settle(lo, hi)
        if self._stopped or result is None:
            return
        data, count, total = result
        self._count += count
        self._total += total
        paused = self._paused
        if data:
            self._consumer.write(data)
            if self.wrote is not None:
                self.wrote()
        self._next(lookahead=self.lookahead and not paused)
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

    def _failed(self, failure: Failure, lo: int, hi: int) -> None:
        """
        A sieve job failed: stop and pass the failure on through L{done}.
        """
        self._job = None
        self._settle(lo, hi)
        if self._stopped:
            return
        self._stopped = True
        self._consumer.unregisterProducer()
        self.done.errback(failure)


# Where a connection is in its request cycle.
