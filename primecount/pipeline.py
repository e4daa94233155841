# -*- test-case-name: tests.test_protocol -*-
"""
The request path between parsing and replying.

Every count request parsed during one reactor turn, from every connection,
travels to the thread pool as I{one} job: a thread hop costs tens of
microseconds, far more than evaluating a line, so hopping per line would
spend most of the server's time on hand-offs. The job evaluates the batch
and commits its journal records (joining the journal's group commit) before
it returns, so only committed requests come back with their replies; the
connections then write them in request order.

    reactor turn ──► one pool job (evaluate, journal.commit) ──► each
    connection fills its reply slots, in order
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure

from primecount import count
from primecount.count import INTERNAL_ERROR, Verdict, error_reply
from primecount.journal import JournalUnavailable
from primecount.metrics import MetricsRecorder, NullMetrics
from primecount.records import COUNT, Record, now


class Journal(Protocol):
    """
    What the request path needs of a journal.
    """

    def commit(self, records: Sequence[Record]) -> None:
        """
        Record C{records}, blocking until they are committed (called in a
        pool thread).

        @raise primecount.journal.JournalUnavailable: if they could not be.
        """


class Slot:
    """
    The place of one reply in its connection's queue, filled when the reply
    is ready.
    """

    __slots__ = ("reply",)

    def __init__(self) -> None:
        self.reply: bytes | None = None


class Sink(Protocol):
    """
    The connection side of a request: where it came from and where the
    reply goes.
    """

    host: str
    port: int

    def replyReady(self) -> None:
        """
        One or more of this connection's slots were filled.
        """


#: One request on its way: the raw line (or a verdict made while parsing,
#: such as a line that was too long), the connection, and its reply slot.
Request = tuple[bytes | Verdict, Sink, Slot]


def answer_batch(
    items: Sequence[tuple[bytes | Verdict, str, int]], journal: Journal | None
) -> list[bytes]:
    """
    The pool job: evaluate a batch, commit its records, return the replies.

    Everything between parsing and replying happens here, in one thread
    hop; a request whose record could not be committed is answered
    C{ERR journal unavailable} instead.
    """
    replies, records = evaluate_batch(items, journal is not None)
    if journal is not None:
        try:
            journal.commit(records)
        except JournalUnavailable:
            # The journal logs the episode once; each request just learns
            # that it was not recorded.
            return [error_reply(count.JOURNAL_UNAVAILABLE)] * len(replies)
    return replies


def evaluate_batch(
    items: Sequence[tuple[bytes | Verdict, str, int]],
    journal: bool = True,
    clock: Callable[[], float] = now,
) -> tuple[list[bytes], list[Record]]:
    """
    Evaluate a batch of request lines (the first half of L{answer_batch}).

    @param items: (line or verdict, client host, client port) per request.
    @param journal: whether to build the journal records at all.
    @param clock: the time source for the records.
    @return: the reply lines and the journal records, in the order of
        C{items}.
    """
    replies: list[bytes] = []
    records: list[Record] = []
    when = clock()
    for item, host, port in items:
        verdict = item if isinstance(item, Verdict) else count.evaluate(item)
        replies.append(verdict.reply())
        if journal:
            # tuple.__new__ with every field costs about 40% less than
            # Record(...), whose generated __new__ is a Python function.
            records.append(
                _new_tuple(
                    Record,
                    (
                        when,
                        host,
                        port,
                        COUNT,
                        verdict.message,
                        verdict.count,
                        verdict.prime,
                        verdict.error,
                        None,
                        None,
                        None,
                    ),
                )
            )
    return replies, records


_new_tuple = tuple.__new__


class Pipeline:
    """
    Gathers requests from every connection for one reactor turn, evaluates
    them in one thread-pool job, journals them, then fills the reply slots.

    @ivar inFlight: the number of requests accepted and not yet answered.
    """

    _log = Logger()

    def __init__(
        self,
        reactor: Any,
        threadpool: object,
        journal: Journal | None,
        metrics: MetricsRecorder | None = None,
    ) -> None:
        """
        @param reactor: provides C{callLater} and C{callFromThread}.
        @param threadpool: the pool that evaluates (a
            L{twisted.python.threadpool.ThreadPool} or a stand-in with
            C{callInThreadWithCallback}).
        @param journal: where records go, or L{None} for no journal.
        @param metrics: counts requests by outcome and times them.
        """
        self._reactor = reactor
        self._threadpool = threadpool
        self._journal = journal
        self._metrics: MetricsRecorder = metrics if metrics is not None else NullMetrics()
        self._pending: list[Request] = []
        self._since = 0.0
        self._scheduled = False
        self.inFlight = 0
        self._idle: list[Deferred[None]] = []

    def submit(self, requests: list[Request]) -> None:
        """
        Queue requests; they leave for the pool at the end of this turn.
        """
        self._pending.extend(requests)
        self.inFlight += len(requests)
        if not self._scheduled:
            self._scheduled = True
            self._since = self._reactor.seconds()
            self._reactor.callLater(0, self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        batch, self._pending = self._pending, []
        if not batch:
            return
        since = self._since
        items = [(item, sink.host, sink.port) for item, sink, _ in batch]
        d = deferToThreadPool(
            self._reactor,  # type: ignore[arg-type]
            self._threadpool,  # type: ignore[arg-type]
            answer_batch,
            items,
            self._journal,
        )
        d.addCallbacks(
            self._answer,
            self._failed,
            callbackArgs=(batch, since),
            errbackArgs=(batch, since, "evaluation failed"),
        )
        d.addErrback(lambda f: self._log.failure("answering failed", f))

    def _failed(self, failure: Failure, batch: list[Request], since: float, why: str) -> None:
        self._log.failure("{why}", failure, why=why)
        self._answer([error_reply(INTERNAL_ERROR)] * len(batch), batch, since)

    def _measure(self, replies: list[bytes], since: float) -> None:
        errors = Counter(r[4:-1] for r in replies if r.startswith(b"ERR "))
        ok = len(replies) - sum(errors.values())
        metrics = self._metrics
        if ok:
            metrics.requests(COUNT, "ok", ok)
        for reason, n in errors.items():
            metrics.requests(COUNT, reason.decode(), n)
        metrics.latency(COUNT, self._reactor.seconds() - since, len(replies))

    def _answer(self, replies: list[bytes], batch: list[Request], since: float) -> None:
        touched: dict[int, Sink] = {}
        for (_, sink, slot), reply in zip(batch, replies, strict=True):
            slot.reply = reply
            touched[id(sink)] = sink
        self.inFlight -= len(batch)
        for sink in touched.values():
            sink.replyReady()
        self._measure(replies, since)
        if not self.inFlight:
            idle, self._idle = self._idle, []
            for d in idle:
                d.callback(None)

    def whenIdle(self) -> Deferred[None]:
        """
        A L{Deferred} that fires once every accepted request is answered.
        """
        d: Deferred[None] = Deferred()
        if self.inFlight:
            self._idle.append(d)
        else:
            d.callback(None)
        return d
