"""Tables and figures of a run, rebuilt from its stored records alone (no model is run).

``build_report(run_dir, out_dir)`` writes::

    results.csv / results.md / results.tex   one row per method and class (columns: RESULT_COLUMNS);
                                             results.md leads with the ranked summary per class
                                             (wsl_bench.report.summary) and ends with the definitions
    details.csv                              PxAP intervals, lesion-image and failure counts, why the
                                             headline Dice is missing where it is
    qualitative*.{png,pdf}                   image, ground truth and every method's map, one figure per
                                             method family, one block of rows per class
    dice_boxplot.{png,pdf}                   per-image headline Dice per method, by family
    dice_vs_lesion_size.{png,pdf}            headline Dice against lesion area, one panel per family and class
    cost_vs_dice.{png,pdf}                   time per image against mean headline Dice, every method labelled
    index.html                               all of the above on one self-contained page (wsl_bench.report.page)

Methods whose maps are identical on every image are found from the records
(:mod:`wsl_bench.report.equivalence`) and shown once in the summary and the figures.

The headline Dice is Dice at the threshold chosen on the validation split (per method and class)
and applied unchanged to the test split (``dice_val_tau`` at ``tau_val``); Dice at 0.5 and the
oracle (test-chosen) threshold are secondary columns. Tables and figures describe the evaluated
split's records; the validation split's records only choose ``tau_val``, and costs come from the
evaluated split alone.

Every number is a deterministic function of the records (bootstrap resampling is seeded), so
rebuilding the report of a run gives identical tables.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from wsl_bench.atomic_io import atomic_write, write_text_atomic
from wsl_bench.evaluation.metrics import (
    auc,
    bootstrap_ci,
    bootstrap_pxap_ci,
    dice_per_image_at_threshold,
    oracle_dice,
    pxap_from_histograms,
    selected_threshold,
)
from wsl_bench.evaluation.records import decode_counts
from wsl_bench.evaluation.seeds import checkpoint_facts
from wsl_bench.report import families as report_families
from wsl_bench.report import page, provenance, summary
from wsl_bench.report import seeds as report_seeds
from wsl_bench.report.equivalence import IdenticalGroup, identical_groups
from wsl_bench.report.run_data import ReportError, RunData  # noqa: F401  (ReportError: re-exported)
from wsl_bench.saliency import CLASSES

RESULT_COLUMNS = [
    "method", "class",
    "dice_val_tau", "dice_val_tau_ci_low", "dice_val_tau_ci_high", "tau_val", "n_val_images",
    "dice_at_0_5", "dice_at_0_5_ci_low", "dice_at_0_5_ci_high",
    "dice_oracle", "tau_oracle",
    "pxap", "auc", "n_images", "time_median_s", "time_p90_s", "end_to_end_median_s", "peak_memory_mb", "gflops",
    "params_m", *report_seeds.SEED_COLUMNS,
]
"""Columns of ``results.csv``. The headline Dice comes first: ``dice_val_tau`` (test images) at
``tau_val`` (chosen on ``n_val_images`` validation images), with its bootstrap interval; then Dice at
τ = 0.5 with its interval, the oracle Dice at ``tau_oracle``, PxAP, AUC and costs; then how many
training seeds the values are the mean of (``n_seeds``) and their standard deviation across seeds
(``*_sd``, empty for one seed). A run with several training seeds adds each seed's value of the
headline metrics (``dice_val_tau_seed<s>``, ``pxap_seed<s>``, ``auc_seed<s>``; :mod:`wsl_bench.report.seeds`)."""

DEFINITIONS = """\
**Definitions.** Maps are resized to the image (bilinear) and normalised by the harness alone:
maps declared as probabilities are scored as they are, unbounded maps are min–max scaled per image
and class. *Dice* = 2|S∩M|/(|S|+|M|) with S = {map ≥ τ}, per image, averaged over the test images
that contain a lesion of the class. The headline, *Dice (val τ)* (`dice_val_tau`, with a bootstrap
95% interval over test images, τ held fixed), is taken at the threshold `tau_val` = k/B that
maximises mean Dice over the **validation** images that contain a lesion of the class (`n_val_images`),
chosen per method and class on held-out annotated images, never on test (ties to the lowest τ; the
protocol Choe et al., CVPR 2020, use for WSOL hyper-parameters), and applied unchanged to the test
images. Secondary columns: Dice at the fixed τ = 0.5 (`dice_at_0_5`, with its interval) and the
*oracle Dice* (`dice_oracle` at `tau_oracle`), the threshold chosen on the test images themselves,
an upper bound no fixed threshold exceeds. Where a run has no annotated validation image for a
method and class the headline is missing and the report says why; no other τ stands in for it.
*PxAP* (Choe et al., CVPR 2020): precision and recall of pixels at thresholds 0, 1/B, …, (B−1)/B,
counts pooled over all pixels of the test images that contain a lesion of the class (the images
Dice is averaged over), AP = Σ precision_l (recall_l − recall_{l−1}). *AUC*: image-level ROC AUC
of the method's scores (0.5 for methods without a classifier). *Cost* (test images only): per-image
wall time of the model's `predict` after one warm-up call (median, 90th percentile); *end-to-end*,
the median per image of what the harness's main thread spent on it (waiting for the image to
load, `predict`, waiting for the previous image's scoring and record; loading, scoring and writing
run beside the model, so this is what the run pays, not the sum of the stages' work); peak
memory (GPU memory allocated on CUDA; on CPU the method's own peak, the rise of the process's peak resident
memory over its resident memory at the start of `predict`, the largest over the images), GFLOP per image
(`torch.utils.flop_counter`), parameters in millions.
"""


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


def _mean_and_ci(values: np.ndarray, seed: int) -> tuple[float, float, float]:
    """Mean of per-image values and its bootstrap 95% interval over images; NaN when empty."""
    if not len(values):
        return float("nan"), float("nan"), float("nan")
    low, high = bootstrap_ci(lambda idx: float(values[idx].mean()), len(values), seed=seed)
    return float(values.mean()), low, high


def method_class_row(data: RunData, method: str, cls: str, seed: int = 0) -> tuple[dict[str, Any], dict[str, Any]]:
    """The results row and the details row of one method and class (``seed``: of the bootstrap)."""
    row, details, _ = _method_class(data, method, cls, seed)
    return row, details


def _method_class(data: RunData, method: str, cls: str,
                  seed: int = 0) -> tuple[dict[str, Any], dict[str, Any], report_seeds.SeedValues]:
    """:func:`method_class_row`, and the per-image values behind it (for intervals over seeds)."""
    ok = data.ok(method)
    lesion = [r for r in ok if r["has_lesion"].get(cls)]
    dice_mean, low, high = _mean_and_ci(np.array([r["dice"][cls] for r in lesion], dtype=np.float64), seed)
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
    # The headline: the threshold chosen on the validation images holding a lesion of the class,
    # applied unchanged to the test images (per-image Dice at bin k is exact from the histograms).
    val_lesion = [r for r in data.val_ok(method) if r["has_lesion"].get(cls)]
    val_pos, val_neg = _histograms(val_lesion, cls)
    tau_val = selected_threshold(val_pos, val_neg) if val_pos.size else float("nan")
    note = "" if np.isfinite(tau_val) else data.validation_missing_reason(method, cls)
    headline = dice_per_image_at_threshold(pos, neg, tau_val) if pos.size and np.isfinite(tau_val) else np.zeros(0)
    dice_val, dice_val_low, dice_val_high = _mean_and_ci(headline, seed)
    labelled = [r for r in ok if r["label"].get(cls) is not None and r["score"].get(cls) is not None]
    class_auc = (
        auc(np.array([r["score"][cls] for r in labelled]), np.array([r["label"][cls] for r in labelled]))
        if labelled
        else float("nan")
    )
    row = {
        "method": method,
        "class": cls,
        "dice_val_tau": dice_val,
        "dice_val_tau_ci_low": dice_val_low,
        "dice_val_tau_ci_high": dice_val_high,
        "tau_val": tau_val,
        "n_val_images": len(val_lesion),
        "dice_at_0_5": dice_mean,
        "dice_at_0_5_ci_low": low,
        "dice_at_0_5_ci_high": high,
        "dice_oracle": dice_oracle,
        "tau_oracle": tau_oracle,
        "pxap": pxap,
        "auc": class_auc,
        "n_images": len(lesion),
        **_costs(data, method, ok),
        "n_seeds": 1,
        **{f"{metric}_sd": float("nan") for metric in report_seeds.SEED_METRICS},
    }
    statuses = [r["status"] for r in data.records if r["method"] == method]
    val_statuses = [r["status"] for r in data.val_records if r["method"] == method]
    expected = data.manifest.get("image_ids") if isinstance(data.manifest.get("image_ids"), dict) else {}
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
        "n_val_ok": val_statuses.count("ok"),
        "n_val_not_scored": len(val_statuses) - val_statuses.count("ok"),
        # images of the run without any record of the method (an interrupted run, records lost)
        "n_missing": max(len(expected.get(data.split) or []) - len(statuses), 0),
        "n_val_missing": max(len(expected.get(data.val_split) or []) - len(val_statuses), 0) if data.val_split else 0,
        "n_expected": len(expected.get(data.split) or []),
        "n_val_expected": len(expected.get(data.val_split) or []) if data.val_split else 0,
        "dice_val_tau_missing": note,
        "box_ground_truth": any(r.get("mask_kind") == "box" for r in ok),
    }
    values = report_seeds.SeedValues(tuple(r["image_id"] for r in lesion if r.get("hist", {}).get(cls)), headline,
                                     np.array([r["dice"][cls] for r in lesion if r.get("hist", {}).get(cls)],
                                              dtype=np.float64), pos, neg)
    return row, details, values


def _costs(data: RunData, method: str, ok: list[dict[str, Any]]) -> dict[str, float]:
    """The cost columns of ``method`` from its scored records ``ok``."""
    times = [r["time_s"] for r in ok if r.get("time_s") is not None]
    # the main thread's time: predict, waiting for the image, waiting for the previous batch's
    # scoring and writing (scoring itself runs beside the next predict); runs before stage_s: none
    end_to_end = [r["time_s"] + r["stage_s"].get("load", 0.0) + r["stage_s"].get("write", 0.0) for r in ok
                  if r.get("time_s") is not None and isinstance(r.get("stage_s"), dict)]
    memory = [r["peak_memory_mb"] for r in ok if r.get("peak_memory_mb") is not None]
    gflops = [r["gflops"] for r in ok if r.get("gflops") is not None]
    params = data.manifest.get("methods", {}).get(method, {}).get("params")
    return {
        "time_median_s": _percentile(times, 50),
        "time_p90_s": _percentile(times, 90),
        "end_to_end_median_s": _percentile(end_to_end, 50),
        "peak_memory_mb": max(memory) if memory else float("nan"),
        "gflops": float(np.median(gflops)) if gflops else float("nan"),
        "params_m": params / 1e6 if params is not None else float("nan"),
    }


def results_tables(data: RunData) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(results, details)`` data frames, one row per method and class; with several training seeds,
    each value the seed mean with its spread and per-seed values (:mod:`wsl_bench.report.seeds`)."""
    if len(data.seeds) > 1:
        return _results_over_seeds(data)
    rows, details = [], []
    for method in data.methods:
        for cls in CLASSES:
            row, detail = method_class_row(data, method, cls)
            rows.append(row)
            details.append(detail)
    return pd.DataFrame(rows, columns=RESULT_COLUMNS), pd.DataFrame(details)


def _results_over_seeds(data: RunData) -> tuple[pd.DataFrame, pd.DataFrame]:
    """:func:`results_tables` of a run with several training seeds: each seed's rows from its own
    records (its own validation τ), combined by :func:`wsl_bench.report.seeds.combine`."""
    views = {seed: data.for_seed(seed) for seed in data.seeds}
    rows, details = [], []
    for method in data.methods:
        seeds = data.method_seeds(method)
        shared = not seeds  # nothing trained: its one scoring serves every seed
        per_seed = {seed: {cls: _method_class(views[seed], method, cls) for cls in CLASSES}
                    for seed in seeds or data.seeds[:1]}
        costs = _costs(data, method, data.ok(method))
        for cls in CLASSES:
            row, detail = report_seeds.combine({s: v[cls][0] for s, v in per_seed.items()},
                                               {s: v[cls][1] for s, v in per_seed.items()},
                                               {s: v[cls][2] for s, v in per_seed.items()}, data.seeds, shared, costs)
            rows.append(row)
            details.append(detail)
    columns = RESULT_COLUMNS + report_seeds.seed_columns(data.seeds)
    return pd.DataFrame(rows, columns=columns), pd.DataFrame(details)


def _fmt_sd(row: Any, key: str) -> str:
    """``row[key]`` with its sd over seeds (``row[key + "_sd"]``) where the row has one."""
    sd = row.get(f"{key}_sd") if hasattr(row, "get") else None
    text = _fmt(row[key])
    return text if text == "–" or sd is None or not np.isfinite(sd) else f"{text} ± {sd:.3f}"


def several_seeds(results: pd.DataFrame) -> bool:
    """Whether ``results`` holds seed means (a run with several training seeds)."""
    return "n_seeds" in results and bool((results["n_seeds"].fillna(1) > 1).any())


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


def missing_headline_notes(details: pd.DataFrame) -> list[str]:
    """One sentence per distinct reason the headline Dice (validation τ) is missing, naming where."""
    if "dice_val_tau_missing" not in details:
        return []
    missing = details[details["dice_val_tau_missing"].fillna("").astype(str) != ""]
    if missing.empty:
        return []
    notes = []
    for reason, group in missing.groupby("dice_val_tau_missing", sort=False):
        if len(group) == len(details):
            where = "every method and class"
        else:
            where = ", ".join(f"{m} ({c})" for m, c in zip(group["method"], group["class"], strict=True))
        notes.append(f"Dice (val τ) is missing for {where}: {' '.join(str(reason).split())}.")
    return notes


def learning_warnings(manifest: dict[str, Any]) -> list[str]:
    """One sentence per distinct learning-check failure (``checkpoints.<method>.learning_check``,
    :mod:`wsl_bench.training.learning_check`), naming every method whose checkpoint failed it that way.

    A post-hoc explainer's checkpoint is its classifier's, so a classifier that did not learn fails the
    same way under each explainer's name: one sentence names them all instead of one paragraph each.
    """
    failed: dict[tuple[str, ...], list[str]] = {}
    trainings = checkpoint_facts(manifest)  # with several training seeds, each seed's checkpoint is checked
    several = {m for m, seed, _ in trainings if seed is not None and sum(n == m for n, _, _ in trainings) > 1}
    for method, seed, facts in sorted(trainings, key=lambda t: (t[0], -1 if t[1] is None else t[1])):
        problems = facts.get("learning_check") or []
        if problems:
            failed.setdefault(tuple(problems), []).append(f"{method} (seed {seed})" if method in several else method)
    notes = []
    for problems, methods in failed.items():
        subject = ", ".join(methods)
        scores = "Its scores measure" if len(methods) == 1 else "Their scores measure"
        notes.append(f"{subject} did not learn: {'; '.join(problems)}. {scores} this training run, not the method.")
    regressed: dict[tuple[str, ...], list[str]] = {}
    for method, facts in sorted((manifest.get("checkpoints") or {}).items()):
        problems = (facts or {}).get("localisation_check") or []
        if problems:
            regressed.setdefault(tuple(problems), []).append(method)
    for problems, methods in regressed.items():
        notes.append(f"{', '.join(methods)}: training lost localisation it started with ({'; '.join(problems)}).")
    return notes


def run_line(manifest: dict[str, Any]) -> str:
    """The sentence (Markdown) naming what was run: dataset, split, preset, seeds, device and the CPU's
    arithmetic (:mod:`wsl_bench.report.provenance`), commit, and the training precision."""
    config = manifest.get("config", {})
    validation = manifest.get("validation") or {}
    val_split = validation.get("split") or config.get("validation_split")
    return (
        f"Dataset `{config.get('dataset')}` split `{config.get('split')}`, preset `{config.get('preset')}`"
        f"{_size_override(config)}, "
        f"{provenance.seeds_phrase(manifest)}, device {manifest.get('device', {}).get('type')} "
        f"({manifest.get('device', {}).get('name')}){provenance.cpu_phrase(manifest)}, "
        f"wsl-bench commit {manifest.get('git', {}).get('commit')}"
        f"{' (dirty)' if manifest.get('git', {}).get('dirty') else ''}."
        + provenance.precision_sentence(manifest)
        + (f" Headline Dice thresholds chosen on split `{val_split}`." if val_split and not validation.get("reason")
           else "")
    )


def notes_markdown(details: pd.DataFrame) -> str:
    """The notes below the results (Markdown): why a headline is missing, images not scored, box masks."""
    lines: list[str] = []
    notes = missing_headline_notes(details)
    if notes:
        lines += ["**Headline Dice missing** (Dice@0.5 and the oracle Dice do not stand in for it):", ""]
        lines += [f"- {note}" for note in notes] + [""]
    if {"n_failed", "n_oom", "n_skipped", "n_val_not_scored"} <= set(details.columns):
        not_scored = details["n_failed"] + details["n_oom"] + details["n_skipped"] + details["n_val_not_scored"]
        problems = details[not_scored > 0]
        if len(problems):
            lines += ["**Images not scored** (see `records.jsonl` for each error):", ""]
            for method, group in problems.groupby("method", sort=False):
                g = group.iloc[0]
                val = f"; {g['n_val_not_scored']} validation images not scored" if g["n_val_not_scored"] else ""
                lines.append(f"- {method}: {g['n_failed']} failed, {g['n_oom']} out of memory, {g['n_skipped']} "
                             f"skipped{val}")
            lines += [""]
    if {"n_missing", "n_val_missing"} <= set(details.columns):
        incomplete = details[(details["n_missing"] > 0) | (details["n_val_missing"] > 0)]
        if len(incomplete):
            lines += ["**Incomplete: records missing** (every number below covers only the images that have a "
                      "record; run the same command again to complete the run):", ""]
            for method, group in incomplete.groupby("method", sort=False):
                g = group.iloc[0]
                parts = [f"{g['n_missing']} of {g['n_expected']} evaluated images" if g["n_missing"] else "",
                         f"{g['n_val_missing']} of {g['n_val_expected']} validation images" if g["n_val_missing"]
                         else ""]
                lines.append(f"- {method}: no record for {' and '.join(p for p in parts if p)}")
            lines += [""]
    if "box_ground_truth" in details and details["box_ground_truth"].any():
        boxed = ", ".join(sorted(set(details.loc[details["box_ground_truth"], "method"])))
        lines += [f"Localisation metrics of {boxed} are box-based: the ground truth masks are filled boxes.", ""]
    return "\n".join(lines).strip()


def _by_family(results: pd.DataFrame, manifest: dict[str, Any]) -> list[int]:
    """Row positions of ``results`` with methods by family (the floor last), classes in their order."""
    if results.empty:
        return []
    order = {m: i for i, m in enumerate(report_families.ordered(results["method"].unique(), manifest))}
    return sorted(range(len(results)), key=lambda i: order[results["method"].iloc[i]])


def to_markdown(results: pd.DataFrame, details: pd.DataFrame, manifest: dict[str, Any],
                summary_markdown: str = "") -> str:
    """``results.md``: what was run, any training warning, the ranked summary, every column, notes, definitions."""
    lines = ["# wsl-bench results", "", run_line(manifest), ""]
    warnings = learning_warnings(manifest)
    if warnings:  # before the tables: every number of these methods below depends on it
        lines += ["**Training did not converge** (validation metrics at chance level):", ""]
        lines += [f"- {note}" for note in warnings] + [""]
    if summary_markdown:
        lines += [summary_markdown.rstrip(), ""]
    seeds_note = (" Values are means over the training seeds ± their standard deviation (see Seeds in the "
                  "definitions)." if several_seeds(results) else "")
    lines += [
        "## All results",
        "",
        "Every column, one row per method and class, methods by family (the floor last)." + seeds_note,
        "",
        "| method | class | Dice (val τ) [95% CI] | val τ | Dice@0.5 [95% CI] | oracle Dice (τ) | PxAP [95% CI] "
        "| AUC | n (test, val) | s/img (median, p90) | end-to-end s/img | peak MB | GFLOP | params (M) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for i in _by_family(results, manifest):
        r, d = results.iloc[i], details.iloc[i]
        lines.append(
            f"| {r['method']} | {r['class']} "
            f"| {_fmt_sd(r, 'dice_val_tau')} [{_fmt(r['dice_val_tau_ci_low'])}, {_fmt(r['dice_val_tau_ci_high'])}] "
            f"| {_fmt(r['tau_val'])} "
            f"| {_fmt(r['dice_at_0_5'])} [{_fmt(r['dice_at_0_5_ci_low'])}, {_fmt(r['dice_at_0_5_ci_high'])}] "
            f"| {_fmt(r['dice_oracle'])} ({_fmt(r['tau_oracle'], 3)}) "
            f"| {_fmt_sd(r, 'pxap')} [{_fmt(d['pxap_ci_low'])}, {_fmt(d['pxap_ci_high'])}] | {_fmt_sd(r, 'auc')} "
            f"| {_fmt(r['n_images'])}, {_fmt(r['n_val_images'])} "
            f"| {_fmt(r['time_median_s'], 4)}, {_fmt(r['time_p90_s'], 4)} | {_fmt(r['end_to_end_median_s'], 4)} "
            f"| {_fmt(r['peak_memory_mb'], 0)} | {_fmt(r['gflops'], 2)} | {_fmt(r['params_m'], 3)} |"
        )
    notes = notes_markdown(details)
    if notes:
        lines += ["", notes]
    lines += ["", "## Definitions", "", definitions(results)]
    return "\n".join(lines) + "\n"


def definitions(results: pd.DataFrame) -> str:
    """:data:`DEFINITIONS`, and how seeds and bootstrap intervals combine where ``results`` has several seeds."""
    if not several_seeds(results):
        return DEFINITIONS
    return DEFINITIONS + "\n" + report_seeds.SEEDS_DEFINITION + "\n"


def to_latex(results: pd.DataFrame, details: pd.DataFrame | None = None) -> str:
    def tex(text: str) -> str:
        return str(text).replace("_", r"\_").replace("%", r"\%").replace("&", r"\&").replace("#", r"\#")

    def tex_sd(row: Any, key: str) -> str:
        return _fmt_sd(row, key).replace("±", r"$\pm$")

    notes = missing_headline_notes(details) if details is not None else []
    lines = [f"% {note}" for note in notes] + [
        r"\begin{tabular}{llrrrrrrrrr}",
        r"\toprule",
        r"Method & Class & Dice (val $\tau$) & 95\% CI & $\tau_{\mathrm{val}}$ & Dice@0.5 & Oracle Dice & $\tau^*$ "
        r"& PxAP & AUC & s/img \\",
        r"\midrule",
    ]
    for _, r in results.iterrows():
        lines.append(
            f"{tex(r['method'])} & {tex(r['class'])} & {tex_sd(r, 'dice_val_tau')} & "
            f"[{_fmt(r['dice_val_tau_ci_low'])}, {_fmt(r['dice_val_tau_ci_high'])}] & {_fmt(r['tau_val'])} & "
            f"{_fmt(r['dice_at_0_5'])} & {_fmt(r['dice_oracle'])} & "
            f"{_fmt(r['tau_oracle'])} & {tex_sd(r, 'pxap')} & {tex_sd(r, 'auc')} & {_fmt(r['time_median_s'], 4)} \\\\"
        )
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def to_html(
    results: pd.DataFrame,
    markdown: str,
    figures: list[str | page.FigureEntry],
    notes: list[str] | None = None,
    warnings: list[str] | None = None,
    *,
    details: pd.DataFrame | None = None,
    manifest: dict[str, Any] | None = None,
    summaries: list[summary.ClassSummary] | None = None,
    groups: list[IdenticalGroup] | None = None,
    figure_dir: Path | None = None,
) -> str:
    """``index.html`` (:mod:`wsl_bench.report.page`). ``markdown`` is ``results.md``, whose second
    paragraph (what was run) heads the page; ``notes`` are the missing-headline sentences, used when
    ``details`` is not given (with it, the notes are those of ``results.md``); the figures' PNGs in
    ``figure_dir`` are embedded in the page."""
    manifest = manifest or {}
    paragraphs = markdown.split("\n\n")
    header = run_line(manifest) if manifest else (paragraphs[1] if len(paragraphs) > 1 else "")
    if details is not None:
        notes_md = notes_markdown(details)
    else:
        notes_md = "\n".join(f"- {note}" for note in notes or [])
        notes_md = f"**Headline Dice missing** (Dice@0.5 and the oracle Dice do not stand in for it):\n\n{notes_md}" \
            if notes_md else ""
    order = report_families.ordered(results["method"].unique(), manifest) if "method" in results else None
    floor_definition = summary.FLOOR_DEFINITION + summary.SEEDS_SENTENCE * bool(summaries and summaries[0].seeds)
    summary_html = page.summary_section(summaries or [], groups or [], floor_definition,
                                        summary.shortfall_sentence, summary.WHY_POINTER, summary.stability_sentence)
    return page.render(
        run_line=header,
        warnings=warnings or [],
        summary_html=summary_html,
        results_html=page.results_table(results, details, manifest, order),
        notes_markdown=notes_md,
        figures=figures,
        definitions=definitions(results),
        figure_dir=figure_dir,
    )


def _identical_groups(data: RunData) -> list[IdenticalGroup]:
    """Methods with identical maps (:func:`identical_groups`); with several training seeds, in every seed."""
    if len(data.seeds) <= 1:
        return identical_groups(data)
    per_seed = [identical_groups(data.for_seed(seed)) for seed in data.seeds]
    return [g for g in per_seed[0] if all(any(h.methods == g.methods for h in other) for other in per_seed[1:])]


def build_report(run_dir: str | Path, out_dir: str | Path | None = None) -> Path:
    """Write the tables and figures of the run in ``run_dir`` to ``out_dir`` (default ``run_dir/report``)."""
    from wsl_bench.report import figures as report_figures
    data = RunData.load(run_dir)
    out = Path(out_dir) if out_dir is not None else Path(run_dir) / "report"
    out.mkdir(parents=True, exist_ok=True)
    results, details = results_tables(data)
    # Every file is written atomically (wsl_bench.atomic_io): a kill or a full disk leaves the
    # previous report's file, never a truncated one.
    for name, frame in (("results.csv", results), ("details.csv", details)):
        with atomic_write(out / name, "w", encoding="utf-8", newline="") as handle:
            frame.to_csv(handle, index=False, float_format="%.6g")
    groups = _identical_groups(data)  # verified from the records, never assumed
    summaries = summary.summarise(results, details, data.manifest, groups)
    markdown = to_markdown(results, details, data.manifest, summary.to_markdown(summaries, groups))
    write_text_atomic(out / "results.md", markdown)
    write_text_atomic(out / "results.tex", to_latex(results, details))
    if len(data.seeds) > 1:  # per-image figures show one training: the first seed's, at its own τ
        first = data.for_seed(data.seeds[0])
        figures = report_figures.draw_all(first, results_tables(first)[0], out, groups)
        shown = f"Training seed {data.seeds[0]}, the first of {len(data.seeds)} ({', '.join(map(str, data.seeds))}). "
        figures = [page.FigureEntry(f.name, f.title, shown + f.caption) if isinstance(f, page.FigureEntry) else f
                   for f in figures]
    else:
        figures = report_figures.draw_all(data, results, out, groups)
    write_text_atomic(out / "index.html", to_html(results, markdown, figures, warnings=learning_warnings(data.manifest),
                                                  details=details, manifest=data.manifest, summaries=summaries,
                                                  groups=groups, figure_dir=out))
    return out
