# -*- test-case-name: tests.unit.test_pipeline -*-
"""
The request path between parsing and replying: natural batching.

Requests from every connection queue up here. At most one job is in the
thread pool at a time; it evaluates its batch and commits the batch's
journal records before it returns, so only committed requests come back
with their replies. Whatever was parsed while it ran is the next job,
taken round-robin across connections; the connections then write their
replies in request order::

    connections ──► per-connection queues ──► one pool job at a time
    (evaluate, journal.commit) ──► each connection's pending replies filled

Each request carries its L{Outcome} from evaluation to the metrics: nothing
parses reply bytes to learn how a request ended.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from threading import get_ident
from typing import Any, Protocol

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure

from primecount.core import count
from primecount.core.count import Evaluation
from primecount.core.outcomes import INTERNAL_ERROR, JOURNAL_UNAVAILABLE, Outcome
from primecount.journal import Journal, JournalUnavailable
from primecount.journal.records import PROTOCOL_COUNT, Record, now
from primecount.metrics.recorder import MetricsRecorder, NullMetrics


class PendingReply:
    """
    A request's place in its connection's reply order: empty until the
    request's batch is answered, then its reply.
    """

    __slots__ = ("reply",)

    def __init__(self) -> None:
        self.reply: bytes | None = None


class Sink(Protocol):
    """
    The connection side of a request: where it came from and where the
    reply goes.
    """

    peer: str
    port: int

    def replyReady(self) -> None:
        """
        One or more of this connection's pending replies were filled.
        """


#: One request on its way: the raw line (or an evaluation made while
#: parsing, such as of a line that was too long), the connection, and its
#: place in the connection's reply order.
Request = tuple[bytes | Evaluation, Sink, PendingReply]

#: A batch's answers: the reply lines and the outcomes, in request order.
Answers = tuple[list[bytes], list[Outcome]]


class Job:
    """
    One batch in the pool: its requests, when the oldest arrived, and the
    pool thread running it (set by that thread before it commits).
    """

    __slots__ = ("batch", "since", "thread")

    def __init__(self, batch: list[Request], since: float) -> None:
        self.batch = batch
        self.since = since
        self.thread: int | None = None


def answer_batch(
    items: Sequence[tuple[bytes | Evaluation, str, int]], journal: Journal, job: Job | None = None
) -> Answers:
    """
    The pool job: evaluate a batch, commit its records, return the answers.

    Everything between parsing and replying happens here, in one thread
    hop; a request whose record could not be committed is answered
    C{ERR journal unavailable} instead.

    @param job: told which thread runs it (before the commit), so that a
        commit given up can be matched to its job.
    """
    if job is not None:
        job.thread = get_ident()
    replies, outcomes, records = evaluate_batch(items, journal.keepsRecords)
    try:
        journal.commit(records)
    except JournalUnavailable:
        # The journal logs the episode once; each request just learns
        # that it was not recorded.
        return failed_batch(JOURNAL_UNAVAILABLE, len(replies))
    return replies, outcomes


def failed_batch(outcome: Outcome, n: int) -> Answers:
    """
    The answers of a batch of C{n} requests that all failed with C{outcome}.
    """
    return [outcome.reply()] * n, [outcome] * n


def evaluate_batch(
    items: Sequence[tuple[bytes | Evaluation, str, int]],
    journal: bool = True,
    clock: Callable[[], float] = now,
) -> tuple[list[bytes], list[Outcome], list[Record]]:
    """
    Evaluate a batch of request lines (the first half of L{answer_batch}).

    @param items: (line or evaluation, peer, client port) per request.
    @param journal: whether to build the journal records at all.
    @param clock: the time source for the records.
    @return: the reply lines, the outcomes and the journal records, in the
        order of C{items}.
    """
    replies: list[bytes] = []
    outcomes: list[Outcome] = []
    records: list[Record] = []
    when = clock()
    for item, peer, port in items:
        evaluation = item if isinstance(item, Evaluation) else count.evaluate(item)
        replies.append(evaluation.reply())
        outcomes.append(evaluation.outcome)
        if journal:
            # tuple.__new__ with every field costs about 40% less than
            # Record(...), whose generated __new__ is a Python function.
            records.append(
                _new_tuple(
                    Record,
                    (
                        when,
                        peer,
                        port,
                        PROTOCOL_COUNT,
                        evaluation.message,
                        evaluation.count,
                        evaluation.prime,
                        evaluation.outcome.error,
                        None,
                        None,
                        None,
                    ),
                )
            )
    return replies, outcomes, records


_new_tuple = tuple.__new__

#: The most requests in one pool job. Large enough that a batch's fixed
#: cost (the hop, the transaction) is shared by many, small enough that one
#: job takes a few milliseconds at most.
MAX_BATCH = 256

#: The most requests one connection gets per round of a batch: with ten
#: clients pipelining deeply, a batch still has room for everybody else.
SHARE = 16


class Pipeline:
    """
    Natural batching: at most one evaluate-and-commit job in flight; what
    is parsed meanwhile waits in per-connection queues and becomes the next
    job, taken round-robin across connections.

    A thread hop costs far more than evaluating a line (about 1 ms under
    load against a few microseconds), and every pool thread contends with
    the reactor for one GIL and with the others for one journal connection.
    So the pool gets one job at a time: while it runs, the reactor reads and
    queues; when it returns, everything queued leaves as the next job. The
    batch size follows the load by itself: one request when the server is
    quiet, hundreds under load, with one hop and one journal transaction per
    batch either way.

    A batch is capped (L{maxBatch}) and every connection with queued
    requests gets at most L{share} places per round, so a client pipelining
    thousands of requests cannot push an interactive client's request
    behind all of its own: each batch takes a share from every waiting
    connection, in a rotating order.

    @ivar inFlight: the number of requests accepted and not yet answered.
    @ivar maxBatch: the most requests in one job.
    @ivar share: the most requests one connection gets per round of a batch.
    """

    _log = Logger()

    def __init__(
        self,
        reactor: Any,
        threadpool: object,
        journal: Journal,
        metrics: MetricsRecorder | None = None,
        *,
        maxBatch: int = MAX_BATCH,
        share: int = SHARE,
    ) -> None:
        """
        @param reactor: provides C{callLater}, C{callFromThread} and
            C{seconds}.
        @param threadpool: the pool that evaluates (a
            C{twisted.python.threadpool.ThreadPool} or a stand-in with
            C{callInThreadWithCallback}).
        @param journal: where records go (a L{primecount.journal.NullJournal}
            for none).
        @param metrics: counts requests by outcome and times them.
        @param maxBatch: the most requests in one job.
        @param share: the most requests one connection gets per round.
        """
        self._reactor = reactor
        self._threadpool = threadpool
        self._journal = journal
        self._metrics: MetricsRecorder = metrics if metrics is not None else NullMetrics()
        self.maxBatch = maxBatch
        self.share = share
        # Connection -> its queued requests, oldest first, each with the
        # time it arrived. The dict's order is the round-robin order: a
        # connection served goes to the back.
        self._queues: dict[Sink, list[tuple[Request, float]]] = {}
        self._busy = False  # a job is in flight or about to leave
        # The job in flight.
        self._job: Job | None = None
        self.inFlight = 0
        self._drained: list[Deferred[None]] = []
        journal.onAbandon(self._abandoned)

    def submit(self, requests: list[Request]) -> None:
        """
        Queue requests; they leave with the next job.
        """
        if not requests:
            return
        arrived = self._reactor.seconds()
        queues = self._queues
        for request in requests:
            sink = request[1]
            queue = queues.get(sink)
            if queue is None:
                queue = queues[sink] = []
            queue.append((request, arrived))
        self.inFlight += len(requests)
        if not self._busy:
            # Leave at the start of the next turn, with whatever else the
            # rest of this turn reads.
            self._busy = True
            self._reactor.callLater(0, self._dispatch)

    def _take(self) -> tuple[list[Request], float]:
        """
        The next batch, round-robin across connections, and when its oldest
        request arrived.
        """
        batch: list[Request] = []
        oldest = float("inf")
        budget = self.maxBatch
        share = self.share
        queues = self._queues
        while budget and queues:
            for sink, queue in list(queues.items()):
                # Arrival times only grow along a queue: its head is oldest.
                if queue[0][1] < oldest:
                    oldest = queue[0][1]
                n = min(share, budget, len(queue))
                budget -= n
                if n == len(queue):
                    # All of it (the common case: a request or a few).
                    for request, _ in queue:
                        batch.append(request)
                    del queues[sink]
                else:
                    for request, _ in queue[:n]:
                        batch.append(request)
                    del queue[:n]
                    if n == share:
                        # Served its share: to the back of the rotation.
                        # One cut short by the cap keeps its place and
                        # starts the next batch.
                        del queues[sink]
                        queues[sink] = queue
                if not budget:
                    break
        return batch, oldest

    def _dispatch(self) -> None:
        """
        Send the next batch to the pool, or note that none is in flight.
        """
        batch, since = self._take()
        if not batch:
            self._busy = False
            return
        self._busy = True
        job = self._job = Job(batch, since)
        items = [(item, sink.peer, sink.port) for item, sink, _ in batch]
        d = deferToThreadPool(
            self._reactor,  # type: ignore[arg-type]
            self._threadpool,  # type: ignore[arg-type]
            answer_batch,
            items,
            self._journal,
            job,
        )
        d.addCallbacks(
            self._finished,
            self._failed,
            callbackArgs=(job,),
            errbackArgs=(job, "evaluation failed"),
        )
        d.addErrback(lambda f: self._log.failure("answering failed", f))

    def _finished(self, answers: Answers, job: Job) -> None:
        """
        The pool job returned: answer its batch, unless it was given up
        meanwhile (L{_abandoned}: already answered).
        """
        if job is self._job:
            self._job = None
            self._answer(answers, job.batch, job.since)

    def _failed(self, failure: Failure, job: Job, why: str) -> None:
        if job is not self._job:
            return
        self._log.failure("{why}", failure, why=why)
        self._finished(failed_batch(INTERNAL_ERROR, len(job.batch)), job)

    def _abandoned(self, threads: frozenset[int]) -> None:
        """
        The journal gave up the commits of C{threads}, which took too long:
        if the job in flight is one of them (its pool thread may be stuck),
        its batch is answered C{ERR journal unavailable} now and the next
        job leaves; whatever the stuck job returns later is dropped.
        """
        job = self._job
        if job is not None and job.thread in threads:
            self._finished(failed_batch(JOURNAL_UNAVAILABLE, len(job.batch)), job)

    def _measure(self, outcomes: list[Outcome], since: float) -> None:
        metrics = self._metrics
        for outcome, n in Counter(outcomes).items():
            metrics.requests(PROTOCOL_COUNT, outcome, n)
        metrics.latency(PROTOCOL_COUNT, self._reactor.seconds() - since, len(outcomes))

    def _answer(self, answers: Answers, batch: list[Request], since: float) -> None:
        # The next job leaves first, so the pool works on it while the
        # reactor writes these replies.
        self._dispatch()
        replies, outcomes = answers
        touched: dict[Sink, None] = {}
        for (_, sink, pending), reply in zip(batch, replies, strict=True):
            pending.reply = reply
            touched[sink] = None
        self.inFlight -= len(batch)
        for sink in touched:
            sink.replyReady()
        self._measure(outcomes, since)
        if not self.inFlight:
            drained, self._drained = self._drained, []
            for d in drained:
                d.callback(None)

    def whenDrained(self) -> Deferred[None]:
        """
        A C{Deferred} that fires once every accepted request is answered
        (nothing is in flight).
        """
        d: Deferred[None] = Deferred()
        if self.inFlight:
            self._drained.append(d)
        else:
            d.callback(None)
        return d
