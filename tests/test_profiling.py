"""Cost measurement: on CPU a method's memory is its own peak, not the process's (issue 16, item 4)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from wsl_bench.evaluation.harness import RunConfig
from wsl_bench.evaluation.profiling import measure, memory_kind
from wsl_bench.evaluation.records import read_records
from wsl_bench.pipeline import run
from wsl_bench.registry import METHODS
from wsl_bench.saliency import SaliencyMethod, SaliencyOutput

pytestmark = pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(),
                                reason="the CPU measure needs Linux's resettable peak resident set")

BIG_MB = 200


class BigAllocation(SaliencyMethod):
    """Test method: touches a 200 MiB tensor inside every ``predict`` call, then returns flat maps."""

    map_range = "probability"

    def predict(self, images):
        scratch = torch.ones(BIG_MB * 2**20 // 4)  # written, so every page is resident
        level = float(scratch[-1]) / 2
        del scratch
        n = images.shape[0]
        return SaliencyOutput(torch.full((n, 2, 8, 8), level), torch.full((n, 2), 0.5))


def test_a_call_reports_what_it_allocates_not_what_the_process_holds():
    held = torch.ones(300 * 2**20 // 4)  # the process holds 300 MiB more than before, throughout
    with measure(torch.device("cpu")) as idle:
        torch.zeros(8).sum()
    with measure(torch.device("cpu"), release_free=True) as busy:
        torch.ones(BIG_MB * 2**20 // 4).sum()
    assert idle.peak_memory_mb is not None and idle.peak_memory_mb < 20
    assert idle.process_peak_mb > 300  # the process's peak is still there for whoever wants it
    assert BIG_MB * 0.9 < busy.peak_memory_mb < BIG_MB * 1.5
    del held


def test_intensity_reports_far_less_memory_than_a_method_that_allocates(toy_dataset, tmp_path):
    METHODS.register("big-allocation", BigAllocation)
    try:
        out = tmp_path / "run"
        config = RunConfig(methods=("big-allocation", "intensity"), dataset="toy", preset="tiny",
                           validation_split=None)
        run(config, out, progress=False, write_report=False)
    finally:
        METHODS.unregister("big-allocation")
    records = [r for r in read_records(out / "records.jsonl") if r["status"] == "ok"]
    peak = {m: max(r["peak_memory_mb"] for r in records if r["method"] == m) for m in ("big-allocation", "intensity")}
    # intensity runs after the big method in the same process: a process-wide peak would be the larger
    assert peak["big-allocation"] > BIG_MB * 0.9, peak
    assert peak["intensity"] < 20, peak


def test_the_manifest_says_what_the_memory_column_means():
    kind = memory_kind(torch.device("cpu"))
    assert "own peak" in kind and "process peak" not in kind
