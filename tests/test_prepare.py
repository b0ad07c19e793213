"""prepare_dataset: parallel preparation into the folder layout, manifest, failures, resume."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from fixtures_real import bright_region, iou, make_nyu, truncate

import wsl_bench
from wsl_bench.data import DatasetError
from wsl_bench.datasets.prepare import MANIFEST_NAME, prepare_dataset

FRAME = (96, 64)
SIZE = (48, 32)
OPTIONS = {"frame": FRAME}


def sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
def test_prepare_in_parallel_reads_back_aligned(tmp_path):
    src, out = tmp_path / "nyu", tmp_path / "prepared"
    expected = make_nyu(src, n_exams=2)
    summary = prepare_dataset("nyu", src, out, image_size=SIZE, workers=2, progress=False, options=OPTIONS)
    assert (summary.written, summary.skipped, summary.failed) == (8, 0, 0)

    direct = wsl_bench.create_dataset("nyu", root=str(src), image_size=SIZE, **OPTIONS)
    folder = wsl_bench.create_dataset("folder", root=str(out), split="test")
    assert sorted(folder.ids()) == sorted(expected)
    for sample in folder:
        ref = direct.get(sample.id)
        assert sample.image.shape == (1, *SIZE) and sample.labels == ref.labels
        np.testing.assert_allclose(sample.image, ref.image, atol=1e-3)  # 16-bit quantisation only
        cls = expected[sample.id]["lesion_class"]
        for c in ("benign", "malignant"):
            np.testing.assert_array_equal(sample.masks[c], ref.masks[c])
        if cls:
            assert iou(bright_region(sample.image), sample.masks[cls]) > 0.6
        assert sample.meta["mask_kind"] == "pixel" and json.loads(sample.meta["geometry"])["target"] == list(SIZE)

    manifest = json.loads((out / MANIFEST_NAME).read_text())
    assert manifest["parameters"]["dataset"] == "nyu" and manifest["parameters"]["image_size"] == list(SIZE)
    assert manifest["parameters"]["preprocess"]["image_size"] == list(SIZE)
    assert manifest["index_files"] == {str(src / "data.pkl"): sha(src / "data.pkl")}
    image = src / "cropped_images" / "1_L-CC.png"
    seg = src / "segmentation" / "1_L-CC_malignant.png"
    assert manifest["samples"]["1_L-CC"]["sources"] == {str(image): sha(image), str(seg): sha(seg)}
    assert manifest["failures"] == {} and manifest["counts"]["samples"] == 8


def test_failure_recorded_then_resume_retries_only_it(tmp_path):
    src, out = tmp_path / "nyu", tmp_path / "prepared"
    make_nyu(src, n_exams=2)
    image = src / "cropped_images" / "0_R-MLO.png"
    good = image.read_bytes()
    truncate(image, 0.5)
    first = prepare_dataset("nyu", src, out, image_size=SIZE, workers=1, progress=False, options=OPTIONS)
    assert (first.written, first.failed) == (7, 1)
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    assert "0_R-MLO.png: truncated or corrupt PNG" in manifest["failures"]["0_R-MLO"]["error"]
    assert "0_R-MLO" not in manifest["samples"]

    image.write_bytes(good)
    second = prepare_dataset("nyu", src, out, image_size=SIZE, workers=1, progress=False, options=OPTIONS)
    assert (second.written, second.skipped, second.failed) == (1, 7, 0)
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    assert manifest["failures"] == {} and len(manifest["samples"]) == 8


def test_interrupted_write_resumes(tmp_path):
    src, out = tmp_path / "nyu", tmp_path / "prepared"
    make_nyu(src, n_exams=1)
    prepare_dataset("nyu", src, out, image_size=SIZE, workers=1, progress=False, options=OPTIONS)
    index = out / "labels.csv"
    data = index.read_bytes()
    index.write_bytes(data[: data.rstrip(b"\n").rfind(b"\n") + 10])  # the last row cut mid-write
    again = prepare_dataset("nyu", src, out, image_size=SIZE, workers=1, progress=False, options=OPTIONS)
    assert (again.written, again.skipped) == (1, 3)
    assert len(wsl_bench.create_dataset("folder", root=str(out), split="test").ids()) == 4


def test_other_parameters_into_same_folder_refused(tmp_path):
    src, out = tmp_path / "nyu", tmp_path / "prepared"
    make_nyu(src, n_exams=1)
    prepare_dataset("nyu", src, out, image_size=SIZE, workers=1, progress=False, options=OPTIONS)
    with pytest.raises(DatasetError, match=f"{MANIFEST_NAME}: .* holds a preparation with parameters"):
        prepare_dataset("nyu", src, out, image_size=(64, 40), workers=1, progress=False, options=OPTIONS)


def test_empty_dataset_is_an_error(tmp_path):
    (tmp_path / "nyu").mkdir()
    (tmp_path / "nyu" / "data.pkl").write_bytes(__import__("pickle").dumps([]))
    with pytest.raises(DatasetError, match="empty dataset"):
        prepare_dataset("nyu", tmp_path / "nyu", tmp_path / "out", image_size=SIZE, workers=1, progress=False)
