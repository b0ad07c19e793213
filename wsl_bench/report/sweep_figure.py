"""The difficulty sweep's figure: headline Dice and PxAP against measured conspicuity, one line per method.

One panel per metric (rows: Dice at the validation τ, PxAP) and class (columns). The x axis is the
level's measured lesion contrast for that class (median over the lesions of its test images), easiest
level on the left, each tick named by its level; a line joins a method's values level by level, with
its 95% bootstrap interval as a bar. A mark is filled where the method beats the floor and hollow where
it does not, so where a method breaks reads off its line. Colours and weights are the report's
(:mod:`wsl_bench.report.styles`): the baselines grey and dashed, GLAM and GMIC heavy; lines are
labelled directly at their last level (:func:`wsl_bench.report.drawing.label_column`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from wsl_bench.plotting import plt
from wsl_bench.report import summary
from wsl_bench.report.drawing import label_column, save
from wsl_bench.report.families import BASELINES, Family
from wsl_bench.report.styles import styles
from wsl_bench.saliency import CLASSES

METRICS = (("dice_val_tau", "dice_val_tau_ci_low", "dice_val_tau_ci_high", "Dice at validation τ"),
           ("pxap", "pxap_ci_low", "pxap_ci_high", "PxAP"))
"""Each row of panels: value, interval columns of ``sweep.csv`` and the axis label."""

DODGE = 0.012
"""Each method's points are shifted by this fraction of the x range times its index from the centre, so
intervals at the same level do not hide one another."""


def level_positions(table: pd.DataFrame, cls: str) -> dict[str, float]:
    """level → x of ``cls``'s panels: the class's median lesion contrast at that level; a level where the
    class has no measured lesion takes the generator's contrast factor scaled like the measured levels."""
    levels = table.drop_duplicates("level").sort_values("level_index")
    rows = table[table["class"] == cls].drop_duplicates("level").set_index("level")
    measured = {lv: float(rows.loc[lv, "contrast_median"]) for lv in rows.index
                if pd.notna(rows.loc[lv, "contrast_median"])}
    factors = dict(zip(levels["level"], levels["lesion_contrast"].astype(float), strict=True))
    scale = np.median([measured[lv] / factors[lv] for lv in measured]) if measured else 1.0
    return {lv: measured.get(lv, factors[lv] * scale) for lv in levels["level"]}


def draw(table: pd.DataFrame, methods: Sequence[str], family: Mapping[str, Family], out: Path,
         name: str = "sweep") -> str:
    """Write ``name``.png/.pdf in ``out`` from the ``sweep.csv`` rows ``table``; return ``name``."""
    style = styles(list(methods), dict(family))
    classes = [c for c in CLASSES if (table["class"] == c).any()]
    fig, axes = plt.subplots(len(METRICS), len(classes), figsize=(6.4 * len(classes), 4.4 * len(METRICS)),
                             squeeze=False)
    fig.subplots_adjust(wspace=0.42, hspace=0.38)
    for col, cls in enumerate(classes):
        x_of = level_positions(table, cls)
        span = (max(x_of.values()) - min(x_of.values())) or 1.0
        rows = table[table["class"] == cls]
        for row, (value, low, high, label) in enumerate(METRICS):
            ax = axes[row][col]
            labels = []
            top = 0.0
            for k, method in enumerate(methods):
                mine = rows[rows["method"] == method].sort_values("level_index")
                mine = mine[mine[value].notna()]
                if mine.empty:
                    continue
                s = style[method]
                shift = (k - (len(methods) - 1) / 2) * DODGE * span
                x = np.array([x_of[lv] for lv in mine["level"]]) + shift
                y = mine[value].to_numpy(dtype=float)
                err = np.vstack([np.clip(y - mine[low].to_numpy(dtype=float), 0, None),
                                 np.clip(mine[high].to_numpy(dtype=float) - y, 0, None)])
                err = np.nan_to_num(err)
                top = max(top, float(np.nanmax(y + err[1])))
                ax.errorbar(x, y, yerr=err, color=s.colour, linewidth=0, elinewidth=0.9, alpha=0.55, capsize=2,
                            zorder=s.zorder - 1)
                ax.plot(x, y, color=s.colour, linewidth=s.linewidth, linestyle=s.linestyle, zorder=s.zorder)
                floor = family[method] is BASELINES
                for xi, yi, verdict in zip(x, y, mine["verdict"], strict=True):
                    hollow = not floor and verdict == summary.BELOW
                    size = s.markersize * (0.6 if s.weight == "bold" else 0.75)
                    ax.plot([xi], [yi], marker=s.marker, markersize=size,
                            color=s.colour, markerfacecolor="white" if hollow else s.colour,
                            markeredgewidth=1.4, zorder=s.zorder + 1, linestyle="none")
                labels.append((method, x[-1], y[-1], s))
            ax.set_ylim(0, max(top * 1.08, 0.05))
            ax.set_xlim(max(x_of.values()) + 0.08 * span, min(x_of.values()) - 0.08 * span)  # easiest level left
            ax.set_xticks(list(x_of.values()))
            ax.set_xticklabels([f"{lv}\n{x:.2f}" for lv, x in x_of.items()], fontsize=8)
            ax.set_xlabel(f"median lesion contrast of the {cls} lesions (breast sd) → harder", fontsize=9)
            ax.set_ylabel(label)
            ax.set_title(f"{cls} lesions: {label}", fontsize=10)
            ax.grid(alpha=0.25)
            label_column(ax, labels, 1.03)
    fig.suptitle("Where each method breaks: headline Dice and PxAP against measured lesion conspicuity\n"
                 "filled marks beat the floor, hollow ones do not; grey dashed lines: the baselines (the floor); "
                 "bars: 95% intervals", fontsize=10)
    save(fig, out, name)
    return name
