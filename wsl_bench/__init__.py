"""wsl-bench: weakly-supervised localization benchmark for high-resolution mammograms.

The front doors::

    import wsl_bench
    method = wsl_bench.create_method("glam", device="cpu")
    dataset = wsl_bench.create_dataset("synthetic", split="test", image_size=(736, 480))
    wsl_bench.list_methods("gmic*")
"""

from __future__ import annotations

from typing import Any

from .data import MammogramDataset, Sample
from .registry import DATASETS, METHODS
from .saliency import CLASSES, SaliencyMethod, SaliencyOutput, TrainableMethod

__version__ = "0.1.0"

_builtins_loaded = False


def _load_builtins() -> None:
    """Import the built-in plugin packages once (they register themselves)."""
    global _builtins_loaded
    if not _builtins_loaded:
        _builtins_loaded = True
        from . import datasets, methods  # noqa: F401


def split_method_name(name: str) -> tuple[str, dict[str, Any]]:
    """``"gradcam@gmic"`` → ``("gradcam", {"classifier": "gmic"})``: the ``explainer@classifier``
    spelling of a post-hoc explainer applied to a chosen classifier; other names pass through."""
    if "@" in name:
        base, classifier = name.split("@", 1)
        return base, {"classifier": classifier}
    return name, {}


def create_method(name: str, **options: Any) -> SaliencyMethod:
    """Instantiate the method registered as ``name`` with ``options`` (device, seed, image_size, ...).

    ``explainer@classifier`` names (``gradcam@gmic``) set the explainer's ``classifier`` option.
    The instance's ``name`` is the full name asked for (records and reports use it).

    Raises:
        wsl_bench.registry.UnknownNameError: listing the known method names.
    """
    _load_builtins()
    base, implied = split_method_name(name)
    method = METHODS.get(base)(**{**implied, **options})
    method.name = name
    return method


def create_dataset(name: str, **options: Any) -> MammogramDataset:
    """Instantiate the dataset registered as ``name`` (root, split, image_size, ...)."""
    _load_builtins()
    return DATASETS.get(name)(**options)


def list_methods(pattern: str = "*") -> list[str]:
    """Registered method names matching an ``fnmatch`` pattern."""
    _load_builtins()
    return METHODS.list(pattern)


def list_datasets(pattern: str = "*") -> list[str]:
    """Registered dataset names matching an ``fnmatch`` pattern."""
    _load_builtins()
    return DATASETS.list(pattern)


__all__ = [
    "CLASSES",
    "DATASETS",
    "METHODS",
    "MammogramDataset",
    "SaliencyMethod",
    "SaliencyOutput",
    "Sample",
    "TrainableMethod",
    "create_dataset",
    "create_method",
    "list_datasets",
    "list_methods",
]
