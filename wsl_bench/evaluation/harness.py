"""The benchmark harness: methods × dataset → a run folder of records, then the report.

A run folder holds::

    manifest.json     schema, configuration and its hash, dataset seed and training seeds, package
                      versions, git commit and dirty flag, device and the CPU's arithmetic, checkpoint
                      checksums and training precision (per training seed), per-method facts
    records.jsonl     one JSON object per (split, image, method, training seed) — see :func:`make_record`
                      and :mod:`wsl_bench.evaluation.seeds`
    maps/             normalised maps of a few lesion images per method (evaluated split only), for
                      the qualitative figure
    done              written when every (split, image, method) has a record
    report/           tables and figures (``wsl_bench.report.tables``), rebuilt from the above alone

Every method is scored on the evaluated split (``RunConfig.split``, ``test``) and, by the same code
path, on the validation split (``RunConfig.validation_split``, ``val``): the report chooses each
method's headline Dice threshold on the validation images and applies it unchanged to the test
images. When the validation split is missing or holds no annotated lesion, nothing is scored on it
and ``manifest.json`` ``validation.reason`` says why (the report shows that reason).

Running the same command on the same folder resumes: records already there are kept and only the
missing (split, image, method, seed) records are computed (with ``--seeds``, per training seed). A
failure on one image (unreadable file, NaN map, out of memory) becomes a record with ``status``
"failed"/"oom" and its error, and the run goes on.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from wsl_bench.atomic_io import write_text_atomic
from wsl_bench.data import DatasetError, MammogramDataset, Sample, SampleError
from wsl_bench.evaluation import cpu_histograms
from wsl_bench.evaluation.figure_maps import save_figure_maps
from wsl_bench.evaluation.identity import current_records
from wsl_bench.evaluation.interrupts import is_method_failure, watch_sigint
from wsl_bench.evaluation.loading import (  # noqa: F401  (SampleCache: re-exported)
    Loaded,
    SampleCache,
    default_workers,
    load_batches,
)
from wsl_bench.evaluation.manifest import (
    MANIFEST_SCHEMA,
    DamagedFileError,
    config_hash,
    device_info,
    git_state,
    package_versions,
    plugin_packages,
    read_json,
)
from wsl_bench.evaluation.profiling import count_gflops, measure, memory_kind
from wsl_bench.evaluation.records import RecordWriter, read_records, rewrite_records
from wsl_bench.evaluation.run_folder import has_records, settings_differences
from wsl_bench.evaluation.scoring import ScoredImage, image_level_fields, score_batch, score_image
from wsl_bench.evaluation.seeds import added_seeds, expected_seeds, format_seeds, legacy_seeds, run_seeds
from wsl_bench.evaluation.writer import BackgroundWriter
from wsl_bench.presets import get_preset
from wsl_bench.saliency import CLASSES, SaliencyMethod, SaliencyOutput

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class RunConfig:
    """Everything that determines a run.

    Attributes:
        methods: registered method names (wildcards already expanded).
        dataset: registered dataset name.
        data_root: the dataset's files (``None`` for the built-in synthetic set).
        split: evaluated split.
        validation_split: the split every method is also scored on to choose its headline Dice
            threshold (``None``: none, and the report says the headline Dice is missing).
        preset: run size (``wsl_bench.presets``).
        device: ``"cpu"`` or ``"cuda"``.
        seed: the dataset seed (which synthetic images exist: every split the run trains, validates
            and evaluates on) and, without ``seeds``, the one training seed.
        batch_size: images per ``predict`` call.
        bins: histogram bins of the localisation metrics.
        figure_images: lesion images whose maps are kept for the qualitative figure.
        method_options: extra constructor options per method, as ``((method, ((key, value), ...)), ...)``.
        image_size: ``(H, W)`` replacing the preset's image size (``None``: the preset's); the
            preset's split sizes, training budget and method settings still apply.
        loader_workers: processes reading images ahead of the model (``None``:
            :func:`~wsl_bench.evaluation.loading.default_workers`; 0: read in the main process).
            Changes no result, so it is not part of the run's identity.
        dataset_options: extra constructor options of the dataset (``--dataset-option``, e.g. the
            synthetic set's ``conspicuity``), as ``((key, value), ...)``; they override what the
            preset sets (``options_for``) and are part of the run's identity.
        seeds: the training seeds (``--seeds``): every trainable method is trained and evaluated
            once per seed (data order, initialisation, augmentation) on the same images; ``()``:
            ``(seed,)``. Recorded in the manifest, not in the run's identity: a run folder may gain
            seeds (:func:`open_manifest`).
        training_seed: the training seed a step of the run works on (:meth:`for_seed`): methods
            are created and trained with it; ``None``: the first of :meth:`training_seeds`.
    """

    methods: tuple[str, ...]
    dataset: str = "synthetic"
    data_root: str | None = None
    split: str = "test"
    validation_split: str | None = "val"
    preset: str = "cpu"
    device: str = "cpu"
    seed: int = 0
    batch_size: int = 1
    bins: int = 1000
    figure_images: int = 4
    method_options: tuple[tuple[str, tuple[tuple[str, Any], ...]], ...] = ()
    image_size: tuple[int, int] | None = None
    loader_workers: int | None = None
    dataset_options: tuple[tuple[str, Any], ...] = ()
    seeds: tuple[int, ...] = ()
    training_seed: int | None = None

    def size(self) -> tuple[int, int]:
        """``(H, W)`` of every image and method of the run."""
        return tuple(self.image_size) if self.image_size else get_preset(self.preset).image_size

    def training_seeds(self) -> tuple[int, ...]:
        """The run's training seeds, in order: ``seeds``, or the dataset seed alone."""
        return tuple(self.seeds) if self.seeds else (self.seed,)

    @property
    def train_seed(self) -> int:
        """The training seed methods are created and trained with (``training_seed`` or the first of
        :meth:`training_seeds`); the dataset is always opened with ``seed``."""
        return self.training_seed if self.training_seed is not None else self.training_seeds()[0]

    def for_seed(self, seed: int) -> RunConfig:
        """This run's configuration for the training at ``seed`` (same data, same settings)."""
        return replace(self, training_seed=int(seed))

    def options_for(self, method: str) -> dict[str, Any]:
        return dict(dict(self.method_options).get(method, ()))

    def identity(self) -> dict[str, Any]:
        """The part of the configuration a resumed run must share (methods and training seeds may be added)."""
        config = asdict(self)
        config.pop("methods")
        config.pop("method_options")
        config.pop("loader_workers")  # how images are read changes no result
        # the training seeds are the manifest's own entry (a folder may gain seeds); a run folder made
        # before they existed keeps its hash
        config.pop("seeds")
        config.pop("training_seed")
        return config


@dataclass
class RunSummary:
    """What :func:`run` did: records computed, kept from earlier runs (``reused``) and failed
    (failed or out of memory); per method the statuses of the records it wrote; the trained methods
    it trained (``trained``) and those whose checkpoints it loaded from the cache (``reused_checkpoints``)."""

    out_dir: Path
    computed: int = 0
    reused: int = 0
    failed: int = 0
    statuses: dict[str, dict[str, int]] = field(default_factory=dict)
    trained: list[str] = field(default_factory=list)
    reused_checkpoints: list[str] = field(default_factory=list)
    reasons: dict[str, str] = field(default_factory=dict)
    """method → why it failed as a whole (a plugin that raised), for the summary."""


class RunConfigMismatch(ValueError):
    """The output folder holds a run (with records) with other run-wide settings; the message names them."""


def open_manifest(config: RunConfig, out_dir: Path) -> dict[str, Any]:
    """The run folder's manifest for a run of ``config``: the folder's own when it holds a run with
    the same run-wide settings (new methods and training seeds appended), else a new one.

    A folder may gain training seeds (its records of the other seeds stay right: each record names
    its seed, and a method's identity does not depend on the seeds), but a run that leaves out one
    of the folder's seeds is refused like any other mismatch: the folder's report would keep seeds
    the command did not ask for.

    Raises:
        RunConfigMismatch: the folder holds records of a run with other settings or seeds.
    """
    path = out_dir / "manifest.json"
    identity = config.identity()
    if path.exists():
        manifest = read_json(path)
        if not isinstance(manifest, dict) or not isinstance(manifest.get("config", {}), dict):
            raise DamagedFileError(f"{path}: not a run manifest (a JSON {type(manifest).__name__} without its "
                                   "'config'); restore it, or replace the run with --overwrite")
        seeds = added_seeds(run_seeds(manifest), config.training_seeds())
        same = manifest.get("config_hash") == config_hash(identity) and seeds is not None
        if not same and not has_records(out_dir):
            # a run that failed before its first record (a wrong --data-root...) protects nothing
            log.warning("%s: replacing the manifest of a run with other settings that recorded nothing", out_dir)
            path.unlink()
            return open_manifest(config, out_dir)
        if manifest.get("config_hash") != config_hash(identity):
            differences = settings_differences(manifest.get("config") or {}, identity)
            raise RunConfigMismatch(
                f"{out_dir} holds a run with another configuration ({'; '.join(differences) or 'another hash'}); "
                "rerun with --overwrite to replace it (its records, maps and report are deleted), or choose "
                "another --out folder"
            )
        if seeds is None:
            held = run_seeds(manifest)
            raise RunConfigMismatch(
                f"{out_dir} holds a run with training seeds {format_seeds(held)}, and this run asks for "
                f"{format_seeds(config.training_seeds())}: rerun with --seeds naming all of "
                f"{format_seeds(held)} (more may be added), --overwrite to replace it, or choose another --out folder"
            )
        # methods in the order they were first run (the report's row order), new ones appended
        known = list(manifest["config"].get("methods", []))
        manifest["config"]["methods"] = known + [m for m in config.methods if m not in known]
        manifest["seeds"] = seeds
        return manifest
    return {
        "schema_version": MANIFEST_SCHEMA,
        "config": {**identity, "methods": list(config.methods)},
        "config_hash": config_hash(identity),
        "preset": get_preset(config.preset).to_dict(),
        "seed": config.seed,
        "seeds": list(config.training_seeds()),
        "packages": package_versions(),
        "plugins": plugin_packages(),
        "git": git_state(),
        "device": device_info(torch.device(config.device)),
        "memory_kind": memory_kind(torch.device(config.device)),
        "methods": {},
        "checkpoints": {},
    }


_OOM_MESSAGES = ("out of memory", "not enough memory", "can't allocate memory")
"""How allocation failures read when torch raises them as plain RuntimeErrors (CUDA, and the CPU
allocator's ``DefaultCPUAllocator: not enough memory: you tried to allocate ...``)."""


def _is_oom(exc: BaseException) -> bool:
    message = str(exc).lower()
    return isinstance(exc, (MemoryError, torch.cuda.OutOfMemoryError)) or any(m in message for m in _OOM_MESSAGES)


def make_record(
    image_id: str, method: str, status: str, error: str | None = None, *, split: str = "test", **fields: Any
) -> dict[str, Any]:
    """A record with the fields every record has; scored fields come in ``fields``.

    ``split`` is the split the image belongs to (the evaluated split or the validation split);
    ``dice`` is Dice at τ = 0.5, ``hist`` the per-class histograms Dice at any other bin threshold
    (the validation-selected one, the oracle one) and PxAP are computed from.
    """
    record = {
        "split": split,
        "image_id": image_id,
        "method": method,
        "status": status,
        "error": error,
        "dice": {c: None for c in CLASSES},
        "dice_pixels": {c: None for c in CLASSES},
        "has_lesion": {c: None for c in CLASSES},
        "score": {c: None for c in CLASSES},
        "label": {c: None for c in CLASSES},
        "time_s": None,
        "peak_memory_mb": None,
        "gflops": None,
    }
    record.update(fields)
    return record


def score_each(maps: torch.Tensor, map_range: str, samples: list[Sample], bins: int) -> list[ScoredImage | Exception]:
    """Each image's scores, or the error that stops it from being scored, in ``samples``' order.

    The batch is scored in one call on the maps' device (``maps``: ``N×C×h×w``); when that call
    fails, the images are scored one by one, so that a map that cannot be scored fails only its
    own image, with its own error.
    """
    try:
        return list(score_batch(maps, map_range, samples, bins))
    except Exception:
        results: list[ScoredImage | Exception] = []
        for index, sample in enumerate(samples):
            try:
                results.append(score_image(maps[index], map_range, sample, bins))
            except Exception as exc:
                results.append(exc)
        return results


def evaluate_method(
    method: SaliencyMethod,
    ids: list[str],
    samples: SampleCache,
    writer: RecordWriter,
    config: RunConfig,
    out_dir: Path,
    figure_ids: set[str],
    progress: bool = True,
    split: str | None = None,
    identity: str | None = None,
    seed: int | None = None,
) -> dict[str, int]:
    """Score ``method`` on the images ``ids`` (those without a record yet), writing one record each.

    ``split`` names the split the images belong to in their records (default: the evaluated split);
    maps of ``figure_ids`` are kept for the qualitative figure. Every record carries ``identity``
    (the method's run identity, ``wsl_bench.evaluation.identity``) and ``seed`` (the training seed of
    the weights scored; ``None`` for a method with nothing to train, whose records serve every seed:
    :mod:`wsl_bench.evaluation.seeds`). Whatever the method returns is checked
    (:meth:`SaliencyOutput.validate`); a bad output, like any error of ``predict`` or of scoring,
    becomes a failed record of the images concerned and the run goes on.

    The stages overlap: images are read ahead by loader workers (:mod:`wsl_bench.evaluation.loading`,
    ``config.loader_workers``), and each batch's maps are scored and its records written by a
    background thread (:mod:`wsl_bench.evaluation.writer`) while the next batch's ``predict`` runs.
    Each ``ok`` record keeps its stage times (``time_s``: ``predict``; ``stage_s``: ``load``, the main
    thread waiting for the image, ``write``, the main thread waiting for the previous batch's scoring
    and writing, and ``score``, the scoring itself, done in the background), so the report can show
    the end-to-end seconds per image beside the model's own.
    """
    split = split or config.split
    device = torch.device(config.device)
    counts = {"ok": 0, "failed": 0, "oom": 0}  # updated by the background thread only
    gflops_per_image: float | None = None
    warmed_up = False
    desc = f"evaluate {method.name}" + ("" if split == config.split else f" ({split})")
    bar = tqdm(total=len(ids), desc=desc, disable=not progress, unit="img")
    workers = config.loader_workers if config.loader_workers is not None else default_workers(device)
    background = BackgroundWriter(writer)
    stack = contextlib.ExitStack()

    def write_failed(sample_ids: list[str], status: str, message: str) -> None:
        """(In the background thread.) One failed record per image."""
        for sample_id in sample_ids:
            writer.write(make_record(sample_id, method.name, status, message, split=split, identity=identity,
                                     seed=seed))
            counts[status] += 1

    def score_and_write(maps: torch.Tensor, map_range: str, scores: torch.Tensor, loaded: list[Sample],
                        common: dict[str, Any], load_s: float, wait_s: float) -> None:
        """(In the background thread.) Score a batch's maps and write one record per image."""
        start = time.perf_counter()
        batch_scores = score_each(maps, map_range, loaded, config.bins)
        ok, figures = [], []
        for index, sample in enumerate(loaded):
            try:
                scored = batch_scores[index]
                if isinstance(scored, Exception):
                    raise scored
                fields = {**scored.fields, **image_level_fields(scores[index], sample)}
            except Exception as exc:  # a map the method returned that cannot be scored: that image fails
                write_failed([sample.id], "failed", f"scoring: {type(exc).__name__}: {exc}")
                continue
            ok.append((sample, fields))
            if sample.id in figure_ids:
                figures.append((sample, scored.normalised_maps.cpu()))
        n = len(loaded)
        stage_s = {"load": load_s / n, "score": (time.perf_counter() - start) / n, "write": wait_s / n}
        for sample, fields in ok:
            writer.write(make_record(sample.id, method.name, "ok", split=split, identity=identity, seed=seed,
                                     stage_s=stage_s,
                                     mask_kind=sample.meta.get("mask_kind", "pixel"), **common, **fields))
            counts["ok"] += 1
        for sample, normalised in figures:
            save_figure_maps(out_dir, method.name, sample, normalised)

    try:
        stack.enter_context(watch_sigint())
        batches = load_batches(samples, ids, config.batch_size, workers=workers)
        while True:
            load_start = time.perf_counter()
            batch = next(batches, None)
            if batch is None:
                break
            load_s = time.perf_counter() - load_start
            unreadable = [item for item in batch if item.error is not None]
            for item in unreadable:
                background.run(partial(write_failed, [item.sample_id], "failed", f"loading: {item.error}"))
            loaded = [item.sample for item in batch if item.error is None]
            if not loaded:
                bar.update(len(batch))
                continue
            try:
                images = _to_device(loaded, device)
                first_call = not warmed_up
                if not warmed_up:
                    # One untimed call first: lazy initialisation, allocator growth and oneDNN/cuDNN
                    # kernel selection must not count as the first image's time. It also yields the
                    # FLOP count (per image: the batch is the same for every call).
                    first_image = images[:1]
                    gflops_per_image = count_gflops(lambda: method.predict(first_image))  # noqa: B023 (called now)
                    if device.type == "cpu":
                        cpu_histograms.warm_up()  # the scorer's compiled loops, likewise
                    warmed_up = True
                # the first measured call starts with the allocator's free memory handed back: it counts all it uses
                with measure(device, release_free=first_call) as cost:
                    output: SaliencyOutput = method.predict(images)
                output.validate(len(loaded))
                # The maps stay on the method's device: they are scored there and only histograms come back.
                maps, map_range = output.maps.detach(), output.map_range
                scores = output.scores.detach().to("cpu")
                del output  # extras (method-specific tensors for figures) are not kept by the harness
            except BaseException as exc:  # noqa: B036 - a plugin's sys.exit() fails its images, not the run
                if not is_method_failure(exc):
                    raise  # a real Ctrl-C (or the interpreter shutting down) ends the run
                status = "oom" if _is_oom(exc) else "failed"
                message = f"{type(exc).__name__}: {exc}"
                if status == "oom":
                    message = f"out of memory on {device} for a batch of {len(loaded)} at {loaded[0].size}: {exc}"
                background.run(partial(write_failed, [sample.id for sample in loaded], status, message))
                bar.update(len(batch))
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                continue
            n = len(loaded)
            common = {"time_s": cost.seconds / n, "peak_memory_mb": cost.peak_memory_mb, "gflops": gflops_per_image,
                      "batch_size": n, "map_range": map_range, "map_shape": list(maps.shape[-2:])}
            wait_s = background.wait_idle()  # the previous batch is scored and written
            background.run(partial(score_and_write, maps, map_range, scores, loaded, common, load_s, wait_s))
            del maps, scores
            bar.update(len(batch))
    finally:
        stack.close()
        background.close()  # every record handed over is durable before the caller goes on
        bar.close()
    return counts


def _to_device(samples: list[Sample], device: torch.device) -> torch.Tensor:
    """``N×1×H×W`` images of a batch on ``device``; through pinned memory to a GPU, so the copy
    overlaps with what the GPU is still doing."""
    images = torch.from_numpy(np.stack([s.image for s in samples]))
    if device.type == "cuda":
        return images.pin_memory().to(device, non_blocking=True)
    return images.to(device)


def choose_figure_ids(ids: list[str], samples: SampleCache, count: int) -> set[str]:
    """The first ``count`` images (in split order) that hold a lesion: the same for every method."""
    chosen: set[str] = set()
    for sample_id in ids:
        if len(chosen) >= count:
            break
        try:
            sample = samples.get(sample_id)
        except SampleError:
            continue
        if any(m is not None and m.any() for m in sample.masks.values()):
            chosen.add(sample_id)
    return chosen


@dataclass
class ValidationSplit:
    """The validation images a run scores to choose each method's headline Dice threshold, or why
    there are none (``reason``; the report shows it where the headline Dice is missing).

    Attributes:
        split: the validation split's name (``RunConfig.validation_split``).
        ids: its image ids, in split order (empty when ``reason`` is set).
        lesion_images: class → number of images with an annotated lesion of that class.
        reason: why the split is not scored, or ``None`` when it is.
        samples: a loaded-sample cache of the split (``None`` when it is not scored).
    """

    split: str | None
    ids: list[str] = field(default_factory=list)
    lesion_images: dict[str, int] = field(default_factory=dict)
    reason: str | None = None
    samples: SampleCache | None = None

    @property
    def scored(self) -> bool:
        return self.reason is None

    def manifest_entry(self) -> dict[str, Any]:
        """What ``manifest.json`` keeps under ``validation`` (the report reads it)."""
        return {"split": self.split, "n_images": len(self.ids), "lesion_images": dict(self.lesion_images),
                "reason": self.reason}


def open_validation(
    config: RunConfig, open_split: Callable[[str], MammogramDataset], budget_bytes: int = 2**30
) -> ValidationSplit:
    """The run's validation split, checked for what threshold selection needs: it exists, is not the
    evaluated split, and holds at least one image with an annotated lesion. Otherwise the returned
    split carries the reason and nothing is scored on it (never a silent fallback to another τ).

    The check loads every validation image once (into the returned cache, which evaluation reuses);
    ``open_split(name)`` opens a split of the run's dataset, and signals a missing split with
    :class:`~wsl_bench.data.DatasetError`.
    """
    split = config.validation_split
    if split is None:
        return ValidationSplit(None, reason="no validation split in this run's configuration (validation_split=None)")
    where = f"dataset {config.dataset} split {split}"
    if split == config.split:
        return ValidationSplit(split, reason=f"the validation split is the evaluated split ({split}); a threshold "
                                             "chosen on the scored images is the oracle τ")
    try:
        dataset = open_split(split)
        ids = dataset.ids()
    except DatasetError as exc:
        return ValidationSplit(split, reason=f"no validation split: {where} cannot be opened ({exc})")
    if not ids:
        return ValidationSplit(split, reason=f"no validation images: {where} is empty")
    samples = SampleCache(dataset, budget_bytes)
    lesion = {c: 0 for c in CLASSES}
    unreadable = 0
    for sample_id in ids:
        try:
            sample = samples.get(sample_id)
        except SampleError:
            unreadable += 1
            continue
        for cls in CLASSES:
            mask = sample.masks.get(cls)
            lesion[cls] += int(mask is not None and bool(mask.any()))
    if not any(lesion.values()):
        failed = f", {unreadable} of them unreadable" if unreadable else ""
        return ValidationSplit(split, list(ids), lesion, reason=f"no annotated validation images: {where} has "
                               f"{len(ids)} images{failed}, none with a lesion mask")
    return ValidationSplit(split, list(ids), lesion, samples=samples)


def records_complete(records: list[dict[str, Any]], config: RunConfig, expected: dict[str, list[str]],
                     manifest: dict[str, Any] | None = None) -> bool:
    """Whether every (split, image, method) of ``expected`` (split → ids) has a record: for a method
    the ``manifest`` shows trained, one per training seed of the run (``seeds.expected_seeds``)."""
    if manifest is None:  # any record of the method counts
        have = {(r["split"], r["image_id"], r["method"], None) for r in records}
        seeds: dict[str, list[int | None]] = {m: [None] for m in config.methods}
    else:
        have = {(r["split"], r["image_id"], r["method"], r.get("seed")) for r in records}
        seeds = {m: expected_seeds(manifest, m) for m in config.methods}
    return all((split, i, m, seed) in have for split, ids in expected.items() for i in ids for m in config.methods
               for seed in seeds[m])


def compact_records(out_dir: Path, manifest: dict[str, Any]) -> int:
    """Rewrite ``records.jsonl`` with only its current records (:func:`current_records`, the last
    one per (split, image, method, seed)), atomically, when it holds others; returns how many lines went.
    Called with the run folder locked, after the records are closed."""
    path = out_dir / "records.jsonl"
    if not path.exists():
        return 0
    records = read_records(path, default_split=manifest.get("config", {}).get("split", "test"),
                           default_seed=legacy_seeds(manifest))
    keep = current_records(records, manifest)
    with open(path, "rb") as handle:
        lines = sum(1 for line in handle if line.strip())
    if lines == len(keep):
        return 0
    rewrite_records(path, keep)
    return lines - len(keep)


def mark_done(out_dir: Path, complete: bool) -> None:
    """The ``done`` marker says every (split, image, method) has a current record; it goes when one
    is missing again (a method recomputed after its identity changed, a new method added)."""
    if complete:
        write_text_atomic(out_dir / "done", "complete\n")
    else:
        (out_dir / "done").unlink(missing_ok=True)


