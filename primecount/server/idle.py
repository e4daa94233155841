# -*- test-case-name: tests.unit.test_idle -*-
"""
Idle timeouts as one periodic sweep, not a timer per connection.

C{TimeoutMixin} gives every connection a C{DelayedCall}: created when the
connection opens, moved on every request, cancelled when it closes, each a
heap operation on the reactor's timer queue. With one message per
connection that is three timer operations per request for a timeout that
almost never fires. Here a connection only notes when it was last active
(one attribute store), and one C{LoopingCall} per factory looks over the
open connections a few times per timeout period.

A connection is closed between C{timeout} and C{timeout + interval}
seconds after its last activity, where the interval is a tenth of the
timeout, at most a second.
"""

from __future__ import annotations

from typing import Any, Protocol

from twisted.internet.task import LoopingCall


class Idler(Protocol):
    """
    What the sweep needs of a connection.

    @ivar lastActive: when the connection was last active (the clock's
        seconds), or C{None} while its idle timeout is paused.
    """

    lastActive: float | None

    def idleTimeout(self) -> None:
        """
        The connection has been inactive for the whole timeout.
        """


#: The longest time between two sweeps, in seconds.
MAX_INTERVAL = 1.0


class IdleSweep:
    """
    Closes connections that stayed inactive for C{timeout} seconds.

    @ivar timeout: idle seconds allowed; 0 or C{None} disables the sweep.
    @ivar interval: seconds between sweeps.
    """

    def __init__(self, clock: Any, timeout: float | None) -> None:
        """
        @param clock: provides C{seconds} and C{callLater} (the reactor).
        @param timeout: idle seconds allowed; 0 or C{None}: no timeout.
        """
        self._clock = clock
        self.timeout = timeout or None
        self.interval = min(MAX_INTERVAL, self.timeout / 10) if self.timeout else 0.0
        self._watched: dict[Idler, None] = {}
        self._loop: LoopingCall | None = None

    def watch(self, connection: Idler) -> None:
        """
        Start watching C{connection}, active as of now.
        """
        connection.lastActive = self._clock.seconds()
        if self.timeout is None:
            return
        self._watched[connection] = None
        if self._loop is None:
            self._loop = LoopingCall(self._sweep)
            self._loop.clock = self._clock
            self._loop.start(self.interval, now=False)

    def unwatch(self, connection: Idler) -> None:
        """
        Stop watching C{connection} (it closed); with none left, stop
        sweeping until the next one opens.
        """
        self._watched.pop(connection, None)
        if not self._watched and self._loop is not None:
            self._loop.stop()
            self._loop = None

    def now(self) -> float:
        """
        The clock's time: what connections store in C{lastActive}.
        """
        return self._clock.seconds()  # type: ignore[no-any-return]

    def _sweep(self) -> None:
        timeout = self.timeout
        assert timeout is not None
        now = self._clock.seconds()
        deadline = now - timeout
        expired = [
            c for c in self._watched if c.lastActive is not None and c.lastActive <= deadline
        ]
        for connection in expired:
            # Re-armed: one that is still open a whole timeout later (say,
            # a client that never reads the rest) is told again.
            connection.lastActive = now
            connection.idleTimeout()

    def stop(self) -> None:
        """
        Stop sweeping (the server stops).
        """
        self._watched.clear()
        if self._loop is not None:
            self._loop.stop()
            self._loop = None
