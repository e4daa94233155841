# -*- test-case-name: tests.unit.test_journal,tests.unit.test_pgjournal,tests.system.test_pgjournal_process -*-
"""
What every journal backend shares: group commit (leader/follower), the
writer thread serving L{ThreadedJournal.append} and L{ThreadedJournal.settle},
failure episodes (one log line at the start, one at the end; commits fail at
once meanwhile while the writer thread probes for the end), and the service's
start and stop.

A backend (L{primecount.journal.sqlite.SQLiteJournal},
L{primecount.journal.postgresql.PostgresJournal}) supplies how records are written
and settled, how a probe tests the database, its periodic work and how its
connection is dropped.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Sequence
from typing import Any, ClassVar

from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from primecount.journal import DEFAULT_TIMEOUT, JournalUnavailable
from primecount.journal.records import Record
from primecount.metrics.recorder import MetricsRecorder, NullMetrics

_STOP = object()
#: Wakes the writer thread (for its periodic work, or to probe now).
_WAKE = object()


class _Waiting:
    """
    Records waiting for a group commit, and how it went for them.
    """

    __slots__ = ("done", "error", "records")

    def __init__(self, records: Sequence[Record]) -> None:
        self.records = records
        self.done = False
        self.error: str | None = None


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

    Subclasses implement L{_write}, L{_settleRecords}, L{_probe},
    L{_probeInterval} and L{_drop}, and may extend L{_tick},
    L{_afterCommit}, L{_settleFailed}, L{_episodeStarted} and
    L{_finishing}.

    @ivar batches: how many transactions were committed.
    @ivar committed: how many records were committed.
    @ivar failed: how many records could not be committed.
    """

    _log = Logger()

    #: It keeps what it is given (a L{primecount.journal.NullJournal} does not).
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
        @param reactor: used to hand results back to the reactor thread.
        @param timeout: seconds a commit may take before it is given up.
        @param metrics: told each group commit's size and duration, and how
            many records could not be committed.
        """
        self._reactor = reactor
        self.timeout = timeout
        self._metrics: MetricsRecorder = metrics if metrics is not None else NullMetrics()
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._stopped: Deferred[None] | None = None
        self._accepting = False
        # _commitLock: one transaction at a time; guards the connection and
        # the counters. _waitingLock: guards the queue of _Waiting.
        self._commitLock = threading.Lock()
        self._waitingLock = threading.Lock()
        self._waiting: list[_Waiting] = []
        self._closed = False
        # _failing: in a failure episode (logged at its start and end).
        # _blocked: why commits fail at once, without trying the database,
        # until the writer thread's probe clears it (None: try them).
        self._failing = False
        self._hurry = False
        self._blocked: str | None = None
        self._failedInEpisode = 0
        self.batches = 0
        self.committed = 0
        self.failed = 0

    # -- backend hooks --------------------------------------------------------

    def _place(self) -> tuple[str, str]:
        """
        The log field naming the journal, and its value (fit to print).
        """
        raise NotImplementedError

    def _write(self, records: list[Record]) -> str | None:
        """
        Commit C{records} as one transaction; holds C{_commitLock}.

        @return: L{None} once committed, else why not.
        """
        raise NotImplementedError

    def _settleRecords(self, records: Sequence[Record]) -> str | None:
        """
        Apply settles in one transaction; holds C{_commitLock}.

        @return: L{None} once done, else why not.
        """
        raise NotImplementedError

    def _probe(self) -> None:
        """
        During a failure episode, test whether the database takes writes
        again; on success set C{_blocked} to L{None}. Writer thread.
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

    def _tick(self, now: float) -> float | None:
        """
        The writer thread's periodic work, run when it wakes.

        @return: when next to wake for it (L{time.monotonic}), or L{None}.
        """
        return None

    def _afterCommit(self) -> None:
        """
        A group was committed; holds C{_commitLock}.
        """

    def _episodeStarted(self) -> None:
        """
        Commits fail from now on until a probe succeeds; holds C{_commitLock}.
        """

    def _settleFailed(self, why: str) -> None:
        """
        Settles could not be applied; holds C{_commitLock}.
        """
        if self._blocked is None:
            self._blocked = why

    def _finishing(self) -> None:
        """
        The writer thread is about to close the connection and end.
        """

    # -- service --------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self._accepting = True
        self._closed = False
        self._hurry = False
        self._thread = threading.Thread(target=self._run, name=self._threadName, daemon=True)
        self._thread.start()

    def stopService(self) -> Deferred[None]:
        """
        Commit everything queued, then close the database.
        """
        super().stopService()
        self._accepting = False
        if self._thread is None:
            return succeed(None)
        self._stopped = Deferred()
        self._queue.put(_STOP)
        return self._stopped

    def hurry(self) -> None:
        """
        The stop's deadline is near: no commit waits long for the database
        from now on, so the stop keeps its bound.
        """
        self._hurry = True

    # -- any thread but the reactor's ------------------------------------------

    def commit(self, records: Sequence[Record]) -> None:
        """
        Commit C{records}, in a group with whatever else is waiting; blocks
        until they are committed. Call it from a thread-pool thread.

        @raise JournalUnavailable: when they could not be committed.
        """
        waiting = _Waiting(records)
        with self._waitingLock:
            self._waiting.append(waiting)
        with self._commitLock:
            if not waiting.done:
                self._commitWaiting()
        if waiting.error is not None:
            raise JournalUnavailable(waiting.error)

    def _commitWaiting(self) -> None:
        """
        Commit everything queued, as one transaction. Holds C{_commitLock}.
        """
        with self._waitingLock:
            group, self._waiting = self._waiting, []
        if not group:
            return
        n = sum(len(w.records) for w in group)
        started = time.monotonic()
        # In a failure episode, fail at once: the writer thread's probe says
        # when to try again.
        error = self._blocked
        if error is None:
            error = self._write([r for w in group for r in w.records])
        for w in group:
            w.error = error
            w.done = True
        if error is None:
            self._committed(n, time.monotonic() - started)
        else:
            self._notCommitted(n, error)

    def _committed(self, n: int, seconds: float) -> None:
        self._afterCommit()
        self.batches += 1
        self.committed += n
        self._metrics.journalCommit(n, seconds)
        if self._failing:
            self._failing = False
            self._say(
                self._log.info,
                "writable again; {failed} requests were answered ERR journal unavailable meanwhile",
                failed=self._failedInEpisode,
            )
            self._failedInEpisode = 0

    def _notCommitted(self, n: int, why: str) -> None:
        if self._blocked is None:
            self._blocked = why
            self._episodeStarted()
        self.failed += n
        self._failedInEpisode += n
        self._metrics.journalFailed(n)
        if not self._failing:
            self._failing = True
            self._say(
                self._log.error,
                "cannot commit ({why}); answering ERR journal unavailable until it can",
                why=why,
            )

    def _say(self, level: Any, text: str, **fields: object) -> None:
        """
        Log C{"journal {<place>} " + text} from the reactor thread, with the
        field naming the journal (L{_place}) and C{fields}.
        """
        field, value = self._place()
        self._reactor.callFromThread(
            level, "journal {" + field + "} " + text, **{field: value}, **fields
        )

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
        self._queue.put((records, d, settles))
        return d

    def _settle(self, records: Sequence[Record]) -> None:
        """
        Apply L{settle}s in one transaction (writer thread).

        @raise JournalUnavailable: when they could not be applied.
        """
        with self._commitLock:
            error = self._blocked
            if error is None:
                error = self._settleRecords(records)
                if error is not None:
                    self._settleFailed(error)
        if error is not None:
            raise JournalUnavailable(error)

    @staticmethod
    def _fire(waiting: list[Deferred[None]], error: str | None) -> None:
        for d in waiting:
            if error is None:
                d.callback(None)
            else:
                d.errback(Failure(JournalUnavailable(error)))

    # -- writer thread ------------------------------------------------------------

    def _run(self) -> None:
        stopping = False
        nextProbe = 0.0
        while not stopping:
            now = time.monotonic()
            if self._blocked is not None and now >= nextProbe:
                self._probe()
                nextProbe = time.monotonic() + self._probeInterval()
            nextTick = self._tick(now)
            wakes = [] if nextTick is None else [nextTick]
            if self._blocked is not None:
                wakes.append(nextProbe)
            timeout = max(0.0, min(wakes) - time.monotonic()) if wakes else None
            try:
                item = self._queue.get(timeout=timeout)
            except queue.Empty:
                continue
            batch = []
            while True:
                if item is _STOP:
                    stopping = True
                elif item is not _WAKE:
                    batch.append(item)
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
            # Inserts first: a settle only ever follows its own insert.
            inserts = [(records, d) for records, d, settles in batch if not settles]
            settles = [(records, d) for records, d, settles in batch if settles]
            for work, group in ((self.commit, inserts), (self._settle, settles)):
                if not group:
                    continue
                error = None
                try:
                    work([r for records, _ in group for r in records])
                except JournalUnavailable as e:
                    error = str(e)
                self._reactor.callFromThread(self._fire, [d for _, d in group], error)
        self._finishing()
        with self._commitLock:
            self._closed = True
            self._drop()
        self._reactor.callFromThread(self._finished)

    def _finished(self) -> None:
        self._thread = None
        if self._stopped is not None:
            stopped, self._stopped = self._stopped, None
            stopped.callback(None)
