# -*- test-case-name: tests.unit.test_bench -*-
"""
The load generator's idle connections (C{--idle N}): opened before the run
in batches, kept open, reopened when the server closes one, closed at the
end; counted in the result's C{idle} figures.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from primecount.cli.bench.connections import _Idle
from primecount.cli.bench.plan import IDLE_BATCH

if TYPE_CHECKING:
    from primecount.cli.bench.generator import LoadGenerator


class IdleConnections:
    """
    The idle connections of one L{LoadGenerator}.

    @ivar idlers: the connections opened, open or not.
    """

    def __init__(self, generator: LoadGenerator) -> None:
        self.generator = generator
        self.idlers: list[_Idle] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    def _connect(self) -> Any:
        plan = self.generator.plan
        assert self._loop is not None
        return asyncio.wait_for(
            self._loop.create_connection(lambda: _Idle(self), plan.host, plan.port),
            plan.timeout,
        )

    async def open(self) -> None:
        """
        Open the plan's idle connections, C{IDLE_BATCH} at a time; one that
        fails is counted as failed.
        """
        self._loop = asyncio.get_running_loop()
        wanted = self.generator.plan.idle
        for first in range(0, wanted, IDLE_BATCH):
            count = min(IDLE_BATCH, wanted - first)
            results = await asyncio.gather(
                *(self._connect() for _ in range(count)), return_exceptions=True
            )
            for outcome in results:
                if isinstance(outcome, BaseException):
                    self.generator.recorder.result.idle["failed"] += 1
                else:
                    self.idlers.append(outcome[1])

    def idle_lost(self, idler: _Idle) -> None:
        """
        The server closed an idle connection: open another in its place.
        """
        if self._loop is None or self.generator.finished:
            return
        self.idlers.remove(idler)
        self.generator.recorder.result.idle["reopened"] += 1

        async def reopen() -> None:
            try:
                _transport, new = await self._connect()
            except (TimeoutError, OSError):
                self.generator.recorder.result.idle["failed"] += 1
                return
            self.idlers.append(new)

        self._loop.create_task(reopen())

    def count_open(self) -> int:
        """
        How many idle connections are open now.
        """
        return sum(1 for idler in self.idlers if idler.open)

    def close(self) -> None:
        """
        Close them all, without reopening any.
        """
        for idler in self.idlers:
            idler.owner = _NO_OWNER
            if idler.transport is not None:
                idler.transport.close()


class _NoOwner:
    """
    Stands in for the idle connections' owner once the run is over, so late
    callbacks from closing idle connections do nothing.
    """

    def idle_lost(self, idler: _Idle) -> None:
        pass


_NO_OWNER: Any = _NoOwner()
