"""Write the conspicuity table of the synthetic set into datasets/synthetic.md.

For every named conspicuity level (``wsl_bench.datasets.synthetic_generator.CONSPICUITY_LEVELS``), on the
test split the default run evaluates (the ``cpu`` preset: 240 images at 368×240, seed 0) and on the
first 60 test images at 736×480 (the resolution of the real measurements): the median lesion contrast
and percentile per class (``wsl_bench.datasets.conspicuity``) and the PxAP of the ``intensity`` baseline,
scored as the harness scores it. Run from the repository root after changing the generator:

    python reports/conspicuity.py          # rewrites the marked block in place
    python reports/conspicuity.py --check  # exit 1 when the block is out of date (nothing written)

The table sits between ``<!-- conspicuity-table -->`` and ``<!-- /conspicuity-table -->`` markers.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import torch

import wsl_bench
from wsl_bench.datasets.conspicuity import summarise
from wsl_bench.datasets.synthetic import SyntheticMammograms
from wsl_bench.datasets.synthetic_generator import CONSPICUITY_LEVELS, DEFAULT_CONSPICUITY_LEVEL
from wsl_bench.evaluation.metrics import PxAPMetric
from wsl_bench.evaluation.records import decode_counts
from wsl_bench.evaluation.scoring import score_image
from wsl_bench.presets import get_preset
from wsl_bench.saliency import CLASSES

ROOT = Path(__file__).resolve().parents[1]
TARGET = ROOT / "datasets" / "synthetic.md"
BLOCK = re.compile(r"(<!-- conspicuity-table -->\n)(.*?)(<!-- /conspicuity-table -->)", re.S)
REAL = "real NYU sample, 0_R-CC / 0_R-MLO (736×480, one benign mass)"


def intensity_pxap(dataset: SyntheticMammograms) -> dict[str, float]:
    """PxAP per class of the ``intensity`` baseline on every image of ``dataset``."""
    method = wsl_bench.create_method("intensity")
    pxap = {cls: PxAPMetric(1000) for cls in CLASSES}
    for sample_id in dataset.ids():
        sample = dataset.load(sample_id)
        output = method.predict(torch.from_numpy(sample.image)[None])
        fields = score_image(output.maps[0], output.map_range, sample, 1000).fields
        for cls in CLASSES:
            if fields["has_lesion"][cls]:
                pxap[cls].update_histograms(*(decode_counts(fields["hist"][cls][k]) for k in ("pos", "neg")))
    return {cls: metric.compute() for cls, metric in pxap.items()}


def rows() -> list[str]:
    preset = get_preset("cpu")
    settings = [(preset.image_size, preset.n_test), ((736, 480), 60)]
    lines = [
        "| level | contrast × | image | test images | contrast benign / malignant (sd) | percentile benign / "
        "malignant | `intensity` PxAP benign / malignant |",
        "|---|---|---|---|---|---|---|",
        f"| {REAL} | | 736×480 | 2 | 0.46 / 0.25 (benign only) | 0.73 / 0.72 (benign only) | 0.032 / 0.018 "
        "(benign only) |",
    ]
    for name, level in CONSPICUITY_LEVELS.items():
        for size, n in settings:
            dataset = SyntheticMammograms(split="test", n=n, image_size=size, seed=0, conspicuity=name, cache_mb=0)
            measured = summarise((item.image_u16, item.masks) for item in map(dataset.raw, dataset.ids()))
            pxap = intensity_pxap(dataset)
            label = f"**{name}** (default)" if name == DEFAULT_CONSPICUITY_LEVEL else name
            b, m = measured["benign"], measured["malignant"]
            lines.append(
                f"| {label} | {level.contrast:g} | {size[0]}×{size[1]} | {n} | {b.contrast:.2f} / {m.contrast:.2f} "
                f"({b.lesions} / {m.lesions} lesions) | {b.percentile:.2f} / {m.percentile:.2f} | "
                f"{pxap['benign']:.3f} / {pxap['malignant']:.3f} |"
            )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report whether the block is out of date")
    args = parser.parse_args(argv)
    text = TARGET.read_text(encoding="utf-8")
    if not BLOCK.search(text):
        raise SystemExit(f"{TARGET}: no <!-- conspicuity-table --> block")
    table = "\n".join(rows()) + "\n\n`python reports/conspicuity.py` (seed 0, test split).\n"
    updated = BLOCK.sub(lambda m: m.group(1) + table + m.group(3), text)
    if updated != text and not args.check:
        TARGET.write_text(updated, encoding="utf-8")
    if updated != text:
        print(f"{'out of date' if args.check else 'updated'}: {TARGET.relative_to(ROOT)}")
    return 1 if args.check and updated != text else 0


if __name__ == "__main__":
    sys.exit(main())
