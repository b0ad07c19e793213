"""Shared fixtures: an isolated checkpoint cache, a tiny in-memory dataset for harness tests, and a finished
run of it made once per module for tests that damage a copy."""

from __future__ import annotations

import os

# OpenMP threads that spin while waiting steal the CPU from other processes of a test (torchrun
# workers, killed-and-resumed runs); passive waiting keeps shared 2-core machines responsive.
# Set before torch is first imported, which the imports below do.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

from wsl_bench.data import MammogramDataset, Sample, SampleError, standardise
from wsl_bench.registry import DATASETS


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory, monkeypatch):
    """Every test trains into its own cache: no test reuses another's (or the user's) checkpoints."""
    cache = tmp_path_factory.mktemp("wsl_cache")
    monkeypatch.setenv("WSL_BENCH_CACHE", str(cache))
    return cache


class ToyDataset(MammogramDataset):
    """Blob "lesions" on a smooth background: benign blobs are round, malignant ones bright squares.

    ``corrupt`` lists ids whose loading fails like an unreadable file; ``nan`` ids load an image
    full of NaN (caught by Sample.validate).
    """

    name: ClassVar[str] = "toy"
    description: ClassVar[str] = "test-only toy dataset"
    needs_root: ClassVar[bool] = False
    counts: ClassVar[dict[str, int]] = {"train": 24, "val": 8, "test": 6}
    corrupt: ClassVar[set[str]] = set()

    def __init__(self, root=None, split="test", image_size=(64, 48), n: int | None = None, seed: int = 0) -> None:
        super().__init__(root, split, image_size or (64, 48))
        self.n = n if n is not None else self.counts[split]
        self.seed = seed

    @classmethod
    def options_for(cls, preset: Any, split: str, seed: int) -> dict[str, Any]:
        return {"seed": seed}

    def ids(self) -> list[str]:
        return [f"toy-{self.split}-{i:03d}" for i in range(self.n)]

    def load(self, sample_id: str) -> Sample:
        if sample_id in self.corrupt:
            raise SampleError(f"/fake/{sample_id}.png: truncated or corrupt PNG", sample_id, f"/fake/{sample_id}.png")
        index = int(sample_id.rsplit("-", 1)[1])
        rng = np.random.default_rng([self.seed, ("train", "val", "test").index(self.split), index])
        h, w = self.image_size
        image = rng.normal(0, 0.2, (h, w)).astype(np.float32) + np.linspace(0, 1, w)[None, :]
        masks = {}
        labels = {}
        rows, cols = np.mgrid[0:h, 0:w]
        for c, cls in enumerate(("benign", "malignant")):
            present = bool((index >> c) & 1)
            mask = np.zeros((h, w), bool)
            if present:
                r, q = rng.integers(8, h - 8), rng.integers(8, w - 8)
                if cls == "benign":
                    mask = (rows - r) ** 2 + (cols - q) ** 2 <= 16
                else:
                    mask = (abs(rows - r) <= 3) & (abs(cols - q) <= 3)
                image[mask] += 2.0
            masks[cls], labels[cls] = mask, int(present)
        return Sample(standardise(image)[None], masks, labels, {"id": sample_id, "source": f"/fake/{sample_id}.png"})


@pytest.fixture
def toy_dataset():
    """Register ``toy`` for the duration of a test; the split sizes a test sets are restored after it."""
    DATASETS.register("toy", ToyDataset)
    ToyDataset.corrupt = set()
    counts = dict(ToyDataset.counts)
    yield ToyDataset
    DATASETS.unregister("toy")
    ToyDataset.corrupt = set()
    ToyDataset.counts = counts


def finished_toy_run(tmp_path_factory, run_argv: list[str]) -> Path:
    """One finished ``wsl-bench run RUN_ARGV --out OUT`` of the ``toy`` dataset, made with a checkpoint cache
    of its own (for a module-scoped fixture, which the per-test cache fixture cannot serve); returns OUT."""
    from wsl_bench.cli import main

    out = tmp_path_factory.mktemp("reference") / "run"
    saved = os.environ.get("WSL_BENCH_CACHE")
    os.environ["WSL_BENCH_CACHE"] = str(tmp_path_factory.mktemp("reference_cache"))
    DATASETS.register("toy", ToyDataset)
    try:
        try:
            code = main(["run", *run_argv, "--out", str(out)])
        except SystemExit as exit_info:
            code = exit_info.code
        assert code == 0, f"the reference run exited {code}"
    finally:
        DATASETS.unregister("toy")
        if saved is None:
            os.environ.pop("WSL_BENCH_CACHE")
        else:
            os.environ["WSL_BENCH_CACHE"] = saved
    return out
