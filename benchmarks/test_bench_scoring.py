"""Scoring speed: one 2944×1920 image's two maps, batched scorer vs the per-image numpy path it replaced
(pytest-benchmark; not part of the test suite).

Run::

    python -m pytest benchmarks/test_bench_scoring.py --benchmark-enable
    WSL_BENCH_BENCH_DEVICE=cuda python -m pytest benchmarks/test_bench_scoring.py --benchmark-enable

The maps are smooth (a low-resolution random field, upsampled beforehand) and already at the image
size, as a method's full-resolution maps would be, or 46×30 as GMIC's (``probability-46x30``: the
scorer resizes it to the image); both classes have a mask (one with a round lesion, one lesion-free),
so both maps are binned. Issue 14's target: at most 20 ms per image on either range.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from wsl_bench.data import Sample
from wsl_bench.evaluation.metrics import dice_counts, pixel_histograms
from wsl_bench.evaluation.records import encode_counts
from wsl_bench.evaluation.scoring import score_image
from wsl_bench.saliency import CLASSES

pytest.importorskip("pytest_benchmark")

SIZE = (2944, 1920)
DEVICE = os.environ.get("WSL_BENCH_BENCH_DEVICE", "cpu")

if DEVICE.startswith("cuda") and not torch.cuda.is_available():
    pytest.skip("WSL_BENCH_BENCH_DEVICE asks for CUDA but none is available", allow_module_level=True)


def per_image_numpy(maps: torch.Tensor, map_range: str, sample: Sample, bins: int) -> dict:
    """The scoring path before issue 14, step for step: normalise in torch on the CPU, then numpy
    histograms and Dice counts class by class (``maps``: ``C×H×W`` at the image size)."""
    maps = maps.detach().float().cpu()
    if tuple(maps.shape[-2:]) != SIZE:
        maps = F.interpolate(maps[None], size=SIZE, mode="bilinear", align_corners=False)[0]
    if not torch.isfinite(maps).all():
        raise ValueError("NaN")
    if map_range == "probability":
        if float(maps.min()) < -1e-4 or float(maps.max()) > 1 + 1e-4:
            raise ValueError("range")
        normalised = maps.clamp(0.0, 1.0)
    else:
        flat = maps.flatten(1)
        low = flat.min(dim=1).values.view(-1, 1, 1)
        span = flat.max(dim=1).values.view(-1, 1, 1) - low
        normalised = torch.where(span > 0, (maps - low) / span.clamp_min(1e-12), torch.zeros_like(maps))
    as_numpy = normalised.numpy()
    hist = {}
    for c, name in enumerate(CLASSES):
        pos, neg = pixel_histograms(as_numpy[c], sample.masks[name], bins)
        hist[name] = (dice_counts(pos, neg, 0.5, bins), encode_counts(pos), encode_counts(neg))
    return hist


@pytest.fixture(scope="module")
def image() -> tuple[dict[str, torch.Tensor], Sample]:
    generator = torch.Generator().manual_seed(0)
    field = torch.randn(1, len(CLASSES), 92, 60, generator=generator)
    smooth = F.interpolate(field, size=SIZE, mode="bilinear", align_corners=False)[0]
    maps = {"probability": smooth.sigmoid().contiguous(), "unbounded": (smooth * 3).contiguous(),
            # GMIC's map at 2944×1920 is 46×30: scored through the CPU's row maps (no full-size resize)
            "probability-46x30": field[0, :, ::2, ::2].sigmoid().contiguous()}
    rows, cols = np.ogrid[: SIZE[0], : SIZE[1]]
    lesion = (rows - 1500) ** 2 + (cols - 900) ** 2 < 150**2
    masks = {"benign": lesion, "malignant": np.zeros(SIZE, bool)}
    return {k: v.to(DEVICE) for k, v in maps.items()}, Sample(np.zeros((1, *SIZE), np.float32), masks, {}, {"id": "b"})


def _sync() -> None:
    if DEVICE.startswith("cuda"):
        torch.cuda.synchronize()


@pytest.mark.parametrize("path", ["score_image", "per_image_numpy"])
@pytest.mark.parametrize("map_kind", ["probability", "unbounded", "probability-46x30"])
def test_score_one_image(benchmark, image, map_kind, path):
    maps, sample = image
    map_range = map_kind.split("-")[0]
    maps = {map_range: maps[map_kind]}
    if path == "score_image":
        def run():
            score_image(maps[map_range], map_range, sample, 1000)
            _sync()
    else:
        def run():
            per_image_numpy(maps[map_range], map_range, sample, 1000)
    benchmark.pedantic(run, rounds=15, warmup_rounds=2, iterations=1)
    benchmark.extra_info.update({"size": list(SIZE), "device": DEVICE, "threads": torch.get_num_threads()})
    scored = score_image(maps[map_range], map_range, sample, 1000).fields  # same counts as the path it replaced
    reference = per_image_numpy(maps[map_range], map_range, sample, 1000)
    for name in CLASSES:
        hist = scored["hist"][name]
        assert (scored["dice_pixels"][name], hist["pos"], hist["neg"]) == reference[name]


@pytest.mark.skipif(DEVICE != "cpu", reason="peak resident memory is the CPU's measure")
@pytest.mark.parametrize("map_kind", ["probability", "unbounded", "probability-46x30"])
def test_scoring_holds_little_beyond_the_maps(image, map_kind):
    """Issue 14: scoring a batch holds at most the batch's maps plus O(bins) per class. Measured as the
    rise of the process's peak resident memory over one call (maps already in memory): the scorer
    allocates no full-size temporary (a 2944×1920 map is 22 MiB)."""
    from wsl_bench.evaluation.bench import _current_rss_mb, _peak_rss_mb, _reset_peak_rss

    maps, sample = image
    map_range = map_kind.split("-")[0]
    batch = maps[map_kind][None].expand(4, -1, -1, -1).contiguous()
    samples = [sample] * 4
    from wsl_bench.evaluation.scoring import score_batch

    score_batch(batch, map_range, samples, 1000)
    if not _reset_peak_rss():
        pytest.skip("this kernel cannot reset the peak resident set")
    before = _current_rss_mb()
    score_batch(batch, map_range, samples, 1000)
    rise = _peak_rss_mb() - before
    print(f"{map_kind}: batch of 4, peak resident memory rise {rise:.1f} MiB")
    assert rise < 11, "less than half of one full-size map"
