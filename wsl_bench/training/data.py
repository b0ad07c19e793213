"""Training data for the trainer: labelled images, validation samples, epoch orders, subsets.

Only image-level labels leave :class:`LabelledImages`; masks are read by :class:`ValidationImages`
(validation Dice/PxAP) and by :class:`MaskedImages`, which the trainer builds only for a method that
trains with masks (``TrainableMethod.mask_split``), on the one split it names. Every order is a pure
function of ``(seed, epoch)`` so a resumed or distributed run draws the same data as an uninterrupted
single-process one.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from wsl_bench.data import DatasetError, MammogramDataset, Sample, SampleError
from wsl_bench.saliency import CLASSES
from wsl_bench.training.augment import Augmentation, sample_rng

log = logging.getLogger(__name__)


class FirstImages(MammogramDataset):
    """The first ``n`` images of another dataset's split (quick runs, CI); same samples, fewer ids."""

    def __init__(self, dataset: MammogramDataset, n: int) -> None:
        if n < 1:
            raise ValueError(f"the number of images must be at least 1, got {n}")
        self.inner, self.n = dataset, n
        self.name = dataset.name
        self.root, self.split, self.image_size = dataset.root, dataset.split, dataset.image_size

    def ids(self) -> list[str]:
        return self.inner.ids()[: self.n]

    def load(self, sample_id: str) -> Sample:
        return self.inner.load(sample_id)

    def describe(self) -> dict[str, Any]:
        return {**self.inner.describe(), "first": self.n}


def _split_ids(dataset: MammogramDataset, role: str) -> list[str]:
    ids = dataset.ids()
    if not ids:
        raise DatasetError(f"dataset {dataset.name!r} split {dataset.split!r} is empty: no images to {role}")
    return ids


class LabelledImages:
    """Training images and label vectors of a dataset split, loaded lazily and cached in memory.

    Samples that fail to load (:class:`SampleError`: an unreadable file, or a malformed per-image
    metadata cell such as a folder dataset's ``lesion_areas``, named with its file and row) are
    reported once and left out, and listed in the training result's ``skipped_samples``: training
    never dies on one image. A sample without an image-level label for every class stops training
    with a :class:`DatasetError`.
    """

    def __init__(self, dataset: MammogramDataset, max_cached: int) -> None:
        self.dataset = dataset
        self.ids = _split_ids(dataset, "train on")
        self.max_cached = max_cached
        self._cache: dict[str, tuple[torch.Tensor, ...]] = {}
        self.failed: dict[str, str] = {}

    def get(self, sample_id: str) -> tuple[torch.Tensor, ...] | None:
        """``(1×H×W image, C labels)`` (:class:`MaskedImages`: and ``C×H×W`` masks) or ``None`` when the
        sample cannot be loaded."""
        if sample_id in self._cache:
            return self._cache[sample_id]
        if sample_id in self.failed:
            return None
        try:
            sample = self.dataset.get(sample_id)
        except SampleError as exc:
            log.warning("training skips %s: %s", sample_id, exc)
            self.failed[sample_id] = str(exc)
            return None
        labels = sample.label_vector()
        if np.isnan(labels).any():
            raise DatasetError(
                f"sample {sample_id} ({sample.meta.get('source') or 'no file'}) of dataset {self.dataset.name!r} "
                f"split {self.dataset.split!r} lacks an image-level label for some class "
                f"({dict(zip(CLASSES, labels.tolist(), strict=True))}); weakly-supervised training needs a "
                "0/1 label for every class"
            )
        item = self._item(sample, labels)
        if len(self._cache) < self.max_cached:
            self._cache[sample_id] = item
        return item

    def _item(self, sample: Sample, labels: np.ndarray) -> tuple[torch.Tensor, ...]:
        """What is kept of a loaded sample: ``(1×H×W image, C labels)``; the masks are not read."""
        return torch.from_numpy(sample.image), torch.from_numpy(labels)

    def batch(
        self, items: list[tuple[int, int]], seed: int, epoch: int, augment: Augmentation | None
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Stack ``(dataset index, position in the epoch)`` items, augmenting each from its own generator.

        Returns:
            ``(N×1×H×W images, N×C labels)`` of the loadable items, or ``None`` if none loads.
        """
        images, labels = [], []
        for index, position in items:
            item = self.get(self.ids[index])
            if item is None:
                continue
            image = item[0] if augment is None else augment(item[0], sample_rng(seed, epoch, position))
            images.append(image)
            labels.append(item[1])
        if not images:
            return None
        return torch.stack(images), torch.stack(labels)

    def label_matrix(self) -> np.ndarray:
        """``n×C`` labels of the split in id order (NaN rows for samples that fail to load)."""
        rows = []
        for sample_id in self.ids:
            item = self.get(sample_id)
            rows.append(item[1].numpy() if item is not None else np.full(len(CLASSES), np.nan, np.float32))
        return np.stack(rows)

    def positive_weights(self) -> torch.Tensor:
        """``C`` weights negatives/positives per class over the split (1 where a class has no positive)."""
        labels = self.label_matrix()
        labels = labels[~np.isnan(labels).any(axis=1)]
        positives = labels.sum(0)
        negatives = labels.shape[0] - positives
        weights = np.where(positives > 0, negatives / np.maximum(positives, 1), 1.0)
        return torch.tensor(weights, dtype=torch.float32)


UNANNOTATED = 255
"""A :class:`MaskedImages` mask value: the image has no annotation of that class (NaN in a batch)."""


class MaskedImages(LabelledImages):
    """The training images of a method that trains with masks (``TrainableMethod.mask_split``), with
    their labels and their masks, from the one split the method names.

    Masks are kept as ``C×H×W`` uint8 (1 on the lesion pixels of a class, 0 elsewhere,
    :data:`UNANNOTATED` for a class the image leaves unannotated) and reach a batch as float, NaN where
    unannotated. A batch applies the method's augmentation to the image and to its masks with the same
    draws (each from its own copy of the image's generator), so only geometric augmentations that
    treat every channel alike (``VerticalFlip``) keep masks and image aligned.

    Raises:
        DatasetError: ``dataset`` is not the split ``split`` the method trains on.
    """

    def __init__(self, dataset: MammogramDataset, max_cached: int, split: str) -> None:
        if dataset.split != split:
            raise DatasetError(
                f"dataset {dataset.name!r}: a method trained with the masks of the {split!r} split was given the "
                f"{dataset.split!r} split"
            )
        super().__init__(dataset, max_cached)

    def _item(self, sample: Sample, labels: np.ndarray) -> tuple[torch.Tensor, ...]:
        masks = np.full((len(CLASSES), *sample.size), UNANNOTATED, dtype=np.uint8)
        for c, cls in enumerate(CLASSES):
            mask = sample.masks.get(cls)
            if mask is not None:
                masks[c] = np.asarray(mask, dtype=bool)
        return torch.from_numpy(sample.image), torch.from_numpy(labels), torch.from_numpy(masks)

    def batch(
        self, items: list[tuple[int, int]], seed: int, epoch: int, augment: Augmentation | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """Stack ``(dataset index, position in the epoch)`` items as :meth:`LabelledImages.batch` does.

        Returns:
            ``(N×1×H×W images, N×C labels, N×C×H×W float masks, NaN where unannotated)`` of the loadable
            items, or ``None`` if none loads.
        """
        images, labels, masks = [], [], []
        for index, position in items:
            item = self.get(self.ids[index])
            if item is None:
                continue
            image, label, mask = item
            mask = torch.where(mask == UNANNOTATED, torch.nan, mask.float())
            if augment is not None:
                image = augment(image, sample_rng(seed, epoch, position))
                mask = augment(mask, sample_rng(seed, epoch, position))
            images.append(image)
            labels.append(label)
            masks.append(mask)
        if not images:
            return None
        return torch.stack(images), torch.stack(labels), torch.stack(masks)


class ValidationImages:
    """Validation samples (images, labels and masks), kept in memory: the split is small."""

    def __init__(self, dataset: MammogramDataset) -> None:
        self.dataset = dataset
        self.ids = _split_ids(dataset, "validate on")
        self._samples: dict[str, Sample | None] = {}

    def samples(self, ids: list[str]) -> list[Sample]:
        out = []
        for sample_id in ids:
            if sample_id not in self._samples:
                try:
                    self._samples[sample_id] = self.dataset.get(sample_id)
                except SampleError as exc:
                    log.warning("validation skips %s: %s", sample_id, exc)
                    self._samples[sample_id] = None
            sample = self._samples[sample_id]
            if sample is not None and not np.isnan(sample.label_vector()).any():
                out.append(sample)
        return out


def epoch_order(n: int, seed: int, epoch: int, epoch_images: int | None = None) -> list[int]:
    """The data order of one epoch, fixed by ``(seed, epoch)``.

    Without ``epoch_images`` an epoch is one pass: a permutation of ``range(n)``. With it, an epoch is
    the next ``epoch_images`` positions of a stream of passes, each pass its own permutation of
    ``range(n)``: over a split of ``n = epochs · epoch_images`` distinct images (the ``cpu`` preset's
    data regime) every image is seen exactly once, and validation still comes every ``epoch_images``.
    """
    if epoch_images is None:
        return np.random.default_rng([seed, epoch]).permutation(n).tolist()
    if epoch_images < 1:
        raise ValueError(f"epoch_images must be at least 1, got {epoch_images}")
    start, stop = epoch * epoch_images, (epoch + 1) * epoch_images
    order: list[int] = []
    for stream_pass in range(start // n, (stop - 1) // n + 1):
        permutation = np.random.default_rng([seed, stream_pass, _STREAM_KEY]).permutation(n)
        order += permutation[max(start - stream_pass * n, 0) : min(stop - stream_pass * n, n)].tolist()
    return order


_STREAM_KEY = 2
"""Third element of the generator key of a pass of :func:`epoch_order`'s stream (``[seed, epoch]`` orders
whole-pass epochs, ``[seed, epoch, 1]`` the balanced sampler)."""


def balanced_order(labels: np.ndarray, seed: int, epoch: int, size: int | None = None) -> list[int]:
    """``size`` (default ``n``) indices drawn with replacement so that every label pattern present is
    equally likely.

    Args:
        labels: ``n×C`` {0, 1} labels (rows with NaN, unloadable samples, are never drawn).
        size: images in the epoch (``TrainConfig.epoch_images``; default the split's ``n``).

    Returns:
        the epoch's order, fixed by ``(seed, epoch)``.
    """
    valid = ~np.isnan(labels).any(axis=1)
    if not valid.any():
        raise DatasetError("no training image could be loaded: nothing to sample")
    patterns = (np.nan_to_num(labels) * (2 ** np.arange(labels.shape[1]))).sum(axis=1).astype(int)
    counts = np.bincount(patterns[valid], minlength=2 ** labels.shape[1])
    weights = np.where(valid, 1.0 / np.maximum(counts[patterns], 1), 0.0)
    rng = np.random.default_rng([seed, epoch, 1])
    return rng.choice(len(labels), size=size or len(labels), replace=True, p=weights / weights.sum()).tolist()
