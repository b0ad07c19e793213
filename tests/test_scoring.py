"""The harness's single post-processing path: resize, normalise, validate, histogram."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from wsl_bench.data import Sample
from wsl_bench.evaluation import cpu_histograms, cpu_resize, scoring
from wsl_bench.evaluation.harness import score_each
from wsl_bench.evaluation.metrics import dice, dice_counts, pixel_histograms
from wsl_bench.evaluation.records import decode_counts, encode_counts
from wsl_bench.evaluation.scoring import MapError, normalise_maps, score_batch, score_image
from wsl_bench.saliency import CLASSES


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


# ----------------------------------------------------------------------------------------------------------------------
# The batched scorer (score_batch) against an independent per-image numpy computation
# ----------------------------------------------------------------------------------------------------------------------


def _reference_fields(maps: torch.Tensor, map_range: str, sample: Sample, bins: int) -> dict:
    """One image's record fields computed the pre-batching way, in numpy: torch's bilinear resize (it
    defines the resize), min–max scaling or clipping in float32 numpy, then ``metrics.pixel_histograms``
    and ``metrics.dice_counts`` per class. ``maps``: ``C×h×w``."""
    x = maps.detach().float().cpu()
    if tuple(x.shape[-2:]) != sample.size:
        x = F.interpolate(x[None], size=sample.size, mode="bilinear", align_corners=False)[0]
    x = x.numpy()
    if map_range == "probability":
        x = np.clip(x, np.float32(0), np.float32(1))
    else:
        low = x.min(axis=(1, 2), keepdims=True)
        span = x.max(axis=(1, 2), keepdims=True) - low
        x = np.where(span > 0, (x - low) / np.maximum(span, np.float32(1e-12)), np.float32(0)).astype(np.float32)
    fields = {"dice": {}, "dice_pixels": {}, "has_lesion": {}, "lesion_fraction": {}, "bins": bins, "hist": {}}
    for c, name in enumerate(CLASSES):
        mask = sample.masks.get(name)
        if mask is None:
            for key in ("dice", "dice_pixels", "has_lesion", "lesion_fraction"):
                fields[key][name] = None
            continue
        pos, neg = pixel_histograms(x[c], mask, bins)
        counts = dice_counts(pos, neg, 0.5, bins)
        lesion = counts["mask"] > 0
        fields["dice"][name] = 2 * counts["intersection"] / (counts["predicted"] + counts["mask"]) if lesion else None
        fields["dice_pixels"][name] = counts
        fields["has_lesion"][name] = lesion
        fields["lesion_fraction"][name] = counts["mask"] / x[c].size
        fields["hist"][name] = {"pos": encode_counts(pos), "neg": encode_counts(neg)}
    return fields


def _batch(rng: np.random.Generator, n: int, size=(40, 29)) -> list[Sample]:
    """Images with a lesion, without one, and with a class not annotated."""
    samples = []
    for i in range(n):
        masks = {}
        for c, name in enumerate(CLASSES):
            kind = (i + c) % 3
            masks[name] = None if kind == 2 else (rng.random(size) < 0.15) & (kind == 0)
        samples.append(Sample(np.zeros((1, *size), np.float32), masks, {}, {"id": f"s{i}"}))
    return samples


def _assert_batch_matches_reference(maps, map_range, samples, bins):
    scored = score_batch(maps, map_range, samples, bins)
    assert len(scored) == len(samples)
    for i, (image, sample) in enumerate(zip(scored, samples, strict=True)):
        assert image.fields == _reference_fields(maps[i], map_range, sample, bins), f"image {i}"
        assert score_image(maps[i], map_range, sample, bins).fields == image.fields
    return scored


def _random_maps(map_range: str, shape, generator: torch.Generator) -> torch.Tensor:
    if map_range == "probability":
        return torch.rand(shape, generator=generator)
    return torch.randn(shape, generator=generator) * 3 - 1


def _edge_values(bins: int) -> np.ndarray:
    """Values k/bins in float32 (rounded either way) and their neighbours one float32 step away, in [0, 1]."""
    edges = (np.arange(bins + 1) / bins).astype(np.float32)
    values = np.concatenate([edges, np.nextafter(edges, np.float32(0)), np.nextafter(edges, np.float32(1))])
    return np.clip(values, 0, 1)


@pytest.fixture
def small_chunks(monkeypatch):
    """Steps of a few dozen pixels, so that every map is binned in several steps (several threads'
    segments, several blocks of the compiled loop), the last one partial."""
    monkeypatch.setattr(scoring, "CHUNK_ELEMENTS", {"cpu": 37, "other": 37})
    monkeypatch.setattr(cpu_histograms, "SEGMENT_PIXELS", 37 * 29)
    monkeypatch.setattr(cpu_resize, "SEGMENT_PIXELS", 37 * 29)


def _both_binning_paths(prepared, samples, bins):
    """Counts of the CPU's compiled loop and of the tensor path the GPU uses, for every annotated map."""
    size = samples[0].size
    lesions = [{name: scoring._lesion_pixels(s, name, size) for name in CLASSES} for s in samples]
    annotated = [(i, c) for i in range(len(samples)) for c, n in enumerate(CLASSES) if lesions[i][n] is not None]
    return (scoring._cpu_counts(prepared, lesions, annotated, bins),
            scoring._device_counts(prepared, lesions, annotated, bins))


@pytest.mark.parametrize("bins", [10, 1000, 5000])
@pytest.mark.parametrize("kind", ["probability", "probability-clamped", "unbounded", "unbounded-constant", "edges"])
def test_cpu_loop_and_tensor_path_count_alike(kind, bins, small_chunks):
    """The CPU scorer (compiled loop) and the device scorer (tensor operations, run here on the CPU)
    give the same counts, bin for bin, including values on and next to bin edges."""
    rng = np.random.default_rng(bins)
    size = (40, 29)
    samples = _batch(rng, 3, size)
    generator = torch.Generator().manual_seed(bins)
    map_range = "unbounded" if kind.startswith("unbounded") else "probability"
    if kind == "edges":
        maps = torch.from_numpy(rng.choice(_edge_values(bins), size=(3, 2, *size)).astype(np.float32))
    else:
        maps = _random_maps(map_range, (3, 2, *size), generator)
    if kind == "probability-clamped":  # round-off outside [0, 1], within the tolerance
        maps[0, 0, 0, :3] = torch.tensor([-5e-5, 1 + 5e-5, 1.0])
    if kind == "unbounded-constant":
        maps[1, 0] = 2.5
    prepared = scoring._prepare(maps, map_range, size)
    if kind == "probability-clamped":
        assert prepared.needs_clamp.any()
    cpu, tensor = _both_binning_paths(prepared, samples, bins)
    assert cpu.shape == tensor.shape and cpu.sum() > 0
    np.testing.assert_array_equal(cpu, tensor)


@pytest.mark.parametrize("map_range", ["probability", "unbounded"])
@pytest.mark.parametrize("small", [(6, 4), (3, 2), (96, 64)], ids=["x16", "x32", "same-size"])
def test_low_resolution_maps_are_binned_without_materialising_their_resize(map_range, small, small_chunks):
    """Upscaling by 16 or more (the maps of GMIC, CAM, GLAM's global network at full size) goes
    through the row maps, where torch's kernel computes what they do (smaller factors do not on
    this project's CPUs: checked per geometry, see the fallback test): same fields as the
    F.interpolate reference, and the resized maps are only materialised on request."""
    rng = np.random.default_rng(7)
    size = (96, 64)
    samples = _batch(rng, 3, size)
    maps = _random_maps(map_range, (3, 2, *small), torch.Generator().manual_seed(7))
    maps[2, 1] = 0.25  # a constant map
    prepared = scoring._prepare(maps, map_range, size)
    assert (prepared.row_maps is None) == (small == size)
    if prepared.row_maps is not None:
        reference = F.interpolate(maps, size=size, mode="bilinear", align_corners=False)
        assert torch.equal(prepared.maps, reference)  # bit for bit
        cpu, tensor = _both_binning_paths(prepared, samples, 1000)
        np.testing.assert_array_equal(cpu, tensor)
    scored = _assert_batch_matches_reference(maps, map_range, samples, 1000)
    for i, image in enumerate(scored):
        assert torch.equal(image.normalised_maps, normalise_maps(maps[i], map_range, size))


def test_a_resize_that_rounds_differently_falls_back_to_f_interpolate(monkeypatch):
    """Where the separable resize would not equal torch's kernel (checked once per geometry), the
    scorer materialises F.interpolate's maps instead: the fields stay the reference's."""
    monkeypatch.setattr(cpu_resize, "_verdicts", {})
    calls = []
    real = cpu_resize.RowMaps.materialise

    def off_by_one_ulp(self, m):
        calls.append(m)
        return np.nextafter(real(self, m), np.float32(np.inf))

    monkeypatch.setattr(cpu_resize.RowMaps, "materialise", off_by_one_ulp)
    maps = torch.rand(2, 2, 6, 4, generator=torch.Generator().manual_seed(0))
    samples = _batch(np.random.default_rng(0), 2, (96, 64))
    assert scoring._prepare(maps, "probability", (96, 64)).row_maps is None
    assert calls and cpu_resize._verdicts == {(6, 4, 96, 64): False}
    _assert_batch_matches_reference(maps, "probability", samples, 1000)


def test_cpu_loop_never_counts_outside_its_histogram():
    """A value nobody validated (NaN, beyond 1) lands in an end bin, never outside the counts."""
    flat = np.array([np.nan, 2.0, -1.0, 0.5, np.inf], np.float32)
    job = cpu_histograms.MapToBin(flat, np.arange(5), 0.0, 1.0, cpu_histograms.NORMALISE_NONE)
    counts = cpu_histograms.histograms([job], 10, 1)
    assert counts.shape == (1, 2, 11)
    assert counts[0, 1].sum() == 5 and counts[0, 0].sum() == 5
    assert counts[0, 1, 5] == 1  # 0.5 where it belongs


@pytest.mark.parametrize("bins", [100, 1000, 5000])  # 5000: float64 binning, as metrics does above 4096 bins
@pytest.mark.parametrize("map_range", ["probability", "unbounded"])
@pytest.mark.parametrize("map_size", [(7, 5), (40, 29)], ids=["resized", "image-size"])
def test_batch_equals_per_image_numpy_reference(map_range, map_size, bins, small_chunks):
    rng = np.random.default_rng(bins)
    samples = _batch(rng, 4)
    maps = _random_maps(map_range, (4, 2, *map_size), torch.Generator().manual_seed(bins))
    scored = _assert_batch_matches_reference(maps, map_range, samples, bins)
    assert scored[0].fields["has_lesion"]["benign"] is True and scored[1].fields["has_lesion"]["benign"] is False
    assert scored[2].fields["dice"]["benign"] is None and "benign" not in scored[2].fields["hist"]


@pytest.mark.parametrize("bins", [10, 100, 1000, 5000])
@pytest.mark.parametrize("map_range", ["probability", "unbounded"])
def test_values_on_and_next_to_bin_edges(map_range, bins, small_chunks):
    """Values k/bins in float32 (rounded either way) and their neighbours one float32 step away."""
    rng = np.random.default_rng(bins)
    size = (32, 40)
    flat = rng.choice(_edge_values(bins), size=(3, 2, size[0] * size[1]))
    flat[..., 0], flat[..., 1] = 0.0, 1.0  # min–max scaling then keeps every value as it is
    maps = torch.from_numpy(flat.reshape(3, 2, *size).astype(np.float32))
    _assert_batch_matches_reference(maps, map_range, _batch(rng, 3, size), bins)


@pytest.mark.parametrize("map_range", ["probability", "unbounded"])
def test_constant_maps(map_range):
    samples = _batch(np.random.default_rng(0), 2)
    maps = torch.full((2, 2, 40, 29), 0.5)  # the image size: a resize need not keep a constant exact
    scored = _assert_batch_matches_reference(maps, map_range, samples, 100)
    pos, neg = (decode_counts(scored[0].fields["hist"]["benign"][k]) for k in ("pos", "neg"))
    expected_bin = 50 if map_range == "probability" else 0  # an unbounded constant map becomes all zeros
    assert pos.sum() + neg.sum() == 40 * 29 and pos[expected_bin] + neg[expected_bin] == 40 * 29


def test_probability_maps_within_the_tolerance_are_clipped(small_chunks):
    maps = torch.rand(2, 2, 40, 29, generator=torch.Generator().manual_seed(0)) * (1 + 1e-4) - 5e-5
    _assert_batch_matches_reference(maps, "probability", _batch(np.random.default_rng(1), 2), 1000)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_batch_with_a_non_finite_map_is_a_clear_error(bad):
    maps = torch.rand(3, 2, 7, 5)
    maps[1, 0, 2, 3] = bad
    for map_range in ("probability", "unbounded"):
        with pytest.raises(MapError, match=r"NaN or infinite values \(1 pixels\)"):
            score_batch(maps, map_range, _batch(np.random.default_rng(0), 3), 100)


def test_batch_with_a_probability_map_out_of_range_names_the_range():
    maps = torch.rand(2, 2, 7, 5)
    maps[1, 1, 0, 0] = 1.5
    with pytest.raises(MapError, match=r"must lie in \[0, 1\], found values in \[.*, 1\.5\]"):
        score_batch(maps, "probability", _batch(np.random.default_rng(0), 2), 100)
    with pytest.raises(MapError, match="unknown map_range"):
        score_batch(maps, "logits", _batch(np.random.default_rng(0), 2), 100)


def test_batch_shape_and_size_errors():
    samples = _batch(np.random.default_rng(0), 2)
    with pytest.raises(MapError, match="N=2"):
        score_batch(torch.rand(3, 2, 7, 5), "probability", samples, 100)
    other = _batch(np.random.default_rng(0), 1, size=(20, 10))
    with pytest.raises(ValueError, match="one size"):  # the harness stacks a batch's images: one size
        score_batch(torch.rand(3, 2, 7, 5), "probability", samples + other, 100)
    assert score_batch(torch.rand(0, 2, 7, 5), "probability", [], 100) == []


def test_bins_beyond_exact_binning_are_refused():
    with pytest.raises(ValueError, match="at most"):
        score_batch(torch.rand(1, 2, 7, 5), "probability", _batch(np.random.default_rng(0), 1), scoring.MAX_BINS + 1)


def test_images_without_masks_are_validated_but_not_binned():
    sample = Sample(np.zeros((1, 8, 6), np.float32), {"benign": None, "malignant": None}, {}, {"id": "u"})
    (scored,) = score_batch(torch.rand(1, 2, 8, 6), "probability", [sample], bins=7)  # odd bins: never used
    assert scored.fields["hist"] == {} and scored.fields["dice"] == {"benign": None, "malignant": None}
    with pytest.raises(MapError):
        score_batch(torch.rand(1, 2, 8, 6) + 2, "probability", [sample], bins=100)


def test_normalised_maps_are_those_of_normalise_maps():
    samples = _batch(np.random.default_rng(0), 2)
    maps = _random_maps("unbounded", (2, 2, 7, 5), torch.Generator().manual_seed(3))
    maps[1, 1] = 4.0  # constant
    for map_range, raw in (("unbounded", maps), ("probability", maps.sigmoid())):
        for i, image in enumerate(score_batch(raw, map_range, samples, 100)):
            assert torch.equal(image.normalised_maps, normalise_maps(raw[i], map_range, (40, 29)))


def test_harness_scores_a_batch_and_isolates_a_map_that_cannot_be_scored():
    samples = _batch(np.random.default_rng(0), 3)
    samples[1].masks["malignant"] = np.zeros((5, 5), bool)  # does not fit its image: only image 1 fails
    maps = torch.rand(3, 2, 7, 5)
    results = score_each(maps, "probability", samples, 100)
    assert isinstance(results[1], ValueError) and "does not match mask shape" in str(results[1])
    for i in (0, 2):
        assert results[i].fields == _reference_fields(maps[i], "probability", samples[i], 100)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("map_range", ["probability", "unbounded"])
def test_batch_on_cuda(map_range):
    rng = np.random.default_rng(0)
    samples = _batch(rng, 3)
    generator = torch.Generator().manual_seed(0)
    # Maps at the image size: no resize, so the device's scores equal the CPU reference to the last count.
    full = _random_maps(map_range, (3, 2, 40, 29), generator)
    scored = score_batch(full.cuda(), map_range, samples, 1000)
    for i, sample in enumerate(samples):
        assert scored[i].fields == _reference_fields(full[i], map_range, sample, 1000)
        assert scored[i].normalised_maps.is_cuda
    # Resized on the device (its own bilinear kernel): the histograms are those of the device's normalised maps.
    small = _random_maps(map_range, (3, 2, 7, 5), generator).cuda()
    for image, sample in zip(score_batch(small, map_range, samples, 1000), samples, strict=True):
        normalised = image.normalised_maps.cpu().numpy()
        for c, name in enumerate(CLASSES):
            if sample.masks[name] is not None:
                pos, neg = pixel_histograms(normalised[c], sample.masks[name], 1000)
                assert image.fields["hist"][name] == {"pos": encode_counts(pos), "neg": encode_counts(neg)}
