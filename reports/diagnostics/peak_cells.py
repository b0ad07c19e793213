"""Where does a trained model's coarse saliency map peak? A diagnosis behind reports/README.md.

For every test image with a lesion of a class, take the cell where the class's coarse map is
largest (GLAM: its global map, ``extras["global_map"]``; GMIC and others: the output map) and
count how often that cell

* touches the lesion,
* lies mostly outside the breast (under half of its pixels above the background level), and
* lies on the map's border,

next to what a cell drawn uniformly at random would give (the ``chance_*`` columns, expected counts).
A map whose peak sits outside the breast far more often than chance uses a position, not the
image content, to carry the image-level evidence.

Usage (from the repository root, after ``wsl-bench train`` or ``wsl-bench run`` trained the model):

    python reports/diagnostics/peak_cells.py CHECKPOINT --method gmic --image-size 736x480 \\
        --option learning_rate=0.001

``--option`` must repeat the options the checkpoint was trained with (its configuration is checked
on load). Uses the public API only: ``create_method``, ``create_dataset``, ``load_method_weights``.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch
import torch.nn.functional as F

import wsl_bench
from wsl_bench.cli import parse_image_size, parse_option
from wsl_bench.saliency import CLASSES
from wsl_bench.training.cache import load_method_weights

BACKGROUND_MARGIN = 0.05
"""A pixel within this of the image's minimum counts as background (outside the breast): the
images are standardised per image (mean 0, std 1), and the synthetic background is constant."""


def cell_slices(row: int, col: int, map_shape: tuple[int, int], image_shape: tuple[int, int]) -> tuple[slice, slice]:
    """The image pixels of map cell ``(row, col)`` (the map resized nearest to the image)."""
    (h, w), (height, width) = map_shape, image_shape
    return slice(row * height // h, (row + 1) * height // h), slice(col * width // w, (col + 1) * width // w)


def peak_cell_counts(method: wsl_bench.SaliencyMethod, dataset) -> dict[str, dict[str, float]]:
    """Counts per class over the lesion images of ``dataset`` (see the module docstring)."""
    counts = {c: dict(images=0, lesion=0, background=0, border=0, chance_lesion=0.0, chance_background=0.0)
              for c in CLASSES}
    for image_id in dataset.ids():
        sample = dataset.get(image_id)
        with torch.no_grad():
            out = method.predict(torch.from_numpy(sample.image[None]))
        coarse = out.extras.get("global_map", out.maps).float()  # 1 × 2 × h × w
        image = sample.image[0]
        if coarse.shape[-2] > image.shape[0] or coarse.shape[-1] > image.shape[1]:
            coarse = F.interpolate(coarse, size=image.shape, mode="area")  # cells of at least a pixel
        coarse = coarse[0].numpy()
        shape = coarse.shape[-2:]
        cells = [cell_slices(r, c, shape, image.shape) for r in range(shape[0]) for c in range(shape[1])]
        breast = image > image.min() + BACKGROUND_MARGIN
        outside = np.array([breast[cell].mean() < 0.5 for cell in cells])
        for k, cls in enumerate(CLASSES):
            mask = sample.masks.get(cls)
            if mask is None or not mask.any():
                continue
            row, col = np.unravel_index(int(np.argmax(coarse[k])), shape)
            peak = row * shape[1] + col
            touches = np.array([mask[cell].any() for cell in cells])
            tally = counts[cls]
            tally["images"] += 1
            tally["lesion"] += int(touches[peak])
            tally["background"] += int(outside[peak])
            tally["border"] += int(row in (0, shape[0] - 1) or col in (0, shape[1] - 1))
            tally["chance_lesion"] += float(touches.mean())
            tally["chance_background"] += float(outside.mean())
    return {c: {k: round(v, 2) for k, v in t.items()} for c, t in counts.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--method", required=True)
    parser.add_argument("--image-size", type=parse_image_size, required=True)
    parser.add_argument("--option", type=parse_option, action="append", default=[])
    parser.add_argument("--images", type=int, default=40, help="test images (the cpu preset's 40)")
    args = parser.parse_args()
    method = wsl_bench.create_method(args.method, image_size=args.image_size, **dict(args.option))
    load_method_weights(method, args.checkpoint)
    dataset = wsl_bench.create_dataset("synthetic", split="test", image_size=args.image_size, n=args.images, seed=0)
    print(json.dumps(peak_cell_counts(method, dataset)))


if __name__ == "__main__":
    main()
