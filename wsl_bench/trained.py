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
import os
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .distributed import SINGLE_PROCESS, DistContext
from .manifest import config_hash, file_sha256, read_json, write_json_atomic
from .presets import get_preset
from .saliency import SaliencyMethod, TrainableMethod
from .training import TrainConfig, Trainer, TrainingStage, TrainResult, load_network_weights, training_stages

if TYPE_CHECKING:
    from .data import MammogramDataset
    from .harness import RunConfig

log = logging.getLogger(__name__)


def cache_root() -> Path:
    """The folder holding cached checkpoints (see module docstring)."""
    if os.environ.get("WSL_BENCH_CACHE"):
        return Path(os.environ["WSL_BENCH_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "wsl_bench"


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
    }
    fields.update(getattr(method, "train_overrides", {}))
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
    trainee = method.training_method()
    packages = {"wsl_bench", type(trainee).__module__.split(".")[0]}
    modules = {cls.__module__ for cls in type(trainee).__mro__}
    modules |= {type(layer).__module__ for layer in trainee.network().modules()}
    modules |= {"wsl_bench.training", "wsl_bench.training_data", "wsl_bench.augment", __name__}
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
    method: TrainableMethod, train_config: TrainConfig, train_set: MammogramDataset, val_set: MammogramDataset
) -> dict[str, Any]:
    """Everything that determines the trained weights (hashed into the cache folder's name)."""
    identity = method.training_identity()
    return {
        "method": identity["method"],
        "method_config": identity["config"],
        "train_data": train_set.describe(),
        "val_data": val_set.describe(),
        "train_config": train_config.__dict__,
        "stages": [s.to_dict() for s in training_stages(method.training_method())],
        "code": training_code_fingerprint(method),
    }


def training_key(method: TrainableMethod, config: RunConfig) -> tuple[str, dict[str, Any]]:
    """The cache key of ``method``'s trained weights in ``config``'s run, and the data it hashes,
    computed without training anything (a ``global_init`` donor's key is computed the same way,
    recursively). :func:`ensure_trained` trains into the folder this key names, and
    ``wsl_bench.identity`` puts the key in each method's run identity, so a run knows whether its
    records still belong to the weights it would evaluate before it trains or loads them.
    """
    from .harness import open_dataset

    trainee = method.training_method()  # a post-hoc explainer trains the classifier it explains
    train_config = train_config_for(trainee, config.preset, config.seed)
    key_data = checkpoint_key_data(method, train_config, open_dataset(config, "train"), open_dataset(config, "val"))
    donor = _donor(trainee, config)
    if donor is not None:
        # the donor's weights decide these weights too: key by what decides the donor's (its cache key),
        # not by its file, whose checksum also covers run-dependent metadata such as epoch times
        key_data["initialised_from"] = (
            {"method": donor.name, "weights": donor.checksums()} if donor.weights_loaded
            else {"method": donor.name, "cache_key": training_key(donor, config)[0]}
        )
    return config_hash(key_data), key_data


def _donor(trainee: TrainableMethod, config: RunConfig) -> TrainableMethod | None:
    """The method ``trainee.global_init`` names, created (untrained) with the run's options of it."""
    donor_name = getattr(trainee, "global_init", None)
    if not donor_name:
        return None
    if donor_name == trainee.name:
        raise ValueError(f"{trainee.name}: global_init cannot name the method itself")
    from . import create_method
    from .harness import method_options

    donor = create_method(donor_name, device=config.device, seed=config.seed, image_size=config.size(),
                          **method_options(config, donor_name))
    if not isinstance(donor, TrainableMethod):
        raise ValueError(f"{trainee.name}: global_init={donor_name!r} is not a trained method")
    return donor


def ensure_trained(
    method: TrainableMethod, config: RunConfig, progress: bool = True, context: DistContext = SINGLE_PROCESS
) -> dict[str, Any]:
    """Train ``method`` on the run's dataset (train/val splits) or load the cached result.

    Under ``torchrun`` every rank calls this with the same ``context``: they train together
    (DistributedDataParallel) into the one cache folder, which must then be on a filesystem every
    rank sees; only rank 0 writes there.

    Returns:
        checkpoint facts for the manifest: path, sha256, cache key, training metrics.
    """
    from .harness import open_dataset

    trainee = method.training_method()  # a post-hoc explainer trains the classifier it explains
    train_config = train_config_for(trainee, config.preset, config.seed)
    stages = training_stages(trainee)
    key, key_data = training_key(method, config)
    initialised_from = initialise_from_donor(trainee, config, progress=progress, context=context)
    if initialised_from and initialised_from.get("cache_key") != key_data["initialised_from"].get("cache_key"):
        raise RuntimeError(f"{method.name}: the donor's checkpoint key changed while it was built; rerun")
    folder = cache_root() / "checkpoints" / key_data["method"] / key
    last_stage = stage_folder(folder, stages, stages[-1])
    context.barrier()  # every rank sees the same cache state before deciding to train
    if stage_checkpoint(last_stage) is None:
        log.info("training %s (cache %s)", method.name, folder)
        if context.is_main:
            folder.mkdir(parents=True, exist_ok=True)
            write_json_atomic(folder / "key.json", key_data)
        context.barrier()
        started = time.perf_counter()
        train_stages(trainee, train_config, folder, open_dataset(config, "train"), open_dataset(config, "val"),
                     resume=True, context=context, progress=progress)
        if context.is_main:  # wall time of this (last, possibly resumed) training, kept with the checkpoint
            write_json_atomic(folder / "timing.json", {"training_seconds": round(time.perf_counter() - started, 1)})
    # The checkpoint selected on the validation split (by the stage's criterion) is evaluated;
    # the final one stands in when validation gave no usable criterion.
    chosen = stage_checkpoint(last_stage)
    meta = load_method_weights(method, chosen)
    return {
        "path": str(chosen),
        "sha256": file_sha256(chosen),
        "cache_key": key,
        "stages": [s.name for s in stages],
        "epochs_completed": meta.get("epochs_completed"),
        "train_metrics": meta.get("metrics"),
        "training_seconds": _training_seconds(folder),
        **({"initialised_from": initialised_from} if initialised_from else {}),
    }


def initialise_from_donor(
    trainee: TrainableMethod, config: RunConfig, progress: bool = True, context: DistContext = SINGLE_PROCESS
) -> dict[str, Any] | None:
    """Start ``trainee``'s global backbone from the trained weights of the method its ``global_init``
    names (trained first, or loaded from the cache, with the run's preset options of that method).

    Returns:
        ``{"method", "cache_key", "sha256"}`` of the donor's checkpoint (``{"method", "weights"}``
        when the donor loaded a user's weights file), or ``None`` when the trainee starts from random
        weights.
    """
    donor = _donor(trainee, config)
    if donor is None:
        return None
    if donor.weights_loaded:  # the user's weights file (``--option weights=``), nothing to train
        trainee.initialise_global_backbone(donor)
        return {"method": donor.name, "weights": donor.checksums()}
    facts = ensure_trained(donor, config, progress=progress, context=context)
    trainee.initialise_global_backbone(donor)
    return {"method": donor.name, "cache_key": facts["cache_key"], "sha256": facts["sha256"]}


def _training_seconds(folder: Path) -> float | None:
    """Wall time of the training that made the cached checkpoint in ``folder`` (``None`` if not recorded)."""
    timing = folder / "timing.json"
    return read_json(timing).get("training_seconds") if timing.exists() else None
