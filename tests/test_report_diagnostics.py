"""The diagnosis script behind reports/README.md (reports/diagnostics/peak_cells.py)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

import wsl_bench

SCRIPT = Path(__file__).resolve().parents[1] / "reports" / "diagnostics" / "peak_cells.py"


def load_script():
    spec = importlib.util.spec_from_file_location("peak_cells", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cells_tile_the_image_without_gaps():
    peak_cells = load_script()
    covered = np.zeros((37, 23), dtype=int)
    for r in range(6):
        for c in range(4):
            covered[peak_cells.cell_slices(r, c, (6, 4), covered.shape)] += 1
    assert (covered == 1).all()


def test_a_centred_map_peaks_inside_the_breast_and_never_on_the_border():
    peak_cells = load_script()
    size = (96, 64)
    dataset = wsl_bench.create_dataset("synthetic", split="test", image_size=size, n=12, seed=0)
    counts = peak_cells.peak_cell_counts(wsl_bench.create_method("centre_prior", image_size=size), dataset)
    lesion_images = {c: sum(1 for i in dataset.ids() if (m := dataset.get(i).masks.get(c)) is not None and m.any())
                     for c in counts}
    for cls, tally in counts.items():
        assert tally["images"] == lesion_images[cls]
        assert tally["border"] == 0  # the centre prior peaks in the middle of its map
        assert 0 <= tally["chance_lesion"] <= tally["images"] and 0 <= tally["chance_background"] <= tally["images"]


def test_map_parts_scores_each_output_part_like_the_harness():
    spec = importlib.util.spec_from_file_location("map_parts", SCRIPT.parent / "map_parts.py")
    map_parts = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(map_parts)
    size = (96, 64)
    dataset = wsl_bench.create_dataset("synthetic", split="test", image_size=size, n=8, seed=0)
    glam = map_parts.map_parts(wsl_bench.create_method("glam", image_size=size, width=0.25, local_width=0.125), dataset)
    for row in glam.values():
        assert {"pxap_output", "pxap_global", "patch_hits", "lesion_in_patches"} <= set(row)
        assert 0 <= row["patch_hits"] <= 1 and 0 <= row["lesion_in_patches"] <= row["patch_hits"]
    # a method without patches or a global map: its output PxAP is the harness's (an exact reference: intensity)
    from wsl_bench.evaluation.metrics import pxap

    plain = map_parts.map_parts(wsl_bench.create_method("intensity", image_size=size), dataset)
    for cls, row in plain.items():
        assert set(row) == {"images", "pxap_output"}
        images = [dataset.get(i) for i in dataset.ids()]
        lesion = [s for s in images if (m := s.masks.get(cls)) is not None and m.any()]
        stacked = np.stack([(s.image[0] - s.image[0].min()) / np.ptp(s.image[0]) for s in lesion])
        expected = pxap(stacked, np.stack([s.masks[cls] for s in lesion]))
        assert abs(row["pxap_output"] - expected) < 1e-3
