"""Tables and figures of a run, rebuilt from its stored records alone (no model is run).

``build_report(run_dir, out_dir)`` writes::

    results.csv / results.md / results.tex   one row per method and class (columns: RESULT_COLUMNS)
    details.csv                              PxAP intervals, lesion-image and failure counts
    qualitative.{png,pdf}                    image, ground truth and every method's map
    dice_boxplot.{png,pdf}                   per-image Dice per method
    dice_vs_lesion_size.{png,pdf}            Dice against lesion area
    cost_vs_dice.{png,pdf}                   time per image against mean Dice
    index.html                               all of the above on one page

Every number is a deterministic function of the records (bootstrap resampling is seeded), so
rebuilding the report of a run gives identical tables.
"""

from __future__ import annotations

import html
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .manifest import read_json
from .metrics import auc, bootstrap_ci, bootstrap_pxap_ci, oracle_dice, pxap_from_histograms
from .records import decode_counts, read_records
from .saliency import CLASSES

log = logging.getLogger(__name__)

RESULT_COLUMNS = [
    "method", "class", "dice", "dice_ci_low", "dice_ci_high", "dice_oracle", "tau_oracle", "pxap", "auc",
    "n_images", "time_median_s", "time_p90_s", "peak_memory_mb", "gflops", "params_m",
]

DEFINITIONS = """\
**Definitions.** Maps are resized to the image (bilinear) and normalised by the harness alone:
maps declared as probabilities are scored as they are, unbounded maps are min–max scaled per image
and class. *Dice* = 2|S∩M|/(|S|+|M|) with S = {map ≥ τ}, averaged over the images that contain a
lesion of the class, at τ = 0.5 (`dice`, with a bootstrap 95% interval over images) and at the
threshold that maximises mean Dice over the dataset (`dice_oracle` at `tau_oracle`). *PxAP*
(Choe et al., CVPR 2020): precision and recall of pixels at thresholds 0, 1/B, …, (B−1)/B, counts
pooled over all pixels of the images that contain a lesion of the class (the images Dice is
averaged over), AP = Σ precision_l (recall_l − recall_{l−1}). *AUC*: image-level ROC AUC of the method's
scores (0.5 for methods without a classifier). *Cost*: per-image wall time after one warm-up call
(median, 90th percentile), peak memory (GPU memory allocated on CUDA, process peak resident memory
on CPU), GFLOP per image (`torch.utils.flop_counter`), parameters in millions.
"""


@dataclass
class RunData:
    """A run's records and manifest, parsed once."""

    run_dir: Path
    manifest: dict[str, Any]
    records: list[dict[str, Any]]
    methods: list[str]

    @classmethod
    def load(cls, run_dir: str | Path) -> RunData:
        run_dir = Path(run_dir)
        manifest_path = run_dir / "manifest.json"
        if not manifest_path.exists():
            raise FileNotFoundError(f"{run_dir} is not a run folder: {manifest_path} is missing")
        manifest = read_json(manifest_path)
        records = read_records(sorted(run_dir.glob("records*.jsonl")))
        if not records:
            raise ValueError(f"{run_dir}: no records to report (records*.jsonl is missing or empty)")
        records.sort(key=lambda r: (r["method"], r["image_id"]))
        seen = list(manifest.get("config", {}).get("methods", []))
        methods = [m for m in seen if any(r["method"] == m for r in records)]
        methods += sorted({r["method"] for r in records} - set(methods))
        return cls(run_dir, manifest, records, methods)

    def ok(self, method: str) -> list[dict[str, Any]]:
        return [r for r in self.records if r["method"] == method and r["status"] == "ok"]


def _histograms(records: list[dict[str, Any]], cls: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-image lesion and background histograms (n×bins each) of the records with a known mask."""
    usable = [r for r in records if r.get("hist", {}).get(cls)]
    if not usable:
        return np.zeros((0, 0), np.int64), np.zeros((0, 0), np.int64)
    pos = np.stack([decode_counts(r["hist"][cls]["pos"]) for r in usable])
    neg = np.stack([decode_counts(r["hist"][cls]["neg"]) for r in usable])
    return pos, neg


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def method_class_row(data: RunData, method: str, cls: str, seed: int = 0) -> tuple[dict[str, Any], dict[str, Any]]:
    """The results row and the details row of one method and class."""
    ok = data.ok(method)
    lesion = [r for r in ok if r["has_lesion"].get(cls)]
    dice_values = np.array([r["dice"][cls] for r in lesion], dtype=np.float64)
    if len(dice_values):
        dice_mean = float(dice_values.mean())
        low, high = bootstrap_ci(lambda idx: float(dice_values[idx].mean()), len(dice_values), seed=seed)
    else:
        dice_mean = low = high = float("nan")
    # Localisation is scored where there is something to localise: the images holding a lesion of
    # the class (as Dice; Choe et al. likewise score only images that contain the object). A
    # lesion-free image's per-image min-max scaled map would otherwise count as confident false
    # positives by construction; image-level AUC measures how a method behaves on those images.
    pos, neg = _histograms(lesion, cls)
    if pos.size and pos.sum() > 0:
        pxap = pxap_from_histograms(pos.sum(0), neg.sum(0))
        pxap_low, pxap_high = bootstrap_pxap_ci(pos, neg, seed=seed)
        dice_oracle, tau_oracle = oracle_dice(pos, neg)
    else:
        pxap = pxap_low = pxap_high = dice_oracle = tau_oracle = float("nan")
    labelled = [r for r in ok if r["label"].get(cls) is not None and r["score"].get(cls) is not None]
    class_auc = (
        auc(np.array([r["score"][cls] for r in labelled]), np.array([r["label"][cls] for r in labelled]))
        if labelled
        else float("nan")
    )
    times = [r["time_s"] for r in ok if r.get("time_s") is not None]
    memory = [r["peak_memory_mb"] for r in ok if r.get("peak_memory_mb") is not None]
    gflops = [r["gflops"] for r in ok if r.get("gflops") is not None]
    params = data.manifest.get("methods", {}).get(method, {}).get("params")
    row = {
        "method": method,
        "class": cls,
        "dice": dice_mean,
        "dice_ci_low": low,
        "dice_ci_high": high,
        "dice_oracle": dice_oracle,
        "tau_oracle": tau_oracle,
        "pxap": pxap,
        "auc": class_auc,
        "n_images": len(lesion),
        "time_median_s": _percentile(times, 50),
        "time_p90_s": _percentile(times, 90),
        "peak_memory_mb": max(memory) if memory else float("nan"),
        "gflops": float(np.median(gflops)) if gflops else float("nan"),
        "params_m": params / 1e6 if params is not None else float("nan"),
    }
    statuses = [r["status"] for r in data.records if r["method"] == method]
    details = {
        "method": method,
        "class": cls,
        "pxap_ci_low": pxap_low,
        "pxap_ci_high": pxap_high,
        "n_lesion_images": len(lesion),
        "n_labelled": len(labelled),
        "n_ok": statuses.count("ok"),
        "n_failed": statuses.count("failed"),
        "n_oom": statuses.count("oom"),
        "n_skipped": statuses.count("skipped"),
        "box_ground_truth": any(r.get("mask_kind") == "box" for r in ok),
    }
    return row, details


def results_tables(data: RunData) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(results, details)`` data frames, one row per method and class."""
    rows, details = [], []
    for method in data.methods:
        for cls in CLASSES:
            row, detail = method_class_row(data, method, cls)
            rows.append(row)
            details.append(detail)
    return pd.DataFrame(rows, columns=RESULT_COLUMNS), pd.DataFrame(details)


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "–"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    return f"{value:.{digits}f}"


def _size_override(config: dict) -> str:
    """`` at H×W`` when the run replaced the preset's image size, else nothing."""
    size = config.get("image_size")
    return f" at {size[0]}×{size[1]}" if size else ""


def to_markdown(results: pd.DataFrame, details: pd.DataFrame, manifest: dict[str, Any]) -> str:
    config = manifest.get("config", {})
    lines = [
        "# wsl-bench results",
        "",
        f"Dataset `{config.get('dataset')}` split `{config.get('split')}`, preset `{config.get('preset')}`"
        f"{_size_override(config)}, "
        f"seed {config.get('seed')}, device {manifest.get('device', {}).get('type')} "
        f"({manifest.get('device', {}).get('name')}), wsl-bench commit {manifest.get('git', {}).get('commit')}"
        f"{' (dirty)' if manifest.get('git', {}).get('dirty') else ''}.",
        "",
        "| method | class | Dice@0.5 [95% CI] | oracle Dice (τ) | PxAP [95% CI] | AUC | n | s/img (median, p90) "
        "| peak MB | GFLOP | params (M) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (_, r), (_, d) in zip(results.iterrows(), details.iterrows(), strict=True):
        lines.append(
            f"| {r['method']} | {r['class']} | {_fmt(r['dice'])} [{_fmt(r['dice_ci_low'])}, {_fmt(r['dice_ci_high'])}] "
            f"| {_fmt(r['dice_oracle'])} ({_fmt(r['tau_oracle'], 3)}) "
            f"| {_fmt(r['pxap'])} [{_fmt(d['pxap_ci_low'])}, {_fmt(d['pxap_ci_high'])}] | {_fmt(r['auc'])} "
            f"| {_fmt(r['n_images'])} | {_fmt(r['time_median_s'], 4)}, {_fmt(r['time_p90_s'], 4)} "
            f"| {_fmt(r['peak_memory_mb'], 0)} | {_fmt(r['gflops'], 2)} | {_fmt(r['params_m'], 3)} |"
        )
    problems = details[(details["n_failed"] + details["n_oom"] + details["n_skipped"]) > 0]
    if len(problems):
        lines += ["", "**Images not scored** (see `records.jsonl` for each error):", ""]
        for method, group in problems.groupby("method", sort=False):
            g = group.iloc[0]
            lines.append(f"- {method}: {g['n_failed']} failed, {g['n_oom']} out of memory, {g['n_skipped']} skipped")
    if details["box_ground_truth"].any():
        boxed = ", ".join(sorted(set(details.loc[details["box_ground_truth"], "method"])))
        lines += ["", f"Localisation metrics of {boxed} are box-based: the ground truth masks are filled boxes."]
    lines += ["", DEFINITIONS]
    return "\n".join(lines) + "\n"


def to_latex(results: pd.DataFrame) -> str:
    def tex(text: str) -> str:
        return str(text).replace("_", r"\_").replace("%", r"\%").replace("&", r"\&").replace("#", r"\#")

    lines = [
        r"\begin{tabular}{llrrrrrrr}",
        r"\toprule",
        r"Method & Class & Dice@0.5 & 95\% CI & Oracle Dice & $\tau^*$ & PxAP & AUC & s/img \\",
        r"\midrule",
    ]
    for _, r in results.iterrows():
        lines.append(
            f"{tex(r['method'])} & {tex(r['class'])} & {_fmt(r['dice'])} & "
            f"[{_fmt(r['dice_ci_low'])}, {_fmt(r['dice_ci_high'])}] & {_fmt(r['dice_oracle'])} & "
            f"{_fmt(r['tau_oracle'])} & {_fmt(r['pxap'])} & {_fmt(r['auc'])} & {_fmt(r['time_median_s'], 4)} \\\\"
        )
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def to_html(results: pd.DataFrame, markdown: str, figures: list[str]) -> str:
    table = results.to_html(index=False, float_format=lambda v: f"{v:.4g}", na_rep="–")
    header = html.escape(markdown.split("\n\n")[1]) if "\n\n" in markdown else ""
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>wsl-bench report</title>",
        "<style>body{font-family:sans-serif;max-width:1200px;margin:auto}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}img{max-width:100%}</style></head><body>",
        "<h1>wsl-bench report</h1>",
        f"<p>{header}</p>",
        table,
    ]
    for name in figures:
        parts.append(f"<h2>{html.escape(name)}</h2><img src='{html.escape(name)}.png' alt='{html.escape(name)}'>")
    parts.append(f"<pre>{html.escape(DEFINITIONS)}</pre></body></html>")
    return "\n".join(parts)


def build_report(run_dir: str | Path, out_dir: str | Path | None = None) -> Path:
    """Write the tables and figures of the run in ``run_dir`` to ``out_dir`` (default ``run_dir/report``)."""
    from . import report_figures

    data = RunData.load(run_dir)
    out = Path(out_dir) if out_dir is not None else Path(run_dir) / "report"
    out.mkdir(parents=True, exist_ok=True)
    results, details = results_tables(data)
    results.to_csv(out / "results.csv", index=False, float_format="%.6g")
    details.to_csv(out / "details.csv", index=False, float_format="%.6g")
    markdown = to_markdown(results, details, data.manifest)
    (out / "results.md").write_text(markdown, encoding="utf-8")
    (out / "results.tex").write_text(to_latex(results), encoding="utf-8")
    figures = report_figures.draw_all(data, results, out)
    (out / "index.html").write_text(to_html(results, markdown, figures), encoding="utf-8")
    return out
