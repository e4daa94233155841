# -*- test-case-name: tests.unit.test_cli_primes -*-
"""
C{primecount primes A B [-t N]}: the original multi-client for the range
protocol.

N clients run at once, client i asking for [A + 1000·i, B + 1000·i]. Each
reads N and the primes, verifies them (ascending, inside the range, all
prime, none missing, the sum), sends its sum as the protocol requires and
reports; the command prints one table row per client.

L{fetch} and L{send_sum} are the blocking client side of the protocol,
shared with the benchmark.
"""

from __future__ import annotations

import argparse
import socket
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from primecount.cli import add_server_arguments
from primecount.core import rangecodec
from primecount.core.options import positive
from primecount.core.primes import is_prime, primes_between

#: Up to this many primes, each is checked with L{is_prime} (Miller-Rabin,
#: independent of the server's sieve); beyond, against a local sieve.
INDEPENDENT_CHECK_LIMIT = 20000


class ProtocolError(Exception):
    """
    The server's reply does not follow the range protocol.
    """


def _recv_exactly(sock: socket.socket, size: int) -> bytearray:
    """
    Read exactly C{size} bytes.

    @raise ProtocolError: when the server closes the connection first.
    """
    data = bytearray(size)
    view = memoryview(data)
    got = 0
    while got < size:
        n = sock.recv_into(view[got:], min(size - got, 1 << 20))
        if n == 0:
            raise ProtocolError(f"server closed the connection after {got} of {size} bytes")
        got += n
    return data


def fetch(sock: socket.socket, a: int, b: int) -> npt.NDArray[np.uint32]:
    """
    Ask a connected range server for the primes in [a, b] and read them.

    @return: the primes as sent, in a native C{uint32} array whose length is
        the server's N.
    @raise ValueError: when a bound does not fit a signed 32-bit integer.
    @raise ProtocolError: when the connection ends early.
    @raise OSError: on network errors.
    """
    sock.sendall(rangecodec.encode_request(a, b))
    count = rangecodec.decode_count(bytes(_recv_exactly(sock, rangecodec.COUNT_STRUCT.size)))
    data = _recv_exactly(sock, count * rangecodec.PRIME_SIZE)
    return rangecodec.decode_primes(bytes(data))


def send_sum(sock: socket.socket, primes: npt.NDArray[np.uint32]) -> int:
    """
    Send the sum of the primes received, ending the request.

    @return: the sum sent.
    """
    total = rangecodec.prime_sum(primes)
    sock.sendall(rangecodec.encode_sum(total))
    return total


def verify(primes: npt.NDArray[np.uint32], a: int, b: int) -> str | None:
    """
    Check a reply against the range it answers.

    @return: C{None} when C{primes} is exactly the primes in [a, b], in
        increasing order; otherwise what is wrong.
    """
    if len(primes) and (int(primes[0]) < a or int(primes[-1]) > b):
        return "a number outside the range"
    if len(primes) > 1 and not bool(np.all(primes[1:] > primes[:-1])):
        return "not strictly increasing"
    expected = primes_between(a, b)
    if len(primes) != len(expected):
        return f"count {len(primes)}, expected {len(expected)}"
    if len(primes) <= INDEPENDENT_CHECK_LIMIT:
        if not all(is_prime(p) for p in primes.tolist()):
            return "a composite number"
    elif not np.array_equal(primes, expected):
        return "a composite number"
    if rangecodec.prime_sum(primes) != rangecodec.prime_sum(expected):
        return "wrong sum"
    return None


@dataclass(frozen=True, slots=True)
class ClientRun:
    """
    What one client saw.

    @ivar a: the lower bound it asked for.
    @ivar b: the upper bound it asked for.
    @ivar count: N as received, or C{None} after an error.
    @ivar total: the sum it sent, or C{None} after an error.
    @ivar problem: what was wrong with the reply, or C{None}.
    @ivar error: the network or protocol error, or C{None}.
    @ivar seconds: from connecting to sending the sum.
    """

    a: int
    b: int
    count: int | None
    total: int | None
    problem: str | None
    error: str | None
    seconds: float


def ask_range(host: str, port: int, a: int, b: int, timeout: float) -> ClientRun:
    """
    One client: connect, request [a, b], verify, send the sum.
    """
    start = time.perf_counter()
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            primes = fetch(sock, a, b)
            problem = verify(primes, a, b)
            total = send_sum(sock, primes)
    except (OSError, ProtocolError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        reason = reason or type(e).__name__
        return ClientRun(a, b, None, None, None, reason, time.perf_counter() - start)
    return ClientRun(a, b, len(primes), total, problem, None, time.perf_counter() - start)


def _int32(text: str) -> int:
    """
    An argparse type: a signed 32-bit integer.
    """
    try:
        return rangecodec.check_int32(int(text))
    except ValueError as e:
        raise argparse.ArgumentTypeError(
            str(e) if text.strip().lstrip("+-").isdigit() else f"not an integer: {text}"
        ) from None


#: An argparse type: a whole number, at least 1.
_positive = positive()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """
    Declare C{primes}'s arguments.

    @param parser: the subcommand's parser.
    """
    parser.add_argument("a", type=_int32, metavar="A", help="lower bound (int32)")
    parser.add_argument("b", type=_int32, metavar="B", help="upper bound (int32)")
    parser.add_argument(
        "-t",
        "--clients",
        type=_positive,
        default=1,
        metavar="N",
        help="concurrent clients, client i asks [A+1000i, B+1000i] (default 1)",
    )
    add_server_arguments(parser, 5051, "range port", 30.0, "on the network")


def ranges(a: int, b: int, clients: int) -> list[tuple[int, int]]:
    """
    The ranges the clients ask for.

    @raise ValueError: when one leaves the signed 32-bit range.
    """
    result = []
    for i in range(clients):
        lo, hi = a + rangecodec.STRIDE * i, b + rangecodec.STRIDE * i
        try:
            rangecodec.check_int32(lo)
            rangecodec.check_int32(hi)
        except ValueError:
            raise ValueError(
                f"client {i} would ask for [{lo}, {hi}], outside the 32-bit range"
            ) from None
        result.append((lo, hi))
    return result


def format_table(runs: list[ClientRun]) -> str:
    """
    The report: one row per client.
    """
    rows = [("range", "count", "sum", "verified", "time")]
    for o in runs:
        if o.error is not None:
            status = f"error: {o.error}"
        else:
            status = "yes" if o.problem is None else f"NO: {o.problem}"
        rows.append(
            (
                f"[{o.a}, {o.b}]",
                "-" if o.count is None else str(o.count),
                "-" if o.total is None else str(o.total),
                status,
                f"{o.seconds * 1000:.1f} ms",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    right = {1, 2, 4}
    lines = []
    for row in rows:
        cells = [
            cell.rjust(w) if i in right else cell.ljust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """
    Run the clients and print the table.

    @return: 0 when every client got a verified reply, else 1.
    """
    where = f"{args.host}:{args.port}"
    try:
        wanted = ranges(args.a, args.b, args.clients)
    except ValueError as e:
        print(f"primecount primes: {e}", file=sys.stderr)
        return 1
    with ThreadPoolExecutor(max_workers=min(len(wanted), 64)) as pool:
        runs = list(
            pool.map(
                lambda r: ask_range(args.host, args.port, r[0], r[1], args.timeout),
                wanted,
            )
        )
    errors = [o for o in runs if o.error is not None]
    if len(errors) == len(runs):
        print(f"primecount primes: {where}: {errors[0].error}", file=sys.stderr)
        return 1
    print(format_table(runs))
    if errors:
        print(
            f"primecount primes: {where}: {len(errors)} of {len(runs)} clients "
            f"failed: {errors[0].error}",
            file=sys.stderr,
        )
        return 1
    return 0 if all(o.problem is None for o in runs) else 1
