"""Low-level checkpoint file handling: atomic writes and safe reads.

Every ``.pt`` file the suite writes goes through :func:`atomic_torch_save` (a kill during the write
leaves the previous file intact) and every file it reads through :func:`load_checkpoint_file`,
which never executes code from the file (``weights_only=True``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .atomic_io import atomic_write


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` to a temporary file in the same folder, then rename over ``path``
    (:func:`wsl_bench.atomic_io.atomic_write`: fsync-ed, the temporary file removed on error)."""
    with atomic_write(path, "wb") as handle:
        torch.save(obj, handle)


def load_checkpoint_file(path: str | Path, map_location: str | torch.device = "cpu") -> Any:
    """Read a checkpoint with ``weights_only=True``.

    Raises:
        FileNotFoundError: naming the missing file.
        ValueError: the file is not a readable checkpoint or holds objects that are not plain
            tensors and containers (an unsafe pickle), naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise ValueError(f"{path}: cannot load as a safe checkpoint (weights_only=True): {exc}") from exc
