"""The orchestrator owns "create with merged options, then train or reuse": every command asks it."""

from __future__ import annotations

import json

import pytest
import torch
import torch.distributed as dist

from wsl_bench import cli, pipeline
from wsl_bench.evaluation.harness import RunConfig
from wsl_bench.training.distributed import DistContext


@pytest.mark.slow
def test_run_train_and_a_sharded_run_ask_one_owner_for_the_same_training_identity(toy_dataset, tmp_path, monkeypatch):
    monkeypatch.setenv("WSL_BENCH_CACHE", str(tmp_path / "cache"))
    asked: list[tuple[str, str, str]] = []
    real = pipeline.training_job
    caller = {"now": ""}

    def spy(method, config, **overrides):
        job = real(method, config, **overrides)
        asked.append((caller["now"], method.name, job.key))
        return job

    monkeypatch.setattr(pipeline, "training_job", spy)
    config = RunConfig(methods=("cam", "gradcam"), dataset="toy", preset="tiny")

    caller["now"] = "run"
    pipeline.run(config, tmp_path / "run", progress=False, write_report=False)
    caller["now"] = "train"
    assert cli.main(["train", "--method", "cam", "--dataset", "toy", "--preset", "tiny",
                     "--out", str(tmp_path / "train"), "--no-progress"]) == 0
    caller["now"] = "sharded"
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        pipeline.run_sharded(config, tmp_path / "sharded", DistContext(0, 1, 0, "gloo"), progress=False)
    finally:
        dist.destroy_process_group()

    keys = {(who, name): key for who, name, key in asked}
    assert {who for who, _, _ in asked} == {"run", "train", "sharded"}
    # cam and the explainer of cam (gradcam) share one checkpoint; every path computes the same key
    assert len(set(keys.values())) == 1, keys
    assert json.loads((tmp_path / "train" / "key.json").read_text())["key"] == keys[("run", "cam")]
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["checkpoints"]["cam"]["cache_key"] == keys[("run", "cam")]


def test_an_explainer_runs_on_its_classifier_method_and_its_identity_follows_that_training(toy_dataset):
    """The orchestrator creates the classifier method an explainer explains with the run's options of
    it, keys its training as the classifier's own run does, and builds the explainer on its classifier."""
    from wsl_bench.evaluation.identity import method_code_files

    config = RunConfig(methods=("cam", "gradcam"), dataset="toy", preset="tiny")
    data = {"test": {"toy": 1}}
    explainer, cam = pipeline.create_run_method("gradcam", config), pipeline.create_run_method("cam", config)
    assert cam.trainee is cam.method and explainer.trainee.name == "cam"
    assert not explainer.method.trainable and explainer.method.model is explainer.trainee.classifier()[0]
    identity = pipeline.run_identity(explainer, config, data, "toy")
    assert identity["training"] == pipeline.training_job(cam.trainee, config).key
    files = {p.name for p in method_code_files(explainer.method, related=(explainer.trainee,))}
    assert {"gradcam.py", "explainers.py", "cam.py"} <= files  # the classifier's code counts as the explainer's
    # an option of the classifier given to the explainer retrains the classifier: the explainer's identity follows
    wider = RunConfig(methods=("gradcam",), dataset="toy", preset="tiny",
                      method_options=(("gradcam", (("width", 0.125), ("memory_budget_mb", 64))),))
    other = pipeline.create_run_method("gradcam", wider)
    assert other.method.memory_budget_mb == 64 and other.trainee.config.width == 0.125
    changed = pipeline.run_identity(other, wider, data, "toy")
    assert changed["training"] != identity["training"] and changed["options"] != identity["options"]


@pytest.mark.slow
def test_a_network_trained_in_this_process_is_evaluated_in_the_layout_a_cached_run_loads(
    toy_dataset, tmp_path, monkeypatch
):
    """bfloat16 CPU training switches the network to channels-last (faster oneDNN kernels); its
    convolutions round differently, so the trainer hands it back contiguous at the end of ``fit``, as a
    cached run builds it, or a first and a cached run's records differ in the last bit (measured:
    CAM's PxAP 0.120993 against 0.120994 before this)."""
    from wsl_bench.training import trainer as trainer_module

    monkeypatch.setenv("WSL_BENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(trainer_module, "uses_amp", lambda *args: True)  # what a bf16-capable CPU does
    seen_during_training = []
    real_loop = trainer_module.Trainer._loop

    def spy(self, *args, **kwargs):
        seen_during_training.append(any(p.dim() == 4 and p.is_contiguous(memory_format=torch.channels_last)
                                        and not p.is_contiguous() for p in self.network.parameters()))
        return real_loop(self, *args, **kwargs)

    monkeypatch.setattr(trainer_module.Trainer, "_loop", spy)
    config = RunConfig(methods=("cam",), dataset="toy", preset="tiny")
    run_method = pipeline.create_run_method("cam", config)
    pipeline.ensure_trained(run_method.trainee, config, progress=False)
    assert seen_during_training == [True]  # the trainer did switch the layout
    convolutions = [p for p in run_method.trainee.network().parameters() if p.dim() == 4]
    assert convolutions and all(p.is_contiguous() for p in convolutions)
