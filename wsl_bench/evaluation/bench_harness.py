"""Where a run's time goes: methods through the real harness, stage by stage (``wsl-bench bench --harness``).

``wsl-bench bench`` times a model alone on one image held in memory. This mode runs each method
through :func:`~wsl_bench.evaluation.harness.evaluate_method` on the first N images of a dataset (for
issue 14's target, the ``folder`` format: 16-bit PNGs on disk), exactly as ``wsl-bench run``
evaluates, with loader workers and the background writer, into a scratch run folder. Every record
keeps its stage times (``load``: the main thread waiting for the image, ``predict``, ``write``: the
main thread waiting for the previous batch's scoring and writing, and ``score``: the scoring itself,
which runs in the background beside the next ``predict``); this module reports, per method, the
median of each stage, its share of the end-to-end median (the main thread's: load wait, predict,
write wait), the harness overhead (the waits against ``predict``) and images per second, both
steady (from the per-image sums) and by the wall clock (which also holds the untimed warm-up call
and the FLOP count).

Each method reads its own images (no cross-method sample cache), so ``load`` is what a run that
cannot keep its split in memory pays. Methods get random weights, as in ``wsl-bench bench``: the
cost of a forward pass does not depend on the weights.
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from wsl_bench.data import MammogramDataset
from wsl_bench.evaluation.records import RecordWriter, read_records
from wsl_bench.paths import cache_root
from wsl_bench.saliency import SaliencyMethod

if TYPE_CHECKING:
    from wsl_bench.evaluation.harness import RunConfig

STAGES = ("load", "predict", "score", "write")
MAIN_THREAD = ("load", "predict", "write")
"""The stages the main thread pays (``score`` runs in the background thread, beside the next ``predict``)."""


@dataclass(frozen=True)
class HarnessBenchResult:
    """One method's stage medians (seconds per image) and throughput."""

    method: str
    dataset: str
    image_size: tuple[int, int]
    precision: str
    device: str
    images: int
    failed: int
    loader_workers: int
    threads: int
    stage_median_s: dict[str, float]
    end_to_end_median_s: float
    overhead_fraction: float
    images_per_s_steady: float
    images_per_s_wall: float

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["image_size"] = list(self.image_size)
        return d


def run_harness_bench(
    methods: Sequence[tuple[str, SaliencyMethod]],
    open_split: Callable[[], MammogramDataset],
    config: RunConfig,
    images: int = 8,
    out_dir: str | Path | None = None,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """Run each method on the first ``images`` images of a split through the harness.

    Args:
        methods: ``(name, method)`` pairs, built as a run builds them
            (:func:`wsl_bench.pipeline.harness_bench` does).
        open_split: opens the split to read (a fresh dataset per method: each reads its images).
        config: the run configuration the harness evaluates under (device, batch size, loader workers).
        out_dir: the scratch run folder (one sub-folder per method); ``None``: a temporary folder
            in the cache, removed afterwards.

    Returns:
        One :meth:`HarnessBenchResult.to_dict` per method, in the order given.

    Raises:
        ValueError: a method scored no image (every stage median would be undefined).
    """
    from wsl_bench.evaluation.harness import SampleCache, evaluate_method
    from wsl_bench.evaluation.loading import default_workers

    ids = open_split().ids()[:images]
    workers = config.loader_workers if config.loader_workers is not None else default_workers(config.device)
    scratch = Path(out_dir) if out_dir is not None else None
    if scratch is None:
        cache_root().mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix="bench-harness-", dir=cache_root()))
    results = []
    try:
        for name, method in methods:
            folder = scratch / name
            folder.mkdir(parents=True, exist_ok=True)
            samples = SampleCache(open_split(), budget_bytes=0)  # every method reads its images
            start = time.perf_counter()
            with RecordWriter(folder / "records.jsonl") as writer:
                evaluate_method(method, ids, samples, writer, config, folder, set(), progress=progress)
            wall = time.perf_counter() - start
            records = [r for r in read_records(folder / "records.jsonl") if r["method"] == name]
            results.append(_summarise(name, records, config, workers, wall).to_dict())
    finally:
        if out_dir is None:
            shutil.rmtree(scratch, ignore_errors=True)
    return results


def _summarise(name: str, records: list[dict[str, Any]], config: RunConfig, workers: int,
               wall: float) -> HarnessBenchResult:
    ok = [r for r in records if r["status"] == "ok"]
    if not ok:
        errors = sorted({str(r.get("error")) for r in records})[:3]
        raise ValueError(f"{name}: no image was scored ({len(records)} failed: {'; '.join(errors)})")
    per_stage = {stage: [r["time_s"] if stage == "predict" else r["stage_s"][stage] for r in ok] for stage in STAGES}
    totals = [sum(per_stage[stage][i] for stage in MAIN_THREAD) for i in range(len(ok))]
    medians = {stage: statistics.median(values) for stage, values in per_stage.items()}
    overhead = [totals[i] - per_stage["predict"][i] for i in range(len(ok))]  # load wait + write wait
    return HarnessBenchResult(
        method=name, dataset=config.dataset, image_size=tuple(config.size()),
        precision=dict(config.options_for(name)).get("precision", "fp32"),
        device=config.device, images=len(records), failed=len(records) - len(ok), loader_workers=workers,
        threads=torch.get_num_threads(), stage_median_s=medians, end_to_end_median_s=statistics.median(totals),
        overhead_fraction=statistics.median(overhead) / medians["predict"] if medians["predict"] > 0 else float("nan"),
        images_per_s_steady=len(ok) / sum(totals), images_per_s_wall=len(records) / wall,
    )


def format_harness_bench(results: Sequence[dict[str, Any]]) -> str:
    """A plain-text table: per method, each stage's median (ms per image) and share, then throughput."""
    if not results:
        return "(no results)"
    first = results[0]
    h, w = first["image_size"]
    lines = [
        f"harness on {first['dataset']} {h}×{w}, device {first['device']}, {first['precision']}, "
        f"{first['threads']} threads, {first['loader_workers']} loader workers; median ms per image (share of "
        "the end-to-end median)",
        "",
        f"{'method':<16} {'load wait':>15} {'predict':>15} {'write wait':>15} {'end-to-end':>11} {'overhead':>9} "
        f"{'score (bg)':>10} {'img/s':>6} {'img/s wall':>10}",
    ]
    for r in results:
        total = r["end_to_end_median_s"]
        medians = r["stage_median_s"]
        cells = " ".join(f"{1000 * medians[s]:>8.1f} ({medians[s] / total:>4.0%})" for s in MAIN_THREAD)
        failed = f"  ({r['failed']} of {r['images']} failed)" if r["failed"] else ""
        lines.append(f"{r['method']:<16} {cells} {1000 * total:>8.1f} ms {r['overhead_fraction']:>9.1%} "
                     f"{1000 * medians['score']:>10.1f} {r['images_per_s_steady']:>6.2f} "
                     f"{r['images_per_s_wall']:>10.2f}{failed}")
    lines += [
        "",
        "load wait: the main thread waiting for the image (loader workers read ahead); write wait: waiting for the "
        "previous batch's scoring and records, which run in a background thread beside predict (score (bg): how long "
        "that scoring took); end-to-end: load wait + predict + write wait; overhead: the median of load wait + write "
        "wait over the median predict (issue 14's target: at most 10 % for GMIC bf16 at 2944×1920 on the folder "
        "format)",
    ]
    return "\n".join(lines)
