# -*- test-case-name: tests.unit.test_episodes,tests.system.test_episodes_process -*-
"""
Log what clients do wrong once per episode, with counts, not once per event.

A client sending too-long lines, idling out or speaking HTTP to the PROXY
port is worth one line in the log; ten thousand of them a second are worth a
count. L{Episodes} logs the first occurrence of each kind of event in full,
then counts the next ones and logs one summary line ("N more in the last
T s") at most every C{interval} seconds while they go on; a kind that stays
quiet for a whole interval starts a new episode. However much clients send,
each kind adds at most one line per interval to the log.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from twisted.logger import Logger, LogLevel

#: Seconds between two summary lines of one kind of event.
INTERVAL = 60.0


@dataclass
class _Episode:
    started: float
    more: int = 0
    timer: Any = None


class Episodes:
    """
    Rate-limited logging of repeated events, per kind.

    @ivar interval: seconds between two lines about one kind of event.
    """

    def __init__(self, log: Logger, clock: Any = None, interval: float = INTERVAL) -> None:
        """
        @param log: where the lines go.
        @param clock: an C{IReactorTime}: the summary of an episode is
            logged when its interval ends. Without one, it is logged with the
            first event after the interval (or by L{flush}).
        @param interval: seconds between two lines about one kind of event.
        """
        self._log = log
        self._clock = clock
        self.interval = interval
        self._episodes: dict[str, _Episode] = {}

    def _now(self) -> float:
        return self._clock.seconds() if self._clock is not None else time.monotonic()

    def event(self, kind: str, format: str, level: LogLevel = LogLevel.info, **fields: Any) -> bool:
        """
        One event of C{kind}: logged as C{format} with C{fields} when it
        starts an episode, else only counted.

        @return: whether it was logged.
        """
        now = self._now()
        episode = self._episodes.get(kind)
        if episode is not None and self._clock is None and now - episode.started >= self.interval:
            self._summarise(kind)
            episode = self._episodes.get(kind)
        if episode is not None:
            episode.more += 1
            return False
        episode = self._episodes[kind] = _Episode(now)
        if self._clock is not None:
            episode.timer = self._clock.callLater(self.interval, self._summarise, kind)
        self._log.emit(level, format, **fields)
        return True

    def _summarise(self, kind: str) -> None:
        """
        The interval of C{kind}'s episode ended: log how many more events
        there were, and go on counting; or end the episode if there were none.
        """
        episode = self._episodes[kind]
        if not episode.more:
            del self._episodes[kind]
            return
        now = self._now()
        self._log.info(
            "{kind}: {n} more in the last {t:.0f} s",
            kind=kind,
            n=episode.more,
            # A timer may run late; the interval is what it stands for.
            t=self.interval if self._clock is not None else now - episode.started,
        )
        if self._clock is None:
            del self._episodes[kind]
            return
        episode.started, episode.more = now, 0
        episode.timer = self._clock.callLater(self.interval, self._summarise, kind)

    def flush(self) -> None:
        """
        Log the counts of every episode now and end them all (at shutdown).
        """
        for kind in list(self._episodes):
            episode = self._episodes.pop(kind)
            if episode.timer is not None and episode.timer.active():
                episode.timer.cancel()
            if episode.more:
                self._log.info(
                    "{kind}: {n} more in the last {t:.0f} s",
                    kind=kind,
                    n=episode.more,
                    t=self._now() - episode.started,
                )
