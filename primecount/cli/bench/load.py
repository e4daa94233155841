# -*- test-case-name: tests.unit.test_bench,tests.system.test_bench_runs -*-
"""
Several load generators at once: L{measure} splits a L{Plan} over
generator processes (spawned, each running one
L{primecount.cli.bench.generator.LoadGenerator}), starts them together,
collects and merges their results; L{interrupt} ends a run early.

The generator's own ceiling, measured on this project's 2-CPU machine
(AMD EPYC VM, Python 3.11, uvloop) against the trivial
C{benchmarks/baselines/uvloop_server.py}, the generator pinned to one CPU
and the server to the other, 5 s runs; the cost per request is the
generator's CPU time (user + system) divided by the requests it resolved::

    mode                                   generator CPU/request   ceiling per core
    persistent, 100 clients, pipeline 1    11-15 us                ~75,000 req/s
    persistent, 10 clients, pipeline 32    1.5-1.9 us              ~550,000 req/s
    one connection per request, 10 clients 72-86 us (2/3 kernel)   ~13,000 req/s

One process reached 68,000 req/s (pipeline 1) and 272,000 req/s
(pipeline 32) before the single-threaded server saturated its CPU; two
unpinned processes reached 85,000 req/s. Every Python server in
C{benchmarks/} stays well below these figures except in the
connection-per-request mode, where the generator's headroom over the
servers (3,000-6,000 req/s) is about 2-3x on one core: use
C{--processes 2} on a machine with spare cores. Runs on a shared machine
are noisy (other processes take CPU time): compare medians of several
alternating rounds, as C{python -m benchmarks.compare} does.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.connection
import multiprocessing.resource_tracker
import os
import signal
import time
from collections.abc import Callable
from typing import Any

from primecount.cli.bench.generator import run_generator, running
from primecount.cli.bench.plan import Plan
from primecount.cli.bench.stats import Result

#: The generator processes this process started (see L{interrupt}).
_children: list[Any] = []

#: The pids of those that are ready for a Ctrl-C: they handle SIGINT (one
#: still starting would die of it in its imports, with a traceback).
_ready: set[int] = set()

#: Whether L{interrupt} was called during the current L{measure}: a Ctrl-C
#: that came while the generator processes were still starting is passed
#: on to them once they are ready for it.
_interrupted: list[bool] = []


def interrupt() -> None:
    """
    Ctrl-C: end the runs in progress early, in this process and in its
    generator processes, so that their partial results are returned. Safe
    to call from a signal handler.
    """
    _interrupted.append(True)
    for generator, loop in list(running):
        with contextlib.suppress(RuntimeError):  # the loop is closed
            loop.call_soon_threadsafe(generator.interrupt)
    for child in list(_children):
        if child.pid in _ready and child.is_alive():
            with contextlib.suppress(OSError):
                os.kill(child.pid, signal.SIGINT)


def _process_main(plan: Plan, pipe: multiprocessing.connection.Connection) -> None:
    """
    A generator process: run its share and send the result to the parent.
    """

    def gate() -> float | None:
        pipe.send(("ready",))
        if not pipe.poll(120):
            raise TimeoutError("no start signal from the parent")
        message = pipe.recv()
        return float(message[1])

    def progress(resolved: int, errors: int) -> None:
        pipe.send(("progress", resolved, errors))

    # Ctrl-C (the terminal's, or passed on by the parent): end early and
    # report, as the parent does (see primecount.cli.bench.run).
    signal.signal(signal.SIGINT, lambda signum, frame: interrupt())
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    try:
        result = run_generator(plan, gate, progress)
    except BaseException as e:  # the parent reports it as one line
        pipe.send(("failed", f"{type(e).__name__}: {e}"))
    else:
        pipe.send(("done", result.to_wire()))
    finally:
        pipe.close()


class GeneratorFailed(Exception):
    """
    A generator process failed or stopped answering.
    """


def measure(
    plan: Plan,
    processes: int = 1,
    progress: Callable[[int, int], None] | None = None,
) -> Result:
    """
    Run C{plan} split over C{processes} generator processes (in this
    process when it is 1) and return the merged result.

    @raise GeneratorFailed: when a generator process fails.
    """
    processes = max(1, min(processes, plan.clients))
    if processes == 1:
        return run_generator(plan, progress=progress)
    context = multiprocessing.get_context("spawn")
    pipes = []
    children = []
    _interrupted.clear()
    # A child starts with Ctrl-C blocked (the signal mask survives fork and
    # exec) until _process_main handles it: a terminal's Ctrl-C reaches the
    # whole process group, and one arriving while a child imports would end
    # it with a traceback instead of a partial result. This process holds it
    # back only while its children start, then handles it as usual. The
    # resource tracker, started first, would unblock it on its own start.
    multiprocessing.resource_tracker.ensure_running()
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        for index in range(processes):
            parent_end, child_end = context.Pipe()
            child = context.Process(
                target=_process_main,
                args=(plan.share(index, processes), child_end),
                daemon=True,
            )
            child.start()
            _children.append(child)
            child_end.close()
            pipes.append(parent_end)
            children.append(child)
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    try:
        return _orchestrate(plan, pipes, children, progress)
    finally:
        for child in children:
            _ready.discard(child.pid)
            _children.remove(child)
            child.join(timeout=5)
            if child.is_alive():
                child.kill()
                child.join(timeout=5)


def _orchestrate(
    plan: Plan,
    pipes: list[multiprocessing.connection.Connection],
    children: list[Any],
    progress: Callable[[int, int], None] | None,
) -> Result:
    """
    Start the generator processes together and collect their results.
    """
    silence_limit = plan.timeout + 60.0
    ready = 0
    while ready < len(pipes):
        waiting = multiprocessing.connection.wait(pipes, timeout=silence_limit)
        if not waiting:
            raise GeneratorFailed("generator processes did not get ready in time")
        for pipe in waiting:
            message = _receive(pipe)
            if message[0] == "ready":
                ready += 1
                _ready.add(children[pipes.index(pipe)].pid)  # type: ignore[arg-type]
    start = time.monotonic() + 0.05
    for pipe in pipes:
        pipe.send(("go", start))
    if _interrupted:
        # Ctrl-C came while they were starting: every one handles it now.
        interrupt()
    counts = [(0, 0)] * len(pipes)
    results: dict[int, Result] = {}
    while len(results) < len(pipes):
        live = [pipe for i, pipe in enumerate(pipes) if i not in results]
        waiting = multiprocessing.connection.wait(live, timeout=silence_limit)
        if not waiting:
            raise GeneratorFailed("a generator process stopped answering")
        for pipe in waiting:
            index = pipes.index(pipe)  # type: ignore[arg-type]
            message = _receive(pipe)
            if message[0] == "progress":
                counts[index] = (message[1], message[2])
                if progress is not None:
                    progress(sum(c[0] for c in counts), sum(c[1] for c in counts))
            elif message[0] == "done":
                results[index] = Result.from_wire(message[1])
    merged = Result()
    for index in sorted(results):
        merged.merge(results[index])
    return merged


def _receive(pipe: Any) -> tuple[Any, ...]:
    try:
        message: tuple[Any, ...] = pipe.recv()
    except EOFError:
        raise GeneratorFailed("a generator process exited unexpectedly") from None
    if message[0] == "failed":
        raise GeneratorFailed(f"a generator process failed: {message[1]}")
    return message
