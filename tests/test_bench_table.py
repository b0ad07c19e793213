"""``wsl-bench bench``'s table: every column's header and values end at the same character (issue 16, item 8c)."""

from __future__ import annotations

import re

from wsl_bench.evaluation.bench import format_bench

COLUMNS = ("median s", "p90 s", "min s", "GFLOP", "GFLOP/s", "ceil@med", "ceil@min", "peak MiB", "+MiB")


def result(method: str, options: str = "", **values: float) -> dict:
    figures = {"median_s": 0.123, "p90_s": 0.2, "min_s": 0.1, "gflop": 12.5, "achieved_gflops": 101.0,
               "fraction_of_ceiling": 1.0, "fraction_of_ceiling_at_min": 0.07, "peak_memory_mb": 2404.0,
               "working_memory_mb": 312.0, **values}
    return {"method": method, "options": options, "device": "cpu", "precision": "fp32", "image_size": [2944, 1920],
            "repeats": 5, "threads": 2, "omp_wait_policy": "PASSIVE", "load_average": 1.0, "ceiling_conv": "3x3",
            "ceiling_nchw_gflops": 100.0, "ceiling_channels_last_gflops": 120.0, **figures}


def test_every_column_header_ends_where_its_values_end():
    results = [result("glam"), result("gmic", "fast=False", fraction_of_ceiling=0.5),
               result("integrated_gradients@gmic", "n_steps=8")]  # a label longer than the usual column
    lines = format_bench(results).splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("method"))
    header_ends = [lines[header].index(name) + len(name) for name in COLUMNS]
    for row in lines[header + 1:]:
        value_ends = [m.end() for m in re.finditer(r"\S+", row)][-len(COLUMNS):]  # values hold no space; labels may
        assert value_ends == header_ends, f"\n{lines[header]}\n{row}"


def test_every_header_is_one_word_group_over_one_column_and_the_ceiling_columns_are_explained():
    """A header of several words must not read as one title over several columns ("GFLOP/s of ceiling
    (at min)" sat over three numbers): the two shares of the ceiling have one-word names, said above."""
    lines = format_bench([result("glam")]).splitlines()
    header = next(line for line in lines if line.startswith("method"))
    assert "of ceiling" not in header and "(at min)" not in header
    assert any(line.startswith("GFLOP/s: at the median time; ceil@med, ceil@min: ") for line in lines)
    row = lines[-1].split()
    assert row[row.index("101") + 1:row.index("101") + 3] == ["100%", "7%"]  # GFLOP/s, then the two shares
