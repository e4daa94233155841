# -*- test-case-name: tests.test_primes -*-
"""
Prime arithmetic, free of Twisted.

L{is_prime} answers the count protocol's small questions from a table.
"""

from __future__ import annotations

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
