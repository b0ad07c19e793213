"""The built-in synthetic dataset: determinism, format, anatomy, lesion mix and sizes, visibility."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from scipy import ndimage

import wsl_bench
from wsl_bench.data import DatasetError, SampleError
from wsl_bench.datasets.synthetic import DEFAULT_SPLIT_SIZES, SyntheticMammograms, plot_examples
from wsl_bench.datasets.synthetic_generator import (
    BENIGN_KINDS,
    CATEGORY_PROBS,
    MALIGNANT_KINDS,
    generate,
    image_rng,
    power_law_noise,
    radial_power_slope,
)
from wsl_bench.saliency import CLASSES

SMALL = (256, 160)


@pytest.fixture(scope="module")
def population() -> list:
    """200 small test-split images of seed 11 (≈2 s), shared by the statistics tests."""
    return [generate(11, "test", i, SMALL) for i in range(200)]


# ----------------------------------------------------------------------------- determinism
def test_same_seed_same_bytes_whatever_the_order_or_n():
    a = SyntheticMammograms(split="train", n=5, image_size=SMALL, seed=3, cache_mb=0)
    b = SyntheticMammograms(split="train", n=50, image_size=SMALL, seed=3, cache_mb=0)
    assert b.ids()[:5] == a.ids()
    forward = [a.raw(i) for i in a.ids()]
    backward = [b.raw(i) for i in reversed(b.ids()[:5])][::-1]
    for x, y in zip(forward, backward, strict=True):
        assert x.image_u16.tobytes() == y.image_u16.tobytes()
        for c in CLASSES:
            assert np.array_equal(x.masks[c], y.masks[c])
        assert x.meta == y.meta


def test_different_seed_or_split_gives_different_images():
    base = generate(0, "test", 0, SMALL).image_u16
    assert not np.array_equal(base, generate(1, "test", 0, SMALL).image_u16)
    assert not np.array_equal(base, generate(0, "val", 0, SMALL).image_u16)
    assert not np.array_equal(base, generate(0, "test", 1, SMALL).image_u16)


def test_random_streams_are_independent_of_global_state():
    np.random.seed(123)
    first = generate(4, "val", 2, SMALL).image_u16
    np.random.seed(999)
    np.random.rand(1000)
    assert np.array_equal(first, generate(4, "val", 2, SMALL).image_u16)


def test_ids_and_default_split_sizes():
    for split, n in DEFAULT_SPLIT_SIZES.items():
        ds = SyntheticMammograms(split=split, seed=5, image_size=SMALL)
        assert len(ds) == n
        assert ds.ids()[0] == f"synth-s5-{split}-00000"
        assert ds.ids()[-1] == f"synth-s5-{split}-{n - 1:05d}"
    # the three splits share no image
    train = SyntheticMammograms(split="train", n=3, image_size=SMALL).raw("synth-s0-train-00000").image_u16
    test = SyntheticMammograms(split="test", n=3, image_size=SMALL).raw("synth-s0-test-00000").image_u16
    assert not np.array_equal(train, test)


def test_cache_returns_equal_copies():
    ds = SyntheticMammograms(split="val", n=2, image_size=SMALL, seed=2)
    first = ds.raw(ds.ids()[0])
    first.image_u16[:] = 0  # a caller scribbling on its copy must not reach the cache
    first.masks["benign"][:] = True
    again = ds.raw(ds.ids()[0])
    fresh = generate(2, "val", 0, SMALL)
    assert np.array_equal(again.image_u16, fresh.image_u16)
    assert np.array_equal(again.masks["benign"], fresh.masks["benign"])
    assert ds._cache.get(ds.ids()[0] + ds._key_suffix) is not None


def test_generated_images_are_shared_by_datasets_of_the_process_but_not_across_conspicuities(monkeypatch):
    """Every training job of a run opens its own dataset: each image is generated once per process."""
    import wsl_bench.datasets.synthetic as synthetic

    calls = []
    real_generate = synthetic.generate

    def counting(*args, **kwargs):
        calls.append(args[:3])
        return real_generate(*args, **kwargs)

    monkeypatch.setattr(synthetic, "generate", counting)
    monkeypatch.setattr(synthetic, "_SHARED_CACHE", None)
    first = SyntheticMammograms(split="val", n=2, image_size=SMALL, seed=7).raw("synth-s7-val-00001")
    again = SyntheticMammograms(split="val", n=5, image_size=SMALL, seed=7).raw("synth-s7-val-00001")
    assert len(calls) == 1 and np.array_equal(first.image_u16, again.image_u16)
    obvious = SyntheticMammograms(split="val", n=2, image_size=SMALL, seed=7, conspicuity="obvious")
    brighter = obvious.raw("synth-s7-val-00001")
    assert len(calls) == 2 and not np.array_equal(first.image_u16, brighter.image_u16)
    SyntheticMammograms(split="val", n=2, image_size=SMALL, seed=7, cache_mb=0).raw("synth-s7-val-00001")
    assert len(calls) == 3  # cache_mb=0 neither reads nor fills the shared cache


# ----------------------------------------------------------------------------- format
@pytest.mark.parametrize("size", [(256, 160), (64, 48), (120, 120), (97, 61)])
def test_sizes_dtype_range_and_background(size):
    for index in range(4):
        item = generate(0, "test", index, size)
        img = item.image_u16
        assert img.shape == size and img.dtype == np.uint16
        assert int(img.max()) <= 4095
        assert img[:, -1].max() == 0  # background on the far side from the chest wall is exactly 0
        for c in CLASSES:
            assert item.masks[c].shape == size and item.masks[c].dtype == bool
            assert item.labels[c] == int(item.masks[c].any())
            assert not (item.masks[c] & (img == 0)).any()  # lesions lie inside the breast


def test_load_gives_standardised_sample_via_front_door():
    ds = wsl_bench.create_dataset("synthetic", split="val", n=3, image_size=SMALL, seed=1)
    assert type(ds).needs_root is False
    sample = ds.get(ds.ids()[1])
    assert sample.image.shape == (1, *SMALL) and sample.image.dtype == np.float32
    assert abs(float(sample.image.mean())) < 1e-3 and abs(float(sample.image.std()) - 1) < 1e-3
    assert all(sample.masks[c] is not None for c in CLASSES)  # every synthetic image is fully annotated
    assert sample.meta["id"] == ds.ids()[1] and sample.meta["view"] in ("CC", "MLO")
    assert sample.meta["laterality"] in ("L", "R") and 0.0 <= sample.meta["density"] <= 1.0


def test_bad_arguments_are_reported():
    with pytest.raises(DatasetError, match="split"):
        SyntheticMammograms(split="training")
    with pytest.raises(DatasetError, match="n ≥ 1"):
        SyntheticMammograms(split="test", n=0)
    with pytest.raises(DatasetError, match="≥ 16"):
        SyntheticMammograms(split="test", image_size=(8, 8))
    with pytest.raises(SampleError, match="not a synthetic sample id"):
        SyntheticMammograms(split="test", n=1).raw("img-0001")


# ----------------------------------------------------------------------------- anatomy
def test_chest_wall_left_and_pectoral_only_on_mlo(population):
    views = Counter()
    for item in population:
        img = item.image_u16
        h, w = img.shape
        views[item.meta["view"]] += 1
        assert (img[:, 0] > 0).mean() > 0.5  # the breast sits on the left (chest wall) edge
        breast_median = float(np.median(img[img > 0]))
        corner = float(img[: int(0.08 * h), : int(0.08 * w)].mean())
        if item.meta["view"] == "MLO":
            # the pectoral muscle fills the upper chest-wall corner and is brighter than the breast
            assert corner > 1.3 * breast_median, item.meta["id"]
            assert (img[0] > 0).any()  # MLO: the breast runs off the top edge into the axilla
        else:
            assert corner < 0.8 * breast_median, item.meta["id"]
            assert not (img[0] > 0).any()
    assert views["CC"] > 60 and views["MLO"] > 60


def test_texture_has_the_requested_power_law_slope():
    slopes = {}
    for beta in (2.5, 3.0, 3.5):
        field = power_law_noise((512, 512), beta, image_rng(0, "test", 0, 1), image_rng(0, "test", 0, 2))
        assert field.dtype == np.float32 and abs(field.mean()) < 1e-4 and abs(field.std() - 1) < 1e-3
        slopes[beta] = radial_power_slope(field)
        assert abs(slopes[beta] - beta) < 0.3, slopes
    assert slopes[2.5] < slopes[3.0] < slopes[3.5]


def test_small_image_looks_like_a_downsampled_big_one():
    big = generate(6, "test", 3, (320, 200))
    small = generate(6, "test", 3, (160, 100))
    down = big.image_u16.astype(np.float64).reshape(160, 2, 100, 2).mean(axis=(1, 3))
    inside = (down > 0) & (small.image_u16 > 0)
    corr = np.corrcoef(down[inside], small.image_u16[inside].astype(np.float64))[0, 1]
    assert corr > 0.9
    assert big.meta["view"] == small.meta["view"] and big.labels == small.labels
    assert [r["kind"] for r in big.meta["lesions"]] == [r["kind"] for r in small.meta["lesions"]]
    for c in CLASSES:
        if small.masks[c].any():
            big_down = big.masks[c].reshape(160, 2, 100, 2).mean(axis=(1, 3)) >= 0.5
            iou = (big_down & small.masks[c]).sum() / (big_down | small.masks[c]).sum()
            assert iou > 0.6


# ----------------------------------------------------------------------------- lesions
def test_class_mix(population):
    cases = Counter((item.labels["benign"], item.labels["malignant"]) for item in population)
    expected = dict(zip([(0, 0), (1, 0), (0, 1), (1, 1)], CATEGORY_PROBS, strict=True))
    for case, p in expected.items():
        assert abs(cases[case] / len(population) - p) < 0.08, (case, cases)
    multi = sum(len(item.meta["lesions"]) > len([c for c in CLASSES if item.labels[c]]) for item in population)
    assert multi >= 5  # some images have more than one lesion of a class


def test_lesion_records_match_masks_and_kinds_match_classes(population):
    kinds = Counter()
    benign_kinds = {k for k, _ in BENIGN_KINDS}
    malignant_kinds = {k for k, _ in MALIGNANT_KINDS}
    for item in population:
        for rec in item.meta["lesions"]:
            kinds[rec["kind"]] += 1
            assert rec["kind"] in (benign_kinds if rec["class"] == "benign" else malignant_kinds)
            row, col = rec["centre"]
            assert 0 <= row < SMALL[0] and 0 <= col < SMALL[1]
        for c in CLASSES:
            areas = item.meta["lesion_areas"][c]
            assert areas == [r["area_px"] for r in item.meta["lesions"] if r["class"] == c]
            assert (len(areas) > 0) == bool(item.labels[c])
            # lesions of one class are placed apart, so the union's area is the sum of theirs
            assert int(item.masks[c].sum()) == sum(areas)
    assert set(kinds) == benign_kinds | malignant_kinds


def test_lesion_sizes_mostly_between_0_05_and_2_percent(population):
    fractions = np.array(
        [100 * r["area_px"] / (SMALL[0] * SMALL[1]) for item in population for r in item.meta["lesions"]]
    )
    assert len(fractions) > 150
    inside = ((fractions >= 0.05) & (fractions <= 2.0)).mean()
    assert inside > 0.85, np.percentile(fractions, [5, 50, 95])
    assert 0.1 < np.median(fractions) < 1.0


def test_lesions_visible_but_not_the_brightest_pixels(population):
    """Masses are brighter than their surroundings; yet the min–max image thresholded at 0.5 (the
    ``intensity`` baseline) overlaps the lesion masks poorly, because dense tissue and the
    pectoral muscle are as bright or brighter."""
    contrasts, dices = [], []
    for item in population[:120]:
        img = item.image_u16.astype(np.float64)
        saliency = (img - img.min()) / (img.max() - img.min())
        for c in CLASSES:
            mask = item.masks[c]
            if not mask.any():
                continue
            pred = saliency >= 0.5
            dices.append(2 * (pred & mask).sum() / (pred.sum() + mask.sum()))
            labelled, _ = ndimage.label(mask)
            for rec in item.meta["lesions"]:
                if rec["class"] != c or not rec["kind"].endswith("mass"):
                    continue
                comp = labelled == labelled[int(rec["centre"][0]), int(rec["centre"][1])]
                if labelled[int(rec["centre"][0]), int(rec["centre"][1])] == 0:
                    continue
                ring = ndimage.binary_dilation(comp, iterations=4) & ~ndimage.binary_dilation(comp, iterations=1)
                ring &= img > 0
                contrasts.append(img[comp].mean() - img[ring].mean())
    assert len(contrasts) > 40
    assert np.mean(np.array(contrasts) > 0) > 0.9
    assert np.mean(dices) < 0.2


def test_benign_and_malignant_masses_differ_in_shape(population):
    """Circumscribed benign masses are convex; irregular/spiculated ones have ragged, lobulated outlines.

    Measured by solidity (area / convex-hull area of the pixel squares)."""
    from scipy.spatial import ConvexHull

    solidity = {"benign": [], "malignant": []}
    for item in population:
        for c in CLASSES:
            labelled, _ = ndimage.label(item.masks[c])
            for rec in item.meta["lesions"]:
                if rec["class"] != c or not rec["kind"].endswith("mass") or rec["area_px"] < 100:
                    continue
                lab = labelled[int(rec["centre"][0]), int(rec["centre"][1])]
                if lab == 0:
                    continue
                ys, xs = np.nonzero(labelled == lab)
                corners = np.c_[
                    np.r_[ys - 0.5, ys - 0.5, ys + 0.5, ys + 0.5], np.r_[xs - 0.5, xs + 0.5, xs - 0.5, xs + 0.5]
                ]
                solidity[c].append(len(ys) / ConvexHull(corners).volume)
    assert len(solidity["benign"]) > 20 and len(solidity["malignant"]) > 20
    assert np.median(solidity["malignant"]) < np.median(solidity["benign"]) - 0.025
    assert np.percentile(solidity["benign"], 10) > 0.9


# ----------------------------------------------------------------------------- figure
# (generation speed is measured by benchmarks/test_bench_synthetic.py, never asserted in a unit test)
@pytest.mark.slow
def test_plot_examples_writes_a_readable_png(tmp_path):
    path = plot_examples(tmp_path / "fig" / "ex.png", n=4, image_size=(128, 80), seed=0)
    assert path.is_file() and path.stat().st_size < 500_000
    from PIL import Image

    with Image.open(path) as im:
        assert im.size[0] > 300 and im.size[1] > 300
