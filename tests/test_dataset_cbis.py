"""The CBIS-DDSM loader on a mini download: four CSVs, metadata.csv, DICOM tree, every listed trap."""

from __future__ import annotations

import csv
import json
import logging

import numpy as np
import pytest
from fixtures_real import CbisCase, CbisWriter, bright_region, iou, truncate

pytest.importorskip("pydicom")

import wsl_bench  # noqa: E402
from wsl_bench.data import SPLITS, DatasetError, SampleError  # noqa: E402

SIZE = (96, 72)


def cases():
    return [
        CbisCase("mass", "train", "P_00001", "LEFT", "CC", "MALIGNANT", lesion=(0.35, 0.3, 0.07)),
        # a second abnormality of the same image, from the calcification CSV: merged per class
        CbisCase("calc", "train", "P_00001", "LEFT", "CC", "BENIGN_WITHOUT_CALLBACK", lesion=(0.7, 0.3, 0.05)),
        CbisCase("mass", "test", "P_00002", "RIGHT", "MLO", "BENIGN", swap_columns=True),
        CbisCase("mass", "train", "P_00003", "LEFT", "MLO", "BENIGN", mask_shape=(60, 45)),
        CbisCase("calc", "test", "P_00004", "RIGHT", "CC", "MALIGNANT", mask_shape=(60, 60)),
        CbisCase("calc", "train", "P_00005", "LEFT", "CC", "BENIGN", old_layout=True, newline=False),
        # a patient in a training CSV and a test CSV: the whole patient goes to test
        CbisCase("mass", "train", "P_00006", "LEFT", "CC", "BENIGN"),
        CbisCase("calc", "test", "P_00006", "RIGHT", "CC", "MALIGNANT"),
    ]


@pytest.fixture
def cbis(tmp_path):
    writer = CbisWriter(tmp_path)
    for case in cases():
        writer.add(case)
    writer.finish()
    return tmp_path


def open_ds(root, split="test", **kw):
    return wsl_bench.create_dataset("cbis-ddsm", root=str(root), split=split, image_size=SIZE, **kw)


def all_ids(root, **kw):
    out = {}
    for split in SPLITS:
        try:
            out[split] = open_ds(root, split, **kw).ids()
        except DatasetError:
            out[split] = []
    return out


def test_patient_level_splits(cbis):
    ids = all_ids(cbis)
    assert sorted(sum(ids.values(), [])) == sorted(
        [
            "P_00001_LEFT_CC",
            "P_00002_RIGHT_MLO",
            "P_00003_LEFT_MLO",
            "P_00004_RIGHT_CC",
            "P_00005_LEFT_CC",
            "P_00006_LEFT_CC",
            "P_00006_RIGHT_CC",
        ]
    )
    patients = {s: {i[:7] for i in v} for s, v in ids.items()}
    assert patients["test"] == {"P_00002", "P_00004", "P_00006"}  # every patient of a test CSV
    assert not (patients["train"] & patients["val"]) and not (patients["train"] & patients["test"])
    everything_val = all_ids(cbis, val_fraction=1.0)
    assert everything_val["train"] == [] and set(everything_val["val"]) == set(ids["train"]) | set(ids["val"])


def load(root, sample_id, **kw):
    for split in SPLITS:
        ds = open_ds(root, split, **kw)
        try:
            if sample_id in ds.ids():
                return ds.get(sample_id)
        except DatasetError:
            continue
    raise AssertionError(sample_id)


def test_merged_abnormalities_and_spelling_of_density(cbis):
    s = load(cbis, "P_00001_LEFT_CC")
    assert s.labels == {"benign": 1, "malignant": 1}  # BENIGN_WITHOUT_CALLBACK counts as benign
    assert s.masks["benign"].any() and s.masks["malignant"].any()
    assert not (s.masks["benign"] & s.masks["malignant"]).any()
    assert iou(bright_region(s.image), s.masks["benign"] | s.masks["malignant"]) > 0.6
    assert s.meta["density"] == "3"  # read from 'breast_density' (mass) / 'breast density' (calc)
    assert {a["type"] for a in s.meta["abnormalities"]} == {"mass", "calc"}
    assert s.meta["mask_kind"] == "pixel"
    json.dumps(s.meta)  # records and manifests store meta as JSON


def test_swapped_columns_are_detected(cbis):
    s = load(cbis, "P_00002_RIGHT_MLO")
    assert s.labels == {"benign": 1, "malignant": 0}
    assert iou(bright_region(s.image), s.masks["benign"]) > 0.6
    assert any("swapped" in q for q in s.meta["quirks"])


def test_mask_of_other_size_same_aspect_is_resized_with_warning(cbis, caplog):
    with caplog.at_level(logging.WARNING):
        s = load(cbis, "P_00003_LEFT_MLO")
    assert iou(bright_region(s.image), s.masks["benign"]) > 0.5
    assert any("resized" in q for q in s.meta["quirks"]) and "resized" in caplog.text


def test_mask_of_other_aspect_is_refused(cbis):
    with pytest.raises(SampleError, match=r"ROI mask is 60×60 but the image is 120×90.*aspect"):
        load(cbis, "P_00004_RIGHT_CC")


def test_old_layout_paths_as_written(cbis):
    s = load(cbis, "P_00005_LEFT_CC")
    assert "/000000.dcm" in s.meta["source"] and iou(bright_region(s.image), s.masks["benign"]) > 0.6


def test_without_metadata_csv_series_uids_are_scanned(cbis):
    (cbis / "metadata.csv").unlink()
    s = load(cbis, "P_00002_RIGHT_MLO")
    assert iou(bright_region(s.image), s.masks["benign"]) > 0.6


# -- bad input -------------------------------------------------------------------------------------
def rewrite_csv(path, edit):
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    rows = edit(rows)
    with open(path, "w", newline="") as fh:
        csv.writer(fh).writerows(rows)


def test_csv_missing_a_column(cbis):
    path = cbis / "mass_case_description_train_set.csv"
    rewrite_csv(path, lambda rows: [r[:9] + r[10:] for r in rows])  # drop 'pathology'
    with pytest.raises(DatasetError, match=r"mass_case_description_train_set.csv: missing column\(s\) 'pathology'"):
        open_ds(cbis).ids()


def test_pathology_outside_known_values(cbis):
    path = cbis / "mass_case_description_test_set.csv"
    rewrite_csv(path, lambda rows: [rows[0]] + [r[:9] + ["MALIGANT"] + r[10:] for r in rows[1:]])
    ds = open_ds(cbis)
    with pytest.raises(
        SampleError, match=r"mass_case_description_test_set.csv line 2: pathology 'MALIGANT' is outside"
    ):
        ds.get("P_00002_RIGHT_MLO")
    assert ds.get("P_00006_RIGHT_CC").labels["malignant"] == 1  # the rest go on


def test_truncated_and_missing_dicoms(cbis):
    s = load(cbis, "P_00006_RIGHT_CC")
    truncate(s.meta["source"], 0.5)
    with pytest.raises(SampleError, match=s.meta["source"]):
        load(cbis, "P_00006_RIGHT_CC")
    from pathlib import Path

    Path(s.meta["source"]).unlink()
    (cbis / "metadata.csv").unlink()
    with pytest.raises(SampleError, match="full mammogram .* not found"):
        load(cbis, "P_00006_RIGHT_CC")


def test_empty_dataset(tmp_path):
    writer = CbisWriter(tmp_path)
    writer.finish()
    with pytest.raises(DatasetError, match="empty dataset"):
        open_ds(tmp_path).ids()
    bare = tmp_path / "bare"
    bare.mkdir()
    with pytest.raises(DatasetError, match="no CBIS-DDSM description CSV"):
        open_ds(bare).ids()


def test_only_masses(cbis):
    ids = all_ids(cbis, abnormality="mass")
    assert "P_00004_RIGHT_CC" not in sum(ids.values(), [])
    assert np.all([i.startswith("P_") for i in sum(ids.values(), [])])
