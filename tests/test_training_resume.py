"""A training run killed with SIGKILL (twice, in two stages) and resumed ends with the same weights as
an uninterrupted run: the real ``wsl-bench train`` command in subprocesses, on the tiny preset, CPU."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from wsl_bench.methods.cam import CAM

# The child runs the real CLI. It registers a two-stage variant of `cam` (stage "features" trains the
# convolutional trunk, stage "head" the linear head, at half the learning rate) with crop-jitter
# augmentation, so one test covers stages, augmentation and resumption. With STALL_AT=k the k-th
# optimisation step of the process announces itself in a marker file and blocks, so the parent can
# SIGKILL the process at a known point (mid-epoch, between two checkpoints).
CHILD = textwrap.dedent('''
    import os, sys, time
    from pathlib import Path

    from wsl_bench import cli

    from wsl_bench.training import trainer as training
    from wsl_bench.training.augment import CropJitter
    from wsl_bench.methods.cam import CAM
    from wsl_bench.registry import METHODS

    class TwoStageCam(CAM):
        def training_stages(self):
            return (training.TrainingStage("features", trainable=("backbone",)),
                    training.TrainingStage("head", trainable=("head",), lr_factor=0.5))

        def training_augmentation(self):
            return CropJitter(8.0)

    METHODS.register("cam-two-stage")(TwoStageCam)

    stall_at, marker = int(os.environ["STALL_AT"]), Path(os.environ["STALL_MARKER"])
    original, calls = training.Trainer._train_step, [0]

    def train_step(self, *args, **kwargs):
        calls[0] += 1
        if calls[0] == stall_at:
            partial = marker.with_suffix(".partial")  # written whole, then renamed: the parent never reads half
            partial.write_text(f"{self.stage.name} epoch {self.epoch} step {self.step_in_epoch}")
            partial.rename(marker)
            time.sleep(600)
        return original(self, *args, **kwargs)

    training.Trainer._train_step = train_step
    sys.exit(cli.main(sys.argv[1:]))
''')

# width=0.25: the tiny preset's CAM width, which the subclass (registered under another name) does not inherit
ARGS = ["train", "--method", "cam-two-stage", "--preset", "tiny", "--epochs", "2", "--batch-size", "4",
        "--max-images", "16", "--checkpoint-every", "3", "--balance", "pos_weight", "--no-progress",
        "--option", "width=0.25"]
STEPS_PER_STAGE = 2 * 4  # 2 epochs of 16 images in batches of 4


def run_child(script: Path, out: Path, tmp: Path, stall_at: int, resume: bool) -> str | None:
    """Run the CLI; with ``stall_at`` > 0 SIGKILL it at that step. Returns the marker text (where it died)."""
    marker = tmp / f"marker-{stall_at}-{time.monotonic_ns()}"
    env = {**os.environ, "STALL_AT": str(stall_at), "STALL_MARKER": str(marker), "OMP_NUM_THREADS": "1",
           "OMP_WAIT_POLICY": "PASSIVE"}
    command = [sys.executable, str(script), *ARGS, "--out", str(out), *(["--resume"] if resume else [])]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    if stall_at <= 0:
        output, _ = process.communicate(timeout=300)
        assert process.returncode == 0, output.decode()
        return None
    deadline = time.time() + 300
    while not marker.exists():
        assert process.poll() is None, f"the run ended before step {stall_at}: {process.communicate()[0].decode()}"
        assert time.time() < deadline, "the run never reached the step to kill it at"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    return marker.read_text()


def log_rows(path: Path) -> list[dict[str, str]]:
    with open(path) as handle:
        return [{k: v for k, v in row.items() if k != "epoch_seconds"} for row in csv.DictReader(handle)]


def test_what_the_kill_test_relies_on_is_still_there():
    """The quick loop's check of this module (the kill-and-resume test is slow): the child compiles, the
    trainer step it stalls in exists, and CAM's network splits into the trunk and the head its two
    stages train (the parameter names the slow test's last assertions read)."""
    from wsl_bench.training import trainer as training

    compile(CHILD, "child.py", "exec")
    assert callable(training.Trainer._train_step)
    network = CAM(image_size=(256, 160), seed=0, width=0.25).network()
    assert network.get_submodule("backbone") is not None and network.get_submodule("head") is not None
    keys = network.state_dict().keys()
    assert any(k.startswith("head.") for k in keys) and any(k.startswith("backbone.") for k in keys)
    assert all(k.startswith(("head.", "backbone.")) for k in keys)


@pytest.mark.slow
def test_sigkill_twice_and_resume_gives_the_same_weights(tmp_path):
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    reference, interrupted = tmp_path / "reference", tmp_path / "interrupted"
    run_child(script, reference, tmp_path, stall_at=0, resume=False)

    # killed in stage "features" during step 6 (epoch 2, step 2): last.pt holds epoch 1's end (step 4)
    where = run_child(script, interrupted, tmp_path, stall_at=6, resume=False)
    assert where == "features epoch 1 step 1"
    assert not (interrupted / "stage-features" / "final.pt").exists()
    # resumed at step 5: calls 1-4 finish "features", call 8 is step 4 of stage "head", whose last
    # checkpoint was written after step 3 (--checkpoint-every 3)
    where = run_child(script, interrupted, tmp_path, stall_at=8, resume=True)
    assert where == "head epoch 0 step 3"
    assert (interrupted / "stage-features" / "final.pt").exists()
    assert (interrupted / "stage-head" / "last.pt").exists() and not (interrupted / "stage-head" / "final.pt").exists()
    run_child(script, interrupted, tmp_path, stall_at=0, resume=True)

    for stage in ("features", "head"):
        for name in ("final.pt", "best.pt"):
            ours = torch.load(interrupted / f"stage-{stage}" / name, weights_only=True)
            theirs = torch.load(reference / f"stage-{stage}" / name, weights_only=True)
            assert ours["state_dict"].keys() == theirs["state_dict"].keys()
            for key, value in theirs["state_dict"].items():
                assert torch.equal(ours["state_dict"][key], value), f"stage {stage} {name}: {key} differs"
        # the logs agree too (losses of resumed epochs included), wall times aside
        logs = [log_rows(folder / f"stage-{stage}" / "log.csv") for folder in (interrupted, reference)]
        # epoch 0 is the stage's starting network, validated before any step
        assert logs[0] == logs[1] and [row["epoch"] for row in logs[0]] == ["0", "1", "2"]
        assert (interrupted / f"stage-{stage}" / "curves.png").stat().st_size > 0

    # the two stages trained what they say: "features" moved the trunk (and its BatchNorm statistics) but
    # not the head; "head" changed only the head, starting from "features"' best checkpoint
    initial = CAM(image_size=(256, 160), seed=0, width=0.25).network().state_dict()
    features = torch.load(reference / "stage-features" / "best.pt", weights_only=True)["state_dict"]
    head = torch.load(reference / "stage-head" / "final.pt", weights_only=True)["state_dict"]
    for key, value in features.items():
        assert torch.equal(initial[key], value) == key.startswith("head."), key
        assert torch.equal(head[key], value) == (not key.startswith("head.")), key
