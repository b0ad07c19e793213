"""Synthetic mammogram generation speed (pytest-benchmark; not part of the test suite).

Run: ``python -m pytest benchmarks/test_bench_synthetic.py --benchmark-enable``
"""

from __future__ import annotations

import itertools

import pytest

from wsl_bench.datasets.synthetic_generator import generate

pytest.importorskip("pytest_benchmark")


@pytest.mark.parametrize("size", [(256, 160), (736, 480), (2944, 1920)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_generate_one_image(benchmark, size):
    indices = itertools.count()
    image = benchmark(lambda: generate(0, "test", next(indices), size))
    assert image.image_u16.shape == size
