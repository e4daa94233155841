"""
Tests for C{primecount top}: the arithmetic of two scrapes
(L{primecount.cli.top.figures}), reading a metrics page
(L{primecount.cli.top.scrape}), watching hosts (L{primecount.cli.top.live}),
the tables and the JSON (L{primecount.cli.top.view}) and the command line.

The real thing, a server under load and the live view in a terminal, is
L{tests.system.test_top_process}.
"""

from __future__ import annotations

import argparse
import dataclasses
import http.server
import io
import json
import math
import socket
import sys
import threading
from typing import Any, ClassVar

from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import generate_latest
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from primecount.cli import top as topcli
from primecount.cli.top import figures, live, scrape, view
from primecount.cli.top.figures import Figures, JournalState, host_figures, quantile
from primecount.cli.top.scrape import Scrape, ScrapeFailed, parse
from primecount.core.outcomes import EMPTY_MESSAGE, JOURNAL_UNAVAILABLE, OK
from primecount.journal.records import PROTOCOL_COUNT
from primecount.metrics.prometheus import LATENCY_BUCKETS, Metrics

#: When the pages below were served: 2026-12-01 00:00:00 UTC.
SERVED = 1_796_083_200.0


def page(
    requests: dict[str, float] | None = None,
    latency: dict[str, float] | None = None,
    start: float = SERVED - 3600,
    extra: str = "",
) -> str:
    """
    A metrics page in the Prometheus text format: requests by outcome,
    latency buckets (cumulative, by C{le}), the process's start time.
    """
    lines = []
    if requests is not None:
        lines += ["# HELP primecount_requests_total x", "# TYPE primecount_requests_total counter"]
        lines += [
            f'primecount_requests_total{{protocol="count",outcome="{o}"}} {v}'
            for o, v in requests.items()
        ]
    if latency is not None:
        name = "primecount_request_duration_seconds"
        lines += [f"# HELP {name} x", f"# TYPE {name} histogram"]
        lines += [f'{name}_bucket{{protocol="count",le="{le}"}} {v}' for le, v in latency.items()]
        lines.append(f'{name}_count{{protocol="count"}} {latency.get("+Inf", 0)}')
        lines.append(f'{name}_sum{{protocol="count"}} 0')
    lines += [
        "# HELP process_start_time_seconds x",
        "# TYPE process_start_time_seconds gauge",
        f"process_start_time_seconds {start}",
    ]
    return "\n".join(lines) + "\n" + extra


def shot(text: str, at: float, served: float = SERVED) -> Scrape:
    return parse(text, at, served)


class RateTests(SynchronousTestCase):
    """
    Requests per second from two scrapes of the counters.
    """

    def test_ratesByOutcome(self) -> None:
        old = shot(page({"ok": 100, "empty_message": 5}), at=10.0)
        new = shot(page({"ok": 300, "empty_message": 9, "journal_unavailable": 4}), at=12.0)
        f = host_figures(old, new)
        self.assertEqual(
            f.outcomes, {"ok": 100.0, "empty_message": 2.0, "journal_unavailable": 2.0}
        )
        self.assertEqual((f.rate, f.errors), (104.0, 4.0))

    def test_counterResetCountsTheNewValue(self) -> None:
        """
        A counter that went down was reset: what it counts now all
        happened in the interval.
        """
        old = shot(page({"ok": 1000}), at=0.0)
        new = shot(page({"ok": 30}), at=3.0)
        self.assertEqual(host_figures(old, new).rate, 10.0)

    def test_restartSeenByTheStartTime(self) -> None:
        """
        After a restart the counters start from zero, even when they have
        already climbed past their old values.
        """
        old = shot(page({"ok": 10}, start=SERVED - 100), at=0.0)
        new = shot(page({"ok": 50}, start=SERVED - 1), at=1.0)
        self.assertEqual(host_figures(old, new).rate, 50.0)
        same = shot(page({"ok": 50}, start=SERVED - 100), at=1.0)
        self.assertEqual(host_figures(old, same).rate, 40.0)

    def test_familyMissingIsUnknownEmptyIsZero(self) -> None:
        """
        A host without the family (an older server, another program) has
        no rate; one that declares it without samples (no request yet)
        has a rate of 0.
        """
        missing = host_figures(shot(page(), at=0.0), shot(page(), at=1.0))
        self.assertIsNone(missing.rate)
        self.assertIsNone(missing.outcomes)
        self.assertIsNone(missing.p99)
        self.assertIsNone(missing.connections)
        empty = host_figures(shot(page({}), at=0.0), shot(page({}), at=1.0))
        self.assertEqual((empty.rate, empty.errors, empty.outcomes), (0.0, 0.0, {}))

    def test_oneScrapeHasNoRates(self) -> None:
        f = host_figures(None, shot(page({"ok": 5}), at=1.0))
        self.assertIsNone(f.rate)
        self.assertEqual(f.uptime, 3600)


class PercentileTests(SynchronousTestCase):
    """
    Latency percentiles from the growth of the histogram's buckets.
    """

    def test_fromTheIntervalNotSinceStart(self) -> None:
        """
        A thousand slow requests before the interval do not count; the
        hundred fast ones in it do, interpolated within their bucket.
        """
        old = shot(page(latency={"0.0005": 0, "0.001": 0, "1.0": 1000, "+Inf": 1000}), at=0.0)
        new = shot(page(latency={"0.0005": 0, "0.001": 100, "1.0": 1100, "+Inf": 1100}), at=1.0)
        f = host_figures(old, new)
        assert f.p50 is not None and f.p99 is not None
        self.assertAlmostEqual(f.p50, 0.00075)
        self.assertAlmostEqual(f.p99, 0.000995)

    def test_edges(self) -> None:
        self.assertIsNone(quantile(0.99, None))
        self.assertIsNone(quantile(0.99, {}))
        self.assertIsNone(quantile(0.99, {1.0: 0, math.inf: 0}))
        # Above the largest finite bound: that bound is all one knows.
        self.assertEqual(quantile(0.99, {0.1: 0, 1.0: 0, math.inf: 5}), 1.0)
        # The first bucket starts at 0.
        self.assertEqual(quantile(0.5, {0.1: 10, 1.0: 10, math.inf: 10}), 0.05)

    @given(st.lists(st.sampled_from([0.00004, 0.0003, 0.0009, 0.004, 0.03, 0.2, 2.0]), min_size=1))
    @settings(max_examples=60, deadline=None)
    def test_inTheBucketOfTheTruePercentile(self, seconds: list[float]) -> None:
        """
        What a real registry's histogram gives lies in the bucket that
        holds the true percentile of what was observed.
        """
        metrics = Metrics()
        before = shot(generate_latest(metrics.registry).decode(), at=0.0)
        for s in seconds:
            metrics.latency(PROTOCOL_COUNT, s)
        after = shot(generate_latest(metrics.registry).decode(), at=1.0)
        f = host_figures(before, after)
        ordered = sorted(seconds)
        for q, found in ((0.5, f.p50), (0.99, f.p99)):
            truth = ordered[max(0, math.ceil(q * len(ordered)) - 1)]
            upper = min(b for b in LATENCY_BUCKETS if b >= truth)
            lower = max([0.0, *(b for b in LATENCY_BUCKETS if b < upper)])
            assert found is not None
            self.assertTrue(lower <= found <= upper, (q, truth, found))


class LevelsTests(SynchronousTestCase):
    """
    What one scrape says by itself, from a real registry's page.
    """

    def test_fromARealRegistry(self) -> None:
        clock = Clock()
        clock.advance(SERVED - 50)
        metrics = Metrics(clock=clock)
        metrics.connectionOpened(PROTOCOL_COUNT)
        metrics.connectionOpened(PROTOCOL_COUNT)
        metrics.requests(PROTOCOL_COUNT, OK, 40)
        metrics.journalCommit(40, 0.002)
        metrics.workerRestarted()
        old = shot(generate_latest(metrics.registry).decode(), at=0.0)
        metrics.requests(PROTOCOL_COUNT, OK, 60)
        metrics.requests(PROTOCOL_COUNT, EMPTY_MESSAGE, 2)
        metrics.requests(PROTOCOL_COUNT, JOURNAL_UNAVAILABLE, 8)
        metrics.journalCommit(30, 0.002)
        metrics.journalCommit(10, 0.002)
        metrics.journalFailed(8)
        new = shot(generate_latest(metrics.registry).decode(), at=2.0)
        f = host_figures(old, new)
        self.assertEqual(f.outcomes, {"ok": 30.0, "empty_message": 1.0, "journal_unavailable": 4.0})
        self.assertEqual((f.connections, f.busy, f.queue, f.restarts), (2.0, 0.0, 0.0, 1.0))
        self.assertEqual(f.batch, 20.0)
        self.assertEqual(f.journal, JournalState(SERVED - 50, 1, 1, 50.0))
        assert f.commit_p99 is not None
        self.assertTrue(0.001 < f.commit_p99 <= 0.0025)
        assert f.uptime is not None
        self.assertLess(f.uptime, 3600 * 24 * 365 * 100)

    def test_workers(self) -> None:
        """
        The samples of each worker (label C{pid}) give a row each: a rate
        from the growth of its requests, its connections, its journal, its
        uptime; a worker that appeared meanwhile counts from zero.
        """
        extra = (
            "# TYPE primecount_worker_requests gauge\n"
            'primecount_worker_requests{{pid="7"}} {a}\n'
            'primecount_worker_requests{{pid="8"}} {b}\n'
            "# TYPE primecount_worker_open_connections gauge\n"
            'primecount_worker_open_connections{{pid="7"}} 3\n'
            'primecount_worker_open_connections{{pid="8"}} 1\n'
            "# TYPE primecount_worker_start_time_seconds gauge\n"
            f'primecount_worker_start_time_seconds{{{{pid="7"}}}} {SERVED - 90}\n'
            f'primecount_worker_start_time_seconds{{{{pid="8"}}}} {SERVED - 5}\n'
            "# TYPE primecount_journal_unavailable_since_seconds gauge\n"
            'primecount_journal_unavailable_since_seconds{{pid="7"}} 0\n'
            f'primecount_journal_unavailable_since_seconds{{{{pid="8"}}}} {SERVED - 4}\n'
        )
        old = shot(
            page(
                {},
                extra=extra.format(a=100, b=0).replace(
                    'primecount_worker_requests{pid="8"} 0\n', ""
                ),
            ),
            0.0,
        )
        new = shot(page({}, extra=extra.format(a=400, b=50)), at=2.0)
        found = figures.worker_figures(old, new)
        self.assertEqual(set(found), {"7", "8"})
        self.assertEqual((found["7"].rate, found["8"].rate), (150.0, 25.0))
        self.assertEqual((found["7"].connections, found["8"].connections), (3.0, 1.0))
        self.assertEqual((found["7"].uptime, found["8"].uptime), (90.0, 5.0))
        self.assertEqual(found["7"].journal, JournalState(None, 0, 1, None))
        self.assertEqual(found["8"].journal, JournalState(SERVED - 4, 1, 1, 4.0))
        host = host_figures(old, new)
        self.assertEqual(host.journal, JournalState(SERVED - 4, 1, 2, 4.0))
        self.assertEqual(figures.worker_figures(None, new)["7"].rate, None)
        self.assertEqual(figures.worker_figures(None, shot(page({}), 0.0)), {})


class TotalTests(SynchronousTestCase):
    """
    All hosts as one.
    """

    def test_sums(self) -> None:
        a = Figures(
            rate=100.0,
            outcomes={"ok": 90.0, "bad_sum": 10.0},
            errors=10.0,
            connections=4.0,
            latency={0.001: 100.0, 1.0: 100.0, math.inf: 100.0},
            batch_records=300.0,
            batch_commits=10.0,
            journal=JournalState(None, 0, 1),
            restarts=1.0,
        )
        b = Figures(
            rate=50.0,
            outcomes={"ok": 50.0},
            errors=0.0,
            connections=None,
            latency={0.001: 0.0, 1.0: 100.0, math.inf: 100.0},
            batch_records=100.0,
            batch_commits=30.0,
            journal=JournalState(SERVED - 10, 1, 1, 10.0),
        )
        t = figures.total([a, b])
        self.assertEqual((t.rate, t.errors, t.connections, t.restarts), (150.0, 10.0, 4.0, 1.0))
        self.assertEqual(t.outcomes, {"ok": 140.0, "bad_sum": 10.0})
        self.assertEqual(t.batch, 10.0)
        self.assertEqual(t.journal, JournalState(SERVED - 10, 1, 2, 10.0))
        # 200 requests: the median is the 100th, the last of the fast bucket.
        self.assertEqual(t.p50, 0.001)
        self.assertEqual(figures.total([]).rate, None)


class ScrapeTests(SynchronousTestCase):
    """
    Reading a page, naming URLs.
    """

    def test_notMetrics(self) -> None:
        e = self.assertRaises(ScrapeFailed, parse, "<html>hello</html>\n", 0.0, 0.0)
        self.assertIn("not Prometheus text", str(e))

    def test_urls(self) -> None:
        for given_, meant in (
            ("9100", "http://127.0.0.1:9100/metrics"),
            ("host1", "http://host1:9100/metrics"),
            ("host1:9200", "http://host1:9200/metrics"),
            ("[::1]:9100", "http://[::1]:9100/metrics"),
            ("https://h.example/x/metrics", "https://h.example/x/metrics"),
            ("http://h:1/", "http://h:1/metrics"),
        ):
            self.assertEqual(scrape.normalize(given_), meant)
        for bad in ("ftp://h:1", "h:port", "", "http://:9"):
            self.assertRaises(scrape.BadURL, scrape.normalize, bad)

    def test_shortNames(self) -> None:
        urls = ["http://a:1/metrics", "http://b:1/metrics", "http://b:1/other"]
        self.assertEqual(scrape.short_name(urls[0], urls), "a:1")
        self.assertEqual(scrape.short_name(urls[1], urls), urls[1])


class _Handler(http.server.BaseHTTPRequestHandler):
    pages: ClassVar[dict[str, tuple[int, bytes]]] = {}

    def do_GET(self) -> None:
        status, body = self.pages.get(self.path, (404, b"no"))
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


class FetchTests(SynchronousTestCase):
    """
    L{scrape.fetch} against real sockets on 127.0.0.1: why a host is down,
    in a few words, within its timeout.
    """

    def serve(self, pages: dict[str, tuple[int, bytes]]) -> int:
        handler = type("Handler", (_Handler,), {"pages": pages})
        server = http.server.HTTPServer(("127.0.0.1", 0), handler)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        self.addCleanup(thread.join)
        self.addCleanup(server.server_close)
        self.addCleanup(server.shutdown)
        return int(server.server_address[1])

    def test_page(self) -> None:
        port = self.serve({"/metrics": (200, page({"ok": 3}).encode())})
        found = scrape.fetch(f"http://127.0.0.1:{port}/metrics", 5.0)
        self.assertEqual(found.value("primecount_requests_total"), 3.0)
        # http.server's Date header is the server's time, to the second.
        self.assertLess(abs(found.served - __import__("time").time()), 5)

    def test_whyNot(self) -> None:
        port = self.serve({"/big": (200, b"x" * 3000), "/html": (200, b"<p>\n")})
        base = f"http://127.0.0.1:{port}"
        for url, limit, why in (
            (f"{base}/nothing", 100_000, "HTTP 404 Not Found"),
            (f"{base}/html", 100_000, "not Prometheus text"),
            (f"{base}/big", 1000, "page larger than"),
        ):
            e = self.assertRaises(ScrapeFailed, scrape.fetch, url, 5.0, limit)
            self.assertIn(why, str(e))

    def test_refused(self) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        e = self.assertRaises(ScrapeFailed, scrape.fetch, f"http://127.0.0.1:{port}/metrics", 5.0)
        self.assertEqual(str(e), "connection refused")

    def test_silentHostTimesOut(self) -> None:
        with socket.socket() as silent:
            silent.bind(("127.0.0.1", 0))
            silent.listen(1)
            url = f"http://127.0.0.1:{silent.getsockname()[1]}/metrics"
            e = self.assertRaises(ScrapeFailed, scrape.fetch, url, 0.2)
        self.assertEqual(str(e), "timed out after 0.2 s")


class FakeFetch:
    """
    Stands in for L{scrape.fetch}: says what it is told, counting calls.
    """

    def __init__(self) -> None:
        self.answer: Scrape | str = "connection refused"
        self.release: threading.Event | None = None

    def __call__(self, url: str, timeout: float) -> Scrape:
        if self.release is not None:
            self.release.wait(10)
        if isinstance(self.answer, str):
            raise ScrapeFailed(self.answer)
        return self.answer


class WatchTests(SynchronousTestCase):
    """
    One host watched: down with why, back again, hanging.
    """

    def setUp(self) -> None:
        self.fetch = FakeFetch()
        self.clock = Clock()
        self.watch = live.Watch(
            "http://h:1/metrics", "h:1", 1.0, 2.0, self.fetch, self.clock.seconds, lambda: SERVED
        )

    def test_downThenBack(self) -> None:
        self.watch.once()
        state = self.watch.state()
        self.assertEqual(
            (state.new, state.error, state.down_since), (None, "connection refused", SERVED)
        )
        self.fetch.answer = shot(page({"ok": 1}), at=1.0)
        self.watch.once()
        state = self.watch.state()
        self.assertEqual((state.old, state.error, state.down_since), (None, None, None))
        self.fetch.answer = shot(page({"ok": 3}), at=2.0)
        self.watch.once()
        state = self.watch.state()
        self.assertEqual(host_figures(state.old, state.new).rate, 2.0)
        # Down again: the old scrapes are forgotten, so the rates start
        # afresh when it is back rather than averaging over the outage.
        self.fetch.answer = "timed out after 2 s"
        self.watch.once()
        self.assertEqual((self.watch.state().old, self.watch.state().new), (None, None))

    def test_hangingScrapeIsDown(self) -> None:
        """
        A scrape that outlasts its timeout (a name lookup urllib cannot
        bound) makes the host down; the view does not wait for it.
        """
        self.fetch.answer = shot(page({"ok": 1}), at=1.0)
        self.watch.once()
        self.fetch.release = threading.Event()
        thread = threading.Thread(target=self.watch.once)
        thread.start()
        self.addCleanup(thread.join)
        self.addCleanup(self.fetch.release.set)
        while self.watch._busySince is None:
            thread.join(0.01)
        self.assertIsNotNone(self.watch.state().new)
        self.clock.advance(2.0 + live.GRACE + 0.5)
        state = self.watch.state()
        self.assertEqual((state.new, state.error), (None, "no answer for 4 s"))

    def test_sortKeys(self) -> None:
        self.assertEqual(live.next_sort("throughput", "e"), "errors")
        self.assertEqual(live.next_sort("throughput", "L"), "latency")
        self.assertEqual(live.next_sort("latency", "s"), "name")
        self.assertEqual(live.next_sort("name", "s"), "throughput")
        self.assertEqual(live.next_sort("name", "x\x1b[A"), "name")


def snapshot() -> view.Snapshot:
    """
    Three hosts: a busy one with two workers, a quiet one whose journal
    fails, one down.
    """
    busy = Figures(
        rate=12345.6,
        outcomes={"ok": 12340.6, "empty_message": 5.0},
        errors=5.0,
        p50=0.00041,
        p99=0.0021,
        connections=100.0,
        busy=1.0,
        queue=0.0,
        commit_p99=0.0012,
        batch=45.06,
        journal=JournalState(None, 0, 2),
        restarts=0.0,
        uptime=3723.0,
        latency={0.001: 100.0, math.inf: 100.0},
    )
    quiet = Figures(
        rate=2.0,
        outcomes={"ok": 0.0, "journal_unavailable": 2.0},
        errors=2.0,
        connections=1.0,
        busy=0.0,
        queue=0.0,
        journal=JournalState(SERVED - 12, 1, 1, 12.0),
        restarts=0.0,
        uptime=90000.0,
    )
    workers = {
        "4242": Figures(
            rate=8000.0, connections=60.0, journal=JournalState(None, 0, 1), uptime=3700.0
        ),
        "4243": Figures(
            rate=4345.6, connections=40.0, journal=JournalState(None, 0, 1), uptime=3701.0
        ),
    }
    hosts = [
        view.HostView("http://quiet:9100/metrics", "quiet:9100", quiet),
        view.HostView(
            "http://down:9100/metrics",
            "down:9100",
            None,
            error="connection refused",
            down_since=SERVED - 5,
        ),
        view.HostView("http://busy:9100/metrics", "busy:9100", busy, workers),
    ]
    return view.Snapshot(SERVED, 1.0, hosts, figures.total([busy, quiet]))


class ViewTests(SynchronousTestCase):
    """
    The tables, as C{--once} prints them, and the JSON.
    """

    def test_text(self) -> None:
        self.assertEqual(
            view.as_text(snapshot(), "throughput").splitlines(),
            [
                "primecount top  00:00:00 UTC  3 hosts, 2 up  every 1s  by throughput",
                "",
                "HOST         REQ/S  ERR/S     P50     P99  CONN  BUSY  QUEUE",
                "busy:9100   12,346    5.0  0.41ms  2.10ms   100     1      0",
                "  pid 4242   8,000                           60",
                "  pid 4243   4,346                           40",
                "quiet:9100     2.0    2.0       -       -     1     0      0",
                "down:9100     down",
                "TOTAL       12,348    7.0  0.50ms  0.99ms   101     1      0",
                "",
                "HOST        JOURNAL                COMMIT P99  BATCH  RESTARTS  UPTIME",
                "busy:9100   writing                    1.20ms   45.1         0   1h02m",
                "  pid 4242  writing                                              1h01m",
                "  pid 4243  writing                                              1h01m",
                "quiet:9100  unavailable 12s                 -      -         0   1d01h",
                "down:9100   down",
                "TOTAL       unavailable 12s (1/3)           -      -         0",
                "",
                "busy:9100 errors: empty_message 5.0/s",
                "quiet:9100 journal unavailable since 23:59:48 (12s)",
                "quiet:9100 errors: journal_unavailable 2.0/s",
                "down:9100 down since 23:59:55: connection refused",
                "TOTAL errors: empty_message 5.0/s, journal_unavailable 2.0/s",
            ],
        )

    def test_oneWorkersJournalFailing(self) -> None:
        """
        When one worker's journal fails, the host's does, and the line
        below the tables says since when and how many.
        """
        busy = snapshot().hosts[2]
        assert busy.figures is not None
        failing = dataclasses.replace(busy.figures, journal=JournalState(SERVED - 5, 1, 2, 5.0))
        shown = view.Snapshot(SERVED, 1.0, [dataclasses.replace(busy, figures=failing)], failing)
        lines = view.as_text(shown, "name").splitlines()
        self.assertIn(
            "busy:9100   unavailable 5s (1/2)      1.20ms   45.1         0   1h02m", lines
        )
        self.assertIn("busy:9100 journal unavailable since 23:59:55 (5s, 1 of 2 journals)", lines)

    def test_notScrapedYet(self) -> None:
        """
        A host whose first scrape has not come back yet is waiting, not
        down.
        """
        shown = view.build([view.HostState("http://h:1/metrics", "h:1")], SERVED, 1.0)
        lines = view.as_text(shown, "name").splitlines()
        self.assertEqual(
            lines[2:],
            [
                "HOST    REQ/S  ERR/S  P50  P99  CONN  BUSY  QUEUE",
                "h:1   waiting",
                "",
                "HOST  JOURNAL  COMMIT P99  BATCH  RESTARTS  UPTIME",
                "h:1   waiting",
            ],
        )
        self.assertEqual(view.as_json(shown)["hosts"][0]["error"], None)

    def test_fitsEightyColumns(self) -> None:
        for sort in view.SORTS:
            for line in view.as_text(snapshot(), sort).splitlines():
                self.assertLessEqual(len(line), 80, line)

    def test_sorts(self) -> None:
        def hosts(sort: str) -> list[str]:
            return [h.name for h in view.ordered(snapshot().hosts, sort)]

        self.assertEqual(hosts("throughput"), ["busy:9100", "quiet:9100", "down:9100"])
        self.assertEqual(hosts("errors"), ["busy:9100", "quiet:9100", "down:9100"])
        # The quiet host has no latency (no request in the interval).
        self.assertEqual(hosts("latency"), ["busy:9100", "quiet:9100", "down:9100"])
        self.assertEqual(hosts("name"), ["busy:9100", "quiet:9100", "down:9100"])
        quiet, down, busy = snapshot().hosts
        assert quiet.figures is not None and busy.figures is not None
        failing = dataclasses.replace(quiet.figures, errors=9.0, p99=0.5)
        renamed = [
            dataclasses.replace(quiet, name="a-quiet", figures=failing),
            dataclasses.replace(down, name="0-down"),
            busy,
        ]
        self.assertEqual(
            [h.name for h in view.ordered(renamed, "errors")], ["a-quiet", "busy:9100", "0-down"]
        )
        self.assertEqual(
            [h.name for h in view.ordered(renamed, "latency")], ["a-quiet", "busy:9100", "0-down"]
        )
        self.assertEqual(
            [h.name for h in view.ordered(renamed, "name")], ["a-quiet", "busy:9100", "0-down"]
        )
        self.assertEqual(
            [h.name for h in view.ordered(renamed, "throughput")],
            ["busy:9100", "a-quiet", "0-down"],
        )

    def test_json(self) -> None:
        found = json.loads(json.dumps(view.as_json(snapshot())))
        self.assertEqual(found["time"], "2026-12-01T00:00:00Z")
        busy, quiet, down = found["hosts"][2], found["hosts"][0], found["hosts"][1]
        self.assertEqual(
            down,
            {
                "url": "http://down:9100/metrics",
                "name": "down:9100",
                "up": False,
                "error": "connection refused",
                "down_since": SERVED - 5,
            },
        )
        self.assertEqual(busy["requests_per_second"], 12345.6)
        self.assertEqual(busy["latency_p99_seconds"], 0.0021)
        self.assertEqual([w["pid"] for w in busy["workers"]], [4242, 4243])
        self.assertEqual(quiet["journal"]["unavailable_since"], SERVED - 12)
        self.assertIsNone(quiet["latency_p50_seconds"])
        self.assertEqual(found["total"]["requests_per_second"], 12347.6)

    def test_numbers(self) -> None:
        self.assertEqual(
            [view.rate_text(v) for v in (None, 0, 0.04, 99.94, 100, 1e6)],
            ["-", "0", "0.0", "99.9", "100", "1,000,000"],
        )
        self.assertEqual(
            [view.seconds_text(v) for v in (0.00005, 0.0123, 0.5, 2)],
            ["0.05ms", "12.3ms", "500.0ms", "2.00s"],
        )
        self.assertEqual(
            [view.age_text(v) for v in (None, 59.9, 61, 3600, 86400 * 3 + 7200)],
            ["-", "59s", "1m01s", "1h00m", "3d02h"],
        )


class CommandTests(SynchronousTestCase):
    """
    C{primecount top} as called: options, one-line errors, exit status.
    """

    def run_top(self, *argv: str) -> tuple[int, str, str]:
        parser = argparse.ArgumentParser(prog="primecount top")
        topcli.add_arguments(parser)
        out, err = io.StringIO(), io.StringIO()
        self.patch(sys, "stdout", out)
        self.patch(sys, "stderr", err)
        return topcli.run(parser.parse_args(list(argv))), out.getvalue(), err.getvalue()

    def test_badURL(self) -> None:
        status, out, err = self.run_top("--once", "ftp://x:1")
        self.assertEqual((status, out), (2, ""))
        self.assertEqual(err.count("\n"), 1)
        self.assertTrue(err.startswith("primecount top: not a metrics URL: 'ftp://x:1'"), err)

    def test_file(self) -> None:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("# the two hosts\nhost1:9100\n\n  host2  # the other one\nhost1:9100\n")
        args = argparse.Namespace(urls=["9100"], file=[path])
        self.assertEqual(
            topcli.read_urls(args),
            [
                "http://127.0.0.1:9100/metrics",
                "http://host1:9100/metrics",
                "http://host2:9100/metrics",
            ],
        )
        status, _, err = self.run_top("--once", "--file", path + ".absent")
        self.assertEqual(
            (status, err),
            (2, f"primecount top: cannot read {path}.absent: No such file or directory\n"),
        )

    def test_defaultURL(self) -> None:
        self.assertEqual(
            topcli.read_urls(argparse.Namespace(urls=[], file=[])), [scrape.DEFAULT_URL]
        )

    def test_liveViewNeedsATerminal(self) -> None:
        status, out, err = self.run_top("9")
        self.assertEqual((status, out), (2, ""))
        self.assertEqual(
            err, "primecount top: the live view needs a terminal: use --once or --json\n"
        )

    def test_onceWithEveryHostDown(self) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        status, out, err = self.run_top("--once", "--interval", "0.1", str(port))
        self.assertEqual((status, err), (3, ""))
        self.assertIn(f"127.0.0.1:{port} down since ", out)
        self.assertTrue(out.rstrip().endswith(": connection refused"), out)
