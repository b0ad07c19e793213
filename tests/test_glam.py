"""GLAM at small sizes: contract, scaling, batching, fast engine, training, classifier view."""

from __future__ import annotations

import pytest
import torch
from model_helpers import random_images, randomise_batchnorm

import wsl_bench
from wsl_bench.methods.glam import GlamConfig, GlamMethod, GlamNetwork
from wsl_bench.weights import WeightsNotFoundError

TINY = (256, 160)




def images(n: int, size=TINY, seed: int = 0) -> torch.Tensor:
    return random_images(n, size, seed)


@pytest.fixture(scope="module")
def tiny() -> GlamMethod:
    method = GlamMethod(image_size=TINY, num_patches=2)
    randomise_batchnorm(method.network())
    return method


def test_registered_with_variants():
    assert {"glam", "glam.sep", "glam.joint"} <= set(wsl_bench.list_methods("glam*"))
    assert isinstance(wsl_bench.create_method("glam", image_size=TINY), GlamMethod)


@pytest.mark.slow
@pytest.mark.parametrize("geometry", ["pixels", "scaled"])
@pytest.mark.parametrize("size", [(256, 160), (736, 480)])
def test_runs_at_preset_sizes(size, geometry):
    method = GlamMethod(image_size=size, geometry=geometry)
    x = images(1, size)
    out = method.predict(x)
    out.validate(1)
    patch = method.config.patch_size[0]
    assert patch == round(512 * size[0] / 2944)
    assert out.maps.shape == (1, 2, *size)
    assert ((out.maps >= 0) & (out.maps <= 1)).all() and ((out.scores >= 0) & (out.scores <= 1)).all()
    loc = out.extras["patch_locations"]
    assert loc.shape == (1, 1, 2) and loc.dtype == torch.int64
    assert 0 <= loc[0, 0, 0] <= size[0] and 0 <= loc[0, 0, 1] <= size[1]
    # global map: the stage-3 resolution, 1/16 of the input with the published strides, 2^r times finer
    # with r factors of two taken out (scaled geometry: 184×120 cells at 2944×1920 and 736×480 alike)
    gained = 2**method.config.stride_reductions
    assert (geometry == "pixels") == (gained == 1)
    h, w = out.extras["global_map"].shape[-2:]
    assert abs(h - size[0] * gained / 16) <= 1 and abs(w - size[1] * gained / 16) <= 1
    local_stride = max(1, 4 // gained)  # the local trunk's stem loses its stride-4 downsampling first
    side = -(-patch // local_stride)
    assert out.extras["local_maps"].shape == (1, 1, 2, side, side)


@pytest.mark.slow
def test_fused_map_is_half_the_global_map_outside_the_patches(tiny):
    """Why GLAM's Dice at τ = 0.5 counts only lesion pixels inside its patches: the published fusion
    averages the pasted local maps (zero outside the windows) with the global map (a sigmoid, < 1)."""
    out = tiny.predict(images(2, seed=3))
    ph, pw = tiny.config.patch_size
    outside = torch.ones_like(out.maps, dtype=torch.bool)
    for n, corners in enumerate(out.extras["patch_locations"].tolist()):
        for r, c in corners:
            outside[n, :, max(r, 0):r + ph, max(c, 0):c + pw] = False
    assert outside.any() and (~outside).any()
    global_up = torch.nn.functional.interpolate(out.extras["global_map"], size=TINY, mode="nearest")
    torch.testing.assert_close(out.maps[outside], global_up[outside] / 2)
    assert (out.maps[outside] < 0.5).all()


def test_published_configuration_is_default():
    config = GlamMethod(image_size=TINY).config
    assert GlamConfig().patch_size == (512, 512) and GlamConfig().image_size == (2944, 1920)
    assert (config.num_patches, config.percent_k, config.local_percent_k) == (1, 0.03, 0.3)


@pytest.mark.slow
def test_batch_of_two_equals_two_batches_of_one(tiny):
    x = images(2, seed=1)
    both = tiny.forward(x)
    for i in range(2):
        one = tiny.forward(x[i : i + 1])
        assert torch.equal(both.patch_locations[i], one.patch_locations[0])
        torch.testing.assert_close(both.saliency_map[i], one.saliency_map[0], atol=1e-5, rtol=0)
        torch.testing.assert_close(both.glob.y_global[i], one.glob.y_global[0], atol=1e-5, rtol=0)
        torch.testing.assert_close(both.local_maps[i], one.local_maps[0], atol=1e-5, rtol=0)


@pytest.mark.slow
def test_fast_engine_matches_plain_network(tiny):
    x = images(2, seed=2)
    fast = tiny.forward(x)
    tiny.fast = False
    try:
        plain = tiny.forward(x)
    finally:
        tiny.fast = True
    assert torch.equal(fast.patch_locations, plain.patch_locations)
    for name in ("saliency_map_global", "cam_level1", "cam_level2", "cam_level3", "y_global"):
        torch.testing.assert_close(getattr(fast.glob, name), getattr(plain.glob, name), atol=1e-4, rtol=0)
    torch.testing.assert_close(fast.local_maps, plain.local_maps, atol=1e-4, rtol=0)
    torch.testing.assert_close(fast.saliency_map, plain.saliency_map, atol=1e-4, rtol=0)


@pytest.mark.slow
def test_engine_follows_weight_changes(tiny):
    x = images(1, seed=3)
    before = tiny.forward(x).glob.y_global.clone()
    net = tiny.network()
    saved = net.global_network.postprocess_module.gn_conv_1.weight.detach().clone()
    with torch.no_grad():
        net.global_network.postprocess_module.gn_conv_1.weight.mul_(-3)
    try:
        after = tiny.forward(x).glob.y_global
        assert not torch.allclose(before, after)
    finally:
        with torch.no_grad():
            net.global_network.postprocess_module.gn_conv_1.weight.copy_(saved)
    torch.testing.assert_close(tiny.forward(x).glob.y_global, before)


def test_predict_keeps_no_graph_and_training_flag(tiny):
    net = tiny.network()
    net.train()
    out = tiny.predict(images(1, seed=4))
    assert net.training  # restored
    for t in [out.maps, out.scores, *out.extras.values()]:
        assert not t.requires_grad and t.grad_fn is None
    net.eval()


@pytest.mark.slow
def test_bf16_mode_close_to_fp32(tiny):
    x = images(1, seed=5)
    ref = tiny.forward(x)
    bf16 = GlamMethod(image_size=TINY, num_patches=2, precision="bf16")
    bf16.network().load_state_dict(tiny.network().state_dict())
    out = bf16.forward(x)
    assert out.saliency_map.dtype == torch.float32
    assert (out.glob.y_global - ref.glob.y_global).abs().max() < 0.05


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["joint", "global", "local"])
def test_training_loss_backward(stage):
    method = GlamMethod(image_size=TINY, stage=stage)
    net = method.network()
    net.train()
    loss = method.training_loss(images(2, seed=6), torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    global_grad = net.global_network.postprocess_module.gn_conv_1.weight.grad
    local_grad = net.detection_network.gn_conv_last.weight.grad
    assert (global_grad is not None and global_grad.abs().sum() > 0) == (stage in ("joint", "global"))
    assert (local_grad is not None and local_grad.abs().sum() > 0) == (stage in ("joint", "local"))
    assert all(b.grad is None for b in net.buffers())


@pytest.mark.slow
def test_global_loss_prefers_the_predicted_labels():
    method = GlamMethod(image_size=TINY, stage="global")
    x = images(2, seed=7)
    likely = (method.forward(x, fuse=False).glob.y_global > 0.5).float()
    method.network().eval()  # same BatchNorm statistics as the forward pass
    with torch.no_grad():
        assert method.training_loss(x, likely) < method.training_loss(x, 1 - likely)


@pytest.mark.slow
def test_classifier_view(tiny):
    module, target = tiny.classifier()
    assert any(target is m for m in tiny.network().modules())
    seen = []
    handle = target.register_forward_hook(lambda mod, inp, out: seen.append(out.shape))
    tiny.network().eval()
    x = images(2, seed=8)
    try:
        logits = module(x)
    finally:
        handle.remove()
    assert logits.shape == (2, 2) and seen and seen[0][1] == 256
    y = tiny.forward(x).glob.y_global
    torch.testing.assert_close(torch.sigmoid(logits), y, atol=1e-4, rtol=0)
    logits.sum().backward()  # gradients flow for Grad-CAM style explainers


def test_variant_without_weights_says_where_to_get_them(monkeypatch):
    monkeypatch.delenv("WSL_BENCH_WEIGHTS_DIR", raising=False)
    with pytest.raises(WeightsNotFoundError, match="model_sep.ckpt") as info:
        wsl_bench.create_method("glam.sep", image_size=TINY)
    assert "github.com/nyukat/GLAM" in str(info.value) and "WSL_BENCH_WEIGHTS_DIR" in str(info.value)


def test_variant_with_empty_weights_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("WSL_BENCH_WEIGHTS_DIR", str(tmp_path))
    with pytest.raises(WeightsNotFoundError, match=f"not found in .*{tmp_path.name}"):
        wsl_bench.create_method("glam.joint", image_size=TINY)


def test_bad_options_and_inputs():
    with pytest.raises(TypeError, match="unknown GLAM hyper-parameter.*top_t.*known:.*num_patches"):
        GlamMethod(image_size=TINY, top_t=0.1)
    with pytest.raises(ValueError, match="precision"):
        GlamMethod(image_size=TINY, precision="fp8")
    with pytest.raises(ValueError, match="stage"):
        GlamMethod(image_size=TINY, stage="third")
    method = GlamMethod(image_size=TINY)
    with pytest.raises(ValueError, match=r"glam: images must be an N×1×H×W tensor, got \(1, 3, 256, 160\)"):
        method.predict(torch.zeros(1, 3, 256, 160))


def test_no_host_round_trip_in_forward():
    # on the meta device any .item()/.cpu()/.numpy() would fail: the whole forward stays on device
    with torch.device("meta"):
        net = GlamNetwork(GlamConfig(num_patches=3)).eval()
        out = net(torch.empty(2, 1, 2944, 1920))
    assert out.saliency_map.shape == (2, 2, 2944, 1920) and out.patches.shape == (2, 3, 512, 512)


@pytest.mark.slow
def test_conformance():
    from wsl_bench.testing import check_method

    check_method("glam")
