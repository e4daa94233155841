# -*- test-case-name: tests.unit.test_top -*-
"""
The arithmetic of C{primecount top}: what happened between two scrapes of
one endpoint (L{host_figures}), and across hosts (L{total}).

Counters and histograms only ever grow while their process lives, so what
happened in an interval is the difference of two scrapes divided by the
time between them, done the way Prometheus' C{rate()} and
C{histogram_quantile()} do it:

  - a series that went down was reset (its process restarted, and counted
    afresh): its whole new value happened in the interval; so does a
    series that was not there before (a labelled counter appears at its
    first count);
  - a changed C{process_start_time_seconds} means the process restarted:
    every series counted afresh, even one that has already climbed past
    its old value;
  - a percentile comes from the increase of each histogram bucket, so it
    describes the interval alone, not the whole life of the server; within
    a bucket it is interpolated linearly, and one that falls above the
    largest finite bound is that bound (the histogram knows no more).

A family the endpoint does not declare (an older server, another program)
gives C{None}, which the view shows as C{-}; one declared without samples
yet (no request so far) counts as 0.

Pure: no I/O, no clock.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace

from primecount.cli.top.scrape import Scrape

REQUESTS = "primecount_requests_total"
LATENCY = "primecount_request_duration_seconds"
CONNECTIONS = "primecount_open_connections"
QUEUE = "primecount_threadpool_queue_depth"
BUSY = "primecount_threadpool_busy_threads"
BATCH = "primecount_journal_batch_size"
COMMIT = "primecount_journal_commit_seconds"
JOURNAL = "primecount_journal_unavailable_since_seconds"
RESTARTS = "primecount_worker_restarts_total"
START = "process_start_time_seconds"
WORKER_REQUESTS = "primecount_worker_requests"
WORKER_CONNECTIONS = "primecount_worker_open_connections"
WORKER_START = "primecount_worker_start_time_seconds"

#: The outcome label of an answered request; every other one is an error.
OK = "ok"

Labels = tuple[tuple[str, str], ...]

#: Cumulative count of a histogram at each upper bound (C{le}).
Buckets = dict[float, float]

_SUFFIXES = ("_total", "_bucket", "_count", "_sum")


def _family(name: str) -> str:
    """
    The family a sample name belongs to (C{primecount_requests} for
    C{primecount_requests_total}).
    """
    for suffix in _SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def declared(scrape: Scrape, name: str) -> bool:
    """
    Whether C{scrape}'s page declares the family of the sample C{name}.
    """
    return scrape.has(name) or scrape.has(_family(name))


def restarted(old: Scrape, new: Scrape) -> bool:
    """
    Whether the process serving the page started anew between the scrapes.
    """
    before, after = old.value(START), new.value(START)
    return before is not None and after is not None and before != after


def increases(old: Scrape, new: Scrape, name: str) -> dict[Labels, float] | None:
    """
    How much each series called C{name} grew from C{old} to C{new}, by its
    labels, counting resets (see the module's docstring); C{None} when
    C{new} does not declare the family.
    """
    if not declared(new, name):
        return None
    fresh = restarted(old, new)
    before = old.series(name)
    grown = {}
    for labels, value in new.series(name).items():
        previous = 0.0 if fresh else before.get(labels, 0.0)
        grown[labels] = value - previous if value >= previous else value
    return grown


def _grouped(series: Mapping[Labels, float], label: str) -> dict[str, float]:
    """
    The sums of C{series} by the value of C{label} (C{""} when absent).
    """
    sums: dict[str, float] = {}
    for labels, value in series.items():
        key = dict(labels).get(label, "")
        sums[key] = sums.get(key, 0.0) + value
    return sums


def bucket_increases(old: Scrape, new: Scrape, name: str) -> Buckets | None:
    """
    How much each bucket of the histogram C{name} grew, summed over its
    other labels (both protocols, say); C{None} when C{new} does not declare
    it.
    """
    grown = increases(old, new, name + "_bucket")
    if grown is None:
        return None
    return {float(le): value for le, value in _grouped(grown, "le").items()}


def buckets_now(scrape: Scrape, name: str) -> Buckets | None:
    """
    The cumulative buckets of the histogram C{name} as scraped, summed over
    its other labels; C{None} when the page does not declare it.
    """
    if not declared(scrape, name + "_bucket"):
        return None
    series = scrape.series(name + "_bucket")
    return {float(le): value for le, value in _grouped(series, "le").items()}


def merge_buckets(histograms: Iterable[Buckets | None]) -> Buckets | None:
    """
    The sum of several histograms' buckets over the bounds they all have
    (hosts of one version have the same bounds); C{None} when none is given.
    """
    given = [h for h in histograms if h is not None]
    if not given:
        return None
    bounds = set.intersection(*(set(h) for h in given))
    return {bound: sum(h[bound] for h in given) for bound in bounds}


def quantile(q: float, buckets: Buckets | None) -> float | None:
    """
    The C{q}-quantile (0.99 for p99) of the observations counted in
    C{buckets}, as Prometheus' C{histogram_quantile} computes it; C{None}
    when there is none.
    """
    if not buckets or math.inf not in buckets:
        return None
    bounds = sorted(buckets)
    counts = []
    running = 0.0
    for bound in bounds:
        # Cumulative counts never fall; a mix of reset and kept series can
        # make them seem to, by a little.
        running = max(running, buckets[bound])
        counts.append(running)
    total = counts[-1]
    if total <= 0:
        return None
    rank = q * total
    below, lower = 0.0, 0.0
    for bound, count in zip(bounds, counts, strict=True):
        if count >= rank and count > below:
            if bound == math.inf:
                finite = [b for b in bounds if b != math.inf]
                return finite[-1] if finite else None
            if bound <= 0:
                return bound
            return lower + (bound - lower) * (rank - below) / (count - below)
        below, lower = count, bound
    return None


@dataclass(frozen=True)
class JournalState:
    """
    Whether a journal commits: L{since} is C{None} while it does, else the
    start (seconds since the epoch) of the oldest failure episode under way.

    @ivar failing: journals (workers) whose commits fail now.
    @ivar of: journals reported.
    @ivar age: seconds the failure has lasted, in the server's time.
    """

    since: float | None
    failing: int
    of: int
    age: float | None = None


def journal_state(scrape: Scrape) -> JournalState | None:
    """
    The journal's state from the page: C{None} without the family or its
    samples (no journal, no commit yet, an older server).
    """
    values = list(scrape.series(JOURNAL).values())
    if not values:
        return None
    failing = [v for v in values if v > 0]
    if not failing:
        return JournalState(None, 0, len(values))
    since = min(failing)
    return JournalState(since, len(failing), len(values), max(0.0, scrape.served - since))


@dataclass(frozen=True)
class Figures:
    """
    What the view shows of one host, one worker or all hosts; C{None}
    where the endpoint does not say (or, for rates, before a second scrape).

    @ivar rate: requests answered per second, every outcome.
    @ivar outcomes: requests per second by outcome label.
    @ivar errors: requests per second whose outcome is not C{ok}.
    @ivar p50: median request latency in the interval, seconds.
    @ivar p99: 99th percentile of request latency in the interval, seconds.
    @ivar connections: connections open now.
    @ivar busy: pool threads at work now.
    @ivar queue: work waiting for a pool thread now.
    @ivar commit_p99: 99th percentile of journal commit time, seconds.
    @ivar batch: mean records per journal commit in the interval.
    @ivar journal: the journal's state.
    @ivar restarts: workers the supervisor replaced since it started.
    @ivar uptime: seconds since the process started.
    @ivar latency: the latency buckets' increase (to sum hosts).
    @ivar commits: the commit-time buckets' increase (to sum hosts).
    @ivar batch_records: records committed in the interval (to sum hosts).
    @ivar batch_commits: commits in the interval (to sum hosts).
    """

    rate: float | None = None
    outcomes: dict[str, float] | None = None
    errors: float | None = None
    p50: float | None = None
    p99: float | None = None
    connections: float | None = None
    busy: float | None = None
    queue: float | None = None
    commit_p99: float | None = None
    batch: float | None = None
    journal: JournalState | None = None
    restarts: float | None = None
    uptime: float | None = None
    latency: Buckets | None = field(default=None, repr=False)
    commits: Buckets | None = field(default=None, repr=False)
    batch_records: float | None = field(default=None, repr=False)
    batch_commits: float | None = field(default=None, repr=False)


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b <= 0:
        return None
    return a / b


def _or_zero(scrape: Scrape, name: str) -> float | None:
    """
    The summed samples of C{name}, 0 when the family is declared without
    any, C{None} when it is not declared.
    """
    if not declared(scrape, name):
        return None
    return scrape.value(name) or 0.0


def _levels(new: Scrape) -> Figures:
    """
    The figures one scrape gives by itself: gauges, totals, uptime.
    """
    start = new.value(START)
    return Figures(
        connections=_or_zero(new, CONNECTIONS),
        busy=_or_zero(new, BUSY),
        queue=_or_zero(new, QUEUE),
        journal=journal_state(new),
        restarts=_or_zero(new, RESTARTS),
        uptime=None if start is None else max(0.0, new.served - start),
    )


def host_figures(old: Scrape | None, new: Scrape) -> Figures:
    """
    One host's figures: levels from C{new}, rates and percentiles from
    what grew since C{old} (none without it).
    """
    figures = _levels(new)
    if old is None:
        return figures
    seconds = new.at - old.at
    if seconds <= 0:
        return figures
    requests = increases(old, new, REQUESTS)
    outcomes = None
    rate = errors = None
    if requests is not None:
        outcomes = {k: v / seconds for k, v in _grouped(requests, "outcome").items()}
        rate = float(sum(outcomes.values()))
        errors = float(sum(v for k, v in outcomes.items() if k != OK))
    latency = bucket_increases(old, new, LATENCY)
    commits = bucket_increases(old, new, COMMIT)
    batch_records = _summed(increases(old, new, BATCH + "_sum"))
    batch_commits = _summed(increases(old, new, BATCH + "_count"))
    return replace(
        figures,
        rate=rate,
        outcomes=outcomes,
        errors=errors,
        p50=quantile(0.5, latency),
        p99=quantile(0.99, latency),
        commit_p99=quantile(0.99, commits),
        batch=_ratio(batch_records, batch_commits),
        latency=latency,
        commits=commits,
        batch_records=batch_records,
        batch_commits=batch_commits,
    )


def _summed(series: Mapping[Labels, float] | None) -> float | None:
    return None if series is None else sum(series.values())


def worker_figures(old: Scrape | None, new: Scrape) -> dict[str, Figures]:
    """
    The figures of each worker process the page tells apart (label C{pid}:
    a server with C{--workers N}), by pid; empty for a single process.
    """
    pids = {dict(labels).get("pid", "") for labels in new.series(WORKER_START)}
    pids.discard("")
    if not pids:
        return {}
    seconds = 0.0 if old is None else new.at - old.at
    grown = None
    if old is not None and seconds > 0:
        grown = _grouped(increases(old, new, WORKER_REQUESTS) or {}, "pid")
    connections = _grouped(new.series(WORKER_CONNECTIONS), "pid")
    starts = _grouped(new.series(WORKER_START), "pid")
    states = {dict(labels).get("pid", ""): v for labels, v in new.series(JOURNAL).items()}
    found = {}
    for pid in pids:
        state = None
        if pid in states:
            since = states[pid] or None
            state = JournalState(
                since,
                int(since is not None),
                1,
                None if since is None else max(0.0, new.served - since),
            )
        found[pid] = Figures(
            rate=None if grown is None else grown.get(pid, 0.0) / seconds,
            connections=connections.get(pid),
            journal=state,
            uptime=max(0.0, new.served - starts[pid]),
        )
    return found


def _add(values: Iterable[float | None]) -> float | None:
    """
    The sum of the values given, C{None} when none is.
    """
    given = [v for v in values if v is not None]
    return sum(given) if given else None


def _add_by(outcomes: Iterable[dict[str, float] | None]) -> dict[str, float] | None:
    given = [o for o in outcomes if o is not None]
    if not given:
        return None
    sums: dict[str, float] = {}
    for one in given:
        for key, value in one.items():
            sums[key] = sums.get(key, 0.0) + value
    return sums


def _journals(states: Iterable[JournalState | None]) -> JournalState | None:
    given = [s for s in states if s is not None]
    if not given:
        return None
    failing = [s for s in given if s.since is not None]
    oldest = min(failing, key=_since, default=None)
    return JournalState(
        None if oldest is None else oldest.since,
        sum(s.failing for s in given),
        sum(s.of for s in given),
        None if oldest is None else oldest.age,
    )


def _since(state: JournalState) -> float:
    return state.since if state.since is not None else math.inf


def total(hosts: Iterable[Figures]) -> Figures:
    """
    All hosts as one: rates, connections, pools and restarts added;
    percentiles from the hosts' buckets added; the journal failing when any
    host's fails.
    """
    hosts = list(hosts)

    def add(get: Callable[[Figures], float | None]) -> float | None:
        return _add(get(h) for h in hosts)

    latency = merge_buckets(h.latency for h in hosts)
    commits = merge_buckets(h.commits for h in hosts)
    batch_records = add(lambda h: h.batch_records)
    batch_commits = add(lambda h: h.batch_commits)
    return Figures(
        rate=add(lambda h: h.rate),
        outcomes=_add_by(h.outcomes for h in hosts),
        errors=add(lambda h: h.errors),
        p50=quantile(0.5, latency),
        p99=quantile(0.99, latency),
        connections=add(lambda h: h.connections),
        busy=add(lambda h: h.busy),
        queue=add(lambda h: h.queue),
        commit_p99=quantile(0.99, commits),
        batch=_ratio(batch_records, batch_commits),
        journal=_journals(h.journal for h in hosts),
        restarts=add(lambda h: h.restarts),
        latency=latency,
        commits=commits,
        batch_records=batch_records,
        batch_commits=batch_commits,
    )
