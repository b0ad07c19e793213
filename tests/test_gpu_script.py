"""benchmarks/gpu_full.py: the GPU experiment's steps, run on the CPU at the tiny preset."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from wsl_bench import create_dataset
from wsl_bench.presets import get_preset

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_full.py"


def load_script():
    spec = importlib.util.spec_from_file_location("gpu_full", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_gpu_script_steps_on_cpu_at_the_tiny_preset(tmp_path):
    script = load_script()
    out = tmp_path / "out"
    code = script.main(["--preset", "tiny", "--device", "cpu", "--methods", "random,intensity", "--workers", "2",
                        "--work", str(tmp_path / "work"), "--out", str(out)])
    assert code == 0
    # step 1: the folder export holds exactly the built-in synthetic images of the preset's splits
    tiny = get_preset("tiny")
    folder = create_dataset("folder", root=str(tmp_path / "work" / "data"), split="test", image_size=tiny.image_size)
    builtin = create_dataset("synthetic", split="test", n=tiny.n_test, seed=0, image_size=tiny.image_size)
    assert folder.ids() == builtin.ids()
    first = folder.ids()[0]
    assert abs(folder.get(first).image - builtin.get(first).image).max() < 1e-3
    # steps 2 and 3: the run's report, manifest and records are copied, and the summary has every row
    for name in ("report/results.csv", "manifest.json", "records.jsonl", "summary.md"):
        assert (out / name).exists(), name
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["dataset"] == "folder" and manifest["config"]["preset"] == "tiny"
    results = pd.read_csv(out / "report" / "results.csv")
    summary = (out / "summary.md").read_text()
    assert "generation" in summary and "training and evaluation" in summary
    for _, row in results.iterrows():
        assert f"| {row['method']} | {row['class']} |" in summary
    assert len(results) == 4


def test_gpu_script_refuses_cuda_without_a_gpu(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the refusal is for machines without one")
    assert load_script().main(["--work", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "no CUDA device" in capsys.readouterr().err


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (CI has none)")
def test_gpu_script_trains_and_evaluates_on_cuda_at_the_tiny_preset(tmp_path):
    out = tmp_path / "out"
    assert load_script().main(["--preset", "tiny", "--device", "cuda", "--methods", "cam,random", "--workers", "2",
                               "--work", str(tmp_path / "work"), "--out", str(out)]) == 0
    results = pd.read_csv(out / "report" / "results.csv")
    assert set(results["method"]) == {"cam", "random"} and results["peak_memory_mb"].notna().all()
