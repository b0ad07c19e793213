"""The INbreast loader on a mini release: DICOM naming, ';'-CSV, OsiriX XML ROIs, BI-RADS proxy."""

from __future__ import annotations

import json

import numpy as np
import pytest
from fixtures_real import bright_region, iou, osirix_xml, phantom, polygon_of, truncate, write_dicom

pytest.importorskip("pydicom")

import wsl_bench  # noqa: E402
from wsl_bench.data import SPLITS, DatasetError, SampleError  # noqa: E402
from wsl_bench.datasets.inbreast import read_osirix_rois  # noqa: E402

SHAPE = (140, 100)
SIZE = (96, 64)
HEADER = "Patient ID;Patient age;Laterality;View;Acquisition date;File Name;ACR;Bi-Rads"

# file id, patient hash, laterality, view in the file name, BI-RADS, ROIs ("poly"/"point"/"pair"/None)
IMAGES = [
    ("20586908", "6c613a14b80a8591", "R", "CC", "5", "poly"),
    ("20586934", "6c613a14b80a8591", "R", "ML", "4c", "poly"),
    ("22678622", "61b13c59bcba149e", "L", "CC", "2", "point"),
    ("22678646", "61b13c59bcba149e", "L", "ML", "3", "pair"),
    ("24055274", "8a4c6f2b0e3d1a77", "R", "CC", "1", None),
    ("24055355", "8a4c6f2b0e3d1a77", "L", "CC", "4a", None),  # suspicious but no XML: not annotated
]


def make_inbreast(root, images=IMAGES, photometric="MONOCHROME2"):
    expected = {}
    lines = [HEADER]
    for n, (fid, patient, lat, view, birads, roi) in enumerate(images):
        ph = phantom(
            SHAPE,
            chest_wall="right" if lat == "R" else "left",
            lesions=((0.5, 0.35, 0.07),) if roi else (),
            marker=True,
            seed=n,
        )
        pixels = ph.image if photometric == "MONOCHROME2" else (4095 - ph.image).astype(np.uint16)
        write_dicom(
            root / "AllDICOMs" / f"{fid}_{patient}_MG_{lat}_{view}_ANON.dcm",
            pixels,
            photometric=photometric,
            laterality=lat,
            view="MLO" if view == "ML" else view,
            patient_id="removed",
        )
        lesion = ph.lesions[0] if roi else None
        if roi == "poly":
            rois = [("Mass", polygon_of(lesion))]
        elif roi == "point":
            rows, cols = np.nonzero(lesion)
            rois = [("Calcification", [(float(cols.mean()), float(rows.mean()))])]
        elif roi == "pair":
            rows, cols = np.nonzero(lesion)
            rois = [
                (
                    "Calcification",
                    [(float(cols.mean()) - 3, float(rows.mean())), (float(cols.mean()) + 3, float(rows.mean()))],
                )
            ]
        if roi:
            (root / "AllXML").mkdir(parents=True, exist_ok=True)
            (root / "AllXML" / f"{fid}.xml").write_text(osirix_xml(rois, SHAPE))
        csv_view = "MLO" if view == "ML" else view  # the spreadsheet says MLO, file names ML
        lines.append(f"removed;removed;{lat};{csv_view};201001;{fid};2;{birads}")
        expected[fid] = {"birads": birads, "roi": roi, "patient": patient}
    lines += [";;;;;;;", ""]  # spreadsheet exports end with blank rows
    (root / "INbreast.csv").write_text("\n".join(lines))
    return expected


def all_samples(root, **kw):
    out = {}
    for split in SPLITS:
        try:
            ds = wsl_bench.create_dataset("inbreast", root=str(root), split=split, image_size=SIZE, **kw)
            ids = ds.ids()
        except DatasetError:
            continue
        for i in ids:
            out[i] = (split, ds)
    return out


def test_loads_all_images_with_birads_proxy(tmp_path):
    expected = make_inbreast(tmp_path)
    found = all_samples(tmp_path)
    assert sorted(found) == sorted(expected)
    by_patient = {}
    for fid, (split, ds) in found.items():
        by_patient.setdefault(expected[fid]["patient"], set()).add(split)
        s = ds.get(fid)
        birads, roi = expected[fid]["birads"], expected[fid]["roi"]
        cls = {"1": None, "2": "benign", "3": "benign"}.get(birads, "malignant")
        assert s.labels == {"benign": int(cls == "benign"), "malignant": int(cls == "malignant")}
        assert s.meta["label_source"] == "birads-proxy" and s.meta["view"] in ("CC", "MLO")
        json.dumps(s.meta)  # records and manifests store meta as JSON
        if roi is None and cls is not None:
            assert s.masks == {"benign": None, "malignant": None}
            continue
        other = "malignant" if cls == "benign" else "benign"
        assert not s.masks[other].any()
        if cls is None:
            assert not s.masks["benign"].any()
            continue
        mask, bright = s.masks[cls], bright_region(s.image)
        if roi == "poly":
            assert iou(bright, mask) > 0.6
        else:  # a disk drawn at the calcification point lies on the lesion
            assert mask.any() and (mask & bright).sum() >= 0.5 * mask.sum()
    assert all(len(splits) == 1 for splits in by_patient.values())  # patient-level split


def test_monochrome1_dicoms_are_inverted(tmp_path):
    make_inbreast(tmp_path, images=IMAGES[:1], photometric="MONOCHROME1")
    ((split, ds),) = all_samples(tmp_path).values()
    s = ds.get("20586908")
    assert s.meta["dicom_inverted"] and iou(bright_region(s.image), s.masks["malignant"]) > 0.6


def test_roi_points_parsed_from_plist(tmp_path):
    path = tmp_path / "x.xml"
    path.write_text(osirix_xml([("Mass", [(1.5, 2.25), (3, 4), (5, 1)]), ("Calcification", [(7, 8)])], SHAPE))
    rois = read_osirix_rois(path)
    assert rois == [
        {"name": "Mass", "points": [(1.5, 2.25), (3.0, 4.0), (5.0, 1.0)]},
        {"name": "Calcification", "points": [(7.0, 8.0)]},
    ]


# -- bad input -------------------------------------------------------------------------------------
def test_roi_without_points(tmp_path):
    make_inbreast(tmp_path, images=IMAGES[:1])
    (tmp_path / "AllXML" / "20586908.xml").write_text(osirix_xml([("Mass", [])], SHAPE))
    ((_, ds),) = all_samples(tmp_path).values()
    with pytest.raises(SampleError, match=r"20586908.xml: ROI #0 \(Mass\) has no points"):
        ds.get("20586908")


def test_malformed_xml(tmp_path):
    make_inbreast(tmp_path, images=IMAGES[:1])
    truncate(tmp_path / "AllXML" / "20586908.xml", 0.5)
    ((_, ds),) = all_samples(tmp_path).values()
    with pytest.raises(SampleError, match=r"20586908.xml: malformed OsiriX XML"):
        ds.get("20586908")


def test_birads_outside_known_values_and_missing_image(tmp_path):
    make_inbreast(tmp_path, images=IMAGES[:3])
    text = (tmp_path / "INbreast.csv").read_text().replace(";4c", ";7")
    text += "\nremoved;removed;L;CC;201001;99999999;1;1\n"
    (tmp_path / "INbreast.csv").write_text(text)
    found = all_samples(tmp_path)
    with pytest.raises(SampleError, match=r"INbreast.csv line 3: Bi-Rads '7' is outside the known values"):
        found["20586934"][1].get("20586934")
    with pytest.raises(SampleError, match=r"File Name 99999999 has no DICOM"):
        found["99999999"][1].get("99999999")
    assert found["20586908"][1].get("20586908").labels["malignant"] == 1  # the rest go on


def test_truncated_dicom(tmp_path):
    make_inbreast(tmp_path, images=IMAGES[:1])
    path = next((tmp_path / "AllDICOMs").glob("*.dcm"))
    truncate(path, 0.5)
    ((_, ds),) = all_samples(tmp_path).values()
    with pytest.raises(SampleError, match=path.name):
        ds.get("20586908")


def test_csv_missing_column_and_empty(tmp_path):
    make_inbreast(tmp_path, images=IMAGES[:1])
    text = (tmp_path / "INbreast.csv").read_text().replace("Bi-Rads", "Score")
    (tmp_path / "INbreast.csv").write_text(text)
    with pytest.raises(DatasetError, match=r"INbreast.csv: missing column\(s\) 'Bi-Rads'"):
        wsl_bench.create_dataset("inbreast", root=str(tmp_path), image_size=SIZE).ids()
    (tmp_path / "INbreast.csv").write_text(HEADER + "\n")
    with pytest.raises(DatasetError, match="empty dataset"):
        wsl_bench.create_dataset("inbreast", root=str(tmp_path), image_size=SIZE).ids()


def test_xls_without_reader_gives_clear_error(tmp_path):
    pytest.importorskip("pandas")
    try:
        import xlrd  # noqa: F401

        pytest.skip("xlrd is installed: the .xls is readable here")
    except ImportError:
        pass
    make_inbreast(tmp_path, images=IMAGES[:1])
    (tmp_path / "INbreast.csv").unlink()
    (tmp_path / "INbreast.xls").write_bytes(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\0" * 504)
    with pytest.raises(DatasetError, match=r"INbreast.xls: reading .xls needs the 'xlrd' package"):
        wsl_bench.create_dataset("inbreast", root=str(tmp_path), image_size=SIZE).ids()
