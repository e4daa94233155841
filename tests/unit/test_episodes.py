# -*- test-case-name: tests.unit.test_episodes -*-
"""
Client misbehaviour is logged once per episode, with counts.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock
from twisted.logger import Logger, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from primecount.metrics.episodes import Episodes
from tests.doubles import Harness


def capture(test: SynchronousTestCase) -> list[dict[str, Any]]:
    """
    Every log event emitted while C{test} runs.
    """
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    test.addCleanup(globalLogPublisher.removeObserver, events.append)
    return events


class EpisodesTests(SynchronousTestCase):
    """
    L{Episodes}: the first event in full, then a count per interval.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.log = Logger(namespace="test.episodes")
        self.lines = capture(self)
        self.episodes = Episodes(self.log, self.clock, interval=60)

    def said(self) -> list[str]:
        from twisted.logger import formatEvent

        return [formatEvent(e) for e in self.lines if e.get("log_namespace") == "test.episodes"]

    def test_firstLoggedThenCountedPerIntervalThenEndedWhenQuiet(self) -> None:
        for n in range(1000):
            self.episodes.event("lines too long", "client {n} sent a long line", n=n)
            self.clock.advance(0.1)  # 100 s in all
        self.assertEqual(
            self.said(),
            ["client 0 sent a long line", "lines too long: 599 more in the last 60 s"],
        )
        # Ten quiet seconds end it, with the count since the last line.
        for _ in range(20):
            self.clock.advance(1)
        self.assertEqual(self.said()[2:], ["lines too long: 400 more in the last 50 s"])
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.episodes.event("lines too long", "client {n} sent a long line", n=7)
        self.assertEqual(self.said()[3:], ["client 7 sent a long line"])

    def test_gapsShorterThanQuietAreOneEpisode(self) -> None:
        """
        Events that stop and start again within C{quiet} seconds (clients
        refused, let in, refused again) are one episode: one line to start
        it, one to end it.
        """
        for t in range(200):
            if t % 9 == 0 and t <= 180:
                self.episodes.event("refused", "refused at {t}", t=t)
            self.clock.advance(1)
        self.assertEqual(
            self.said(),
            [
                "refused at 0",
                "refused: 6 more in the last 60 s",
                "refused: 7 more in the last 60 s",
                "refused: 6 more in the last 60 s",
                "refused: 1 more in the last 10 s",
            ],
        )

    def test_endedLineOfTheKindsOwn(self) -> None:
        for _ in range(5):
            self.episodes.event(
                "refused",
                "refusing {what}",
                ended="{what}: {total} refused in {seconds:.0f} s ({more} since the last line)",
                what="connections",
            )
            self.clock.advance(2)
        self.clock.advance(10)
        self.assertEqual(
            self.said(),
            ["refusing connections", "connections: 5 refused in 8 s (4 since the last line)"],
        )

    def test_endWithoutMoreSaysNothing(self) -> None:
        self.episodes.event("a", "first a")
        self.clock.advance(10)
        self.assertEqual(self.said(), ["first a"])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_kindsAreSeparateEpisodes(self) -> None:
        self.episodes.event("a", "first a")
        self.episodes.event("b", "first b")
        self.episodes.event("a", "second a")
        self.assertEqual(self.said(), ["first a", "first b"])

    def test_flushLogsCountsAndCancelsTimers(self) -> None:
        self.episodes.event("a", "first a")
        self.episodes.event("a", "second a")
        self.episodes.flush()
        self.assertEqual(self.said(), ["first a", "a: 1 more in the last 0 s"])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_withoutClockLinesComeWithTheNextEvent(self) -> None:
        now = [0.0]
        episodes = Episodes(self.log, None, interval=60)
        episodes._now = lambda: now[0]  # type: ignore[method-assign]
        for _ in range(3):
            episodes.event("a", "an a")
        now[0] = 61
        episodes.event("a", "an a")
        self.assertEqual(self.said(), ["an a", "a: 2 more in the last 61 s", "an a"])


def misbehaviour_lines(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """
    The log events of L{primecount.server.connections.Connections}.
    """
    return [e for e in events if e.get("log_namespace", "").endswith("Connections")]


class ProtocolTests(SynchronousTestCase):
    """
    The count protocol logs client misbehaviour through the episodes.
    """

    def test_manyLinesTooLongAreAHandfulOfLines(self) -> None:
        events = capture(self)
        h = Harness(maxLine=8, timeout=0)
        for _ in range(3000):
            transport, protocol = h.connect()
            h.send(b"x" * 20 + b"\n", protocol)
            self.assertEqual(h.replies(transport), [b"ERR line too long\n"])
            h.reactor.advance(0.01)
        self.assertEqual(len(misbehaviour_lines(events)), 1, misbehaviour_lines(events))
        h.reactor.advance(10)
        said = misbehaviour_lines(events)
        self.assertEqual(len(said), 2)
        self.assertIn("2999 more", said[1]["log_format"].format(**said[1]))

    def test_idleTimeoutsAndBadProxyHeadersAreCounted(self) -> None:
        events = capture(self)
        h = Harness(timeout=5)
        for _ in range(50):
            h.connect()
        h.reactor.advance(5)
        proxied = Harness(proxyHeader=True)
        for _ in range(50):
            _, protocol = proxied.connect()
            proxied.send(b"GET / HTTP/1.0\r\n", protocol)
        self.assertEqual(len(misbehaviour_lines(events)), 2)
