"""Trained weights for a run: train once, cache, reuse.

A trainable method's checkpoint is cached under ``$WSL_BENCH_CACHE`` (default
``$XDG_CACHE_HOME/wsl_bench`` or ``~/.cache/wsl_bench``) in a folder named by the hash of everything
that determines the weights: method and its configuration, training data, training configuration
and seed. A second run with the same settings loads the cached weights; an interrupted training
resumes from its last checkpoint.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .checkpoint_io import load_checkpoint_file
from .manifest import config_hash, file_sha256, write_json_atomic
from .presets import get_preset
from .saliency import SaliencyMethod, TrainableMethod
from .training import TrainConfig, Trainer

if TYPE_CHECKING:
    from .harness import RunConfig

log = logging.getLogger(__name__)


def cache_root() -> Path:
    """The folder holding cached checkpoints (see module docstring)."""
    if os.environ.get("WSL_BENCH_CACHE"):
        return Path(os.environ["WSL_BENCH_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "wsl_bench"


def train_config_for(method: TrainableMethod, preset_name: str, seed: int) -> TrainConfig:
    """The preset's training budget with the method's own overrides (``train_overrides`` attribute)."""
    preset = get_preset(preset_name)
    fields: dict[str, Any] = {"epochs": preset.epochs, "batch_size": preset.batch_size, "seed": seed}
    fields.update(getattr(method, "train_overrides", {}))
    return TrainConfig(**fields)


def load_method_weights(method: SaliencyMethod, path: str | Path) -> dict[str, Any]:
    """Load a project-format checkpoint (``wsl_bench.checkpoint/1``) into ``method``.

    Raises:
        ValueError: the file belongs to another method or configuration.
    """
    checkpoint = load_checkpoint_file(path, map_location=method.device)
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != "wsl_bench.checkpoint/1":
        raise ValueError(f"{path}: not a wsl-bench checkpoint")
    identity = method.training_identity()
    if {"method": checkpoint["method"], "config": checkpoint["config"]} != identity:
        raise ValueError(
            f"{path}: checkpoint of {checkpoint['method']!r} with config {checkpoint['config']} does not fit "
            f"{identity['method']!r} with config {identity['config']}"
        )
    method.network().load_state_dict(checkpoint["state_dict"])
    method.network().eval()
    return checkpoint.get("meta", {})


def ensure_trained(method: TrainableMethod, config: RunConfig, progress: bool = True) -> dict[str, Any]:
    """Train ``method`` on the run's dataset (train/val splits) or load the cached result.

    Returns:
        checkpoint facts for the manifest: path, sha256, cache key, training metrics.
    """
    from .harness import open_dataset

    trainee = method.training_method()  # a post-hoc explainer trains the classifier it explains
    train_config = train_config_for(trainee, config.preset, config.seed)
    train_set = open_dataset(config, "train")
    val_set = open_dataset(config, "val")
    identity = method.training_identity()
    key_data = {
        "method": identity["method"],
        "method_config": identity["config"],
        "train_data": train_set.describe(),
        "val_data": val_set.describe(),
        "train_config": train_config.__dict__,
    }
    key = config_hash(key_data)
    folder = cache_root() / "checkpoints" / identity["method"] / key
    final = folder / "final.pt"
    if not final.exists():
        log.info("training %s (cache %s)", method.name, folder)
        folder.mkdir(parents=True, exist_ok=True)
        write_json_atomic(folder / "key.json", key_data)
        Trainer(trainee, train_config, folder, progress=progress).fit(train_set, val_set, resume=True)
    # The checkpoint selected on the validation split (by TrainConfig.best_criterion) is evaluated;
    # the final one stands in when validation gave no usable criterion.
    chosen = folder / "best.pt" if (folder / "best.pt").exists() else final
    meta = load_method_weights(method, chosen)
    return {
        "path": str(chosen),
        "sha256": file_sha256(chosen),
        "cache_key": key,
        "epochs_completed": meta.get("epochs_completed"),
        "train_metrics": meta.get("metrics"),
    }
