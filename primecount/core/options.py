"""
Coercers of numeric option values, shared by C{twistd primecount}'s
options and the C{primecount} console script's argparse types.

A bad value raises L{OptionValueError}, which both parsers report as one
line naming the rule (C{--threads wants a whole number, at least 1; got
'abc'}): twistd's C{usage.Options} catches a coercer's C{ValueError},
argparse a type's C{ArgumentTypeError}.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import Any


class OptionValueError(ValueError, argparse.ArgumentTypeError):
    """
    A value an option does not accept; the message names the rule.
    """


def number(
    kind: Callable[[str], Any],
    rule: str,
    low: float,
    high: float | None = None,
    option: str | None = None,
) -> Callable[[str], Any]:
    """
    The coercer of a numeric option: C{kind(value)} when it is finite and
    from C{low} to C{high}, else an L{OptionValueError} that names the rule
    (and C{--option}, when given; argparse names the option itself).

    The coercer's C{coerceDoc} (shown by C{usage.Options} in the help) is
    the rule.
    """
    name = f"--{option} wants" if option else "wants"

    def coerce(value: str) -> Any:
        try:
            found = kind(value)
        except ValueError:
            found = None
        if (
            found is None
            or not math.isfinite(found)
            or found < low
            or (high is not None and found > high)
        ):
            raise OptionValueError(f"{name} {rule}; got {value!r}")
        return found

    coerce.coerceDoc = f"({rule})"  # type: ignore[attr-defined]
    coerce.__name__ = kind.__name__
    return coerce


def positive(option: str | None = None) -> Callable[[str], int]:
    """
    The coercer of a whole number, at least 1.
    """
    return number(int, "a whole number, at least 1", 1, option=option)


def port(option: str | None = None) -> Callable[[str], int]:
    """
    The coercer of a TCP port number, 0 meaning any free port.
    """
    return number(int, "a whole number from 0 to 65535 (0: any free port)", 0, 65535, option)


def seconds(option: str | None = None, zero: str = "") -> Callable[[str], float]:
    """
    The coercer of a duration in seconds, 0 or more; C{zero} says what 0
    means.
    """
    rule = f"a number of seconds, 0 or more ({zero})" if zero else "a number of seconds, 0 or more"
    return number(float, rule, 0, option=option)
