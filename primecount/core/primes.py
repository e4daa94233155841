# -*- test-case-name: tests.unit.test_primes -*-
"""
Prime arithmetic, free of Twisted.

L{is_prime} answers the count protocol's small questions from a table.
L{segments}, L{primes_between} and L{count_between} serve the range protocol:
a numpy segmented sieve of Eratosthenes over odd numbers, with the multiples
of 3, 5, 7, 11 and 13 removed by copying a precomputed pattern, for any
range inside [0, 2**31 - 1]. numpy releases the GIL inside its array
operations, so sieve jobs in a thread pool leave room for the reactor.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator

import numpy as np
import numpy.typing as npt

from primecount.core.rangecodec import INT32_MAX

_TABLE_LIMIT = 1 << 16


def _small_table(limit: int) -> bytearray:
    """
    A sieve of Eratosthenes: C{table[n]} is 1 exactly when n is prime.
    """
    table = bytearray([1]) * (limit + 1)
    table[0:2] = b"\x00\x00"
    for p in range(2, int(limit**0.5) + 1):
        if table[p]:
            table[p * p :: p] = bytes(len(range(p * p, limit + 1, p)))
    return table


_TABLE = _small_table(_TABLE_LIMIT)

# Deterministic Miller-Rabin witnesses for every n < 3.3e24.
_WITNESSES = (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41)


def is_prime(n: int) -> bool:
    """
    Whether C{n} is prime: a table look-up for small n, deterministic
    Miller-Rabin beyond it.
    """
    if n <= _TABLE_LIMIT:
        return n >= 0 and bool(_TABLE[n])
    if n % 2 == 0:
        return False
    d, s = n - 1, 0
    while d % 2 == 0:
        d //= 2
        s += 1
    for a in _WITNESSES:
        x = pow(a, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(s - 1):
            x = x * x % n
            if x == n - 1:
                break
        else:
            return False
    return True


# -- The segmented sieve ----------------------------------------------------


#: Numbers covered by one segment (2 MiB of candidates, half of them odd):
#: one sieve job takes a few milliseconds and about 2 MiB of memory.
SEGMENT_SIZE = 1 << 21

#: Below this width L{count_between} sieves the range itself; above it,
#: computing pi(b) - pi(a - 1) with L{prime_pi} is cheaper.
COUNT_SIEVE_WIDTH = 1 << 23


def _base_primes(limit: int) -> npt.NDArray[np.int64]:
    """
    The primes up to C{limit}, by a plain numpy sieve of Eratosthenes.
    """
    table = np.ones(limit + 1, dtype=np.bool_)
    table[:2] = False
    for p in range(2, math.isqrt(limit) + 1):
        if table[p]:
            table[p * p :: p] = False
    return np.flatnonzero(table).astype(np.int64)


#: Every prime up to sqrt(INT32_MAX): enough to sieve any int32 range.
_BASE = _base_primes(math.isqrt(INT32_MAX) + 1)

#: The small odd primes removed by copying a precomputed pattern instead of
#: crossing off their multiples one prime at a time.
_WHEEL = (3, 5, 7, 11, 13)
_PERIOD = math.prod(_WHEEL)
#: The base primes that are crossed off explicitly.
_CROSSED = _BASE[np.searchsorted(_BASE, _WHEEL[-1], side="right") :]


def _wheel_pattern(length: int) -> npt.NDArray[np.bool_]:
    """
    A candidate pattern over odd numbers: entry j stands for 2j + 1 and is
    true unless that number is a multiple of a wheel prime. It is
    C{_PERIOD + length} long so that any window of C{length} entries can be
    sliced out of it at any phase.
    """
    odd = 2 * np.arange(_PERIOD, dtype=np.int64) + 1
    period = np.ones(_PERIOD, dtype=np.bool_)
    for p in _WHEEL:
        period[odd % p == 0] = False
    return np.resize(period, _PERIOD + length)


_PATTERN = _wheel_pattern(SEGMENT_SIZE // 2 + 1)


def _odd_sieve(lo: int, hi: int) -> npt.NDArray[np.bool_]:
    """
    Sieve the odd numbers C{lo, lo + 2, …, hi}.

    @param lo: an odd number, at least 1.
    @param hi: an odd number, at least C{lo}, at most L{INT32_MAX}.
    @return: a boolean array, entry i true exactly when C{lo + 2i} is prime.
    """
    length = (hi - lo) // 2 + 1
    pattern = _PATTERN
    if length + _PERIOD > len(pattern):
        pattern = _wheel_pattern(length)
    phase = (lo // 2) % _PERIOD
    seg = pattern[phase : phase + length].copy()
    primes = _CROSSED[: np.searchsorted(_CROSSED, math.isqrt(hi), side="right")]
    # The first odd multiple of p that is >= lo and >= p * p, for all p at once.
    first = np.maximum(primes * primes, -(-lo // primes) * primes)
    first += primes * (first % 2 == 0)
    starts = (first - lo) // 2
    for p, start in zip(primes.tolist(), starts.tolist(), strict=True):
        seg[start::p] = False
    for p in _WHEEL:
        if lo <= p <= hi:
            seg[(p - lo) // 2] = True
    if lo == 1:
        seg[0] = False
    return seg


def _clip(a: int, b: int) -> tuple[int, int] | None:
    """
    The part of [a, b] where primes can lie, or C{None} when there is none.
    """
    a = max(a, 2)
    b = min(b, INT32_MAX)
    return (a, b) if a <= b else None


def _sieve(a: int, b: int) -> npt.NDArray[np.uint32]:
    """
    The primes in [a, b] for 2 <= a <= b <= INT32_MAX, in one sieve pass.
    """
    lo = a | 1
    hi = b if b % 2 else b - 1
    odd: npt.NDArray[np.uint32] = np.empty(0, dtype=np.uint32)
    if lo <= hi:
        found = np.flatnonzero(_odd_sieve(lo, hi))
        odd = (found * 2 + lo).astype(np.uint32)
    if a == 2:
        return np.concatenate((np.array([2], dtype=np.uint32), odd))
    return odd


def _count(a: int, b: int) -> int:
    """
    How many primes lie in [a, b] for 2 <= a <= b <= INT32_MAX, in one pass.
    """
    lo = a | 1
    hi = b if b % 2 else b - 1
    odd = int(np.count_nonzero(_odd_sieve(lo, hi))) if lo <= hi else 0
    return odd + (a == 2)


def segment_bounds(a: int, b: int, segment_size: int = SEGMENT_SIZE) -> Iterator[tuple[int, int]]:
    """
    Cut [a, b] into consecutive segments of at most C{segment_size} numbers,
    skipping the part below 2 where no prime lies.

    @param a: the lower bound, any integer.
    @param b: the upper bound, any integer (clipped to L{INT32_MAX}).
    @param segment_size: numbers per segment, positive.
    @return: the inclusive bounds C{(lo, hi)} of each segment, in order.
    """
    if segment_size < 1:
        raise ValueError("segment_size must be positive")
    clipped = _clip(a, b)
    if clipped is None:
        return
    lo, b = clipped
    while lo <= b:
        hi = min(b, lo + segment_size - 1)
        yield lo, hi
        lo = hi + 1


def segments(a: int, b: int, segment_size: int = SEGMENT_SIZE) -> Iterator[npt.NDArray[np.uint32]]:
    """
    The primes in [a, b], one array per segment of L{segment_bounds}.

    Memory is bounded by C{segment_size}, whatever the width of the range.

    @param a: the lower bound, any integer.
    @param b: the upper bound, any integer.
    @param segment_size: numbers per segment.
    @return: an iterator of ascending C{uint32} arrays (some may be empty).
    """
    for lo, hi in segment_bounds(a, b, segment_size):
        yield _sieve(lo, hi)


def primes_between(a: int, b: int) -> npt.NDArray[np.uint32]:
    """
    All primes p with a <= p <= b, as one array.

    Meant for small ranges: the result itself grows with the range (use
    L{segments} to stream a wide one).

    @param a: the lower bound, any integer (below 2 means from 2).
    @param b: the upper bound, any integer (a > b gives no primes).
    @return: an ascending C{uint32} array.
    """
    parts = list(segments(a, b))
    if not parts:
        return np.empty(0, dtype=np.uint32)
    if len(parts) == 1:
        return parts[0]
    return np.concatenate(parts)


@functools.lru_cache(maxsize=1024)
def prime_pi(x: int) -> int:
    """
    pi(x), the number of primes <= x, for any x <= L{INT32_MAX}.

    Lucy Hedgehog's variant of Legendre's method with numpy arrays: it
    keeps S(v), the count of numbers in [2, v] that survive sieving by the
    primes so far, for the O(sqrt x) values v = x // i, and removes each
    prime's multiples from all of them in one array operation. About 60 ms
    for x = 2**31 - 1, against seconds for sieving [0, x]. Results are
    cached.

    @param x: any integer up to L{INT32_MAX}.
    @return: the number of primes <= x.
    """
    if x < 2:
        return 0
    if x > INT32_MAX:
        raise ValueError("x beyond INT32_MAX")
    root = math.isqrt(x)
    # small[v] = S(v) for v <= root; large[i] = S(x // i) for 1 <= i <= root.
    small = np.arange(-1, root, dtype=np.int64)
    small[0] = 0
    large = np.zeros(root + 1, dtype=np.int64)
    large[1:] = x // np.arange(1, root + 1, dtype=np.int64) - 1
    base = _BASE[: np.searchsorted(_BASE, root, side="right")]
    for below, p in enumerate(base.tolist()):
        # S(v) -= S(v // p) - S(p - 1) for every v >= p * p, right-hand
        # sides taken before this prime's update (numpy evaluates them first).
        top = min(root, x // (p * p))
        multiples = np.arange(p, top * p + 1, p, dtype=np.int64)
        inside = min(top, root // p)
        delta = np.empty(top, dtype=np.int64)
        delta[:inside] = large[multiples[:inside]]
        delta[inside:] = small[x // multiples[inside:]]
        large[1 : top + 1] -= delta - below
        if p * p <= root:
            v = np.arange(p * p, root + 1, dtype=np.int64)
            small[p * p :] -= small[v // p] - below
    return int(large[1])


def count_between(a: int, b: int) -> int:
    """
    The number of primes p with a <= p <= b, without listing them.

    A narrow range is sieved and counted; a wide one is answered as
    C{prime_pi(b) - prime_pi(a - 1)}, which costs at most a few tens of
    milliseconds (less when cached) whatever the width.

    @param a: the lower bound, any integer.
    @param b: the upper bound, any integer.
    @return: how many primes lie in [a, b] (0 when a > b).
    """
    clipped = _clip(a, b)
    if clipped is None:
        return 0
    a, b = clipped
    if b - a < COUNT_SIEVE_WIDTH:
        return sum(_count(lo, hi) for lo, hi in segment_bounds(a, b))
    return prime_pi(b) - prime_pi(a - 1)


def most_primes_between(lo: int, hi: int) -> int:
    """
    How many primes [lo, hi] may hold (0 <= lo <= hi), from above and
    without sieving: what a range stream reserves of the memory budget
    before it sieves a segment (the exact bytes replace it once sieved).

    Below 2^16 it is a proven bound: the least of the odd numbers and 2 in
    the interval, Montgomery and Vaughan's M{pi(x + y) - pi(x) < 2y / ln y}
    and Rosser and Schoenfeld's M{pi(x) < 1.25506 x / ln x}. Above, where
    those are three times the count, it is the prime number theorem's
    density at C{lo} with a margin, M{1.15 y / (ln lo - 1) + 64}: within a
    fifth of the count for a segment of 2^21 numbers near 2^31, and above
    it for every interval tested (C{tests.unit.test_primes}).
    """
    length = hi - lo + 1
    bound = length // 2 + 2
    if lo >= 1 << 16:
        return min(bound, math.ceil(1.15 * length / (math.log(lo) - 1)) + 64)
    if length > 1 and lo >= 2:
        bound = min(bound, math.ceil(2 * length / math.log(length)))
    if hi > 1:
        bound = min(bound, math.ceil(1.25506 * hi / math.log(hi)))
    return max(0, bound)
