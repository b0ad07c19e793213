"""The report's figures (matplotlib, headless), each written as PNG and PDF.

Each function takes parsed run data and writes one figure (the qualitative maps several:
:mod:`wsl_bench.report.qualitative`); :func:`draw_all` draws every figure the run's records support
and returns what it drew, with a caption saying what a reader sees.

Twenty methods stay readable (:mod:`wsl_bench.report.styles`): methods are drawn by family, one
panel per family where a panel would otherwise hold them all; methods whose maps are identical on
every image (:mod:`wsl_bench.report.equivalence`) are drawn once, labelled ``cam ≡ gradcam +3``;
lines and points are labelled directly, in columns that never overlap
(:func:`wsl_bench.report.labels.spread`); GLAM and GMIC keep their colour and a heavy mark.

Dice in the figures is the headline Dice: per-image Dice at the method's validation-selected
threshold (``tau_val`` of ``results.csv``), computed from each record's histograms. Methods and
classes without one get no points (a "no val τ" mark in the box plot); only when no method and
class of the run has one do the figures show Dice at τ = 0.5 instead, and their titles say so.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from wsl_bench.evaluation.metrics import dice_per_image_at_threshold
from wsl_bench.evaluation.records import decode_counts
from wsl_bench.plotting import CLASS_COLOURS, plt
from wsl_bench.report import qualitative
from wsl_bench.report.drawing import Plan, label_column, label_points, save
from wsl_bench.report.equivalence import IdenticalGroup
from wsl_bench.report.families import BASELINES, FAMILIES, FLOOR, families, ordered
from wsl_bench.report.formatting import duration
from wsl_bench.report.page import FigureEntry
from wsl_bench.report.styles import FAMILY_MARKERS, styles
from wsl_bench.saliency import CLASSES

if TYPE_CHECKING:
    from wsl_bench.report.run_data import RunData

log = logging.getLogger(__name__)

HEADLINE_LABEL = "Dice at validation τ"
FALLBACK_LABEL = "Dice at τ = 0.5 (no validation τ in this run: see results.md)"


def _taus(results: pd.DataFrame | None) -> dict[tuple[str, str], float]:
    """(method, class) → validation-selected τ, where there is one."""
    if results is None or "tau_val" not in results:
        return {}
    return {(r["method"], r["class"]): float(r["tau_val"]) for _, r in results.iterrows()
            if pd.notna(r["tau_val"])}


def _per_image_frame(data: RunData, results: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per ok record (evaluated split) and class with a lesion: method, image, class, Dice at
    the validation τ (NaN without one), Dice at 0.5, lesion fraction."""
    taus = _taus(results)
    rows = []
    for r in data.records:
        if r["status"] != "ok":
            continue
        for cls in CLASSES:
            if r["has_lesion"].get(cls):
                tau = taus.get((r["method"], cls))
                hist = (r.get("hist") or {}).get(cls)
                at_val_tau = float("nan")
                if tau is not None and hist:
                    pos, neg = decode_counts(hist["pos"])[None], decode_counts(hist["neg"])[None]
                    at_val_tau = float(dice_per_image_at_threshold(pos, neg, tau)[0])
                rows.append(
                    {
                        "method": r["method"],
                        "image_id": r["image_id"],
                        "class": cls,
                        "dice_val_tau": at_val_tau,
                        "dice_at_0_5": r["dice"][cls],
                        "lesion_fraction": (r.get("lesion_fraction") or {}).get(cls),
                    }
                )
    return pd.DataFrame(rows, columns=["method", "image_id", "class", "dice_val_tau", "dice_at_0_5",
                                       "lesion_fraction"])


def _headline(frame: pd.DataFrame) -> tuple[str, str]:
    """The Dice column the figures show and its label: the headline where the run has any."""
    if frame["dice_val_tau"].notna().any():
        return "dice_val_tau", HEADLINE_LABEL
    return "dice_at_0_5", FALLBACK_LABEL


def dice_boxplot(data: RunData, out: Path, results: pd.DataFrame | None = None, plan: Plan | None = None) -> bool:
    """Per-image headline Dice, one box per method drawn, methods by family, one panel per class."""
    frame = _per_image_frame(data, results)
    if frame.empty:
        return False
    plan = plan or Plan.of(data)
    column, label = _headline(frame)
    shown = plan.shown()
    # One row per class: with twenty methods side-by-side panels become unreadably wide.
    fig, axes = plt.subplots(len(CLASSES), 1, figsize=(max(6, 0.55 * len(shown) + 1.5), 3.6 * len(CLASSES)),
                             sharey=True)
    for ax, cls in zip(np.atleast_1d(axes), CLASSES, strict=True):
        sub = frame[frame["class"] == cls]
        values = [sub[sub["method"] == m][column].dropna().to_numpy() for m in shown]
        positions = [i for i, v in enumerate(values) if len(v)]
        if positions:
            ax.boxplot([values[i] for i in positions], positions=positions, widths=0.6, showmeans=True,
                       patch_artist=True, boxprops={"facecolor": CLASS_COLOURS[cls], "alpha": 0.35},
                       meanprops={"marker": "^", "markerfacecolor": "black", "markeredgecolor": "black"})
        for i, method in enumerate(shown):
            if not len(values[i]) and (sub["method"] == method).any():
                ax.text(i, 0.5, "no val τ", rotation=90, ha="center", va="center", fontsize=7, color="grey")
        # family blocks: a rule between families, the family's name above its block
        start = 0
        for fam in FAMILIES:
            count = sum(plan.family[m] is fam for m in shown)
            if not count:
                continue
            if start:
                ax.axvline(start - 0.5, color="#888", linewidth=0.8)
            ax.text((start + start + count - 1) / 2, 1.0, fam.short, ha="center", va="bottom", fontsize=8,
                    color="#444", transform=ax.get_xaxis_transform())
            start += count
        ax.set_xticks(range(len(shown)), [plan.label(m) for m in shown], rotation=45, ha="right")
        for tick, method in zip(ax.get_xticklabels(), shown, strict=True):
            tick.set_color(plan.style[method].colour if plan.style[method].weight == "bold" else "black")
            tick.set_fontweight(plan.style[method].weight)
        ax.set_title(f"{cls} lesions (n images = {sub['image_id'].nunique()})", pad=14)
        ax.set_xlim(-0.6, len(shown) - 0.4)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(axis="y", alpha=0.3)
        ax.set_ylabel(f"{label.split(' (')[0]} (per image)")
    fig.suptitle(f"Per-image {label} (box: quartiles, ▲: mean)")
    fig.tight_layout()
    save(fig, out, "dice_boxplot")
    return True


def _binned_means(x: np.ndarray, y: np.ndarray, edges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean of ``y`` in each bin of ``x`` (bins ``edges``, the last one closed), at the bins' geometric
    centres; empty bins are left out."""
    centres, means = [], []
    for i, (lo, hi) in enumerate(zip(edges[:-1], edges[1:], strict=True)):
        inside = (x >= lo) & ((x < hi) if i < len(edges) - 2 else (x <= hi))
        if inside.any():
            centres.append(np.sqrt(max(lo, 1e-6) * hi))
            means.append(float(y[inside].mean()))
    return np.array(centres), np.array(means)


def _percent_axis(ax: plt.Axes) -> None:
    """Log x axis in % with ticks at 1, 2, 5 × 10^k written plainly (no 2×10⁻¹ clutter)."""
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())


def _floor_method(results: pd.DataFrame | None, cls: str, plan: Plan, column: str) -> str | None:
    """The baseline with the best mean headline Dice for ``cls`` (the floor of the summary)."""
    if results is None:
        return None
    rows = results[(results["class"] == cls) & results["method"].isin(plan.floor())].dropna(subset=[column])
    return None if rows.empty else str(rows.loc[rows[column].idxmax(), "method"])


def dice_vs_lesion_size(data: RunData, out: Path, results: pd.DataFrame | None = None,
                        plan: Plan | None = None) -> bool:
    """Per-image headline Dice against lesion area (% of the image, log scale): one row of panels per
    family, one column per class; each method's binned mean as a labelled line over its faint points,
    the floor (the best baseline) as a grey dashed line in every panel."""
    frame = _per_image_frame(data, results).dropna(subset=["lesion_fraction"])
    if frame.empty:
        return False
    plan = plan or Plan.of(data)
    column, label = _headline(frame)
    frame = frame.dropna(subset=[column])
    frame = frame[frame["lesion_fraction"] > 0]
    panels = plan.panels() or [(BASELINES, plan.floor())]
    if frame.empty or not panels:
        return False
    fig, axes = plt.subplots(len(panels), len(CLASSES), figsize=(13, 3.3 * len(panels) + 0.8), sharey=True,
                             squeeze=False)
    fig.subplots_adjust(left=0.07, right=0.86, top=1 - 0.7 / fig.get_figheight(), bottom=0.55 / fig.get_figheight(),
                        wspace=0.42, hspace=0.42)
    hidden = plan.hidden()
    for col, cls in enumerate(CLASSES):
        sub = frame[frame["class"] == cls]
        x_all = 100 * sub["lesion_fraction"].to_numpy(dtype=np.float64)
        if not len(x_all):
            continue
        edges = np.quantile(x_all, np.linspace(0, 1, 5))  # the same 4 size bins for every method of the class
        floor = _floor_method(results, cls, plan, column)
        for row, (fam, members) in enumerate(panels):
            ax = axes[row, col]
            items = []
            drawn = ([floor] if floor and fam is not BASELINES else []) + members
            for method in drawn:
                points = sub[sub["method"] == method]
                if points.empty:
                    continue
                style = plan.style[method]
                x = 100 * points["lesion_fraction"].to_numpy(dtype=np.float64)
                y = points[column].to_numpy(dtype=np.float64)
                if method != floor or fam is BASELINES:
                    ax.scatter(x, y, s=9, alpha=0.3, color=style.colour, linewidths=0, zorder=style.zorder - 1)
                centres, means = _binned_means(x, y, edges)
                if not len(centres):
                    continue
                ax.plot(centres, means, color=style.colour, linewidth=style.linewidth, linestyle=style.linestyle,
                        marker="o", markersize=3, zorder=style.zorder)
                text = f"floor: {method}" if method == floor and fam is not BASELINES else plan.label(method)
                items.append((text, centres[-1], means[-1], style))
            _percent_axis(ax)
            ax.set_ylim(-0.02, 1.02)
            ax.grid(alpha=0.3)
            if row == len(panels) - 1:
                ax.set_xlabel("lesion area (% of image, log scale)")
            if col == 0:
                ax.set_ylabel(label.split(" (")[0])
            title = f"{cls} lesions · {fam.short}"
            twins = []  # drawn under their group's first method, perhaps in another family's panel
            for group in plan.groups:
                mine = [o for o in group.methods[1:] if plan.family[o] is fam and o in hidden]
                if mine:
                    twins.append(f"{', '.join(mine)} ≡ {group.methods[0]}: drawn as {group.methods[0]}")
            if twins:
                title += f"\n({'; '.join(twins)})"
            ax.set_title(title, fontsize=10 if not twins else 9)
            label_column(ax, items, 1.03)
    fig.suptitle(f"{label} against lesion size, by method family (line: mean per lesion-size quartile; "
                 f"dots: images)", fontsize=11)
    save(fig, out, "dice_vs_lesion_size")
    return True


def _time_tick(seconds: float) -> str:
    """A tick of a log time axis with its unit and no trailing zeros: ``1 ms``, ``10 ms``, ``1 s``."""
    text, unit = duration(seconds).split(" ")
    return f"{float(text):g} {unit}"


def cost_vs_dice(results: pd.DataFrame, out: Path, plan: Plan | None = None) -> bool:
    """Median time per image (log scale) against mean headline Dice, one panel per class, every method
    drawn (identical ones once) and labelled; the floor's Dice as a dashed line."""
    if results["dice_val_tau"].notna().any():
        column, label = "dice_val_tau", f"mean {HEADLINE_LABEL}"
    else:
        column, label = "dice_at_0_5", f"mean {FALLBACK_LABEL}"
    frame = results.dropna(subset=["time_median_s", column])
    if frame.empty:
        return False
    if plan is None:
        methods = list(dict.fromkeys(results["method"]))
        family = families(methods, {})
        plan = Plan(ordered(methods, {}), family, styles(ordered(methods, {}), family))
    shown = set(plan.shown())
    frame = frame[frame["method"].isin(shown)]
    fig, axes = plt.subplots(1, len(CLASSES), figsize=(14, 5.6), sharey=True, squeeze=False)
    fig.subplots_adjust(left=0.06, right=0.86, wspace=0.45, top=0.86, bottom=0.12)
    times = frame["time_median_s"].clip(lower=1e-6)
    x_range = (times.min() / 2, times.max() * 2)
    y_top = max(0.1, float(frame[column].max()) * 1.12)
    for ax, cls in zip(axes[0], CLASSES, strict=True):
        sub = frame[frame["class"] == cls]
        ax.set_xscale("log")
        ax.set_xlim(*x_range)
        ax.set_ylim(-0.02 * y_top, y_top)  # a point at Dice 0 shows whole
        floor_rows = sub[sub["method"].isin(FLOOR)]
        if not floor_rows.empty:
            best = floor_rows.loc[floor_rows[column].idxmax()]
            ax.axhline(best[column], color="#777", linestyle=(0, (5, 2)), linewidth=1, zorder=1)
        items = []
        for _, row in sub.iterrows():
            method = row["method"]
            style = plan.style.get(method)
            if style is None:
                continue
            x, y = max(float(row["time_median_s"]), 1e-6), float(row[column])
            ax.scatter([x], [y], marker=style.marker, s=style.markersize ** 2, color=style.colour,
                       edgecolors="white" if style.weight == "bold" else "none", linewidths=0.8, zorder=style.zorder)
            items.append((plan.label(method), x, y, style))
        # beside each point where there is room; the crowded ones in a column right of the panel
        label_points(ax, items)
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: _time_tick(v)))
        ax.set_xlabel("median time per image (log scale)")
        ax.set_title(f"{cls} lesions", fontsize=10)
        ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel(label)
    handles = [plt.Line2D([], [], linestyle="", marker=FAMILY_MARKERS[f.key], color="#555", label=f.short)
               for f in FAMILIES if any(plan.family[m] is f for m in plan.methods)]
    handles.append(plt.Line2D([], [], color="#777", linestyle=(0, (5, 2)), label="floor: best baseline's Dice"))
    fig.legend(handles=handles, loc="upper center", ncol=len(handles), frameon=False, fontsize=8,
               bbox_to_anchor=(0.46, 0.955), title=None)
    fig.suptitle("Cost against localisation quality (marker: family; GLAM ★ and GMIC ◆ in bold)", fontsize=11)
    save(fig, out, "cost_vs_dice")
    return True


CAPTIONS = {
    "dice_boxplot": "Per-image headline Dice of every method drawn (identical ones once, labelled ≡), grouped by "
                    "family with the trivial baselines last; one panel per class.",
    "dice_vs_lesion_size": "Per-image headline Dice against lesion area, one row per method family and one column "
                           "per class. Each line is a method's mean Dice per lesion-size quartile, labelled at its "
                           "right end; the grey dashed line is the floor (the best baseline of the class); GLAM and "
                           "GMIC are the thick blue and orange lines.",
    "cost_vs_dice": "Median time per image against mean headline Dice, one panel per class; every method labelled "
                    "(identical ones once, ≡), marker by family, the floor's Dice dashed.",
}


def draw_all(data: RunData, results: pd.DataFrame, out: Path,
             groups: Sequence[IdenticalGroup] = ()) -> list[FigureEntry]:
    """Draw every figure the records support; a figure that fails is logged, never fatal."""
    plan = Plan.of(data, groups)
    drawn: list[FigureEntry] = []
    drawers: list[tuple[str, Callable[[], Any]]] = [
        ("qualitative", lambda: qualitative.draw(data, out, plan)),
        ("dice_boxplot", lambda: dice_boxplot(data, out, results, plan)),
        ("dice_vs_lesion_size", lambda: dice_vs_lesion_size(data, out, results, plan)),
        ("cost_vs_dice", lambda: cost_vs_dice(results, out, plan)),
    ]
    for name, draw in drawers:
        try:
            result = draw()
        except Exception as exc:
            log.warning("figure %s could not be drawn: %s", name, exc)
            plt.close("all")
            continue
        if isinstance(result, list):
            drawn += result
        elif result:
            drawn.append(FigureEntry(name, name.replace("_", " "), CAPTIONS.get(name, "")))
    return drawn
