"""The difficulty sweep: the same methods at several conspicuity levels of the synthetic set (issue 23 §3).

``wsl-bench sweep`` runs one ordinary run per level (:func:`wsl_bench.pipeline.run`, the same machinery
as ``wsl-bench run``) into ``OUT/<level>/``, with ``--dataset-option conspicuity=<level>``: each level
folder is resumable, has its own report, and its methods train their own checkpoints, found again in
the checkpoint cache by a second sweep (the level is part of the dataset's description, so of every
cache key). It then measures each level's conspicuity on its evaluated images
(:mod:`wsl_bench.datasets.conspicuity`, kept in ``OUT/<level>/conspicuity.json``) and writes the sweep
report (:mod:`wsl_bench.report.sweep`): ``sweep.md``, ``sweep.csv`` and ``sweep.png``/``.pdf``.

:func:`rebuild` writes the sweep report again from the level folders alone (their records, and the
conspicuity files, remeasured only where missing or made for other images).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from wsl_bench.atomic_io import write_json_atomic
from wsl_bench.datasets.conspicuity import lesion_contrasts, lesion_percentiles, measure_image
from wsl_bench.datasets.synthetic_generator import CONSPICUITY_LEVELS
from wsl_bench.evaluation.harness import RunConfig, RunSummary
from wsl_bench.presets import get_preset
from wsl_bench.registry import METHODS, load_builtins
from wsl_bench.saliency import CLASSES

SWEEP_METHODS: tuple[str, ...] = ("glam", "gmic", "cam", "gradcam++", "intensity", "centre_prior", "fsl", "supervised")
"""The default methods of a sweep: the flagship, the simplest learned method and an explainer of it, the
two baselines that set the floor, and the supervised reference points (``fsl``, ``supervised``), which
join only where the registry has them (:func:`default_sweep_methods`)."""

LEVEL_OPTION = "conspicuity"
"""The synthetic dataset's option a sweep sets per level."""

FIXED_BY_LEVEL = ("conspicuity", "lesion_contrast")
"""Dataset options a sweep refuses: the level sets them (a fixed contrast would make every level alike)."""

CONSPICUITY_FILE = "conspicuity.json"
"""Each level folder's measured conspicuity (written by the sweep, read by its report)."""


class SweepError(ValueError):
    """A sweep the user asked for that cannot run as given (the command line prints it, exit 2)."""


@dataclass(frozen=True)
class SweepSpec:
    """What a sweep runs: the run settings every level shares, and the levels.

    Attributes:
        methods: method names, as ``RunConfig.methods``.
        levels: conspicuity levels, most conspicuous first (:data:`CONSPICUITY_LEVELS` order).
        preset, seed, device, image_size, batch_size, loader_workers: as ``wsl-bench run``'s.
        dataset_options: further synthetic-set options every level shares (never the level's own).
    """

    methods: tuple[str, ...]
    levels: tuple[str, ...]
    preset: str = "cpu"
    seed: int = 0
    device: str = "cpu"
    image_size: tuple[int, int] | None = None
    batch_size: int = 1
    loader_workers: int | None = None
    dataset_options: tuple[tuple[str, Any], ...] = field(default=())

    def config(self, level: str) -> RunConfig:
        """The run of one level: the synthetic set at ``level``, evaluated on test, τ chosen on val."""
        options = dict(self.dataset_options) | {LEVEL_OPTION: level}
        return RunConfig(methods=self.methods, dataset="synthetic", preset=self.preset, seed=self.seed,
                         device=self.device, image_size=self.image_size, batch_size=self.batch_size,
                         loader_workers=self.loader_workers, dataset_options=tuple(sorted(options.items())))


def default_sweep_methods() -> list[str]:
    """:data:`SWEEP_METHODS` that the registry knows (``fsl`` and ``supervised`` once they are registered)."""
    load_builtins()
    return [name for name in SWEEP_METHODS if name in METHODS]


def parse_levels(spec: str | None) -> tuple[str, ...]:
    """``"real,obvious"`` → the named levels, most conspicuous first; ``None`` or empty → every level.

    Raises:
        SweepError: an unknown level (naming the known ones) or fewer than two levels.
    """
    if not spec or not spec.strip():
        return tuple(CONSPICUITY_LEVELS)
    names = [name.strip() for name in spec.split(",") if name.strip()]
    unknown = [name for name in names if name not in CONSPICUITY_LEVELS]
    if unknown:
        raise SweepError(f"--levels: unknown conspicuity level {unknown[0]!r}; known levels, most conspicuous first: "
                         f"{', '.join(CONSPICUITY_LEVELS)}")
    levels = tuple(name for name in CONSPICUITY_LEVELS if name in names)
    if len(levels) < 2:
        raise SweepError(f"--levels: a sweep needs at least two levels, got {', '.join(levels)}")
    return levels


def check_dataset(dataset: str, dataset_options: Sequence[tuple[str, Any]]) -> None:
    """A sweep varies the synthetic set's conspicuity: any other dataset, or a level fixed by hand, is refused.

    Raises:
        SweepError: naming the flag.
    """
    if dataset != "synthetic":
        raise SweepError(f"--dataset {dataset}: a sweep runs on the synthetic dataset only (its conspicuity levels "
                         "are what it varies)")
    fixed = [key for key, _ in dataset_options if key in FIXED_BY_LEVEL]
    if fixed:
        raise SweepError(f"--dataset-option {fixed[0]}: the sweep sets it per level (choose levels with --levels)")


def level_line(index: int, spec: SweepSpec, folder: Path) -> str:
    """``level 2/4: real (contrast ×0.35) -> OUT/real``: printed before a level starts."""
    level = spec.levels[index]
    return (f"level {index + 1}/{len(spec.levels)}: {level} (contrast ×{CONSPICUITY_LEVELS[level].contrast:g}) "
            f"-> {folder}")


# -- the measured conspicuity of a level ----------------------------------------------------------------------
def _median(values: np.ndarray) -> float | None:
    return float(np.median(values)) if len(values) else None


def measure_level(config: RunConfig) -> dict[str, Any]:
    """Median lesion contrast and percentile of the run's evaluated images, per class and over both.

    Args:
        config: a level's run (the synthetic set at one conspicuity level).

    Returns:
        ``{"dataset": describe(), "images": n, "classes": {cls: {"lesions", "contrast_median",
        "percentile_median"}}, "all": {...}}`` (medians ``None`` where a class has no lesion).
    """
    from wsl_bench.pipeline import open_dataset

    dataset = open_dataset(config)
    measured: dict[str, list] = {cls: [] for cls in CLASSES}
    ids = dataset.ids()
    for sample_id in ids:
        item = dataset.raw(sample_id)  # the generated uint16 image: the measures' own units
        for cls in CLASSES:
            if item.masks[cls].any():
                measured[cls] += measure_image(item.image_u16, item.masks[cls])

    def summary(measures: list) -> dict[str, Any]:
        return {"lesions": len(measures), "contrast_median": _median(lesion_contrasts(measures)),
                "percentile_median": _median(lesion_percentiles(measures))}

    return {"dataset": json.loads(json.dumps(dataset.describe())), "images": len(ids),
            "classes": {cls: summary(measured[cls]) for cls in CLASSES},
            "all": summary([m for cls in CLASSES for m in measured[cls]])}


def ensure_measured(config: RunConfig, folder: Path) -> dict[str, Any]:
    """The level's measured conspicuity from ``folder/conspicuity.json``, measured (and written) when the
    file is missing or was made for other images (another seed, size or generator version)."""
    from wsl_bench.pipeline import open_dataset

    path = folder / CONSPICUITY_FILE
    wanted = json.loads(json.dumps(open_dataset(config).describe()))  # opening generates nothing
    if path.exists():
        try:
            stored = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            stored = None
        if isinstance(stored, dict) and stored.get("dataset") == wanted:
            return stored
    measured = measure_level(config)
    write_json_atomic(path, measured)
    return measured


# -- running ---------------------------------------------------------------------------------------------------
@dataclass
class SweepResult:
    """What :func:`run_sweep` did: each level's run summary, and the sweep report's folder."""

    summaries: dict[str, RunSummary]
    report: Path

    @property
    def failed(self) -> int:
        return sum(s.failed for s in self.summaries.values())


def run_sweep(spec: SweepSpec, out: str | Path, progress: bool = True, retry_failed: bool = False,
              stream: TextIO | None = None, echo: Callable[[str], None] = print) -> SweepResult:
    """Run every level of ``spec`` into ``out/<level>`` (resuming what is there), then write the sweep report.

    Args:
        spec: the methods, levels and shared run settings.
        out: the sweep folder.
        progress: each run's overall bar (its plan is printed either way).
        retry_failed: as ``wsl-bench run --retry-failed``.
        stream: where each level's line, plan and bar go (default stderr).
        echo: where each level's closing summary goes (default print, stdout).

    Raises:
        RunConfigMismatch: a level folder holds a run with other settings.
    """
    from tqdm.contrib.logging import logging_redirect_tqdm

    from wsl_bench.pipeline import run
    from wsl_bench.run_progress import RunProgress, summary_lines

    stream = stream or sys.stderr
    out = Path(out)
    get_preset(spec.preset)
    summaries: dict[str, RunSummary] = {}
    for index, level in enumerate(spec.levels):
        folder = out / level
        config = spec.config(level)
        print(level_line(index, spec, folder), file=stream, flush=True)
        started = time.perf_counter()
        header = (f"wsl-bench run: {len(config.methods)} methods on synthetic/{config.split} at conspicuity {level} "
                  f"(preset {config.preset}, device {config.device}) -> {folder}")
        tracker = RunProgress(stream, bars=progress, header=header)
        try:
            with logging_redirect_tqdm():
                summary = run(config, folder, progress=progress, retry_failed=retry_failed, tracker=tracker)
        finally:
            tracker.close()
        ensure_measured(config, folder)
        summaries[level] = summary
        evaluated = [name for name, counts in summary.statuses.items() if "skipped" not in counts]
        skipped = [name for name, counts in summary.statuses.items() if counts.get("skipped")]
        for line in summary_lines(summary.trained, summary.reused_checkpoints, evaluated, summary.computed,
                                  summary.reused, summary.failed, skipped, time.perf_counter() - started):
            echo(f"{level}: {line}")
    return SweepResult(summaries, write_report(out))


def level_folders(out: str | Path) -> list[tuple[str, Path]]:
    """The sweep folder's levels: ``(level, folder)`` for each ``out/*/`` run of the synthetic set at a
    named conspicuity level, most conspicuous first.

    Raises:
        SweepError: ``out`` holds no such run, or runs made with other settings (preset, seed, size...).
    """
    out = Path(out)
    found: list[tuple[str, Path, dict[str, Any]]] = []
    for path in sorted(out.glob("*/manifest.json")):
        try:
            config = json.loads(path.read_text(encoding="utf-8")).get("config") or {}
        except (OSError, ValueError):
            continue
        level = dict(config.get("dataset_options") or ()).get(LEVEL_OPTION)
        if config.get("dataset") == "synthetic" and level in CONSPICUITY_LEVELS:
            found.append((level, path.parent, config))
    if not found:
        raise SweepError(f"{out}: no level folder (a run of the synthetic set with --dataset-option conspicuity=LEVEL "
                         "in OUT/<level>/): run `wsl-bench sweep --out` there first")

    def shared(config: dict[str, Any]) -> dict[str, Any]:
        options = {k: v for k, v in config.get("dataset_options") or () if k != LEVEL_OPTION}
        return {k: v for k, v in config.items() if k not in ("methods", "dataset_options")} | {"options": options}

    _, first_folder, first = found[0]
    for _, folder, config in found[1:]:
        if shared(config) != shared(first):
            differing = sorted(k for k in set(shared(config)) | set(shared(first))
                               if shared(config).get(k) != shared(first).get(k))
            raise SweepError(f"{folder} and {first_folder} were run with other settings ({', '.join(differing)}): "
                             "one sweep folder holds one sweep")
    levels = [level for level, _, _ in found]
    if len(set(levels)) != len(levels):
        raise SweepError(f"{out}: two folders hold the same level ({', '.join(levels)})")
    order = list(CONSPICUITY_LEVELS)
    return sorted(((level, folder) for level, folder, _ in found), key=lambda pair: order.index(pair[0]))


def _level_config(folder: Path) -> RunConfig:
    """The run configuration a level folder's manifest records."""
    config = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))["config"]
    return RunConfig(methods=tuple(config.get("methods") or ()), dataset=config["dataset"], split=config["split"],
                     preset=config["preset"], seed=int(config["seed"]),
                     image_size=tuple(config["image_size"]) if config.get("image_size") else None,
                     dataset_options=tuple((k, v) for k, v in config.get("dataset_options") or ()))


def write_report(out: str | Path) -> Path:
    """Write ``sweep.md``, ``sweep.csv`` and ``sweep.png``/``.pdf`` in ``out`` from every level folder in it
    (a sweep run and ``--report`` write the same report).

    Returns:
        ``out``.
    """
    from wsl_bench.report.sweep import LevelRun, build_sweep_report

    runs = [LevelRun(level, folder, ensure_measured(_level_config(folder), folder))
            for level, folder in level_folders(out)]
    return build_sweep_report(runs, Path(out))


rebuild = write_report
"""``wsl-bench sweep --report OUT``: the sweep report again, from the level folders alone."""
