"""Helpers shared by the GLAM, GMIC and training tests: seeded inputs, non-trivial BatchNorm, and the
published models' reference files (../shared/reference, outside the repository: reference outputs of the
published code, not distributed; docs/published_reference.md)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

REFERENCE_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "reference"


def random_images(n: int, size: tuple[int, int], seed: int = 0) -> torch.Tensor:
    """``n×1×H×W`` standard-normal images, the same for the same seed."""
    return torch.randn(n, 1, *size, generator=torch.Generator().manual_seed(seed))


def randomise_batchnorm(module: torch.nn.Module, seed: int = 0) -> None:
    """Non-trivial BatchNorm statistics and affine parameters, so folding them is really tested."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.copy_(0.5 + torch.rand(m.num_features, generator=gen))
                m.bias.copy_(0.2 * torch.randn(m.num_features, generator=gen))
                m.running_mean.copy_(0.2 * torch.randn(m.num_features, generator=gen))
                m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=gen))


def skip_reason(model: str) -> str:
    """Why a fidelity test skips, and what a reader without the reference files can run instead."""
    return (f"needs the reference outputs of the published {model} code in {REFERENCE_DIR}, which are not "
            f"distributed (docs/published_reference.md); check against your own clone of the published code "
            f"instead: wsl-bench verify {model.lower()} --published PATH")


def skip_without_reference(model: str, *files: Path) -> pytest.MarkDecorator:
    """Skip a module's tests, with :func:`skip_reason`, where the reference files are absent."""
    return pytest.mark.skipif(not all(f.is_file() for f in files), reason=skip_reason(model))


def load_npz(path: Path) -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` file, loaded (no pickles)."""
    with np.load(path) as data:
        return {k: data[k] for k in data.files}
