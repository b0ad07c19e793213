"""A fabricated run folder for report tests: any methods, records with real histograms, figure maps.

Building a report needs no model, only a run folder (``manifest.json``, ``records.jsonl``,
``maps/``). :func:`fake_run` writes one whose numbers are known in advance: each method's map of
an image is its lesion mask scaled by the method's *quality* plus seeded noise, so a higher quality
localises better; ``twins`` makes methods return another method's map exactly (or within float
rounding), the way Grad-CAM equals CAM on a global-average-pooling classifier.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from wsl_bench.evaluation.figure_maps import figure_map_name
from wsl_bench.evaluation.records import encode_counts
from wsl_bench.saliency import CLASSES

TWENTY = (
    "glam", "gmic", "cam", "gradcam", "gradcam++", "xgradcam", "hirescam", "layercam", "eigencam", "scorecam",
    "ablationcam", "fullgrad", "integrated_gradients", "occlusion", "captum_gradcam", "guided_gradcam", "saliency",
    "intensity", "centre_prior", "random",
)
"""Twenty registered methods: the flagship, CAM, its explainers of both toolkits and the floor."""

QUALITY = {"glam": 0.55, "gmic": 0.35, "cam": 0.45, "gradcam++": 0.47, "layercam": 0.44, "eigencam": 0.3,
           "scorecam": 0.4, "ablationcam": 0.38, "fullgrad": 0.2, "integrated_gradients": 0.15, "occlusion": 0.25,
           "guided_gradcam": 0.18, "saliency": 0.1, "intensity": 0.3, "centre_prior": 0.12, "random": 0.0}
"""How strongly each method's map marks the lesion (0: not at all)."""

CAM_TWINS = {"gradcam": ("cam", 0.0), "hirescam": ("cam", 0.0), "xgradcam": ("cam", 0.0),
             "captum_gradcam": ("cam", 1e-7)}
"""Methods that return another's map: (that method, size of the float rounding added)."""

SECONDS = {"glam": 0.08, "gmic": 0.07, "cam": 0.057, "gradcam": 0.061, "gradcam++": 0.069, "xgradcam": 0.061,
           "hirescam": 0.066, "layercam": 0.062, "eigencam": 0.19, "scorecam": 1.9, "ablationcam": 2.4,
           "fullgrad": 0.6, "integrated_gradients": 3.1, "occlusion": 1.2, "captum_gradcam": 0.1,
           "guided_gradcam": 0.2, "saliency": 0.09, "intensity": 0.000218, "centre_prior": 0.0012,
           "random": 0.00047}

SIZE = (48, 32)
BINS = 100


def _mask(rng: np.random.Generator, area: float) -> np.ndarray:
    h, w = SIZE
    rows, cols = np.mgrid[0:h, 0:w]
    r, c = rng.uniform(8, h - 8), rng.uniform(6, w - 6)
    radius = max(np.sqrt(area * h * w / np.pi), 1.0)
    return (rows - r) ** 2 + (cols - c) ** 2 <= radius ** 2


def _map(method: str, quality: float, mask: np.ndarray, seed: int) -> np.ndarray:
    noise = np.random.default_rng([seed, sum(method.encode())]).uniform(0, 1, mask.shape)
    return np.clip(quality * mask + (1 - quality) * noise, 0, 1)


def _hist(values: np.ndarray) -> np.ndarray:
    return np.bincount(np.minimum((values * BINS).astype(np.int64), BINS - 1), minlength=BINS)


def fake_run(root: Path, methods: tuple[str, ...] = TWENTY, n_images: int = 12, quality: Mapping[str, float] = QUALITY,
             twins: Mapping[str, tuple[str, float]] = CAM_TWINS, figure_images: int = 4, seed: int = 0) -> Path:
    """Write a run folder at ``root`` (test and validation records, figure maps) and return it.

    Image ``i`` holds a benign lesion when ``i % 3 != 1`` and a malignant one when ``i % 3 != 0``, with
    areas from 0.1 % to 5 % of the image, so every class has lesions of several sizes.
    """
    root.mkdir(parents=True, exist_ok=True)
    records = []
    for split in ("test", "val"):
        for i in range(n_images):
            image_id = f"fake-{split}-{i:03d}"
            rng = np.random.default_rng([seed, i, split == "val"])
            present = {"benign": i % 3 != 1, "malignant": i % 3 != 0}
            areas = {cls: float(np.exp(rng.uniform(np.log(0.001), np.log(0.05)))) for cls in CLASSES}
            masks = {cls: _mask(rng, areas[cls]) if present[cls] else np.zeros(SIZE, bool) for cls in CLASSES}
            maps = {}
            for method in methods:
                source, rounding = twins.get(method, (method, 0.0))
                maps[method] = {
                    cls: np.clip(_map(source, quality.get(source, 0.3), masks[cls], seed * 1000 + i * 2 + c)
                                 + rounding, 0, 1)
                    for c, cls in enumerate(CLASSES)}
            for method in methods:
                hist, dice = {}, {}
                for cls in CLASSES:
                    m, mask = maps[method][cls], masks[cls]
                    hist[cls] = {"pos": encode_counts(_hist(m[mask])), "neg": encode_counts(_hist(m[~mask]))}
                    predicted = m >= 0.5
                    dice[cls] = (2 * float((predicted & mask).sum()) / float(predicted.sum() + mask.sum())
                                 if mask.any() else None)
                records.append({
                    "schema": 1, "split": split, "image_id": image_id, "method": method, "status": "ok",
                    "error": None, "dice": dice, "has_lesion": present,
                    "score": {cls: float(np.clip(0.5 + 0.6 * (present[cls] - 0.5) * quality.get(method, 0.3)
                                                         + rng.normal(0, 0.1), 0, 1)) for cls in CLASSES},
                    "label": {cls: int(present[cls]) for cls in CLASSES},
                    "time_s": SECONDS.get(method, 0.1) * (1 + 0.05 * i), "peak_memory_mb": 870.0 + len(method),
                    "gflops": 0.0 if method in ("intensity", "centre_prior", "random") else 4.8,
                    "batch_size": 1, "map_range": "unbounded", "map_shape": list(SIZE), "mask_kind": "pixel",
                    "lesion_fraction": {cls: float(masks[cls].mean()) for cls in CLASSES},
                    "bins": BINS, "hist": hist,
                })
                if split == "test" and i < figure_images:
                    _save_figure_maps(root, method, image_id, maps[method], masks, rng)
    with (root / "records.jsonl").open("w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record) + "\n")
    manifest = {
        "schema_version": 1,
        "config": {"dataset": "fake", "split": "test", "validation_split": "val", "preset": "tiny", "seed": seed,
                   "methods": list(methods), "bins": BINS},
        "validation": {"split": "val"},
        "device": {"type": "cpu", "name": "test"},
        "git": {"commit": "0" * 40, "dirty": False},
        "methods": {m: {"options": {}} for m in methods},
    }
    (root / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    return root


def _save_figure_maps(root: Path, method: str, image_id: str, maps: dict[str, np.ndarray],
                      masks: dict[str, np.ndarray], rng: np.random.Generator) -> None:
    name = figure_map_name(image_id)
    image_file = root / "maps" / "_images" / name
    if not image_file.exists():
        image_file.parent.mkdir(parents=True, exist_ok=True)
        image = np.random.default_rng(len(image_id)).normal(0, 0.3, SIZE) + 2.0 * (masks["benign"] | masks["malignant"])
        np.savez(image_file, image=image.astype(np.float16), image_id=np.array(image_id),
                 **{f"mask_{cls}": masks[cls] for cls in CLASSES})
    folder = root / "maps" / method
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(folder / name, maps=np.stack([maps[cls] for cls in CLASSES]).astype(np.float16),
             image_id=np.array(image_id))


_BUILT: dict[Path, tuple[Path, Path]] = {}


def twenty_report(tmp_path_factory) -> tuple[Path, Path]:
    """``(run folder, report folder)`` of :data:`TWENTY` methods, built once per test session (the figures
    take seconds) and shared by the report's test modules; tests must not modify them."""
    base = tmp_path_factory.getbasetemp()
    if base not in _BUILT:
        from wsl_bench.report.tables import build_report

        run_dir = fake_run(tmp_path_factory.mktemp("twenty") / "run")
        _BUILT[base] = (run_dir, build_report(run_dir))
    return _BUILT[base]
