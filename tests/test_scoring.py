"""The harness's single post-processing path: resize, normalise, validate, histogram."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wsl_bench.data import Sample
from wsl_bench.evaluation.metrics import dice
from wsl_bench.evaluation.scoring import MapError, normalise_maps, score_image


def _sample(h=32, w=24):
    mask = np.zeros((h, w), bool)
    mask[8:16, 6:12] = True
    return Sample(np.zeros((1, h, w), np.float32), {"benign": mask, "malignant": None},
                  {"benign": 1, "malignant": 0}, {"id": "s"})


def test_unbounded_maps_are_min_max_scaled_per_class():
    maps = torch.stack([torch.arange(12.0).view(3, 4) * 5 - 7, torch.full((3, 4), 3.0)])
    out = normalise_maps(maps, "unbounded", (3, 4))
    assert float(out[0].min()) == 0.0 and float(out[0].max()) == 1.0
    assert torch.equal(out[1], torch.zeros(3, 4)), "a constant map carries no localisation"


def test_probability_maps_are_kept_and_checked():
    maps = torch.rand(2, 8, 6) * 0.5
    assert torch.allclose(normalise_maps(maps, "probability", (8, 6)), maps)
    with pytest.raises(MapError, match=r"\[0, 1\]"):
        normalise_maps(maps + 2, "probability", (8, 6))


def test_nan_map_is_a_clear_error():
    maps = torch.zeros(2, 4, 4)
    maps[0, 1, 1] = float("nan")
    with pytest.raises(MapError, match="NaN"):
        normalise_maps(maps, "unbounded", (4, 4))


def test_maps_are_resized_to_the_image():
    out = normalise_maps(torch.rand(2, 4, 3), "probability", (32, 24))
    assert out.shape == (2, 32, 24)


def test_score_image_matches_functional_dice_and_skips_unannotated_class():
    sample = _sample()
    maps = torch.zeros(2, 32, 24)
    maps[0, 10:18, 6:12] = 1.0
    scored = score_image(maps, "probability", sample, bins=100)
    expected = dice(scored.normalised_maps[0].numpy(), sample.masks["benign"], 0.5)
    assert scored.fields["dice"]["benign"] == pytest.approx(expected)
    assert 0 < expected < 1
    assert scored.fields["dice"]["malignant"] is None and "malignant" not in scored.fields["hist"]
    pixels = scored.fields["dice_pixels"]["benign"]
    assert pixels["mask"] == 48 and pixels["intersection"] == 36 and pixels["predicted"] == 48
