"""The NYU exam-list loader on a mini dataset written in the published GMIC/GLAM layout."""

from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pytest
from fixtures_real import bright_region, chest_wall_left, iou, make_nyu, phantom, truncate, write_mask, write_png16

import wsl_bench
from wsl_bench.data import DatasetError, SampleError
from wsl_bench.datasets.nyu import nyu_window

FRAME = (96, 64)


def nyu(root, **kw):
    kw.setdefault("frame", FRAME)
    kw.setdefault("image_size", FRAME)
    return wsl_bench.create_dataset("nyu", root=str(root), **kw)


@pytest.mark.parametrize("flip", ["NO", "YES"])
def test_loads_aligned_images_masks_labels(tmp_path, flip):
    expected = make_nyu(tmp_path, horizontal_flip=flip)
    ds = nyu(tmp_path)
    assert ds.ids() == sorted(expected)
    for sample in ds:
        exp = expected[sample.id]
        assert sample.image.shape == (1, *FRAME)
        assert sample.labels == exp["labels"]
        assert chest_wall_left(sample.image), sample.id  # every view faces the same way
        assert sample.meta["preprocess"]["orientation_check"] == "ok"
        json.dumps(sample.meta)  # records and manifests store meta as JSON
        cls = exp["lesion_class"]
        for c in ("benign", "malignant"):
            mask = sample.masks[c]
            assert mask is not None and mask.shape == FRAME  # listed-but-absent segmentation: annotated empty
            if c != cls:
                assert not mask.any()
        if cls is not None:
            assert iou(bright_region(sample.image), sample.masks[cls]) > 0.7


def test_resized_output_keeps_alignment(tmp_path):
    make_nyu(tmp_path, n_exams=1)
    sample = nyu(tmp_path, image_size=(48, 40)).get("0_R-CC")
    assert sample.image.shape == (1, 48, 40)
    assert iou(bright_region(sample.image), sample.masks["benign"]) > 0.5
    assert sample.meta["geometry"]["flip"] is True and sample.meta["laterality"] == "R"


def test_numpy_scalars_in_exam_list(tmp_path):
    make_nyu(tmp_path, n_exams=1, numpy_centers=True)
    assert nyu(tmp_path).get("0_L-MLO").meta["best_center"] == [55, 32.0]


def test_model_frame_images_need_no_center(tmp_path):
    """GMIC's cropped_images are already 2944×1920 (here the small frame) and stored flipped."""
    ph = phantom(FRAME, chest_wall="left", lesions=((0.5, 0.3, 0.08),), marker=False)
    write_png16(tmp_path / "cropped_images" / "0_R-CC.png", ph.image)
    write_mask(tmp_path / "segmentation" / "0_R-CC_malignant.png", ph.lesions[0])
    exam = {"horizontal_flip": "NO", "R-CC": ["0_R-CC"], "cancer_label": {"right_malignant": 1, "right_benign": 0}}
    (tmp_path / "data.pkl").write_bytes(pickle.dumps([exam]))
    sample = nyu(tmp_path, flip="none").get("0_R-CC")
    assert sample.labels == {"benign": 0, "malignant": 1}
    assert iou(bright_region(sample.image), sample.masks["malignant"]) > 0.7
    assert chest_wall_left(sample.image)
    # with the exam semantics the right view would be flipped again: the check flags it
    flagged = nyu(tmp_path).get("0_R-CC")
    assert flagged.meta["preprocess"]["orientation_check"] != "ok"


def test_no_segmentation_folder_means_not_annotated(tmp_path):
    make_nyu(tmp_path, n_exams=1)
    for f in (tmp_path / "segmentation").iterdir():
        f.unlink()
    (tmp_path / "segmentation").rmdir()
    sample = nyu(tmp_path).get("0_R-CC")
    assert sample.masks == {"benign": None, "malignant": None}


def test_split_key_and_empty_split(tmp_path):
    make_nyu(tmp_path, n_exams=2, splits=("train", "test"))
    assert nyu(tmp_path, split="train").ids() == [f"0_{v}" for v in ("L-CC", "L-MLO", "R-CC", "R-MLO")]
    with pytest.raises(DatasetError, match="split 'val'.*empty"):
        nyu(tmp_path, split="val").ids()


def test_gmic_window_rules():
    # inside: centred on best_center, shifted to stay inside
    assert nyu_window((3000, 2000), (1500, 100), "L-CC") == (1500 - 1472, 0, 1500 + 1472, 1920)
    assert nyu_window((3000, 2000), (2900, 1990), "L-MLO") == (3000 - 2944, 2000 - 1920, 3000, 2000)
    # smaller than the window: CC padded top and bottom, MLO at the bottom, both on the right
    assert nyu_window((2900, 1800), (1450, 900), "R-CC") == (-22, 0, 2922, 1920)
    assert nyu_window((2900, 1800), (1450, 900), "R-MLO") == (0, 0, 2944, 1920)


# -- bad input -------------------------------------------------------------------------------------
def test_malicious_exam_list_is_refused(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    (tmp_path / "cropped_images").mkdir()
    (tmp_path / "data.pkl").write_bytes(pickle.dumps([{"L-CC": ["x"], "evil": Evil()}]))
    with pytest.raises(DatasetError, match=r"data.pkl: refused to load global (posix|os)\.system"):
        nyu(tmp_path).ids()
    assert not marker.exists()


def test_label_outside_known_values(tmp_path):
    make_nyu(tmp_path, n_exams=1)
    exams = pickle.loads((tmp_path / "data.pkl").read_bytes())
    exams[0]["cancer_label"]["right_benign"] = 2
    (tmp_path / "data.pkl").write_bytes(pickle.dumps(exams))
    ds = nyu(tmp_path)
    with pytest.raises(SampleError, match=r"data.pkl: exam #0 cancer_label\['right_benign'\] = 2 is outside"):
        ds.get("0_R-CC")
    assert ds.get("0_L-CC").labels == {"benign": 0, "malignant": 0}  # the rest still loads


def test_image_missing_truncated_and_mask_of_another_size(tmp_path):
    make_nyu(tmp_path, n_exams=1)
    (tmp_path / "cropped_images" / "0_L-CC.png").unlink()
    truncate(tmp_path / "cropped_images" / "0_L-MLO.png", 0.5)
    write_mask(tmp_path / "segmentation" / "0_R-CC_benign.png", np.zeros((50, 40), bool))
    ds = nyu(tmp_path)
    with pytest.raises(SampleError, match=r"0_L-CC.png: image listed in .*data.pkl .*not found"):
        ds.get("0_L-CC")
    with pytest.raises(SampleError, match=r"0_L-MLO.png: truncated or corrupt PNG"):
        ds.get("0_L-MLO")
    with pytest.raises(SampleError, match=r"0_R-CC_benign.png: benign segmentation is 50×40 but the model frame"):
        ds.get("0_R-CC")
    assert ds.get("0_R-MLO").masks["benign"].any()


def test_empty_and_malformed_exam_lists(tmp_path):
    (tmp_path / "data.pkl").write_bytes(pickle.dumps([]))
    with pytest.raises(DatasetError, match="empty dataset"):
        nyu(tmp_path).ids()
    (tmp_path / "data.pkl").write_bytes(pickle.dumps({"not": "a list"}))
    with pytest.raises(DatasetError, match="expected a list of exams"):
        nyu(tmp_path).ids()
    (tmp_path / "data.pkl").unlink()
    with pytest.raises(DatasetError, match="no exam list"):
        nyu(tmp_path)


@pytest.mark.slow
@pytest.mark.slow
def test_cli_run_on_published_sample_layout(tmp_path):
    """Acceptance: `wsl-bench run --methods intensity,centre_prior --dataset nyu --data-root DIR`
    on one exam in the published layout (images already in the 2944×1920 model frame)."""
    import json

    from wsl_bench.cli import main

    root = tmp_path / "sample_data"
    exam = {
        "horizontal_flip": "NO",
        "cancer_label": {
            "left_benign": 0,
            "right_benign": 1,
            "left_malignant": 0,
            "right_malignant": 0,
            "benign": 1,
            "malignant": 0,
            "unknown": 0,
        },
    }
    for view in ("L-CC", "R-CC", "L-MLO", "R-MLO"):
        stem = f"0_{view}"
        exam[view] = [stem]
        right = view.startswith("R")
        ph = phantom(
            (2944, 1920),
            chest_wall="right" if right else "left",
            lesions=((0.5, 0.3, 0.04),) if right else (),
            marker=False,
        )
        write_png16(root / "cropped_images" / f"{stem}.png", ph.image)
        if right:
            write_mask(root / "segmentation" / f"{stem}_benign.png", ph.lesions[0][:, ::-1])
    (root / "data.pkl").write_bytes(pickle.dumps([exam]))
    out = tmp_path / "run"
    code = main(
        [
            "run",
            "--methods",
            "intensity,centre_prior",
            "--dataset",
            "nyu",
            "--data-root",
            str(root),
            "--preset",
            "tiny",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert code == 0, [r.get("error") for r in records]
    assert {r["method"] for r in records} == {"intensity", "centre_prior"}
    assert len(records) == 8 and all(r["status"] == "ok" for r in records)
    lesion = [r for r in records if r["image_id"] == "0_R-CC" and r["method"] == "intensity"][0]
    assert lesion["has_lesion"]["benign"] and lesion["dice"]["benign"] is not None
