"""The harness end to end on a tiny in-memory dataset: files, records, resume, failures."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from wsl_bench.evaluation.figure_maps import stored_figure_images
from wsl_bench.evaluation.harness import RunConfig, RunConfigMismatch
from wsl_bench.evaluation.records import read_records
from wsl_bench.pipeline import run
from wsl_bench.registry import METHODS
from wsl_bench.report.tables import RESULT_COLUMNS, build_report
from wsl_bench.saliency import SaliencyMethod, SaliencyOutput

REQUIRED_FIELDS = {"split", "image_id", "method", "status", "error", "dice", "dice_pixels", "has_lesion", "score",
                   "label", "time_s", "peak_memory_mb", "gflops"}
# ToyDataset.counts: 6 test and 8 validation images; every method is scored on both.
N_TEST, N_VAL = 6, 8


def _config(methods, **kw):
    return RunConfig(methods=tuple(methods), dataset="toy", preset="tiny", **kw)


@pytest.mark.slow
def test_run_writes_records_manifest_and_report(toy_dataset, tmp_path):
    out = tmp_path / "run"
    summary = run(_config(["cam", "intensity", "centre_prior", "random"]), out, progress=False)
    assert summary.failed == 0 and summary.computed == 4 * (N_TEST + N_VAL)
    manifest = json.loads((out / "manifest.json").read_text())
    for key in ("schema_version", "config", "config_hash", "seed", "packages", "git", "device", "checkpoints"):
        assert key in manifest
    assert "cam" in manifest["checkpoints"] and len(manifest["checkpoints"]["cam"]["sha256"]) == 64
    everything = read_records(out / "records.jsonl")
    assert len(everything) == 4 * (N_TEST + N_VAL) and all(REQUIRED_FIELDS <= set(r) for r in everything)
    assert {r["status"] for r in everything} == {"ok"}
    assert sum(r["split"] == "val" for r in everything) == 4 * N_VAL
    assert manifest["validation"]["split"] == "val" and manifest["validation"]["reason"] is None
    records = read_records(out / "records.jsonl", split="test")
    assert len(records) == 4 * N_TEST
    lesion = [r for r in records if r["has_lesion"]["malignant"]]
    assert lesion and all(0 <= r["dice"]["malignant"] <= 1 for r in lesion)
    assert all(r["dice"]["malignant"] is None for r in records if not r["has_lesion"]["malignant"])
    assert (out / "done").exists()
    report = out / "report"
    for name in ("results.csv", "results.md", "results.tex", "details.csv", "index.html"):
        assert (report / name).stat().st_size > 0, name
    for figure in ("qualitative", "dice_boxplot", "dice_vs_lesion_size", "cost_vs_dice"):
        assert (report / f"{figure}.png").exists() and (report / f"{figure}.pdf").exists(), figure
    results = pd.read_csv(report / "results.csv")
    assert list(results.columns) == RESULT_COLUMNS
    assert len(results) == 8 and set(results["method"]) == {"cam", "intensity", "centre_prior", "random"}
    # figure maps are kept for test images only
    assert {i.split("-")[1] for i in stored_figure_images(out)} == {"test"}


@pytest.mark.slow
def test_report_from_records_alone_is_identical(toy_dataset, tmp_path):
    out = tmp_path / "run"
    run(_config(["intensity", "random"]), out, progress=False)
    rebuilt = build_report(out, tmp_path / "again")
    assert (rebuilt / "results.csv").read_bytes() == (out / "report" / "results.csv").read_bytes()


def test_rerun_resumes_and_recomputes_only_missing(toy_dataset, tmp_path):
    out = tmp_path / "run"
    config = _config(["intensity", "random"])
    run(config, out, progress=False, write_report=False)
    lines = (out / "records.jsonl").read_text().splitlines()
    total = 2 * (N_TEST + N_VAL)
    assert len(lines) == total and all('"split":"val"' in line for line in lines[-3:])
    (out / "records.jsonl").write_text("\n".join(lines[:-3]) + "\n")
    summary = run(config, out, progress=False, write_report=False)
    assert summary.computed == 3 and summary.reused == total - 3
    again = run(config, out, progress=False, write_report=False)
    assert again.computed == 0
    assert len(read_records(out / "records.jsonl")) == total


def test_methods_can_be_added_to_an_existing_run_but_config_must_match(toy_dataset, tmp_path):
    out = tmp_path / "run"
    run(_config(["intensity"]), out, progress=False, write_report=False)
    summary = run(_config(["intensity", "random"]), out, progress=False, write_report=False)
    assert summary.computed == N_TEST + N_VAL and summary.reused == N_TEST + N_VAL
    with pytest.raises(RunConfigMismatch, match="another configuration"):
        run(_config(["intensity"], seed=1), out, progress=False, write_report=False)


@pytest.mark.slow
def test_corrupt_image_is_recorded_and_the_run_goes_on(toy_dataset, tmp_path):
    toy_dataset.corrupt = {"toy-test-002"}
    out = tmp_path / "run"
    summary = run(_config(["intensity", "random"]), out, progress=False)
    assert summary.failed == 2
    records = read_records(out / "records.jsonl", split="test")
    failed = [r for r in records if r["status"] == "failed"]
    assert {r["image_id"] for r in failed} == {"toy-test-002"}
    assert all("/fake/toy-test-002.png" in r["error"] and "corrupt" in r["error"] for r in failed)
    assert sum(r["status"] == "ok" for r in records) == 2 * N_TEST - 2
    details = pd.read_csv(out / "report" / "details.csv")
    assert set(details["n_failed"]) == {1}


class NanOnBrightImages(SaliencyMethod):
    """Test method: NaN maps for one image, normal maps otherwise."""

    map_range = "probability"

    def predict(self, images):
        maps = torch.rand(images.shape[0], 2, 8, 8)
        for i, image in enumerate(images):
            if float(image[0, 5, 5]) > float(image[0, 5, 6]):  # content-dependent, like a real numerical failure
                maps[i] = float("nan")
        return SaliencyOutput(maps, torch.full((images.shape[0], 2), 0.5))


def test_nan_map_fails_that_image_only(toy_dataset, tmp_path):
    METHODS.register("nan-test", NanOnBrightImages)
    try:
        out = tmp_path / "run"
        run(_config(["nan-test"]), out, progress=False, write_report=False)
        records = read_records(out / "records.jsonl")
        failed = [r for r in records if r["status"] == "failed"]
        ok = [r for r in records if r["status"] == "ok"]
        assert failed and ok, "the toy images should include both cases"
        assert all("NaN" in r["error"] for r in failed)
    finally:
        METHODS.unregister("nan-test")


KILL_SCRIPT = textwrap.dedent('''
    import sys, time
    sys.path.insert(0, {tests!r})
    from conftest import ToyDataset
    from wsl_bench.registry import DATASETS, METHODS
    from wsl_bench.methods.baselines import IntensitySaliency
    from wsl_bench.evaluation.harness import RunConfig
    from wsl_bench.pipeline import run

    class SlowIntensity(IntensitySaliency):
        def predict(self, images):
            time.sleep(0.25)
            return super().predict(images)

    DATASETS.register("toy", ToyDataset)
    METHODS.register("slow-intensity", SlowIntensity)
    ToyDataset.counts = {{"train": 4, "val": 2, "test": 40}}
    run(RunConfig(methods=("slow-intensity",), dataset="toy", preset="tiny"), sys.argv[1], progress=False)
''')


@pytest.mark.slow
def test_killed_run_loses_at_most_one_record_and_resumes(tmp_path):
    script = tmp_path / "kill_me.py"
    script.write_text(KILL_SCRIPT.format(tests=str(Path(__file__).parent)))
    out = tmp_path / "run"
    process = subprocess.Popen([sys.executable, str(script), str(out)], env={**os.environ})
    records_file = out / "records.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline:
        if records_file.exists() and len(records_file.read_text().splitlines()) >= 5:
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    before = records_file.read_text().splitlines()
    assert 5 <= len(before) < 40, "the kill must land mid-run"
    # Resume in a fresh process with the same script: finished records are kept, the rest computed.
    subprocess.run([sys.executable, str(script), str(out)], check=True, timeout=300)
    records = read_records(records_file)
    assert len(records) == 40 + 2 and all(r["status"] == "ok" for r in records)  # 40 test, 2 validation images
    kept = [json.loads(line) for line in before if line.endswith("}")]
    after = {(r["split"], r["image_id"], r["method"]): r for r in records}
    for record in kept:
        key = (record["split"], record["image_id"], record["method"])
        assert after[key]["time_s"] == record["time_s"], "a finished record changed"
    assert (out / "done").exists()
