"""GMIC at small sizes: contract, scaling, batching, fast engine, training, classifier view, variants."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from model_helpers import random_images, randomise_batchnorm

import wsl_bench
from wsl_bench.methods.gmic import PUBLISHED_GMIC_MODELS, GmicConfig, GmicMethod, GmicNetwork
from wsl_bench.weights import WeightsNotFoundError

TINY = (256, 160)




def images(n: int, size=TINY, seed: int = 0) -> torch.Tensor:
    return random_images(n, size, seed)


@pytest.fixture(scope="module")
def tiny() -> GmicMethod:
    method = GmicMethod(image_size=TINY)
    randomise_batchnorm(method.network())
    return method


def test_registered_with_variants():
    names = set(wsl_bench.list_methods("gmic*"))
    assert {"gmic", "gmic.m1", "gmic.m2", "gmic.m3", "gmic.m4", "gmic.m5"} <= names


def test_variants_carry_published_hyperparameters(monkeypatch, tmp_path):
    assert [PUBLISHED_GMIC_MODELS[f"m{i}"][1] for i in range(1, 6)] == [0.02, 0.03, 0.03, 0.05, 0.1]
    monkeypatch.delenv("WSL_BENCH_WEIGHTS_DIR", raising=False)
    for i in range(1, 6):
        with pytest.raises(WeightsNotFoundError, match=f"sample_model_{i}.p.*github.com/nyukat/GMIC"):
            wsl_bench.create_method(f"gmic.m{i}", image_size=TINY)
    # with a file supplied, the variant's top-t, β and learning rate are the published ones
    torch.save(GmicNetwork(GmicConfig(image_size=TINY)).state_dict(), tmp_path / "sample_model_4.p")
    method = wsl_bench.create_method("gmic.m4", image_size=TINY, weights=str(tmp_path / "sample_model_4.p"))
    beta, top_t, lr = PUBLISHED_GMIC_MODELS["m4"]
    assert (method.config.percent_t, method.training_config.beta, method.training_config.learning_rate) == (
        top_t,
        beta,
        lr,
    )


@pytest.mark.parametrize("geometry", ["pixels", "scaled"])
@pytest.mark.parametrize("size", [(256, 160), (736, 480)])
def test_runs_at_preset_sizes(size, geometry):
    method = GmicMethod(image_size=size, geometry=geometry)
    out = method.predict(images(1, size))
    out.validate(1)
    assert method.config.patch_size[0] == round(256 * size[0] / 2944)
    h, w = out.maps.shape[-2:]
    # the final stage: 1/64 of the input with the published strides, 2^r times finer with r factors
    # of two taken out (scaled geometry: 46×30 cells at every size)
    gained = 2**method.config.stride_reductions
    assert (geometry == "pixels") == (gained == 1)
    assert abs(h - size[0] * gained / 64) <= 1 and abs(w - size[1] * gained / 64) <= 1
    loc = out.extras["patch_locations"]
    assert loc.shape == (1, 6, 2) and loc.dtype == torch.int64
    attention = out.extras["patch_attention"]
    assert attention.shape == (1, 6)
    torch.testing.assert_close(attention.sum(dim=1), torch.ones(1))
    for key in ("y_global", "y_local"):
        assert out.extras[key].shape == (1, 2)
    # distinct windows: each search zeroes its window, so six different corners on a 4×3+ map
    assert len({tuple(rc) for rc in loc[0].tolist()}) == 6


def test_published_configuration_is_default():
    config = GmicConfig()
    assert config.patch_size == (256, 256) and config.num_patches == 6 and config.percent_t == 0.02


def test_batch_of_two_equals_two_batches_of_one(tiny):
    x = images(2, seed=1)
    both = tiny.forward(x)
    for i in range(2):
        one = tiny.forward(x[i : i + 1])
        assert torch.equal(both.patch_locations[i], one.patch_locations[0])
        for name in ("saliency_map", "y_global", "y_local", "y_fusion", "patch_attention"):
            torch.testing.assert_close(getattr(both, name)[i], getattr(one, name)[0], atol=1e-5, rtol=0)


def test_fast_engine_matches_plain_network(tiny):
    x = images(2, seed=2)
    fast = tiny.forward(x)
    tiny.fast = False
    try:
        plain = tiny.forward(x)
    finally:
        tiny.fast = True
    assert torch.equal(fast.patch_locations, plain.patch_locations)
    for name in ("saliency_map", "y_global", "y_local", "y_fusion", "patch_attention"):
        torch.testing.assert_close(getattr(fast, name), getattr(plain, name), atol=1e-4, rtol=0)


def test_predict_keeps_no_graph(tiny):
    out = tiny.predict(images(1, seed=3))
    for t in [out.maps, out.scores, *out.extras.values()]:
        assert not t.requires_grad and t.grad_fn is None


def test_bf16_mode_close_to_fp32(tiny):
    x = images(1, seed=4)
    ref = tiny.forward(x)
    bf16 = GmicMethod(image_size=TINY, precision="bf16")
    bf16.network().load_state_dict(tiny.network().state_dict())
    out = bf16.forward(x)
    assert out.saliency_map.dtype == torch.float32
    assert (out.saliency_map - ref.saliency_map).abs().max() < 0.05


@pytest.mark.slow
def test_training_loss_backward():
    method = GmicMethod(image_size=TINY)
    net = method.network()
    net.train()
    loss = method.training_loss(images(2, seed=5), torch.tensor([[1.0, 0.0], [0.0, 0.0]]))
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    for module in (net.ds_net.first_conv, net.dn_resnet.conv1, net.mil_attn_U, net.fusion_dnn):
        assert module.weight.grad is not None and module.weight.grad.abs().sum() > 0


def test_l1_term_weighted_by_beta(tiny):
    x, y = images(1, seed=6), torch.tensor([[0.0, 1.0]])
    tiny.network().eval()  # BatchNorm statistics as in forward()
    saved = tiny.training_config
    losses = []
    try:
        for beta in (0.0, 10.0):
            tiny.training_config = replace(saved, beta=beta)
            with torch.no_grad():
                losses.append(tiny.training_loss(x, y))
    finally:
        tiny.training_config = saved
    saliency = tiny.forward(x).saliency_map
    torch.testing.assert_close(losses[1] - losses[0], 10.0 * saliency.abs().mean(), atol=1e-4, rtol=1e-4)


def test_classifier_view(tiny):
    module, target = tiny.classifier()
    assert target is tiny.network().ds_net.layer_list[-1][-1]
    tiny.network().eval()
    x = images(2, seed=7)
    logits = module(x)
    assert logits.shape == (2, 2)
    torch.testing.assert_close(torch.sigmoid(logits), tiny.forward(x).y_global, atol=1e-4, rtol=0)


def test_bad_options():
    with pytest.raises(TypeError, match="unknown GMIC hyper-parameter.*percent_k"):
        GmicMethod(image_size=TINY, percent_k=0.1)
    with pytest.raises(ValueError, match="percent_t"):
        GmicMethod(image_size=TINY, percent_t=0)


def test_no_host_round_trip_in_forward():
    with torch.device("meta"):
        net = GmicNetwork(GmicConfig()).eval()
        out = net(torch.empty(2, 1, 2944, 1920))
    assert out.saliency_map.shape == (2, 2, 46, 30) and out.patches.shape == (2, 6, 256, 256)
    assert out.y_fusion.shape == (2, 2)


@pytest.mark.slow
def test_conformance():
    from wsl_bench.testing import check_method

    check_method("gmic")
