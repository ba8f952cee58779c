"""Kubernetes resource quantities ("500m", "2Gi", "1e3") as exact numbers.

Guarantees:
- `parse_quantity(text)` accepts exactly the canonical quantity grammar of Kubernetes (sign, decimal number,
  optional binary suffix Ki..Ei, decimal suffix n u m k M G T P E, or exponent e/E) and returns a `Fraction`;
  anything else raises `ValueError`. Integers and floats are accepted as plain numbers (as YAML decodes `cpu: 2`).
- Pure and exact: no floating-point rounding.
"""

from __future__ import annotations

import math
import re
from fractions import Fraction

_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {"n": -9, "u": -6, "m": -3, "": 0, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}
_QUANTITY = re.compile(
    r"^(?P<number>[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))"
    r"(?:(?P<binary>Ki|Mi|Gi|Ti|Pi|Ei)|(?P<exponent>[eE][+-]?[0-9]+)|(?P<decimal>[numkMGTPE]?))$"
)


def parse_quantity(value: object) -> Fraction:
    """Parse a Kubernetes quantity; raise ValueError when it is not one."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a quantity")
    if isinstance(value, int):
        return Fraction(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{value!r} is not a quantity")
        return Fraction(value)
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not a quantity")
    match = _QUANTITY.match(value.strip()) if len(value) <= 64 else None
    if not match:
        raise ValueError(f"{value!r} is not a quantity")
    number = Fraction(match["number"])
    if match["binary"]:
        return number * _BINARY[match["binary"]]
    if match["exponent"]:
        exponent = int(match["exponent"][1:])
        if abs(exponent) > 30:
            raise ValueError(f"{value!r} is out of range")
        return number * Fraction(10) ** exponent
    return number * Fraction(10) ** _DECIMAL[match["decimal"] or ""]


def ceil_quantity(value: object) -> int:
    """The quantity rounded up to a whole number (CPU "500m" -> 1)."""
    return math.ceil(parse_quantity(value))
