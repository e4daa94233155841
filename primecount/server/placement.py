# -*- test-case-name: tests.unit.test_placement -*-
"""
CPU placement: which core each serving process runs on (C{--cpu-affinity}).

A serving process is one Python interpreter: its reactor, its pool thread
and its journal thread take turns holding one GIL. When they run on
different cores every hand-off moves the GIL (and the cache lines it
guards) between cores; kept on one core, a hand-off is an ordinary context
switch. Pinning therefore makes one process faster, and with C{--workers N}
it keeps the workers off each other's cores, as nginx's
C{worker_cpu_affinity auto} and HAProxy's C{cpu-map} do.

Pure logic (parsing, choosing), one function that applies a choice to
every thread of the calling process, and the service that applies it when
a serving process starts.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

from twisted.application import service
from twisted.logger import Logger

AUTO = "auto"
NONE = "none"


@dataclass(frozen=True)
class Placement:
    """
    A parsed C{--cpu-affinity}.

    @ivar mode: L{AUTO}, L{NONE}, or C{"list"} for explicit CPUs.
    @ivar cpus: the explicit CPUs, in order (worker i gets C{cpus[i % n]}).
    """

    mode: str
    cpus: tuple[int, ...] = ()

    def __str__(self) -> str:
        return ",".join(map(str, self.cpus)) if self.mode == "list" else self.mode


def parse(text: str) -> Placement:
    """
    C{auto}, C{none}, or CPU numbers and ranges: C{0}, C{0,2}, C{0-3}.

    @raise ValueError: with a message naming the rule.
    """
    text = text.strip().lower()
    if text in (AUTO, NONE):
        return Placement(text)
    cpus: list[int] = []
    for part in text.split(","):
        low, dash, high = part.strip().partition("-")
        if not low.isdigit() or (dash and not high.isdigit()):
            raise ValueError(f"auto, none, or CPU numbers such as 0,1 or 0-3; got {text!r}")
        first, last = int(low), int(high) if dash else int(low)
        if last < first:
            raise ValueError(f"CPU ranges low to high, such as 0-3; got {part!r}")
        cpus.extend(range(first, last + 1))
    return Placement("list", tuple(dict.fromkeys(cpus)))


def choose(placement: Placement, index: int, allowed: set[int]) -> int | None:
    """
    The CPU serving process number C{index} should run on, or C{None} to
    leave it to the scheduler.

    C{auto} spreads processes over the CPUs this process may use (its
    affinity mask, e.g. a container's cpuset): process i on the i-th of
    them, wrapping around; with a single usable CPU there is nothing to
    choose. A list is taken as given, wrapping around likewise.

    @raise ValueError: when an explicit CPU is not usable here.
    """
    if placement.mode == NONE:
        return None
    if placement.mode == AUTO:
        usable = sorted(allowed)
        if len(usable) < 2:
            return None
        return usable[index % len(usable)]
    cpu = placement.cpus[index % len(placement.cpus)]
    if cpu not in allowed:
        raise ValueError(
            f"CPU {cpu} is not available to this process (usable: "
            f"{','.join(map(str, sorted(allowed)))})"
        )
    return cpu


def allowed_cpus() -> set[int]:
    """
    The CPUs this process may run on.
    """
    return set(os.sched_getaffinity(0))


def pin_process(cpu: int) -> None:
    """
    Run every thread of this process, and every thread it starts later, on
    C{cpu}. (C{sched_setaffinity} acts on one thread; threads inherit the
    mask of the thread that starts them.)
    """
    try:
        threads = [int(tid) for tid in os.listdir("/proc/self/task")]
    except OSError:
        threads = [0]
    for tid in threads:
        # A thread that ended meanwhile needs no pinning.
        with contextlib.suppress(ProcessLookupError):
            os.sched_setaffinity(tid, {cpu})


class PlacementService(service.Service):
    """
    Pins serving process C{index} (and every thread it will start) to the
    CPU C{--cpu-affinity} chooses for it, when the service starts (before
    the pool and the journal start their threads).
    """

    _log = Logger(namespace="primecount")

    def __init__(self, choice: Placement, index: int) -> None:
        self.choice = choice
        self.index = index

    def startService(self) -> None:
        super().startService()
        cpu = choose(self.choice, self.index, allowed_cpus())
        if cpu is not None:
            pin_process(cpu)
            self._log.info("serving process {index} runs on CPU {cpu}", index=self.index, cpu=cpu)
