# -*- test-case-name: tests.unit.test_metrics,tests.system.test_metrics_process -*-
"""
What the server, the journal and the workers record into: the
L{MetricsRecorder} interface, and L{NullMetrics}, which records nothing.

A process with C{--metrics-port} holds a
L{primecount.metrics.prometheus.Metrics}; without, a L{NullMetrics}: the
same methods, doing nothing, so call sites need no C{if}. This module
imports neither prometheus_client nor Twisted's web.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from primecount.core.outcomes import Outcome

if TYPE_CHECKING:
    from twisted.python.threadpool import ThreadPool


class MetricsRecorder(Protocol):
    """
    What the server calls: satisfied by L{primecount.metrics.prometheus.Metrics} and L{NullMetrics}.
    """

    def requests(self, protocol: str, outcome: Outcome, n: int = 1) -> None:
        """
        Count C{n} replies of C{protocol} with C{outcome}.
        """

    def latency(self, protocol: str, seconds: float, n: int = 1) -> None:
        """
        Observe C{n} requests that each took C{seconds}.
        """

    def connectionOpened(self, protocol: str) -> None:
        """
        A connection of C{protocol} opened.
        """

    def connectionClosed(self, protocol: str) -> None:
        """
        A connection of C{protocol} closed.
        """

    def journalCommit(self, records: int, seconds: float) -> None:
        """
        One journal transaction committed C{records} in C{seconds}.
        """

    def journalFailed(self, records: int) -> None:
        """
        C{records} could not be written to the journal.
        """

    def workerRestarted(self) -> None:
        """
        The supervisor replaced a worker process.
        """

    def watchThreadPool(self, pool: ThreadPool) -> None:
        """
        Report C{pool}'s backlog and busy threads from now on.
        """

    def mark_process_dead(self, pid: int) -> None:
        """
        Forget the live gauges of the exited worker process C{pid}.
        """


class NullMetrics:
    """
    Metrics turned off: every method accepts its call and does nothing.
    """

    def requests(self, protocol: str, outcome: Outcome, n: int = 1) -> None:
        """
        Do nothing; see L{primecount.metrics.prometheus.Metrics.requests}.
        """

    def latency(self, protocol: str, seconds: float, n: int = 1) -> None:
        """
        Do nothing; see L{primecount.metrics.prometheus.Metrics.latency}.
        """

    def connectionOpened(self, protocol: str) -> None:
        """
        Do nothing; see L{primecount.metrics.prometheus.Metrics.connectionOpened}.
        """

    def connectionClosed(self, protocol: str) -> None:
        """
        Do nothing; see L{primecount.metrics.prometheus.Metrics.connectionClosed}.
        """

    def journalCommit(self, records: int, seconds: float) -> None:
        """
        Do nothing; see L{primecount.metrics.prometheus.Metrics.journalCommit}.
        """

    def journalFailed(self, records: int) -> None:
        """
        Do nothing; see L{primecount.metrics.prometheus.Metrics.journalFailed}.
        """

    def workerRestarted(self) -> None:
        """
        Do nothing; see L{primecount.metrics.prometheus.Metrics.workerRestarted}.
        """

    def watchThreadPool(self, pool: ThreadPool) -> None:
        """
        Do nothing; see L{primecount.metrics.prometheus.Metrics.watchThreadPool}.
        """

    def mark_process_dead(self, pid: int) -> None:
        """
        Do nothing; see L{primecount.metrics.prometheus.Metrics.mark_process_dead}.
        """
