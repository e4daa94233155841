# -*- test-case-name: tests.unit.test_top,tests.system.test_top_process -*-
"""
Watching hosts: a thread per host scrapes it every interval (L{Watch}), so
a slow or dead host never holds up the others or the view; L{rounds} takes
scrapes of every host at once (C{--once}), L{show} draws the view in the
terminal and reads keys until C{q}.
"""

from __future__ import annotations

import contextlib
import os
import select
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TextIO

from primecount.cli.top.scrape import Scrape, ScrapeFailed, fetch
from primecount.cli.top.view import SORTS, HostState, Snapshot, build, render

#: Seconds past its timeout after which a scrape that has not returned (a
#: name lookup, which urllib's timeout does not bound) counts as failed.
GRACE = 1.0


class Watch:
    """
    One host, scraped every C{interval} seconds by a daemon thread of its
    own (L{start}) or when asked (L{once}).

    A failed scrape forgets the earlier ones: when the host answers again,
    its rates start afresh from two new scrapes rather than averaging over
    the time it was down.
    """

    def __init__(
        self,
        url: str,
        name: str,
        interval: float,
        timeout: float,
        fetcher: Callable[[str, float], Scrape] = fetch,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        """
        @param fetcher: takes one scrape (L{fetch}); replaced by tests.
        @param clock: monotonic time, to tell a scrape that hangs.
        @param wall: the time of day, to date a failure.
        """
        self.url = url
        self.name = name
        self.interval = interval
        self.timeout = timeout
        self._fetch = fetcher
        self._clock = clock
        self._wall = wall
        self._lock = threading.Lock()
        self._old: Scrape | None = None
        self._new: Scrape | None = None
        self._error: str | None = None
        self._downSince: float | None = None
        self._busySince: float | None = None
        #: Scrapes taken (or failed) so far: the view redraws when it moves.
        self.generation = 0

    def once(self) -> None:
        """
        Scrape the host now (blocking for up to the timeout) and keep what
        it said.
        """
        with self._lock:
            self._busySince = self._clock()
        try:
            scrape = self._fetch(self.url, self.timeout)
        except ScrapeFailed as e:
            self._failed(str(e))
            return
        with self._lock:
            self._old, self._new = self._new, scrape
            self._error = None
            self._downSince = None
            self._busySince = None
            self.generation += 1

    def _failed(self, why: str) -> None:
        with self._lock:
            self._old = self._new = None
            self._error = why
            if self._downSince is None:
                self._downSince = self._wall()
            self._busySince = None
            self.generation += 1

    def state(self) -> HostState:
        """
        What is known of the host now. A scrape running past its timeout
        (and L{GRACE}) makes the host down, whatever it said before.
        """
        with self._lock:
            busy = self._busySince
            if busy is not None and self._clock() - busy > self.timeout + GRACE:
                return HostState(
                    self.url,
                    self.name,
                    error=f"no answer for {self._clock() - busy:.0f} s",
                    down_since=self._downSince or self._wall(),
                )
            return HostState(
                self.url, self.name, self._old, self._new, self._error, self._downSince
            )

    def start(self, stop: threading.Event) -> threading.Thread:
        """
        Scrape every C{interval} seconds in a daemon thread until C{stop}
        is set (a scrape under way then ends within its timeout; the thread
        dies with the process in any case).
        """

        def run() -> None:
            while not stop.is_set():
                started = self._clock()
                self.once()
                stop.wait(max(0.0, started + self.interval - self._clock()))

        thread = threading.Thread(target=run, name=f"top {self.name}", daemon=True)
        thread.start()
        return thread


def round_of(watches: list[Watch]) -> None:
    """
    Scrape every host at once, in threads, and wait for them all (each for
    at most its timeout and L{GRACE}).
    """
    threads = [threading.Thread(target=w.once, daemon=True) for w in watches]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + max((w.timeout for w in watches), default=0) + GRACE
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))


def snapshot(watches: list[Watch], interval: float) -> Snapshot:
    """
    The snapshot of what the watches know now.
    """
    return build([w.state() for w in watches], time.time(), interval)


def rounds(watches: list[Watch], interval: float) -> Snapshot:
    """
    Two rounds of scrapes C{interval} seconds apart, and their snapshot
    (C{--once}).
    """
    started = time.monotonic()
    round_of(watches)
    time.sleep(max(0.0, started + interval - time.monotonic()))
    round_of(watches)
    return snapshot(watches, interval)


@contextlib.contextmanager
def _keys(stream: TextIO) -> Iterator[int]:
    """
    The terminal of C{stream} in cbreak mode (keys arrive one by one,
    unechoed; Ctrl-C still interrupts) for the duration; its descriptor.
    """
    import termios
    import tty

    fd = stream.fileno()
    saved = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd)
        yield fd
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def _read_key(fd: int, timeout: float) -> str:
    """
    The keys pressed within C{timeout} seconds (C{""} when none).
    """
    ready, _, _ = select.select([fd], [], [], max(0.0, timeout))
    if not ready:
        return ""
    return os.read(fd, 64).decode("utf-8", "replace")


#: The key that stops the view.
QUIT = "q"

_BY_KEY = {key: name for name, (key, _) in SORTS.items()}


def next_sort(sort: str, keys: str) -> str:
    """
    The order after the keys C{keys} were pressed in order C{sort}: each
    sort key picks its order, C{s} moves to the next one.
    """
    names = list(SORTS)
    for key in keys.lower():
        if key in _BY_KEY:
            sort = _BY_KEY[key]
        elif key == "s":
            sort = names[(names.index(sort) + 1) % len(names)]
    return sort


def show(watches: list[Watch], interval: float, sort: str, console: Any, stdin: TextIO) -> None:
    """
    The live view: draw the hosts whenever a scrape lands (and every
    second, for the ages), sort them as keys say, until C{q} (or Ctrl-C).
    The terminal is restored, and the screen given back, on the way out.
    """
    from rich.live import Live

    stop = threading.Event()
    for watch in watches:
        watch.start(stop)
    try:
        with (
            _keys(stdin) as fd,
            Live(console=console, screen=True, auto_refresh=False, transient=True) as view,
        ):
            drawn: tuple[object, ...] = ()
            due = 0.0
            while True:
                now = time.monotonic()
                seen = (sort, *(w.generation for w in watches))
                if seen != drawn or now >= due:
                    view.update(render(snapshot(watches, interval), sort, keys=True), refresh=True)
                    drawn, due = seen, now + 1.0
                pressed = _read_key(fd, min(0.2, due - time.monotonic()))
                if QUIT in pressed.lower():
                    return
                sort = next_sort(sort, pressed)
    finally:
        stop.set()


def stream_json(watches: list[Watch], interval: float, out: TextIO) -> None:
    """
    C{--json} without C{--once}: a round of scrapes every C{interval}
    seconds and, from the second on, one JSON line of what happened since
    the one before, until interrupted. A slow host delays a line by its
    timeout at most.
    """
    import json

    from primecount.cli.top.view import as_json

    tick = time.monotonic()
    round_of(watches)
    while True:
        tick += interval
        time.sleep(max(0.0, tick - time.monotonic()))
        round_of(watches)
        out.write(json.dumps(as_json(snapshot(watches, interval))) + "\n")
        out.flush()


def is_terminal(stream: TextIO) -> bool:
    """
    Whether C{stream} is a terminal (the live view draws on one).
    """
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
