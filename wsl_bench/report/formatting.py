"""How the report writes numbers: one format per kind of quantity, never scientific notation.

Scores in [0, 1] (Dice, PxAP, AUC, thresholds) get three decimals, so a column lines up and two
methods compare digit by digit; costs get three significant digits and a unit (``0.218 ms``,
``56.9 ms``, ``1.23 s``), so a baseline's microseconds and a network's seconds read alike. A missing
value is an en dash.
"""

from __future__ import annotations

import math
from typing import Any

MISSING = "–"


def is_missing(value: Any) -> bool:
    """``None``, NaN or ±inf: nothing to show."""
    if value is None:
        return True
    try:
        return not math.isfinite(float(value))
    except (TypeError, ValueError):
        return True


def score(value: Any) -> str:
    """A value in [0, 1] with three decimals: ``0.231``."""
    return MISSING if is_missing(value) else f"{float(value):.3f}"


def score_sd(value: Any, sd: Any = None) -> str:
    """A score and its standard deviation over training seeds, ``0.231 ± 0.015``; the score alone
    when there is no sd (one seed, or a method scored once), so a one-seed report shows no ``± 0``."""
    return score(value) if is_missing(sd) or is_missing(value) else f"{score(value)} ± {float(sd):.3f}"


def interval(low: Any, high: Any) -> str:
    """``[0.138, 0.329]``, or nothing when either end is missing."""
    return "" if is_missing(low) or is_missing(high) else f"[{score(low)}, {score(high)}]"


def significant(value: Any, digits: int = 3) -> str:
    """``value`` to ``digits`` significant digits in positional notation: 0.000218, 56.9, 1010, 3570000.

    Integers beyond the significant digits are rounded (``1014.2`` → ``1010``), never written as ``1.01e+03``.
    """
    if is_missing(value):
        return MISSING
    value = float(value)
    if value == 0:
        return "0"
    exponent = math.floor(math.log10(abs(value)))
    decimals = max(digits - 1 - exponent, 0)
    rounded = round(value, digits - 1 - exponent)
    if math.floor(math.log10(abs(rounded))) > exponent:  # 9.996 → 10.0: one digit fewer after the point
        decimals = max(decimals - 1, 0)
    return f"{rounded:.{decimals}f}"


def duration(seconds: Any) -> str:
    """A time with its unit, three significant digits: ``218 µs``, ``56.9 ms``, ``1.23 s``."""
    if is_missing(seconds):
        return MISSING
    seconds = float(seconds)
    if seconds == 0:
        return "0 s"
    units = (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6))
    index = next((i for i, (_, scale) in enumerate(units) if abs(seconds) >= scale), len(units) - 1)
    text = significant(seconds / units[index][1])
    if index > 0 and abs(float(text)) >= 1000:  # 999.96 ms rounds to 1000 ms: write 1.00 s
        index -= 1
        text = significant(seconds / units[index][1])
    return f"{text} {units[index][0]}"


def quantity(value: Any, unit: str = "") -> str:
    """A cost other than time, three significant digits with ``unit`` after a space: ``871 MB``."""
    text = significant(value)
    return text if text == MISSING or not unit else f"{text} {unit}"


def count(value: Any) -> str:
    """An integer count: ``14``."""
    return MISSING if is_missing(value) else str(int(value))
