"""``wsl_bench.evaluation.bench`` at the tiny size: the figures it reports are present and consistent."""

from __future__ import annotations

import pytest
import torch

from wsl_bench.evaluation.bench import conv_ceiling, count_gflop, format_bench, run_bench


def test_count_gflop_of_a_known_convolution():
    x, w = torch.zeros(1, 8, 10, 10), torch.zeros(4, 8, 3, 3)
    assert count_gflop(lambda: torch.nn.functional.conv2d(x, w, padding=1)) == pytest.approx(2 * 4 * 8 * 9 * 100 / 1e9)


def test_conv_ceiling_small():
    ceiling = conv_ceiling(repeats=2, size=16, channels=32)
    assert ceiling["best"] == max(ceiling["nchw"], ceiling["channels_last"]) > 0


@pytest.mark.slow
def test_run_bench_reports_every_figure():
    results = run_bench(["gmic", ("glam", {"fast": False})], size=(256, 160), repeats=2, ceiling_shape=(32, 16))
    assert [r["method"] for r in results] == ["gmic", "glam"] and results[1]["options"] == "fast=False"
    for r in results:
        assert 0 < r["median_s"] <= r["p90_s"] + 1e-12
        assert r["gflop"] > 0 and r["achieved_gflops"] == pytest.approx(r["gflop"] / r["median_s"])
        assert r["fraction_of_ceiling"] == pytest.approx(r["achieved_gflops"] / r["ceiling_gflops"])
        assert r["peak_memory_mb"] > 0 and r["image_size"] == [256, 160]
    # GLAM's stride-1 ResNet-34 local module costs far more than GMIC's six small ResNet-18 patches
    assert results[1]["gflop"] > results[0]["gflop"]
    table = format_bench(results)
    assert "conv ceiling" in table and "glam [fast=False]" in table


@pytest.mark.parametrize("name", ["glam", "gmic"])
def test_fast_path_flops_are_counted(name):
    # the fused oneDNN convolutions of the fast path are registered with the FLOP counter; the only
    # saving is the local stem run on one channel instead of three identical ones (at the published
    # strides: with derived ones the pre-activation BatchNorms, which the fast path runs as depthwise
    # convolutions the counter sees, run on larger maps and outweigh that saving)
    import wsl_bench

    x = torch.randn(1, 1, 256, 160)
    options = {"image_size": (256, 160), "geometry": "pixels"}
    fast = count_gflop(lambda: wsl_bench.create_method(name, **options).predict(x))
    plain = count_gflop(lambda: wsl_bench.create_method(name, fast=False, **options).predict(x))
    assert 0.9 * plain < fast <= plain
