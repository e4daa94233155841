# -*- test-case-name: tests.unit.test_top,tests.system.test_top_process -*-
"""
C{primecount top}: what one or several primecount servers are doing right
now, in the terminal, from the metrics endpoints they serve
(C{--metrics-port})::

    primecount top                                  # http://127.0.0.1:9100/metrics
    primecount top host1:9100 host2:9100            # several hosts and their sum
    primecount top --file hosts.txt --interval 2
    primecount top --once                           # one snapshot as text, for scripts
    primecount top --once --json

Every C{--interval} seconds each host is scraped by a thread of its own
(L{primecount.cli.top.live}); rates and latency percentiles are what
happened between a host's last two scrapes
(L{primecount.cli.top.figures}); the tables are
L{primecount.cli.top.view}.

Exit status: 0 (C{--once}: every host answered), 3 when C{--once} found a
host down, 2 for bad arguments (one line on stderr).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from typing import TextIO

from primecount.cli.top.live import Watch, is_terminal, rounds, show, stream_json
from primecount.cli.top.scrape import DEFAULT_URL, BadURL, normalize, short_name
from primecount.cli.top.view import SORTS, as_json, as_text
from primecount.core.options import number


class TopError(Exception):
    """
    A problem the user can fix, reported as one line on stderr.
    """


#: C{--interval}: how often each host is scraped.
_interval = number(float, "a number of seconds, at least 0.1", 0.1)

#: C{--timeout}: how long one scrape may take.
_timeout = number(float, "a number of seconds, at least 0.1", 0.1, 60)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """
    Declare the options of C{primecount top} on C{parser}.
    """
    parser.add_argument(
        "urls",
        nargs="*",
        metavar="URL",
        help="a server's metrics endpoint, one per host: http://HOST:PORT/metrics, "
        f"HOST:PORT, HOST (port 9100) or PORT (on 127.0.0.1) (default {DEFAULT_URL})",
    )
    parser.add_argument(
        "--file",
        metavar="FILE",
        action="append",
        default=[],
        help="more URLs, one a line (blank lines and # comments skipped); repeatable",
    )
    parser.add_argument(
        "--interval",
        type=_interval,
        default=1.0,
        metavar="S",
        help="seconds between two scrapes of a host; rates and percentiles "
        "cover the last one (default %(default)s)",
    )
    parser.add_argument(
        "--timeout",
        type=_timeout,
        default=2.0,
        metavar="S",
        help="seconds a host may take to answer before it is shown down (default %(default)s)",
    )
    parser.add_argument(
        "--sort",
        choices=tuple(SORTS),
        default="throughput",
        help="order of the hosts; in the view, keys t, e, l and n change it (default %(default)s)",
    )
    parser.add_argument(
        "--once",
        action="store_true",
        help="print one snapshot (two scrapes --interval apart) as text and exit",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="JSON for machines: with --once one object, else one line per interval",
    )


def read_urls(args: argparse.Namespace) -> list[str]:
    """
    The metrics URLs to watch, normalised and each once, in the order
    given: the arguments, then those in C{--file}s; the default URL when
    there are none.

    @raise TopError: for a URL that names no endpoint, or a file that
        cannot be read.
    """
    given = list(args.urls)
    for path in args.file:
        try:
            with open(path, encoding="utf-8") as f:
                for line in f:
                    line = line.split("#", 1)[0].strip()
                    if line:
                        given.append(line)
        except (OSError, UnicodeDecodeError) as e:
            raise TopError(f"cannot read {path}: {getattr(e, 'strerror', None) or e}") from None
    if not given:
        if args.file:
            raise TopError(f"no URL in {', '.join(args.file)}")
        given = [DEFAULT_URL]
    try:
        return list(dict.fromkeys(normalize(u) for u in given))
    except BadURL as e:
        raise TopError(str(e)) from None


def watches_of(urls: list[str], interval: float, timeout: float) -> list[Watch]:
    """
    A L{Watch} for each URL.
    """
    return [Watch(url, short_name(url, urls), interval, timeout) for url in urls]


def _once(watches: list[Watch], args: argparse.Namespace, out: TextIO) -> int:
    shot = rounds(watches, args.interval)
    if args.json:
        out.write(json.dumps(as_json(shot), indent=2) + "\n")
    else:
        out.write(as_text(shot, args.sort, shutil.get_terminal_size().columns))
    out.flush()
    return 0 if all(h.up for h in shot.hosts) else 3


def _run(args: argparse.Namespace, out: TextIO) -> int:
    watches = watches_of(read_urls(args), args.interval, args.timeout)
    if args.once:
        return _once(watches, args, out)
    if args.json:
        stream_json(watches, args.interval, out)
        return 0
    if not (is_terminal(sys.stdin) and is_terminal(out)):
        raise TopError("the live view needs a terminal: use --once or --json")
    from rich.console import Console

    show(watches, args.interval, args.sort, Console(file=out, highlight=False), sys.stdin)
    return 0


def run(args: argparse.Namespace) -> int:
    """
    Carry out C{primecount top} with options parsed by L{add_arguments}.

    @return: the exit status (see the module's docstring).
    """
    try:
        return _run(args, sys.stdout)
    except TopError as e:
        sys.stderr.write(f"primecount top: {e}\n")
        return 2
    except KeyboardInterrupt:
        return 0
