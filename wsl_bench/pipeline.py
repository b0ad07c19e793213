"""The orchestrator: build a method, make sure it is trained, evaluate it, shard and merge, report.

Every command goes through here (``wsl-bench run``, ``train``, a ``torchrun`` run, the library
API), so a method is created with one set of merged options (:func:`method_options`), its trained
weights are found by one key (:func:`training_job`), and what a run folder holds is decided in one
place (:func:`run`). The layers below do one job each and know nothing of the others:
``wsl_bench.training`` trains a method it is given, ``wsl_bench.evaluation`` scores a ready method,
``wsl_bench.report`` rebuilds tables and figures from records.
"""

from __future__ import annotations

import contextlib
import fnmatch
import functools
import logging
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from wsl_bench.data import MammogramDataset
from wsl_bench.estimates import (
    Estimate,
    TrainingWork,
    evaluation_estimate,
    network_fingerprint,
    timing_facts,
    training_estimate,
)
from wsl_bench.evaluation.bench_harness import run_harness_bench
from wsl_bench.evaluation.figure_maps import figure_maps_present
from wsl_bench.evaluation.harness import (
    RunConfig,
    RunSummary,
    SampleCache,
    choose_figure_ids,
    compact_records,
    evaluate_method,
    make_record,
    mark_done,
    open_manifest,
    open_validation,
    records_complete,
)
from wsl_bench.evaluation.identity import changed_fields, current_records, identity_hash, method_identity
from wsl_bench.evaluation.manifest import config_hash, read_json, write_json_atomic
from wsl_bench.evaluation.records import RecordWriter, read_records, rewrite_records
from wsl_bench.evaluation.run_folder import (
    RunFolderError,
    check_run_folder,
    clear_run_folder,
    remove_if_untouched,
    remove_run_temporaries,
)
from wsl_bench.evaluation.run_lock import RunFolderLock, RunFolderLocked
from wsl_bench.evaluation.seeds import legacy_seeds, run_seeds, seed_label
from wsl_bench.paths import cache_root
from wsl_bench.presets import get_preset
from wsl_bench.registry import (
    DATASETS,
    METHODS,
    UnknownNameError,
    create_classifier_method,
    create_dataset,
    create_method_with_classifier,
    explained_classifier_name,
    list_methods,
    load_builtins,
    split_method_name,
)
from wsl_bench.report.tables import build_report
from wsl_bench.run_progress import PlannedTraining, RunPlan, RunProgress, TickingWriter
from wsl_bench.saliency import SaliencyMethod, TrainableMethod, TrainingStage
from wsl_bench.training.cache import (
    checkpoint_key_data,
    checkpoint_lock,
    load_method_weights,
    names_cache_file,
    set_aside_damaged,
    stage_checkpoint,
    stage_folder,
    stage_regressions,
    train_config_for,
    train_stages,
    training_seconds,
)
from wsl_bench.training.distributed import SINGLE_PROCESS, DistContext
from wsl_bench.training.learning_check import learning_problems
from wsl_bench.training.trainer import FirstImages, TrainConfig, TrainResult, training_stages
from wsl_bench.weights import file_sha256

log = logging.getLogger(__name__)


PLUGIN_PREFIX = "plugin:"
"""``--methods 'plugin:PATTERN'`` selects the installed plugin methods matching ``PATTERN``."""


def default_methods(preset: str | None = None, with_plugins: bool = False) -> list[str]:
    """Every built-in method that runs without user-supplied files (published-weight variants
    such as ``gmic.m1`` need the user's weights and are left out of the default benchmark), less
    those the preset leaves out of its default run for time (``Preset.skip_by_default``).

    Installed plugin methods join only with ``with_plugins``, after the built-in ones: installing a
    package must not change what the default benchmark, and so the reference report, contains."""
    skipped = set(get_preset(preset).skip_by_default) if preset else set()
    names = [name for name in list_methods("*") if name not in skipped]
    builtin = [name for name in names if not METHODS.is_plugin(name)]
    plugins = [name for name in names if with_plugins and METHODS.is_plugin(name)]
    return [name for name in builtin + plugins if not METHODS.get(name).requires_weights]


def _select(pattern: str) -> list[str]:
    """The methods one ``--methods`` item selects: ``plugin:PATTERN`` the plugin methods matching
    ``PATTERN``; a name exactly that method (built-in or plugin); any other wildcard the built-in
    methods it matches (so ``'*'`` or ``'gmic*'`` mean the same whatever is installed)."""
    if pattern.startswith(PLUGIN_PREFIX):
        wanted = pattern[len(PLUGIN_PREFIX):].strip() or "*"
        plugins = [n for n in list_methods("*") if METHODS.is_plugin(n)]
        matches = [n for n in plugins if fnmatch.fnmatchcase(n, wanted)]
        if not matches:
            installed = ", ".join(plugins) or "(none installed)"
            raise UnknownNameError(f"no plugin method matches {wanted!r}; plugin methods: {installed}")
        return matches
    matches = list_methods(pattern)
    if not any(ch in pattern for ch in "*?["):
        return matches
    builtin = [n for n in matches if not METHODS.is_plugin(n)]
    if not builtin:
        raise UnknownNameError(f"{pattern!r} matches only plugin methods ({', '.join(matches)}): select them with "
                               f"'{PLUGIN_PREFIX}{pattern}' or by name")
    return builtin


def parse_methods(spec: str | None, preset: str | None = None, with_plugins: bool = False) -> list[str]:
    """``"a,b,gmic*,gradcam@gmic,plugin:*"`` → method names (wildcards expanded over the built-in
    methods, ``plugin:PATTERN`` over the installed plugins, ``explainer@classifier`` names checked
    part by part); ``None`` or empty → :func:`default_methods` of ``preset``. ``with_plugins`` adds
    the plugin methods the default benchmark would take (those needing no user-supplied weights).

    Raises:
        UnknownNameError: a name or pattern that matches nothing, listing the known names.
    """

    if not spec or not spec.strip():
        return default_methods(preset, with_plugins)
    names: list[str] = []
    for pattern in (p.strip() for p in spec.split(",")):
        if not pattern:
            continue
        base, implied = split_method_name(pattern)
        if implied and not pattern.startswith(PLUGIN_PREFIX):
            METHODS.list(base)  # both halves must be known methods
            METHODS.list(implied["classifier"])
            matches = [pattern]
        else:
            matches = _select(pattern)
        names.extend(m for m in matches if m not in names)
    if with_plugins:
        names.extend(m for m in default_methods(preset, with_plugins=True) if METHODS.is_plugin(m) and m not in names)
    return names


def open_dataset(config: RunConfig, split: str | None = None) -> MammogramDataset:
    """The configured dataset at the preset's size, for ``split`` (default: the evaluated split)."""
    load_builtins()  # the registry lookup below comes before create_dataset, which would load them
    preset = get_preset(config.preset)
    split = split or config.split
    options = {**DATASETS.get(config.dataset).options_for(preset, split, config.seed), **dict(config.dataset_options)}
    return create_dataset(config.dataset, root=config.data_root, split=split, image_size=config.size(), **options)


def method_options(config: RunConfig, name: str) -> dict[str, Any]:
    """The options ``name`` is created with, later ones winning: for a post-hoc explainer the
    preset's options of the classifier it explains (so ``gradcam@gmic`` trains, and shares, the very
    checkpoint ``gmic`` gets), the preset's options of the method (``Preset.method_options``, by
    registered name and then by full name), then the user's own (``--option``, ``--classifier``).
    An explainer's options hold its classifier method's too: creating it divides them
    (``wsl_bench.registry.create_method_with_classifier``)."""
    load_builtins()  # an explainer's classifier is found in the registry (``base in METHODS`` below)
    preset = get_preset(config.preset).method_options
    user = config.options_for(name)
    base, _ = split_method_name(name)
    classifier = explained_classifier_name(name, user) if base in METHODS else None
    inherited = preset.get(classifier, {}) if classifier is not None else {}
    return {**inherited, **preset.get(base, {}), **preset.get(name, {}), **user}


@dataclass
class RunMethod:
    """A method as a run creates it (:func:`create_run_method`), untrained.

    Attributes:
        name: its name in the run (``"gradcam@gmic"``).
        method: what the run evaluates.
        trainee: the trainable method whose weights ``method`` runs on, trained or loaded from the
            cache under its own :func:`training_job` (the key a run of it alone gets): ``method``
            itself, or for a post-hoc explainer the classifier method it explains (whose network the
            explainer holds, so training or loading it updates the explainer); ``None``: nothing to train.
    """

    name: str
    method: SaliencyMethod
    trainee: TrainableMethod | None

    @property
    def needs_training(self) -> bool:
        """Whether its weights come from training (or the cache), not from a user's weights file."""
        return self.trainee is not None and not self.trainee.weights_loaded


def create_run_method(name: str, config: RunConfig) -> RunMethod:
    """The method ``name`` as ``config``'s run creates it (options merged by :func:`method_options`,
    seeded with the run's training seed, ``config.train_seed``), untrained. A post-hoc explainer's
    classifier (its ``classifier`` option, ``name@classifier``, or
    its ``default_classifier``) is created by name with the explainer's share of those options, which
    hold the preset's options of that classifier (so ``cam`` and ``gradcam`` train one ``cam``)."""
    options = method_options(config, name)
    method, classifier = create_method_with_classifier(
        name, device=config.device, seed=config.train_seed, image_size=config.size(), **options)
    if classifier is not None:
        return RunMethod(name, method, classifier)
    return RunMethod(name, method, method if isinstance(method, TrainableMethod) else None)


class TrainingConfigError(ValueError):
    """A training configuration that cannot be built (a bad override: a usage error)."""


@dataclass
class TrainingJob:
    """Everything that decides one method's trained weights in a run, decided in one place
    (:func:`training_job`) for every command that trains or reuses them: ``run``, ``train`` and a
    ``torchrun`` run ask for the same job, and so for the same key.

    Attributes:
        method: the method the trainer fits (a run method's :attr:`RunMethod.trainee`).
        train_config: the preset's budget, the method's recipe, then any overrides (``wsl-bench train``).
        stages: the method's training stages.
        train_set, val_set: the run's training and validation splits; for a method trained with masks
            (:func:`mask_training`), the split it names and ``None``.
        key: the checkpoint cache key (a hash of ``key_data``).
        key_data: what decides the weights: method and configuration, data, training configuration,
            stages, code and, for a method that starts from another's weights, that method's key.
        donor: the job of the method whose weights ``method`` starts from (``global_init``), if any.
    """

    method: TrainableMethod
    train_config: TrainConfig
    stages: tuple[TrainingStage, ...]
    train_set: MammogramDataset
    val_set: MammogramDataset | None
    key: str
    key_data: dict[str, Any]
    donor: TrainingJob | SaliencyMethod | None = None

    @property
    def folder(self) -> Path:
        """The cache folder of the trained weights."""
        return cache_root() / "checkpoints" / self.key_data["method"] / self.key


def training_job(method: TrainableMethod, config: RunConfig, **overrides: Any) -> TrainingJob:
    """The :class:`TrainingJob` of ``method`` (a run method's trainee) in ``config``'s run, computed
    without training anything (a ``global_init`` donor's job is computed the same way, recursively).
    ``overrides`` replace fields of the training configuration (``wsl-bench train``'s flags; they
    change the key). The training seed is ``config.train_seed`` and the data those of the dataset
    seed ``config.seed``: one training has one key whichever run asks for it (a one-seed run and
    seed ``s`` of a ``--seeds`` run with the same ``--seed`` share their checkpoints).

    Raises:
        ValueError: the method has nothing to train, or its ``global_init`` names no trained method.
    """
    if not isinstance(method, TrainableMethod):
        raise ValueError(f"method {method.name!r} has nothing to train")
    try:
        train_config = train_config_for(method, config.preset, config.train_seed, **overrides)
    except (TypeError, ValueError) as exc:
        raise TrainingConfigError(f"{method.name}: {exc}") from None
    if method.mask_split is None:
        train_set, val_set = open_dataset(config, "train"), open_dataset(config, "val")
    else:
        train_set, val_set, train_config = mask_training(method, config, train_config, overrides)
    key_data = checkpoint_key_data(method, train_config, train_set, val_set)
    donor = _donor(method, config)
    donor_job: TrainingJob | SaliencyMethod | None = None
    if donor is not None:
        # the donor's weights decide these weights too: key by what decides the donor's (its cache key),
        # not by its file, whose checksum also covers run-dependent metadata such as epoch times
        if donor.weights_loaded:
            donor_job = donor
            key_data["initialised_from"] = {"method": donor.name, "weights": donor.checksums()}
        else:
            donor_job = training_job(donor, config)
            key_data["initialised_from"] = {"method": donor.name, "cache_key": donor_job.key}
    return TrainingJob(method, train_config, training_stages(method), train_set, val_set,
                       config_hash(key_data), key_data, donor_job)


def mask_training(
    method: TrainableMethod, config: RunConfig, train_config: TrainConfig, overrides: dict[str, Any]
) -> tuple[MammogramDataset, None, TrainConfig]:
    """Training data and budget of a method trained with masks (``TrainableMethod.mask_split``): the
    split it names; no validation split (validating would read the validation masks, which ``supervised``
    must never see and on which ``fsl`` trains), so it keeps its final checkpoint; and a fixed budget,
    the image passes of one weakly-supervised training (the preset's epochs over the training split)
    spread over its own split's images, unless ``overrides`` name the epochs (``wsl-bench train --epochs``).

    Returns:
        ``(its training split, None, the training configuration with that budget)``.
    """
    own = open_dataset(config, method.mask_split)
    if overrides.get("epochs") is None:
        own_images = len(own.ids())
        train_images = own_images if method.mask_split == "train" else len(open_dataset(config, "train").ids())
        # image passes of one weakly-supervised training; an epoch is epoch_images of them, or a pass over the split
        weak_passes = train_config.epochs * (train_config.epoch_images or train_images or own_images)
        epochs = max(1, round(weak_passes / max(train_config.epoch_images or own_images, 1)))
        train_config = replace(train_config, epochs=epochs)
    return own, None, train_config


def _donor(trainee: TrainableMethod, config: RunConfig) -> TrainableMethod | None:
    """The method ``trainee.global_init`` names, created (untrained) with the run's options of it."""
    donor_name = trainee.global_init
    if not donor_name:
        return None
    if donor_name == trainee.name:
        raise ValueError(f"{trainee.name}: global_init cannot name the method itself")
    donor = create_run_method(donor_name, config).method
    if not isinstance(donor, TrainableMethod):
        raise ValueError(f"{trainee.name}: global_init={donor_name!r} is not a trained method")
    return donor


_WARNED_NOT_LEARNED: set[str] = set()
"""Checkpoints whose failed learning check this process has logged."""


def ensure_trained(
    method: TrainableMethod, config: RunConfig, progress: bool = True, context: DistContext = SINGLE_PROCESS
) -> dict[str, Any]:
    """Train ``method`` on the run's dataset (train/val splits) into the cache, or load the cached
    result (:func:`training_job` names the folder).

    Under ``torchrun`` every rank calls this with the same ``context``: they train together
    (DistributedDataParallel) into the one cache folder, which must then be on a filesystem every
    rank sees; only rank 0 writes there.

    One process at a time trains or loads a cache key (:func:`~wsl_bench.training.cache.checkpoint_lock`):
    a second run needing the same weights waits for the first one's training, then loads its
    checkpoint. A cached checkpoint that cannot be read (the cache is the suite's own, so a damaged
    file is not the user's to repair) is set aside, with a warning naming where, and trained again.

    Returns:
        checkpoint facts for the manifest: path, sha256, cache key, training metrics.
    """
    job = training_job(method, config)
    with checkpoint_lock(job.folder, context):
        try:
            return _ensure_trained_locked(job, method, config, progress, context)
        except ValueError as exc:
            if not names_cache_file(exc, job.folder):
                raise  # not a damaged cached file (a bad dataset, a bad option...)
            set_aside_damaged(job.folder, exc, context)
            return _ensure_trained_locked(job, method, config, progress, context)


def _ensure_trained_locked(job: TrainingJob, method: TrainableMethod, config: RunConfig, progress: bool,
                           context: DistContext) -> dict[str, Any]:
    """:func:`ensure_trained` with the cache key's lock held."""
    folder = job.folder
    last_stage = stage_folder(folder, job.stages, job.stages[-1])
    initialised_from = None
    context.barrier()  # every rank sees the same cache state before deciding to train
    if stage_checkpoint(last_stage) is None:
        log.info("training %s (cache %s)", method.name, folder)
        initialised_from = initialise_from_donor(job, config, progress=progress, context=context)
        if context.is_main:
            folder.mkdir(parents=True, exist_ok=True)
            write_json_atomic(folder / "key.json", job.key_data)
        context.barrier()
        started = time.perf_counter()
        train_stages(job.method, job.train_config, folder, job.train_set, job.val_set, resume=True,
                     context=context, progress=progress)
        if context.is_main:  # wall time of this (last, possibly resumed) training and its work: later plans' estimates
            write_json_atomic(folder / "timing.json", timing_facts(
                time.perf_counter() - started, config.device, training_work(job, config)))
    elif job.donor is not None:
        initialised_from = _donor_facts(job, config, progress, context)
    # The checkpoint selected on the validation split (by the stage's criterion) is evaluated;
    # the final one stands in when validation gave no usable criterion.
    chosen = stage_checkpoint(last_stage)
    meta = load_method_weights(method, chosen)
    problems = learning_problems(meta.get("metrics"))
    if problems and str(chosen) not in _WARNED_NOT_LEARNED:  # once per checkpoint, not per explainer of it
        _WARNED_NOT_LEARNED.add(str(chosen))
        log.warning("%s did not learn (validation metrics at chance; its maps measure this training run, "
                    "not the method): %s", seed_label(method.name, config.train_seed, config.training_seeds()),
                    "; ".join(problems))
    return {
        "path": str(chosen),
        "sha256": file_sha256(chosen),
        "cache_key": job.key,
        "stages": [s.name for s in job.stages],
        "epochs_completed": meta.get("epochs_completed"),
        "train_metrics": meta.get("metrics"),
        "training_seconds": training_seconds(folder),
        "seed": config.train_seed,
        "trained_method": method.name,  # the network trained (an explainer's facts are its classifier's)
        # the arithmetic the trainer used (bfloat16 autocast or not), from the checkpoint itself:
        # what a difference between machines is traced to (None: trained before it was recorded)
        "precision": meta.get("precision"),
        "learning_check": problems,
        "localisation_check": stage_regressions(folder, job.stages),
        **({"initialised_from": initialised_from} if initialised_from else {}),
    }


def initialise_from_donor(
    job: TrainingJob, config: RunConfig, progress: bool = True, context: DistContext = SINGLE_PROCESS
) -> dict[str, Any] | None:
    """Start ``job.method``'s global backbone from the trained weights of the method its
    ``global_init`` names (trained first, or loaded from the cache, with the run's options of it).

    Returns:
        :func:`_donor_facts`, or ``None`` when the trainee starts from random weights.
    """
    if job.donor is None:
        return None
    facts = _donor_facts(job, config, progress, context)
    donor = job.donor.method if isinstance(job.donor, TrainingJob) else job.donor
    job.method.initialise_global_backbone(donor)
    return facts


def _donor_facts(job: TrainingJob, config: RunConfig, progress: bool, context: DistContext) -> dict[str, Any]:
    """``{"method", "cache_key", "sha256"}`` of the donor's checkpoint (trained if needed; its weights
    are then loaded into the donor method), or ``{"method", "weights"}`` for a user's weights file."""
    if not isinstance(job.donor, TrainingJob):
        return {"method": job.donor.name, "weights": job.donor.checksums()}
    facts = ensure_trained(job.donor.method, config, progress=progress, context=context)
    return {"method": job.donor.method.name, "cache_key": facts["cache_key"], "sha256": facts["sha256"]}


def train(
    name: str,
    config: RunConfig,
    out: str | Path,
    overrides: dict[str, Any] | None = None,
    resume: bool = False,
    only_stage: str | None = None,
    max_images: int | None = None,
    progress: bool = True,
    context: DistContext = SINGLE_PROCESS,
) -> TrainResult:
    """``wsl-bench train``: train method ``name`` of ``config``'s run into ``out`` (not the cache),
    with its :func:`training_job` (``overrides`` change the training configuration and the key,
    which is kept in ``out/key.json``); for a post-hoc explainer, the classifier method it explains.
    ``max_images`` keeps the first images of each split.

    Raises:
        ValueError: the method has nothing to train, or a bad override.
    """
    run_method = create_run_method(name, config)
    if run_method.trainee is None:
        raise ValueError(f"method {name!r} has nothing to train")
    job = training_job(run_method.trainee, config, **(overrides or {}))
    train_set, val_set = job.train_set, job.val_set
    if max_images is not None:
        train_set = FirstImages(train_set, max_images)
        val_set = FirstImages(val_set, max_images) if val_set is not None else None
    initialise_from_donor(job, config, progress=progress, context=context)
    # the same lock as a run folder's: two trainings into one --out would mix their checkpoints and logs
    with RunFolderLock(out, what="wsl-bench training") if context.is_main else contextlib.nullcontext():
        if context.is_main:
            write_json_atomic(Path(out) / "key.json", {"key": job.key, **job.key_data})
        return train_stages(job.method, job.train_config, out, train_set, val_set, resume=resume,
                            only_stage=only_stage, context=context, progress=progress)


def prepare_method(
    run_method: RunMethod, config: RunConfig, progress: bool = True, context: DistContext = SINGLE_PROCESS
) -> dict[str, Any]:
    """Train ``run_method``'s trainee (or load its cached checkpoint) unless its weights came from a
    file; the checkpoint facts of the weights the method runs on (for the manifest)."""
    checkpoint: dict[str, Any] = dict(run_method.method.checksums())
    if run_method.needs_training:
        assert run_method.trainee is not None
        checkpoint.update(ensure_trained(run_method.trainee, config, progress=progress, context=context))
    return checkpoint


def create_trainee(name: str, config: RunConfig) -> TrainableMethod | None:
    """The method whose weights run method ``name`` needs trained (:attr:`RunMethod.trainee` when
    :attr:`RunMethod.needs_training`), created without ``name`` itself when that is a post-hoc
    explainer (whose constructor runs the classifier): what a run's plan needs, cheaply."""
    options = method_options(config, name)
    common = {"device": config.device, "seed": config.train_seed, "image_size": config.size()}
    trainee = create_classifier_method(name, **common, **options)
    if trainee is None and getattr(METHODS.get(split_method_name(name)[0]), "trainable", False):
        trainee = create_method_with_classifier(name, **common, **options)[0]
    if not isinstance(trainee, TrainableMethod) or trainee.weights_loaded:
        return None  # nothing to train, or the user's weights file
    return trainee


def training_chain(trainee: TrainableMethod, config: RunConfig) -> tuple[list[TrainingJob], list[TrainingJob]]:
    """``(to train, cached)``: the jobs ``trainee``'s weights depend on (the donors it starts from,
    then its own), split by whether the checkpoint cache already holds their result."""
    jobs: list[TrainingJob] = []
    job: TrainingJob | SaliencyMethod | None = training_job(trainee, config)
    while isinstance(job, TrainingJob):
        jobs.insert(0, job)
        job = job.donor
    cached = {j.key for j in jobs if stage_checkpoint(stage_folder(j.folder, j.stages, j.stages[-1])) is not None}
    return [j for j in jobs if j.key not in cached], [j for j in jobs if j.key in cached]


def training_work(job: TrainingJob, config: RunConfig) -> TrainingWork:
    """What ``job`` trains, for its time estimate: every epoch of every stage of its recipe, each
    stage's starting network validated first (a training on masks has no validation split)."""
    val_images = len(job.val_set.ids()) if job.val_set is not None else 0
    return TrainingWork(sum(stage.epochs(job.train_config) for stage in job.stages),
                        job.train_config.epoch_images or len(job.train_set.ids()), val_images, config.size(),
                        config.preset, network_fingerprint(job.key_data), len(job.stages) if val_images else 0)


def estimate_training(job: TrainingJob, config: RunConfig) -> Estimate:
    """How long ``job`` is likely to take (:func:`wsl_bench.estimates.training_estimate`)."""
    return training_estimate(job.key_data["method"], config.device, training_work(job, config),
                             cache_root() / "checkpoints")


def plan_run(config: RunConfig, pending: dict[str, dict[int | None, int]], splits: str) -> RunPlan:
    """The run's plan (:class:`~wsl_bench.run_progress.RunPlan`) from the images each method still
    has to score (``pending``: method → seed → images, :func:`_pending_images`: a trained method's
    per training seed, a method with nothing to train under ``None``; a method with none at a seed
    needs no training at that seed either). Methods that cannot be built here are left to the run,
    which records them as skipped."""
    plan = RunPlan(splits=splits)
    planned: dict[str, PlannedTraining] = {}
    for name, by_seed in pending.items():
        seeds = tuple(seed for seed in by_seed if seed is not None) or config.training_seeds()
        try:
            trainee = create_trainee(name, config)
        except (FileNotFoundError, NotImplementedError):
            trainee = None
        except Exception as exc:
            if not plugin_failure(name, config, exc):
                raise
            trainee = None  # the run records that plugin's failure when it gets there
        wanted = {seed: by_seed.get(seed, 0) for seed in (seeds if trainee is not None else (None,))}
        if not any(wanted.values()):
            plan.up_to_date.append(name)
            continue
        for seed, images in wanted.items():
            if not images:
                continue
            label = seed_label(name, seed, seeds)
            plan.evaluate[label] = images
            plan.evaluation_seconds += evaluation_estimate(name, config.size(), images)
            if trainee is None or seed is None:
                continue
            # a training's key depends on the configuration's training seed, not on the trainee object's
            try:
                to_train, cached = training_chain(trainee, config.for_seed(seed))
            except Exception as exc:
                if plugin_failure(name, config, exc):
                    continue  # the run records that plugin's failure when it gets there
                raise
            for job in to_train:
                if job.key not in planned:
                    planned[job.key] = PlannedTraining(seed_label(job.method.name, seed, seeds), job.key, [],
                                                       estimate_training(job, config))
                if job.method.name == trainee.name:
                    planned[job.key].needed_by.append(label)
                elif trainee.name not in planned[job.key].starts:  # a donor: its network starts the trainee's
                    planned[job.key].starts.append(trainee.name)
            plan.reused += [r for r in (seed_label(j.method.name, seed, seeds) for j in cached) if r not in plan.reused]
    plan.train = list(planned.values())
    return plan


def run_identity(run_method: RunMethod, config: RunConfig, data: dict[str, Any], dataset_module: str) -> dict[str, Any]:
    """The method's identity in this run (``wsl_bench.evaluation.identity``), computed before it is
    trained: its training key is its trainee's (an explainer's changes with its classifier's), and
    the trainee's code counts as its own.

    The key is that of the training at the dataset seed (``config.seed``), whatever the run's
    training seeds: every seed's key is a function of the same settings, data and code and of the seed,
    which each record names, so one identity per method serves every seed (and a folder may gain seeds)."""
    at_dataset_seed = config.for_seed(config.seed)
    training = training_job(run_method.trainee, at_dataset_seed).key if run_method.needs_training else None
    related = (run_method.trainee,) if run_method.trainee is not None else ()
    return method_identity(run_method.method, method_options(config, run_method.name), training, data,
                           dataset_module, related)


def run(
    config: RunConfig,
    out_dir: str | Path,
    progress: bool = True,
    retry_failed: bool = False,
    shard: tuple[int, int] = (0, 1),
    write_report: bool = True,
    lock: bool = True,
    overwrite: bool = False,
    tracker: RunProgress | None = None,
) -> RunSummary:
    """Evaluate ``config.methods`` on the dataset and write the run folder (and its report).

    Each method is scored on the evaluated split, then on the validation split
    (:func:`open_validation`; its images keep no figure maps). Summary counts cover both.

    Resuming keeps a record only while it is still right: its method's run identity
    (``wsl_bench.evaluation.identity``: options, weights, checkpoint key, code, data) is unchanged, and its
    status is ``ok`` (or ``failed``/``oom`` without ``retry_failed``; a ``skipped`` record is always
    retried, since its cause, such as a missing weights file, may be gone). A figure image whose maps
    are missing or unreadable is recomputed.

    Args:
        config: what to run.
        out_dir: the run folder; an existing one with the same configuration is resumed.
        progress: tqdm progress bars.
        retry_failed: recompute records whose status is "failed" or "oom" instead of keeping them.
        shard: ``(rank, world_size)``: evaluate every ``world_size``-th image of each split starting
            at ``rank`` (distributed evaluation; each rank writes ``records.rank<r>.jsonl``).
        write_report: build ``report/`` at the end (rank 0 does it after merging in distributed runs).
        lock: hold the run folder's lock (:class:`~wsl_bench.evaluation.run_lock.RunFolderLock`) while running;
            a sharded run takes it once, outside, on rank 0.
        overwrite: replace the run ``out_dir`` holds (``--overwrite``): once the dataset has opened,
            what a run wrote there is deleted (:func:`~wsl_bench.evaluation.run_folder.clear_run_folder`).
        tracker: told the plan and each stage (:class:`~wsl_bench.run_progress.RunProgress`: the
            command line's plan and overall bar); default: silent.

    Raises:
        RunFolderLocked: another live run holds ``out_dir``.
        RunConfigMismatch: ``out_dir`` holds a run with other run-wide settings (and records).
        NotARunFolder: ``overwrite`` on a folder that holds files but no run.
    """
    out_dir = Path(out_dir)
    tracker = tracker or RunProgress()
    if lock:
        check_run_folder(out_dir)  # a folder of the user's own files is refused before even the lock is written
        created = not out_dir.exists()
        try:
            with RunFolderLock(out_dir):
                remove_run_temporaries(out_dir)  # a killed earlier run's half-written files, by name
                return run(config, out_dir, progress, retry_failed, shard, write_report, lock=False,
                           overwrite=overwrite, tracker=tracker)
        finally:
            if created:  # a run that failed before writing anything leaves no folder (only the lock was there)
                remove_if_untouched(out_dir)
    rank, world = shard
    # the dataset opens before the manifest is written: a wrong --data-root leaves no folder behind
    dataset = open_dataset(config)
    all_ids = dataset.ids()
    samples = SampleCache(dataset)
    validation = open_validation(config, lambda split: open_dataset(config, split))
    out_dir.mkdir(parents=True, exist_ok=True)
    if overwrite:
        deleted = clear_run_folder(out_dir)
        if deleted:
            log.warning("--overwrite: deleted the earlier run in %s (%s)", out_dir, ", ".join(deleted))
    manifest = open_manifest(config, out_dir)
    manifest["validation"] = validation.manifest_entry()
    write_json_atomic(out_dir / "manifest.json", manifest)
    if not validation.scored:
        log.warning("headline Dice (validation τ) will be missing: %s", validation.reason)
    expected = {config.split: all_ids}
    data = {config.split: dataset.describe()}
    if validation.scored:
        assert validation.samples is not None
        expected[validation.split] = validation.ids
        data[validation.split] = validation.samples.dataset.describe()
    # the images this run scores: records of any other image are not counted, and the report says
    # how many images each method has no record for
    manifest["image_ids"] = {split: list(ids) for split, ids in expected.items()}
    write_json_atomic(out_dir / "manifest.json", manifest)
    # split → (this shard's ids, loaded samples, ids whose maps the qualitative figure keeps)
    work: dict[str, tuple[list[str], SampleCache, set[str]]] = {
        config.split: (all_ids[rank::world], samples,
                       choose_figure_ids(all_ids, samples, config.figure_images) & set(all_ids[rank::world])),
    }
    if validation.scored:
        assert validation.samples is not None
        work[validation.split] = (validation.ids[rank::world], validation.samples, set())

    records_path = out_dir / ("records.jsonl" if world == 1 else f"records.rank{rank}.jsonl")
    existing = read_records(sorted(out_dir.glob("records*.jsonl")), default_split=config.split,
                            default_seed=legacy_seeds(manifest))
    final_statuses = {"ok"} if retry_failed else {"ok", "failed", "oom"}
    # the folder's training seeds, in its order (a folder that gained seeds keeps its first): the first
    # seed's maps are the figures', its checkpoint facts the manifest's ``checkpoints``
    seeds = tuple(run_seeds(manifest))
    summary = RunSummary(out_dir)
    plan = plan_run(config, _pending_images(config.methods, work, existing, manifest, final_statuses, seeds),
                    " + ".join(f"{len(ids)} {split}" for split, (ids, _, _) in work.items()) + " images")
    for training in plan.train:
        tracker.expect(("train", training.key), training.estimate.seconds)
    method_of = {seed_label(name, seed, seeds): name for name in config.methods for seed in (*seeds, None)}
    for label, images in plan.evaluate.items():
        tracker.expect(("evaluate", label), evaluation_estimate(method_of[label], config.size(), images))
    tracker.show_plan(plan)

    with RecordWriter(records_path) as writer:
        for name in config.methods:
            try:
                run_method: RunMethod | None = create_run_method(name, config.for_seed(seeds[0]))
                created_at: int | None = seeds[0]
                identity_data = run_identity(run_method, config, data, type(dataset).__module__)
            except (FileNotFoundError, NotImplementedError) as exc:
                # A method that cannot be built here (weights the user has not supplied, a missing
                # optional dependency) is skipped with its reason; the others still run, and a later
                # run retries it.
                log.warning("skipping %s: %s", name, exc)
                tracker.expect(("evaluate", name), 0.0)  # no work after all: out of the bar's total
                for split, (ids, _, _) in work.items():
                    for sample_id in ids:
                        writer.write(make_record(sample_id, name, "skipped", f"{type(exc).__name__}: {exc}",
                                                 split=split, seed=None))
                summary.statuses[name] = {"skipped": sum(len(ids) for ids, _, _ in work.values())}
                # no identity: the skipped records stand for the method until a run can build it
                manifest["methods"][name] = {"identity": None, "skipped": f"{type(exc).__name__}: {exc}"}
                write_json_atomic(out_dir / "manifest.json", manifest)
                continue
            except Exception as exc:
                if not plugin_failure(name, config, exc):
                    raise  # a built-in method that cannot be built is a bug, or a usage error main() reports
                # a plugin's failure is that method's: failed records with the reason, the other methods still run
                _record_method_failure(name, f"plugin method {name} could not be built: {type(exc).__name__}: {exc}",
                                       {split: ids for split, (ids, _, _) in work.items()}, writer, summary, tracker,
                                       manifest, out_dir)
                continue
            identity = identity_hash(identity_data)
            previous = manifest["methods"].get(name) or {}
            if previous and previous.get("identity") != identity:
                changed = changed_fields(previous.get("identity_data"), identity_data)
                log.warning("%s: %s changed since its records were made; recomputing them", name,
                            ", ".join(changed))
                shutil.rmtree(out_dir / "maps" / name, ignore_errors=True)
            manifest["methods"][name] = {**previous, "identity": identity, "identity_data": identity_data}
            write_json_atomic(out_dir / "manifest.json", manifest)
            # a trained method once per training seed; one with nothing to train once, at the dataset seed,
            # its records (seed None) shared by every seed
            for seed in seeds if run_method.needs_training else (None,):
                label = seed_label(name, seed, seeds)
                figures_here = seed is None or seed == seeds[0]
                done = {(r["split"], r["image_id"]) for r in existing
                        if r["method"] == name and r.get("seed") == seed and r.get("identity") == identity
                        and r["status"] in final_statuses}
                todo = {split: [i for i in ids if (split, i) not in done
                                or (figures_here and i in figure_ids and not figure_maps_present(out_dir, name, i))]
                        for split, (ids, _, figure_ids) in work.items()}
                summary.reused += sum(len(ids) - len(todo[split]) for split, (ids, _, _) in work.items())
                images = sum(len(ids) for ids in todo.values())
                cost_s = evaluation_estimate(name, config.size(), images)
                tracker.expect(("evaluate", label), cost_s)  # now exact: the images this method still has to score
                per_image = cost_s / max(images, 1)  # the method's fixed cost spread over its images
                if not any(todo.values()):
                    tracker.done(("evaluate", label))
                    continue
                at = seed if seed is not None else config.seed
                seed_config = config.for_seed(at)
                if run_method is None or created_at != at:
                    run_method, created_at = create_run_method(name, seed_config), at
                to_train, cached = (training_chain(run_method.trainee, seed_config) if run_method.needs_training
                                    else ([], []))
                for job in to_train:  # planned, or found now (the plan guessed the method's records current)
                    tracker.expect(("train", job.key), estimate_training(job, config).seconds)
                trained = [seed_label(j.method.name, seed, seeds) for j in to_train]
                # (a stage now, trained or not, so the plan is printed before the checkpoint's learning check warns)
                tracker.stage("train " + ", ".join(trained) if to_train else f"evaluate {label}")
                try:
                    checkpoint = prepare_method(run_method, seed_config, progress=progress)
                except Exception as exc:
                    if not plugin_failure(name, config, exc):
                        raise
                    _record_method_failure(name, f"plugin method {name} could not be trained: "
                                           f"{type(exc).__name__}: {exc}", todo, writer, summary, tracker, manifest,
                                           out_dir, identity, seed=seed, label=label)
                    run_method = created_at = None
                    continue
                for job in to_train:
                    tracker.done(("train", job.key))
                summary.trained += [t for t in trained if t not in summary.trained]
                summary.reused_checkpoints += [c for c in (seed_label(j.method.name, seed, seeds) for j in cached)
                                               if c not in summary.reused_checkpoints + summary.trained]
                method = run_method.method
                manifest["methods"][name] = {
                    "params": method.num_parameters(),
                    "map_range": method.map_range,
                    "description": METHODS.describe(split_method_name(name)[0]),
                    "options": {k: str(v) for k, v in config.options_for(name).items()},
                    "identity": identity,
                    "identity_data": identity_data,
                }
                if checkpoint:
                    if figures_here:  # the first seed's, where a one-seed run keeps them
                        manifest["checkpoints"][name] = checkpoint
                    if seed is not None and len(seeds) > 1:
                        per_seed = manifest.setdefault("checkpoints_by_seed", {}).setdefault(name, {})
                        per_seed[str(seed)] = checkpoint
                        if str(seeds[0]) not in per_seed and name in manifest["checkpoints"]:
                            # the first seed's, made before the folder gained seeds
                            per_seed[str(seeds[0])] = manifest["checkpoints"][name]
                write_json_atomic(out_dir / "manifest.json", manifest)
                counts = {"ok": 0, "failed": 0, "oom": 0}
                ticking = TickingWriter(writer, functools.partial(tracker.tick, ("evaluate", label), per_image))
                for split, (_, split_samples, figure_ids) in work.items():
                    if todo[split]:
                        tracker.stage(f"evaluate {label} ({split})")
                        split_counts = evaluate_method(method, todo[split], split_samples, ticking, config, out_dir,
                                                       figure_ids if figures_here else set(), progress, split=split,
                                                       identity=identity, seed=seed)
                        counts = {k: counts[k] + split_counts[k] for k in counts}
                tracker.done(("evaluate", label))
                summary.statuses[label] = counts
                summary.computed += sum(counts.values())
                summary.failed += counts["failed"] + counts["oom"]
                del method
                run_method = created_at = None
                if config.device == "cuda":
                    torch.cuda.empty_cache()

    if world == 1:
        dropped = compact_records(out_dir, manifest)
        if dropped:
            log.info("compacted %s: %d stale or superseded records dropped", out_dir / "records.jsonl", dropped)
    records = current_records(read_records(sorted(out_dir.glob("records*.jsonl")), default_split=config.split,
                                           default_seed=legacy_seeds(manifest)), manifest)
    mark_done(out_dir, records_complete(records, config, expected, manifest))
    if write_report and rank == 0:
        tracker.stage("write the report")
        build_report(out_dir, out_dir / "report")
    tracker.finish()
    return summary


def plugin_failure(name: str, config: RunConfig, exc: Exception) -> bool:
    """Whether ``exc``, raised while building or training run method ``name``, is a plugin's own
    failure (``name``, or the classifier it explains, comes from an installed plugin), which fails
    that method alone. An option the plugin does not take stays a usage error of the command."""
    if isinstance(exc, TypeError) and "unexpected keyword argument" in str(exc):
        return False
    base, implied = split_method_name(name)
    classifier = implied.get("classifier") or config.options_for(name).get("classifier")
    return METHODS.is_plugin(base) or (isinstance(classifier, str) and METHODS.is_plugin(classifier))


def _record_method_failure(name: str, reason: str, todo: dict[str, list[str]], writer: RecordWriter,
                           summary: RunSummary, tracker: RunProgress, manifest: dict[str, Any], out_dir: Path,
                           identity: str | None = None, seed: int | None = None, label: str | None = None) -> None:
    """A method that failed as a whole (a plugin that raised): one failed record per image of
    ``todo`` (split → image ids) with ``reason``, under training seed ``seed`` (``None``: before any
    seed, shared by every seed), a line in the summary under ``label`` (the method's name, with its
    seed in a run of several), and the run goes on with the next seed or method."""
    label = label or name
    reason = " ".join(reason.split())[:500]  # one line, whatever the plugin's message holds
    log.warning("%s", reason)
    tracker.expect(("evaluate", label), 0.0)  # no work after all: out of the bar's total
    images = 0
    for split, ids in todo.items():
        for sample_id in ids:
            writer.write(make_record(sample_id, name, "failed", reason, split=split, identity=identity, seed=seed))
            images += 1
    summary.statuses[label] = {"failed": images}
    summary.failed += images
    summary.reasons[label] = reason
    entry = manifest["methods"].get(name) or {}
    manifest["methods"][name] = {**entry, "identity": identity, "failed": reason}
    write_json_atomic(out_dir / "manifest.json", manifest)


def _pending_images(methods: Sequence[str], work: dict[str, tuple[list[str], Any, set[str]]],
                    existing: list[dict[str, Any]], manifest: dict[str, Any], final: set[str],
                    seeds: Sequence[int]) -> dict[str, dict[int | None, int]]:
    """method → seed → images of ``work`` without a final record of that seed under the identity the
    manifest holds for the method, for every training seed and for ``None`` (the records of a method
    with nothing to train): what the plan expects to score (the run checks each method's identity
    again when it gets there)."""
    identities = {name: (entry or {}).get("identity") for name, entry in manifest["methods"].items()}
    done = {(r["method"], r.get("seed"), r["split"], r["image_id"]) for r in existing
            if r["status"] in final and identities.get(r["method"]) and r.get("identity") == identities[r["method"]]}
    return {name: {seed: sum((name, seed, split, i) not in done for split, (ids, _, _) in work.items() for i in ids)
                   for seed in (*seeds, None)}
            for name in methods}


def merge_shard_records(config: RunConfig, out_dir: str | Path) -> Path:
    """Fold the per-rank ``records.rank<r>.jsonl`` of a distributed run into ``records.jsonl``.

    Called by rank 0 once every rank has finished (after a barrier). Records are written in the order
    a single-process run writes them (method by method in ``config.methods`` order, training seed by
    training seed, the evaluated split and then the validation split, images in split order; any
    earlier ``records.jsonl`` content is kept, the last record per (split, image, method, seed) wins),
    to a temporary file renamed over ``records.jsonl``; the rank files are removed afterwards. Writes
    the ``done`` marker when every (split, image, method, seed) has a record. Whether the validation
    split was scored is read from the ``validation`` entry :func:`run` wrote to ``manifest.json``.

    Returns:
        the path of ``records.jsonl``.
    """
    out_dir = Path(out_dir)
    target = out_dir / "records.jsonl"
    shards = sorted(out_dir.glob("records.rank*.jsonl"))
    manifest = read_json(out_dir / "manifest.json")
    records = current_records(read_records([target, *shards], default_split=config.split,
                                           default_seed=legacy_seeds(manifest)), manifest)
    expected = {config.split: open_dataset(config).ids()}
    validation = manifest.get("validation") or {}
    if validation.get("split") and validation.get("reason") is None:
        expected[validation["split"]] = open_dataset(config, validation["split"]).ids()
    method_order = {m: i for i, m in enumerate(config.methods)}
    split_order = {s: i for i, s in enumerate(expected)}
    image_order = {(s, i): n for s, ids in expected.items() for n, i in enumerate(ids)}
    seed_order = {s: i for i, s in enumerate([None, *run_seeds(manifest)])}
    records.sort(key=lambda r: (method_order.get(r["method"], len(method_order)), r["method"],
                                seed_order.get(r.get("seed"), len(seed_order)),
                                split_order.get(r["split"], len(split_order)), r["split"],
                                image_order.get((r["split"], r["image_id"]), len(image_order)), r["image_id"]))
    rewrite_records(target, records)
    for shard in shards:
        shard.unlink()
    mark_done(out_dir, records_complete(records, config, expected, manifest))
    return target


def run_sharded(config: RunConfig, out_dir: str | Path, context: DistContext, progress: bool = True,
                retry_failed: bool = False) -> Any:
    """``wsl-bench run`` under torchrun: train together, evaluate a shard each, rank 0 merges and reports.

    1. Every trainable method is trained (or its cached checkpoint found) by all ranks together, with
       DistributedDataParallel (:func:`ensure_trained`), once per training seed of the run; the cache
       folder must be on a filesystem every rank sees.
    2. Each rank evaluates every ``world_size``-th image of the split (:func:`run`'s ``shard``)
       into its own ``records.rank<r>.jsonl``.
    3. After a barrier rank 0 merges the records into ``records.jsonl``
       (:func:`merge_shard_records`) and writes the report.

    Args:
        config: the run's :class:`wsl_bench.evaluation.harness.RunConfig`.

    Returns:
        a :class:`wsl_bench.evaluation.harness.RunSummary` whose counts are summed over all ranks.
    """

    # rank 0 holds the run folder for the whole sharded run; every rank learns whether it could
    lock = RunFolderLock(out_dir) if context.is_main else None
    refusal = [None]
    if lock is not None:
        try:
            check_run_folder(Path(out_dir))
            lock.acquire()
            remove_run_temporaries(Path(out_dir))
        except (RunFolderLocked, RunFolderError) as exc:
            refusal = [str(exc)]
    dist.broadcast_object_list(refusal, src=0)
    if refusal[0] is not None:
        raise RunFolderLocked(refusal[0])
    try:
        return _run_sharded_locked(config, out_dir, context, progress, retry_failed)
    finally:
        if lock is not None:
            lock.release()


def _run_sharded_locked(config: RunConfig, out_dir: str | Path, context: DistContext, progress: bool,
                        retry_failed: bool) -> RunSummary:
    trained: list[str] = []
    seeds = config.training_seeds()
    for name in config.methods:
        for seed in seeds:
            seed_config = config.for_seed(seed)
            try:
                run_method = create_run_method(name, seed_config)  # as a single process creates it: the same key
            except (FileNotFoundError, NotImplementedError):
                break  # run() records this method as skipped, with the reason
            except Exception as exc:
                if plugin_failure(name, config, exc):
                    break  # run() records that plugin's failure, with the reason
                raise
            if not run_method.needs_training:
                break  # nothing to train: run() evaluates it once for every seed
            to_train = training_chain(run_method.trainee, seed_config)[0]
            trained += [t for t in (seed_label(j.method.name, seed, seeds) for j in to_train) if t not in trained]
            prepare_method(run_method, seed_config, progress=progress and context.is_main, context=context)
            del run_method
    summary = run(config, out_dir, progress=progress and context.is_main, retry_failed=retry_failed,
                  shard=(context.rank, context.world_size), write_report=False, lock=False)
    context.barrier()  # every shard's records are on disk
    if context.is_main:
        merge_shard_records(config, out_dir)
        build_report(out_dir, Path(out_dir) / "report")
    gathered: list[Any] = [None] * context.world_size
    dist.all_gather_object(gathered, (summary.computed, summary.reused, summary.failed, summary.statuses))
    # trained above, by all ranks together; run() found them in the cache
    total = RunSummary(Path(out_dir), trained=trained,
                       reused_checkpoints=[n for n in summary.reused_checkpoints if n not in trained])
    for computed, reused, failed, statuses in gathered:
        total.computed += computed
        total.reused += reused
        total.failed += failed
        for method_name, counts in statuses.items():
            merged = total.statuses.setdefault(method_name, {})
            for status, count in counts.items():
                merged[status] = merged.get(status, 0) + count
    context.barrier()  # nobody leaves before the report is written
    return total


def summarise_statuses(summary: RunSummary) -> str:
    """One line per method: how many records of each status this invocation wrote."""
    lines = []
    for name, counts in summary.statuses.items():
        parts = ", ".join(f"{k} {v}" for k, v in counts.items() if v)
        reason = summary.reasons.get(name)
        lines.append(f"  {name}: {parts or 'nothing new'}" + (f" ({reason})" if reason else ""))
    return "\n".join(lines)


def harness_bench(methods: Sequence[str], dataset: str = "folder", data_root: str | None = None, split: str = "test",
                  images: int = 8, size: tuple[int, int] = (2944, 1920), precision: str = "fp32",
                  device: str = "cpu", loader_workers: int | None = None, batch_size: int = 1,
                  out_dir: str | Path | None = None) -> list[dict[str, Any]]:
    """``wsl-bench bench --harness``: each method built as a run builds it (untrained, with
    ``precision`` where the method takes that option), then timed stage by stage through the harness on the
    first ``images`` images of the split (:func:`wsl_bench.evaluation.bench_harness.run_harness_bench`)."""
    load_builtins()
    base = RunConfig(methods=tuple(methods), dataset=dataset, data_root=data_root, split=split, preset="full",
                     device=device, batch_size=batch_size, image_size=tuple(size), loader_workers=loader_workers,
                     validation_split=None)
    built, options = [], []
    for name in methods:
        with_precision = replace(base, method_options=((name, (("precision", precision),)),))
        try:
            method = create_run_method(name, with_precision).method
            options.append((name, (("precision", precision),)))
        except TypeError as exc:  # a method without a precision option (a baseline) runs as it is
            if "precision" not in str(exc):
                raise
            method = create_run_method(name, base).method
            options.append((name, ()))
        built.append((name, method))
    config = replace(base, method_options=tuple(options))
    return run_harness_bench(built, lambda: open_dataset(config), config, images=images, out_dir=out_dir)
