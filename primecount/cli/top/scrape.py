# -*- test-case-name: tests.unit.test_top -*-
"""
One look at a metrics endpoint: fetch C{/metrics} over HTTP with bounded
time and size (L{fetch}), parse the Prometheus text into a L{Scrape}.

A fetch blocks its thread for at most its timeout: the callers run one per
host in threads of their own (L{primecount.cli.top.live}), so a slow or dead
host never holds up the view or the other hosts.
"""

from __future__ import annotations

import contextlib
import email.utils
import http.client
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field

#: The most bytes read from one endpoint: primecount's page is about 20 kB
#: (more with many workers); anything far larger is not one.
MAX_PAGE = 4 * 1024 * 1024

#: The port C{top} looks at when given no URL: the C{--metrics-port} the
#: documentation's examples use.
DEFAULT_PORT = 9100

#: The URL C{top} looks at when given none.
DEFAULT_URL = f"http://127.0.0.1:{DEFAULT_PORT}/metrics"


class ScrapeFailed(Exception):
    """
    An endpoint gave no metrics; the message says why, in a few words
    (C{connection refused}, C{timed out after 2 s}, C{HTTP 404 Not Found}).
    """


class BadURL(ValueError):
    """
    A URL given on the command line that names no HTTP endpoint.
    """


def normalize(text: str) -> str:
    """
    The metrics URL meant by C{text}: a full C{http://} or C{https://} URL,
    or C{HOST:PORT}, C{HOST} alone (port L{DEFAULT_PORT}) or C{PORT} alone
    (on 127.0.0.1); C{/metrics} is the path unless one is given.

    @raise BadURL: when C{text} names no such URL.
    """
    given = text.strip()
    if given.isdigit():
        given = f"127.0.0.1:{given}"
    if "://" not in given:
        given = "http://" + given
        try:
            if urllib.parse.urlsplit(given).port is None:
                netloc = urllib.parse.urlsplit(given).netloc
                given = given.replace(netloc, f"{netloc}:{DEFAULT_PORT}", 1)
        except ValueError:
            pass
    try:
        parts = urllib.parse.urlsplit(given)
        parts.port  # noqa: B018 - checks the port
    except ValueError as e:
        raise BadURL(f"not a metrics URL: {text!r} ({e})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BadURL(f"not a metrics URL: {text!r} (expected HOST:PORT or http://HOST:PORT/PATH)")
    path = parts.path if parts.path not in ("", "/") else "/metrics"
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))


def short_name(url: str, urls: Iterable[str]) -> str:
    """
    How the view names the host of C{url}: C{HOST:PORT}, or the whole URL
    when two of C{urls} share that.
    """
    netloc = urllib.parse.urlsplit(url).netloc
    if sum(urllib.parse.urlsplit(u).netloc == netloc for u in urls) > 1:
        return url
    return netloc


#: Sample name and its labels, sorted.
Key = tuple[str, tuple[tuple[str, str], ...]]


@dataclass(frozen=True)
class Scrape:
    """
    What one endpoint said at one moment.

    @ivar at: when the page arrived, on this machine's monotonic clock.
    @ivar served: the server's own time (its C{Date} header), seconds since
        the epoch, to age what it reports in its own time (uptime, since
        when the journal fails) whatever this machine's clock says; this
        machine's time when the page had none.
    @ivar families: the families the page declares, even those without a
        sample yet (a counter with labels has none until it counts).
    @ivar samples: every sample's value.
    """

    at: float
    served: float
    families: frozenset[str]
    samples: dict[Key, float] = field(repr=False)

    def has(self, family: str) -> bool:
        """
        Whether the page declares C{family} (such as C{primecount_requests}).
        """
        return family in self.families

    def series(self, name: str) -> dict[tuple[tuple[str, str], ...], float]:
        """
        Every sample called C{name} (such as C{primecount_requests_total}),
        by its labels.
        """
        return {labels: value for (sample, labels), value in self.samples.items() if sample == name}

    def value(self, name: str) -> float | None:
        """
        The sum of the samples called C{name}, or C{None} when there is none.
        """
        found = self.series(name)
        return sum(found.values()) if found else None


def parse(text: str, at: float, served: float) -> Scrape:
    """
    A L{Scrape} of a page in the Prometheus text format.

    @raise ScrapeFailed: when the text is not in that format.
    """
    from prometheus_client.parser import text_string_to_metric_families

    families = set()
    samples: dict[Key, float] = {}
    try:
        for family in text_string_to_metric_families(text):
            families.add(family.name)
            for sample in family.samples:
                samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    except (ValueError, TypeError, IndexError, KeyError) as e:
        raise ScrapeFailed(f"not Prometheus text ({' '.join(str(e).split())[:60]})") from None
    return Scrape(at=at, served=served, families=frozenset(families), samples=samples)


def _why(error: BaseException, timeout: float) -> str:
    """
    A few words saying why a fetch failed.
    """
    if isinstance(error, urllib.error.HTTPError):
        return f"HTTP {error.code} {error.reason}"
    if isinstance(error, urllib.error.URLError) and isinstance(error.reason, BaseException):
        error = error.reason
    if isinstance(error, TimeoutError | socket.timeout):
        return f"timed out after {timeout:g} s"
    if isinstance(error, ConnectionRefusedError):
        return "connection refused"
    if isinstance(error, ConnectionResetError):
        return "connection reset"
    if isinstance(error, socket.gaierror):
        return f"unknown host ({error.strerror})"
    if isinstance(error, OSError) and error.strerror:
        return error.strerror.lower()
    if isinstance(error, http.client.HTTPException):
        return f"bad HTTP reply ({type(error).__name__})"
    text = " ".join(str(error).split())
    return text or type(error).__name__


def fetch(url: str, timeout: float, limit: int = MAX_PAGE) -> Scrape:
    """
    Get and parse the page at C{url}, within C{timeout} seconds for the
    connection and for each read (urllib's bound), and at most C{limit}
    bytes.

    @raise ScrapeFailed: when there is no page, or not one of metrics.
    """
    request = urllib.request.Request(url, headers={"Accept": "text/plain"})
    deadline = time.monotonic() + timeout
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = bytearray()
            while len(body) <= limit:
                if time.monotonic() > deadline:
                    raise TimeoutError
                chunk = response.read(65536)
                if not chunk:
                    break
                body += chunk
            date = response.headers.get("Date")
    except (OSError, http.client.HTTPException, ValueError) as e:
        raise ScrapeFailed(_why(e, timeout)) from None
    at = time.monotonic()
    if len(body) > limit:
        raise ScrapeFailed(f"page larger than {limit // 1024 // 1024} MiB: not a metrics page")
    served = time.time()
    if date:
        with contextlib.suppress(TypeError, ValueError):
            served = email.utils.parsedate_to_datetime(date).timestamp()
    return parse(body.decode("utf-8", "replace"), at, served)
