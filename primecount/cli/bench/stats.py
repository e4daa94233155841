# -*- test-case-name: tests.unit.test_bench,tests.system.test_bench_runs -*-
"""
The load generator's statistics: latency histograms, the per-second
timeline and the result of a run, mergeable across generator processes.

The hot path only appends a float to a list (L{Tally.reply}); once a
second, and at the end, L{Tally.flush} folds the collected latencies into
an HDR histogram (exact to three significant digits, for the summary's
percentiles) and into a fixed set of logarithmic bins (for the timeline's
per-second percentiles). Both are sums of counts, so results from several
processes merge exactly by addition (L{Result.merge}).

Latencies are kept in microseconds inside the histograms and reported in
milliseconds.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from hdrh.histogram import HdrHistogram

#: The longest latency a histogram can hold, in microseconds (one minute);
#: longer ones are recorded as this value.
HIGHEST_US = 60_000_000

#: Significant digits kept by the summary histogram.
SIGNIFICANT_DIGITS = 3

#: The percentiles every summary reports.
PERCENTILES = (50.0, 90.0, 99.0, 99.9)

#: Upper edges of the timeline's latency bins, in microseconds: 24 bins per
#: decade (about 10 % wide) from 1 µs to one minute.
BIN_EDGES = np.logspace(0, np.log10(HIGHEST_US), num=24 * 8 + 1)

#: The kinds of failed requests.
ERROR_KINDS = ("connect", "reset", "timeout")

#: How much of the first wrong reply a result keeps.
SAMPLE_BYTES = 60


def new_histogram() -> HdrHistogram:
    """
    An empty summary histogram, in microseconds.
    """
    return HdrHistogram(1, HIGHEST_US, SIGNIFICANT_DIGITS)


def percentiles_ms(histogram: HdrHistogram) -> dict[str, float]:
    """
    The summary percentiles, the mean and the maximum of C{histogram}, in
    milliseconds, keyed C{"p50"}, C{"p90"}, C{"p99"}, C{"p99.9"}, C{"mean"},
    C{"max"}; all zero for an empty histogram.
    """
    result: dict[str, float] = {}
    empty = histogram.get_total_count() == 0
    for p in PERCENTILES:
        value = 0 if empty else histogram.get_value_at_percentile(p)
        result[f"p{p:g}"] = value / 1000.0
    result["mean"] = 0.0 if empty else histogram.get_mean_value() / 1000.0
    result["max"] = 0.0 if empty else histogram.get_max_value() / 1000.0
    return result


def bin_percentile_ms(bins: np.ndarray, p: float) -> float:
    """
    The C{p}th percentile of a timeline bin array, in milliseconds, as the
    upper edge of the bin holding it (so within about 10 % above the truth);
    0 when the bins are empty.
    """
    total = int(bins.sum())
    if total == 0:
        return 0.0
    rank = max(1, int(np.ceil(total * p / 100.0)))
    index = int(np.searchsorted(np.cumsum(bins), rank))
    return float(BIN_EDGES[min(index, len(BIN_EDGES) - 1)]) / 1000.0


@dataclass
class Second:
    """
    What happened during one second of a run.

    @ivar ok: correct replies received.
    @ivar wrong: replies that differ from the expected one.
    @ivar errors: requests that failed (connect, reset or timeout).
    @ivar maximum_us: the longest latency seen, in microseconds.
    @ivar bins: latency counts per L{BIN_EDGES} bin.
    """

    ok: int = 0
    wrong: int = 0
    errors: int = 0
    maximum_us: int = 0
    bins: np.ndarray = field(default_factory=lambda: np.zeros(len(BIN_EDGES), dtype=np.int64))

    def add(self, other: Second) -> None:
        """
        Add the counts of C{other} (the same second in another process).
        """
        self.ok += other.ok
        self.wrong += other.wrong
        self.errors += other.errors
        self.maximum_us = max(self.maximum_us, other.maximum_us)
        self.bins += other.bins

    def summary(self, index: int, length: float = 1.0) -> dict[str, Any]:
        """
        This second as a JSON-ready timeline entry (latencies in ms).

        @param length: how long this second really lasted: the last one of
            a run is usually cut short, and its throughput is scaled to it.
        """
        return {
            "second": index,
            "length": round(length, 3),
            "ok": self.ok,
            "wrong": self.wrong,
            "errors": self.errors,
            "throughput": round(self.ok / length, 1) if length > 0 else 0.0,
            "p50": round(bin_percentile_ms(self.bins, 50.0), 3),
            "p99": round(bin_percentile_ms(self.bins, 99.0), 3),
            "max": self.maximum_us / 1000.0,
        }


@dataclass
class Result:
    """
    The outcome of a run, or of one generator process's share of it.

    @ivar elapsed: seconds from the start to the last resolved request.
    @ivar ok: correct replies.
    @ivar wrong: replies that differ from what L{primecount.core.count.expected_reply}
        says a correct server answers (an unsolicited extra line counts too).
    @ivar errors: failed requests by kind (L{ERROR_KINDS}).
    @ivar histogram: latencies of all replies (correct or wrong), in µs.
    @ivar timeline: one L{Second} per second of the run.
    @ivar held: counters of the held connections (C{--hold}): C{open} at
        the end, C{reopened} after the server closed them, C{failed} to
        connect.
    @ivar wrong_sample: the first wrong reply (up to L{SAMPLE_BYTES} bytes),
        to show what the server said instead (C{None} when none was wrong).
    """

    elapsed: float = 0.0
    ok: int = 0
    wrong: int = 0
    errors: dict[str, int] = field(default_factory=lambda: dict.fromkeys(ERROR_KINDS, 0))
    histogram: HdrHistogram = field(default_factory=new_histogram)
    timeline: list[Second] = field(default_factory=list)
    held: dict[str, int] = field(default_factory=lambda: {"open": 0, "reopened": 0, "failed": 0})
    wrong_sample: bytes | None = None

    @property
    def error_count(self) -> int:
        """
        All failed requests, whatever their kind.
        """
        return sum(self.errors.values())

    @property
    def requests(self) -> int:
        """
        Every request resolved: correct, wrong or failed.
        """
        return self.ok + self.wrong + self.error_count

    @property
    def throughput(self) -> float:
        """
        Correct replies per second: wrong replies and errors are not speed.
        """
        return self.ok / self.elapsed if self.elapsed > 0 else 0.0

    def merge(self, other: Result) -> None:
        """
        Add another process's share of the same run to this result.
        """
        self.elapsed = max(self.elapsed, other.elapsed)
        self.ok += other.ok
        self.wrong += other.wrong
        for kind, n in other.errors.items():
            self.errors[kind] = self.errors.get(kind, 0) + n
        self.histogram.add(other.histogram)
        for index, second in enumerate(other.timeline):
            if index < len(self.timeline):
                self.timeline[index].add(second)
            else:
                self.timeline.append(second)
        for key, n in other.held.items():
            self.held[key] = self.held.get(key, 0) + n
        if self.wrong_sample is None:
            self.wrong_sample = other.wrong_sample

    def to_wire(self) -> dict[str, Any]:
        """
        A picklable, compact form for sending between processes.
        """
        return {
            "elapsed": self.elapsed,
            "ok": self.ok,
            "wrong": self.wrong,
            "errors": dict(self.errors),
            "histogram": self.histogram.encode(),
            "timeline": [(s.ok, s.wrong, s.errors, s.maximum_us, s.bins) for s in self.timeline],
            "held": dict(self.held),
            "wrong_sample": self.wrong_sample,
        }

    @classmethod
    def from_wire(cls, wire: dict[str, Any]) -> Result:
        """
        Rebuild a result from L{to_wire}'s form.
        """
        histogram = new_histogram()
        histogram.decode_and_add(wire["histogram"])
        return cls(
            elapsed=wire["elapsed"],
            ok=wire["ok"],
            wrong=wire["wrong"],
            errors=dict(wire["errors"]),
            histogram=histogram,
            timeline=[Second(*entry) for entry in wire["timeline"]],
            held=dict(wire["held"]),
            wrong_sample=wire.get("wrong_sample"),
        )

    def timeline_summary(self) -> list[dict[str, Any]]:
        """
        The per-second timeline as JSON-ready entries; the last second is
        as long as what remained of the run.
        """
        entries = []
        for index, second in enumerate(self.timeline):
            length = min(1.0, self.elapsed - index) if self.elapsed else 1.0
            entries.append(second.summary(index, max(length, 0.0)))
        return entries

    def summary(self) -> dict[str, Any]:
        """
        The result as a JSON-ready dictionary (latencies in ms).
        """
        return {
            "elapsed": round(self.elapsed, 6),
            "requests": self.requests,
            "ok": self.ok,
            "wrong": self.wrong,
            "errors": {"total": self.error_count, **self.errors},
            "throughput": round(self.throughput, 3),
            "latency_ms": percentiles_ms(self.histogram),
            "held": dict(self.held),
            "first_wrong_reply": (
                None
                if self.wrong_sample is None
                else self.wrong_sample.decode("utf-8", "backslashreplace")
            ),
            "timeline": self.timeline_summary(),
            "histogram": self.histogram.encode().decode("ascii"),
        }


class Tally:
    """
    Counts one generator process's outcomes as they happen.

    @ivar result: the totals so far; complete after the last L{flush}.
    """

    def __init__(self, start: float) -> None:
        """
        @param start: the run's start, on the C{time.monotonic} clock.
        """
        self.start = start
        self.result = Result()
        self._latencies: list[float] = []
        self._current = Second()

    def reply(self, latency: float, correct: bool) -> None:
        """
        Record one reply that took C{latency} seconds.
        """
        self._latencies.append(latency)
        if correct:
            self._current.ok += 1
        else:
            self._current.wrong += 1

    def sample(self, reply: bytes) -> None:
        """
        Keep C{reply}, a wrong one, if it is the first.
        """
        if self.result.wrong_sample is None:
            self.result.wrong_sample = bytes(reply[:SAMPLE_BYTES])

    def unsolicited(self, reply: bytes = b"") -> None:
        """
        Record a reply nobody asked for: wrong, and without a latency.
        """
        self._current.wrong += 1
        self.sample(reply)

    def error(self, kind: str, n: int = 1) -> None:
        """
        Record C{n} failed requests of one of the L{ERROR_KINDS}.
        """
        self.result.errors[kind] += n
        self._current.errors += n

    @property
    def resolved(self) -> int:
        """
        Requests resolved so far, flushed or not.
        """
        current = self._current
        return self.result.requests + current.ok + current.wrong

    def flush(self) -> None:
        """
        Close the current second: fold its latencies into the histograms
        and append it to the timeline.
        """
        second = self._current
        self._current = Second()
        self.record_latencies(self._latencies, second)
        self._latencies = []
        self.result.ok += second.ok
        self.result.wrong += second.wrong
        self.result.timeline.append(second)

    def record_latencies(self, latencies: Iterable[float], second: Second) -> None:
        """
        Add latencies (in seconds) to the summary histogram and to
        C{second}'s bins.
        """
        values = np.fromiter(latencies, dtype=np.float64)
        if values.size == 0:
            return
        micros = np.clip(np.rint(values * 1e6), 1, HIGHEST_US).astype(np.int64)
        distinct, counts = np.unique(micros, return_counts=True)
        record = self.result.histogram.record_value
        for value, n in zip(distinct.tolist(), counts.tolist(), strict=True):
            record(value, n)
        index = np.searchsorted(BIN_EDGES, micros)
        np.minimum(index, len(BIN_EDGES) - 1, out=index)
        second.bins += np.bincount(index, minlength=len(BIN_EDGES))
        second.maximum_us = max(second.maximum_us, int(micros.max()))
