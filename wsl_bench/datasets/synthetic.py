"""The built-in ``synthetic`` dataset: high-resolution synthetic mammograms generated on the fly.

No files are needed: each image is a pure function of ``(seed, split, index, image_size)`` (see
:mod:`wsl_bench.datasets.synthetic_generator` for the generator and ``datasets/synthetic.md`` for
the card). Splits are fixed by construction: the split name is part of every image's random
stream key, so ``train``, ``val`` and ``test`` never share an image and image ``i`` of a split is
the same whatever ``n`` is.
"""

from __future__ import annotations

import dataclasses
import re
import textwrap
import threading
from collections import Counter, OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from wsl_bench.data import DatasetError, MammogramDataset, Sample, SampleError, standardise
from wsl_bench.datasets.synthetic_generator import (
    DEFAULT_CONSPICUITY_LEVEL,
    GENERATOR_VERSION,
    Conspicuity,
    SyntheticImage,
    conspicuity_named,
    generate,
    sample_id,
)
from wsl_bench.registry import DATASETS
from wsl_bench.saliency import CLASSES

DEFAULT_IMAGE_SIZE: tuple[int, int] = (736, 480)
DEFAULT_SPLIT_SIZES: dict[str, int] = {"train": 400, "val": 40, "test": 60}
_ID_PATTERN = re.compile(r"^synth-s(?P<seed>\d+)-(?P<split>train|val|test)-(?P<index>\d{5,})$")

__all__ = [
    "DEFAULT_IMAGE_SIZE",
    "DEFAULT_SPLIT_SIZES",
    "SyntheticImage",
    "SyntheticMammograms",
    "plot_conspicuity_levels",
    "plot_examples",
]


class _LRUCache:
    """A least-recently-used cache bounded by bytes; masks are stored bit-packed (8× smaller)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[str, tuple[np.ndarray, dict[str, np.ndarray], dict, dict, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()  # DataLoader threads may share one dataset

    def get(self, key: str) -> SyntheticImage | None:
        with self._lock:
            item = self._items.get(key)
            if item is None:
                return None
            self._items.move_to_end(key)
        image, packed, labels, meta, _ = item
        shape = image.shape
        masks = {c: np.unpackbits(p, count=shape[0] * shape[1]).reshape(shape).astype(bool) for c, p in packed.items()}
        # copies, so a caller that edits the returned arrays cannot corrupt the cache
        return SyntheticImage(image.copy(), masks, dict(labels), _copy_meta(meta))

    def put(self, key: str, value: SyntheticImage) -> None:
        packed = {c: np.packbits(m.ravel()) for c, m in value.masks.items()}
        size = value.image_u16.nbytes + sum(p.nbytes for p in packed.values())
        if size > self.max_bytes:
            return
        with self._lock:
            if key in self._items:
                return
            self._items[key] = (value.image_u16.copy(), packed, dict(value.labels), _copy_meta(value.meta), size)
            self._bytes += size
            while self._bytes > self.max_bytes:
                _, evicted = self._items.popitem(last=False)
                self._bytes -= evicted[-1]

    def __len__(self) -> int:
        return len(self._items)


_SHARED_CACHE: _LRUCache | None = None


def _shared_cache(cache_mb: float) -> _LRUCache | None:
    """The process-wide cache of generated images, its budget raised to ``cache_mb`` if that is larger;
    ``None`` when ``cache_mb`` is 0."""
    global _SHARED_CACHE
    if cache_mb <= 0:
        return None
    budget = int(cache_mb * 2**20)
    if _SHARED_CACHE is None:
        _SHARED_CACHE = _LRUCache(budget)
    _SHARED_CACHE.max_bytes = max(_SHARED_CACHE.max_bytes, budget)
    return _SHARED_CACHE


def _copy_meta(meta: dict[str, Any]) -> dict[str, Any]:
    out = dict(meta)
    out["lesions"] = [dict(rec) for rec in meta.get("lesions", [])]
    out["lesion_areas"] = {c: list(v) for c, v in meta.get("lesion_areas", {}).items()}
    return out


@DATASETS.register("synthetic")
class SyntheticMammograms(MammogramDataset):
    """Synthetic mammograms with benign/malignant masses and calcifications, generated on the fly.

    Args:
        root: ignored (no files needed); accepted for a uniform constructor.
        split: "train", "val" or "test".
        image_size: ``(H, W)`` of every image (default 736×480).
        n: images in this split (defaults: train 400, val 40, test 60).
        seed: dataset seed; the same seed gives bit-identical images.
        cache_mb: memory budget of the process-wide LRU cache of generated images shared by every
            synthetic dataset of the process (0: this dataset neither reads nor fills it). One run trains
            several methods (and seeds) on the same images: each is generated once per process (9 ms
            per image at 368×240, measured) instead of once per training job.
        conspicuity: how conspicuous the lesions are, a named level of
            :data:`~wsl_bench.datasets.synthetic_generator.CONSPICUITY_LEVELS` (default ``"real"``:
            calibrated on real annotated mammograms; ``"obvious"``: generator version 3's lesions).
        lesion_contrast, dense_placement, masking: replace one field of the level
            (:class:`~wsl_bench.datasets.synthetic_generator.Conspicuity`).
    """

    name = "synthetic"
    description = "built-in synthetic mammograms (masses, calcifications, CC/MLO), any size, deterministic by seed"
    needs_root = False

    def __init__(
        self,
        root: str | None = None,
        split: str = "test",
        image_size: tuple[int, int] | None = DEFAULT_IMAGE_SIZE,
        n: int | None = None,
        seed: int = 0,
        cache_mb: float = 1536.0,
        conspicuity: str = DEFAULT_CONSPICUITY_LEVEL,
        lesion_contrast: float | None = None,
        dense_placement: float | None = None,
        masking: float | None = None,
    ) -> None:
        super().__init__(root=root, split=split, image_size=image_size or DEFAULT_IMAGE_SIZE)
        if len(self.image_size) != 2 or min(self.image_size) < 16:
            raise DatasetError(f"synthetic image_size must be (H, W) with both ≥ 16, got {self.image_size}")
        self.image_size = (int(self.image_size[0]), int(self.image_size[1]))
        self.n = DEFAULT_SPLIT_SIZES[split] if n is None else int(n)
        if self.n < 1:
            raise DatasetError(f"synthetic split {split!r} needs n ≥ 1 images, got {self.n}")
        if int(seed) < 0:
            raise DatasetError(f"synthetic seed must be ≥ 0, got {seed}")
        self.seed = int(seed)
        try:
            self.conspicuity: Conspicuity = conspicuity_named(
                str(conspicuity), contrast=lesion_contrast, dense_placement=dense_placement, masking=masking)
        except (TypeError, ValueError) as exc:
            raise DatasetError(f"synthetic dataset option: {exc}") from None
        self.level = str(conspicuity)
        self._cache = _shared_cache(cache_mb)
        # the cache is shared by datasets of other sizes and conspicuities: those are part of the key
        self._key_suffix = f"@{self.image_size[0]}x{self.image_size[1]}@{self.conspicuity}"
        self._ids = [sample_id(self.seed, split, i) for i in range(self.n)]

    @classmethod
    def options_for(cls, preset: Any, split: str, seed: int) -> dict[str, Any]:
        """A run preset fixes how many images each split has; the run seed fixes their content."""
        return {"n": getattr(preset, f"n_{split}"), "seed": seed}

    def ids(self) -> list[str]:
        return list(self._ids)

    def raw(self, sample_id: str) -> SyntheticImage:
        """The generated image before preprocessing (uint16 pixels, masks, labels, meta).

        Raises:
            SampleError: ``sample_id`` is not a synthetic id (``synth-s<seed>-<split>-<index>``).
        """
        match = _ID_PATTERN.match(sample_id)
        if match is None:
            raise SampleError(f"{sample_id!r} is not a synthetic sample id (synth-s<seed>-<split>-<00000>)", sample_id)
        key = sample_id + self._key_suffix
        cached = self._cache.get(key) if self._cache is not None else None
        if cached is not None:
            return cached
        item = generate(int(match["seed"]), match["split"], int(match["index"]), self.image_size, self.conspicuity)
        if self._cache is not None:
            self._cache.put(key, item)
        return item

    def load(self, sample_id: str) -> Sample:
        """The standardised ``1×H×W`` float32 image with its masks (every image fully annotated)."""
        item = self.raw(sample_id)
        image = standardise(item.image_u16)[None]
        meta = dict(item.meta)
        meta["source"] = f"synthetic:{sample_id}@{self.image_size[0]}x{self.image_size[1]}"
        return Sample(image=image, masks=dict(item.masks), labels=dict(item.labels), meta=meta)

    def describe(self) -> dict[str, Any]:
        return super().describe() | {
            "n": self.n,
            "seed": self.seed,
            "generator_version": GENERATOR_VERSION,
            "conspicuity": {"level": self.level, **dataclasses.asdict(self.conspicuity)},
        }


def _case(item: SyntheticImage) -> str:
    return {(0, 0): "no finding", (1, 0): "benign", (0, 1): "malignant", (1, 1): "both"}[
        (item.labels["benign"], item.labels["malignant"])
    ]


def _pick_examples(n: int, image_size: tuple[int, int], seed: int, scan: int = 60) -> list[SyntheticImage]:
    """``n`` of the first ``scan`` test images, chosen greedily to show as many cases (none, benign,
    malignant, both), views and lesion kinds as possible; ties go to the lower index."""
    candidates = [generate(seed, "test", index, image_size) for index in range(scan)]

    def features(item: SyntheticImage) -> set[str]:
        return {f"case:{_case(item)}", f"view:{item.meta['view']}"} | {
            f"kind:{r['kind']}" for r in item.meta["lesions"]
        }

    chosen: list[int] = []
    covered: set[str] = set()
    while len(chosen) < min(n, len(candidates)):
        # max() keeps the first of equal scores, i.e. the lowest index
        best = max(
            (i for i in range(len(candidates)) if i not in chosen), key=lambda i: len(features(candidates[i]) - covered)
        )
        chosen.append(best)
        covered |= features(candidates[best])
    return [candidates[i] for i in chosen]


def _zoom_box(item: SyntheticImage, margin: float = 2.5) -> tuple[int, int, int, int] | None:
    """Rows/columns ``(r0, r1, c0, c1)`` of a square around the image's first lesion, for the inset."""
    if not item.meta["lesions"]:
        return None
    rec = item.meta["lesions"][0]
    h, w = item.image_u16.shape
    half = int(max(12, margin * (rec["area_px"] / np.pi) ** 0.5))
    r, c = int(rec["centre"][0]), int(rec["centre"][1])
    r0, c0 = max(0, r - half), max(0, c - half)
    return r0, min(h, r0 + 2 * half), c0, min(w, c0 + 2 * half)


def plot_examples(
    path: str | Path, n: int = 6, image_size: tuple[int, int] = DEFAULT_IMAGE_SIZE, seed: int = 0
) -> Path:
    """Save a figure of ``n`` synthetic test images with benign (green) and malignant (red) outlines.

    Args:
        path: output file (PNG or PDF, by suffix); the folder is created.
        n: number of examples.
        image_size: ``(H, W)`` of the generated images.
        seed: dataset seed.

    Returns:
        the written path.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.patches
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    items = _pick_examples(n, tuple(image_size), seed)
    cols = min(n, 3)
    rows = (n + cols - 1) // cols
    h, w = image_size
    fig, axes = plt.subplots(
        rows, cols, figsize=(cols * 3.6 * w / h + 0.6, rows * 3.9 + 0.9), squeeze=False, layout="constrained"
    )
    colours = {"benign": "#22dd22", "malignant": "#ff2222"}

    def outline(ax, item, window=(slice(None), slice(None)), width=1.0):
        for cls in CLASSES:
            mask = item.masks[cls][window]
            if mask.any():
                ax.contour(mask.astype(np.uint8), levels=[0.5], colors=colours[cls], linewidths=width)

    for ax, item in zip(axes.flat, items, strict=False):
        ax.imshow(item.image_u16, cmap="gray", vmin=0, vmax=4095, interpolation="antialiased")
        outline(ax, item)
        counts = Counter(rec["kind"].replace("_", " ") for rec in item.meta["lesions"])
        kinds = ", ".join(k if c == 1 else f"{c}× {k}" for k, c in counts.items()) or "no finding"
        kinds = "\n".join(textwrap.wrap(kinds, 44))
        labels = " ".join(f"{c}={item.labels[c]}" for c in CLASSES)
        ax.set_title(f"{item.meta['view']} · density {item.meta['density_category']} · {labels}\n{kinds}", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
        box = _zoom_box(item)
        if box is not None:
            # the far side from the chest wall is background: room for a zoom on the first lesion
            r0, r1, c0, c1 = box
            inset = ax.inset_axes((0.62, 0.70, 0.37, 0.29))
            window = (slice(r0, r1), slice(c0, c1))
            inset.imshow(item.image_u16[window], cmap="gray", vmin=0, vmax=4095, interpolation="nearest")
            outline(inset, item, window, width=0.8)
            inset.set_xticks([])
            inset.set_yticks([])
            for spine in inset.spines.values():
                spine.set_color("#ffcc00")
            ax.add_patch(matplotlib.patches.Rectangle((c0, r0), c1 - c0, r1 - r0, fill=False, ec="#ffcc00", lw=0.8))
    for ax in list(axes.flat)[len(items) :]:
        ax.axis("off")
    handles = [Line2D([], [], color=colours[c], lw=2, label=f"{c} mask outline") for c in CLASSES]
    handles.append(Line2D([], [], color="#ffcc00", lw=1, label="zoomed region (inset)"))
    fig.legend(handles=handles, loc="outside lower center", ncol=3, frameon=False, fontsize=9)
    fig.suptitle(f"Synthetic mammograms ({h}×{w}, seed {seed}, test split; chest wall on the left)", fontsize=10)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _first_lesion_of_each_kind(image_size: tuple[int, int], seed: int, split: str, scan: int) -> list[tuple[int, int]]:
    """``(image index, lesion number)`` of the first lesion of each kind among the first ``scan`` images
    of ``split`` (in the kinds' order: benign kinds, then malignant ones)."""
    from wsl_bench.datasets.synthetic_generator import BENIGN_KINDS, MALIGNANT_KINDS

    wanted = [kind for kind, _ in BENIGN_KINDS + MALIGNANT_KINDS]
    found: dict[str, tuple[int, int]] = {}
    for index in range(scan):
        for number, lesion in enumerate(generate(seed, split, index, image_size).meta["lesions"]):
            found.setdefault(lesion["kind"], (index, number))
        if len(found) == len(wanted):
            break
    return [found[kind] for kind in wanted if kind in found]


def plot_conspicuity_levels(
    path: str | Path, image_size: tuple[int, int] = DEFAULT_IMAGE_SIZE, seed: int = 0, split: str = "val",
    scan: int = 80,
) -> Path:
    """Save a figure of one lesion of each kind at every named conspicuity level, beside its mask.

    Rows: lesion kinds (the first of each kind among the first ``scan`` images of ``split``); columns: the
    levels of :data:`~wsl_bench.datasets.synthetic_generator.CONSPICUITY_LEVELS`, most conspicuous first
    (the same lesion, shape and place: only what it adds changes), then its mask. Each crop is shown on
    the grey scale of its own image's breast (1st–99.5th percentile), as a reader would window it.

    Returns:
        the written path.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from wsl_bench.datasets.conspicuity import breast_region, lesion_components, measure_lesion
    from wsl_bench.datasets.synthetic_generator import CONSPICUITY_LEVELS

    picks = _first_lesion_of_each_kind(tuple(image_size), seed, split, scan)
    levels = list(CONSPICUITY_LEVELS.items())
    fig, axes = plt.subplots(len(picks), len(levels) + 1, figsize=(1.7 * (len(levels) + 1), 1.8 * len(picks) + 0.6),
                             squeeze=False, layout="constrained")
    for row, (index, number) in enumerate(picks):
        record = generate(seed, split, index, image_size).meta["lesions"][number]
        cls = record["class"]
        half = int(max(16, 2.5 * (record["area_px"] / np.pi) ** 0.5))
        r, c = int(record["centre"][0]), int(record["centre"][1])
        window = (slice(max(0, r - half), r + half), slice(max(0, c - half), c + half))
        for col, (name, conspicuity) in enumerate(levels):
            item = generate(seed, split, index, image_size, conspicuity)
            breast = breast_region(item.image_u16)
            low, high = np.percentile(item.image_u16[breast], [1, 99.5])
            lesion = next((m for m in lesion_components(item.masks[cls]) if m[r, c]), item.masks[cls])
            measured = measure_lesion(item.image_u16, lesion, breast)
            ax = axes[row, col]
            ax.imshow(item.image_u16[window], cmap="gray", vmin=low, vmax=high, interpolation="nearest")
            if measured is not None:
                ax.set_xlabel(f"{measured.contrast:+.2f} sd, p{100 * measured.percentile:.0f}", fontsize=7)
            if row == 0:
                ax.set_title(f"{name}\n(contrast ×{conspicuity.contrast:g})", fontsize=8)
        mask_ax = axes[row, -1]
        mask_ax.imshow(lesion[window], cmap="gray", interpolation="nearest")
        if row == 0:
            mask_ax.set_title("mask", fontsize=8)
        axes[row, 0].set_ylabel(f"{record['kind'].replace('_', ' ')}\n({cls})", fontsize=8)
        for ax in axes[row]:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(f"One lesion of each kind at every conspicuity level ({image_size[0]}×{image_size[1]}, {split} "
                 "split); below each crop: its contrast (breast sd) and percentile", fontsize=9)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
