"""Localization and classification metrics: Dice, PxAP, AUC and bootstrap intervals.

Every metric has a functional form (``dice``, ``pxap``, ``auc``) and an accumulating form
(:class:`DiceMetric`, :class:`PxAPMetric`, :class:`AUCMetric`) built on the same private helpers,
as torchmetrics does. Inputs are numpy arrays; torch tensors are accepted and converted.

Conventions (the reports state them):

* Saliency maps arrive already resized to the image and normalised to [0, 1] by the harness.
  Values further than ``1e-6`` outside [0, 1], NaN or infinities are a ``ValueError``.
* A pixel is predicted positive at threshold ``t`` when its value is ``>= t``. Comparisons are
  exact floating-point comparisons against ``t`` as a float64 (a float32 map is compared after an
  exact widening), so histogram-based and pixel-based forms agree at every bin edge.
* Thresholds live on the fixed grid ``k / bins``, ``k = 0 .. bins-1`` (``bins = 1000`` by default).
  Bin ``k`` holds the values ``k/bins <= v < (k+1)/bins``; the last bin also holds 1.0. A pixel is
  positive at threshold ``k/bins`` exactly when its bin index is ``>= k``.
* Dice is computed per image and averaged over the images that contain a lesion of the class.
  The headline threshold is chosen on other images than those scored: :func:`selected_threshold`
  picks the bin edge maximising mean Dice on the validation images, and
  :func:`dice_at_threshold_from_histograms` scores the test images at it (Choe et al., CVPR 2020).
  :func:`oracle_dice` chooses it on the scored images themselves (an upper bound).
* PxAP (Choe et al., CVPR 2020) pools the pixels of the images it is given in two fixed-bin
  histograms (lesion pixels, background pixels), so its memory does not grow with image or pixel
  count. The report gives it the images that contain a lesion of the class, like Dice (a
  lesion-free image passed in contributes only negatives).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np
from scipy.stats import rankdata

DEFAULT_BINS = 1000
"""Number of fixed threshold bins over [0, 1] used by the histogram-based metrics."""

RANGE_TOLERANCE = 1e-6
"""How far outside [0, 1] a saliency value may lie (interpolation round-off) before it is an error."""

_TAU_SNAP = 1e-9  # a tau this close to a bin edge k/bins is taken to mean that edge


# ----------------------------------------------------------------------------------------------------------------------
# Input conversion and validation
# ----------------------------------------------------------------------------------------------------------------------


def _to_numpy(x: Any) -> np.ndarray:
    """A numpy view of ``x``; torch tensors are detached and moved to the CPU (duck-typed, no torch import)."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):
        t = x.detach().cpu()
        try:
            return t.numpy()
        except TypeError:  # dtypes numpy lacks (bfloat16)
            return t.float().numpy()
    return np.asarray(x)


def _as_float_map(saliency: Any) -> np.ndarray:
    """``saliency`` as a float32 or float64 array (float32 kept as is: it is widened exactly when compared)."""
    x = _to_numpy(saliency)
    if x.dtype == np.float32 or x.dtype == np.float64:
        return x
    if x.dtype.kind == "f" and x.dtype.itemsize < 4:
        return x.astype(np.float32)
    if x.dtype.kind in "biuf":
        return x.astype(np.float64)
    raise ValueError(f"saliency map must be a real-valued array, got dtype {x.dtype}")


def _as_bool_mask(mask: Any) -> np.ndarray:
    """``mask`` as a bool array; integer/float masks must hold only 0 and 1."""
    m = _to_numpy(mask)
    if m.dtype == np.bool_:
        return m
    if m.dtype.kind not in "iuf":
        raise ValueError(f"mask must be boolean (or 0/1), got dtype {m.dtype}")
    if np.any((m != 0) & (m != 1)):
        raise ValueError("mask must be boolean (or hold only 0 and 1); it holds other values")
    return m != 0


def _check_map_values(x: np.ndarray) -> None:
    """Raise ValueError when ``x`` holds NaN, infinities or values outside [0, 1] (beyond the tolerance)."""
    if x.size == 0:
        raise ValueError("saliency map is empty (0 pixels)")
    # min and max propagate NaN and expose infinities, so one pass of each covers finiteness too.
    lo, hi = float(x.min()), float(x.max())
    if not (np.isfinite(lo) and np.isfinite(hi)):
        n_bad = int(np.count_nonzero(~np.isfinite(x)))
        raise ValueError(f"saliency map contains NaN or infinite values ({n_bad} of {x.size} pixels)")
    if lo < -RANGE_TOLERANCE or hi > 1.0 + RANGE_TOLERANCE:
        raise ValueError(
            f"saliency map values must lie in [0, 1] (the harness normalises maps); got min {lo:.6g}, max {hi:.6g}"
        )


def _validated_pair(saliency: Any, mask: Any) -> tuple[np.ndarray, np.ndarray]:
    """Convert and validate a (map, mask) pair of identical shape."""
    x = _as_float_map(saliency)
    m = _as_bool_mask(mask)
    if x.shape != m.shape:
        raise ValueError(f"saliency map shape {tuple(x.shape)} does not match mask shape {tuple(m.shape)}")
    _check_map_values(x)
    return x, m


def _check_bins(bins: int) -> int:
    if isinstance(bins, bool) or not isinstance(bins, (int, np.integer)) or bins < 1:
        raise ValueError(f"bins must be a positive integer, got {bins!r}")
    return int(bins)


def _histogram_pair(pos: Any, neg: Any, *, ndim: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Validate a pair of histograms (same shape, non-negative, finite); returns float64 copies for arithmetic."""
    p = np.asarray(_to_numpy(pos), dtype=np.float64)
    n = np.asarray(_to_numpy(neg), dtype=np.float64)
    if p.shape != n.shape:
        raise ValueError(f"positive histogram shape {p.shape} does not match negative histogram shape {n.shape}")
    if ndim is not None and p.ndim != ndim:
        raise ValueError(f"histograms must have {ndim} dimension(s) (…×bins), got shape {p.shape}")
    if p.ndim == 0 or p.shape[-1] == 0:
        raise ValueError(f"histograms must have at least one bin, got shape {p.shape}")
    if not (np.isfinite(p).all() and np.isfinite(n).all()) or (p < 0).any() or (n < 0).any():
        raise ValueError("histogram counts must be finite and non-negative")
    return p, n


def _edges(bins: int, dtype: np.dtype | type = np.float64) -> np.ndarray:
    """The ``bins`` lower bin edges ``k/bins`` (float64), edge 0 at -inf so slightly negative values land in bin 0.

    For ``dtype=float32`` each edge is rounded up to the next float32, so that comparing a float32
    map with these edges gives exactly the float64 comparison, without widening the map.
    """
    e = np.arange(bins, dtype=np.float64) / bins
    e[0] = -np.inf
    if np.dtype(dtype) == np.float32:
        e32 = e.astype(np.float32)
        rounded_down = e32.astype(np.float64) < e
        e32[rounded_down] = np.nextafter(e32[rounded_down], np.float32(np.inf))
        return e32
    return e


def _threshold_bin(tau: float, bins: int) -> int:
    """The bin index ``k`` with ``k/bins == tau`` (histograms can only express thresholds on bin edges)."""
    tau = float(tau)
    k = int(round(tau * bins))
    if not 0 <= k <= bins - 1 or abs(k / bins - tau) > _TAU_SNAP:
        raise ValueError(
            f"tau={tau!r} is not a bin edge k/{bins} with 0 <= k < {bins}; histogram-based metrics are exact only "
            "at those thresholds"
        )
    return k


# ----------------------------------------------------------------------------------------------------------------------
# Shared private helpers (used by the functional and the accumulating forms)
# ----------------------------------------------------------------------------------------------------------------------


def _bin_indices_unchecked(x: np.ndarray, bins: int) -> np.ndarray:
    """Bin index of every value of a validated map; same shape as ``x``, dtype intp."""
    # floor(v*bins) can be one bin off at the edges in floating point (0.29*100 = 28.999...), so aim
    # slightly high (never more than one bin: the shift is far below one bin and far above the
    # rounding error, even for float32) and step back where the value lies below its bin's lower edge.
    if x.dtype == np.float32 and bins > 4096:
        x = x.astype(np.float64)  # float32 round-off of v*bins would approach the 1e-3 shift below
    scaled = np.multiply(x, x.dtype.type(bins))
    scaled += x.dtype.type(1e-3)
    idx = scaled.astype(np.intp)  # truncation == floor here: values are > -1
    del scaled
    np.minimum(idx, bins - 1, out=idx)
    idx -= x < _edges(bins, x.dtype).take(idx)
    return idx


def _histograms_unchecked(x: np.ndarray, m: np.ndarray, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """(pos, neg) int64 histograms of a validated map and mask."""
    idx = _bin_indices_unchecked(x, bins)
    total = np.bincount(idx.ravel(), minlength=bins)
    pos = np.bincount(idx[m], minlength=bins)  # lesions are small: indexing by the mask is cheap
    return pos.astype(np.int64), (total - pos).astype(np.int64)


def _dice_from_counts(intersection: Any, predicted: Any, mask: Any) -> np.ndarray:
    """``2|S∩M| / (|S|+|M|)`` elementwise; 1.0 where both S and M are empty."""
    inter = np.asarray(intersection, dtype=np.float64)
    denom = np.asarray(predicted, dtype=np.float64) + np.asarray(mask, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, 2.0 * inter / np.where(denom > 0, denom, 1.0), 1.0)


def _tail_sums(h: np.ndarray) -> np.ndarray:
    """``out[..., k] = sum(h[..., k:])``: the count of pixels predicted positive at threshold k/bins."""
    return np.cumsum(h[..., ::-1], axis=-1)[..., ::-1]


def _dice_curve_rows(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """Dice at every threshold k/bins for histograms ``…×bins``; same shape."""
    tail_pos = _tail_sums(pos)
    tail_neg = _tail_sums(neg)
    n_mask = tail_pos[..., :1]  # threshold 0 predicts every pixel, so its tail is the whole mask
    return _dice_from_counts(tail_pos, tail_pos + tail_neg, n_mask)


def _pxap_rows(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """PxAP of histograms ``…×bins`` (float64); shape ``…``; NaN where there is no positive pixel.

    Visiting thresholds from high to low, recall rises by ``pos[k] / P`` at threshold k/bins, so
    ``sum_l precision_l (recall_l - recall_{l-1})`` equals ``sum_k precision_k pos[k] / P``.
    Precision where nothing is predicted is taken as 1 (the sklearn convention); it never enters
    the sum because recall does not change there.
    """
    tp = _tail_sums(pos)
    predicted = tp + _tail_sums(neg)
    n_pos = tp[..., 0]
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(predicted > 0, tp / np.where(predicted > 0, predicted, 1.0), 1.0)
        ap = (precision * pos).sum(axis=-1) / n_pos
    return np.where(n_pos > 0, ap, np.nan)


def _resample_indices(n: int, n_boot: int, seed: int) -> np.ndarray:
    """``n_boot×n`` bootstrap resamples of ``range(n)`` (the same draws for every bootstrap function)."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, n, size=(n_boot, n))


def _percentile_interval(values: np.ndarray, level: float) -> tuple[float, float]:
    """Percentile interval of the finite entries of ``values``; (nan, nan) when there are none."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return float("nan"), float("nan")
    alpha = (1.0 - level) / 2.0
    lo, hi = np.percentile(v, [100.0 * alpha, 100.0 * (1.0 - alpha)])
    return float(lo), float(hi)


def _check_bootstrap_args(n_boot: int, level: float) -> None:
    if int(n_boot) < 1:
        raise ValueError(f"n_boot must be at least 1, got {n_boot}")
    if not 0.0 < float(level) < 1.0:
        raise ValueError(f"level must lie strictly between 0 and 1, got {level}")


# ----------------------------------------------------------------------------------------------------------------------
# Functional forms
# ----------------------------------------------------------------------------------------------------------------------


def bin_indices(saliency: Any, bins: int = DEFAULT_BINS) -> np.ndarray:
    """Fixed-bin index of every value of a saliency map.

    ``min(floor(v*bins), bins-1)``, computed so that bin ``k`` holds exactly the values with
    ``k/bins <= v`` (float64 comparison) and ``v < (k+1)/bins``; values within ``1e-6`` below 0 go
    to bin 0 and 1.0 (or just above) to the last bin.

    Args:
        saliency: map of any shape, values in [0, 1].
        bins: number of bins B.

    Returns:
        int array of the same shape, values in ``0 .. B-1``.

    Raises:
        ValueError: NaN/infinite values or values outside [0, 1].
    """
    bins = _check_bins(bins)
    x = _as_float_map(saliency)
    _check_map_values(x)
    return _bin_indices_unchecked(x, bins)


def pixel_histograms(saliency: Any, mask: Any, bins: int = DEFAULT_BINS) -> tuple[np.ndarray, np.ndarray]:
    """Histograms of the map values of lesion pixels and of background pixels.

    Args:
        saliency: ``H×W`` float map in [0, 1] (any shape works if ``mask`` has the same).
        mask: ``H×W`` bool lesion mask.
        bins: number of bins B.

    Returns:
        ``(pos, neg)``: int64 arrays of length B; ``pos[k]`` counts lesion pixels in bin k,
        ``neg[k]`` background pixels.

    Raises:
        ValueError: shape mismatch (naming both shapes), NaN/infinite values, values outside [0, 1].
    """
    bins = _check_bins(bins)
    x, m = _validated_pair(saliency, mask)
    return _histograms_unchecked(x, m, bins)


def dice(saliency: Any, mask: Any, tau: float = 0.5) -> float:
    """Dice of the map thresholded at ``tau`` against the mask.

    ``S = saliency >= tau``; ``2|S∩M| / (|S|+|M|)``; 1.0 when both S and M are empty. Benchmark
    means average this over the images that contain a lesion of the class.

    Args:
        saliency: ``H×W`` float map in [0, 1].
        mask: ``H×W`` bool lesion mask.
        tau: threshold.

    Raises:
        ValueError: shape mismatch, NaN/infinite values, values outside [0, 1].
    """
    x, m = _validated_pair(saliency, mask)
    s = x >= np.float64(tau)  # a float64 scalar so float32 maps are compared exactly, as the histograms do
    inter = np.count_nonzero(s & m)
    return float(_dice_from_counts(inter, np.count_nonzero(s), np.count_nonzero(m)))


def dice_counts(pos: Any, neg: Any, tau: float = 0.5, bins: int = DEFAULT_BINS) -> dict[str, int]:
    """The pixel counts behind Dice at threshold ``tau``, read from one image's histograms.

    Args:
        pos: length-B lesion-pixel histogram.
        neg: length-B background-pixel histogram.
        tau: threshold; must be a bin edge ``k/bins`` (0.5 is, for even B).
        bins: B, checked against the histogram length.

    Returns:
        ``{"intersection": |S∩M|, "predicted": |S|, "mask": |M|}`` with ``S = bin >= k``.

    Raises:
        ValueError: histograms of another length than ``bins``, or ``tau`` off the bin edges.
    """
    bins = _check_bins(bins)
    p, n = _histogram_pair(pos, neg, ndim=1)
    if p.shape[0] != bins:
        raise ValueError(f"histograms have {p.shape[0]} bins, expected bins={bins}")
    k = _threshold_bin(tau, bins)
    inter = int(round(p[k:].sum()))
    return {"intersection": inter, "predicted": inter + int(round(n[k:].sum())), "mask": int(round(p.sum()))}


def dice_curve(pos: Any, neg: Any) -> np.ndarray:
    """Dice at every threshold ``k/B``, ``k = 0 .. B-1`` (``S = bin >= k``), from one image's histograms.

    Args:
        pos: length-B lesion-pixel histogram (a ``…×B`` stack works too).
        neg: background-pixel histogram of the same shape.

    Returns:
        float64 array of the same shape as ``pos``.
    """
    p, n = _histogram_pair(pos, neg)
    return _dice_curve_rows(p, n)


def _lesion_histograms(pos_per_image: Any, neg_per_image: Any, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Validated ``n×B`` per-image histograms of images that must each hold lesion pixels (Dice is
    averaged over those images only); ``what`` names the caller in the error."""
    p, n = _histogram_pair(pos_per_image, neg_per_image, ndim=2)
    empty = np.flatnonzero(p.sum(axis=1) == 0)
    if empty.size:
        raise ValueError(
            f"{what} averages over images that contain a lesion; rows {empty[:10].tolist()} have no lesion pixels"
        )
    return p, n


def _best_mean_dice_bin(p: np.ndarray, n: np.ndarray) -> tuple[int, float]:
    """``(k, mean Dice at k)`` for the bin k maximising the mean over images of per-image Dice at
    threshold ``k/B`` (``n×B`` histograms, n ≥ 1); ties go to the lowest k."""
    mean = _dice_curve_rows(p, n).mean(axis=0)
    k = int(np.argmax(mean))  # first maximum: the lowest threshold among ties
    return k, float(mean[k])


def _dice_at_bin_rows(p: np.ndarray, n: np.ndarray, k: int) -> np.ndarray:
    """Per-image Dice at threshold ``k/B`` (``S = bin >= k``) of ``…×B`` histograms; shape ``…``."""
    inter = p[..., k:].sum(axis=-1)
    return _dice_from_counts(inter, inter + n[..., k:].sum(axis=-1), p.sum(axis=-1))


def oracle_dice(pos_per_image: Any, neg_per_image: Any) -> tuple[float, float]:
    """The best mean Dice over a dataset at one shared threshold ("oracle τ").

    The threshold is chosen on the very images it is scored on, so this is an upper bound of what
    a fixed threshold can reach; :func:`selected_threshold` with
    :func:`dice_at_threshold_from_histograms` is the protocol that chooses it on other images.

    Args:
        pos_per_image: ``n×B`` lesion-pixel histograms of images that contain a lesion of the class.
        neg_per_image: ``n×B`` background-pixel histograms of the same images.

    Returns:
        ``(best mean Dice, tau)`` where ``tau = k/B`` maximises the mean over images of per-image
        Dice; ties go to the lowest tau. ``(nan, nan)`` when n = 0.

    Raises:
        ValueError: shape mismatch, or an image without lesion pixels (those are not averaged).
    """
    p, n = _lesion_histograms(pos_per_image, neg_per_image, "oracle_dice")
    if p.shape[0] == 0:
        return float("nan"), float("nan")
    k, best = _best_mean_dice_bin(p, n)
    return best, k / p.shape[1]


def selected_threshold(pos_per_image: Any, neg_per_image: Any) -> float:
    """The threshold ``tau = k/B`` that maximises mean per-image Dice over the given images.

    Used on the **validation** images of a class (per method), then applied unchanged to the test
    images with :func:`dice_at_threshold_from_histograms` (Choe et al., CVPR 2020, choose WSOL
    hyper-parameters on held-out annotated images, never on test). The same search as
    :func:`oracle_dice`: ties go to the lowest tau.

    Args:
        pos_per_image: ``n×B`` lesion-pixel histograms of (validation) images containing a lesion of the class.
        neg_per_image: ``n×B`` background-pixel histograms of the same images.

    Returns:
        ``tau`` on the grid ``0, 1/B, …, (B-1)/B``; NaN when n = 0 (nothing to choose from).

    Raises:
        ValueError: shape mismatch, or an image without lesion pixels.
    """
    p, n = _lesion_histograms(pos_per_image, neg_per_image, "selected_threshold")
    if p.shape[0] == 0:
        return float("nan")
    k, _ = _best_mean_dice_bin(p, n)
    return k / p.shape[1]


def dice_per_image_at_threshold(pos_per_image: Any, neg_per_image: Any, tau: float) -> np.ndarray:
    """Per-image Dice at threshold ``tau`` from per-image histograms (exact: ``S = bin >= k``, ``tau = k/B``).

    Args:
        pos_per_image: ``n×B`` lesion-pixel histograms of images containing a lesion of the class.
        neg_per_image: ``n×B`` background-pixel histograms of the same images.
        tau: a bin edge ``k/B`` (e.g. from :func:`selected_threshold`); NaN gives NaN for every image.

    Returns:
        float64 array of length n.

    Raises:
        ValueError: shape mismatch, an image without lesion pixels, or ``tau`` off the bin edges.
    """
    p, n = _lesion_histograms(pos_per_image, neg_per_image, "dice_per_image_at_threshold")
    if not np.isfinite(float(tau)):
        return np.full(p.shape[0], np.nan)
    return _dice_at_bin_rows(p, n, _threshold_bin(tau, p.shape[1]))


def dice_at_threshold_from_histograms(pos_per_image: Any, neg_per_image: Any, tau: float) -> float:
    """Mean per-image Dice at ``tau`` over images containing a lesion (see :func:`dice_per_image_at_threshold`).

    With ``tau = selected_threshold(validation histograms)`` and the test images' histograms this is
    the benchmark's headline Dice.

    Returns:
        the mean; NaN when n = 0 or ``tau`` is NaN.
    """
    values = dice_per_image_at_threshold(pos_per_image, neg_per_image, tau)
    return float(values.mean()) if values.size else float("nan")


def validation_selected_dice(
    pos_val: Any, neg_val: Any, pos_test: Any, neg_test: Any
) -> tuple[float, float]:
    """Mean test Dice at the threshold chosen on the validation images, and that threshold.

    Args:
        pos_val, neg_val: ``n_val×B`` histograms of validation images containing a lesion of the class.
        pos_test, neg_test: ``n_test×B`` histograms of test images containing a lesion of the class.

    Returns:
        ``(mean test Dice at tau, tau)``; ``tau`` is NaN when there is no validation image, the
        Dice NaN when either set is empty.

    Raises:
        ValueError: the two sets have different bin counts, or a row without lesion pixels.
    """
    p_val, _ = _histogram_pair(pos_val, neg_val, ndim=2)
    p_test, _ = _histogram_pair(pos_test, neg_test, ndim=2)
    if p_val.shape[1] != p_test.shape[1]:
        raise ValueError(f"validation histograms have {p_val.shape[1]} bins, test histograms {p_test.shape[1]}")
    tau = selected_threshold(pos_val, neg_val)
    return dice_at_threshold_from_histograms(pos_test, neg_test, tau), tau


def pxap_from_histograms(pos: Any, neg: Any) -> float:
    """Pixel average precision (PxAP, Choe et al., CVPR 2020) from pooled fixed-bin histograms.

    Thresholds are ``0, 1/B, ..., (B-1)/B``; at each, precision and recall of the pixels with
    value >= threshold. Visiting thresholds from high to low (recall increasing, starting from
    recall 0), ``AP = sum_l precision_l (recall_l - recall_{l-1})``. Where no pixel is predicted,
    precision is defined as 1 (sklearn's convention); such thresholds have zero recall gain, so
    the definition never changes the result. For maps whose values are all bin edges ``k/B`` this
    equals ``sklearn.metrics.average_precision_score``.

    Args:
        pos: length-B lesion-pixel counts pooled over the scored images.
        neg: length-B background-pixel counts pooled likewise.

    Returns:
        PxAP in [0, 1]; NaN when there is no lesion pixel.
    """
    p, n = _histogram_pair(pos, neg, ndim=1)
    return float(_pxap_rows(p, n))


def pxap(saliency: Any, mask: Any, bins: int = DEFAULT_BINS) -> float:
    """PxAP of one ``H×W`` map in [0, 1] against its ``H×W`` bool mask; see :func:`pxap_from_histograms`."""
    return pxap_from_histograms(*pixel_histograms(saliency, mask, bins))


def _scores_and_labels(scores: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    """Length-N float64 scores and bool labels, checked (the AUC function and accumulator share it).

    Raises:
        ValueError: length mismatch, non-finite scores, labels other than 0/1.
    """
    s = np.asarray(_to_numpy(scores), dtype=np.float64).ravel()
    y = _as_bool_mask(np.asarray(_to_numpy(labels)).ravel())
    if s.shape != y.shape:
        raise ValueError(f"scores ({s.size}) and labels ({y.size}) differ in length")
    if not np.isfinite(s).all():
        raise ValueError("scores contain NaN or infinite values")
    return s, y


def auc(scores: Any, labels: Any) -> float:
    """Area under the ROC curve via the Mann–Whitney U statistic (ties count one half).

    Args:
        scores: length-n image-level scores (finite).
        labels: length-n 0/1 (or bool) labels.

    Returns:
        ROC AUC; NaN when only one class is present (or n = 0).

    Raises:
        ValueError: length mismatch, non-finite scores, labels other than 0/1.
    """
    s, y = _scores_and_labels(scores, labels)
    n_pos = int(np.count_nonzero(y))
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(s)  # average ranks: tied pairs count one half
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def auc_chance_p_value(value: float, n_pos: int, n_neg: int) -> float:
    """One-sided p-value of an AUC of at least ``value`` from scores unrelated to the labels.

    Under that null hypothesis the Mann–Whitney U behind :func:`auc` has mean ``n_pos·n_neg/2`` and
    variance ``n_pos·n_neg·(n_pos+n_neg+1)/12``; the normal approximation (no tie correction) is
    used. NaN when ``value`` is not finite or a class has no image.
    """
    if not np.isfinite(value) or n_pos < 1 or n_neg < 1:
        return float("nan")
    sd = math.sqrt((n_pos + n_neg + 1) / (12.0 * n_pos * n_neg))
    return 0.5 * math.erfc((value - 0.5) / sd / math.sqrt(2.0))


def bootstrap_ci(
    statistic: Callable[[np.ndarray], float], n: int, n_boot: int = 1000, level: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of a statistic over n items (images).

    Args:
        statistic: called with an int index array of length n (a resample of ``range(n)`` with
            replacement); returns a float. NaN results (e.g. a resample without positives) are dropped.
        n: number of items.
        n_boot: number of resamples.
        level: coverage of the interval.
        seed: seed of the resampling (same draws as :func:`bootstrap_pxap_ci` for the same seed).

    Returns:
        ``(low, high)``; ``(nan, nan)`` when n = 0 or every resample gave NaN.
    """
    _check_bootstrap_args(n_boot, level)
    if n <= 0:
        return float("nan"), float("nan")
    draws = _resample_indices(int(n), int(n_boot), seed)
    values = np.array([float(statistic(idx)) for idx in draws], dtype=np.float64)
    return _percentile_interval(values, level)


def bootstrap_pxap_ci(
    pos_per_image: Any, neg_per_image: Any, n_boot: int = 1000, level: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of pooled PxAP, resampling images.

    Vectorised: each resample is a row of image multiplicities (``n_boot×n``), and the pooled
    histograms of all resamples are one product with the ``n×B`` per-image histograms.

    Args:
        pos_per_image: ``n×B`` lesion-pixel histograms (all images whose mask is known).
        neg_per_image: ``n×B`` background-pixel histograms.
        n_boot: number of resamples.
        level: coverage of the interval.
        seed: seed of the resampling.

    Returns:
        ``(low, high)``; ``(nan, nan)`` when n = 0 or no resample holds a lesion pixel.
    """
    _check_bootstrap_args(n_boot, level)
    p, q = _histogram_pair(pos_per_image, neg_per_image, ndim=2)
    n = p.shape[0]
    if n == 0:
        return float("nan"), float("nan")
    draws = _resample_indices(n, int(n_boot), seed)
    rows = np.repeat(np.arange(int(n_boot)), n)
    counts = np.bincount(rows * n + draws.ravel(), minlength=int(n_boot) * n).reshape(int(n_boot), n)
    counts = counts.astype(np.float64)  # float64 matmul (BLAS) is exact for these integer counts (< 2**53)
    return _percentile_interval(_pxap_rows(counts @ p, counts @ q), level)


# ----------------------------------------------------------------------------------------------------------------------
# Accumulating forms
# ----------------------------------------------------------------------------------------------------------------------


class _Metric(ABC):
    """Accumulating metric: ``update`` with batches, ``compute`` the result, ``reset`` the state."""

    higher_is_better: ClassVar[bool] = True

    def __init__(self) -> None:
        self.reset()

    @abstractmethod
    def update(self, *args: Any) -> None: ...

    @abstractmethod
    def compute(self) -> float: ...

    @abstractmethod
    def reset(self) -> None: ...


def _image_stack(saliency: Any, mask: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validated ``N×H×W`` map and mask stacks from one ``H×W`` pair or an ``N×H×W`` batch."""
    x, m = _validated_pair(saliency, mask)
    if x.ndim == 2:
        return x[None], m[None]
    if x.ndim == 3:
        return x, m
    raise ValueError(f"expected an H×W map or an N×H×W batch, got shape {tuple(x.shape)}")


class DiceMetric(_Metric):
    """Mean Dice at a fixed threshold over the images that contain a lesion.

    Images whose mask is empty are skipped (they are not part of the mean). State: a running sum
    and an image count.

    Args:
        tau: threshold; a pixel is predicted positive when its value is >= tau.
    """

    def __init__(self, tau: float = 0.5) -> None:
        self.tau = float(tau)
        super().__init__()

    def reset(self) -> None:
        self.dice_sum = 0.0
        self.n_images = 0

    def update(self, saliency: Any, mask: Any) -> None:
        """Add one ``H×W`` map and mask, or a batch ``N×H×W`` of them (values in [0, 1], bool masks)."""
        x, m = _image_stack(saliency, mask)
        s = x >= np.float64(self.tau)
        n_mask = np.count_nonzero(m, axis=(1, 2))
        keep = n_mask > 0
        if not keep.any():
            return
        inter = np.count_nonzero(s & m, axis=(1, 2))
        values = _dice_from_counts(inter, np.count_nonzero(s, axis=(1, 2)), n_mask)
        self.dice_sum += float(values[keep].sum())
        self.n_images += int(keep.sum())

    def compute(self) -> float:
        """Mean Dice; NaN before any image with a lesion."""
        return self.dice_sum / self.n_images if self.n_images else float("nan")


class PxAPMetric(_Metric):
    """PxAP over pooled fixed-bin histograms (memory independent of image count).

    The report passes the images that contain a lesion of the class (as for Dice).
    State: ``pos`` and ``neg``, two int64 arrays of length ``bins``.

    Args:
        bins: number of threshold bins B.
    """

    def __init__(self, bins: int = DEFAULT_BINS) -> None:
        self.bins = _check_bins(bins)
        super().__init__()

    def reset(self) -> None:
        self.pos = np.zeros(self.bins, dtype=np.int64)
        self.neg = np.zeros(self.bins, dtype=np.int64)

    def update(self, saliency: Any, mask: Any) -> None:
        """Add one ``H×W`` map and mask, or a batch ``N×H×W`` (all pixels are pooled)."""
        x, m = _validated_pair(saliency, mask)
        pos, neg = _histograms_unchecked(x, m, self.bins)
        self.pos += pos
        self.neg += neg

    def update_histograms(self, pos: Any, neg: Any) -> None:
        """Add stored histograms (length B, or ``n×B`` summed over images), e.g. from run records."""
        p, n = _histogram_pair(pos, neg)
        if p.shape[-1] != self.bins:
            raise ValueError(f"histograms have {p.shape[-1]} bins, this metric has {self.bins}")
        p = p.reshape(-1, self.bins).sum(axis=0)
        n = n.reshape(-1, self.bins).sum(axis=0)
        self.pos += np.rint(p).astype(np.int64)
        self.neg += np.rint(n).astype(np.int64)

    def compute(self) -> float:
        """PxAP of everything added; NaN while no lesion pixel has been seen."""
        return float(_pxap_rows(self.pos.astype(np.float64), self.neg.astype(np.float64)))

    def chance(self) -> float:
        """The PxAP of a map unrelated to the masks: the fraction of lesion pixels among the pixels
        added (NaN before any pixel)."""
        total = int(self.pos.sum() + self.neg.sum())
        return float(self.pos.sum() / total) if total else float("nan")


class AUCMetric(_Metric):
    """ROC AUC of image-level scores. State: the scores and labels seen (one number each per image)."""

    def reset(self) -> None:
        self._scores: list[np.ndarray] = []
        self._labels: list[np.ndarray] = []

    def update(self, scores: Any, labels: Any) -> None:
        """Add length-N scores and 0/1 labels (or scalars)."""
        s, y = _scores_and_labels(scores, labels)
        self._scores.append(s)
        self._labels.append(y)

    def counts(self) -> tuple[int, int]:
        """``(positive, negative)`` images added."""
        labels = np.concatenate(self._labels) if self._labels else np.zeros(0, dtype=bool)
        n_pos = int(np.count_nonzero(labels))
        return n_pos, int(labels.size) - n_pos

    def compute(self) -> float:
        """AUC of everything added; NaN while only one class has been seen."""
        if not self._scores:
            return float("nan")
        return auc(np.concatenate(self._scores), np.concatenate(self._labels))


__all__ = [
    "DEFAULT_BINS",
    "RANGE_TOLERANCE",
    "AUCMetric",
    "DiceMetric",
    "PxAPMetric",
    "auc",
    "auc_chance_p_value",
    "bin_indices",
    "bootstrap_ci",
    "bootstrap_pxap_ci",
    "dice",
    "dice_counts",
    "dice_at_threshold_from_histograms",
    "dice_curve",
    "dice_per_image_at_threshold",
    "oracle_dice",
    "pixel_histograms",
    "pxap",
    "pxap_from_histograms",
    "selected_threshold",
    "validation_selected_dice",
]
