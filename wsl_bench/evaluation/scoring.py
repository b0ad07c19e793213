"""The harness's one post-processing path from a method's raw map to per-image scores.

Every method's maps go through exactly these steps, so no method gains from its own
post-processing: (1) resize to the image size (bilinear, ``align_corners=False``); (2) normalise
per the declared range — ``probability`` maps are scored as they are (they must lie in [0, 1]),
``unbounded`` maps are min–max scaled per image and class (a constant map becomes all zeros);
(3) validate (finite); (4) per class with a known mask, the fixed-bin histograms of lesion and
background pixels, from which Dice at any bin threshold, PxAP and their intervals follow.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from wsl_bench.data import Sample
from wsl_bench.evaluation.metrics import dice_counts, pixel_histograms
from wsl_bench.evaluation.records import encode_counts
from wsl_bench.saliency import CLASSES

FIXED_TAU = 0.5


class MapError(ValueError):
    """A saliency map that cannot be scored (NaN, wrong shape, out of its declared range)."""


@dataclass
class ScoredImage:
    """The per-image fields of a record (see ``wsl_bench.evaluation.harness`` for the full record)."""

    fields: dict[str, Any]
    normalised_maps: torch.Tensor  # C×H×W in [0, 1], for figures


def normalise_maps(maps: torch.Tensor, map_range: str, size: tuple[int, int]) -> torch.Tensor:
    """Resize and normalise one image's maps.

    Args:
        maps: ``C×h×w`` raw maps of one image.
        map_range: ``"probability"`` or ``"unbounded"``.
        size: ``(H, W)`` of the image.

    Returns:
        ``C×H×W`` float32 in [0, 1].

    Raises:
        MapError: NaN/inf values, or a probability map outside [0, 1].
    """
    if maps.ndim != 3 or maps.shape[0] != len(CLASSES):
        raise MapError(f"expected a {len(CLASSES)}×h×w map, got shape {tuple(maps.shape)}")
    maps = maps.detach().float()
    if not torch.isfinite(maps).all():
        raise MapError(f"saliency map contains NaN or infinite values ({int((~torch.isfinite(maps)).sum())} pixels)")
    if tuple(maps.shape[-2:]) != tuple(size):
        maps = F.interpolate(maps[None], size=size, mode="bilinear", align_corners=False)[0]
    if map_range == "probability":
        low, high = float(maps.min()), float(maps.max())
        if low < -1e-4 or high > 1 + 1e-4:
            raise MapError(f"a 'probability' map must lie in [0, 1], found values in [{low:.4g}, {high:.4g}]")
        return maps.clamp(0.0, 1.0)
    if map_range == "unbounded":
        flat = maps.flatten(1)
        low = flat.min(dim=1).values.view(-1, 1, 1)
        span = (flat.max(dim=1).values.view(-1, 1, 1) - low)
        # A constant map carries no localisation: it becomes all zeros, not a division by zero.
        return torch.where(span > 0, (maps - low) / span.clamp_min(1e-12), torch.zeros_like(maps))
    raise MapError(f"unknown map_range {map_range!r}")


def score_image(maps: torch.Tensor, map_range: str, sample: Sample, bins: int) -> ScoredImage:
    """Record fields for one image: Dice at τ=0.5, its pixel counts, histograms, lesion sizes.

    Args:
        maps: ``C×h×w`` raw maps of the image.
        map_range: the method's declared range.
        sample: the image with its masks.
        bins: histogram bins (thresholds 0, 1/bins, ...).
    """
    normalised = normalise_maps(maps, map_range, sample.size)
    as_numpy = normalised.cpu().numpy()
    image_area = sample.size[0] * sample.size[1]
    dice, pixels, has_lesion, lesion_fraction, hist = {}, {}, {}, {}, {}
    for c, name in enumerate(CLASSES):
        mask = sample.masks.get(name)
        if mask is None:  # not annotated for this class: no localisation score
            dice[name] = pixels[name] = has_lesion[name] = lesion_fraction[name] = None
            continue
        pos, neg = pixel_histograms(as_numpy[c], mask, bins)
        counts = dice_counts(pos, neg, FIXED_TAU, bins)
        has_lesion[name] = bool(counts["mask"] > 0)
        lesion_fraction[name] = counts["mask"] / image_area
        pixels[name] = counts
        dice[name] = 2 * counts["intersection"] / (counts["predicted"] + counts["mask"]) if has_lesion[name] else None
        hist[name] = {"pos": encode_counts(pos), "neg": encode_counts(neg)}
    fields = {
        "dice": dice,
        "dice_pixels": pixels,
        "has_lesion": has_lesion,
        "lesion_fraction": lesion_fraction,
        "bins": bins,
        "hist": hist,
    }
    return ScoredImage(fields, normalised)


def image_level_fields(scores: torch.Tensor, sample: Sample) -> dict[str, Any]:
    """``score`` and ``label`` per class for one image (``scores``: ``C`` probabilities)."""
    values = scores.detach().float().cpu().numpy()
    if not np.isfinite(values).all():
        raise MapError("image-level scores contain NaN or infinite values")
    return {
        "score": {name: float(values[c]) for c, name in enumerate(CLASSES)},
        "label": {name: sample.labels.get(name) for name in CLASSES},
    }
