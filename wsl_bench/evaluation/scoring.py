"""The harness's one post-processing path from a method's raw maps to per-image scores.

Every method's maps go through exactly these steps, so no method gains from its own
post-processing: (1) resize to the image size (bilinear, ``align_corners=False``); (2) normalise
per the declared range — ``probability`` maps are scored as they are (they must lie in [0, 1]),
``unbounded`` maps are min–max scaled per image and class (a constant map becomes all zeros);
(3) validate (finite); (4) per class with a known mask, the fixed-bin histograms of lesion and
background pixels, from which Dice at any bin threshold, PxAP and their intervals follow.

:func:`score_batch` does this for a whole batch where the maps are (the method's device, CPU or
CUDA), with tensor operations, and brings back only the histograms (``2 × bins`` counts per image
and class). Its bins are those of :func:`wsl_bench.evaluation.metrics.pixel_histograms`, count for
count (see :class:`_Binner`). :func:`score_image` is the same for one image.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from wsl_bench.data import Sample
from wsl_bench.evaluation import cpu_resize
from wsl_bench.evaluation.cpu_resize import RowMaps
from wsl_bench.evaluation.metrics import _check_bins, dice_counts
from wsl_bench.evaluation.records import encode_counts
from wsl_bench.saliency import CLASSES

FIXED_TAU = 0.5

PROBABILITY_TOLERANCE = 1e-4
"""How far outside [0, 1] a ``probability`` map may stray (round-off) before it is a :class:`MapError`."""

CHUNK_ELEMENTS = {"cpu": 2**17, "other": 2**22}
"""Pixels binned per step, by device type. On the CPU a step's scratch stays in the L2 cache and
is reused (full-size temporaries would cost a page fault per 4 KiB and a trip to memory per pass);
on a GPU a step only bounds the scratch memory (16 bytes per pixel)."""


class MapError(ValueError):
    """A saliency map that cannot be scored (NaN, wrong shape, out of its declared range)."""


@dataclass
class ScoredImage:
    """The per-image fields of a record (see ``wsl_bench.evaluation.harness`` for the full record).

    ``normalised_maps`` (``C×H×W`` float32 in [0, 1], on the maps' device, for figures) is computed
    on first use: scoring itself never materialises it (until then the object holds on to its
    batch's resized raw maps).
    """

    fields: dict[str, Any]
    normalise: Callable[[], torch.Tensor] = field(repr=False)

    @cached_property
    def normalised_maps(self) -> torch.Tensor:
        return self.normalise()


def _check_image_maps(maps: torch.Tensor) -> None:
    if maps.ndim != 3 or maps.shape[0] != len(CLASSES):
        raise MapError(f"expected a {len(CLASSES)}×h×w map, got shape {tuple(maps.shape)}")


@dataclass
class _Prepared:
    """A batch's maps resized to the image size, with the per-(image, class) normalisation.

    The resized raw values are ``maps`` (``N×C×H×W`` float32), or, on the CPU for a low-resolution
    map whose resize :func:`cpu_resize.verified` confirmed, ``row_maps``: the same values held as
    width-resized rows, materialised only if ``maps`` is asked for (figures, the tensor binner).
    ``low``, ``div`` are ``N×C×1×1`` on the maps' device, so that normalised = ``(maps - low) / div``
    for ``unbounded`` maps (``div`` is 1 for a constant map, which so becomes all zeros) and
    ``maps.clamp(0, 1)`` for ``probability`` maps. On the host, ``N×C`` bool: ``constant`` (an
    ``unbounded`` map with one value), ``needs_clamp`` (a ``probability`` map that strays outside
    [0, 1], within the tolerance; the others are binned as they are, the clamp being the identity).
    """

    resized: torch.Tensor | None
    map_range: str
    low: torch.Tensor
    div: torch.Tensor
    constant: np.ndarray
    needs_clamp: np.ndarray
    row_maps: RowMaps | None = None

    @cached_property
    def maps(self) -> torch.Tensor:
        if self.resized is not None:
            return self.resized
        n, c = self.constant.shape
        stacked = np.stack([self.row_maps.materialise(m) for m in range(n * c)])
        return torch.from_numpy(stacked).view(n, c, *stacked.shape[-2:])

    def normalise(self, values: torch.Tensor, low: torch.Tensor, div: torch.Tensor,
                  out: torch.Tensor | None = None) -> torch.Tensor:
        """Normalised ``values`` (raw, resized) of maps whose ``low`` and ``div`` broadcast against them.

        Always the same operations, on tensors of the maps' device: CUDA divides by a CPU scalar
        through its reciprocal, which would round differently from the division the CPU does.
        """
        if self.map_range == "probability":
            return torch.clamp(values, 0.0, 1.0, out=out)
        out = torch.sub(values, low, out=out)
        return out.div_(div)

    def row(self, i: int, c: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Map ``(i, c)`` as a flat run of ``H·W`` raw pixels, with its 0-dim ``low`` and ``div``."""
        return self.maps[i, c].reshape(-1), self.low[i, c].reshape(()), self.div[i, c].reshape(())

    def normalised_image(self, i: int) -> torch.Tensor:
        """``C×H×W`` normalised maps of image ``i``."""
        if self.resized is None:  # only this image's maps, not the batch's
            c = self.constant.shape[1]
            values = torch.from_numpy(np.stack([self.row_maps.materialise(i * c + k) for k in range(c)]))
            return self.normalise(values, self.low[i], self.div[i])
        return self.normalise(self.maps[i], self.low[i], self.div[i])


def _map_ranges(maps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(min, max)``, each ``N×C``, of the maps ``N×C×H×W``; NaN where a map holds NaN (min and max
    propagate it, so this one pass also finds non-finite values)."""
    # One whole-tensor reduction per map: on the CPU, reducing a few long rows along their last
    # dimension runs several times slower. (A compiled loop like cpu_histograms' does not pay here:
    # torch's reduction is vectorised and already uses every core, 1.5 ms per 2944×1920 map.)
    ranges = [torch.aminmax(m) for m in maps.reshape(-1, maps.shape[-2] * maps.shape[-1])]
    shape = maps.shape[:2]
    return torch.stack([r.min for r in ranges]).view(shape), torch.stack([r.max for r in ranges]).view(shape)


def _prepare(maps: torch.Tensor, map_range: str, size: tuple[int, int]) -> _Prepared:
    """Resize a batch's maps and check them; per-(image, class) min and max come from one reduction.

    Args:
        maps: ``N×C×h×w`` raw maps.
        map_range: ``"probability"`` or ``"unbounded"``.
        size: ``(H, W)`` of the images.

    Raises:
        MapError: naming the first problem of the first image that has one: NaN/inf values, a
            probability map outside [0, 1], an unknown ``map_range``.
    """
    maps = maps.detach().float().contiguous()  # contiguous: one map's pixels are then a flat run
    n, c = maps.shape[:2]
    lo, hi = _map_ranges(maps)
    bad = ~(torch.isfinite(lo) & torch.isfinite(hi)).all(dim=1)
    if bool(bad.any()):
        i = int(bad.nonzero()[0])
        count = int((~torch.isfinite(maps[i])).sum())
        raise MapError(f"saliency map contains NaN or infinite values ({count} pixels)")
    row_maps = None
    if tuple(maps.shape[-2:]) != tuple(size):
        if maps.device.type == "cpu" and cpu_resize.verified(maps, size):
            # Never materialised: the binning loop forms each pixel from two width-resized rows.
            row_maps = cpu_resize.RowMaps.of(maps, size)
            found = torch.from_numpy(row_maps.ranges(threads=torch.get_num_threads())).float()
            lo, hi = found[:, 0].view(n, c), found[:, 1].view(n, c)
            maps = None
        else:
            maps = F.interpolate(maps, size=size, mode="bilinear", align_corners=False).contiguous()
            lo, hi = _map_ranges(maps)
    lo_host, hi_host = lo.cpu().numpy(), hi.cpu().numpy()
    shape = (n, c, 1, 1)
    if map_range == "probability":
        for i in range(n):
            low, high = float(lo_host[i].min()), float(hi_host[i].max())
            if low < -PROBABILITY_TOLERANCE or high > 1 + PROBABILITY_TOLERANCE:
                raise MapError(f"a 'probability' map must lie in [0, 1], found values in [{low:.4g}, {high:.4g}]")
        needs_clamp = (lo_host < 0) | (hi_host > 1)
        return _Prepared(maps, map_range, lo.view(shape), torch.ones_like(lo).view(shape), np.zeros((n, c), bool),
                         needs_clamp, row_maps)
    if map_range == "unbounded":
        span = hi - lo
        if not bool(torch.isfinite(span).all()):  # finite values more than the float32 range apart
            raise MapError("an 'unbounded' map's values span more than the float32 range; it cannot be min–max scaled")
        # A constant map carries no localisation: (v - low) / 1 makes it all zeros, not a division by zero.
        div = torch.where(span > 0, span.clamp_min(1e-12), torch.ones_like(span))
        constant = (span == 0).cpu().numpy()
        return _Prepared(maps, map_range, lo.view(shape), div.view(shape), constant, np.zeros((n, c), bool), row_maps)
    raise MapError(f"unknown map_range {map_range!r}")


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
    _check_image_maps(maps)
    return _prepare(maps[None], map_range, size).normalised_image(0)


MAX_BINS = 2**24
"""Above this many bins the product ``v * bins`` of the bin index might not be exact (see :class:`_Binner`)."""


class _Binner:
    """Fixed-bin histograms of normalised values, on their device, bin for bin those of
    :func:`wsl_bench.evaluation.metrics.pixel_histograms`.

    That function puts ``v`` in bin ``k`` when ``k/bins <= v < (k+1)/bins`` in exact arithmetic (its
    float32 edges are rounded up, its comparisons exact; above 4096 bins its float64 edges are off
    by less than any float32 map value is from them; the last bin also holds 1.0): the bin is
    ``min(floor(v * bins), bins - 1)`` of the real product. Here that product is formed in float64,
    where it is exact — a float32 ``v`` has 24 significant bits, ``bins <= 2**24`` at most 25, and
    float64 holds 53 — so truncating it gives that bin without the edge lookup and the step back
    numpy needs, on any device (an exact product rounds nowhere). ``v = 1`` gives ``bins``: the
    counts keep one extra bin, folded into the last one on the host.
    """

    def __init__(self, bins: int, device: torch.device) -> None:
        if bins > MAX_BINS:
            raise ValueError(f"bins must be at most {MAX_BINS} for exact binning, got {bins}")
        self.bins = bins
        self.chunk = CHUNK_ELEMENTS["cpu" if device.type == "cpu" else "other"]
        self.device = device
        self._buffers: dict[torch.dtype, torch.Tensor] = {}

    def _buffer(self, dtype: torch.dtype, n: int) -> torch.Tensor:
        """The first ``n`` elements of a reused scratch vector (allocating each step costs more than the step)."""
        buffer = self._buffers.get(dtype)
        if buffer is None or buffer.numel() < n:
            buffer = self._buffers[dtype] = torch.empty(max(n, self.chunk), dtype=dtype, device=self.device)
        return buffer[:n]

    def counts(self, x: torch.Tensor) -> torch.Tensor:
        """Counts (length ``bins + 1``, int64, on the device) of the bins of ``x``: flat, float32 in [0, 1]."""
        total = torch.zeros(self.bins + 1, dtype=torch.int64, device=self.device)
        for start in range(0, x.numel(), self.chunk):
            self._count_step(x[start : start + self.chunk], total)
        return total

    def _count_step(self, x: torch.Tensor, total: torch.Tensor) -> None:
        """Add the bins of at most ``chunk`` values ``x`` to ``total``."""
        n = x.numel()
        # widen, then multiply in place: a float32 · float64 product reads and converts more slowly
        product = self._buffer(torch.float64, n).copy_(x).mul_(self.bins)
        index = self._buffer(torch.int32, n).copy_(product)  # truncation == floor: the product is >= 0
        total += torch.bincount(index, minlength=self.bins + 1)

    def map_counts(self, prepared: _Prepared, i: int, c: int) -> torch.Tensor:
        """Counts of every pixel of the normalised map ``(i, c)``, in cache-sized steps."""
        flat, low, div = prepared.row(i, c)
        if prepared.constant[i, c]:  # all zeros: every pixel in bin 0
            total = torch.zeros(self.bins + 1, dtype=torch.int64, device=self.device)
            total[0] = flat.numel()
            return total
        identity = prepared.map_range == "probability" and not prepared.needs_clamp[i, c]
        total = torch.zeros(self.bins + 1, dtype=torch.int64, device=self.device)
        for start in range(0, flat.numel(), self.chunk):
            raw = flat[start : start + self.chunk]
            x = raw if identity else prepared.normalise(raw, low, div, out=self._buffer(torch.float32, raw.numel()))
            self._count_step(x, total)
        return total

    def lesion_counts(self, prepared: _Prepared, i: int, c: int, lesion: torch.Tensor) -> torch.Tensor:
        """Counts of the normalised map ``(i, c)`` at the flat pixel indices ``lesion``."""
        flat, low, div = prepared.row(i, c)
        return self.counts(prepared.normalise(flat.index_select(0, lesion), low, div))


def _lesion_pixels(sample: Sample, name: str, size: tuple[int, int]) -> np.ndarray | None:
    """Flat indices of the sample's ``name`` lesion pixels (``None``: class not annotated), after
    checking that its mask fits the image."""
    mask = sample.masks.get(name)
    if mask is None:
        return None
    if tuple(np.shape(mask)) != tuple(size):
        raise ValueError(f"saliency map shape {tuple(size)} does not match mask shape {tuple(np.shape(mask))}")
    return sample.lesion_pixels(name)


def _device_counts(prepared: _Prepared, lesions: list[dict[str, np.ndarray | None]],
                   annotated: list[tuple[int, int]], bins: int) -> np.ndarray:
    """``len(annotated) × 2 × (bins + 1)`` counts (lesion, all pixels) binned with tensor operations
    on the maps' device; only the counts come to the host."""
    binner = _Binner(bins, prepared.maps.device)
    rows = []
    for i, c in annotated:
        lesion = torch.from_numpy(lesions[i][CLASSES[c]]).to(binner.device)
        rows.append(torch.stack([binner.lesion_counts(prepared, i, c, lesion), binner.map_counts(prepared, i, c)]))
    return torch.stack(rows).cpu().numpy()


def _cpu_counts(prepared: _Prepared, lesions: list[dict[str, np.ndarray | None]],
                annotated: list[tuple[int, int]], bins: int) -> np.ndarray:
    """The same counts as :func:`_device_counts`, for maps in CPU memory: one fused pass per map
    (:mod:`wsl_bench.evaluation.cpu_histograms`), the maps' segments counted in parallel threads."""
    from wsl_bench.evaluation import cpu_histograms as kernel

    if bins > MAX_BINS:
        raise ValueError(f"bins must be at most {MAX_BINS} for exact binning, got {bins}")
    jobs = []
    for i, c in annotated:
        low, div = float(prepared.low[i, c]), float(prepared.div[i, c])
        if prepared.map_range == "unbounded":
            mode = kernel.NORMALISE_MIN_MAX  # a constant map: (v - low) / 1 is 0, all in bin 0
        else:
            mode = kernel.NORMALISE_CLAMP if prepared.needs_clamp[i, c] else kernel.NORMALISE_NONE
        lesion = lesions[i][CLASSES[c]]
        if prepared.row_maps is not None:
            jobs.append(kernel.MapToBin(None, lesion, low, div, mode, prepared.row_maps, i * len(CLASSES) + c))
        else:
            jobs.append(kernel.MapToBin(prepared.row(i, c)[0].numpy(), lesion, low, div, mode))
    return kernel.histograms(jobs, bins, threads=torch.get_num_threads())


def _image_fields(histograms: dict[str, tuple[np.ndarray, np.ndarray] | None], size: tuple[int, int],
                  bins: int) -> dict[str, Any]:
    """Record fields of one image from its per-class (pos, neg) histograms (``None``: no mask)."""
    image_area = size[0] * size[1]
    dice, pixels, has_lesion, lesion_fraction, hist = {}, {}, {}, {}, {}
    for name in CLASSES:
        pair = histograms[name]
        if pair is None:  # not annotated for this class: no localisation score
            dice[name] = pixels[name] = has_lesion[name] = lesion_fraction[name] = None
            continue
        pos, neg = pair
        counts = dice_counts(pos, neg, FIXED_TAU, bins)
        has_lesion[name] = bool(counts["mask"] > 0)
        lesion_fraction[name] = counts["mask"] / image_area
        pixels[name] = counts
        dice[name] = 2 * counts["intersection"] / (counts["predicted"] + counts["mask"]) if has_lesion[name] else None
        hist[name] = {"pos": encode_counts(pos), "neg": encode_counts(neg)}
    return {
        "dice": dice,
        "dice_pixels": pixels,
        "has_lesion": has_lesion,
        "lesion_fraction": lesion_fraction,
        "bins": bins,
        "hist": hist,
    }


def score_batch(maps: torch.Tensor, map_range: str, samples: Sequence[Sample], bins: int) -> list[ScoredImage]:
    """Record fields of a batch of images, computed where ``maps`` are (their device).

    Resizing, normalising, validating and binning run as tensor operations on the maps' device;
    only the histograms (``2 × bins`` counts per image and annotated class) come to the host, where
    the Dice counts at τ = 0.5 are read from them. The fields equal :func:`score_image`'s of each
    image (on the CPU, to the last count; on a GPU the bilinear resize, if any, is that device's).

    Args:
        maps: ``N×C×h×w`` raw maps, N = ``len(samples)``.
        map_range: the method's declared range.
        samples: the images with their masks, all of one size ``(H, W)`` (the harness stacks a
            batch's images, so they are).
        bins: histogram bins (thresholds 0, 1/bins, ...).

    Returns:
        one :class:`ScoredImage` per sample, in order.

    Raises:
        MapError: a map that cannot be scored (the first found: one bad image fails the call; the
            harness then scores the batch's images one by one, so that only that image fails).
        ValueError: samples of different sizes, a mask that does not fit its image.
    """
    if maps.ndim != 4 or maps.shape[0] != len(samples) or maps.shape[1] != len(CLASSES):
        raise MapError(f"expected an N×{len(CLASSES)}×h×w batch with N={len(samples)}, got shape {tuple(maps.shape)}")
    if not samples:
        return []
    sizes = {s.size for s in samples}
    if len(sizes) > 1:
        raise ValueError(f"score_batch needs images of one size, got {sorted(sizes)}")
    size = samples[0].size
    prepared = _prepare(maps, map_range, size)
    lesions = [{name: _lesion_pixels(s, name, size) for name in CLASSES} for s in samples]
    annotated = [(i, c) for i in range(len(samples)) for c, name in enumerate(CLASSES) if lesions[i][name] is not None]
    histograms: list[dict[str, Any]] = [dict.fromkeys(CLASSES) for _ in samples]
    if annotated:
        bins = _check_bins(bins)
        if prepared.low.device.type == "cpu":  # (the row maps exist only on the CPU)
            counts = _cpu_counts(prepared, lesions, annotated, bins)
        else:
            counts = _device_counts(prepared, lesions, annotated, bins)
        counts[:, :, bins - 1] += counts[:, :, bins]  # 1.0 belongs to the last bin
        counts = counts[:, :, :bins]
        for row, (i, c) in enumerate(annotated):
            pos, total = counts[row]
            histograms[i][CLASSES[c]] = (pos, total - pos)
    return [
        ScoredImage(_image_fields(histograms[i], size, bins), lambda i=i: prepared.normalised_image(i))
        for i in range(len(samples))
    ]


def score_image(maps: torch.Tensor, map_range: str, sample: Sample, bins: int) -> ScoredImage:
    """Record fields for one image: Dice at τ=0.5, its pixel counts, histograms, lesion sizes.

    Args:
        maps: ``C×h×w`` raw maps of the image.
        map_range: the method's declared range.
        sample: the image with its masks.
        bins: histogram bins (thresholds 0, 1/bins, ...).
    """
    _check_image_maps(maps)
    return score_batch(maps[None], map_range, [sample], bins)[0]


def image_level_fields(scores: torch.Tensor, sample: Sample) -> dict[str, Any]:
    """``score`` and ``label`` per class for one image (``scores``: ``C`` probabilities)."""
    values = scores.detach().float().cpu().numpy()
    if not np.isfinite(values).all():
        raise MapError("image-level scores contain NaN or infinite values")
    return {
        "score": {name: float(values[c]) for c, name in enumerate(CLASSES)},
        "label": {name: sample.labels.get(name) for name in CLASSES},
    }
