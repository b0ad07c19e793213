"""Weights files: the project's own checkpoint format, published-format files, safety and errors."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch

import wsl_bench
from wsl_bench import weights as ck
from wsl_bench.methods.glam import GlamMethod
from wsl_bench.methods.gmic import GmicMethod

TINY = (256, 160)


def metadata_for(method, **extra) -> ck.CheckpointMetadata:
    return ck.CheckpointMetadata(
        method=method.name,
        config=method.config_dict(),
        training_data="synthetic/train, preset tiny",
        seed=method.seed,
        metrics={"val_auc_malignant": 0.75},
        extra=extra,
    )


@pytest.fixture(scope="module")
def trained_gmic(tmp_path_factory):
    """A GMIC whose weights differ from any fresh initialisation, saved in the own format."""
    method = GmicMethod(image_size=TINY, seed=11)
    with torch.no_grad():
        for p in method.network().parameters():
            p.add_(0.01)
    path = tmp_path_factory.mktemp("ckpt") / "gmic.pt"
    ck.save_checkpoint(path, method.network(), metadata_for(method, epoch=3))
    return method, path


def test_own_format_round_trip(trained_gmic):
    method, path = trained_gmic
    state, meta = ck.load_checkpoint(path)
    assert meta.method == "gmic" and meta.seed == 11 and meta.extra == {"epoch": 3}
    assert meta.metrics == {"val_auc_malignant": 0.75} and meta.training_data.startswith("synthetic")
    assert meta.config == method.config_dict()
    assert state.keys() == method.network().state_dict().keys()

    # a fresh method with another seed loads it through create_method(weights=...) and agrees exactly
    loaded = wsl_bench.create_method("gmic", image_size=TINY, seed=0, weights=str(path))
    assert loaded.weights_info["kind"] == "wsl-bench" and len(loaded.weights_info["sha256"]) == 64
    for key, value in method.network().state_dict().items():
        assert torch.equal(loaded.network().state_dict()[key], value), key
    x = torch.randn(1, 1, *TINY, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(loaded.predict(x).maps, method.predict(x).maps, atol=0, rtol=0)


def test_reads_the_trainers_checkpoint_layout(tmp_path):
    # the dictionary wsl_bench.training.trainer writes (final.pt / best.pt), built here by hand
    method = GlamMethod(image_size=TINY, seed=4)
    record = {
        "format": "wsl_bench.checkpoint/1",
        "method": "glam",
        "config": method.config_dict(),
        "state_dict": method.network().state_dict(),
        "meta": {
            "training_data": {"name": "synthetic"},
            "train_config": {"epochs": 2},
            "seed": 4,
            "metrics": {"val_loss": 0.5},
            "epochs_completed": 2,
        },
    }
    path = tmp_path / "final.pt"
    torch.save(record, path)
    state, meta = ck.load_checkpoint(path)
    assert meta.training_data == {"name": "synthetic"} and meta.seed == 4 and meta.metrics == {"val_loss": 0.5}
    assert meta.extra == {"train_config": {"epochs": 2}, "epochs_completed": 2}
    loaded = wsl_bench.create_method("glam", image_size=TINY, weights=str(path))
    assert loaded.weights_info["kind"] == "wsl-bench"
    key = "global_network.downsampling_branch.first_conv.weight"
    assert torch.equal(loaded.network().state_dict()[key], state[key])
    record["format"] = "wsl_bench.checkpoint/9"
    torch.save(record, path)
    with pytest.raises(ck.CheckpointError, match="checkpoint format 'wsl_bench.checkpoint/9'"):
        ck.load_checkpoint(path)


def test_refuses_other_method(trained_gmic):
    _, path = trained_gmic
    with pytest.raises(ck.CheckpointError, match="checkpoint of method 'gmic' cannot be loaded into 'glam'"):
        GlamMethod(image_size=TINY, weights=str(path))


def test_refuses_other_configuration(trained_gmic):
    _, path = trained_gmic
    with pytest.raises(ck.CheckpointError, match=r"image_size: checkpoint \[256, 160\], method \[736, 480\]"):
        GmicMethod(image_size=(736, 480), weights=str(path))
    with pytest.raises(ck.CheckpointError, match="percent_t"):
        wsl_bench.create_method("gmic", image_size=TINY, percent_t=0.1, weights=str(path))


def test_variant_accepts_checkpoint_of_its_family(trained_gmic):
    # a gmic checkpoint trained with m1's top-t loads into the m1 variant (same architecture and config)
    _, path = trained_gmic
    method = wsl_bench.create_method("gmic.m1", image_size=TINY, weights=str(path))
    assert method.weights_info["kind"] == "wsl-bench"


def test_atomic_save_leaves_old_file_on_failure(tmp_path, monkeypatch):
    method = GlamMethod(image_size=TINY)
    path = tmp_path / "glam.pt"
    ck.save_checkpoint(path, method.network(), metadata_for(method))
    before = path.read_bytes()

    def broken_save(obj, f, *args, **kwargs):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        ck.save_checkpoint(path, method.network(), metadata_for(method))
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["glam.pt"]  # no temporary file left behind


def test_refuses_pickled_code(tmp_path):
    marker = tmp_path / "executed"

    class Exploit:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps({"weight": Exploit()}, protocol=2))
    with pytest.raises(ck.CheckpointError, match=f"{path.name}: not a readable weights file"):
        GmicMethod(image_size=TINY, weights=str(path))
    assert not marker.exists()


def test_rejects_garbage_and_non_state_dicts(tmp_path):
    garbage = tmp_path / "garbage.p"
    garbage.write_bytes(b"\x00not a checkpoint")
    with pytest.raises(ck.CheckpointError, match="garbage.p"):
        ck.read_weights_file(garbage)
    listing = tmp_path / "list.p"
    torch.save([torch.zeros(1)], listing)
    with pytest.raises(ck.CheckpointError, match="expected a state dict"):
        ck.read_weights_file(listing)
    mixed = tmp_path / "mixed.p"
    torch.save({"a": torch.zeros(1), "b": 3}, mixed)
    with pytest.raises(ck.CheckpointError, match="not tensors: b"):
        ck.read_weights_file(mixed)


def test_load_checkpoint_refuses_published_file(tmp_path):
    path = tmp_path / "sample_model_1.p"
    torch.save({"w": torch.zeros(1)}, path)
    with pytest.raises(ck.CheckpointError, match="not a wsl-bench checkpoint"):
        ck.load_checkpoint(path)


def test_npz_state_dict_casts_float16(tmp_path):
    path = tmp_path / "weights.npz"
    np.savez(path, **{"a.weight": np.ones((2, 3), dtype=np.float16) / 3, "a.num_batches_tracked": np.array(7)})
    state = ck.read_npz_state_dict(path)
    assert state["a.weight"].dtype == torch.float32 and state["a.weight"].shape == (2, 3)
    assert state["a.weight"][0, 0].item() == float(np.float16(1 / 3))
    assert state["a.num_batches_tracked"].dtype == torch.int64 and state["a.num_batches_tracked"].shape == ()


def test_published_npz_loads_through_the_same_mapping(tmp_path):
    # a published-format state dict written as .npz (float16, like the reference files) loads too
    net = GmicMethod(image_size=TINY).network()
    arrays = {
        k: (v.numpy().astype(np.float16) if v.is_floating_point() else v.numpy()) for k, v in net.state_dict().items()
    }
    path = tmp_path / "gmic.npz"
    np.savez(path, **arrays)
    method = GmicMethod(image_size=TINY, seed=5, weights=str(path))
    key = "dn_resnet.layer3.1.conv2.weight"
    np.testing.assert_array_equal(method.network().state_dict()[key].numpy(), arrays[key].astype(np.float32))


def test_weights_path_that_does_not_exist(tmp_path):
    with pytest.raises(ck.WeightsNotFoundError, match="does not exist"):
        GlamMethod(image_size=TINY, weights=str(tmp_path / "nope.ckpt"))


def test_resolve_weights_order(tmp_path, monkeypatch):
    explicit = tmp_path / "mine.p"
    explicit.write_bytes(b"x")
    (tmp_path / "sample_model_2.p").write_bytes(b"x")
    monkeypatch.setenv(ck.WEIGHTS_DIR_ENV, str(tmp_path))
    assert ck.resolve_weights("gmic.m2", explicit, "sample_model_2.p", "src") == explicit
    assert ck.resolve_weights("gmic.m2", None, "sample_model_2.p", "src") == tmp_path / "sample_model_2.p"
    assert ck.resolve_weights("gmic", None, None, None) is None
