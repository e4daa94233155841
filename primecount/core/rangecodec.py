# -*- test-case-name: tests.unit.test_rangeprotocol,tests.unit.test_cli_primes -*-
"""
The range protocol's codec: the byte layouts of its four messages.

Pure functions, free of Twisted, shared by the server, the C{primecount
primes} multi-client and the benchmark so they can never disagree on the wire
format (C{docs/user/range-protocol.md}):

    1. client -> server: the request, a and b as C{!ii};
    2. server -> client: N, the number of primes in [a, b], as C{!I};
    3. server -> client: the N primes in increasing order, each C{!I};
    4. client -> server: the sum of the primes it received, as C{!q}.
"""

from __future__ import annotations

import struct

import numpy as np
import numpy.typing as npt

#: A request: the bounds a and b, signed 32-bit, big-endian.
REQUEST_STRUCT = struct.Struct("!ii")
#: The count N that precedes the primes, unsigned 32-bit, big-endian.
COUNT_STRUCT = struct.Struct("!I")
#: The client's sum of the primes it received, signed 64-bit, big-endian.
SUM_STRUCT = struct.Struct("!q")
#: Bytes per prime on the wire.
PRIME_SIZE = 4
#: The numpy dtype of a prime on the wire.
WIRE_DTYPE = np.dtype(">u4")

INT32_MIN = -(1 << 31)
INT32_MAX = (1 << 31) - 1

#: The load clients (C{primecount primes}, C{primecount bench
#: --protocol range}) shift client i's range by C{STRIDE * i}:
#: [A + STRIDE·i, B + STRIDE·i], so that they ask different questions.
STRIDE = 1000


def check_int32(value: int) -> int:
    """
    Return C{value} if it fits a signed 32-bit integer.

    @raise ValueError: when it does not.
    """
    if not INT32_MIN <= value <= INT32_MAX:
        raise ValueError(f"{value} is outside the 32-bit range [{INT32_MIN}, {INT32_MAX}]")
    return value


def encode_request(a: int, b: int) -> bytes:
    """
    The wire form of a request for the primes in [a, b].

    @raise ValueError: when a bound does not fit a signed 32-bit integer.
    """
    return REQUEST_STRUCT.pack(check_int32(a), check_int32(b))


def decode_request(data: bytes) -> tuple[int, int]:
    """
    The bounds (a, b) of a request of exactly C{REQUEST_STRUCT.size} bytes.
    """
    a, b = REQUEST_STRUCT.unpack(data)
    return a, b


def encode_count(count: int) -> bytes:
    """
    The wire form of N, the number of primes that follow.
    """
    return COUNT_STRUCT.pack(count)


def decode_count(data: bytes) -> int:
    """
    N from exactly C{COUNT_STRUCT.size} bytes.
    """
    (count,) = COUNT_STRUCT.unpack(data)
    return int(count)


def encode_primes(primes: npt.NDArray[np.uint32]) -> bytes:
    """
    The wire form of an array of primes: each one unsigned 32-bit big-endian.
    """
    return primes.astype(WIRE_DTYPE).tobytes()


def decode_primes(data: bytes) -> npt.NDArray[np.uint32]:
    """
    The primes in C{data}, a multiple of L{PRIME_SIZE} bytes, as a native
    C{uint32} array.
    """
    return np.frombuffer(data, dtype=WIRE_DTYPE).astype(np.uint32)


def prime_sum(primes: npt.NDArray[np.uint32]) -> int:
    """
    The exact sum of an array of primes (no overflow: even all primes below
    2**31 sum to less than 2**63).
    """
    return int(primes.sum(dtype=np.uint64))


def encode_sum(total: int) -> bytes:
    """
    The wire form of the client's sum.
    """
    return SUM_STRUCT.pack(total)


def decode_sum(data: bytes) -> int:
    """
    The client's sum from exactly C{SUM_STRUCT.size} bytes.
    """
    (total,) = SUM_STRUCT.unpack(data)
    return int(total)
