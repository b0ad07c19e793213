"""GLAM against the published model's outputs on the reference input (../shared/reference: reference
outputs of the published code, not distributed, docs/published_reference.md; without them these tests skip
and ``wsl-bench verify glam --published PATH`` checks against your own clone instead).

Every stored output is compared, float32 on CPU, within 1e-4 absolute (patch locations exactly),
for the fast inference engine (the default) and the plain network. Also: a published-format
checkpoint written with ``torch.save`` loads and reproduces the outputs, and damaged checkpoints
fail with messages naming the damaged key.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from model_helpers import REFERENCE_DIR, load_npz, skip_without_reference

from wsl_bench.methods.glam import GlamMethod
from wsl_bench.weights import CheckpointError, read_npz_state_dict

WEIGHTS = REFERENCE_DIR / "glam_official_weights_seed0.npz"
OUTPUTS = REFERENCE_DIR / "glam_reference_outputs_seed0.npz"
TOL = 1e-4

pytestmark = skip_without_reference("GLAM", WEIGHTS, OUTPUTS)


@pytest.fixture(scope="module")
def reference() -> dict[str, np.ndarray]:
    return load_npz(OUTPUTS)


@pytest.fixture(scope="module")
def image(reference) -> torch.Tensor:
    return torch.from_numpy(reference["input"].astype(np.float32))


@pytest.fixture(scope="module", params=[True, False], ids=["fast", "plain"])
def outputs(request, image):
    method = GlamMethod(weights=str(WEIGHTS), fast=request.param)
    return method.forward(image)


def assert_close(name: str, got: torch.Tensor, want: np.ndarray, tol: float = TOL) -> None:
    got = got.detach().float().cpu().numpy()
    assert got.shape == want.shape, f"{name}: shape {got.shape}, reference {want.shape}"
    err = float(np.abs(got - want.astype(np.float32)).max())
    assert err <= tol, f"{name}: largest difference {err:.3g} > {tol}"


@pytest.mark.slow
def test_probabilities(outputs, reference):
    assert_close("y_global", outputs.glob.y_global, reference["y_global"])
    assert_close("y_cam_logits", outputs.glob.y_cam_logits, reference["y_cam_logits"])


@pytest.mark.parametrize("name", ["cam_level1", "cam_level2", "cam_level3", "cam_mean", "saliency_map_global"])
@pytest.mark.slow
def test_global_maps(outputs, reference, name):
    assert_close(name, getattr(outputs.glob, name), reference[name])


def test_patch_locations_exact(outputs, reference):
    got = outputs.patch_locations.cpu().numpy()
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, reference["patch_locations"].astype(np.int64))


def test_patches(outputs, reference):
    # the reference stores patches as float16: compare at float16 resolution of the input values
    assert_close("patches", outputs.patches, reference["patches"].astype(np.float32), tol=0)


def test_local_maps(outputs, reference):
    assert_close("raw_local_cam", outputs.local_maps[:, 0], reference["raw_local_cam"])


def test_fused_map(outputs, reference):
    fused = outputs.saliency_map
    assert fused.shape == (1, 2, 2944, 1920)
    r, c = (int(v) for v in outputs.patch_locations[0, 0])
    assert_close(
        "saliency_map_patch_region", fused[:, :, r : r + 512, c : c + 512], reference["saliency_map_patch_region"]
    )
    assert_close("saliency_map_stride8", fused[:, :, ::8, ::8], reference["saliency_map_stride8"])


# --------------------------------------------------------------------------------------------
# Published-format checkpoints
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def published_state() -> dict[str, torch.Tensor]:
    return read_npz_state_dict(WEIGHTS)


@pytest.mark.slow
def test_published_checkpoint_reproduces_reference_through_predict(tmp_path, published_state, image, reference):
    # a file written with torch.save in the published key names, loaded by the method, run through
    # the saliency contract (predict) and compared with the published outputs
    path = tmp_path / "model_sep.ckpt"
    torch.save(published_state, path)
    method = GlamMethod(weights=str(path))
    assert method.weights_info["kind"] == "published"
    out = method.predict(image)
    out.validate(1)
    assert out.map_range == "probability" and not out.maps.requires_grad
    assert out.maps.shape == (1, 2, 2944, 1920)
    assert_close("scores = y_global", out.scores, reference["y_global"])
    assert_close("global_map", out.extras["global_map"], reference["saliency_map_global"])
    assert_close("local_maps", out.extras["local_maps"][:, 0], reference["raw_local_cam"])
    locations = out.extras["patch_locations"]
    np.testing.assert_array_equal(locations.numpy(), reference["patch_locations"].astype(np.int64))
    r, c = (int(v) for v in locations[0, 0])
    assert_close("maps in the patch", out.maps[:, :, r : r + 512, c : c + 512], reference["saliency_map_patch_region"])
    assert_close("maps at stride 8", out.maps[:, :, ::8, ::8], reference["saliency_map_stride8"])


def test_variant_finds_file_in_weights_dir(tmp_path, monkeypatch, published_state):
    torch.save(published_state, tmp_path / "model_joint.ckpt")
    monkeypatch.setenv("WSL_BENCH_WEIGHTS_DIR", str(tmp_path))
    from wsl_bench import create_method
    method = create_method("glam.joint", image_size=(256, 160))
    loaded = method.network().state_dict()
    key = "detection_network.dn_resnet.layer4.2.conv2.weight"
    assert torch.equal(loaded[key], published_state[key])


def test_missing_key_is_named(tmp_path, published_state):
    state = dict(published_state)
    removed = "global_network.postprocess_module.gn_conv_2.weight"
    del state[removed]
    path = tmp_path / "model_sep.ckpt"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="missing") as info:
        GlamMethod(weights=str(path), image_size=(256, 160))
    assert removed in str(info.value) and str(path) in str(info.value)


def test_misshaped_key_is_named(tmp_path, published_state):
    state = dict(published_state)
    changed = "detection_network.gn_conv_last.weight"
    state[changed] = torch.zeros(3, 512, 1, 1)
    path = tmp_path / "model_sep.ckpt"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="mis-shaped") as info:
        GlamMethod(weights=str(path), image_size=(256, 160))
    assert changed in str(info.value) and "(3, 512, 1, 1)" in str(info.value)


def test_unexpected_key_is_named(tmp_path, published_state):
    state = dict(published_state)
    state["detection_network.extra.weight"] = torch.zeros(1)
    path = tmp_path / "model_sep.ckpt"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="unexpected") as info:
        GlamMethod(weights=str(path), image_size=(256, 160))
    assert "detection_network.extra.weight" in str(info.value)
