"""wsl-bench: weakly-supervised localization benchmark for high-resolution mammograms.

The front doors::

    import wsl_bench
    method = wsl_bench.create_method("glam", device="cpu")
    dataset = wsl_bench.create_dataset("synthetic", split="test", image_size=(736, 480))
    wsl_bench.list_methods("gmic*")
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from wsl_bench._version import __version__

if TYPE_CHECKING:
    from wsl_bench.data import MammogramDataset, Sample
    from wsl_bench.registry import (
        DATASETS,
        METHODS,
        create_dataset,
        create_method,
        list_datasets,
        list_methods,
        load_builtins,
        split_method_name,
    )
    from wsl_bench.saliency import CLASSES, ExplainedClassifier, SaliencyMethod, SaliencyOutput, TrainableMethod

_FROM_DATA = ("MammogramDataset", "Sample")
_FROM_SALIENCY = ("CLASSES", "ExplainedClassifier", "SaliencyMethod", "SaliencyOutput", "TrainableMethod")


def __getattr__(name: str) -> Any:
    """The front doors, imported on first use: they import torch (2-3 s), which ``wsl-bench --help``
    and the command line's usage errors, importing this package first, must not wait for."""
    if name in _FROM_DATA:
        from wsl_bench import data as module
    elif name in _FROM_SALIENCY:
        from wsl_bench import saliency as module
    elif name in __all__ and name != "__version__":
        from wsl_bench import registry as module
    else:
        raise AttributeError(f"module 'wsl_bench' has no attribute {name!r}")
    value = getattr(module, name)
    globals()[name] = value  # later look-ups skip this function
    return value


__all__ = [
    "__version__",
    "CLASSES",
    "DATASETS",
    "METHODS",
    "ExplainedClassifier",
    "MammogramDataset",
    "SaliencyMethod",
    "SaliencyOutput",
    "Sample",
    "TrainableMethod",
    "create_dataset",
    "create_method",
    "list_datasets",
    "list_methods",
    "load_builtins",
    "split_method_name",
]
