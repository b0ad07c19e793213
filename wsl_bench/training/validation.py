"""Validation PxAP of every map a method's training shapes, not only the map it returns.

A staged recipe trains parts of a model that the returned map hides: GLAM's global stage trains the
coarse global map that chooses its patch, its local stage the local map inside that patch. Whether
each part learned to localise is what tells a recipe that works from one whose later stage fixes an
earlier one's failure (or does not), so the trainer follows each map the method names
(:meth:`wsl_bench.saliency.TrainableMethod.training_maps`) on the validation split, scored exactly as
the harness scores a run (:func:`wsl_bench.evaluation.scoring.score_image`, histograms pooled by
:class:`wsl_bench.evaluation.metrics.PxAPMetric`). Its columns are ``val_pxap_<map>_<class>``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from wsl_bench.data import Sample
from wsl_bench.evaluation.metrics import PxAPMetric
from wsl_bench.evaluation.records import decode_counts
from wsl_bench.evaluation.scoring import score_image
from wsl_bench.saliency import CLASSES, TrainingMap


def crop_sample(sample: Sample, row: int, col: int, size: tuple[int, int]) -> Sample:
    """The ``size`` window of ``sample`` whose upper-left corner is ``(row, col)`` (image and masks)."""
    rows, cols = slice(row, row + size[0]), slice(col, col + size[1])
    masks = {name: None if mask is None else mask[rows, cols] for name, mask in sample.masks.items()}
    return Sample(image=sample.image[:, rows, cols], masks=masks, labels=dict(sample.labels), meta=dict(sample.meta))


class TrainingMapScores:
    """Pooled validation histograms of named training maps, per class.

    An image counts for a class when it holds a lesion of that class (as for the output map); a map of
    patches (:attr:`TrainingMap.patch_locations`) contributes only the pixels inside the image's
    patches, so a patch that misses the lesion adds false positives and no true ones.

    Args:
        bins: histogram bins (the trainer's ``val_bins``).
    """

    def __init__(self, bins: int) -> None:
        self.bins = bins
        self.metrics: dict[str, dict[str, PxAPMetric]] = {}

    def update(self, maps: dict[str, TrainingMap], samples: Sequence[Sample]) -> None:
        """Add one batch: ``maps`` from ``method.training_maps(output)`` of the ``samples`` (length N)."""
        for name, training_map in maps.items():
            metrics = self.metrics.setdefault(name, {c: PxAPMetric(self.bins) for c in CLASSES})
            for i, sample in enumerate(samples):
                for part, region in self._parts(training_map, i, sample):
                    fields = score_image(part.float(), training_map.map_range, region, self.bins).fields
                    for cls in CLASSES:
                        mask = sample.masks.get(cls)
                        if mask is None or not mask.any() or fields["hist"].get(cls) is None:
                            continue
                        metrics[cls].update_histograms(*(decode_counts(fields["hist"][cls][k]) for k in ("pos", "neg")))

    @staticmethod
    def _parts(training_map: TrainingMap, index: int, sample: Sample) -> list[tuple[torch.Tensor, Sample]]:
        """``(C×h×w map, the sample or the window it covers)`` pairs of image ``index``."""
        if training_map.patch_locations is None:
            return [(training_map.maps[index], sample)]
        assert training_map.patch_size is not None, "a map of patches needs its patch_size"
        locations = training_map.patch_locations[index]
        k = locations.shape[0]
        return [
            (training_map.maps[index * k + j], crop_sample(sample, int(locations[j, 0]), int(locations[j, 1]),
                                                           training_map.patch_size))
            for j in range(k)
        ]

    def row(self) -> dict[str, float]:
        """``val_pxap_<map>_<class>`` for every map seen (NaN without a lesion pixel)."""
        return {f"val_pxap_{name}_{cls}": metric.compute()
                for name, per_class in self.metrics.items() for cls, metric in per_class.items()}


__all__ = ["TrainingMapScores", "crop_sample"]
