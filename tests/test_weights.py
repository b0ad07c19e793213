"""One weights loader (wsl_bench.weights.load_weights) behind every path that reads a checkpoint,
and one compatibility rule with messages that name the file."""

from __future__ import annotations

import re

import pytest
import torch

import wsl_bench
from wsl_bench import weights
from wsl_bench.methods.gmic import GmicMethod
from wsl_bench.training import cache, trainer

SIZE = (96, 64)


class Stop(Exception):
    """Raised by the spy to end a training run as soon as it loaded its starting weights."""


@pytest.fixture
def calls(monkeypatch):
    """Record every call of the one loader (the real loader still runs), by patching the module attribute."""
    real = weights.load_weights
    seen: list[dict] = []

    def spy(module, path, method, config, own_only=False):
        seen.append({"path": str(path), "method": method, "own_only": own_only})
        return real(module, path, method, config, own_only=own_only)

    monkeypatch.setattr(weights, "load_weights", spy)
    return seen


def own_checkpoint(tmp_path, **options) -> tuple[GmicMethod, str]:
    """A GMIC checkpoint in the project's format (what the trainer writes as best.pt / final.pt)."""
    method = GmicMethod(image_size=SIZE, seed=3, **options)
    with torch.no_grad():
        for p in method.network().parameters():
            p.add_(0.01)
    identity = method.training_identity()
    path = tmp_path / "best.pt"
    metadata = weights.CheckpointMetadata(identity["method"], identity["config"], "toy", 3, {"val_loss": 0.5},
                                          {"epochs_completed": 2})
    weights.save_checkpoint(path, method.network(), metadata)
    return method, str(path)


def assert_same_weights(a, b):
    for key, value in a.network().state_dict().items():
        assert torch.equal(b.network().state_dict()[key], value), key


def test_published_weights_go_through_the_one_loader(tmp_path, calls):
    path = tmp_path / "sample_model_1.p"
    torch.save(GmicMethod(image_size=SIZE, seed=9).network().state_dict(), path)
    method = wsl_bench.create_method("gmic.m1", image_size=SIZE, weights=str(path))
    assert calls == [{"path": str(path), "method": "gmic.m1", "own_only": False}]
    assert method.weights_info["kind"] == "published" and method.weights_loaded


def test_the_cache_goes_through_the_one_loader(tmp_path, calls):
    trained, path = own_checkpoint(tmp_path)
    method = GmicMethod(image_size=SIZE, seed=0)
    meta = cache.load_method_weights(method, path)
    assert calls == [{"path": path, "method": "gmic", "own_only": True}]
    assert meta["epochs_completed"] == 2 and meta["metrics"] == {"val_loss": 0.5} and meta["seed"] == 3
    assert_same_weights(trained, method)
    assert not method.network().training
    assert not method.weights_loaded  # cached weights are the run's own, not user-supplied ones


def test_a_stage_starting_from_a_checkpoint_goes_through_the_one_loader(tmp_path, monkeypatch, calls):
    trained, path = own_checkpoint(tmp_path)
    method = GmicMethod(image_size=SIZE, seed=0)
    spy = weights.load_weights

    def load_then_stop(*args, **kwargs):
        spy(*args, **kwargs)
        raise Stop  # the weights are in: no need to train

    monkeypatch.setattr(weights, "load_weights", load_then_stop)
    train_set = wsl_bench.create_dataset("synthetic", split="train", image_size=SIZE, n=2)
    run = trainer.Trainer(method, trainer.TrainConfig(epochs=1, batch_size=2), tmp_path / "stage", progress=False,
                          init_from=path)
    with pytest.raises(Stop):
        run.fit(train_set)
    assert calls == [{"path": path, "method": "gmic", "own_only": True}]
    assert_same_weights(trained, method)


def test_refuses_a_checkpoint_of_another_configuration_naming_the_file(tmp_path):
    _, path = own_checkpoint(tmp_path)
    other = dict(image_size=SIZE, percent_t=0.1)
    named = re.escape(str(path))
    expected = rf"{named}: checkpoint was saved with another gmic configuration \(percent_t: checkpoint .*, method 0\.1"
    with pytest.raises(weights.CheckpointError, match=expected):  # a user's weights= file
        wsl_bench.create_method("gmic", weights=path, **other)
    with pytest.raises(weights.CheckpointError, match=expected):  # the training cache
        cache.load_method_weights(GmicMethod(**other), path)
    with pytest.raises(ValueError, match=expected):  # a training stage's starting checkpoint
        trainer.load_network_weights(GmicMethod(**other), path)
    with pytest.raises(weights.CheckpointError, match=rf"{named}: checkpoint of method 'gmic' cannot be"):
        wsl_bench.create_method("glam", image_size=(256, 160), weights=path)


def test_training_settings_do_not_make_a_checkpoint_incompatible(tmp_path):
    # the "training" entry of a configuration shaped the weights but does not change the network
    trained, path = own_checkpoint(tmp_path)
    method = GmicMethod(image_size=SIZE, learning_rate=1e-3)
    assert method.config_dict()["training"] != trained.config_dict()["training"]
    trainer.load_network_weights(method, path)
    assert_same_weights(trained, method)


def test_trainer_and_cache_refuse_published_files(tmp_path):
    path = tmp_path / "sample_model_1.p"
    torch.save(GmicMethod(image_size=SIZE).network().state_dict(), path)
    with pytest.raises(ValueError, match=rf"{re.escape(str(path))}: not a wsl-bench checkpoint"):
        cache.load_method_weights(GmicMethod(image_size=SIZE), path)


def test_published_files_must_use_every_key_with_equal_shapes(tmp_path):
    state = GmicMethod(image_size=SIZE).network().state_dict()
    key = next(iter(state))
    path = tmp_path / "short.p"
    torch.save({k: v for k, v in state.items() if k != key}, path)
    named = re.escape(str(path))
    with pytest.raises(weights.CheckpointError, match=rf"{named}: weights do not fit .*1 missing key\(s\): {key}"):
        GmicMethod(image_size=SIZE, weights=str(path))
    torch.save({**state, key: torch.zeros(1)}, path)
    with pytest.raises(weights.CheckpointError, match=rf"{named}: .*mis-shaped key\(s\): {key} \(file \(1,\)"):
        GmicMethod(image_size=SIZE, weights=str(path))
