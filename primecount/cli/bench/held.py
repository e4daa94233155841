# -*- test-case-name: tests.unit.test_bench,tests.system.test_bench_runs -*-
"""
The load generator's held connections (C{--hold N}): opened before the run,
L{CONNECT_CHUNK} at a time, kept open and silent, reopened when the server
closes one, closed at the end; counted in the result's C{held} figures.

They stand for the users a server keeps connected while few of them ask
anything, the load an event loop is meant to carry cheaply.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from primecount.cli.bench.connections import HeldConnection
from primecount.cli.bench.plan import CONNECT_CHUNK


class HeldConnections:
    """
    The held connections of one generator process.

    @ivar connections: the connections opened, open or not.
    @ivar counts: C{reopened} after the server closed one, C{failed} to
        connect (before the run or when reopening).
    """

    def __init__(
        self,
        host: str,
        port: int,
        wanted: int,
        timeout: float,
        finished: Callable[[], bool],
    ) -> None:
        """
        @param wanted: how many to hold.
        @param timeout: seconds a connection may take to open.
        @param finished: whether the run is over: then a closed connection
            is not reopened.
        """
        self.host = host
        self.port = port
        self.wanted = wanted
        self.timeout = timeout
        self.finished = finished
        self.connections: list[HeldConnection] = []
        self.counts = {"reopened": 0, "failed": 0}
        self._loop: asyncio.AbstractEventLoop | None = None

    def _connect(self) -> Any:
        assert self._loop is not None
        return asyncio.wait_for(
            self._loop.create_connection(lambda: HeldConnection(self), self.host, self.port),
            self.timeout,
        )

    async def open(self) -> None:
        """
        Open them, L{CONNECT_CHUNK} at a time; one that fails is counted as
        failed.
        """
        self._loop = asyncio.get_running_loop()
        for first in range(0, self.wanted, CONNECT_CHUNK):
            count = min(CONNECT_CHUNK, self.wanted - first)
            results = await asyncio.gather(
                *(self._connect() for _ in range(count)), return_exceptions=True
            )
            for outcome in results:
                if isinstance(outcome, BaseException):
                    self.counts["failed"] += 1
                else:
                    self.connections.append(outcome[1])

    def held_lost(self, held: HeldConnection) -> None:
        """
        The server closed a held connection: open another in its place.
        """
        if self._loop is None or self.finished():
            return
        self.connections.remove(held)
        self.counts["reopened"] += 1

        async def reopen() -> None:
            try:
                _transport, new = await self._connect()
            except (TimeoutError, OSError):
                self.counts["failed"] += 1
                return
            self.connections.append(new)

        self._loop.create_task(reopen())

    def count_open(self) -> int:
        """
        How many are open now.
        """
        return sum(1 for held in self.connections if held.open)

    def close(self) -> None:
        """
        Close them all, without reopening any.
        """
        for held in self.connections:
            held.owner = _NO_OWNER
            if held.transport is not None:
                held.transport.close()


class _NoOwner:
    """
    Stands in for the held connections' owner once the run is over, so late
    callbacks from closing connections do nothing.
    """

    def held_lost(self, held: HeldConnection) -> None:
        pass


_NO_OWNER = _NoOwner()
