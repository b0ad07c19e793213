"""The common preprocessing: segmentation, crop, orientation, resize, and mask/box alignment."""

from __future__ import annotations

import numpy as np
import pytest
from fixtures_real import LESION_VALUE, MARKER_VALUE, bright_region, chest_wall_left, iou, phantom

from wsl_bench.data import SampleError
from wsl_bench.datasets._preprocess import (
    Geometry,
    PreprocessConfig,
    boxes_to_mask,
    lesion_areas,
    preprocess,
    segment_breast,
)

SMALL = PreprocessConfig(image_size=(128, 80))


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("size", [(128, 80), (64, 96), (200, 50)])
def test_known_lesion_stays_under_its_mask(side, size):
    ph = phantom((180, 140), chest_wall=side, lesions=((0.45, 0.4, 0.06), (0.7, 0.2, 0.04)))
    mask = ph.lesions[0] | ph.lesions[1]
    box = np.array(ph.boxes, dtype=float)
    out = preprocess(
        ph.image, {"malignant": mask, "benign": None}, {"malignant": box}, PreprocessConfig(image_size=size)
    )
    m = out.masks["malignant"]
    assert out.image.shape == (1, *size) and m.shape == size and out.masks["benign"] is None
    # the lesions found from the output intensities are where the transformed mask is
    assert m.any() and iou(bright_region(out.image), m) > 0.6
    # every mask pixel lies inside the transformed boxes (same geometry for both)
    assert not (m & ~boxes_to_mask(out.boxes["malignant"], size)).any()
    # the chest wall ends on the left, whichever side it was on
    assert chest_wall_left(out.image)
    assert out.geometry.flip == (side == "right")


def test_standardised_and_marker_cropped_away():
    ph = phantom((160, 120), chest_wall="left", marker=True)
    out = preprocess(ph.image, config=SMALL)
    img = out.image[0]
    assert abs(img.mean()) < 1e-4 and abs(img.std() - 1) < 1e-3
    # the label marker (brighter than any lesion) lies outside the breast crop
    top, left, bottom, right = out.geometry.crop
    assert right <= 120 - 1 - 120 // 12 + 2
    lo = img.min()
    ratio = (img.max() - lo) / (img[bright_region(img)].mean() - lo)
    assert ratio < MARKER_VALUE / LESION_VALUE - 0.05  # the brightest thing left is the lesion


def test_fit_keeps_aspect_and_stretch_fills():
    ph = phantom((160, 120), lesions=((0.5, 0.35, 0.08),), marker=False)
    fit = preprocess(ph.image, {"benign": ph.lesions[0]}, config=PreprocessConfig(image_size=(100, 100)))
    rows, cols = np.nonzero(fit.masks["benign"])
    assert abs((np.ptp(rows) + 1) / (np.ptp(cols) + 1) - 1) < 0.2  # a disk stays round
    g = fit.geometry
    assert g.resized[0] == 100 or g.resized[1] == 100
    assert g.offset[1] == 0  # anchored at the chest wall
    stretch = preprocess(ph.image, config=PreprocessConfig(image_size=(100, 100), resize="stretch"))
    assert stretch.geometry.resized == (100, 100)


def test_crop_never_drops_an_annotation():
    ph = phantom((160, 120), marker=False)
    far = np.zeros(ph.image.shape, bool)
    far[150:155, 110:116] = True  # annotated outside the breast (background corner)
    out = preprocess(ph.image, {"benign": far}, config=SMALL)
    g = out.geometry
    assert out.masks["benign"].any()
    assert lesion_areas(out.masks["benign"])[0] >= 0.5 * far.sum() * g.scale[0] * g.scale[1]


def test_box_round_trip_and_to_source():
    ph = phantom((150, 110), chest_wall="right", lesions=((0.4, 0.3, 0.08),), square=True, marker=False)
    box = np.array([ph.boxes[0]])
    out = preprocess(ph.image, {"malignant": ph.lesions[0]}, {"malignant": box}, SMALL)
    g = out.geometry
    np.testing.assert_allclose(g.invert_boxes(g.apply_boxes(box)), box, atol=1e-9)
    back = g.to_source(out.masks["malignant"])
    assert iou(back, ph.lesions[0]) > 0.75
    assert Geometry.from_dict(g.to_dict()) == g
    # a square lesion fills its box: the transformed box and the transformed mask agree
    assert iou(boxes_to_mask(out.boxes["malignant"], SMALL.image_size), out.masks["malignant"]) > 0.7


def test_crop_beyond_image_is_filled_with_background():
    img = np.full((40, 30), 500, np.uint16)
    img[10:20, 5:15] = 3000
    g = Geometry((40, 30), False, (-10, -5, 50, 35), (60, 40), (0, 0), (60, 40))
    out = g.apply_image(img, fill=0)
    assert out[0, 0] == 0 and out[-1, -1] == 0 and out[25, 15] == 3000
    m = g.apply_mask(img == 3000)
    assert m[20:30, 10:20].all() and m.sum() == 100


def test_segment_breast_is_largest_component():
    ph = phantom((160, 120), marker=True)
    seg = segment_breast(ph.image, PreprocessConfig())
    assert seg[80, 10] and not seg[2, 115]  # breast in, marker out
    assert seg.sum() > 0.3 * seg.size


def test_blank_image_and_mask_size_errors_name_the_file():
    with pytest.raises(SampleError, match="scan.png.*blank"):
        preprocess(np.zeros((50, 40), np.uint16), config=SMALL, source="scan.png")
    ph = phantom((60, 40))
    with pytest.raises(SampleError, match=r"scan.png: benign mask is 30×40 but the image is 60×40"):
        preprocess(ph.image, {"benign": np.zeros((30, 40), bool)}, config=SMALL, source="scan.png")


def test_boxes_to_mask_and_lesion_areas():
    m = boxes_to_mask(np.array([[2, 3, 6, 5], [10.2, 10.2, 10.4, 10.4]]), (20, 20))
    assert m[3:5, 2:6].all() and m.sum() == 8 + 1  # a sub-pixel box still marks its pixel
    assert lesion_areas(m) == [8, 1] and lesion_areas(None) == []


def test_config_validation():
    with pytest.raises(ValueError):
        PreprocessConfig(orientation="sideways")
    with pytest.raises(ValueError):
        PreprocessConfig(image_size=(0, 10))
