"""Implausible annotations (issue 24, item 8): an INbreast point at 1e400, VinDr boxes at ±1e12 or
wholly outside the image, a VinDr ``height`` of ``inf`` and an all-white raw NYU image each fail
their own image with an error naming the file, the row (or ROI) and the value; the other images load.
"""

from __future__ import annotations

import csv
import re
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))

import wsl_bench  # noqa: E402
from wsl_bench.data import SPLITS, DatasetError, SampleError  # noqa: E402


def _all(name: str, root: Path, size=(96, 64)) -> dict[str, object]:
    """id → the dataset (of its split) holding it."""
    found = {}
    for split in SPLITS:
        try:
            dataset = wsl_bench.create_dataset(name, root=str(root), split=split, image_size=size)
            found.update({i: dataset for i in dataset.ids()})
        except DatasetError:  # a split the mini release leaves empty
            continue
    return found


# ------------------------------------------------------------------------------- INbreast
@pytest.mark.parametrize("point", ["(1e400, 20.0)", "(-1e300, 20.0)", "(500.0, 20.0)"],
                         ids=["infinite", "far-negative", "outside"])
def test_an_inbreast_point_off_the_image_fails_that_image(tmp_path, point):
    pytest.importorskip("pydicom")
    from test_dataset_inbreast import IMAGES, make_inbreast

    make_inbreast(tmp_path)
    fid = IMAGES[0][0]  # BI-RADS 5, one polygon
    xml = tmp_path / "AllXML" / f"{fid}.xml"
    text = xml.read_text()
    first = re.search(r"<key>Point_px</key><array><string>([^<]*)</string>", text)
    xml.write_text(text[: first.start(1)] + point + text[first.end(1):])
    found = _all("inbreast", tmp_path)
    with pytest.raises(SampleError) as err:
        found[fid].get(fid)
    message = str(err.value)
    assert str(xml) in message and "ROI #0 (Mass)" in message and len(message) < 500
    assert ("not a finite position" in message and point in message) or "lies outside the 140×100 image" in message
    for other, dataset in found.items():  # every other image still loads
        if other != fid:
            assert dataset.get(other).id == other


# ------------------------------------------------------------------------------- VinDr
def _vindr(tmp_path: Path, **cells: str) -> Path:
    """The mini VinDr release with ``cells`` (column → value) set on the first box row (img_a)."""
    pytest.importorskip("pydicom")
    from test_dataset_vindr import HEADER, make_vindr

    make_vindr(tmp_path)
    path = tmp_path / "finding_annotations.csv"
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    for column, value in cells.items():
        rows[1][HEADER.index(column)] = value
    with open(path, "w", newline="") as handle:
        csv.writer(handle).writerows(rows)
    return path


@pytest.mark.parametrize(
    ("cells", "value"),
    [({"xmin": "-1e12", "xmax": "1e12"}, "-1000000000000.0"),
     ({"ymin": "-1e12", "ymax": "1e12"}, "1000000000000.0"),
     ({"xmin": "500", "xmax": "600"}, "500.0"),  # BI-RADS 5 box wholly right of the 110-pixel-wide image
     ({"xmin": "-inf"}, "-inf")],
    ids=["wide", "tall", "outside", "infinite"])
def test_a_vindr_box_off_the_image_fails_that_image(tmp_path, cells, value):
    path = _vindr(tmp_path, **cells)
    found = _all("vindr", tmp_path)
    with pytest.raises(SampleError) as err:
        found["img_a"].get("img_a")
    message = str(err.value)
    assert f"{path} line 2" in message and value in message
    assert "lies outside the 150×110 image" in message or "not finite" in message or "malformed box" in message
    assert found["img_c"].get("img_c").id == "img_c"


@pytest.mark.parametrize("height", ["inf", "-3", "nan", "12.5", "tall"])
def test_a_vindr_height_that_is_not_a_size_fails_that_image_not_the_run(tmp_path, height):
    path = _vindr(tmp_path, height=height)
    found = _all("vindr", tmp_path)  # the index builds: the other images are usable
    with pytest.raises(SampleError, match=rf"{re.escape(str(path))} line 2: height '{height}'"):
        found["img_a"].get("img_a")
    assert found["img_c"].get("img_c").id == "img_c"


# ------------------------------------------------------------------------------- NYU
def test_an_all_white_raw_nyu_image_is_not_prepared(tmp_path):
    from test_nyu_prepare import VIEWS, raw_exam, small_raw, write_raw_list

    from wsl_bench.datasets._imageio import write_png16
    from wsl_bench.datasets.nyu_prepare import prepare_nyu

    src, out = tmp_path / "raw", tmp_path / "prepared"
    for view in VIEWS:
        write_png16(src / "images" / f"0_{view}.png", small_raw(view, "NO"))
    white = src / "images" / "0_L-CC.png"
    write_png16(white, np.full((420, 330), 65535, np.uint16))
    write_raw_list(src, [raw_exam(0, "NO")])
    summary = prepare_nyu(src, out, workers=1, progress=False)
    assert summary.failed == 1
    (reason,) = summary.failures.values()
    assert str(white) in reason and "65535" in reason and "constant image" in reason
    assert not (out / "cropped_images" / "0_L-CC.png").exists()
    assert (out / "cropped_images" / "0_R-CC.png").exists()
