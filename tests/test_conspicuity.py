"""Lesion conspicuity: the two measures, the control, and the default calibrated to real mammograms.

The real figures (two annotated views of the published NYU sample at 736×480: contrast 0.46 and 0.25
breast sd, percentile 0.73 and 0.72) widened by 30 % give the ranges the default must meet on the
default (``cpu`` preset) test images: contrast 0.18–0.60, percentile 0.60–0.85, for benign and
malignant lesions alike, and the ``intensity`` baseline's PxAP at most 0.05 per class.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import wsl_bench
from wsl_bench.data import DatasetError
from wsl_bench.datasets.conspicuity import breast_region, lesion_components, measure_image, measure_lesion
from wsl_bench.datasets.synthetic import SyntheticMammograms
from wsl_bench.datasets.synthetic_generator import (
    CONSPICUITY_LEVELS,
    DEFAULT_CONSPICUITY,
    Conspicuity,
    draw_anatomy,
    draw_lesions,
    generate,
    glandular_pattern,
    image_rng,
)
from wsl_bench.evaluation.metrics import PxAPMetric
from wsl_bench.evaluation.records import decode_counts
from wsl_bench.evaluation.scoring import score_image
from wsl_bench.presets import get_preset
from wsl_bench.saliency import CLASSES

CONTRAST_RANGE = (0.18, 0.60)
PERCENTILE_RANGE = (0.60, 0.85)
INTENSITY_PXAP_MAX = 0.05


# ----------------------------------------------------------------------------- the measures
def test_contrast_and_percentile_of_a_known_lesion():
    """A disc of +2 on a background of alternating 0/1 columns inside a breast above a zero background."""
    image = np.zeros((60, 60))
    image[5:55, 5:55] = 1.0 + (np.arange(50)[None, :] % 2)  # breast: 1 and 2 in equal parts
    rows, cols = np.mgrid[:60, :60]
    lesion = (rows - 30) ** 2 + (cols - 30) ** 2 <= 36
    image[lesion] = 4.0
    measured = measure_lesion(image, lesion)
    breast = image > 0
    ring = np.zeros_like(lesion)
    distance = np.hypot(rows - 30, cols - 30)
    # pixel centres 1–4 px outside the disc of radius 6 (as the distance transform measures them)
    from scipy import ndimage

    d = ndimage.distance_transform_edt(~lesion)
    ring = (d > 1) & (d <= 4) & breast
    expected = (4.0 - image[ring].mean()) / image[breast].std()
    assert measured is not None
    assert measured.contrast == pytest.approx(expected)
    assert measured.percentile == pytest.approx(float((image[breast] < 4.0).mean()))
    assert measured.area_px == int(lesion.sum())
    assert distance[ring].min() > 6  # the ring lies outside the lesion


def test_lesion_components_split_a_class_mask_into_lesions():
    mask = np.zeros((20, 20), bool)
    mask[2:5, 2:5] = True
    mask[10:15, 12:18] = True
    mask[5, 5] = True  # touches the first one diagonally: 8-connected, one lesion
    parts = lesion_components(mask)
    assert len(parts) == 2
    assert sorted(int(p.sum()) for p in parts) == [10, 30]


def test_breast_is_everything_above_the_background_minimum():
    image = np.array([[0, 0, 3], [0, 5, 7]], dtype=np.uint16)
    assert breast_region(image).tolist() == [[False, False, True], [False, True, True]]


# ----------------------------------------------------------------------------- the control
def test_obvious_level_reproduces_generator_version_3_and_lower_contrast_dims_lesions_only():
    """``obvious`` keeps version 3's draws; a lower contrast changes lesion pixels and nothing else."""
    obvious = generate(3, "val", 5, (256, 160), CONSPICUITY_LEVELS["obvious"])
    dim = generate(3, "val", 5, (256, 160), Conspicuity(contrast=0.3))
    lesions = obvious.masks["benign"] | obvious.masks["malignant"]
    assert lesions.any()
    for cls in CLASSES:
        assert np.array_equal(obvious.masks[cls], dim.masks[cls])  # same shapes and places
    changed = obvious.image_u16.astype(int) - dim.image_u16.astype(int)
    h, w = 256, 160
    unit = np.sqrt(h * w)
    layout = image_rng(3, "val", 5, 0)  # the layout stream: anatomy first, then the lesions
    drawn = draw_lesions(layout, draw_anatomy(layout), w / h)
    rows, cols = np.mgrid[:h, :w]
    near = np.zeros((h, w), bool)
    for lesion in drawn:  # everything a lesion draws (margins, spicules, calcifications) lies within its extent
        near |= np.hypot(rows + 0.5 - lesion.u * h, cols + 0.5 - lesion.v * w) <= lesion.extent * unit + 2
    assert changed[lesions].mean() > 30  # lesions got darker
    assert np.abs(changed[~near]).max() <= 1  # the tissue elsewhere is untouched (rounding aside)


def test_dense_placement_puts_lesions_in_dense_tissue():
    """With dense_placement 1 every lesion centre that found room sits where the large-scale pattern is dense."""
    hits, total = 0, 0
    for index in range(40):
        placed = generate(0, "val", index, (256, 160), Conspicuity(contrast=0.35, dense_placement=1.0))
        glands = glandular_pattern(draw_anatomy(image_rng(0, "val", index, 0)), image_rng(0, "val", index, 1),
                                   aspect=160 / 256)
        rows, cols = glands.shape
        for lesion in placed.meta["lesions"]:
            u, v = lesion["centre"][0] / 256, lesion["centre"][1] / 160
            total += 1
            hits += glands[min(int(u * rows), rows - 1), min(int(v * cols), cols - 1)] >= 0.5
    assert total > 20
    assert hits / total > 0.8  # the rest: breasts with no free dense tissue fall back to anywhere


def test_conspicuity_is_a_dataset_option_that_reaches_describe_and_refuses_nonsense():
    dataset = wsl_bench.create_dataset("synthetic", split="val", image_size=(64, 48), n=2, conspicuity="faint",
                                       dense_placement=0.5)
    described = dataset.describe()["conspicuity"]
    assert described["level"] == "faint" and described["dense_placement"] == 0.5
    assert described["contrast"] == CONSPICUITY_LEVELS["faint"].contrast
    default = wsl_bench.create_dataset("synthetic", split="val", image_size=(64, 48), n=2).describe()
    assert default["conspicuity"]["contrast"] == DEFAULT_CONSPICUITY.contrast
    with pytest.raises(DatasetError, match="unknown conspicuity level 'glaring'; known levels: obvious"):
        SyntheticMammograms(split="val", conspicuity="glaring")
    with pytest.raises(DatasetError, match="contrast must be in"):
        SyntheticMammograms(split="val", lesion_contrast=float("nan"))


# ----------------------------------------------------------------------------- the calibrated default
@pytest.fixture(scope="module")
def default_test_split():
    """The default run's test images: the ``cpu`` preset's size and split, the default conspicuity."""
    preset = get_preset("cpu")
    dataset = SyntheticMammograms(split="test", n=preset.n_test, image_size=preset.image_size, seed=0, cache_mb=0)
    return [dataset.raw(i) for i in dataset.ids()]


@pytest.mark.slow
def test_default_lesions_are_as_conspicuous_as_real_ones(default_test_split):
    for cls in CLASSES:
        measures = [m for item in default_test_split if item.masks[cls].any()
                    for m in measure_image(item.image_u16, item.masks[cls])]
        assert len(measures) > 80
        contrast = float(np.median([m.contrast for m in measures]))
        percentile = float(np.median([m.percentile for m in measures]))
        assert CONTRAST_RANGE[0] <= contrast <= CONTRAST_RANGE[1], (cls, contrast)
        assert PERCENTILE_RANGE[0] <= percentile <= PERCENTILE_RANGE[1], (cls, percentile)


@pytest.mark.slow
def test_intensity_baseline_is_weak_on_the_default_test_split(default_test_split):
    """The image itself as the map, scored as the harness scores the ``intensity`` baseline."""
    intensity = wsl_bench.create_method("intensity")
    dataset = SyntheticMammograms(split="test", n=1, image_size=get_preset("cpu").image_size)
    pxap = {cls: PxAPMetric(1000) for cls in CLASSES}
    for item in default_test_split:
        sample = dataset.load(item.meta["id"])
        output = intensity.predict(torch.from_numpy(sample.image)[None])
        fields = score_image(output.maps[0], output.map_range, sample, 1000).fields
        for cls in CLASSES:
            if fields["has_lesion"][cls]:
                pxap[cls].update_histograms(*(decode_counts(fields["hist"][cls][k]) for k in ("pos", "neg")))
    for cls in CLASSES:
        assert pxap[cls].compute() <= INTENSITY_PXAP_MAX, (cls, pxap[cls].compute())
        assert pxap[cls].compute() > pxap[cls].chance()  # weak, not blind: the lesions are still there
