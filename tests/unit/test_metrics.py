# -*- test-case-name: tests.unit.test_metrics -*-
"""
Tests for L{primecount.metrics.prometheus}: every family moves, labels stay bounded,
batches count right, and C{/metrics} is served. Several processes:
L{tests.system.test_metrics_process}.
"""

from __future__ import annotations

import inspect
import os
import shutil
import sys
import tempfile
from typing import Any

from prometheus_client import Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.python.threadpool import ThreadPool
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.test.requesthelper import DummyRequest

from primecount.core import outcomes
from primecount.core.outcomes import BAD_SUM, EMPTY_MESSAGE, OK
from primecount.journal.records import PROTOCOL_COUNT, PROTOCOL_RANGE
from primecount.metrics.http import MetricsResource, metricsSite
from primecount.metrics.prometheus import (
    LATENCY_BUCKETS,
    MULTIPROCESS_DIRECTORY,
    Metrics,
    _observe,
)
from primecount.metrics.recorder import MetricsRecorder, NullMetrics

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(metrics: Metrics) -> Samples:
    """
    Every sample C{/metrics} would show, parsed back from the text format.
    """
    text = generate_latest(metrics.registry).decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    """
    One sample's value, or L{None} when it is absent.
    """
    return samples.get((name, frozenset(labels.items())))


def tempDirectory(case: SynchronousTestCase) -> str:
    """
    A fresh directory outside the checkout, removed after the test (trial's
    C{mktemp} is relative to the working directory, the checkout under pytest).
    """
    path = tempfile.mkdtemp(prefix="primecount-metrics-")
    case.addCleanup(shutil.rmtree, path, True)
    return path


class FakeQueue:
    """
    Stands in for a thread pool's C{q}: a fixed backlog.
    """

    def __init__(self, backlog: int) -> None:
        self.backlog = backlog

    def qsize(self) -> int:
        return self.backlog


class FakePool:
    """
    Stands in for a L{ThreadPool} through its public C{working} and C{q},
    with a fixed load.
    """

    def __init__(self, busy: int, backlog: int) -> None:
        self.working = [None] * busy
        self.q = FakeQueue(backlog)


class SingleProcessTests(SynchronousTestCase):
    """
    Without C{PROMETHEUS_MULTIPROC_DIR}: one process, its own registry.
    """

    def setUp(self) -> None:
        self.assertNotIn(MULTIPROCESS_DIRECTORY, os.environ)
        self.metrics = Metrics()

    def test_requestsCountByProtocolAndOutcome(self) -> None:
        self.metrics.requests(PROTOCOL_COUNT, OK)
        self.metrics.requests(PROTOCOL_COUNT, OK, 4)
        self.metrics.requests(PROTOCOL_COUNT, OK, 2)
        self.metrics.requests(PROTOCOL_COUNT, EMPTY_MESSAGE)
        self.metrics.requests(PROTOCOL_RANGE, BAD_SUM, 3)
        samples = scrape(self.metrics)
        total = "primecount_requests_total"
        self.assertEqual(value(samples, total, protocol="count", outcome="ok"), 7)
        self.assertEqual(value(samples, total, protocol="count", outcome="empty_message"), 1)
        self.assertEqual(value(samples, total, protocol="range", outcome="bad_sum"), 3)

    def test_outcomesSharingALabelShareASample(self) -> None:
        """
        The three ways a range client can disconnect are one C{outcome}
        label: the journal tells them apart, the metric does not.
        """
        self.metrics.requests(PROTOCOL_RANGE, outcomes.DISCONNECTED_BEFORE_REPLY)
        self.metrics.requests(PROTOCOL_RANGE, outcomes.DISCONNECTED_MID_STREAM, 2)
        self.metrics.requests(PROTOCOL_RANGE, outcomes.DISCONNECTED_BEFORE_SUM, 4)
        samples = scrape(self.metrics)
        requests = {key: v for key, v in samples.items() if key[0] == "primecount_requests_total"}
        self.assertEqual(
            requests,
            {
                (
                    "primecount_requests_total",
                    frozenset({("protocol", "range"), ("outcome", "disconnected")}),
                ): 7
            },
        )

    def test_nonPositiveCountsChangeNothing(self) -> None:
        self.metrics.requests(PROTOCOL_COUNT, OK, 0)
        self.metrics.requests(PROTOCOL_COUNT, OK, -3)
        self.metrics.latency(PROTOCOL_COUNT, 0.1, 0)
        self.metrics.journalFailed(0)
        samples = scrape(self.metrics)
        self.assertIsNone(
            value(samples, "primecount_requests_total", protocol="count", outcome="ok")
        )
        self.assertIsNone(
            value(samples, "primecount_request_duration_seconds_count", protocol="count")
        )
        self.assertEqual(value(samples, "primecount_journal_failed_records_total"), 0)

    def test_latencyBatchCountsEveryRequest(self) -> None:
        self.metrics.latency(PROTOCOL_COUNT, 0.0003, 1000)
        self.metrics.latency(PROTOCOL_COUNT, 0.02)
        samples = scrape(self.metrics)
        name = "primecount_request_duration_seconds"
        self.assertEqual(value(samples, name + "_count", protocol="count"), 1001)
        self.assertAlmostEqual(value(samples, name + "_sum", protocol="count"), 0.32)
        bucket = name + "_bucket"
        self.assertEqual(value(samples, bucket, protocol="count", le="0.00025"), 0)
        self.assertEqual(value(samples, bucket, protocol="count", le="0.0005"), 1000)
        self.assertEqual(value(samples, bucket, protocol="count", le="0.01"), 1000)
        self.assertEqual(value(samples, bucket, protocol="count", le="0.025"), 1001)
        self.assertEqual(value(samples, bucket, protocol="count", le="+Inf"), 1001)

    def test_latencyBatchEqualsRepeatedObserve(self) -> None:
        """
        C{n} observations at once give exactly the samples of C{n} calls to
        prometheus_client's own C{observe}, bounds and extremes included.
        """
        amounts = [0.0, 0.00005, 0.00007, 0.0005, 0.3, 5.0, 7.5, float("inf")]
        batched = Histogram("batched", "", buckets=LATENCY_BUCKETS, registry=None)
        looped = Histogram("batched", "", buckets=LATENCY_BUCKETS, registry=None)
        for n, amount in enumerate(amounts, 1):
            _observe(batched, amount, n)
            for _ in range(n):
                looped.observe(amount)
        self.assertEqual(
            [
                (s.name, s.labels, s.value)
                for s in batched.collect()[0].samples
                if "created" not in s.name
            ],
            [
                (s.name, s.labels, s.value)
                for s in looped.collect()[0].samples
                if "created" not in s.name
            ],
        )

    def test_latencyBackwardsClockCountsAsZero(self) -> None:
        self.metrics.latency(PROTOCOL_RANGE, -0.5, 2)
        self.metrics.latency(PROTOCOL_RANGE, float("nan"))
        samples = scrape(self.metrics)
        name = "primecount_request_duration_seconds"
        self.assertEqual(value(samples, name + "_bucket", protocol="range", le="5e-05"), 3)
        self.assertEqual(value(samples, name + "_sum", protocol="range"), 0)

    def test_openConnections(self) -> None:
        for _ in range(3):
            self.metrics.connectionOpened(PROTOCOL_COUNT)
        self.metrics.connectionOpened(PROTOCOL_RANGE)
        self.metrics.connectionClosed(PROTOCOL_COUNT)
        samples = scrape(self.metrics)
        self.assertEqual(value(samples, "primecount_open_connections", protocol="count"), 2)
        self.assertEqual(value(samples, "primecount_open_connections", protocol="range"), 1)

    def test_journal(self) -> None:
        self.metrics.journalCommit(12, 0.002)
        self.metrics.journalCommit(1, 0.0001)
        self.metrics.journalFailed(5)
        samples = scrape(self.metrics)
        self.assertEqual(value(samples, "primecount_journal_batch_size_count"), 2)
        self.assertEqual(value(samples, "primecount_journal_batch_size_sum"), 13)
        self.assertEqual(value(samples, "primecount_journal_batch_size_bucket", le="1.0"), 1)
        self.assertEqual(value(samples, "primecount_journal_batch_size_bucket", le="10.0"), 1)
        self.assertEqual(value(samples, "primecount_journal_batch_size_bucket", le="20.0"), 2)
        self.assertEqual(value(samples, "primecount_journal_commit_seconds_count"), 2)
        self.assertEqual(value(samples, "primecount_journal_commit_seconds_bucket", le="0.0001"), 1)
        self.assertEqual(value(samples, "primecount_journal_commit_seconds_bucket", le="0.0025"), 2)
        self.assertEqual(value(samples, "primecount_journal_failed_records_total"), 5)

    def test_journalState(self) -> None:
        """
        C{primecount_journal_unavailable_since_seconds} is 0 while the
        journal commits and, from its first failure until a commit
        succeeds again, the time that episode began; it appears with the
        journal's first commit or failure.
        """
        clock = Clock()
        clock.advance(1_800_000_000)
        metrics = Metrics(clock=clock)
        state = "primecount_journal_unavailable_since_seconds"
        self.assertIsNone(value(scrape(metrics), state))
        metrics.journalCommit(3, 0.001)
        self.assertEqual(value(scrape(metrics), state), 0)
        clock.advance(5)
        metrics.journalFailed(2)
        clock.advance(7)
        metrics.journalFailed(4)
        self.assertEqual(value(scrape(metrics), state), 1_800_000_005)
        metrics.journalCommit(1, 0.001)
        self.assertEqual(value(scrape(metrics), state), 0)
        clock.advance(1)
        metrics.journalFailed(1)
        self.assertEqual(value(scrape(metrics), state), 1_800_000_013)

    def test_journalStateFromTheFirstFailure(self) -> None:
        """
        A journal that fails from the start shows its state at once.
        """
        self.metrics.journalFailed(0)
        found = value(scrape(self.metrics), "primecount_journal_unavailable_since_seconds")
        assert found is not None
        self.assertGreater(found, 1_700_000_000)

    def test_workerRestarts(self) -> None:
        self.metrics.workerRestarted()
        self.metrics.workerRestarted()
        self.assertEqual(value(scrape(self.metrics), "primecount_worker_restarts_total"), 2)

    def test_threadPoolReadAtScrapeTime(self) -> None:
        pool = ThreadPool(minthreads=0, maxthreads=1)
        self.addCleanup(pool.stop)
        self.metrics.watchThreadPool(pool)
        depth = "primecount_threadpool_queue_depth"
        self.assertEqual(value(scrape(self.metrics), depth), 0)
        for _ in range(3):
            pool.callInThread(lambda: None)  # not started: the work waits
        self.assertEqual(value(scrape(self.metrics), depth), 3)
        self.metrics.watchThreadPool(FakePool(busy=4, backlog=2))  # type: ignore[arg-type]
        samples = scrape(self.metrics)
        self.assertEqual(value(samples, depth), 5)
        self.assertEqual(value(samples, "primecount_threadpool_busy_threads"), 4)

    def test_processMetrics(self) -> None:
        samples = scrape(self.metrics)
        names = {name for name, _ in samples}
        self.assertIn("python_info", names)
        if sys.platform.startswith("linux"):
            self.assertIn("process_resident_memory_bytes", names)

    def test_instancesAreIndependent(self) -> None:
        other = Metrics()
        other.requests(PROTOCOL_COUNT, OK, 9)
        self.metrics.requests(PROTOCOL_COUNT, OK)
        total = "primecount_requests_total"
        self.assertEqual(value(scrape(self.metrics), total, protocol="count", outcome="ok"), 1)
        self.assertEqual(value(scrape(other), total, protocol="count", outcome="ok"), 9)
        self.assertFalse(self.metrics.multiprocess)

    def test_markProcessDeadChangesNothingInOneProcess(self) -> None:
        """
        Without multiprocess mode there are no other processes' values to
        forget: the samples stay as they were.
        """
        self.metrics.requests(PROTOCOL_COUNT, OK, 3)
        self.metrics.connectionOpened(PROTOCOL_COUNT)
        before = scrape(self.metrics)
        self.metrics.mark_process_dead(12345)
        after = scrape(self.metrics)
        primecount = {k: v for k, v in before.items() if k[0].startswith("primecount_")}
        self.assertEqual(primecount, {k: v for k, v in after.items() if k in primecount})
        self.assertEqual(
            value(after, "primecount_requests_total", protocol="count", outcome="ok"), 3
        )
        self.assertEqual(value(after, "primecount_open_connections", protocol="count"), 1)

    def test_theTenDocumentedFamilies(self) -> None:
        """
        Exactly the ten C{primecount_*} families the module documents for
        one process (the journal's state once it committed).
        """
        self.metrics.journalCommit(1, 0.001)
        text = generate_latest(self.metrics.registry).decode()
        # The text format shows a counter's or histogram's creation time as
        # a gauge of its own, NAME_created: not a family of ours.
        families = {
            f.name
            for f in text_string_to_metric_families(text)
            if f.name.startswith("primecount_") and not f.name.endswith("_created")
        }
        self.assertEqual(
            families,
            {
                "primecount_requests",
                "primecount_request_duration_seconds",
                "primecount_open_connections",
                "primecount_journal_batch_size",
                "primecount_journal_commit_seconds",
                "primecount_journal_failed_records",
                "primecount_worker_restarts",
                "primecount_threadpool_queue_depth",
                "primecount_threadpool_busy_threads",
                "primecount_journal_unavailable_since_seconds",
            },
        )

    def test_directorySetTooLateFails(self) -> None:
        """
        prometheus_client picked its value store at import, before the
        variable was set: refuse rather than silently not share.
        """
        os.environ[MULTIPROCESS_DIRECTORY] = tempDirectory(self)
        self.addCleanup(os.environ.pop, MULTIPROCESS_DIRECTORY)
        error = self.assertRaises(RuntimeError, Metrics)
        self.assertIn(MULTIPROCESS_DIRECTORY, str(error))


class OutcomeLabelTests(SynchronousTestCase):
    """
    The C{outcome} label comes from the table of outcomes: few, safe words.
    """

    def test_labelOfEachOutcome(self) -> None:
        metrics = Metrics()
        for outcome in outcomes.OUTCOMES:
            metrics.requests(PROTOCOL_COUNT, outcome)
        samples = scrape(metrics)
        labels = {
            dict(key[1])["outcome"] for key in samples if key[0] == "primecount_requests_total"
        }
        self.assertEqual(labels, outcomes.LABELS)
        self.assertEqual(
            value(samples, "primecount_requests_total", protocol="count", outcome="invalid_utf8"),
            1,
        )

    def test_labelsAreFewAndSafe(self) -> None:
        self.assertLessEqual(len(outcomes.LABELS), 20)
        for word in outcomes.LABELS:
            self.assertRegex(word, r"^[a-z][a-z0-9_]*$")


class NullMetricsTests(SynchronousTestCase):
    """
    L{NullMetrics} takes every call L{Metrics} takes, and does nothing.
    """

    def test_sameMethodsAsMetrics(self) -> None:
        names = [
            name
            for name, _ in inspect.getmembers(MetricsRecorder, inspect.isfunction)
            if not name.startswith("_")
        ]
        self.assertIn("requests", names)
        self.assertIn("mark_process_dead", names)
        for name in names:
            expected = inspect.signature(getattr(MetricsRecorder, name))
            self.assertEqual(inspect.signature(getattr(NullMetrics, name)), expected, name)
            self.assertEqual(inspect.signature(getattr(Metrics, name)), expected, name)

    def test_acceptsEveryCallAndKeepsNothing(self) -> None:
        null = NullMetrics()
        recorder: MetricsRecorder = null
        results = [
            recorder.requests(PROTOCOL_COUNT, OK),
            recorder.requests(PROTOCOL_RANGE, BAD_SUM, 3),
            recorder.latency(PROTOCOL_COUNT, 0.001, 1000),
            recorder.connectionOpened(PROTOCOL_COUNT),
            recorder.connectionClosed(PROTOCOL_COUNT),
            recorder.journalCommit(10, 0.001),
            recorder.journalFailed(10),
            recorder.workerRestarted(),
            recorder.watchThreadPool(ThreadPool()),
            recorder.mark_process_dead(1),
        ]
        self.assertEqual(results, [None] * 10)
        self.assertEqual(vars(null), {})


class ResourceTests(SynchronousTestCase):
    """
    L{MetricsResource} renders the registry in the format asked for.
    """

    def test_prometheusText(self) -> None:
        metrics = Metrics()
        metrics.requests(PROTOCOL_COUNT, OK)
        request = DummyRequest([b""])
        body = MetricsResource(metrics.registry).render_GET(request)  # type: ignore[arg-type]
        self.assertIn(b"primecount_requests_total{", body)
        contentType = request.responseHeaders.getRawHeaders(b"content-type")[0]
        self.assertTrue(contentType.startswith(b"text/plain"), contentType)

    def test_openMetricsWhenAsked(self) -> None:
        metrics = Metrics()
        request = DummyRequest([b""])
        request.requestHeaders.addRawHeader(
            b"accept", b"application/openmetrics-text; version=1.0.0"
        )
        body = MetricsResource(metrics.registry).render_GET(request)  # type: ignore[arg-type]
        contentType = request.responseHeaders.getRawHeaders(b"content-type")[0]
        self.assertTrue(contentType.startswith(b"application/openmetrics-text"), contentType)
        self.assertTrue(body.endswith(b"# EOF\n"))


class Fetch(Protocol):
    """
    An HTTP/1.0 client of one request: the server closes when done.
    """

    def __init__(self, path: bytes) -> None:
        self.path = path
        self.received: list[bytes] = []
        self.done: Deferred[bytes] = Deferred()

    def connectionMade(self) -> None:
        self.transport.write(b"GET " + self.path + b" HTTP/1.0\r\nHost: test\r\n\r\n")  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        self.received.append(data)

    def connectionLost(self, reason: Any = None) -> None:
        self.done.callback(b"".join(self.received))


class HTTPTests(TestCase):
    """
    L{metricsSite} over a real socket on 127.0.0.1.
    """

    @inlineCallbacks
    def test_metricsServedElsewhere404(self) -> Any:
        metrics = Metrics()
        metrics.requests(PROTOCOL_COUNT, OK, 3)
        port = reactor.listenTCP(0, metricsSite(metrics), interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)
        address = port.getHost()

        def get(path: bytes) -> Deferred[bytes]:
            fetch = Fetch(path)
            endpoint = TCP4ClientEndpoint(reactor, address.host, address.port)
            connectProtocol(endpoint, fetch)
            return fetch.done

        response = yield get(b"/metrics")
        head, _, body = response.partition(b"\r\n\r\n")
        self.assertTrue(head.startswith(b"HTTP/1.0 200 "), head)
        self.assertIn(b"content-type: text/plain", head.lower())
        self.assertIn(b'primecount_requests_total{outcome="ok",protocol="count"} 3.0', body)
        for path in (b"/", b"/other", b"/metrics/x"):
            response = yield get(path)
            self.assertTrue(response.startswith(b"HTTP/1.0 404 "), (path, response[:40]))
