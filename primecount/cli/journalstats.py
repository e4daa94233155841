# -*- test-case-name: tests.unit.test_journalstats -*-
"""
C{primecount journal --stats}: the output of the journal's sums
(L{primecount.journal.stats}) in each C{--format}.

  - C{original} (the default): a report for a person: the totals by outcome with
    their shares, the range protocol's bad sums, the top peers by requests
    and by errors, and the requests per minute as a sparkline as wide as
    the terminal (each column one minute, or several when the range is
    longer than the terminal is wide);
  - C{jsonl}: the same, and the whole per-minute series, as one JSON object
    on one line;
  - C{csv}: the per-minute series: C{minute,requests,errors}, a row for
    every minute from the first record's to the last's.
"""

from __future__ import annotations

import csv
import json
import math
from array import array
from typing import Any, TextIO

from primecount.cli.texts import duration_text
from primecount.journal.formats import format_iso_time, format_original_time
from primecount.journal.interface import Query, Source
from primecount.journal.stats import MINUTE, Peer, Summary, buckets, summarize

#: The bars of a sparkline, lowest to highest; a blank is no request at all.
BARS = "▁▂▃▄▅▆▇█"


def sparkline(values: list[float]) -> str:
    """
    One character per value, its height in proportion to the largest: a
    blank for 0 (or less), else one of L{BARS}, the smallest for any
    request at all.
    """
    peak = max(values, default=0)
    top = len(BARS) - 1
    return "".join(
        " " if v <= 0 else BARS[min(top, max(0, math.ceil(v / peak * len(BARS)) - 1))]
        for v in values
    )


def _share(n: int, of: int) -> str:
    return f"{100 * n / of:5.1f}%" if of else ""


def _outcome_name(error: str | None) -> str:
    return "ok" if error is None else error


def _by_count(summary: Summary) -> list[tuple[str | None, int]]:
    """
    The outcomes, C{ok} first, then the errors, most frequent first.
    """
    return sorted(summary.outcomes.items(), key=lambda kv: (kv[0] is not None, -kv[1], kv[0] or ""))


def _peers_table(title: str, peers: list[Peer], first: str, out: TextIO) -> None:
    second = "errors" if first == "requests" else "requests"
    out.write(f"\n{title:<40}{first:>12}{second:>12}\n")
    for peer in peers:
        a, b = (peer.requests, peer.errors) if first == "requests" else (peer.errors, peer.requests)
        name = peer.peer if len(peer.peer) <= 38 else peer.peer[:37] + "…"
        out.write(f"  {name:<38}{a:>12,}{b:>12,}\n")


def columns_of(minutes: array[int], columns: int) -> tuple[list[float], int]:
    """
    The requests per minute in at most C{columns} columns: each the mean
    over the minutes it covers (the last column may cover fewer); and how
    many minutes a column covers.
    """
    per = max(1, math.ceil(len(minutes) / max(1, columns)))
    return [
        sum(minutes[i : i + per]) / len(minutes[i : i + per]) for i in range(0, len(minutes), per)
    ], per


def write_text(summary: Summary, minutes: array[int], shown: str, out: TextIO, width: int) -> None:
    """
    The report for a person (C{--format original}), at most C{width} columns
    wide, from the summary and its requests per minute.
    """
    files = f" ({summary.files} files)" if summary.files > 1 else ""
    out.write(f"journal {shown}{files}\n")
    if not summary.requests or summary.first is None or summary.last is None:
        out.write("no records\n")
        return
    out.write(
        f"{format_original_time(summary.first)} to {format_original_time(summary.last)} UTC "
        f"({duration_text(summary.last - summary.first)})\n\n"
    )
    n = summary.requests
    # Error texts are shown whole: several differ only at their end.
    wide = max([28, *(len(e) + 3 for e in summary.outcomes if e is not None)])
    ok = summary.outcomes.get(None, 0)
    out.write(f"{'requests':<{wide}}{n:>14,}\n")
    out.write(f"{'ok':<{wide}}{ok:>14,} {_share(ok, n)}\n")
    out.write(f"{'errors':<{wide}}{summary.errors:>14,} {_share(summary.errors, n)}\n")
    for error, count in _by_count(summary):
        if error is not None:
            out.write(f"  {error:<{wide - 2}}{count:>14,} {_share(count, n)}\n")
    if summary.range_requests:
        out.write(
            f"{'range protocol':<{wide}}{summary.range_requests:>14,} "
            f"request{'' if summary.range_requests == 1 else 's'}, "
            f"{summary.bad_sums:,} bad sum{'' if summary.bad_sums == 1 else 's'}\n"
        )
    if summary.by_requests:
        _peers_table("top peers by requests", summary.by_requests, "requests", out)
    if summary.by_errors:
        _peers_table("top peers by errors", summary.by_errors, "errors", out)
    series, per = columns_of(minutes, max(10, width - 2))
    unit = "minute" if per == 1 else f"{per} minutes"
    out.write(
        f"\nrequests per minute (one column: {unit}): peak {max(minutes):,}, "
        f"mean {n / len(minutes):,.1f}\n"
    )
    out.write(f"  {sparkline(series)}\n")
    start, end = format_original_time(summary.first)[:16], format_original_time(summary.last)[:16]
    gap = len(series) - len(start) - len(end)
    out.write(f"  {start}{' ' * gap}{end}\n" if gap > 0 else f"  {start} to {end}\n")


def _peer_json(peer: Peer) -> dict[str, Any]:
    return {"peer": peer.peer, "requests": peer.requests, "errors": peer.errors}


def _iso(when: float | None) -> str | None:
    return None if when is None else format_iso_time(when)


def write_json(source: Source, query: Query, shown: str, out: TextIO, top: int) -> None:
    """
    The summary and the per-minute series as one JSON object on one line
    (C{--format jsonl}); the series comes first, written as it is read.
    """
    sep = ""

    def minute(start: int, requests: int, errors: int) -> None:
        nonlocal sep
        out.write(
            f'{sep}{{"minute":"{format_iso_time(start)}","requests":{requests},"errors":{errors}}}'
        )
        sep = ","

    out.write('{"per_minute":[')
    summary = summarize(source, query, top, minute)
    rest = {
        "journal": shown,
        "files": summary.files,
        "since": _iso(query.since),
        "until": _iso(query.until),
        "first": _iso(summary.first),
        "last": _iso(summary.last),
        "requests": summary.requests,
        "ok": summary.requests - summary.errors,
        "errors": summary.errors,
        "error_share": summary.error_share,
        "outcomes": {_outcome_name(k): v for k, v in _by_count(summary)},
        "range_requests": summary.range_requests,
        "bad_sums": summary.bad_sums,
        "top_peers_by_requests": [_peer_json(p) for p in summary.by_requests],
        "top_peers_by_errors": [_peer_json(p) for p in summary.by_errors],
    }
    out.write("]," + json.dumps(rest, separators=(",", ":"), ensure_ascii=False)[1:] + "\n")


def write_csv(source: Source, query: Query, out: TextIO) -> None:
    """
    The per-minute series as CSV (C{--format csv}): C{minute,requests,errors}.
    """
    rows = csv.writer(out, lineterminator="\n")
    rows.writerow(("minute", "requests", "errors"))
    for start, requests, errors in buckets(source, query, MINUTE):
        rows.writerow((format_iso_time(start), requests, errors))


def write(
    source: Source, query: Query, fmt: str, shown: str, out: TextIO, *, top: int, width: int = 80
) -> None:
    """
    Sum up the records of C{query} and write them in format C{fmt}.

    @param source: the journal, as its
        L{primecount.journal.interface.Reader}'s C{stats} gives it.
    @param shown: the journal's name, fit to print.
    @param top: how many peers each top list holds.
    @param width: the terminal's width, for the sparkline.
    """
    if fmt == "jsonl":
        write_json(source, query, shown, out, top)
    elif fmt == "csv":
        write_csv(source, query, out)
    else:
        minutes = array("q")
        summary = summarize(
            source, query, top, lambda start, requests, errors: minutes.append(requests)
        )
        write_text(summary, minutes, shown, out, width)
    out.flush()
