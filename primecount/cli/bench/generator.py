# -*- test-case-name: tests.unit.test_bench,tests.system.test_bench_runs -*-
"""
The load generator's engine: one event loop driving many count-protocol
clients (L{LoadGenerator}); L{primecount.cli.bench.load} runs several in
separate generator processes.

Each generator process runs one asyncio event loop (uvloop when it is
installed) with plain C{asyncio.Protocol} objects: no streams, no task per
request, so a reply costs a buffer split, one comparison with the
precomputed expected reply and one list append. Several requests go out
in one C{write} when the pipeline allows it.

A I{client} is one logical user: with persistent connections it keeps one
connection open and up to C{pipeline} requests in flight on it; with
C{per_request} it opens a connection for each request, sends one line,
reads the reply and closes (the original server's mode; the latency then
includes the connect). With C{framing="read"} (always one connection per
request) the message goes without its newline and the reply is what
arrives until the server closes, as the original server's clients did it
(C{twistd primecount --framing read}); the latency then runs to the close.

I{Closed loop} (the default): a client sends its next request as soon as a
reply frees a pipeline slot. I{Open loop} (C{rate}): requests are due at
fixed intervals whatever the server does; a request that finds every client
busy waits in a backlog, and its latency is measured from the moment it was
due, not from when it could be sent, so a stalled server shows up as
latency instead of silently lowering the offered load (coordinated
omission).

Every reply is compared with L{primecount.core.count.expected_reply} for its
message. A failed request is an error of one kind: C{connect} (refused or
unreachable), C{reset} (the connection broke or was closed before the
reply) or C{timeout} (no reply within C{timeout} seconds of sending).

What one generator process can drive is measured in
L{primecount.cli.bench.load}.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable

from primecount.cli.bench.connections import Client, Connection
from primecount.cli.bench.exchanges import Exchanges
from primecount.cli.bench.held import HeldConnections
from primecount.cli.bench.plan import (
    CONNECT_CHUNK,
    RETRY_DELAY,
    SWEEP_INTERVAL,
    Plan,
    loop_factory,
)
from primecount.cli.bench.stats import Result, Tally
from primecount.core.fdlimit import raise_open_files_limit


class LoadGenerator:
    """
    Runs one L{Plan} on the current event loop and records what happens;
    the L{primecount.cli.bench.connections.ReplySink} its connections hand
    their replies to.
    """

    def __init__(
        self,
        plan: Plan,
        gate: Callable[[], float | None] | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> None:
        """
        @param plan: what to do.
        @param gate: called once every connection is ready; blocks until the
            run may start and returns the start time on the
            C{time.monotonic} clock (C{None}: now).
        @param progress: called about four times a second with the requests
            resolved so far and how many of them failed.
        """
        self.plan = plan
        self.gate = gate
        self.progress = progress
        self.work = Exchanges.of(plan)
        self.range = self.work.range
        self.lines = self.work.lines
        self.expected = self.work.expected
        self.max_primes = self.work.max_primes
        self.connection = self.work.connection
        self.capacity = 1 if plan.per_request or self.range else plan.pipeline
        self.clients = [Client(self) for _ in range(plan.clients)]
        self.tally = Tally(time.monotonic())
        self.outstanding = 0
        self.tickets = plan.requests
        self.stopping = False
        self.backlog: deque[float] = deque()
        self.held = HeldConnections(
            plan.host, plan.port, plan.hold, plan.timeout, lambda: self.finished
        )
        self._counter = 0
        self._timers: list[asyncio.TimerHandle] = []
        self.interrupted = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._done: asyncio.Future[None] | None = None
        self._next_due = 0.0
        self._cursor = 0
        self._prefix = b""

    # -- the run ---------------------------------------------------------

    async def run(self) -> Result:
        """
        Open the connections, wait for the gate, run the plan, and return
        this process's result.
        """
        loop = self._loop = asyncio.get_running_loop()
        self._done = loop.create_future()
        if self.interrupted:
            self._done.set_result(None)
        raise_open_files_limit(self.plan.clients + self.plan.hold + 64)
        await self.held.open()
        if not self.plan.per_request:
            await self._connect_all()
        start = self.gate() if self.gate is not None else None
        now = time.monotonic()
        if start is None:
            start = now
        elif start > now:
            await asyncio.sleep(start - now)
        self.tally = Tally(start)
        self._every(1.0, self._tick, start)
        self._every(SWEEP_INTERVAL, self._sweep, start)
        if self.plan.duration is not None:
            self._at(start + self.plan.duration, self._stop)
        if not self.plan.per_request:
            # Connections that failed before the start get another chance.
            for client in self.clients:
                if client.conn is None:
                    self._connect(client)
        if self.plan.rate is not None:
            self._next_due = start
            self._pump()
        else:
            for client in self.clients:
                self._feed(client)
        self._check_done()
        await self._done
        finished = max(time.monotonic(), start)
        for timer in self._timers:
            timer.cancel()
        self._close_all()
        self.tally.flush()
        result = self.tally.result
        result.elapsed = finished - start
        result.held = {"open": self.held.count_open(), **self.held.counts}
        self._report()
        await asyncio.sleep(0)
        return result

    def _at(self, when: float, f: Callable[[], None]) -> None:
        assert self._loop is not None
        delay = max(0.0, when - time.monotonic())
        self._timers.append(self._loop.call_later(delay, f))

    def _every(self, interval: float, f: Callable[[], None], start: float) -> None:
        def again(n: int) -> None:
            f()
            if self._done is not None and not self._done.done():
                self._at(start + (n + 1) * interval, lambda: again(n + 1))

        self._at(start + interval, lambda: again(1))

    def _tick(self) -> None:
        self.tally.flush()

    def _report(self) -> None:
        if self.progress is not None:
            self.progress(self.tally.resolved, self.tally.result.error_count)

    def _sweep(self) -> None:
        now = time.monotonic()
        limit = self.plan.timeout
        for client in self.clients:
            if client.inflight and now - client.inflight[0][2] > limit:
                self._fail(client, "timeout")
        duration = self.plan.duration
        # Past the end and past every reply's time limit: give up on
        # whatever is left rather than wait for a stalled server.
        if (
            self.stopping
            and duration is not None
            and now > self.tally.start + duration + limit + 1.0
        ):
            self.tally.error("timeout", len(self.backlog))
            self.backlog.clear()
            for client in self.clients:
                if client.inflight or client.connecting:
                    self._fail(client, "timeout")
            if self._done is not None and not self._done.done():
                self._done.set_result(None)
        self._report()

    @property
    def finished(self) -> bool:
        """
        Whether the run is over (or not started).
        """
        return self._done is None or self._done.done()

    def _stop(self) -> None:
        self.stopping = True
        self._check_done()

    def interrupt(self) -> None:
        """
        Ctrl-C: end the run now, without waiting for the replies still
        due; the result covers what was resolved so far. Call it in the
        loop's thread.
        """
        self.interrupted = True
        self.stopping = True
        if self._done is not None and not self._done.done():
            self._done.set_result(None)

    def _has_work(self) -> bool:
        if self.backlog:
            return True
        if self.stopping:
            return False
        return self.tickets is None or self.tickets > 0

    def _check_done(self) -> None:
        done = self._done
        if done is None or done.done() or self.outstanding or self._has_work():
            return
        done.set_result(None)

    def _close_all(self) -> None:
        for client in self.clients:
            if client.task is not None:
                client.task.cancel()
            self._release(client)
        self.held.close()

    # -- requests ------------------------------------------------------

    def _take(self, now: float) -> float | None:
        """
        The due time of the next request to send, or C{None} if none is due.
        """
        if self.plan.rate is not None:
            return self.backlog.popleft() if self.backlog else None
        if self.stopping:
            return None
        if self.tickets is not None:
            if self.tickets <= 0:
                return None
            self.tickets -= 1
        return now

    def _pump(self) -> None:
        """
        Open loop: queue every request due by now and hand them out.
        """
        assert self.plan.rate is not None
        now = time.monotonic()
        interval = 1.0 / self.plan.rate
        backlog = self.backlog
        while self._next_due <= now and not self.stopping:
            if self.tickets is not None:
                if self.tickets <= 0:
                    break
                self.tickets -= 1
            backlog.append(self._next_due)
            self._next_due += interval
        clients = self.clients
        misses = 0
        while backlog and misses < len(clients):
            client = clients[self._cursor]
            self._cursor = (self._cursor + 1) % len(clients)
            before = len(backlog)
            self._feed(client)
            misses = 0 if len(backlog) < before else misses + 1
        if not self.stopping and (self.tickets is None or self.tickets > 0):
            self._at(max(self._next_due, now + 0.001), self._pump)
        self._check_done()

    def _feed(self, client: Client) -> None:
        """
        Give C{client} as many requests as it has room for.
        """
        now = time.monotonic()
        if self.plan.per_request:
            if client.conn is None and not client.connecting and not client.inflight:
                due = self._take(now)
                if due is not None:
                    index = self._counter % len(self.lines)
                    self._counter += 1
                    client.inflight.append((index, due, now))
                    self.outstanding += 1
                    self._connect(client)
            return
        conn = client.conn
        if conn is None or conn.transport is None:
            return
        room = self.capacity - len(client.inflight)
        if room <= 0:
            return
        lines = self.lines
        parts = []
        while room:
            due = self._take(now)
            if due is None:
                break
            index = self._counter % len(lines)
            self._counter += 1
            client.inflight.append((index, due, now))
            parts.append(lines[index])
            room -= 1
        if parts:
            self.outstanding += len(parts)
            if self._prefix:
                parts.insert(0, self._prefix)
                self._prefix = b""
            conn.transport.write(parts[0] if len(parts) == 1 else b"".join(parts))

    def replies(self, client: Client, lines: list[bytes]) -> None:
        """
        Check and record reply lines that arrived for C{client}.
        """
        now = time.monotonic()
        inflight = client.inflight
        expected = self.expected
        record = self.tally.reply
        sums = []
        for line in lines:
            if not inflight:
                # A line nobody asked for: the server is wrong.
                self.tally.unsolicited(line)
                continue
            index, due, _sent = inflight.popleft()
            self.outstanding -= 1
            correct = line == expected[index]
            record(now - due, correct)
            if not correct:
                self.tally.sample(line)
            if self.range:
                sums.append(self.work.range_sum(index, line, correct))
        if sums:
            # The sums and the next request leave in one segment: two small
            # writes would meet Nagle's algorithm and delayed ACKs.
            self._prefix = b"".join(sums)
        if self.plan.per_request and not inflight:
            self._flush_prefix(client)
            self._release(client)
        self._feed(client)
        if self._prefix:
            self._flush_prefix(client)
        self._check_done()

    def _flush_prefix(self, client: Client) -> None:
        prefix, self._prefix = self._prefix, b""
        conn = client.conn
        if prefix and conn is not None and conn.transport is not None:
            conn.transport.write(prefix)

    def overlong(self, client: Client) -> None:
        """
        The server sent an endless line: count it wrong and hang up.
        """
        if client.inflight:
            _index, due, _sent = client.inflight.popleft()
            self.outstanding -= 1
            self.tally.reply(time.monotonic() - due, False)
            if client.conn is not None:
                self.tally.sample(bytes(client.conn.buffer))
        self._fail(client, "reset")

    def lost(self, client: Client, conn: Connection) -> None:
        """
        C{client}'s connection closed without us asking.
        """
        if client.conn is not conn:
            return
        client.conn = None
        conn.client = None
        if conn.buffer and client.inflight:
            # A reply without its LF: the line is malformed.
            _index, due, _sent = client.inflight.popleft()
            self.outstanding -= 1
            self.tally.reply(time.monotonic() - due, False)
            self.tally.sample(bytes(conn.buffer))
        self._drop_inflight(client, "reset")
        self._resume(client)

    def _fail(self, client: Client, kind: str) -> None:
        """
        Give up on C{client}'s connection: its requests fail as C{kind}.
        """
        if client.task is not None:
            client.task.cancel()
            client.task = None
        client.connecting = False
        conn = client.detach()
        if conn is not None and conn.transport is not None:
            conn.transport.abort()
        self._drop_inflight(client, kind)
        self._resume(client)

    def _drop_inflight(self, client: Client, kind: str) -> None:
        n = len(client.inflight)
        if n:
            client.inflight.clear()
            self.outstanding -= n
            self.tally.error(kind, n)
        self._check_done()

    def _resume(self, client: Client) -> None:
        """
        Get C{client} going again after its connection ended.
        """
        if self._done is None or self._done.done() or not self._has_work():
            return
        assert self._loop is not None
        if self.plan.per_request:
            self._feed(client)
        else:
            self._timers.append(self._loop.call_later(RETRY_DELAY, self._connect, client))

    def _release(self, client: Client) -> None:
        """
        Close C{client}'s connection ourselves.
        """
        conn = client.detach()
        if conn is not None and conn.transport is not None:
            conn.transport.close()

    # -- connections ---------------------------------------------------

    def _connect(self, client: Client) -> None:
        if client.conn is not None or client.connecting:
            return
        if self._done is not None and self._done.done():
            return
        assert self._loop is not None
        client.connecting = True
        client.task = self._loop.create_task(self._open(client))

    async def _open(self, client: Client) -> None:
        assert self._loop is not None
        try:
            transport, conn = await self._loop.create_connection(
                lambda: self.connection(client), self.plan.host, self.plan.port
            )
        except OSError:
            client.task = None
            client.connecting = False
            self._connect_failed(client)
            return
        client.task = None
        client.connecting = False
        if self._done is not None and self._done.done():
            transport.close()
            return
        client.conn = conn
        if self.plan.per_request:
            if client.inflight:
                transport.write(self.lines[client.inflight[0][0]])  # type: ignore[attr-defined]
            else:
                self._release(client)
        else:
            self._feed(client)

    def _connect_failed(self, client: Client) -> None:
        if self.plan.per_request:
            self._drop_inflight(client, "connect")
        else:
            # The request this connection would have carried is lost.
            if self._take(time.monotonic()) is not None:
                self.tally.error("connect")
            self._check_done()
        if self._done is None or self._done.done() or not self._has_work():
            return
        assert self._loop is not None
        if self.plan.per_request:
            self._timers.append(self._loop.call_later(RETRY_DELAY, self._feed, client))
        else:
            self._timers.append(self._loop.call_later(RETRY_DELAY, self._connect, client))

    async def _connect_all(self) -> None:
        """
        Open every persistent connection before the start; a failure is
        retried during the run.
        """
        assert self._loop is not None
        loop = self._loop
        for first in range(0, len(self.clients), CONNECT_CHUNK):
            chunk = self.clients[first : first + CONNECT_CHUNK]
            results = await asyncio.gather(
                *(
                    asyncio.wait_for(
                        loop.create_connection(
                            lambda c=c: self.connection(c),  # type: ignore[misc]
                            self.plan.host,
                            self.plan.port,
                        ),
                        self.plan.timeout,
                    )
                    for c in chunk
                ),
                return_exceptions=True,
            )
            for client, outcome in zip(chunk, results, strict=True):
                if isinstance(outcome, BaseException):
                    continue
                client.conn = outcome[1]


def run_generator(
    plan: Plan,
    gate: Callable[[], float | None] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Result:
    """
    Run C{plan} on a fresh event loop in the calling thread.
    """
    factory, _name = loop_factory(plan.loop)
    generator = LoadGenerator(plan, gate, progress)
    with asyncio.Runner(loop_factory=factory) as runner:
        running.append((generator, runner.get_loop()))
        try:
            return runner.run(generator.run())
        finally:
            running.remove((generator, runner.get_loop()))


#: The load generators running in this process, with their loops (see
#: L{primecount.cli.bench.load.interrupt}).
running: list[tuple[LoadGenerator, asyncio.AbstractEventLoop]] = []
