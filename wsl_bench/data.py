"""Samples, the dataset base class and shared image helpers.

A dataset yields :class:`Sample` objects: one preprocessed, standardised image with its per-class
masks and image-level labels. Loading is lazy and per sample, so one unreadable file fails one
sample (``SampleError`` naming the file) and never the whole run.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from wsl_bench.saliency import CLASSES

SPLITS: tuple[str, ...] = ("train", "val", "test")


class DatasetError(ValueError):
    """A dataset-level problem (missing root, bad index file, empty split). The message names the file."""


class SampleError(ValueError):
    """One sample cannot be loaded (corrupt image, mask of another size, ...).

    Attributes:
        sample_id: the sample concerned.
        path: the file at fault, if any.
    """

    def __init__(self, message: str, sample_id: str = "", path: str | None = None) -> None:
        super().__init__(message)
        self.sample_id = sample_id
        self.path = path


@dataclass
class Sample:
    """One preprocessed image with its annotations.

    Attributes:
        image: ``1×H×W`` float32, standardised per image (mean 0, std 1).
        masks: class name → ``H×W`` bool mask, or ``None`` where that class is not annotated for
            this image (an all-false mask means "annotated, no lesion of this class").
        labels: class name → 0/1 image-level label (a class may be absent when unlabelled).
        meta: ``id`` (unique in the dataset) and anything else known: ``view``, ``laterality``,
            ``lesion_areas`` (class → list of lesion areas in pixels), ``source`` path.
    """

    image: np.ndarray
    masks: dict[str, np.ndarray | None]
    labels: dict[str, int]
    meta: dict[str, Any] = field(default_factory=dict)
    _lesion_pixels: dict[str, np.ndarray] = field(default_factory=dict, init=False, repr=False, compare=False)

    @property
    def id(self) -> str:
        return str(self.meta["id"])

    @property
    def size(self) -> tuple[int, int]:
        return int(self.image.shape[-2]), int(self.image.shape[-1])

    def validate(self) -> None:
        """Check the image and masks agree.

        Raises:
            SampleError: naming the sample (and its source file) and the mismatch.
        """
        where = self.meta.get("source") or self.meta.get("id", "?")
        if self.image.ndim != 3 or self.image.shape[0] != 1:
            raise SampleError(f"{where}: image must be 1×H×W, got {self.image.shape}", self.id, self.meta.get("source"))
        if not np.isfinite(self.image).all():
            raise SampleError(f"{where}: image contains NaN or infinite values", self.id, self.meta.get("source"))
        for cls, mask in self.masks.items():
            if cls not in CLASSES:
                raise SampleError(f"{where}: unknown class {cls!r} (known: {CLASSES})", self.id)
            if mask is not None and mask.shape != self.size:
                raise SampleError(
                    f"{where}: {cls} mask is {mask.shape[0]}×{mask.shape[1]} but the image is "
                    f"{self.size[0]}×{self.size[1]}",
                    self.id,
                    self.meta.get("source"),
                )
        for cls, label in self.labels.items():
            if cls not in CLASSES or label not in (0, 1):
                raise SampleError(f"{where}: label {cls}={label!r} is outside the known values", self.id)

    def lesion_pixels(self, cls: str) -> np.ndarray | None:
        """Flat row-major indices (int64, ascending) of the ``cls`` mask's lesion pixels, or ``None``
        where the class is not annotated.

        Computed once per sample and kept: every method's scoring reads them, and a loader worker
        can compute them before the sample reaches the main process (a full-size mask takes a few
        milliseconds to scan; the lesion is a fraction of a percent of it).

        Raises:
            ValueError: a mask that is neither boolean nor 0/1.
        """
        mask = self.masks.get(cls)
        if mask is None:
            return None
        found = self._lesion_pixels.get(cls)
        if found is None:
            m = np.asarray(mask)
            if m.dtype != np.bool_:
                if m.dtype.kind not in "iuf" or np.any((m != 0) & (m != 1)):
                    raise ValueError(f"{cls} mask must be boolean (or hold only 0 and 1), got dtype {m.dtype}")
            found = self._lesion_pixels[cls] = np.flatnonzero(m).astype(np.int64, copy=False)
        return found

    def label_vector(self) -> np.ndarray:
        """``C`` float32 labels in ``CLASSES`` order; NaN where a class is unlabelled."""
        return np.array([self.labels.get(c, np.nan) for c in CLASSES], dtype=np.float32)


class MammogramDataset(ABC):
    """Base class of dataset plugins.

    Subclasses implement :meth:`ids` and :meth:`load`; everything else (iteration, length,
    validation) is shared. Constructed as ``Dataset(root=..., split=..., image_size=..., **options)``.

    Class attributes:
        name: registered name.
        description: one line for ``wsl-bench list``.
        needs_root: whether ``--data-root`` is required.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    needs_root: ClassVar[bool] = True

    def __init__(self, root: str | None = None, split: str = "test", image_size: tuple[int, int] | None = None) -> None:
        if split not in SPLITS:
            raise DatasetError(f"unknown split {split!r}; known splits: {', '.join(SPLITS)}")
        if self.needs_root and root is None:
            raise DatasetError(f"dataset {self.name!r} needs --data-root pointing at its files")
        self.root = root
        self.split = split
        self.image_size = tuple(image_size) if image_size is not None else None

    @abstractmethod
    def ids(self) -> list[str]:
        """Sample ids of the split, in a fixed order."""

    @abstractmethod
    def load(self, sample_id: str) -> Sample:
        """Load and preprocess one sample.

        Raises:
            SampleError: the sample cannot be loaded; the message names the file and the problem.
        """

    def get(self, sample_id: str) -> Sample:
        """:meth:`load` followed by :meth:`Sample.validate`."""
        sample = self.load(sample_id)
        sample.validate()
        return sample

    def __len__(self) -> int:
        return len(self.ids())

    def __iter__(self) -> Iterator[Sample]:
        for sample_id in self.ids():
            yield self.get(sample_id)

    @classmethod
    def options_for(cls, preset: Any, split: str, seed: int) -> dict[str, Any]:
        """Extra constructor options a run preset implies for ``split`` (e.g. the synthetic set's
        image count and seed). Datasets read from disk need none."""
        return {}

    def describe(self) -> dict[str, Any]:
        """What identifies this dataset's content for manifests and cache keys."""
        return {"name": self.name, "root": self.root, "split": self.split, "image_size": self.image_size}


def standardise(image: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Per-image standardisation to mean 0, std 1 (the GMIC/GLAM input convention).

    Args:
        image: any shape, any numeric dtype.

    Returns:
        float32 array of the same shape; a constant image becomes all zeros.
    """
    image = image.astype(np.float32, copy=False)
    return ((image - image.mean()) / max(float(image.std()), eps)).astype(np.float32)
