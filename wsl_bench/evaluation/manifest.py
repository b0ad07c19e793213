"""Run manifests: what produced a run folder, so its numbers can be traced and reproduced."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch

MANIFEST_SCHEMA = 1
_PACKAGES = ("wsl-bench", "torch", "torchvision", "numpy", "scipy", "pandas", "matplotlib", "captum", "grad-cam")


def config_hash(config: dict[str, Any]) -> str:
    """Stable short hash of a JSON-serialisable configuration."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in _PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def plugin_packages() -> dict[str, dict[str, dict[str, Any]]]:
    """Every installed plugin, methods and datasets, by registered name: its package name, version,
    entry point and whether it loaded (``wsl_bench.registry.Registry.plugins``). Recorded whether or not
    the run uses it: a plugin may register more than its entry point names, so its presence is part
    of what produced the run."""
    from wsl_bench.registry import DATASETS, METHODS, load_builtins

    load_builtins()  # built-in names first: a plugin cannot take one of them
    return {"methods": METHODS.plugins(), "datasets": DATASETS.plugins()}


def git_state() -> dict[str, Any]:
    """Commit and dirty flag of the checkout the package is imported from (``None`` outside git)."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here, capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()
        return {"commit": commit, "dirty": bool(dirty)}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def device_info(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {"type": device.type, "torch_threads": torch.get_num_threads()}
    if device.type == "cuda":
        info["name"] = torch.cuda.get_device_name(device)
    else:
        info["name"] = platform.processor() or platform.machine()
        info["cpu_count"] = os.cpu_count()
    return info


def write_json_atomic(path: str | Path, data: Any) -> None:
    """Write JSON to a temporary file in the same folder, then rename it over ``path``
    (:func:`wsl_bench.atomic_io.write_json_atomic`: fsync-ed, the temporary file removed on error)."""
    from wsl_bench.atomic_io import write_json_atomic as _write_json_atomic

    _write_json_atomic(path, data)


class DamagedFileError(ValueError):
    """A JSON file of a run folder or training folder that cannot be parsed (truncated, edited by
    hand, not UTF-8); the message names it."""


def read_json(path: str | Path) -> Any:
    """The JSON content of ``path`` (a regular file: a FIFO would block).

    Raises:
        DamagedFileError: not valid JSON or not UTF-8, naming the file.
        OSError: the file cannot be read (FileNotFoundError when it is missing).
    """
    from wsl_bench.regular_files import open_regular

    with open_regular(path) as handle:
        data = handle.read()
    try:
        return json.loads(data.decode("utf-8"))
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise DamagedFileError(f"{path}: damaged or truncated, not valid JSON ({exc}); restore it, or remove the "
                               "folder's run (--overwrite for a run folder)") from None
