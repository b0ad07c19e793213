"""Which part of GLAM's or GMIC's output localises? A diagnosis behind reports/README.md.

For every test image with a lesion of a class, the script scores, exactly as the harness scores a
map (bilinear resize, PxAP pooled over the lesion images), each part of the model's output:

* ``output``: the map the method returns (GLAM: the fused map; GMIC: its saliency map);
* ``global``: GLAM's global saliency alone (``extras["global_map"]``);

and counts how often the selected patches touch the lesion (``patch_hits``) and what share of the
lesion's pixels they hold (``lesion_in_patches``). A patch that misses the lesion leaves the local
network nothing to segment; a global map that ranks lesion pixels no better than random leaves the
window search nothing to go on.

Usage (from the repository root, after the default run trained the model; the checkpoint path is
in the run's ``manifest.json``, options as the preset gives them):

    python reports/diagnostics/map_parts.py CHECKPOINT --method glam --preset cpu

Uses the public API only: ``create_method``, ``create_dataset``, ``load_method_weights``,
``wsl_bench.evaluation.scoring.normalise_maps`` and the metrics.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

import wsl_bench
from wsl_bench.evaluation.metrics import pixel_histograms, pxap_from_histograms
from wsl_bench.evaluation.scoring import normalise_maps
from wsl_bench.presets import get_preset
from wsl_bench.saliency import CLASSES
from wsl_bench.training.cache import load_method_weights


def map_parts(method: wsl_bench.SaliencyMethod, dataset) -> dict[str, dict[str, float]]:
    """PxAP of each output part and patch hits per class over the lesion images of ``dataset``."""
    hist: dict[str, dict[str, list]] = {c: {"output": [], "global": []} for c in CLASSES}
    hits = {c: [] for c in CLASSES}
    inside = {c: [] for c in CLASSES}
    for image_id in dataset.ids():
        sample = dataset.get(image_id)
        with torch.no_grad():
            out = method.predict(torch.from_numpy(sample.image[None]))
        size = sample.image.shape[-2:]
        parts = {"output": normalise_maps(out.maps[0], out.map_range, size)}
        if "global_map" in out.extras:
            parts["global"] = normalise_maps(out.extras["global_map"][0], "probability", size)
        corners = out.extras.get("patch_locations")
        patch = getattr(getattr(method, "config", None), "patch_size", None)
        for k, cls in enumerate(CLASSES):
            mask = sample.masks.get(cls)
            if mask is None or not mask.any():
                continue
            for name, maps in parts.items():
                hist[cls][name].append(pixel_histograms(maps[k].numpy(), mask))
            if corners is not None and patch is not None:
                covered = np.zeros_like(mask)
                for r, c in corners[0].tolist():
                    covered[max(r, 0) : r + patch[0], max(c, 0) : c + patch[1]] = True
                hits[cls].append(bool((covered & mask).any()))
                inside[cls].append(float((covered & mask).sum() / mask.sum()))
    result = {}
    for cls in CLASSES:
        row: dict[str, float] = {"images": len(hist[cls]["output"])}
        for name, pairs in hist[cls].items():
            if pairs:
                pos = np.sum([p for p, _ in pairs], axis=0)
                neg = np.sum([n for _, n in pairs], axis=0)
                row[f"pxap_{name}"] = round(pxap_from_histograms(pos, neg), 4)
        if hits[cls]:
            row["patch_hits"] = round(float(np.mean(hits[cls])), 3)
            row["lesion_in_patches"] = round(float(np.mean(inside[cls])), 3)
        result[cls] = row
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--method", required=True, choices=["glam", "gmic"])
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--images", type=int, default=None, help="test images (default: the preset's)")
    args = parser.parse_args()
    preset = get_preset(args.preset)
    options = dict(preset.method_options.get(args.method, {}))
    method = wsl_bench.create_method(args.method, image_size=preset.image_size, **options)
    load_method_weights(method, args.checkpoint)
    n = args.images or preset.n_test
    dataset = wsl_bench.create_dataset("synthetic", split="test", image_size=preset.image_size, n=n, seed=0)
    print(json.dumps(map_parts(method, dataset)))


if __name__ == "__main__":
    main()
