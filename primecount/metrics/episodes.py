# -*- test-case-name: tests.unit.test_episodes,tests.system.test_episodes_process -*-
"""
Log what clients do wrong once per episode, with counts, not once per event.

A client sending too-long lines, idling out, speaking HTTP to the PROXY
port or knocking at a full server is worth one line in the log; ten
thousand of them a second are worth a count. L{Episodes} logs the first
event of each kind in full, then only counts. An episode lasts as long as
its events keep coming: it ends once none came for C{quiet} seconds (never
at the next success: a client refused at a limit and let in a moment later
is the same episode), and its end is one line with the count ("N more in
the last T s", or a line of the kind's own, such as "accepting connections
again"). An episode that goes on logs the count once per C{interval}.

So each kind adds at most three lines per episode, episodes of one kind
are at least C{quiet} seconds apart, and a long one adds one line per
C{interval}: whatever clients do, the log grows by a few lines a minute.
Events cost a dictionary look-up and two additions; the one timer of an
episode is moved only when it fires.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from twisted.logger import Logger, LogLevel

#: Seconds between two count lines of an episode that goes on.
INTERVAL = 60.0

#: Seconds without an event that end an episode.
QUIET = 10.0


@dataclass
class _Episode:
    started: float  # the first event
    last: float  # the latest event
    since: float  # the start of the period the next count line covers
    ended: str | None  # the format of the line that ends it, if its own
    fields: dict[str, Any]  # the first event's fields, for that line
    more: int = 0  # events since the last line
    total: int = 1  # events in the episode
    timer: Any = None


class Episodes:
    """
    Rate-limited logging of repeated events, per kind.

    @ivar interval: seconds between two count lines of one episode.
    @ivar quiet: seconds without an event that end an episode.
    """

    def __init__(
        self, log: Logger, clock: Any = None, interval: float = INTERVAL, quiet: float = QUIET
    ) -> None:
        """
        @param log: where the lines go.
        @param clock: an C{IReactorTime}: an episode's count lines and its
            end are logged when due. Without one, they are logged with the
            next event of the kind (or by L{flush}).
        @param interval: seconds between two count lines of one episode.
        @param quiet: seconds without an event that end an episode.
        """
        self._log = log
        self._clock = clock
        self.interval = interval
        self.quiet = quiet
        self._episodes: dict[str, _Episode] = {}

    def _now(self) -> float:
        return self._clock.seconds() if self._clock is not None else time.monotonic()

    def event(
        self,
        kind: str,
        format: str,
        level: LogLevel = LogLevel.info,
        ended: str | None = None,
        **fields: Any,
    ) -> bool:
        """
        One event of C{kind}: logged as C{format} with C{fields} when it
        starts an episode, else only counted.

        @param ended: the format of the line that ends the episode, with
            C{fields} and C{total} (events in the episode), C{more} (events
            since the last line) and C{seconds} (from its first event to its
            last); by
            default "C{kind}: N more in the last T s", and nothing when
            there were none.
        @return: whether it was logged.
        """
        now = self._now()
        episode = self._episodes.get(kind)
        if episode is not None and self._clock is None:
            self._due(kind, now)
            episode = self._episodes.get(kind)
        if episode is not None:
            episode.last = now
            episode.more += 1
            episode.total += 1
            return False
        episode = self._episodes[kind] = _Episode(now, now, now, ended, fields)
        if self._clock is not None:
            episode.timer = self._clock.callLater(self.quiet, self._check, kind)
        self._log.emit(level, format, **fields)
        return True

    def _check(self, kind: str) -> None:
        """
        The timer of C{kind}'s episode: log what is due, then set it again
        for the next thing that can be due.
        """
        episode = self._episodes[kind]
        now = self._now()
        self._due(kind, now)
        if kind in self._episodes:
            at = min(episode.last + self.quiet, episode.since + self.interval)
            episode.timer = self._clock.callLater(max(0.0, at - now), self._check, kind)

    def _due(self, kind: str, now: float) -> None:
        """
        End C{kind}'s episode if it has been quiet long enough, else log its
        count if a whole interval passed since the last.
        """
        episode = self._episodes[kind]
        if now - episode.last >= self.quiet:
            self._end(kind, now)
        elif now - episode.since >= self.interval:
            self._count(kind, episode, now)
            episode.since, episode.more = now, 0

    def _count(self, kind: str, episode: _Episode, now: float) -> None:
        if episode.more:
            self._log.info(
                "{kind}: {n} more in the last {t:.0f} s",
                kind=kind,
                n=episode.more,
                t=now - episode.since,
            )

    def _end(self, kind: str, now: float) -> None:
        episode = self._episodes.pop(kind)
        if episode.timer is not None and episode.timer.active():
            episode.timer.cancel()
        if episode.ended is None:
            self._count(kind, episode, now)
            return
        fields = dict(episode.fields)
        fields.update(
            total=episode.total, more=episode.more, seconds=episode.last - episode.started
        )
        self._log.info(episode.ended, **fields)

    def flush(self) -> None:
        """
        End every episode now, logging their counts (at shutdown).
        """
        now = self._now()
        for kind in list(self._episodes):
            self._end(kind, now)
