"""Reading a split's images ahead of the model, in worker processes.

The harness asks for the images of a method's pending ids in order, a batch at a time
(:func:`load_batches`). Images already in the split's :class:`SampleCache` come from there; the
others are read, decoded and preprocessed by ``torch.utils.data.DataLoader`` workers while the
model works on the previous batch, so decoding a 16-bit PNG or a DICOM (about 140 ms for a
2944×1920 folder-format image and its masks) does not wait in the main process. Each worker also
finds the lesion pixels of every mask (:meth:`Sample.lesion_pixels`), which scoring needs, and hands
its arrays over as tensors: those travel through shared memory, numpy arrays would be pickled.

Order, determinism and resume are unchanged: batches hold the ids in the order asked, records are
keyed by image id, and a worker that fails on one image returns that image's error
(:class:`Loaded`), never an exception that would end the loader.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from wsl_bench.data import MammogramDataset, Sample, SampleError
from wsl_bench.saliency import CLASSES


@dataclass
class Loaded:
    """One image id with its sample, or the error that stops it from loading."""

    sample_id: str
    sample: Sample | None = None
    error: SampleError | None = None


def default_workers(device: str | torch.device = "cpu") -> int:
    """Loader processes when the user sets none.

    On a GPU the model's CPU threads mostly wait, so every core but the main process's reads
    images (at most 8). On the CPU, the cores the model's threads leave, but at least one where
    there are two cores or more: a model does not keep every core busy all the time (memory-bound
    layers, Python between operators), and one worker decoding ahead paid for itself even on the
    2-core machine this suite was tuned on (GMIC bf16 at 2944×1920 on 16-bit PNGs: 493 ms per image
    end to end with no worker, 323 ms with one; predict alone 260–290 ms either way).
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if torch.device(device).type == "cuda":
        return max(1, min(8, cores - 1))
    return max(1 if cores >= 2 else 0, cores - torch.get_num_threads())


def load_one(dataset: MammogramDataset, sample_id: str) -> Loaded:
    """``dataset.get(sample_id)`` with its lesion pixels found, or the error that stops it, named."""
    try:
        sample = dataset.get(sample_id)
        for cls in CLASSES:
            sample.lesion_pixels(cls)
    except SampleError as exc:
        return Loaded(sample_id, error=exc)
    except Exception as exc:  # any loader bug becomes this image's failure, named
        return Loaded(sample_id, error=SampleError(f"{sample_id}: {type(exc).__name__}: {exc}", sample_id))
    return Loaded(sample_id, sample)


class _Shared:
    """A sample's arrays as tensors for the trip from a worker (shared memory, not a pickled copy)."""

    def __init__(self, loaded: Loaded) -> None:
        self.loaded = loaded
        sample = loaded.sample
        self.arrays: dict[str, torch.Tensor] = {}
        if sample is not None:
            self.arrays["image"] = torch.from_numpy(np.ascontiguousarray(sample.image))
            for cls, mask in sample.masks.items():
                if mask is not None:
                    self.arrays[f"mask:{cls}"] = torch.from_numpy(np.ascontiguousarray(mask))
            for cls, pixels in sample._lesion_pixels.items():
                self.arrays[f"lesion:{cls}"] = torch.from_numpy(pixels)
            # the arrays travel in ``arrays``; the sample keeps only its small fields
            loaded.sample = Sample(np.empty(0, np.float32), dict.fromkeys(sample.masks), sample.labels, sample.meta)

    def unpack(self) -> Loaded:
        sample = self.loaded.sample
        if sample is not None:
            sample.image = self.arrays["image"].numpy()
            for key, tensor in self.arrays.items():
                kind, _, cls = key.partition(":")
                if kind == "mask":
                    sample.masks[cls] = tensor.numpy()
                elif kind == "lesion":
                    sample._lesion_pixels[cls] = tensor.numpy()
        return self.loaded


class _PendingImages(Dataset):
    """The images of ``ids`` in order, each loaded by :func:`load_one` (in a worker process)."""

    def __init__(self, dataset: MammogramDataset, ids: list[str]) -> None:
        self.dataset = dataset
        self.ids = ids

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> _Shared:
        return _Shared(load_one(self.dataset, self.ids[index]))


def _one(item: Any) -> Any:
    return item


def _worker_sources(dataset: MammogramDataset, ids: list[str], workers: int, prefetch: int) -> Iterator[Loaded]:
    """The images of ``ids``, in order, read ``workers`` processes ahead (in this process when 0)."""
    if workers <= 0 or len(ids) <= 1:
        for sample_id in ids:
            yield load_one(dataset, sample_id)
        return
    loader = DataLoader(_PendingImages(dataset, ids), batch_size=None, shuffle=False,
                        num_workers=min(workers, len(ids)), collate_fn=_one, prefetch_factor=prefetch)
    for shared in loader:
        yield shared.unpack()


class SampleCache:
    """Loaded samples of one split, kept while they fit in a byte budget, so every method sees
    identical images without decoding them once per method. An image that fails to load is
    remembered with its error (and fails alike for every method)."""

    def __init__(self, dataset: MammogramDataset, budget_bytes: int = 2 * 2**30) -> None:
        self.dataset = dataset
        self.budget = budget_bytes
        self.used = 0
        self._samples: dict[str, Sample | SampleError] = {}

    def has(self, sample_id: str) -> bool:
        return sample_id in self._samples

    def loaded(self, sample_id: str) -> Loaded:
        """A cached image (:meth:`has` it) as the loader hands images over."""
        cached = self._samples[sample_id]
        if isinstance(cached, SampleError):
            return Loaded(sample_id, error=cached)
        return Loaded(sample_id, cached)

    def add(self, loaded: Loaded) -> None:
        """Keep an image just loaded (or its error), within the byte budget."""
        if loaded.error is not None:
            self._samples[loaded.sample_id] = loaded.error
            return
        sample = loaded.sample
        size = sample.image.nbytes + sum(m.nbytes for m in sample.masks.values() if m is not None)
        if self.used + size <= self.budget:
            self._samples[loaded.sample_id] = sample
            self.used += size

    def get(self, sample_id: str) -> Sample:
        """The sample, loaded now if it is not kept.

        Raises:
            SampleError: the image cannot be loaded (any loader error becomes one, naming the image).
        """
        loaded = self.loaded(sample_id) if self.has(sample_id) else load_one(self.dataset, sample_id)
        if not self.has(sample_id):
            self.add(loaded)
        if loaded.error is not None:
            raise loaded.error
        return loaded.sample


def load_batches(cache: SampleCache, ids: list[str], batch_size: int, workers: int = 0,
                 prefetch: int = 2) -> Iterator[list[Loaded]]:
    """The images of ``ids`` in order, ``batch_size`` at a time, from ``cache`` or read ahead.

    Args:
        cache: the split's loaded samples; images read here are added to it (within its budget).
        ids: the image ids wanted, in the order wanted.
        batch_size: images per yielded batch (the last may hold fewer).
        workers: loader processes (0: read in this process, when asked for).
        prefetch: images each worker reads ahead.
    """
    missing = [i for i in ids if not cache.has(i)]
    fresh = _worker_sources(cache.dataset, missing, workers, prefetch)
    batch: list[Loaded] = []
    for sample_id in ids:
        if cache.has(sample_id):
            batch.append(cache.loaded(sample_id))
        else:
            loaded = next(fresh)
            assert loaded.sample_id == sample_id, "the loader returns images in the order asked"
            cache.add(loaded)
            batch.append(loaded)
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch
