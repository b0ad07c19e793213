"""The VinDr-Mammo loader on a mini release: .dicom files, finding_annotations.csv, box-based masks."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from fixtures_real import bright_region, iou, phantom, truncate, write_dicom

pytest.importorskip("pydicom")

import wsl_bench  # noqa: E402
from wsl_bench.data import SPLITS, DatasetError, SampleError  # noqa: E402
from wsl_bench.datasets._preprocess import boxes_to_mask  # noqa: E402

SHAPE = (150, 110)
SIZE = (96, 64)
HEADER = [
    "study_id",
    "series_id",
    "image_id",
    "laterality",
    "view_position",
    "height",
    "width",
    "breast_birads",
    "breast_density",
    "finding_categories",
    "finding_birads",
    "xmin",
    "ymin",
    "xmax",
    "ymax",
    "split",
]

# image id, study, laterality, breast BI-RADS, split, findings [(categories text, finding BI-RADS)]
IMAGES = [
    ("img_a", "study_1", "L", "BI-RADS 5", "training", [("['Mass', 'Suspicious Calcification']", "BI-RADS 5")]),
    (
        "img_b",
        "study_1",
        "R",
        "BI-RADS 3",
        "training",
        [("['Mass']", "BI-RADS 3"), ("['Focal Asymmetry']", "BI-RADS 4")],
    ),
    ("img_c", "study_2", "R", "BI-RADS 1", "test", [("['No Finding']", "")]),
    ("img_d", "study_3", "L", "BI-RADS 4", "test", [("['No Finding']", "")]),  # suspicious breast, no box
]


def make_vindr(root, images=IMAGES):
    rows = []
    expected = {}
    for n, (image_id, study, lat, breast, split, findings) in enumerate(images):
        lesions = tuple((0.3 + 0.35 * k, 0.35, 0.06) for k, f in enumerate(findings) if f[1])
        ph = phantom(
            SHAPE, chest_wall="right" if lat == "R" else "left", lesions=lesions, square=True, marker=False, seed=n
        )
        pixels = (4095 - ph.image).astype(np.uint16) if n % 2 else ph.image
        write_dicom(
            root / "images" / study / f"{image_id}.dicom",
            pixels,
            laterality=lat,
            view="CC",
            photometric="MONOCHROME1" if n % 2 else "MONOCHROME2",
        )
        k = 0
        for categories, fb in findings:
            if fb:
                x0, y0, x1, y1 = ph.boxes[k]
                k += 1
                box = [f"{x0:.2f}", f"{y0:.2f}", f"{x1:.2f}", f"{y1:.2f}"]
            else:
                box = ["", "", "", ""]
            rows.append(
                [
                    study,
                    f"series_{n}",
                    image_id,
                    lat,
                    "CC",
                    str(SHAPE[0]),
                    str(SHAPE[1]),
                    breast,
                    "DENSITY C",
                    categories,
                    fb,
                    *box,
                    split,
                ]
            )
        expected[image_id] = {"phantom": ph, "findings": findings, "breast": breast, "split": split}
    with open(root / "finding_annotations.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(HEADER)
        writer.writerows(rows)
    return expected


def samples(root, **kw):
    out = {}
    for split in SPLITS:
        try:
            ds = wsl_bench.create_dataset("vindr", root=str(root), split=split, image_size=SIZE, **kw)
            for i in ds.ids():
                out[i] = (split, ds)
        except DatasetError:
            continue
    return out


def test_boxes_labels_and_splits(tmp_path):
    make_vindr(tmp_path)
    found = samples(tmp_path)
    assert sorted(found) == ["img_a", "img_b", "img_c", "img_d"]
    assert found["img_c"][0] == found["img_d"][0] == "test"
    assert found["img_a"][0] == found["img_b"][0] in ("train", "val")  # one study, one split

    a = found["img_a"][1].get("img_a")
    assert a.labels == {"benign": 0, "malignant": 1} and a.meta["mask_kind"] == "box"
    assert not a.masks["benign"].any()
    # the square lesion fills its box: box mask, box and image content agree
    assert iou(bright_region(a.image), a.masks["malignant"]) > 0.6
    box_mask = boxes_to_mask(np.array(a.meta["boxes"]["malignant"]), SIZE)
    assert iou(box_mask, a.masks["malignant"]) > 0.8
    assert a.meta["finding_categories"]["malignant"] == ["Mass", "Suspicious Calcification"]
    json.dumps(a.meta)  # records and manifests store meta as JSON

    b = found["img_b"][1].get("img_b")  # BI-RADS 3 mass → benign box, BI-RADS 4 asymmetry → malignant box
    assert b.labels == {"benign": 1, "malignant": 1}
    assert b.masks["benign"].any() and b.masks["malignant"].any()
    assert iou(bright_region(b.image), b.masks["benign"] | b.masks["malignant"]) > 0.6
    assert b.meta["dicom_inverted"]  # written as MONOCHROME1

    c = found["img_c"][1].get("img_c")
    assert c.labels == {"benign": 0, "malignant": 0} and not c.masks["benign"].any() and not c.masks["malignant"].any()
    d = found["img_d"][1].get("img_d")  # BI-RADS 4 breast without a box: positive, not annotated
    assert d.labels == {"benign": 0, "malignant": 1} and d.masks["malignant"] is None


# -- bad input -------------------------------------------------------------------------------------
def edit_csv(root, edit):
    path = root / "finding_annotations.csv"
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    with open(path, "w", newline="") as fh:
        csv.writer(fh).writerows(edit(rows))


def test_size_mismatch_refused(tmp_path):
    make_vindr(tmp_path, IMAGES[:1])
    edit_csv(tmp_path, lambda rows: [rows[0]] + [r[:5] + ["300"] + r[6:] for r in rows[1:]])
    ((_, ds),) = samples(tmp_path).values()
    with pytest.raises(
        SampleError, match=r"img_a.dicom: the DICOM is 150×110 but finding_annotations.csv says 300×110"
    ):
        ds.get("img_a")


@pytest.mark.parametrize(
    ("column", "value", "message"),
    [
        (7, "BI-RADS 9", r"line 2: BI-RADS 'BI-RADS 9' is outside the known values"),
        (9, "Mass, Calcification", r"line 2: finding_categories .* is not a list written as text"),
        (11, "90", r"line 2: malformed box"),
    ],
)
def test_bad_values_fail_that_sample_only(tmp_path, column, value, message):
    make_vindr(tmp_path, IMAGES[:3])
    edit_csv(tmp_path, lambda rows: [rows[0], rows[1][:column] + [value] + rows[1][column + 1 :], *rows[2:]])
    found = samples(tmp_path)
    with pytest.raises(SampleError, match=message):
        found["img_a"][1].get("img_a")
    assert found["img_c"][1].get("img_c").labels == {"benign": 0, "malignant": 0}


def test_missing_truncated_image_and_missing_column(tmp_path):
    make_vindr(tmp_path, IMAGES[2:])
    (tmp_path / "images" / "study_2" / "img_c.dicom").unlink()
    truncate(tmp_path / "images" / "study_3" / "img_d.dicom", 0.5)
    ds = wsl_bench.create_dataset("vindr", root=str(tmp_path), split="test", image_size=SIZE)
    with pytest.raises(SampleError, match=r"img_c.dicom: image listed in .*finding_annotations.csv not found"):
        ds.get("img_c")
    with pytest.raises(SampleError, match=r"img_d.dicom"):
        ds.get("img_d")
    edit_csv(tmp_path, lambda rows: [[c for i, c in enumerate(r) if i != 7] for r in rows])
    with pytest.raises(DatasetError, match=r"finding_annotations.csv: missing column\(s\) 'breast_birads'"):
        wsl_bench.create_dataset("vindr", root=str(tmp_path), split="test", image_size=SIZE).ids()


def test_empty_dataset(tmp_path):
    make_vindr(tmp_path, [])
    with pytest.raises(DatasetError, match="empty dataset"):
        wsl_bench.create_dataset("vindr", root=str(tmp_path), image_size=SIZE).ids()
    (tmp_path / "finding_annotations.csv").unlink()
    with pytest.raises(DatasetError, match="finding_annotations.csv: file not found"):
        wsl_bench.create_dataset("vindr", root=str(tmp_path), image_size=SIZE).ids()
