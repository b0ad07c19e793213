"""wsl-bench: weakly-supervised localization benchmark for high-resolution mammograms.

The front doors::

    import wsl_bench
    method = wsl_bench.create_method("glam", device="cpu")
    dataset = wsl_bench.create_dataset("synthetic", split="test", image_size=(736, 480))
    wsl_bench.list_methods("gmic*")
"""

from __future__ import annotations

from wsl_bench._version import __version__
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
