# -*- test-case-name: tests.unit.test_primes -*-
"""
Tests for L{primecount.core.primes}: the sieve and the counts against a slow,
obvious reference.
"""

from __future__ import annotations

import itertools

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import TestCase

from primecount.core.primes import (
    INT32_MAX,
    SEGMENT_SIZE,
    count_between,
    is_prime,
    most_primes_between,
    prime_pi,
    primes_between,
    segment_bounds,
    segments,
)

INT32_MIN = -(1 << 31)


def slow_is_prime(n: int) -> bool:
    """
    Trial division by every integer up to sqrt(n): obviously right.
    """
    if n < 2:
        return False
    d = 2
    while d * d <= n:
        if n % d == 0:
            return False
        d += 1
    return True


def reference(a: int, b: int) -> list[int]:
    """
    The primes in [a, b], one trial division at a time.
    """
    return [n for n in range(max(a, 0), b + 1) if slow_is_prime(n)]


small_ranges = st.tuples(
    st.integers(min_value=-100, max_value=20000),
    st.integers(min_value=-5, max_value=400),
).map(lambda t: (t[0], t[0] + t[1]))
high_ranges = st.tuples(
    st.integers(min_value=INT32_MAX - 10**6, max_value=INT32_MAX),
    st.integers(min_value=-5, max_value=200),
).map(lambda t: (t[0], min(t[0] + t[1], INT32_MAX)))


class PrimesBetweenTests(TestCase):
    """
    L{primes_between} lists exactly the primes of a range, in order.
    """

    def assertSieve(self, a: int, b: int) -> None:
        """
        L{primes_between}, L{count_between} and L{segments} agree with
        L{reference} on [a, b].
        """
        expected = reference(a, b)
        found = primes_between(a, b)
        self.assertEqual(found.dtype, np.uint32)
        self.assertEqual(found.tolist(), expected)
        self.assertEqual(count_between(a, b), len(expected))

    @settings(max_examples=300, deadline=None)
    @given(small_ranges)
    def test_smallRangesMatchReference(self, bounds: tuple[int, int]) -> None:
        """
        Random small ranges give the same primes as trial division.
        """
        self.assertSieve(*bounds)

    @settings(max_examples=25, deadline=None)
    @given(high_ranges)
    def test_rangesNearInt32MaxMatchReference(self, bounds: tuple[int, int]) -> None:
        """
        Ranges at the top of the int32 range (base primes up to 46337
        matter there) give the same primes as trial division.
        """
        self.assertSieve(*bounds)

    def test_emptyWhenAAboveB(self) -> None:
        """
        a > b is a valid request with no primes.
        """
        for a, b in [(10, 9), (3, 2), (INT32_MAX, INT32_MIN), (0, -1)]:
            self.assertEqual(primes_between(a, b).tolist(), [])
            self.assertEqual(count_between(a, b), 0)

    def test_negativesStartAtTwo(self) -> None:
        """
        Negative lower bounds are sieved from 2.
        """
        self.assertEqual(primes_between(INT32_MIN, 10).tolist(), [2, 3, 5, 7])
        self.assertEqual(primes_between(-5, -1).tolist(), [])
        self.assertEqual(count_between(INT32_MIN, 100), 25)

    def test_smallEdges(self) -> None:
        """
        0, 1 and 2 as bounds.
        """
        self.assertEqual(primes_between(0, 0).tolist(), [])
        self.assertEqual(primes_between(0, 1).tolist(), [])
        self.assertEqual(primes_between(1, 1).tolist(), [])
        self.assertEqual(primes_between(0, 2).tolist(), [2])
        self.assertEqual(primes_between(2, 2).tolist(), [2])
        self.assertEqual(primes_between(2, 3).tolist(), [2, 3])
        self.assertEqual(primes_between(1, 13).tolist(), [2, 3, 5, 7, 11, 13])

    def test_wheelPrimesAreKept(self) -> None:
        """
        3, 5, 7, 11 and 13, whose multiples come from the precomputed
        pattern, are themselves listed, whether a range starts, ends or
        merely passes through them.
        """
        for p in (3, 5, 7, 11, 13, 17):
            self.assertEqual(primes_between(p, p).tolist(), [p])
            self.assertIn(p, primes_between(p - 1, p + 1).tolist())

    def test_int32Max(self) -> None:
        """
        2**31 - 1 is prime and is the last number served.
        """
        self.assertEqual(primes_between(INT32_MAX, INT32_MAX).tolist(), [INT32_MAX])
        self.assertEqual(
            primes_between(INT32_MAX - 100, INT32_MAX).tolist(),
            reference(INT32_MAX - 100, INT32_MAX),
        )
        self.assertEqual(count_between(INT32_MAX, INT32_MAX), 1)

    def test_rangesStartingAndEndingOnPrimes(self) -> None:
        """
        Bounds that are primes are included.
        """
        self.assertEqual(primes_between(101, 113).tolist(), [101, 103, 107, 109, 113])
        self.assertEqual(primes_between(102, 112).tolist(), [103, 107, 109])
        p, q = 2147483629, INT32_MAX
        self.assertEqual(primes_between(p, q).tolist(), [p, q])

    def test_squaresOfBasePrimesAreComposite(self) -> None:
        """
        p * p is crossed off even when a segment starts exactly on it.
        """
        for p in (17, 19, 23, 46337):
            self.assertEqual(primes_between(p * p, p * p).tolist(), [])
            self.assertFalse(slow_is_prime(p * p))


class SegmentTests(TestCase):
    """
    L{segments} and L{segment_bounds} cut ranges without losing a prime.
    """

    @settings(max_examples=100, deadline=None)
    @given(small_ranges, st.integers(min_value=1, max_value=300))
    def test_segmentsConcatenateToTheRange(self, bounds: tuple[int, int], size: int) -> None:
        """
        However a range is cut, its segments hold its primes in order.
        """
        a, b = bounds
        parts = list(segments(a, b, segment_size=size))
        joined = np.concatenate(parts).tolist() if parts else []
        self.assertEqual(joined, reference(a, b))
        for part in parts:
            self.assertEqual(part.dtype, np.uint32)

    def test_boundsAreContiguousAndBounded(self) -> None:
        """
        Segments cover the range from 2 on, without gaps or overlaps, none
        wider than the segment size.
        """
        bounds = list(segment_bounds(-10, 1000, 64))
        self.assertEqual(bounds[0][0], 2)
        self.assertEqual(bounds[-1][1], 1000)
        for (_, hi), (lo, _) in itertools.pairwise(bounds):
            self.assertEqual(lo, hi + 1)
        self.assertTrue(all(hi - lo + 1 <= 64 for lo, hi in bounds))

    def test_noSegmentsWhenEmpty(self) -> None:
        """
        A range without numbers >= 2 has no segments.
        """
        self.assertEqual(list(segment_bounds(5, 4)), [])
        self.assertEqual(list(segment_bounds(-10, 1)), [])

    def test_boundsStopAtInt32Max(self) -> None:
        """
        The last segment of a range reaching 2**31 - 1 ends there.
        """
        bounds = list(segment_bounds(INT32_MAX - 10, INT32_MAX, 4))
        self.assertEqual(bounds[-1][1], INT32_MAX)

    def test_badSegmentSize(self) -> None:
        """
        A segment size below 1 is refused.
        """
        self.assertRaises(ValueError, list, segment_bounds(0, 10, 0))

    def test_primesAcrossSegmentBoundaries(self) -> None:
        """
        Primes right at either side of a default-size segment boundary are
        kept: and [0, 2 * SEGMENT_SIZE] (pi(2**22) = 295947) is counted right.
        """
        edge = SEGMENT_SIZE + 1
        around = primes_between(edge - 200, edge + 200).tolist()
        self.assertEqual(around, reference(edge - 200, edge + 200))
        self.assertEqual(count_between(0, 2 * SEGMENT_SIZE), 295947)

    def test_knownTotals(self) -> None:
        """
        [0, 10**7] holds 664579 primes summing to 3203324994356.
        """
        total = sum(int(s.sum(dtype=np.uint64)) for s in segments(0, 10**7))
        self.assertEqual(total, 3203324994356)
        self.assertEqual(sum(len(s) for s in segments(0, 10**7)), 664579)


class CountTests(TestCase):
    """
    L{count_between} and L{prime_pi} count without listing.
    """

    def test_primePiKnownValues(self) -> None:
        """
        pi(x) for known x.
        """
        known = {
            -1: 0,
            0: 0,
            1: 0,
            2: 1,
            3: 2,
            10: 4,
            100: 25,
            10**6: 78498,
            10**8: 5761455,
            INT32_MAX: 105097565,
        }
        for x, pi in known.items():
            self.assertEqual(prime_pi(x), pi, x)

    @settings(max_examples=200, deadline=None)
    @given(st.integers(min_value=0, max_value=30000))
    def test_primePiMatchesReference(self, x: int) -> None:
        """
        pi(x) equals the length of the reference list.
        """
        self.assertEqual(prime_pi(x), len(reference(0, x)))

    def test_wideRangesUsePrimePi(self) -> None:
        """
        A wide range is counted as pi(b) - pi(a - 1), and that agrees with
        sieving it.
        """
        a, b = 10**8 - 10**7, 10**8
        sieved = sum(len(s) for s in segments(a, b))
        self.assertEqual(count_between(a, b), sieved)
        self.assertEqual(count_between(a, b), prime_pi(b) - prime_pi(a - 1))

    @settings(max_examples=100, deadline=None)
    @given(small_ranges)
    def test_countIsLength(self, bounds: tuple[int, int]) -> None:
        """
        count_between is the length of primes_between.
        """
        self.assertEqual(count_between(*bounds), len(primes_between(*bounds)))

    def test_primePiRefusesBeyondInt32(self) -> None:
        """
        x beyond 2**31 - 1 is refused.
        """
        self.assertRaises(ValueError, prime_pi, INT32_MAX + 1)

    def test_isPrimeUnchanged(self) -> None:
        """
        L{is_prime} still answers like the reference.
        """
        for n in [*range(-3, 2000), 2**31 - 1, 2**61 - 1, 2**31 + 1]:
            self.assertEqual(is_prime(n), slow_is_prime(n) if n < 2**40 else True, n)


class MostPrimesTests(TestCase):
    """
    L{most_primes_between}: what a range stream reserves of the memory
    budget before sieving a segment is never less than what it sieves.
    """

    @given(
        st.one_of(
            st.integers(0, 3_000_000), st.integers(INT32_MAX - (1 << 24), INT32_MAX - 70_000)
        ),
        st.one_of(st.integers(0, 200), st.integers(0, 1 << 16)),
    )
    @settings(max_examples=300, deadline=None)
    def test_neverBelowTheCount(self, lo: int, length: int) -> None:
        hi = lo + length
        self.assertGreaterEqual(most_primes_between(lo, hi), len(primes_between(lo, hi)))

    def test_segmentsNearTheTop(self) -> None:
        """
        For a default segment among large numbers, the bound is within a
        quarter of the count: a reservation does not hold back much more than
        a segment holds.
        """
        lo = INT32_MAX - SEGMENT_SIZE + 1
        count = len(primes_between(lo, INT32_MAX))
        bound = most_primes_between(lo, INT32_MAX)
        self.assertGreaterEqual(bound, count)
        self.assertLess(bound, count * 5 // 4)
