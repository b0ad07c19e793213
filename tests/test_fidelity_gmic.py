"""GMIC against the published model's outputs on the reference input (../shared/reference: reference
outputs of the published code, not distributed, docs/published_reference.md; without them these tests skip
and ``wsl-bench verify gmic --published PATH`` checks against your own clone instead).

Every stored output is compared, float32 on CPU, within 1e-4 absolute (patch locations exactly),
for the fast inference engine (the default) and the plain network; published-format checkpoints
load through the same mapping, and damaged ones fail naming the damaged key.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from model_helpers import REFERENCE_DIR, load_npz, skip_without_reference

from wsl_bench.methods.gmic import GmicMethod
from wsl_bench.weights import CheckpointError, read_npz_state_dict

WEIGHTS = REFERENCE_DIR / "gmic_official_weights_seed0.npz"
OUTPUTS = REFERENCE_DIR / "gmic_reference_outputs_seed0.npz"
TOL = 1e-4

pytestmark = skip_without_reference("GMIC", WEIGHTS, OUTPUTS)


@pytest.fixture(scope="module")
def reference() -> dict[str, np.ndarray]:
    return load_npz(OUTPUTS)


@pytest.fixture(scope="module")
def image(reference) -> torch.Tensor:
    return torch.from_numpy(reference["input"].astype(np.float32))


@pytest.fixture(scope="module", params=[True, False], ids=["fast", "plain"])
def outputs(request, image):
    return GmicMethod(weights=str(WEIGHTS), fast=request.param).forward(image)


def assert_close(name: str, got: torch.Tensor, want: np.ndarray, tol: float = TOL) -> None:
    got = got.detach().float().cpu().numpy()
    assert got.shape == want.shape, f"{name}: shape {got.shape}, reference {want.shape}"
    err = float(np.abs(got - want.astype(np.float32)).max())
    assert err <= tol, f"{name}: largest difference {err:.3g} > {tol}"


@pytest.mark.parametrize("name", ["y_fusion", "y_global", "y_local", "saliency_map"])
def test_outputs(outputs, reference, name):
    assert_close(name, getattr(outputs, name), reference[name])


def test_patch_attention(outputs, reference):
    assert_close("patch_attns", outputs.patch_attention, reference["patch_attns"])
    torch.testing.assert_close(outputs.patch_attention.sum(dim=1), torch.ones(1))


def test_patch_locations_exact(outputs, reference):
    got = outputs.patch_locations.cpu().numpy()
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, reference["patch_locations"].astype(np.int64))


def test_patches(outputs, reference):
    assert_close("patches", outputs.patches, reference["patches"].astype(np.float32), tol=0)


@pytest.fixture(scope="module")
def published_state() -> dict[str, torch.Tensor]:
    return read_npz_state_dict(WEIGHTS)


def test_published_checkpoint_reproduces_reference_through_predict(tmp_path, published_state, image, reference):
    path = tmp_path / "sample_model_1.p"
    torch.save(published_state, path)
    out = GmicMethod(weights=str(path)).predict(image)
    out.validate(1)
    assert out.map_range == "probability" and out.maps.shape == (1, 2, 46, 30)
    assert_close("maps", out.maps, reference["saliency_map"])
    assert_close("scores = y_fusion", out.scores, reference["y_fusion"])
    assert_close("y_global", out.extras["y_global"], reference["y_global"])
    assert_close("y_local", out.extras["y_local"], reference["y_local"])
    assert_close("patch_attention", out.extras["patch_attention"], reference["patch_attns"])
    np.testing.assert_array_equal(out.extras["patch_locations"].numpy(), reference["patch_locations"].astype(np.int64))


def test_dataparallel_prefix_is_accepted(tmp_path, published_state):
    path = tmp_path / "sample_model_1.p"
    torch.save({f"module.{k}": v for k, v in published_state.items()}, path)
    method = GmicMethod(weights=str(path), image_size=(256, 160))
    assert torch.equal(method.network().state_dict()["fusion_dnn.bias"], published_state["fusion_dnn.bias"])


def test_variant_carries_published_top_t(tmp_path, monkeypatch, published_state):
    torch.save(published_state, tmp_path / "sample_model_5.p")
    monkeypatch.setenv("WSL_BENCH_WEIGHTS_DIR", str(tmp_path))
    from wsl_bench import create_method
    method = create_method("gmic.m5", image_size=(256, 160))
    assert method.config.percent_t == 0.1
    assert method.weights_info["kind"] == "published"


def test_missing_key_is_named(tmp_path, published_state):
    state = dict(published_state)
    del state["mil_attn_w.weight"]
    path = tmp_path / "sample_model_1.p"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"1 missing key\(s\): mil_attn_w.weight"):
        GmicMethod(weights=str(path), image_size=(256, 160))


def test_misshaped_key_is_named(tmp_path, published_state):
    state = dict(published_state)
    state["fusion_dnn.weight"] = torch.zeros(2, 767)
    path = tmp_path / "sample_model_1.p"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"fusion_dnn.weight \(file \(2, 767\), model \(2, 768\)\)"):
        GmicMethod(weights=str(path), image_size=(256, 160))
