"""Inference benchmarks of GLAM and GMIC under pytest-benchmark (not collected by the default test run).

Run::

    pytest benchmarks --benchmark-enable                 # 2944×1920, float32 and bfloat16, CPU
    WSL_BENCH_BENCH_SIZE=736x480 pytest benchmarks --benchmark-enable
    WSL_BENCH_BENCH_DEVICE=cuda pytest benchmarks --benchmark-enable

Each benchmark times ``method.predict`` on one standardised random image at batch 1 (5 rounds
after one warm-up round, CUDA-synchronised) and records GFLOP per image and the achieved GFLOP/s in
``extra_info``. ``test_bench_table`` runs :func:`wsl_bench.evaluation.bench.run_bench` once for the plain and
fast paths together, interleaved, and prints the table with the machine's convolution ceiling.
"""

from __future__ import annotations

import os

import pytest
import torch

import wsl_bench
from wsl_bench.evaluation.bench import count_gflop, print_bench, run_bench

SIZE = tuple(int(v) for v in os.environ.get("WSL_BENCH_BENCH_SIZE", "2944x1920").lower().split("x"))
DEVICE = os.environ.get("WSL_BENCH_BENCH_DEVICE", "cpu")

if DEVICE.startswith("cuda") and not torch.cuda.is_available():
    pytest.skip("WSL_BENCH_BENCH_DEVICE asks for CUDA but none is available", allow_module_level=True)


def _sync() -> None:
    if DEVICE.startswith("cuda"):
        torch.cuda.synchronize()


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("name", ["glam", "gmic"])
def test_predict(benchmark, name, precision):
    method = wsl_bench.create_method(name, device=DEVICE, image_size=SIZE, precision=precision)
    image = torch.randn(1, 1, *SIZE, generator=torch.Generator().manual_seed(0)).to(DEVICE)
    plain = wsl_bench.create_method(name, device=DEVICE, image_size=SIZE, fast=False)
    gflop = count_gflop(lambda: plain.predict(image))

    def run():
        method.predict(image)
        _sync()

    benchmark.pedantic(run, rounds=5, warmup_rounds=1, iterations=1)
    benchmark.extra_info.update(
        {"gflop": gflop, "size": list(SIZE), "precision": precision, "threads": torch.get_num_threads()}
    )
    if benchmark.stats is not None:
        benchmark.extra_info["gflops_at_median"] = gflop / benchmark.stats.stats.median


def test_bench_table(capsys):
    specs = [("gmic", {"fast": False}), "gmic", ("glam", {"fast": False}), "glam"]
    results = run_bench(specs, device=DEVICE, size=SIZE, precision="fp32", repeats=5)
    with capsys.disabled():
        print()
        print_bench(results)
    plain_gmic, fast_gmic, plain_glam, fast_glam = results
    assert fast_gmic["gflop"] == pytest.approx(plain_gmic["gflop"])
    assert fast_glam["median_s"] > 0 and plain_glam["median_s"] > 0
