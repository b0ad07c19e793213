"""Trained weights for a run: run a method's training stages, cache the result, reuse it.

A trainable method's checkpoint is cached under ``$WSL_BENCH_CACHE`` (default
``$XDG_CACHE_HOME/wsl_bench`` or ``~/.cache/wsl_bench``) in a folder named by the hash of everything
that determines the weights: method and its configuration (training hyper-parameters included),
training data, training configuration, the stages of its recipe, the seed and the source code of the
model and the trainer (:func:`training_code_fingerprint`). A second run with the same settings and
code loads the cached weights; an interrupted training resumes from its last checkpoint.

Staged recipes (GLAM: global, local, joint) train each stage into ``<folder>/stage-<name>/`` with
its own ``last.pt``, ``best.pt``, ``final.pt``, ``log.csv`` and ``curves.png``; a stage starts from
the previous stage's ``best.pt`` and resumes on its own. A one-stage recipe trains in the folder
itself. The weights a run evaluates are the last stage's ``best.pt`` (``final.pt`` when validation
gave no usable criterion).
"""

from __future__ import annotations

import hashlib
import logging
import sys
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wsl_bench.evaluation.manifest import read_json
from wsl_bench.paths import cache_root  # noqa: F401  (the cache this module keys)
from wsl_bench.presets import get_preset
from wsl_bench.saliency import SaliencyMethod, TrainableMethod
from wsl_bench.training.distributed import SINGLE_PROCESS, DistContext
from wsl_bench.training.learning_check import localisation_regressions
from wsl_bench.training.trainer import (
    TrainConfig,
    Trainer,
    TrainingStage,
    TrainResult,
    load_network_weights,
    training_stages,
)
from wsl_bench.weights import load_checkpoint

if TYPE_CHECKING:
    from wsl_bench.data import MammogramDataset

log = logging.getLogger(__name__)


def train_config_for(method: TrainableMethod, preset_name: str, seed: int, **overrides: Any) -> TrainConfig:
    """The preset's training budget, then the method's recipe (its ``train_overrides`` attribute, e.g.
    GMIC's published learning rate), then explicit ``overrides`` (command-line options)."""
    preset = get_preset(preset_name)
    fields: dict[str, Any] = {
        "epochs": preset.epochs,
        "batch_size": preset.batch_size,
        "seed": seed,
        "best_criterion": preset.best_criterion,
        "cpu_amp": preset.cpu_amp,
        "epoch_images": preset.epoch_images,
        "lr_schedule": preset.lr_schedule,
    }
    fields.update(method.train_overrides)
    fields.update({k: v for k, v in overrides.items() if v is not None})
    return TrainConfig(**fields)


def stage_folder(out_dir: str | Path, stages: tuple[TrainingStage, ...], stage: TrainingStage) -> Path:
    """Where ``stage`` trains: ``out_dir`` for a one-stage recipe, else ``out_dir/stage-<name>``."""
    return Path(out_dir) if len(stages) == 1 else Path(out_dir) / f"stage-{stage.name}"


def stage_checkpoint(folder: Path) -> Path | None:
    """The checkpoint a finished stage hands on: ``best.pt``, else ``final.pt``; ``None`` if unfinished."""
    if not (folder / "final.pt").exists():
        return None
    return folder / "best.pt" if (folder / "best.pt").exists() else folder / "final.pt"


def train_stages(
    method: TrainableMethod,
    config: TrainConfig,
    out_dir: str | Path,
    train_set: MammogramDataset,
    val_set: MammogramDataset | None = None,
    resume: bool = False,
    only_stage: str | None = None,
    context: DistContext = SINGLE_PROCESS,
    progress: bool = True,
) -> TrainResult:
    """Run the method's training stages in order (or only ``only_stage``), each in its folder.

    Args:
        resume: continue each stage from its ``last.pt`` where there is one (a finished stage is
            then not trained again); without it every stage run here starts afresh.
        only_stage: train just this stage; the stages before it must have finished already.

    Returns:
        the last stage run: its final and best checkpoints; ``history`` of every stage run here.

    Raises:
        ValueError: an unknown stage name, or an earlier stage that has not finished.
    """
    stages = training_stages(method)
    names = [s.name for s in stages]
    if only_stage is not None and only_stage not in names:
        raise ValueError(f"{method.name} has no training stage {only_stage!r}; its stages: {', '.join(names)}")
    previous: Path | None = None
    history: list[dict[str, Any]] = []
    skipped: set[str] = set()
    result: TrainResult | None = None
    for stage in stages:
        folder = stage_folder(out_dir, stages, stage)
        if only_stage is not None and stage.name != only_stage:
            if names.index(stage.name) > names.index(only_stage):
                break
            previous = stage_checkpoint(folder)
            if previous is None:
                raise ValueError(
                    f"stage {only_stage!r} of {method.name} starts from stage {stage.name!r}, which has not "
                    f"finished in {folder}; train it first (--stage {stage.name}, or no --stage)"
                )
            continue
        trainer = Trainer(method, config, folder, progress=progress, stage=stage, init_from=previous, context=context)
        result = trainer.fit(train_set, val_set, resume=resume)
        history += result.history
        skipped |= set(result.skipped_samples)
        previous = result.best_checkpoint
    assert result is not None  # at least one stage ran
    ran = [s.name for s in stages if only_stage in (None, s.name)]
    return replace(result, history=history, skipped_samples=sorted(skipped), stages=ran)


def load_method_weights(method: SaliencyMethod, path: str | Path) -> dict[str, Any]:
    """Load a project-format checkpoint (``wsl_bench.checkpoint/1``) into ``method`` and put it in eval mode.

    Raises:
        ValueError: the file belongs to another method or configuration.
    """
    meta = load_network_weights(method, Path(path))
    method.network().eval()
    return meta


def training_code_files(method: TrainableMethod) -> list[Path]:
    """The source files whose code decides what ``method`` learns: the modules of its class
    hierarchy and of every layer of its network that belong to wsl-bench or to the package the
    method comes from (a plugin's own code counts; torch's does not), and the trainer's modules."""
    packages = {"wsl_bench", type(method).__module__.split(".")[0]}
    modules = {cls.__module__ for cls in type(method).__mro__}
    modules |= {type(layer).__module__ for layer in method.network().modules()}
    modules |= {"wsl_bench.training.trainer", "wsl_bench.training.data", "wsl_bench.training.augment", __name__}
    files = {Path(sys.modules[name].__file__) for name in modules
             if name.split(".")[0] in packages and getattr(sys.modules.get(name), "__file__", None)}
    return sorted(files)


def training_code_fingerprint(method: TrainableMethod) -> str:
    """sha256 over :func:`training_code_files` (their names and bytes): part of the cache key, so
    editing a model or the trainer retrains instead of silently reusing weights of the old code."""
    digest = hashlib.sha256()
    for path in training_code_files(method):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def checkpoint_key_data(
    method: TrainableMethod, train_config: TrainConfig, train_set: MammogramDataset, val_set: MammogramDataset | None
) -> dict[str, Any]:
    """Everything that determines the trained weights (hashed into the cache folder's name); no
    ``val_set`` for a method trained with masks, which is not validated while it trains."""
    identity = method.training_identity()
    return {
        "method": identity["method"],
        "method_config": identity["config"],
        "train_data": train_set.describe(),
        "val_data": val_set.describe() if val_set is not None else None,
        "train_config": train_config.__dict__,
        "stages": [s.to_dict() for s in training_stages(method)],
        "code": training_code_fingerprint(method),
    }


def stage_regressions(folder: str | Path, stages: tuple[TrainingStage, ...]) -> list[str]:
    """:func:`~wsl_bench.training.learning_check.localisation_regressions` of every finished stage of the
    recipe trained in ``folder``: its selected checkpoint against the network it started from."""
    problems: list[str] = []
    for stage in stages:
        chosen = stage_checkpoint(stage_folder(folder, stages, stage))
        if chosen is None:
            continue
        meta = load_checkpoint(chosen)[1].meta_record()
        problems += localisation_regressions(stage.name, stage.maps, meta.get("metrics"), meta.get("start_metrics"))
    return problems


def training_seconds(folder: Path) -> float | None:
    """Wall time of the training that made the cached checkpoint in ``folder`` (``None`` if not recorded)."""
    timing = folder / "timing.json"
    return read_json(timing).get("training_seconds") if timing.exists() else None
