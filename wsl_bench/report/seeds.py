"""Several training seeds in one report: seed means and their spread, joint bootstrap intervals.

A run with several training seeds (``wsl-bench run --seeds 0,1,2``) scores each seed's training of a
method on the same test images (:mod:`wsl_bench.evaluation.seeds`). Two kinds of uncertainty then
sit beside each other, and the report keeps them apart (:data:`SEEDS_DEFINITION`):

* **training variation**: each headline metric is the mean over seeds ± the sample standard deviation
  across seeds (``*_sd``), with every seed's value in ``results.csv`` (``*_seed<s>``);
* **image sampling**: the 95% interval is a bootstrap over test images of that seed mean. Each resample
  draws the test images once and scores every seed on the same draw (the seeds are paired by image),
  each seed at its own validation-chosen τ; with one seed it is the one-seed interval exactly (the same
  draws, :func:`wsl_bench.evaluation.metrics.bootstrap_ci`).

Methods with nothing to train are scored once, and their records serve every seed: one value, no sd.
This module works on arrays; :mod:`wsl_bench.report.tables` hands it each seed's rows and per-image values.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from wsl_bench.evaluation.metrics import (  # the draws and PxAP kernel of bootstrap_pxap_ci, vectorised over seeds
    _percentile_interval,
    _pxap_rows,
    _resample_indices,
    bootstrap_ci,
)

SEED_METRICS = ("dice_val_tau", "pxap", "auc")
"""The headline metrics reported as mean ± sd over seeds, with one column per seed."""

SEED_COLUMNS = ["n_seeds", "dice_val_tau_sd", "pxap_sd", "auc_sd"]
"""Columns ``results.csv`` adds for seeds: how many trainings a row's values are the mean of (1 for a
method with nothing to train, which is scored once), and the sample standard deviation across them."""

MEAN_COLUMNS = ("dice_val_tau", "tau_val", "dice_at_0_5", "dice_oracle", "tau_oracle", "pxap", "auc")
"""Columns whose value over several seeds is the mean of the seeds' values."""

SEEDS_DEFINITION = (
    "**Seeds.** This run trained every trainable method once per training seed (data order, initialisation, "
    "augmentation) and scored each training on the same test images. A value is the mean over the seeds ± the "
    "sample standard deviation across them: the training variation (`n_seeds`, `*_sd` and each seed's value "
    "`*_seed<s>` in `results.csv`). Its 95% interval is a bootstrap over test images of that seed mean: each "
    "resample draws the test images once and scores every seed on the same draw, each seed at its own "
    "validation-chosen τ: the image sampling. The two answer different questions (how much another training, "
    "and how much other test images, would move the value) and are not added together; a difference between "
    "two methods smaller than either is not established. The ranking uses the seed means; the rank-stability "
    "line under each class says in how many seeds a method ranks first on its own. `val τ` and `oracle τ` are the "
    "means of the seeds' thresholds. Methods with nothing to train (the baselines) are scored once, their "
    "records serving every seed (`n_seeds` 1, no sd). The figures show the first seed's training."
)


def seed_columns(seeds: Sequence[int]) -> list[str]:
    """``dice_val_tau_seed0, ..., pxap_seed0, ..., auc_seed0, ...``: one column per metric and seed."""
    return [f"{metric}_seed{seed}" for metric in SEED_METRICS for seed in seeds]


@dataclass(frozen=True)
class SeedValues:
    """One seed's per-image values of a method and class (the test images with a lesion of the class).

    Attributes:
        ids: image ids, in the order of the arrays.
        headline: Dice at this seed's validation τ per image (NaN without a τ).
        at_half: Dice at τ = 0.5 per image.
        pos, neg: ``n×B`` lesion and background histograms per image.
    """

    ids: tuple[str, ...]
    headline: np.ndarray
    at_half: np.ndarray
    pos: np.ndarray
    neg: np.ndarray


def sample_sd(values: Sequence[float]) -> float:
    """Sample standard deviation (ddof 1) of the finite values; NaN with fewer than two."""
    finite = np.array([v for v in values if np.isfinite(v)], dtype=np.float64)
    return float(finite.std(ddof=1)) if finite.size >= 2 else float("nan")


def _mean(values: Sequence[float]) -> float:
    finite = [v for v in values if v is not None and np.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


def _union(seeds: Sequence[SeedValues]) -> list[str]:
    return sorted({i for s in seeds for i in s.ids})


def joint_mean_interval(seeds: Sequence[SeedValues], field: str, boot_seed: int = 0) -> tuple[float, float]:
    """Bootstrap 95% interval over images of the seed mean of a per-image mean (``field``: ``headline`` or
    ``at_half``): every resample draws images once for every seed. An image a seed did not score counts
    for the others only. ``(nan, nan)`` without images."""
    ids = _union(seeds)
    if not ids:
        return float("nan"), float("nan")
    column = {i: n for n, i in enumerate(ids)}
    matrix = np.full((len(seeds), len(ids)), np.nan)
    for row, values in enumerate(seeds):
        per_image = getattr(values, field)
        if len(per_image) == len(values.ids):  # empty when the seed has no value (no validation τ)
            matrix[row, [column[i] for i in values.ids]] = per_image
    if np.isnan(matrix).all():
        return float("nan"), float("nan")

    def statistic(idx: np.ndarray) -> float:
        with _quiet():
            return float(np.nanmean(np.nanmean(matrix[:, idx], axis=1)))

    return bootstrap_ci(statistic, len(ids), seed=boot_seed)


def joint_pxap_interval(seeds: Sequence[SeedValues], boot_seed: int = 0, n_boot: int = 1000,
                        level: float = 0.95) -> tuple[float, float]:
    """Bootstrap 95% interval over images of the seed mean of pooled PxAP: every resample draws images
    once, pools each seed's histograms over the draw and averages the seeds' PxAP (vectorised as
    :func:`~wsl_bench.evaluation.metrics.bootstrap_pxap_ci`, whose draws it shares)."""
    ids = _union(seeds)
    usable = [s for s in seeds if s.pos.size]
    if not ids or not usable:
        return float("nan"), float("nan")
    column = {i: n for n, i in enumerate(ids)}
    bins = usable[0].pos.shape[1]
    draws = _resample_indices(len(ids), n_boot, boot_seed)
    rows = np.repeat(np.arange(n_boot), len(ids))
    counts = np.bincount(rows * len(ids) + draws.ravel(), minlength=n_boot * len(ids)).reshape(n_boot, len(ids))
    counts = counts.astype(np.float64)
    values = []
    for seed in usable:
        pos, neg = np.zeros((len(ids), bins)), np.zeros((len(ids), bins))
        where = [column[i] for i in seed.ids]
        pos[where], neg[where] = seed.pos, seed.neg
        values.append(_pxap_rows(counts @ pos, counts @ neg))
    with _quiet():
        mean = np.nanmean(np.stack(values), axis=0)
    return _percentile_interval(mean, level)


@contextmanager
def _quiet() -> Iterator[None]:
    """numpy quiet about means of empty or all-NaN slices (an image or a resample no seed scored)."""
    with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


def combine(rows: Mapping[int, Mapping[str, Any]], details: Mapping[int, Mapping[str, Any]],
            values: Mapping[int, SeedValues], run_seeds: Sequence[int], shared: bool,
            costs: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """One method's and class's results and details rows over seeds.

    Args:
        rows, details: seed → that seed's rows (``tables.method_class_row`` on the seed's records).
        values: seed → its per-image values (:class:`SeedValues`), for the joint intervals.
        run_seeds: the run's training seeds (the per-seed columns).
        shared: the method has nothing to train: its one scoring serves every seed.
        costs: the cost columns, from every seed's records together.
    """
    seeds = list(rows)
    row: dict[str, Any] = dict(rows[seeds[0]])
    for column in MEAN_COLUMNS:
        row[column] = _mean([rows[s][column] for s in seeds])
    row["n_images"] = max(int(rows[s]["n_images"]) for s in seeds)
    row["n_val_images"] = max(int(rows[s]["n_val_images"]) for s in seeds)
    row.update(costs)
    ordered = [values[s] for s in seeds]
    row["dice_val_tau_ci_low"], row["dice_val_tau_ci_high"] = joint_mean_interval(ordered, "headline")
    row["dice_at_0_5_ci_low"], row["dice_at_0_5_ci_high"] = joint_mean_interval(ordered, "at_half")
    row["n_seeds"] = len(seeds)
    for metric in SEED_METRICS:
        row[f"{metric}_sd"] = sample_sd([rows[s][metric] for s in seeds])
        for seed in run_seeds:
            source = seeds[0] if shared else seed
            row[f"{metric}_seed{seed}"] = rows[source][metric] if source in rows else float("nan")
    detail: dict[str, Any] = dict(details[seeds[0]])
    detail["pxap_ci_low"], detail["pxap_ci_high"] = joint_pxap_interval(ordered)
    for key in ("n_failed", "n_oom", "n_skipped", "n_val_not_scored", "n_ok"):
        detail[key] = int(sum(details[s][key] for s in seeds))
    detail["n_lesion_images"] = max(int(details[s]["n_lesion_images"]) for s in seeds)
    detail["n_labelled"] = max(int(details[s]["n_labelled"]) for s in seeds)
    detail["dice_val_tau_missing"] = next((details[s]["dice_val_tau_missing"] for s in seeds
                                           if details[s]["dice_val_tau_missing"]), "")
    detail["box_ground_truth"] = any(details[s]["box_ground_truth"] for s in seeds)
    return row, detail
