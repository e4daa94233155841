# -*- test-case-name: tests.unit.test_sqlite_journal,tests.unit.test_postgresql_journal,tests.system.test_postgresql_journal_process -*-
"""
What every journal backend shares: group commit (leader/follower), the
writer thread serving L{ThreadedJournal.append} and L{ThreadedJournal.settle},
failure episodes (one log line at the start, one at the end; commits fail at
once meanwhile while the writer thread probes for the end), and the service's
start and stop.

A backend's writer (L{primecount.journal.sqlite.writer.SQLiteJournal},
L{primecount.journal.postgresql.writer.PostgresJournal}) supplies how records are written
and settled, how a probe tests the database, its periodic work and how its
connection is dropped.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from primecount.core.wording import plural
from primecount.journal.interface import DEFAULT_TIMEOUT, JournalUnavailable
from primecount.journal.records import Record
from primecount.metrics.recorder import MetricsRecorder, NullMetrics

_STOP = object()
#: Wakes the writer thread (for its periodic work, or to probe now).
_WAKE = object()


#: Seconds a commit may still take once the stop is hurried (see
#: L{ThreadedJournal.hurry}) before it is given up.
HURRIED_TIMEOUT = 0.25

#: The most seconds between two looks of the watchdog (see
#: L{ThreadedJournal._watch}); it looks four times per timeout when that is
#: shorter.
WATCH_INTERVAL = 0.25


class _Waiting:
    """
    Records waiting for a group commit, and how it went for them.
    """

    __slots__ = ("done", "error", "records", "thread")

    def __init__(self, records: Sequence[Record]) -> None:
        self.records = records
        self.done = False
        self.error: str | None = None
        self.thread = threading.get_ident()


class _Busy:
    """
    One piece of work on the database in progress (a commit, a settle, the
    writer thread's periodic work), watched so that it can be given up.

    @ivar started: when it began (C{time.monotonic}).
    @ivar generation: the journal's generation it began in; older than the
        journal's means it was given up.
    """

    __slots__ = ("generation", "started")

    def __init__(self, generation: int) -> None:
        self.started = time.monotonic()
        self.generation = generation


class ThreadedJournal(Service):
    """
    A journal committing in groups, one transaction at a time, with a writer
    thread of its own.

    Group commit is leader/follower: whoever calls L{commit} queues its
    records and takes the commit lock; if a commit that ran meanwhile took
    its records along, it is done, otherwise it commits everything queued.
    The request path calls L{commit} from the pool thread that evaluated the
    batch, so a batch needs one thread hop, not three (pool, reactor,
    writer, reactor). Callers on the reactor thread use L{append}, served by
    the writer thread, which commits the same way.

    Bounded time: every commit, settle and piece of periodic work is
    watched from the reactor (L{_watch}); one that has not finished within
    L{timeout} seconds is given up (L{_abandon}): its requests are answered
    C{ERR journal unavailable} (the pipeline learns it through L{onAbandon}),
    a failure episode starts, and the thread doing it is left where it is
    (stuck in the database's driver or a system call: it cannot be
    interrupted). The journal moves on to a new I{generation}: a new commit
    lock, and no connection until the probe, on a thread of its own, has
    made a real write (L{_probe}); a stuck thread that returns later closes
    its own connection and touches nothing else.

    Commits in doubt: each group carries an id (L{_groupId}). A group whose
    requests were answered ERR although it may have been committed (given
    up, or the connection broke while it was in flight) is remembered; the
    probe that ends the episode records those ids in the journal, so that
    the readers show their records with the error the clients were told.

    Subclasses implement L{_write}, L{_settleRecords}, L{_probe},
    L{_probeInterval}, L{_drop} and L{_abandonConnection}, and may extend
    L{_tick}, L{_afterCommit}, L{_settleFailed}, L{_groupId},
    L{_finishing} and L{_close}; work that may have been given up asks
    L{_givenUp} before it touches anything but its own connection.

    @ivar groups: how many group commits (transactions) were committed.
    @ivar committed: how many records were committed.
    @ivar failed: how many records could not be committed.
    @ivar timeout: seconds a commit may take before it is given up.
    """

    _log = Logger()

    #: It keeps what it is given (a L{primecount.journal.interface.NullJournal}
    #: does not).
    keepsRecords: bool = True

    #: The writer thread's name.
    _threadName: ClassVar[str] = "primecount-journal"

    def __init__(
        self,
        reactor: Any,
        *,
        metrics: MetricsRecorder | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        """
        @param reactor: used to hand results back to the reactor thread,
            and to watch for commits that take too long.
        @param metrics: told each group commit's size and duration, and how
            many records could not be committed.
        @param timeout: seconds a commit may take before it is given up.
        """
        self._reactor = reactor
        self.timeout = timeout
        self._metrics: MetricsRecorder = metrics if metrics is not None else NullMetrics()
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._stopped: Deferred[None] | None = None
        self._accepting = False
        # _commitLock: one transaction at a time; guards the connection and
        # the counters (a new one in each generation). _waitingLock: guards
        # the queue of _Waiting, _doubtful and the fast-fail counters.
        self._commitLock = threading.Lock()
        self._waitingLock = threading.Lock()
        self._waiting: list[_Waiting] = []
        self._closed = False
        # _failing: in a failure episode (logged at its start and end).
        # _blocked: why commits fail at once, without trying the database,
        # until the probe clears it (None: try them).
        self._failing = False
        self._hurry = False
        self._blocked: str | None = None
        self._failedInEpisode = 0
        # Watched work: id(_Busy) -> _Busy; the group being written (its id
        # and its waiters) by the current generation's leader.
        self._generation = 0
        self._busy: dict[int, _Busy] = {}
        self._writing: tuple[int, list[_Waiting]] | None = None
        self._writerBusy: _Busy | None = None
        # The writer thread's requests: Deferred -> when it was queued.
        self._queued: dict[Deferred[None], float] = {}
        self._doubtful: list[int] = []
        self._onAbandon: list[Callable[[frozenset[int]], None]] = []
        self._watching: Any = None
        self._prober: threading.Thread | None = None
        self._wakeProber = threading.Event()
        # The generation whose commit lock this thread holds (see _givenUp).
        self._holding = threading.local()
        self.groups = 0
        self.committed = 0
        self.failed = 0

    # -- backend hooks --------------------------------------------------------

    def _place(self) -> tuple[str, str]:
        """
        The log field naming the journal, and its value (fit to print).
        """
        raise NotImplementedError

    def _write(self, records: list[Record], group: int) -> str | None:
        """
        Commit C{records} as one transaction, each row carrying the group id
        C{group}; holds C{_commitLock}. A backend that cannot tell whether a
        failed write was committed calls L{_doubt}.

        @return: C{None} once committed, else why not.
        """
        raise NotImplementedError

    def _settleRecords(self, records: Sequence[Record]) -> str | None:
        """
        Apply settles in one transaction; holds C{_commitLock}.

        @return: C{None} once done, else why not.
        """
        raise NotImplementedError

    def _probe(self, doubtful: list[int]) -> bool:
        """
        During a failure episode, test whether the journal takes a real
        write again, recording the group ids C{doubtful} (answered ERR, maybe
        committed) in the same transaction. The probe's own thread, which
        may be left stuck: it never waits for C{_commitLock} of an older
        generation.

        @return: whether it committed.
        """
        raise NotImplementedError

    def _probeInterval(self) -> float:
        """
        Seconds between probes while commits fail.
        """
        raise NotImplementedError

    def _drop(self) -> None:
        """
        Close the journal's connection, if open; holds C{_commitLock}.
        """
        raise NotImplementedError

    def _abandonConnection(self) -> None:
        """
        The work in progress was given up (reactor thread): forget the
        journal's connection without closing it (the stuck thread is using
        it, and closes it when it returns), so the next generation opens
        its own.
        """
        raise NotImplementedError

    def _groupId(self) -> int:
        """
        The id of the next group commit; holds C{_commitLock}.
        """
        raise NotImplementedError

    def _tick(self, now: float) -> float | None:
        """
        The writer thread's periodic work, run when it wakes.

        @return: when next to wake for it (C{time.monotonic}), or C{None}.
        """
        return None

    def _afterCommit(self) -> None:
        """
        A group was committed; holds C{_commitLock}.
        """

    def _settleFailed(self, why: str) -> None:
        """
        Settles could not be applied; holds C{_commitLock}.
        """
        self._block(why)

    def _finishing(self) -> None:
        """
        The writer thread is about to close the connection and end.
        """

    def _close(self) -> None:
        """
        The writer thread's last act: close whatever the journal holds;
        holds C{_commitLock}. By default, L{_drop}.
        """
        self._drop()

    def _givenUp(self) -> bool:
        """
        Whether the work this thread does under C{_commitLock} (a commit, a
        settle or a probe) belongs to a generation given up meanwhile
        (L{_abandon}): its requests were answered, and from now on it must
        touch nothing of the journal's but its own connection. For
        backends, from inside L{_write}, L{_settleRecords} and L{_probe}.
        """
        held = getattr(self._holding, "generation", None)
        return held is not None and held != self._generation

    # -- service --------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self._accepting = True
        self._closed = False
        self._hurry = False
        self._thread = threading.Thread(target=self._run, name=self._threadName, daemon=True)
        self._thread.start()
        self._watching = self._reactor.callLater(self._watchInterval(), self._watch)

    def stopService(self) -> Deferred[None]:
        """
        Commit everything queued, then close the database. A writer thread
        stuck in the database (see L{_abandon}) is not waited for.
        """
        super().stopService()
        self._accepting = False
        if self._thread is None:
            self._stopWatching()
            return succeed(None)
        self._stopped = Deferred()
        self._queue.put(_STOP)
        self._wakeProber.set()
        stopped = self._stopped
        if self._writerStuck():
            self._finished()
        return stopped

    def hurry(self) -> None:
        """
        The stop's deadline is near: no commit waits long for the database
        from now on (what has been in progress for more than
        L{HURRIED_TIMEOUT} is given up), so the stop keeps its bound.
        """
        self._hurry = True
        self._watch(reschedule=False)

    def onAbandon(self, callback: Callable[[frozenset[int]], None]) -> None:
        """
        Call C{callback} (reactor thread) each time work in progress is
        given up for taking longer than L{timeout}, with the ids of the
        threads (C{threading.get_ident}) whose L{commit}s were given up:
        whoever waits for such a commit answers its requests then.
        """
        self._onAbandon.append(callback)

    @property
    def stuck(self) -> bool:
        """
        Whether a thread is still inside work that was given up (a commit
        stuck in a frozen database or file system).
        """
        current = self._generation
        return any(b.generation < current for b in list(self._busy.values()))

    # -- watching ----------------------------------------------------------------

    def _watchInterval(self) -> float:
        return min(WATCH_INTERVAL, self.timeout / 4)

    def _stopWatching(self) -> None:
        if self._watching is not None and self._watching.active():
            self._watching.cancel()
        self._watching = None

    def _watch(self, reschedule: bool = True) -> None:
        """
        Give up the work in progress if any of it has taken longer than the
        timeout, or anything queued for the writer thread has waited that
        long (reactor thread, every L{_watchInterval}).
        """
        if reschedule:
            self._watching = self._reactor.callLater(self._watchInterval(), self._watch)
        limit = min(self.timeout, HURRIED_TIMEOUT) if self._hurry else self.timeout
        now = time.monotonic()
        current = self._generation
        late = any(
            b.generation == current and now - b.started > limit for b in list(self._busy.values())
        )
        late = late or any(now - queued > limit for queued in self._queued.values())
        if late:
            self._abandon(f"commit did not finish within {limit:g} s")

    def _abandon(self, why: str) -> None:
        """
        Give up the work in progress (reactor thread): answer its requests
        and everything queued for the writer thread C{ERR journal
        unavailable}, remember the group in flight as in doubt, start a
        failure episode, and move to a new generation: a new commit lock
        and no connection, so nothing waits behind the stuck thread.
        """
        with self._waitingLock:
            # Blocked in the same step as the new generation begins, so a
            # probe of the old one cannot unblock the new one (L{_probing}).
            if self._blocked is None:
                self._blocked = why
            self._generation += 1
            self._commitLock = threading.Lock()
            self._abandonConnection()
            given = list(self._waiting)
            self._waiting = []
            if self._writing is not None:
                group, waiters = self._writing
                self._writing = None
                self._doubtful.append(group)
                given += waiters
        self._block(why)
        n = 0
        threads = set()
        for w in given:
            if not w.done:
                w.error = why
                w.done = True
                n += len(w.records)
                threads.add(w.thread)
        queued = list(self._queued)
        self._queued.clear()
        self._failedCount(n + len(queued))
        self._fire(queued, why)
        for callback in list(self._onAbandon):
            callback(frozenset(threads))
        if self._stopped is not None and self._writerStuck():
            self._finished()

    def _writerStuck(self) -> bool:
        busy = self._writerBusy
        return busy is not None and busy.generation < self._generation

    # -- any thread but the reactor's ------------------------------------------

    def commit(self, records: Sequence[Record]) -> None:
        """
        Commit C{records}, in a group with whatever else is waiting; blocks
        until they are committed, or the commit is given up (L{timeout}).
        Call it from a thread-pool thread.

        @raise JournalUnavailable: when they could not be committed.
        """
        # In a failure episode, fail at once, before any lock (a stuck
        # commit may hold one): the probe says when to try again.
        waiting = _Waiting(records)
        with self._waitingLock:
            # The generation, its queue and its lock are taken in one step:
            # a waiter of one generation never waits in another's queue.
            blocked = self._blocked
            if blocked is None:
                generation = self._generation
                self._waiting.append(waiting)
                lock = self._commitLock
                busy = _Busy(generation)
                key = id(busy)
                self._busy[key] = busy
        if blocked is not None:
            self._failedCount(len(records))
            raise JournalUnavailable(blocked)
        try:
            with lock:
                if not waiting.done:
                    self._commitWaiting(generation)
        finally:
            del self._busy[key]
        if waiting.error is not None:
            raise JournalUnavailable(waiting.error)
        if not waiting.done:
            # Nobody committed it (never expected: a given-up commit is
            # answered by _abandon): not acknowledged.
            self._failedCount(len(records))
            raise JournalUnavailable("commit was given up")

    def _commitWaiting(self, generation: int) -> None:
        """
        Commit everything queued, as one transaction. Holds C{_commitLock}
        of C{generation}.
        """
        with self._waitingLock:
            if generation != self._generation or not self._waiting:
                return
            group, self._waiting = self._waiting, []
            error = self._blocked
            if error is None:
                # In the same step: a group leaves the queue only to be
                # written, where _abandon finds it.
                groupId = self._groupId()
                self._writing = (groupId, group)
        n = sum(len(w.records) for w in group)
        started = time.monotonic()
        if error is None:
            self._holding.generation = generation
            try:
                error = self._write([r for w in group for r in w.records], groupId)
            finally:
                self._holding.generation = None
            with self._waitingLock:
                if generation != self._generation:
                    # Given up meanwhile: its requests were answered.
                    return
                self._writing = None
        for w in group:
            w.error = error
            w.done = True
        if error is None:
            self._committed(n, time.monotonic() - started)
        else:
            self._notCommitted(n, error)

    def _doubt(self, group: int) -> None:
        """
        The write of group C{group} failed in a way that does not say
        whether it was committed: its id is recorded by the probe that
        ends the episode.
        """
        with self._waitingLock:
            self._doubtful.append(group)

    def _committed(self, n: int, seconds: float) -> None:
        self._afterCommit()
        self.groups += 1
        self.committed += n
        self._metrics.journalCommit(n, seconds)
        if self._failing:
            self._failing = False
            self._say(
                self._log.info,
                "writable again; {requests} answered ERR journal unavailable meanwhile",
                failed=self._failedInEpisode,
                requests=plural(self._failedInEpisode, "request"),
            )
            self._failedInEpisode = 0

    def _notCommitted(self, n: int, why: str) -> None:
        self._block(why)
        self._failedCount(n)

    def _failedCount(self, n: int) -> None:
        if not n:
            return
        with self._waitingLock:
            self.failed += n
            self._failedInEpisode += n
        self._metrics.journalFailed(n)

    def _block(self, why: str) -> None:
        """
        Commits fail at once from now on, until a probe succeeds; the first
        failure of an episode is logged and starts the prober.
        """
        with self._waitingLock:
            if self._blocked is None:
                self._blocked = why
        if not self._failing:
            self._failing = True
            self._say(
                self._log.error,
                "cannot commit ({why}); answering ERR journal unavailable until it can",
                why=why,
            )
        self._startProber()

    def _say(self, level: Any, text: str, **fields: object) -> None:
        """
        Log C{"journal {<place>} " + text} from the reactor thread, with the
        field naming the journal (L{_place}) and C{fields}.
        """
        field, value = self._place()
        self._reactor.callFromThread(
            level, "journal {" + field + "} " + text, **{field: value}, **fields
        )

    # -- the prober ----------------------------------------------------------------

    def _startProber(self) -> None:
        with self._waitingLock:
            if self._prober is not None or self._closed:
                return
            prober = self._prober = threading.Thread(
                target=self._probing, name=self._threadName + "-probe", daemon=True
            )
        self._wakeProber.clear()
        prober.start()

    def _probing(self) -> None:
        """
        The prober thread: while commits fail, probe every
        L{_probeInterval} seconds; the first probe that commits a real
        write (recording the groups in doubt) ends the block. It may be
        left stuck in the database: nothing waits for it.
        """
        try:
            while not self._closed and self._blocked is not None:
                with self._waitingLock:
                    generation = self._generation
                    doubtful = list(self._doubtful)
                self._holding.generation = generation
                try:
                    probed = self._probe(doubtful)
                finally:
                    self._holding.generation = None
                if probed:
                    with self._waitingLock:
                        # Only a probe of the current generation ends the
                        # block, and the prober ends in the same step: a
                        # block set after this starts a new prober.
                        if generation == self._generation:
                            del self._doubtful[: len(doubtful)]
                            self._blocked = None
                            self._prober = None
                            return
                self._wakeProber.wait(self._probeInterval())
        finally:
            with self._waitingLock:
                if self._prober is threading.current_thread():
                    self._prober = None

    # -- reactor side -----------------------------------------------------------

    def append(self, records: Sequence[Record]) -> Deferred[None]:
        """
        Queue C{records} for the writer thread's next group commit.

        @return: fires once they are committed; fails with
            L{JournalUnavailable} if they could not be.
        """
        return self._enqueue(records, settles=False)

    def settle(self, records: Sequence[Record]) -> Deferred[None]:
        """
        Complete pending range records: each goes onto the latest row of the
        same connection and range (host, port, a, b) that has neither a sum
        verdict nor an error yet, setting its count, error and C{sum_ok}.
        Served by the writer thread after everything appended before it.

        @return: fires once done; fails with L{JournalUnavailable}.
        """
        return self._enqueue(records, settles=True)

    def _enqueue(self, records: Sequence[Record], settles: bool) -> Deferred[None]:
        if not self._accepting:
            return fail(JournalUnavailable("journal is stopped"))
        d: Deferred[None] = Deferred()
        self._queued[d] = time.monotonic()
        self._queue.put((records, d, settles))
        return d

    def _settle(self, records: Sequence[Record]) -> None:
        """
        Apply L{settle}s in one transaction (writer thread).

        @raise JournalUnavailable: when they could not be applied.
        """
        with self._waitingLock:
            error = self._blocked
            generation = self._generation
            lock = self._commitLock
        if error is None:
            with lock:
                error = self._blocked
                if error is None and generation != self._generation:
                    error = "settle was given up"
                if error is None:
                    self._holding.generation = generation
                    try:
                        error = self._settleRecords(records)
                    finally:
                        self._holding.generation = None
                    if error is not None and generation == self._generation:
                        self._settleFailed(error)
        if error is not None:
            raise JournalUnavailable(error)

    def _fire(self, waiting: list[Deferred[None]], error: str | None) -> None:
        """
        Fire the writer thread's C{waiting} requests (reactor thread), but
        not those already answered when their work was given up.
        """
        for d in waiting:
            self._queued.pop(d, None)
            if d.called:
                continue
            if error is None:
                d.callback(None)
            else:
                d.errback(Failure(JournalUnavailable(error)))

    # -- writer thread ------------------------------------------------------------

    def _working(self) -> _Busy:
        """
        Mark the writer thread busy with watched work; L{_idle} ends it.
        """
        busy = self._writerBusy = _Busy(self._generation)
        self._busy[id(busy)] = busy
        return busy

    def _idle(self, busy: _Busy) -> None:
        self._busy.pop(id(busy), None)
        self._writerBusy = None

    def _run(self) -> None:
        stopping = False
        while not stopping:
            busy = self._working()
            try:
                nextTick = self._tick(time.monotonic())
            finally:
                self._idle(busy)
            timeout = None if nextTick is None else max(0.0, nextTick - time.monotonic())
            try:
                item = self._queue.get(timeout=timeout)
            except queue.Empty:
                continue
            taken = []
            while True:
                if item is _STOP:
                    stopping = True
                elif item is not _WAKE:
                    taken.append(item)
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
            # Inserts first: a settle only ever follows its own insert.
            inserts = [(records, d) for records, d, settles in taken if not settles]
            settles = [(records, d) for records, d, settles in taken if settles]
            for work, group in ((self.commit, inserts), (self._settle, settles)):
                if not group:
                    continue
                error = None
                busy = self._working()
                try:
                    work([r for records, _ in group for r in records])
                except JournalUnavailable as e:
                    error = str(e)
                finally:
                    self._idle(busy)
                self._reactor.callFromThread(self._fire, [d for _, d in group], error)
        self._closed = True
        self._wakeProber.set()
        busy = self._working()
        try:
            self._finishing()
            with self._commitLock:
                self._close()
        finally:
            self._idle(busy)
        self._reactor.callFromThread(self._finished)

    def _finished(self) -> None:
        """
        The writer thread ended, or is stuck and is not waited for (reactor
        thread): the stop is done. An episode still open is logged with its
        count, as its end would have been.
        """
        self._closed = True
        self._thread = None
        self._stopWatching()
        if self._stopped is not None:
            if self._failing:
                self._failing = False
                field, value = self._place()
                self._log.warn(
                    "journal {" + field + "} still failing at the stop ({why}); {failed} "
                    "requests were answered ERR journal unavailable in this episode",
                    **{field: value},
                    why=self._blocked or "unknown",
                    failed=self._failedInEpisode,
                )
            stopped, self._stopped = self._stopped, None
            stopped.callback(None)
