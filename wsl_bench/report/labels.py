"""Direct labels that do not overlap: positions along one axis, each as close to its target as the
others allow.

The report's figures label lines and points directly (a legend of twenty similar colours cannot
be read) in a column beside the plot, joined to what they name by a thin leader line. Two labels
of a column overlap when their positions are closer than a label's height; :func:`spread` moves
them apart by as little as it can, in their order, inside the column's range.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def spread(targets: Sequence[float], gap: float, low: float, high: float) -> np.ndarray:
    """Positions for labels wanted at ``targets``: at least ``gap`` apart, within [low, high] where they fit.

    The order of the targets is kept (the label of the highest target is highest). With the labels
    sorted, write ``p_i = q_i + i·gap``: the spacing constraint becomes "q is non-decreasing", so the
    least-squares positions are the isotonic regression of ``target_i − i·gap`` (pool adjacent
    violators: a cluster of labels moves as a block centred on its targets), clipped to the range.
    When ``n`` labels need more than ``high − low`` they keep their spacing and overflow ``high``
    (a column taller than its plot is better than overlapping text).

    Args:
        targets: n wanted positions, any order.
        gap: the smallest distance between two positions (a label's height, in the same units).
        low, high: the range the positions should stay in.

    Returns:
        n positions, in the order of ``targets``.
    """
    values = np.asarray(targets, dtype=np.float64)
    n = len(values)
    if n == 0:
        return values.copy()
    order = np.argsort(values, kind="stable")
    steps = gap * np.arange(n)
    shifted = values[order] - steps
    # pool adjacent violators: blocks of [sum, count], each block's mean not above the next one's
    blocks: list[list[float]] = []
    for value in shifted:
        blocks.append([value, 1])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] > blocks[-1][0] / blocks[-1][1]:
            total, count = blocks.pop()
            blocks[-1][0] += total
            blocks[-1][1] += count
    fitted = np.concatenate([np.full(int(count), total / count) for total, count in blocks])
    fitted = np.clip(fitted, low, max(low, high - steps[-1]))  # optimal for a monotone fit with bounds
    result = np.empty(n)
    result[order] = fitted + steps
    return result
