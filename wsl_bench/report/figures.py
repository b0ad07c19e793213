"""The report's figures (matplotlib, headless), each written as PNG and PDF.

Each function takes parsed run data and writes one figure; :func:`draw_all` draws every figure
the run's records support and returns the names drawn.

Dice in the figures is the headline Dice: per-image Dice at the method's validation-selected
threshold (``tau_val`` of ``results.csv``), computed from each record's histograms. Methods and
classes without one get no points (a "no val τ" mark in the box plot); only when no method and
class of the run has one do the figures show Dice at τ = 0.5 instead, and their titles say so.
"""

from __future__ import annotations

import logging
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from wsl_bench.atomic_io import save_figure_atomic
from wsl_bench.evaluation.figure_maps import stored_figure_images
from wsl_bench.evaluation.metrics import dice_per_image_at_threshold
from wsl_bench.evaluation.records import decode_counts
from wsl_bench.plotting import CLASS_COLOURS, plt
from wsl_bench.saliency import CLASSES

if TYPE_CHECKING:
    from wsl_bench.report.tables import RunData

log = logging.getLogger(__name__)


def _save(fig: plt.Figure, out: Path, name: str) -> None:
    """Write ``name``.png and ``name``.pdf atomically (a kill or a full disk keeps the old files)."""
    try:
        save_figure_atomic(fig, out / f"{name}.png", dpi=120, bbox_inches="tight")
        save_figure_atomic(fig, out / f"{name}.pdf", bbox_inches="tight")
    finally:
        plt.close(fig)


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


def dice_boxplot(data: RunData, out: Path, results: pd.DataFrame | None = None) -> bool:
    """Per-image headline Dice, one box per method, one panel per class."""
    frame = _per_image_frame(data, results)
    if frame.empty:
        return False
    column, label = _headline(frame)
    # One row per class: with twenty methods side-by-side panels become unreadably wide.
    fig, axes = plt.subplots(len(CLASSES), 1, figsize=(max(6, 0.55 * len(data.methods) + 1.5), 3.4 * len(CLASSES)),
                             sharey=True)
    for ax, cls in zip(np.atleast_1d(axes), CLASSES, strict=True):
        sub = frame[frame["class"] == cls]
        values = [sub[sub["method"] == m][column].dropna().to_numpy() for m in data.methods]
        positions = [i for i, v in enumerate(values) if len(v)]
        if positions:
            ax.boxplot([values[i] for i in positions], positions=positions, widths=0.6, showmeans=True,
                       patch_artist=True, boxprops={"facecolor": CLASS_COLOURS[cls], "alpha": 0.35},
                       meanprops={"marker": "^", "markerfacecolor": "black", "markeredgecolor": "black"})
        for i, method in enumerate(data.methods):
            if not len(values[i]) and (sub["method"] == method).any():
                ax.text(i, 0.5, "no val τ", rotation=90, ha="center", va="center", fontsize=7, color="grey")
        ax.set_xticks(range(len(data.methods)), data.methods, rotation=45, ha="right")
        ax.set_title(f"{cls} lesions (n images = {sub['image_id'].nunique()})")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(axis="y", alpha=0.3)
        ax.set_ylabel(f"{label.split(' (')[0]} (per image)")
    fig.suptitle(f"Per-image {label} (box: quartiles, ▲: mean)")
    fig.tight_layout()
    _save(fig, out, "dice_boxplot")
    return True


def dice_vs_lesion_size(data: RunData, out: Path, results: pd.DataFrame | None = None) -> bool:
    """Per-image headline Dice against lesion area (% of the image, log scale), one panel per class."""
    frame = _per_image_frame(data, results).dropna(subset=["lesion_fraction"])
    if frame.empty:
        return False
    column, label = _headline(frame)
    frame = frame.dropna(subset=[column])
    fig, axes = plt.subplots(1, len(CLASSES), figsize=(12, 4.5), sharey=True)
    cmap = plt.get_cmap("tab20")
    for ax, cls in zip(np.atleast_1d(axes), CLASSES, strict=True):
        sub = frame[frame["class"] == cls]
        for i, method in enumerate(data.methods):
            points = sub[sub["method"] == method]
            if points.empty:
                continue
            x = 100 * points["lesion_fraction"].to_numpy(dtype=np.float64)
            y = points[column].to_numpy(dtype=np.float64)
            ax.scatter(x, y, s=12, alpha=0.5, color=cmap(i % 20), label=method)
            if len(x) >= 4:  # a running mean over log-spaced size bins shows the trend
                edges = np.quantile(x, np.linspace(0, 1, 5))
                centres, means = [], []
                for lo, hi in zip(edges[:-1], edges[1:], strict=True):
                    inside = (x >= lo) & (x <= hi)
                    if inside.any():
                        centres.append(np.sqrt(max(lo, 1e-6) * hi))
                        means.append(y[inside].mean())
                ax.plot(centres, means, color=cmap(i % 20), linewidth=1.5)
        ax.set_xscale("log")
        ax.set_xlabel("lesion area (% of image, log scale)")
        ax.set_title(f"{cls} lesions")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    np.atleast_1d(axes)[0].set_ylabel(label.split(" (")[0])
    handles, labels = np.atleast_1d(axes)[0].get_legend_handles_labels()
    if not handles:
        handles, labels = np.atleast_1d(axes)[-1].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), title="method (line: binned mean)")
    fig.suptitle(f"{label} against lesion size")
    fig.tight_layout()
    _save(fig, out, "dice_vs_lesion_size")
    return True


def cost_vs_dice(results: pd.DataFrame, out: Path) -> bool:
    """Median time per image (log scale) against mean headline Dice, one marker per method and class."""
    if results["dice_val_tau"].notna().any():
        column, label = "dice_val_tau", f"mean {HEADLINE_LABEL}"
    else:
        column, label = "dice_at_0_5", f"mean {FALLBACK_LABEL}"
    frame = results.dropna(subset=["time_median_s", column])
    if frame.empty:
        return False
    fig, ax = plt.subplots(figsize=(7.5, 5))
    for cls, marker in zip(CLASSES, ("o", "s"), strict=True):
        sub = frame[frame["class"] == cls]
        ax.scatter(sub["time_median_s"].clip(lower=1e-5), sub[column], marker=marker, s=50,
                   color=CLASS_COLOURS[cls], label=cls, alpha=0.8)
        for _, row in sub.iterrows():
            ax.annotate(row["method"], (max(row["time_median_s"], 1e-5), row[column]), fontsize=7,
                        xytext=(4, 3), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("median time per image (s, log scale)")
    ax.set_ylabel(label)
    ax.set_title("Cost against localisation quality")
    ax.grid(alpha=0.3)
    ax.legend(title="lesion class")
    fig.tight_layout()
    _save(fig, out, "cost_vs_dice")
    return True


def _load_npz(path: Path) -> dict[str, Any] | None:
    """The arrays of a figure-map file, or ``None`` when it is missing or unreadable."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {k: archive[k] for k in archive.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):
        return None


def qualitative_grid(data: RunData, out: Path, max_images: int = 4) -> bool:
    """Rows: a few lesion images; columns: the image with ground-truth outlines, then each method's
    map of the class present (malignant when both are), same colour scale [0, 1] for all."""
    images = dict(list(stored_figure_images(data.run_dir).items())[:max_images])
    ids = list(images)
    if not ids:
        return False
    methods = [m for m in data.methods if (data.run_dir / "maps" / m).is_dir()]
    columns = 1 + len(methods)
    fig, axes = plt.subplots(len(ids), columns, figsize=(1.9 * columns, 2.9 * len(ids)), squeeze=False)
    mappable = None
    for row, image_id in enumerate(ids):
        stored = _load_npz(images[image_id])
        assert stored is not None
        masks = {cls: stored.get(f"mask_{cls}") for cls in CLASSES}
        present = [cls for cls in CLASSES if masks[cls] is not None and masks[cls].any()]
        shown = "malignant" if "malignant" in present else (present[0] if present else CLASSES[-1])
        ax = axes[row, 0]
        ax.imshow(stored["image"].astype(np.float32), cmap="gray")
        for cls in present:
            ax.contour(masks[cls].astype(np.float32), levels=[0.5], colors=CLASS_COLOURS[cls], linewidths=1.0)
        ax.set_title(f"{image_id}\nground truth" if row == 0 else image_id, fontsize=7)
        for col, method in enumerate(methods, start=1):
            ax = axes[row, col]
            maps = _load_npz(data.run_dir / "maps" / method / images[image_id].name)
            if maps is None:
                ax.text(0.5, 0.5, "no map", ha="center", va="center", transform=ax.transAxes)
            else:
                mappable = ax.imshow(maps["maps"][CLASSES.index(shown)].astype(np.float32), cmap="inferno",
                                     vmin=0, vmax=1)
                if masks[shown] is not None:
                    ax.contour(masks[shown].astype(np.float32), levels=[0.5], colors="cyan", linewidths=0.7)
            ax.set_title(f"{method}\n({shown} map)" if row == 0 else f"({shown})", fontsize=7)
        for ax in axes[row]:
            ax.set_xticks([])
            ax.set_yticks([])
    if mappable is not None:
        fig.colorbar(mappable, ax=axes, shrink=0.6, label="normalised saliency (as scored)")
    fig.suptitle("Saliency maps as scored (cyan / coloured outlines: ground-truth lesions; "
                 "green benign, red malignant)", fontsize=9)
    _save(fig, out, "qualitative")
    return True


def draw_all(data: RunData, results: pd.DataFrame, out: Path) -> list[str]:
    """Draw every figure the records support; a figure that fails is logged, never fatal."""
    drawn = []
    for name, draw in (
        ("qualitative", lambda: qualitative_grid(data, out)),
        ("dice_boxplot", lambda: dice_boxplot(data, out, results)),
        ("dice_vs_lesion_size", lambda: dice_vs_lesion_size(data, out, results)),
        ("cost_vs_dice", lambda: cost_vs_dice(results, out)),
    ):
        try:
            if draw():
                drawn.append(name)
        except Exception as exc:
            log.warning("figure %s could not be drawn: %s", name, exc)
            plt.close("all")
    return drawn
