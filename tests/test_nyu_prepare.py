"""``wsl-bench data prepare nyu``: the published cropping and optimal-centre steps on raw NYU data.

Expectations are derived here from the published rules (nyukat/GMIC ``src/cropping/crop_mammogram.py``
and ``src/optimal_centers/``), either by hand for rectangle breasts or by a slow, literal
reference (scipy's iterated binary erosion/dilation, a loop over components, a brute-force loop
over every candidate window) — never by calling the implementation under test.
"""

from __future__ import annotations

import csv
import json
import pickle

import numpy as np
import pytest
from fixtures_real import truncate, write_mask, write_png16
from scipy import ndimage

import wsl_bench
from wsl_bench.data import DatasetError
from wsl_bench.datasets._imageio import read_image, write_png8
from wsl_bench.datasets._safe_pickle import load as safe_load
from wsl_bench.datasets.nyu_centers import best_center, flip_for_view
from wsl_bench.datasets.nyu_cropping import crop_mammogram
from wsl_bench.datasets.nyu_prepare import prepare_nyu

VIEWS = ("L-CC", "R-CC", "L-MLO", "R-MLO")
FRAME = (2944, 1920)


# -- the published rules, written out slowly ---------------------------------------------------------
def points_right(view: str, flip: str) -> bool:
    """Published image_orientation: 'NO' → L views point right; 'YES' → R views point right."""
    return (view[0] == "L") if flip == "NO" else (view[0] == "R")


def needs_flip(view: str, flip: str) -> bool:
    """Published flip_image: 'NO' flips R views, 'YES' flips L views."""
    return (flip == "NO" and view[0] == "R") or (flip == "YES" and view[0] == "L")


def ref_crop(img, mode, iterations=100, buffer_size=50):
    """crop_img_from_largest_connected, step by step."""
    h, w = img.shape
    eroded = ndimage.binary_erosion(img > 0, iterations=iterations)  # default cross, border_value 0
    labels, n = ndimage.label(eroded)
    sizes = {i: int((labels == i).sum()) for i in range(1, n + 1)}
    largest = max(sizes, key=lambda i: (sizes[i], -i))  # pandas idxmax: first label with the max
    mask = ndimage.binary_dilation(labels == largest, iterations=iterations)
    rows = [y for y in range(h) if mask[y].any()]
    cols = [x for x in range(w) if mask[:, x].any()]
    top, bottom, left, right = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    bottom_y = bottom - 1
    bottom_xs = [x for x in range(w) if mask[bottom_y, x]]
    if top > 0:
        top -= min(top, buffer_size)
    if bottom < h:
        bottom += min(h - bottom, buffer_size)
    distance = (w - right) if mode == "left" else left
    if mode == "left":
        if left > 0:
            left -= min(left, buffer_size)
    elif right < w:
        right += min(w - right, buffer_size)
    bottom_y -= top
    if mode == "left":
        bottom_xs = sorted(right - x for x in bottom_xs)
    else:
        bottom_xs = [x - left for x in bottom_xs]
    crop = mask[top:bottom, left:right]
    ignore = crop.shape[0] // 3  # int(h * (1 / 3)) under Python 3; equal for every height up to 200,000
    search = crop[ignore:]
    search_cols = [x for x in range(search.shape[1]) if search[:, x].any()]
    rx = search_cols[-1] if mode == "right" else search_cols[0]
    rys = [y + ignore for y in range(search.shape[0]) if search[y, rx]]
    if mode == "left":
        rx = crop.shape[1] - rx
    return (
        (top, bottom, left, right),
        ((rys[0], rys[-1]), rx),
        (bottom_y, (bottom_xs[0], bottom_xs[-1])),
        distance,
    )


def ref_center(img, view, rightmost_x, bottommost_y, frame=FRAME):
    """get_image_optimal_window_info with the view's constraint, by brute force over the candidates."""
    h, w = img.shape
    fh, fw = frame
    com = (h // 2, w // 2)
    half = (fh // 2, fw // 2)
    rem = (fh - half[0], fw - half[1])
    tl = [half[0], half[1]]
    br = [h - rem[0], w - rem[1]]
    for a in (0, 1):
        if tl[a] >= br[a]:
            tl[a] = br[a] = com[a]
    br = [br[0] + 1, br[1] + 1]  # exclusive
    if view.endswith("CC"):
        if tl[1] != br[1]:
            new_x = rightmost_x - half[1]
            tl[1], br[1] = new_x - 1, new_x
    else:
        band = img[:, -fw:]
        nonzero_rows = [y for y in range(h) if (band[y] != 0).any()]
        if nonzero_rows:
            bottommost_y = min(nonzero_rows[-1], bottommost_y)
        br = [bottommost_y - half[0], rightmost_x - half[1]]
        tl = [br[0] - 1, br[1] - 1]
    candidates = [(y, x) for y in range(tl[0], br[0]) for x in range(tl[1], br[1])]
    if len(candidates) == 1:
        return candidates[0]

    def score(y, x):
        t, left = y - half[0], x - half[1]
        b = min(y + rem[0] + max(-t, 0), h)
        r = min(x + rem[1] + max(-left, 0), w)
        return int((img[max(t, 0) : b, max(left, 0) : r] > 0).sum())

    scores = [score(y, x) for y, x in candidates]
    best = [c for c, s in zip(candidates, scores, strict=True) if s == max(scores)]
    # nearest to com; min() keeps the first of equals, i.e. the (y, x) grid order
    return min(best, key=lambda c: (c[0] - com[0]) ** 2 + (c[1] - com[1]) ** 2)


def ref_model_window(shape, center, view, frame=FRAME):
    """(top, left, pad_front): the published test-time window (no noise) in the padded image."""
    h, w = shape
    fh, fw = frame
    top, left = center[0] - fh // 2, center[1] - fw // 2
    pad_front = 0
    if h < fh:
        if view.endswith("CC"):
            pad_front = int((fh - h) / 2)
        top = 0
    else:
        top = 0 if top < 0 else (h - fh if top + fh > h else top)
    if w < fw:
        left = 0
    else:
        left = 0 if left < 0 else (w - fw if left + fw > w else left)
    return top, left, pad_front


def published(img, view, flip, iterations=100, buffer_size=50, frame=FRAME):
    """Both steps, by the reference: (window, rightmost, bottommost, distance, center)."""
    mode = "right" if points_right(view, flip) else "left"
    window, rightmost, bottommost, distance = ref_crop(img, mode, iterations, buffer_size)
    top, bottom, left, right = window
    crop = img[top:bottom, left:right]
    if needs_flip(view, flip):
        crop = crop[:, ::-1]
    return window, rightmost, bottommost, distance, ref_center(crop, view, rightmost[1], bottommost[0], frame)


def implementation(img, view, flip, iterations=100, buffer_size=50, frame=FRAME):
    cropped, info = crop_mammogram(img, flip, view, iterations, buffer_size)
    t, b, left, r = info.window_location
    np.testing.assert_array_equal(cropped, img[t:b, left:r])  # unflipped, as the published code saves it
    center = best_center(flip_for_view(cropped, view, flip), view, info.rightmost_points, info.bottommost_points, frame)
    return info.window_location, info.rightmost_points, info.bottommost_points, info.distance_from_starting_side, center


# -- synthetic raw images ------------------------------------------------------------------------------
def ellipse_breast(shape, center, axes, value=1500, seed=0):
    h, w = shape
    yy, xx = np.mgrid[:h, :w].astype(np.float64)
    inside = ((yy - center[0]) / axes[0]) ** 2 + ((xx - center[1]) / axes[1]) ** 2 < 1
    rng = np.random.default_rng(seed)
    return np.where(inside, value + rng.integers(0, 400, size=shape), 0).astype(np.uint16)


def with_artifacts(img, seed=0):
    """A thin line (erased by the erosion) and sparse bright noise (counted by the centre search)."""
    img = img.copy()
    h, w = img.shape
    img[h - 12 : h - 10, :] = 700
    rng = np.random.default_rng(seed)
    ys, xs = rng.integers(0, h, 60), rng.integers(0, w, 60)
    img[ys, xs] = 900
    return img


def oriented(img, view, flip):
    """An image drawn pointing right, stored the way the exam says this view is stored."""
    return img if points_right(view, flip) else img[:, ::-1].copy()


# -- crop window and recorded points -------------------------------------------------------------------
@pytest.mark.parametrize("flip", ["NO", "YES"])
@pytest.mark.parametrize("view", VIEWS)
@pytest.mark.parametrize("r0", [60, 0], ids=["inside", "touches-top"])
def test_rectangle_breast_by_hand(view, flip, r0):
    """A 280-row, 230-column rectangle against the chest-wall border (and the top border when r0=0),
    a 2-pixel line below it: every recorded value follows from the rules by hand.

    Erosion by the 100-step cross (outside = background) keeps rows [r0+100, 239] and columns
    [100, 129] (chest wall on the left); dilation restores the rectangle except its corner
    triangles, so its last row holds columns [100, 129] and its farthest column 229 holds rows
    [r0+100, 239].
    """
    h, w, r1, width = 400, 300, 340, 230
    img = np.zeros((h, w), np.uint16)
    img[r0:r1, :width] = 3000
    img[385:387, :] = 600  # thin line: not part of the breast, but nonzero for the centre search
    right = points_right(view, flip)
    stored = img if right else img[:, ::-1].copy()
    window, rightmost, bottommost, distance, center = implementation(stored, view, flip)

    top, bottom = max(r0 - 50, 0), r1 + 50
    if right:
        left, right_edge = 0, width + 50
        exp_bottom_x, exp_rx = (100, width - 101), width - 1
    else:  # breast in columns [70, 300): buffer on the left; points recorded as published (right - x)
        left, right_edge = w - width - 50, w
        exp_bottom_x, exp_rx = (101, width - 100), width
    crop_h = bottom - top
    assert window == (top, bottom, left, right_edge)
    assert distance == 0
    assert bottommost == (r1 - 1 - top, exp_bottom_x)
    # rows searched start below the top third of the crop
    assert rightmost == ((max(r0 + 100 - top, crop_h // 3), 239 - top), exp_rx)
    if view.endswith("CC"):  # no taller than the frame: the row is com; the column from the rightmost point
        assert center == (crop_h // 2, exp_rx - 961)
    else:  # the line is lower than the breast, so bottommost_y wins the min
        assert center == (r1 - 1 - top - 1473, exp_rx - 961)


@pytest.mark.parametrize("flip", ["NO", "YES"])
@pytest.mark.parametrize("view", VIEWS)
def test_matches_published_reference(view, flip):
    """Elliptic breast, a second large component (smaller than the breast), a line and noise."""
    img = ellipse_breast((700, 720), (350, 0), (300, 400), seed=1)
    img[450:690, 470:710] = 2500  # survives the erosion: the largest component must be chosen
    img = with_artifacts(img, seed=2)
    stored = oriented(img, view, flip)
    assert implementation(stored, view, flip) == published(stored, view, flip)


@pytest.mark.parametrize("flip", ["NO", "YES"])
@pytest.mark.parametrize("view", ["L-CC", "R-CC"])
def test_cc_taller_than_the_frame_searches_rows(view, flip):
    """A crop taller than 2944 rows: every row from 1472 to h-1472 is a candidate centre."""
    img = ellipse_breast((3400, 460), (1700, 0), (1690, 420), seed=3)
    img = with_artifacts(img, seed=4)
    img[200:260, 300:420] = 0  # holes so that the windows' counts differ
    stored = oriented(img, view, flip)
    ours = implementation(stored, view, flip)
    assert ours == published(stored, view, flip)
    crop_h = ours[0][1] - ours[0][0]
    assert crop_h > FRAME[0] and 1472 <= ours[4][0] <= crop_h - 1472


@pytest.mark.parametrize("flip", ["NO", "YES"])
@pytest.mark.parametrize("view", ["L-MLO", "R-MLO"])
def test_mlo_wider_than_the_frame_caps_bottommost(view, flip):
    """A crop wider than 1920 columns: only the last 1920 columns cap bottommost_y."""
    img = ellipse_breast((560, 2600), (0, 0), (470, 2450), seed=5)  # touches the top and the chest wall
    img[300:530, :210] = 1600  # lowest next to the chest wall, left of the last 1920 columns of the crop
    stored = oriented(img, view, flip)
    ours = implementation(stored, view, flip)
    assert ours == published(stored, view, flip)
    (top, bottom, left, right), _, bottommost, _, center = ours
    assert right - left > FRAME[1]
    assert center[0] + 1473 < bottommost[0]  # the band's last nonzero row is above the breast's last row


def test_centre_ties_by_hand():
    """Frame 40×20 on a 100×30 flipped CC crop: windows holding a whole 5-row band tie; the nearest
    to com (row 50) wins, and between rows 45 and 55 (both 5 away) the first in (y, x) order."""
    img = np.zeros((100, 30), np.uint16)
    img[25:30] = 1
    img[70:75] = 1
    # candidates: rows 20..80; x fixed at rightmost_x - 10 - 1
    assert best_center(img, "L-CC", ((0, 0), 25), (0, (0, 0)), frame=(40, 20)) == (45, 14)
    img[75] = 1  # the lower band now has 6 rows: a unique best set, rows 56..80; nearest 56
    assert best_center(img, "L-CC", ((0, 0), 25), (0, (0, 0)), frame=(40, 20)) == (56, 14)
    assert ref_center(img, "L-CC", 25, 0, frame=(40, 20)) == (56, 14)


@pytest.mark.parametrize("seed", range(4))
def test_small_frame_search_matches_reference(seed):
    """Random small crops and frames: the vectorised search equals the brute-force loop."""
    rng = np.random.default_rng(seed)
    h, w = int(rng.integers(60, 120)), int(rng.integers(30, 90))
    img = (rng.random((h, w)) < 0.3).astype(np.uint16) * rng.integers(1, 5, (h, w)).astype(np.uint16)
    frame = (int(rng.integers(10, h)), int(rng.integers(6, w)))
    for view in VIEWS:
        rx, by = int(rng.integers(0, w)), int(rng.integers(0, h))
        assert best_center(img, view, ((0, 0), rx), (by, (0, 0)), frame) == ref_center(img, view, rx, by, frame)


# -- the driver: layout, bad input, resume ------------------------------------------------------------
def raw_exam(number, flip="NO"):
    exam = {
        "horizontal_flip": flip,
        "cancer_label": {"left_benign": 0, "right_benign": 1, "left_malignant": 0, "right_malignant": 0},
    }
    for view in VIEWS:
        exam[view] = [f"{number}_{view}"]
        for cls in ("benign", "malignant"):
            exam[f"{view}_{cls}_seg"] = [f"{number}_{view}_{cls}"]
    return exam


def small_raw(view, flip, seed=0):
    img = ellipse_breast((420, 330), (210, 0), (190, 280), seed=seed)
    return oriented(with_artifacts(img, seed=seed), view, flip)


def write_raw_list(root, exams, name="exam_list_before_cropping.pkl"):
    root.mkdir(parents=True, exist_ok=True)
    (root / name).write_bytes(pickle.dumps(exams, protocol=3))


def test_bad_images_fail_with_reasons_and_the_rest_is_prepared(tmp_path):
    src, out = tmp_path / "raw", tmp_path / "prepared"
    exams = [raw_exam(0, "NO"), raw_exam(1, "YES"), raw_exam(2, "NO")]
    exams[2]["R-CC"] = ["1_L-CC"]  # listed twice
    exams[2]["L-CC"] = ["../escape"]
    exams[2]["horizontal_flip"] = "NO"
    for number in (0, 1):
        for view in VIEWS:
            write_png16(src / "images" / f"{number}_{view}.png", small_raw(view, exams[number]["horizontal_flip"]))
    (src / "images" / "0_R-CC.png").unlink()  # missing
    write_png16(src / "images" / "0_L-MLO.png", np.zeros((300, 200), np.uint16))  # blank
    write_png8(src / "images" / "0_R-MLO.png", np.full((300, 200), 50, np.uint8))  # 8-bit
    truncate(src / "images" / "1_R-CC.png", 0.5)  # unreadable
    thin = np.zeros((300, 200), np.uint16)
    thin[:, :120] = 2000  # a breast thinner than 201 pixels: nothing survives 100 erosions
    write_png16(src / "images" / "1_R-MLO.png", thin)
    write_png16(src / "images" / "2_L-MLO.png", small_raw("L-MLO", "NO", seed=9))
    write_png16(src / "images" / "2_R-MLO.png", small_raw("R-MLO", "NO", seed=9))
    write_raw_list(src, exams)

    summary = prepare_nyu(src, out, workers=1, progress=False)
    reasons = summary.failures
    assert reasons["0_R-CC"].endswith("0_R-CC.png: file not found")
    assert "blank image: every pixel is 0" in reasons["0_L-MLO"]
    assert "unexpected bit depth: 8-bit grayscale PNG" in reasons["0_R-MLO"]
    assert "1_R-CC.png: truncated or corrupt PNG" in reasons["1_R-CC"]
    assert "no breast found: no foreground region survives 100 erosion iterations" in reasons["1_R-MLO"]
    assert "listed twice" in reasons["1_L-CC (exam #2 R-CC #0)"]
    assert "refused as a path" in reasons["../escape"]
    assert summary.failed == 7 and summary.prepared == 5 and summary.reused == 0

    data = safe_load(out / "data.pkl")
    assert [e["L-CC"] for e in data] == [["0_L-CC"], ["1_L-CC"], []]
    assert [e["R-CC"] for e in data] == [[], [], []]
    assert data[0]["R-CC_benign_seg"] == [] and data[0]["L-CC_benign_seg"] == ["0_L-CC_benign"]
    assert data[0]["cancer_label"] == exams[0]["cancer_label"]  # everything else is kept
    assert sorted(p.stem for p in (out / "cropped_images").iterdir()) == [
        "0_L-CC",
        "1_L-CC",
        "1_L-MLO",
        "2_L-MLO",
        "2_R-MLO",
    ]
    manifest = json.loads((out / "prepare_manifest.json").read_text())
    assert manifest["counts"] == {"listed": 12, "prepared": 5, "reused": 0, "failed": 7}
    assert set(manifest["failures"]) == set(reasons)

    # every prepared value equals the reference's, image by image
    for number, exam in enumerate(exams):
        for view in VIEWS:
            stem = exam[view][0]
            if stem not in data[number][view]:
                continue
            img = read_image(src / "images" / f"{stem}.png")
            window, rightmost, bottommost, distance, center = published(img, view, exam["horizontal_flip"])
            assert data[number]["window_location"][view] == [window]
            assert data[number]["rightmost_points"][view] == [rightmost]
            assert data[number]["bottommost_points"][view] == [bottommost]
            assert data[number]["distance_from_starting_side"][view] == [distance]
            assert data[number]["best_center"][view] == [(float(center[0]), float(center[1]))]
            t, b, left, r = window
            np.testing.assert_array_equal(read_image(out / "cropped_images" / f"{stem}.png"), img[t:b, left:r])


def test_published_format_json_copy_and_resume(tmp_path):
    src, out = tmp_path / "raw", tmp_path / "prepared"
    exam = raw_exam(0, "NO")
    for view in VIEWS:
        write_png16(src / "images" / f"0_{view}.png", small_raw(view, "NO", seed=3))
    write_raw_list(src, [exam])
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")}
    first = prepare_nyu(src, out, workers=1, progress=False)
    assert (first.prepared, first.failed) == (4, 0)
    # nothing is written outside --out (no temporary files left anywhere)
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if out not in p.parents and p != out} == before
    assert sorted(p.name for p in out.iterdir()) == [
        "cropped_images",
        "data.json",
        "data.pkl",
        "prepare_manifest.json",
    ]  # no segmentation/ in the source, none here (masks: not annotated)
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]

    raw = (out / "data.pkl").read_bytes()
    assert raw[:2] == b"\x80\x04"  # protocol 4, as the published code's HIGHEST_PROTOCOL under Python 3.6
    data = safe_load(out / "data.pkl")
    assert list(data[0])[-5:] == [
        "window_location",
        "rightmost_points",
        "bottommost_points",
        "distance_from_starting_side",
        "best_center",
    ]
    entry = data[0]
    for view in VIEWS:
        (w,), (rp,), (bp,), (d,), (c,) = (
            entry[k][view]
            for k in (
                "window_location",
                "rightmost_points",
                "bottommost_points",
                "distance_from_starting_side",
                "best_center",
            )
        )
        assert isinstance(w, tuple) and len(w) == 4 and all(type(v) is int for v in w)
        assert isinstance(rp, tuple) and isinstance(rp[0], tuple) and type(rp[1]) is int
        assert isinstance(bp, tuple) and type(bp[0]) is int and isinstance(bp[1], tuple)
        assert type(d) is int and isinstance(c, tuple) and all(type(v) is float for v in c)
    assert json.loads((out / "data.json").read_text()) == json.loads(json.dumps(data))

    # the loader reads the prepared folder; no image fails
    ds = wsl_bench.create_dataset("nyu", root=str(out), image_size=(92, 60))
    assert ds.ids() == sorted(f"0_{v}" for v in VIEWS)
    samples = {s.id: s for s in ds}
    for sample in samples.values():
        assert sample.meta["best_center"] is not None and sample.meta["preprocess"]["orientation_check"] == "ok"
    # without the pickle the loader reads the JSON copy, to the same samples
    (out / "data.pkl").unlink()
    from_json = wsl_bench.create_dataset("nyu", root=str(out), image_size=(92, 60))
    assert from_json.exam_list_path.name == "data.json"
    for sample in from_json:
        np.testing.assert_array_equal(sample.image, samples[sample.id].image)
        assert sample.meta["best_center"] == samples[sample.id].meta["best_center"]

    # rerun: everything reused; a changed source is recomputed
    again = prepare_nyu(src, out, workers=1, progress=False)
    assert (again.prepared, again.reused, again.failed) == (4, 4, 0)
    assert (out / "data.pkl").read_bytes() == raw
    write_png16(src / "images" / "0_L-CC.png", small_raw("L-CC", "NO", seed=4))
    third = prepare_nyu(src, out, workers=1, progress=False)
    assert third.reused == 3
    img = read_image(src / "images" / "0_L-CC.png")
    assert safe_load(out / "data.pkl")[0]["window_location"]["L-CC"] == [published(img, "L-CC", "NO")[0]]
    exam["horizontal_flip"] = "YES"  # the same files read another way: nothing is reused
    write_raw_list(src, [exam])
    assert prepare_nyu(src, out, workers=1, progress=False).reused == 0


def test_refuses_lists_that_are_not_raw_and_foreign_outputs(tmp_path):
    src = tmp_path / "raw"
    exam = raw_exam(0)
    exam["best_center"] = {v: [(1.0, 1.0)] for v in VIEWS}
    write_raw_list(src, [exam])
    (src / "images").mkdir()
    with pytest.raises(DatasetError, match="already has best_center"):
        prepare_nyu(src, tmp_path / "out", workers=1, progress=False)
    write_raw_list(src, [raw_exam(0)])
    with pytest.raises(DatasetError, match="must differ from the source folder"):
        prepare_nyu(src, src, workers=1, progress=False)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "data.pkl").write_bytes(b"not ours")
    with pytest.raises(DatasetError, match="did not write"):
        prepare_nyu(src, foreign, workers=1, progress=False)
    assert (foreign / "data.pkl").read_bytes() == b"not ours"


@pytest.mark.slow
@pytest.mark.slow
def test_two_workers_give_the_same_output(tmp_path):
    src = tmp_path / "raw"
    exam = raw_exam(0, "YES")
    for view in VIEWS:
        write_png16(src / "images" / f"0_{view}.png", small_raw(view, "YES", seed=6))
    write_raw_list(src, [exam])
    one = prepare_nyu(src, tmp_path / "one", workers=1, progress=False)
    two = prepare_nyu(src, tmp_path / "two", workers=2, progress=False)
    assert (one.prepared, two.prepared) == (4, 4)
    assert (tmp_path / "one" / "data.pkl").read_bytes() == (tmp_path / "two" / "data.pkl").read_bytes()


def test_cli_sends_a_prepared_list_to_the_folder_format(tmp_path, monkeypatch, capsys):
    """`data prepare nyu` on a list that already has best_center keeps its earlier meaning."""
    from fixtures_real import make_nyu

    import wsl_bench.datasets.prepare as prepare
    from wsl_bench.cli import main

    make_nyu(tmp_path / "src", n_exams=1)
    calls = []
    monkeypatch.setattr(prepare, "prepare_dataset", lambda *a, **k: calls.append((a, k)) or "OUT")
    assert main(["data", "prepare", "nyu", "--src", str(tmp_path / "src"), "--out", str(tmp_path / "out")]) == 0
    assert calls and calls[0][0][0] == "nyu"
    assert "preparing it into the folder format" in capsys.readouterr().out


# -- the loader on a raw list ------------------------------------------------------------------------
def test_loader_on_a_raw_list_says_to_prepare(tmp_path, capsys):
    from wsl_bench.cli import main

    src = tmp_path / "raw"
    for view in VIEWS:
        write_png16(src / "images" / f"0_{view}.png", small_raw(view, "NO"))
    write_raw_list(src, [raw_exam(0)])
    with pytest.raises(DatasetError, match=r"raw exam list.*wsl-bench data prepare nyu --src .*raw --out DIR"):
        wsl_bench.create_dataset("nyu", root=str(src)).ids()
    code = main(
        [
            "run",
            "--methods",
            "intensity",
            "--dataset",
            "nyu",
            "--data-root",
            str(src),
            "--preset",
            "tiny",
            "--out",
            str(tmp_path / "run"),
            "--no-progress",
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "wsl-bench data prepare nyu" in err and err.count("\n") == 1
    assert not (tmp_path / "run" / "records.jsonl").exists()


# -- end to end: published sample layout, prepare, run, Dice -----------------------------------------------
def model_frame_mask(raw_shape, disc, view, flip, window, center, frame=FRAME):
    """The disc's mask in the published model frame, mapping every frame pixel back to the raw image."""
    top, bottom, left, right = window
    crop_h, crop_w = bottom - top, right - left
    f_top, f_left, pad_front = ref_model_window((crop_h, crop_w), center, view, frame)
    rows, cols = np.mgrid[: frame[0], : frame[1]]
    y = rows + f_top - pad_front  # row of the flipped crop
    x = cols + f_left
    if needs_flip(view, flip):
        x = crop_w - 1 - x
    inside = (y >= 0) & (y < crop_h) & (x >= 0) & (x < crop_w)
    cy, cx, r = disc
    return inside & ((y + top - cy) ** 2 + (x + left - cx) ** 2 < r**2)


@pytest.mark.slow
@pytest.mark.slow
def test_prepare_then_run_scores_every_present_image_with_aligned_masks(tmp_path):
    """The published sample_data layout (raw list, images/, segmentation/): prepare, run, Dice."""
    from wsl_bench.cli import main

    src, out, run = tmp_path / "sample_data", tmp_path / "prepared", tmp_path / "run"
    exam = raw_exam(0, "NO")
    exam["L-MLO"] = []
    cases = {  # view: raw shape, breast (centre, axes) drawn pointing right, disc (cy, cx, r) pointing right
        "R-CC": ((3050, 2150), ((1525, 0), (1500, 2000)), (1300, 1200, 180)),  # taller and wider than the frame
        "R-MLO": ((2000, 1500), ((0, 0), (1900, 1350)), (900, 600, 160)),  # smaller: padded frame
    }
    for view, (shape, (centre, axes), (cy, cx, r)) in cases.items():
        img = ellipse_breast(shape, centre, axes, value=1200, seed=7)
        yy, xx = np.mgrid[: shape[0], : shape[1]]
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < r**2] = 4000
        stored = oriented(img, view, "NO")  # right views are stored pointing left
        write_png16(src / "images" / f"0_{view}.png", stored)
        disc = (cy, shape[1] - 1 - cx, r)  # in the stored image
        window, _, _, _, center = published(stored, view, "NO")
        write_mask(
            src / "segmentation" / f"0_{view}_benign.png", model_frame_mask(shape, disc, view, "NO", window, center)
        )
    # 0_L-CC is listed but its file is missing
    write_raw_list(src, [exam])

    assert main(["data", "prepare", "nyu", "--src", str(src), "--out", str(out), "--workers", "1"]) == 1
    assert (
        main(
            [
                "run",
                "--methods",
                "intensity",
                "--dataset",
                "nyu",
                "--data-root",
                str(out),
                "--preset",
                "tiny",
                "--out",
                str(run),
                "--no-progress",
            ]
        )
        == 0
    )
    records = [json.loads(line) for line in (run / "records.jsonl").read_text().splitlines()]
    assert sorted(r["image_id"] for r in records) == ["0_R-CC", "0_R-MLO"]
    assert all(r["status"] == "ok" and r["has_lesion"]["benign"] for r in records)
    with open(run / "report" / "results.csv", newline="") as handle:
        rows = {(row["method"], row["class"]): row for row in csv.DictReader(handle)}
    assert float(rows[("intensity", "benign")]["dice_oracle"]) > 0.8
