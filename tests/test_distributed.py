"""torchrun with 2 CPU processes (gloo): data-parallel training equals one process, sharded evaluation
equals one process. Both launch the real ``python -m wsl_bench`` command line under
``python -m torch.distributed.run`` (torchrun)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from wsl_bench.evaluation.records import read_records

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with the gloo backend is not available")

# float64 makes the comparison a test of the algebra (loss weighting, gradient averaging, synchronised
# BatchNorm) rather than of float32 rounding: in float32 the gradients of the two runs differ by up to
# ~1e-3 relative on the synthetic images (BatchNorm over flat backgrounds amplifies rounding), and
# Adam's first step, lr·g/|g|, turns any sign flip of a near-zero gradient into a 2·lr weight change.
FLOAT64_CLI = textwrap.dedent('''
    import sys
    import torch
    torch.set_default_dtype(torch.float64)
    from wsl_bench.cli import main
    sys.exit(main(sys.argv[1:]))
''')


def environment(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE",
            "WSL_BENCH_CACHE": str(tmp_path / "cache")}


def torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *args]


def check(command: list[str], env: dict[str, str]) -> str:
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def test_without_torchrun_a_process_stays_alone_and_a_cuda_rank_needs_its_own_gpu(monkeypatch):
    """The quick loop's check of the process-group entry (the two torchrun tests below are slow)."""
    from wsl_bench.training.distributed import SINGLE_PROCESS, init_from_env

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    alone = init_from_env("cpu")
    assert alone is SINGLE_PROCESS and alone.is_main and not alone.enabled and alone.backend is None
    tensor = torch.ones(3)
    assert alone.all_reduce_sum(tensor) is tensor and torch.equal(tensor, torch.ones(3))  # nothing to sum with
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", str(torch.cuda.device_count()))  # one past the GPUs this machine has
    with pytest.raises(ValueError, match=f"LOCAL_RANK {torch.cuda.device_count()} but only"):
        init_from_env("cuda")
    assert not dist.is_initialized()  # refused before joining any process group


@pytest.mark.slow
def test_one_step_on_two_ranks_equals_one_process(tmp_path):
    """One Adam step on a global batch of 5 images (3 on rank 0, 2 on rank 1), `cam` with BatchNorm."""
    script = tmp_path / "float64_cli.py"
    script.write_text(FLOAT64_CLI)
    args = ["train", "--method", "cam", "--preset", "tiny", "--epochs", "1", "--batch-size", "5",
            "--max-images", "5", "--no-progress"]
    env = environment(tmp_path)
    out = check(torchrun(str(script), *args, "--out", str(tmp_path / "ddp")), env)
    assert "on 2 processes (gloo)" in out
    check([sys.executable, str(script), *args, "--out", str(tmp_path / "single")], env)

    ddp = torch.load(tmp_path / "ddp" / "final.pt", weights_only=True)
    single = torch.load(tmp_path / "single" / "final.pt", weights_only=True)
    torch.set_default_dtype(torch.float64)
    try:
        from wsl_bench.methods.cam import CAM
        from wsl_bench.presets import get_preset

        tiny = get_preset("tiny")
        initial = CAM(image_size=tiny.image_size, seed=0, **tiny.method_options["cam"]).network().state_dict()
    finally:
        torch.set_default_dtype(torch.float32)
    assert ddp["meta"]["epochs_completed"] == single["meta"]["epochs_completed"] == 1
    moved = 0.0
    for key, value in single["state_dict"].items():
        assert value.dtype in (torch.float64, torch.int64), key
        difference = (ddp["state_dict"][key].double() - value.double()).abs().max().item()
        assert difference <= 1e-5, f"{key}: the two runs differ by {difference:.3g}"
        moved = max(moved, (value.double() - initial[key].double()).abs().max().item())
    assert moved > 1e-4, "the step must change the weights for the comparison to mean anything"
    # BatchNorm statistics are those of the global batch (not of a rank's part): running stats agree
    tracked = "backbone.layer_list.0.0.bn1.num_batches_tracked"
    assert torch.equal(ddp["state_dict"][tracked], single["state_dict"][tracked])
    # the logged loss is the global batch's mean on both
    losses = []
    for run in ("ddp", "single"):
        with open(tmp_path / run / "log.csv") as handle:
            trained = [row for row in csv.DictReader(handle) if row["epoch"] != "0"]  # epoch 0: the start
            losses.append(float(trained[0]["train_loss"]))
    assert abs(losses[0] - losses[1]) < 1e-9


@pytest.mark.slow
def test_sharded_run_merges_into_the_single_process_records_and_report(tmp_path):
    env = environment(tmp_path)  # one cache: the distributed run loads the cam checkpoint the first one trained
    args = ["-m", "wsl_bench", "run", "--methods", "cam,intensity,centre_prior,random", "--preset", "tiny",
            "--no-progress"]
    check([sys.executable, *args, "--out", str(tmp_path / "single")], env)
    out = check(torchrun(*args, "--out", str(tmp_path / "sharded")), env)
    assert "2 processes" in out

    sharded = tmp_path / "sharded"
    assert not list(sharded.glob("records.rank*.jsonl")), "rank files must be merged away"
    assert (sharded / "done").exists()

    def comparable(path: Path) -> list[dict]:
        lines = [json.loads(line) for line in path.read_text().splitlines()]
        return [{k: v for k, v in r.items() if k not in ("time_s", "stage_s", "peak_memory_mb")} for r in lines]

    single_records, sharded_records = (comparable(run / "records.jsonl") for run in (tmp_path / "single", sharded))
    # tiny preset: 8 test and 8 validation images per method, each shard scoring half of each split
    assert len(single_records) == 4 * (8 + 8) and all(r["status"] == "ok" for r in single_records)
    assert sum(r["split"] == "val" for r in single_records) == 4 * 8
    assert sharded_records == single_records  # same records, same order
    assert len(read_records(sharded / "records.jsonl")) == 64

    def metrics(path: Path) -> list[dict]:
        timing = ("time_median_s", "time_p90_s", "end_to_end_median_s", "peak_memory_mb")
        with open(path) as handle:
            return [{k: v for k, v in row.items() if k not in timing} for row in csv.DictReader(handle)]

    single_results, sharded_results = (metrics(run / "report" / "results.csv") for run in (tmp_path / "single",
                                                                                              sharded))
    assert len(single_results) == 8 and "pxap" in single_results[0] and single_results[0]["dice_val_tau"]
    assert sharded_results == single_results
