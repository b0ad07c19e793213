"""Low-level checkpoint file handling: atomic writes and safe reads.

Every ``.pt`` file the suite writes goes through :func:`atomic_torch_save` (a kill during the write
leaves the previous file intact) and every file it reads through :func:`load_checkpoint_file`,
which never executes code from the file (``weights_only=True``).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` to a temporary file in the same folder, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
