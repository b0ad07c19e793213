"""Tests of wsl_bench.evaluation.metrics against independent references (sklearn, brute-force loops)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from sklearn.metrics import average_precision_score, f1_score, roc_auc_score

from wsl_bench.evaluation import metrics as M

FAST = settings(max_examples=60, deadline=None)


# ----------------------------------------------------------------------------------------------------------------------
# Strategies and helpers
# ----------------------------------------------------------------------------------------------------------------------


@st.composite
def map_and_mask(draw, quantise_bins: int | None = None, min_pos: int = 0, max_side: int = 12):
    """A random float64 map in [0, 1] and a bool mask of the same small shape."""
    h = draw(st.integers(1, max_side))
    w = draw(st.integers(1, max_side))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    style = draw(st.sampled_from(["uniform", "coarse", "edges"]))
    if quantise_bins is not None:
        x = rng.integers(0, quantise_bins, size=(h, w)) / quantise_bins
    elif style == "uniform":
        x = rng.random((h, w))
    elif style == "coarse":  # many ties, exact 0 and 1
        x = rng.integers(0, 5, size=(h, w)) / 4.0
    else:  # values on and just below bin edges of the default grid
        k = rng.integers(1, M.DEFAULT_BINS, size=(h, w))
        x = k / M.DEFAULT_BINS
        below = rng.random((h, w)) < 0.5
        x[below] = np.nextafter(x[below], -1.0)
    m = rng.random((h, w)) < draw(st.floats(0.0, 1.0))
    if min_pos and m.sum() < min_pos:
        m.flat[rng.choice(m.size, size=min(min_pos, m.size), replace=False)] = True
    return x, m


def brute_histograms(x: np.ndarray, m: np.ndarray, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Histograms by explicit threshold comparisons: bin k holds k/bins <= v < (k+1)/bins (last bin closed)."""
    pos = np.zeros(bins, dtype=np.int64)
    neg = np.zeros(bins, dtype=np.int64)
    for k in range(bins):
        inside = x >= k / bins
        if k + 1 < bins:
            inside &= x < (k + 1) / bins
        pos[k] = np.count_nonzero(inside & m)
        neg[k] = np.count_nonzero(inside & ~m)
    return pos, neg


# ----------------------------------------------------------------------------------------------------------------------
# Binning and histograms
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bins", [10, 100, 997, 1000])
def test_bin_edges_are_exact(bins):
    edges = np.arange(bins) / bins
    assert np.array_equal(M.bin_indices(edges, bins), np.arange(bins))
    just_below = np.nextafter(edges[1:], -1.0)
    assert np.array_equal(M.bin_indices(just_below, bins), np.arange(bins - 1))
    assert M.bin_indices(np.array([1.0]), bins)[0] == bins - 1


def test_float32_maps_bin_like_a_float64_comparison():
    # float32 values on, just below and just above every edge k/1000 (float32(k/1000) may lie on either side)
    on = (np.arange(1000) / 1000).astype(np.float32)
    x32 = np.concatenate([on, np.nextafter(on, np.float32(-1)), np.nextafter(on, np.float32(2))])
    x32 = np.clip(x32, 0, 1)
    thresholds = np.arange(1000) / 1000
    expected = (x32.astype(np.float64)[:, None] >= thresholds[None, :]).sum(axis=1) - 1
    assert np.array_equal(M.bin_indices(x32), expected)


def test_values_within_tolerance_are_clamped():
    idx = M.bin_indices(np.array([-0.5e-6, 0.0, 1.0, 1.0 + 0.5e-6]))
    assert idx.tolist() == [0, 0, M.DEFAULT_BINS - 1, M.DEFAULT_BINS - 1]


@FAST
@given(map_and_mask())
def test_histograms_match_brute_force(case):
    x, m = case
    pos, neg = M.pixel_histograms(x, m, bins=25)
    bpos, bneg = brute_histograms(x, m, 25)
    assert pos.dtype == np.int64 and neg.dtype == np.int64
    assert np.array_equal(pos, bpos) and np.array_equal(neg, bneg)
    assert pos.sum() == m.sum() and neg.sum() == (~m).sum()


def test_full_resolution_histogram_counts_every_pixel():
    # Speed is measured by benchmarks, never asserted in unit tests (shared machines are noisy).
    rng = np.random.default_rng(0)
    x = rng.random((2944, 1920), dtype=np.float32)
    m = np.zeros(x.shape, dtype=bool)
    m[1000:1100, 500:700] = True
    pos, neg = M.pixel_histograms(x, m)
    assert pos.sum() == m.sum() and neg.sum() == (~m).sum()
    assert np.array_equal(pos, np.bincount(M.bin_indices(x[m]), minlength=M.DEFAULT_BINS))


# ----------------------------------------------------------------------------------------------------------------------
# Dice
# ----------------------------------------------------------------------------------------------------------------------


@FAST
@given(map_and_mask(), st.sampled_from([0.5, 0.0, 0.25, 0.3, 0.999, 1.0]))
def test_dice_equals_sklearn_f1(case, tau):
    x, m = case
    expected = f1_score(m.ravel(), (x >= tau).ravel(), zero_division=1.0)
    assert M.dice(x, m, tau) == pytest.approx(expected, abs=1e-12)


@FAST
@given(map_and_mask())
def test_dice_curve_and_counts_agree_with_functional_dice(case):
    x, m = case
    bins = 40
    pos, neg = M.pixel_histograms(x, m, bins)
    curve = M.dice_curve(pos, neg)
    assert curve.shape == (bins,)
    for k in range(bins):
        assert curve[k] == pytest.approx(M.dice(x, m, k / bins), abs=1e-12)
    for k in (0, 10, 20, 39):
        counts = M.dice_counts(pos, neg, k / bins, bins=bins)
        s = x >= k / bins
        assert counts == {
            "intersection": int(np.count_nonzero(s & m)),
            "predicted": int(np.count_nonzero(s)),
            "mask": int(np.count_nonzero(m)),
        }


@FAST
@given(map_and_mask(max_side=30))
def test_dice_counts_default_bins_match_dice_at_half(case):
    x, m = case
    c = M.dice_counts(*M.pixel_histograms(x, m))
    from_counts = 1.0 if c["predicted"] + c["mask"] == 0 else 2 * c["intersection"] / (c["predicted"] + c["mask"])
    assert from_counts == pytest.approx(M.dice(x, m, 0.5), abs=1e-12)


def test_dice_counts_rejects_off_grid_tau_and_wrong_length():
    pos, neg = np.ones(10, np.int64), np.ones(10, np.int64)
    with pytest.raises(ValueError, match="bin edge"):
        M.dice_counts(pos, neg, tau=0.55, bins=10)
    with pytest.raises(ValueError, match="bin edge"):
        M.dice_counts(pos, neg, tau=1.0, bins=10)
    with pytest.raises(ValueError, match="expected bins=1000"):
        M.dice_counts(pos, neg)


def brute_oracle(maps, masks, bins):
    best, best_tau = -1.0, None
    for k in range(bins):
        mean = float(np.mean([M.dice(x, m, k / bins) for x, m in zip(maps, masks, strict=True)]))
        if mean > best + 1e-12:  # strictly better: ties keep the lowest threshold
            best, best_tau = mean, k / bins
    return best, best_tau


@settings(max_examples=25, deadline=None)
@given(st.lists(map_and_mask(min_pos=1), min_size=1, max_size=5))
def test_oracle_dice_matches_brute_force(cases):
    bins = 20
    maps = [x for x, _ in cases]
    masks = [m for _, m in cases]
    hists = [M.pixel_histograms(x, m, bins) for x, m in cases]
    pos = np.stack([p for p, _ in hists])
    neg = np.stack([n for _, n in hists])
    best, tau = M.oracle_dice(pos, neg)
    exp_best, exp_tau = brute_oracle(maps, masks, bins)
    assert best == pytest.approx(exp_best, abs=1e-12)
    assert tau == exp_tau


def test_oracle_dice_ties_go_to_lowest_tau_and_rejects_lesion_free_images():
    # All values 0.8: every threshold up to 0.8 predicts the whole image, so Dice is constant there.
    x = np.full((4, 4), 0.8)
    m = np.zeros((4, 4), bool)
    m[:2] = True
    pos, neg = M.pixel_histograms(x, m, bins=10)
    best, tau = M.oracle_dice(pos[None], neg[None])
    assert tau == 0.0 and best == pytest.approx(2 * 8 / (16 + 8))
    with pytest.raises(ValueError, match="rows \\[1\\]"):
        M.oracle_dice(np.stack([pos, np.zeros(10)]), np.stack([neg, np.full(10, 3)]))
    assert all(np.isnan(M.oracle_dice(np.zeros((0, 10)), np.zeros((0, 10)))))


def direct_dice(x: np.ndarray, m: np.ndarray, tau: float) -> float:
    """Dice straight from a map and a mask (no library code): S = x >= tau."""
    s = x >= tau
    denom = np.count_nonzero(s) + np.count_nonzero(m)
    return 2.0 * np.count_nonzero(s & m) / denom if denom else 1.0


def brute_validation_dice(val_cases, test_cases, bins):
    """Try every tau = k/bins on the validation maps (mean per-image Dice, ties to the lowest tau),
    then the mean test Dice at that tau, everything computed from the maps and masks directly."""
    best, best_tau = -1.0, None
    for k in range(bins):
        mean = float(np.mean([direct_dice(x, m, k / bins) for x, m in val_cases]))
        if mean > best + 1e-12:  # strictly better: ties keep the lowest threshold
            best, best_tau = mean, k / bins
    return float(np.mean([direct_dice(x, m, best_tau) for x, m in test_cases])), best_tau


def stacked_histograms(cases, bins):
    hists = [brute_histograms(x, m, bins) for x, m in cases]
    return np.stack([p for p, _ in hists]), np.stack([n for _, n in hists])


@settings(max_examples=40, deadline=None)
@given(st.lists(map_and_mask(min_pos=1), min_size=1, max_size=5),
       st.lists(map_and_mask(min_pos=1), min_size=1, max_size=5),
       st.sampled_from([7, 20, 100]))
def test_validation_selected_dice_equals_brute_force(val_cases, test_cases, bins):
    pos_val, neg_val = stacked_histograms(val_cases, bins)
    pos_test, neg_test = stacked_histograms(test_cases, bins)
    expected_dice, expected_tau = brute_validation_dice(val_cases, test_cases, bins)
    tau = M.selected_threshold(pos_val, neg_val)
    assert tau == expected_tau
    assert M.dice_at_threshold_from_histograms(pos_test, neg_test, tau) == pytest.approx(expected_dice, abs=1e-12)
    per_image = M.dice_per_image_at_threshold(pos_test, neg_test, tau)
    assert per_image == pytest.approx([direct_dice(x, m, tau) for x, m in test_cases], abs=1e-12)
    assert M.validation_selected_dice(pos_val, neg_val, pos_test, neg_test) == pytest.approx(
        (expected_dice, expected_tau), abs=1e-12)


def test_validation_threshold_is_chosen_on_validation_not_on_test():
    # Validation maps are right at 0.7 and above; test maps at 0.2 and above. The test images' own
    # best threshold (the oracle) is 0.2, but the headline applies the validation threshold: 0.7.
    bins = 10
    mask = np.zeros((4, 4), bool)
    mask[:2] = True
    val_map = np.where(mask, 0.75, 0.05)
    test_map = np.where(mask, 0.25, 0.05)
    pos_val, neg_val = M.pixel_histograms(val_map, mask, bins)
    pos_test, neg_test = M.pixel_histograms(test_map, mask, bins)
    tau = M.selected_threshold(pos_val[None], neg_val[None])
    assert tau == 0.1  # the lowest of the thresholds 0.1 ... 0.7 that all give Dice 1 on validation
    assert M.dice_at_threshold_from_histograms(pos_test[None], neg_test[None], tau) == 1.0
    val_only_high = np.where(mask, 0.75, 0.45)
    pos_val, neg_val = M.pixel_histograms(val_only_high, mask, bins)
    tau = M.selected_threshold(pos_val[None], neg_val[None])
    assert tau == 0.5
    assert M.dice_at_threshold_from_histograms(pos_test[None], neg_test[None], tau) == 0.0  # test lesions < 0.5
    assert M.oracle_dice(pos_test[None], neg_test[None]) == (1.0, 0.1)


def test_validation_selection_shares_oracle_search_and_handles_empty_and_bad_input():
    rng = np.random.default_rng(3)
    cases = [(rng.random((6, 5)), rng.random((6, 5)) < 0.4) for _ in range(4)]
    pos, neg = stacked_histograms([(x, m | (np.arange(30).reshape(6, 5) == 0)) for x, m in cases], 50)
    best, tau = M.oracle_dice(pos, neg)
    assert M.selected_threshold(pos, neg) == tau  # chosen on the same images, it is the oracle
    assert M.dice_at_threshold_from_histograms(pos, neg, tau) == pytest.approx(best, abs=1e-15)
    assert np.isnan(M.selected_threshold(np.zeros((0, 50)), np.zeros((0, 50))))
    assert np.isnan(M.dice_at_threshold_from_histograms(pos, neg, float("nan")))
    assert np.isnan(M.dice_at_threshold_from_histograms(np.zeros((0, 50)), np.zeros((0, 50)), 0.5))
    with pytest.raises(ValueError, match="rows \\[1\\]"):
        M.selected_threshold(np.stack([pos[0], np.zeros(50)]), np.stack([neg[0], np.ones(50)]))
    with pytest.raises(ValueError, match="not a bin edge"):
        M.dice_at_threshold_from_histograms(pos, neg, 0.013)
    with pytest.raises(ValueError, match="50 bins"):
        M.validation_selected_dice(pos, neg, pos[:, :25], neg[:, :25])


# ----------------------------------------------------------------------------------------------------------------------
# PxAP
# ----------------------------------------------------------------------------------------------------------------------


@FAST
@given(map_and_mask(quantise_bins=M.DEFAULT_BINS, min_pos=1))
def test_pxap_equals_sklearn_on_bin_edge_maps(case):
    x, m = case
    expected = average_precision_score(m.ravel(), x.ravel())
    assert M.pxap(x, m) == pytest.approx(expected, rel=1e-9, abs=1e-12)


@FAST
@given(map_and_mask(quantise_bins=10, min_pos=1, max_side=20))
def test_pxap_equals_sklearn_with_ten_bins(case):
    x, m = case
    expected = average_precision_score(m.ravel(), x.ravel())
    assert M.pxap(x, m, bins=10) == pytest.approx(expected, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("bins", [10, 100, 1000])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pxap_equals_sklearn_when_every_bin_edge_occurs(bins, seed):
    # every value k/bins occurs, so edges whose float product k/bins*bins rounds below k (0.29*100) are exercised
    rng = np.random.default_rng(seed)
    x = np.repeat(np.arange(bins) / bins, 3)
    m = rng.random(x.size) < 0.3
    assert M.pxap(x, m, bins=bins) == pytest.approx(average_precision_score(m, x), rel=1e-9)


@settings(max_examples=25, deadline=None)
@given(st.lists(map_and_mask(quantise_bins=50), min_size=1, max_size=5))
def test_pooled_pxap_equals_sklearn_on_all_pixels_including_lesion_free_images(cases):
    metric = M.PxAPMetric(bins=50)
    for x, m in cases:
        metric.update(x, m)
    labels = np.concatenate([m.ravel() for _, m in cases])
    values = np.concatenate([x.ravel() for x, _ in cases])
    if labels.any():
        assert metric.compute() == pytest.approx(average_precision_score(labels, values), rel=1e-9, abs=1e-12)
    else:
        assert np.isnan(metric.compute())


def test_pxap_known_values():
    x = np.array([0.9, 0.8, 0.1, 0.0])
    assert M.pxap(x, np.array([True, True, False, False])) == 1.0
    # ranking 0.9(neg) 0.8(pos): precision at the single positive is 1/2
    assert M.pxap(x, np.array([False, True, False, False])) == pytest.approx(0.5)
    assert np.isnan(M.pxap(x, np.zeros(4, bool)))
    # constant map: every pixel enters at the same threshold, AP = prevalence
    assert M.pxap(np.full((4, 4), 0.3), np.eye(4, dtype=bool)) == pytest.approx(4 / 16)


# ----------------------------------------------------------------------------------------------------------------------
# AUC
# ----------------------------------------------------------------------------------------------------------------------


@FAST
@given(st.integers(2, 40), st.integers(0, 2**32 - 1), st.booleans())
def test_auc_equals_sklearn_with_ties(n, seed, coarse):
    rng = np.random.default_rng(seed)
    labels = rng.random(n) < 0.5
    labels[0], labels[1] = True, False
    scores = rng.integers(0, 4, n) / 3 if coarse else rng.random(n)
    assert M.auc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


def test_auc_one_class_is_nan_and_bad_input_is_an_error():
    assert np.isnan(M.auc([0.1, 0.7], [1, 1]))
    assert np.isnan(M.auc([0.1, 0.7], [0, 0]))
    assert np.isnan(M.auc([], []))
    with pytest.raises(ValueError, match="differ in length"):
        M.auc([0.1, 0.2], [1])
    with pytest.raises(ValueError, match="NaN"):
        M.auc([np.nan, 0.2], [1, 0])
    with pytest.raises(ValueError, match="0 and 1"):
        M.auc([0.1, 0.2], [2, 0])


# ----------------------------------------------------------------------------------------------------------------------
# Accumulating forms
# ----------------------------------------------------------------------------------------------------------------------


def random_images(n, seed, shape=(16, 12), lesion_every=2):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        x = rng.random(shape)
        m = np.zeros(shape, bool)
        if i % lesion_every == 0:
            r, c = rng.integers(0, shape[0] - 4), rng.integers(0, shape[1] - 4)
            m[r : r + 4, c : c + 4] = True
            x[m] = np.clip(x[m] + 0.3, 0, 1)
        out.append((x, m))
    return out


def test_accumulators_equal_functional_forms_over_several_updates():
    images = random_images(9, seed=3)
    dice_metric, pxap_metric, auc_metric = M.DiceMetric(tau=0.5), M.PxAPMetric(bins=100), M.AUCMetric()
    # mixed update sizes: single images and batches
    dice_metric.update(images[0][0], images[0][1])
    dice_metric.update(np.stack([x for x, _ in images[1:]]), np.stack([m for _, m in images[1:]]))
    state_shape = pxap_metric.pos.shape
    for x, m in images:
        pxap_metric.update(x, m)
        assert pxap_metric.pos.shape == state_shape == pxap_metric.neg.shape == (100,)
    scores = [float(x.max()) for x, _ in images]
    labels = [int(m.any()) for _, m in images]
    auc_metric.update(scores[:4], labels[:4])
    auc_metric.update(scores[4:], labels[4:])

    lesion = [(x, m) for x, m in images if m.any()]
    assert dice_metric.n_images == len(lesion) == 5
    assert dice_metric.compute() == pytest.approx(np.mean([M.dice(x, m) for x, m in lesion]))
    all_x = np.concatenate([x.ravel() for x, _ in images])
    all_m = np.concatenate([m.ravel() for _, m in images])
    assert pxap_metric.compute() == pytest.approx(M.pxap(all_x, all_m, bins=100))
    assert auc_metric.compute() == pytest.approx(M.auc(scores, labels))
    for metric in (dice_metric, pxap_metric, auc_metric):
        assert metric.higher_is_better is True
        metric.reset()
        assert np.isnan(metric.compute())


def test_pxap_accumulator_state_does_not_grow_and_merges_stored_histograms():
    metric, merged = M.PxAPMetric(bins=64), M.PxAPMetric(bins=64)
    stored = []
    for x, m in random_images(30, seed=5, shape=(32, 32)):
        metric.update(x, m)
        stored.append(M.pixel_histograms(x, m, bins=64))
    assert metric.pos.nbytes == metric.neg.nbytes == 64 * 8
    assert metric.pos.sum() + metric.neg.sum() == 30 * 32 * 32
    merged.update_histograms(np.stack([p for p, _ in stored]), np.stack([n for _, n in stored]))
    assert np.array_equal(merged.pos, metric.pos) and np.array_equal(merged.neg, metric.neg)
    assert merged.compute() == metric.compute()
    with pytest.raises(ValueError, match="64"):
        merged.update_histograms(np.zeros(10), np.zeros(10))


def test_torch_tensors_are_accepted():
    x, m = random_images(1, seed=1)[0]
    assert M.dice(torch.from_numpy(x).float(), torch.from_numpy(m)) == M.dice(x.astype(np.float32), m)
    assert M.pxap(torch.from_numpy(x), torch.from_numpy(m)) == M.pxap(x, m)
    assert M.auc(torch.tensor([0.2, 0.9, 0.4]), torch.tensor([0, 1, 1])) == pytest.approx(1.0)


# ----------------------------------------------------------------------------------------------------------------------
# Edge cases and validation
# ----------------------------------------------------------------------------------------------------------------------


def test_dice_edge_cases():
    m = np.zeros((8, 8), bool)
    m[2:4, 2:4] = True
    empty = np.zeros((8, 8), bool)
    zeros, ones = np.zeros((8, 8)), np.ones((8, 8))
    assert M.dice(zeros, empty) == 1.0  # both empty
    assert M.dice(ones, empty) == 0.0  # empty mask, non-empty prediction
    assert M.dice(zeros, m) == 0.0  # empty prediction
    assert M.dice(ones, m) == pytest.approx(2 * 4 / (64 + 4))  # all-ones map predicts everything
    assert M.dice(np.full((8, 8), 0.5), m) == pytest.approx(2 * 4 / (64 + 4))  # constant map at tau
    assert M.dice(np.full((8, 8), 0.49), m) == 0.0
    # the histogram forms agree on the same edge cases
    for x, mask in ((zeros, empty), (ones, empty), (zeros, m), (ones, m)):
        assert M.dice_curve(*M.pixel_histograms(x, mask))[500] == M.dice(x, mask)


def test_pxap_edge_cases():
    m = np.zeros((8, 8), bool)
    m[0] = True
    assert M.pxap(np.ones((8, 8)), m) == pytest.approx(8 / 64)  # all-ones map: AP = prevalence
    assert M.pxap(m.astype(float), m) == 1.0  # the mask itself is perfect
    assert np.isnan(M.pxap(np.random.default_rng(0).random((8, 8)), np.zeros((8, 8), bool)))
    assert np.isnan(M.pxap_from_histograms(np.zeros(5), np.ones(5)))


@pytest.mark.parametrize(
    "func",
    [
        M.dice,
        M.pxap,
        M.pixel_histograms,
        lambda x, m: M.DiceMetric().update(x, m),
        lambda x, m: M.PxAPMetric().update(x, m),
    ],
)
def test_invalid_maps_give_clear_errors(func):
    m = np.zeros((6, 6), bool)
    nan_map = np.zeros((6, 6))
    nan_map[1, 2] = np.nan
    with pytest.raises(ValueError, match="saliency map contains NaN"):
        func(nan_map, m)
    inf_map = np.zeros((6, 6))
    inf_map[0, 0] = np.inf
    with pytest.raises(ValueError, match="saliency map contains NaN or infinite"):
        func(inf_map, m)
    with pytest.raises(ValueError, match=r"\[0, 1\].*max 1\.5"):
        func(np.full((6, 6), 1.5), m)
    with pytest.raises(ValueError, match=r"\[0, 1\].*min -0\.01"):
        func(np.full((6, 6), -0.01), m)
    with pytest.raises(ValueError, match=r"\(6, 6\).*\(6, 5\)"):
        func(np.zeros((6, 6)), np.zeros((6, 5), bool))


def test_invalid_masks_and_histograms():
    with pytest.raises(ValueError, match="0 and 1"):
        M.dice(np.zeros((3, 3)), np.full((3, 3), 2))
    assert M.dice(np.ones((3, 3)), np.ones((3, 3), dtype=np.uint8)) == 1.0  # 0/1 integer masks are fine
    with pytest.raises(ValueError, match="does not match"):
        M.pxap_from_histograms(np.zeros(5), np.zeros(6))
    with pytest.raises(ValueError, match="non-negative"):
        M.pxap_from_histograms(np.array([1, -1]), np.zeros(2))
    with pytest.raises(ValueError, match="bins"):
        M.pixel_histograms(np.zeros(3), np.zeros(3, bool), bins=0)


# ----------------------------------------------------------------------------------------------------------------------
# Bootstrap
# ----------------------------------------------------------------------------------------------------------------------


def test_bootstrap_ci_contains_estimate_and_shrinks_with_more_data():
    rng = np.random.default_rng(0)
    widths = []
    for n in (20, 500):
        values = rng.beta(2, 3, size=n)
        lo, hi = M.bootstrap_ci(lambda idx, v=values: float(v[idx].mean()), n, n_boot=400)
        assert lo <= values.mean() <= hi
        widths.append(hi - lo)
    assert widths[1] < widths[0] / 2


def test_bootstrap_ci_is_nan_safe_and_deterministic():
    v = np.array([0.0, 1.0, 0.5])
    calls = []

    def stat(idx):
        calls.append(idx)
        return float("nan") if 0 not in idx else float(v[idx].mean())

    lo, hi = M.bootstrap_ci(stat, 3, n_boot=200, seed=1)
    assert np.isfinite(lo) and np.isfinite(hi) and lo <= hi
    assert all(len(i) == 3 and i.min() >= 0 and i.max() < 3 for i in calls)
    assert M.bootstrap_ci(stat, 3, n_boot=200, seed=1) == (lo, hi)
    assert all(np.isnan(M.bootstrap_ci(lambda idx: float("nan"), 5, n_boot=10)))
    assert all(np.isnan(M.bootstrap_ci(lambda idx: 1.0, 0)))
    with pytest.raises(ValueError, match="level"):
        M.bootstrap_ci(lambda idx: 1.0, 5, level=1.5)


def _image_histograms(images, bins):
    hists = [M.pixel_histograms(x, m, bins) for x, m in images]
    return np.stack([p for p, _ in hists]), np.stack([n for _, n in hists])


def test_bootstrap_pxap_ci_equals_the_loop_over_resamples():
    pos, neg = _image_histograms(random_images(12, seed=7, lesion_every=3), bins=50)
    vectorised = M.bootstrap_pxap_ci(pos, neg, n_boot=200, seed=4)
    looped = M.bootstrap_ci(
        lambda idx: M.pxap_from_histograms(pos[idx].sum(axis=0), neg[idx].sum(axis=0)), 12, n_boot=200, seed=4
    )
    assert vectorised == pytest.approx(looped, abs=1e-12)


def test_bootstrap_pxap_ci_contains_estimate_and_shrinks_with_more_data():
    widths = []
    for n in (10, 200):
        pos, neg = _image_histograms(random_images(n, seed=n, shape=(12, 12)), bins=100)
        estimate = M.pxap_from_histograms(pos.sum(axis=0), neg.sum(axis=0))
        lo, hi = M.bootstrap_pxap_ci(pos, neg, n_boot=300)
        assert lo <= estimate <= hi
        widths.append(hi - lo)
    assert widths[1] < widths[0] / 2
    assert all(np.isnan(M.bootstrap_pxap_ci(np.zeros((3, 10)), np.ones((3, 10)), n_boot=20)))


@given(arrays(np.float64, st.integers(1, 30), elements=st.floats(0, 1)))
@settings(max_examples=30, deadline=None)
def test_bin_indices_in_range_and_monotone(x):
    idx = M.bin_indices(x)
    assert idx.min() >= 0 and idx.max() <= M.DEFAULT_BINS - 1
    order = np.argsort(x, kind="stable")
    assert np.all(np.diff(idx[order]) >= 0)
