"""Hostile or careless dataset files: stale cache keys, ids and paths that leave the data folder,
cells that would exhaust memory or recursion (issue 12, dataset side)."""

from __future__ import annotations

import csv
import os
import pickle

import numpy as np
import pytest

import wsl_bench
from wsl_bench.data import DatasetError, SampleError
from wsl_bench.datasets._imageio import write_mask_png, write_png16
from wsl_bench.datasets.folder import FolderDataset, FolderWriter
from wsl_bench.paths import cache_root

SHAPE = (40, 30)
HEADER = "id,split,benign,malignant,image,lesion_areas\n"


def _image(seed: int, shape=SHAPE) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 4096, size=shape, dtype=np.uint16)


def _blob(shape=SHAPE) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[5:12, 4:9] = True
    return mask


@pytest.fixture
def folder_set(tmp_path):
    root = tmp_path / "set"
    writer = FolderWriter(root, extra_columns=("view",))
    for k, split in enumerate(["train", "train", "train", "val", "test"]):
        labels = {"benign": k % 2, "malignant": 0}
        masks = {"benign": _blob() if k % 2 else None, "malignant": None}
        writer.write(f"img{k}", split, _image(k), masks, labels, {"view": "CC"})
    return root


@pytest.fixture(autouse=True)
def remember_fresh_files(monkeypatch):
    """Remember hashes of files written a moment ago (the cache waits 2 s: files changed within one
    timestamp tick could change again unnoticed)."""
    try:
        from wsl_bench.datasets import _files
    except ImportError:  # (the code before file hashing existed)
        return
    monkeypatch.setattr(_files, "_RACY_SECONDS", -1.0)


# ----------------------------------------------------------------------------- 3: describe() covers the files
def test_describe_changes_when_a_training_image_is_replaced(folder_set):
    before = FolderDataset(folder_set, split="train").describe()
    assert FolderDataset(folder_set, split="train").describe() == before  # stable
    path = folder_set / "images" / "img1.png"
    stat = path.stat()
    write_png16(path, _image(99))  # same size, other pixels, labels.csv untouched
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # even with its old modification time
    after = FolderDataset(folder_set, split="train").describe()
    assert after["index_sha256"] == before["index_sha256"]
    assert after != before
    # another split's files do not change this split's description
    write_png16(folder_set / "images" / "img4.png", _image(98))
    assert FolderDataset(folder_set, split="train").describe() == after


def test_describe_changes_when_a_mask_appears_or_changes(folder_set):
    first = FolderDataset(folder_set, split="train").describe()
    mask = folder_set / "masks" / "benign" / "img1.png"
    write_mask_png(mask, np.roll(_blob(), 3, axis=0))
    second = FolderDataset(folder_set, split="train").describe()
    assert second != first
    write_mask_png(folder_set / "masks" / "malignant" / "img0.png", np.zeros(SHAPE, bool))  # a new (empty) mask
    assert FolderDataset(folder_set, split="train").describe() != second


def test_file_hashes_are_cached_in_the_project_cache_not_the_data_folder(folder_set, monkeypatch):
    listing = sorted(p.relative_to(folder_set) for p in folder_set.rglob("*"))
    described = FolderDataset(folder_set, split="train").describe()
    assert sorted(p.relative_to(folder_set) for p in folder_set.rglob("*")) == listing  # nothing written there
    assert list((cache_root() / "file-hashes").glob("*.json"))
    # warm: unchanged files are not read again
    from wsl_bench.datasets import _files

    read = []
    original = _files._sha256_file
    monkeypatch.setattr(_files, "_sha256_file", lambda p: read.append(p) or original(p))
    assert FolderDataset(folder_set, split="train").describe() == described
    assert read == []
    write_png16(folder_set / "images" / "img2.png", _image(77))
    FolderDataset(folder_set, split="train").describe()
    assert [os.path.basename(p) for p in read] == ["img2.png"]


def test_checkpoint_key_follows_the_training_images(folder_set):
    """The cache key of trained weights changes when a training image does (the stale-checkpoint bug)."""
    from wsl_bench.training.cache import checkpoint_key_data, train_config_for

    method = wsl_bench.create_method("cam", image_size=SHAPE)
    config = train_config_for(method, "tiny", 0)

    def key():
        return checkpoint_key_data(method, config, FolderDataset(folder_set, split="train"),
                                   FolderDataset(folder_set, split="val"))

    before = key()
    write_png16(folder_set / "images" / "img0.png", _image(55))
    assert key()["train_data"] != before["train_data"]


# ----------------------------------------------------------------------------- 4: ids and paths
def _index(root, rows: str, header: str = HEADER) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / "labels.csv").write_text(header + rows)


@pytest.mark.parametrize(
    ("sample_id", "message"),
    [
        ('""', "empty id"),
        ("a" * 256, "id of 256 characters"),
        ('"a\x00b"', "control character '\\\\x00'"),
        ('"a\x1bb"', "control character '\\\\x1b'"),
        ('"a\nb"', "control character '\\\\n'"),
    ],
)
def test_unrepresentable_ids_are_refused_naming_file_and_line(tmp_path, sample_id, message):
    write_png16(tmp_path / "images" / "ok.png", _image(0))
    _index(tmp_path, f"ok,test,0,0,images/ok.png,\n{sample_id},test,0,0,images/ok.png,\n")
    with pytest.raises(DatasetError, match=rf"labels.csv, line 3: .*{message}"):
        FolderDataset(tmp_path, split="test")


@pytest.mark.parametrize("sample_id", ["/some/dir/evil", "../evil", "a/b", "a\\b", ".."])
def test_path_like_ids_are_ids_never_paths(tmp_path, sample_id):
    root = tmp_path / "root"
    write_png16(root / "scans" / "one.png", _image(0))
    # files where an id-derived path would land: they must never be read
    for folder in (tmp_path, root / "images", root / "masks" / "benign"):
        write_mask_png(folder / "evil.png", _blob())
    # without an image cell there is no file to read: refused, naming the file and line
    _index(root, f'"{sample_id}",test,1,0,,\n')
    with pytest.raises(DatasetError, match=r"labels.csv, line 2: id .* is not a plain file name.*'image' column"):
        FolderDataset(root, split="test")
    # with one, the id is a legal id; its masks are not looked up under masks/<class>/<id>.png
    _index(root, f'"{sample_id}",test,1,0,scans/one.png,\n')
    sample = FolderDataset(root, split="test").get(sample_id)
    assert sample.id == sample_id
    assert sample.masks["benign"] is None  # label 1 and no mask file: not annotated
    assert sample.meta["source"] == str(root / "scans" / "one.png")


def test_mask_columns_give_masks_of_path_like_ids(tmp_path):
    write_png16(tmp_path / "scans" / "one.png", _image(0))
    write_mask_png(tmp_path / "outlines" / "one-b.png", _blob())
    _index(tmp_path, "p1/L-CC,test,1,0,scans/one.png,outlines/one-b.png\n",
           header="id,split,benign,malignant,image,benign_mask\n")
    sample = FolderDataset(tmp_path, split="test").get("p1/L-CC")
    assert np.array_equal(sample.masks["benign"], _blob())
    assert "benign_mask" not in sample.meta


@pytest.mark.parametrize("column", ["image", "benign_mask"])
@pytest.mark.parametrize("path", ["../outside.png", "images/../../outside.png", "{abs}", "images/\x00.png", "."])
def test_image_and_mask_paths_outside_the_root_are_refused(tmp_path, column, path):
    root = tmp_path / "root"
    write_png16(root / "images" / "ok.png", _image(0))
    write_png16(tmp_path / "outside.png", _image(1))
    path = path.replace("{abs}", str(tmp_path / "outside.png"))
    image = path if column == "image" else "images/ok.png"
    mask = path if column == "benign_mask" else ""
    _index(root, f'ok,test,1,0,"{image}","{mask}"\n', header="id,split,benign,malignant,image,benign_mask\n")
    with pytest.raises(DatasetError, match=rf"labels.csv, line 2: {column} path .* is outside the dataset folder"):
        FolderDataset(root, split="test")


def test_symlinks_inside_the_root_are_followed(tmp_path):
    root = tmp_path / "root"
    write_png16(tmp_path / "elsewhere" / "scan.png", _image(0))
    root.mkdir()
    (root / "images").symlink_to(tmp_path / "elsewhere")
    _index(root, "s,test,0,0,images/scan.png,\nt,test,0,0,images/../images/scan.png,\n")
    ds = FolderDataset(root, split="test")
    assert ds.get("s").size == SHAPE and ds.get("t").size == SHAPE
    assert ".." not in ds.get("t").meta["source"]


# ----------------------------------------------------------------------------- 5: cells that kill a run
def test_huge_csv_cell_names_the_file_and_line(tmp_path):
    write_png16(tmp_path / "images" / "ok.png", _image(0))
    big = "x" * 200_000
    _index(tmp_path, f"ok,test,0,0,,\nbig,test,0,0,,{big}\n", header="id,split,benign,malignant,image,note\n")
    with pytest.raises(DatasetError, match=r"labels.csv, line 3: unreadable CSV .*field larger than field limit"):
        FolderDataset(tmp_path, split="test")


@pytest.mark.parametrize(
    "cell",
    ['{"benign": 5}', '{"benign": ["x"]}', '{"cancer": [3]}', '[1, 2]', '"text"', '{"benign": [-1]}',
     "[" * 50_000 + "]" * 50_000, '{"benign": [' + "1" * 5000 + "]}", "{not json"],
    ids=["number", "strings", "unknown-class", "list", "string", "negative", "nested-50000", "huge-int", "not-json"],
)
def test_malformed_lesion_areas_fail_that_sample_only(tmp_path, cell):
    for name in ("ok", "bad"):
        write_png16(tmp_path / "images" / f"{name}.png", _image(0))
    quoted = '"' + cell.replace('"', '""') + '"'
    _index(tmp_path, f"ok,test,0,0,,\nbad,test,0,0,,{quoted}\n")
    ds = FolderDataset(tmp_path, split="test")
    assert ds.get("ok").meta["lesion_areas"] == {"benign": [], "malignant": []}
    with pytest.raises(SampleError, match=r"labels.csv, line 3: lesion_areas") as err:
        ds.get("bad")
    assert err.value.sample_id == "bad" and len(str(err.value)) < 500


@pytest.mark.slow
def test_training_skips_an_image_with_malformed_lesion_areas(tmp_path):
    """Training catches SampleError only: a metadata TypeError on one row used to stop it."""
    from wsl_bench.training.trainer import LabelledImages, TrainConfig, Trainer

    rows = []
    for k in range(4):
        write_png16(tmp_path / "images" / f"t{k}.png", _image(k, (48, 32)))
        areas = '"{""benign"": 5}"' if k == 2 else ""
        rows.append(f"t{k},train,{k % 2},0,,{areas}\n")
    _index(tmp_path, "".join(rows))
    train = FolderDataset(tmp_path, split="train")
    images = LabelledImages(train, max_cached=10)
    assert images.get("t2") is None
    assert "labels.csv, line 4: lesion_areas" in images.failed["t2"]
    method = wsl_bench.create_method("cam", image_size=(48, 32))
    result = Trainer(method, TrainConfig(epochs=1, batch_size=2), tmp_path / "out", progress=False).fit(train)
    assert result.skipped_samples == ["t2"]


# ----------------------------------------------------------------------------- vindr and nyu
def _vindr(tmp_path, edit=None):
    pytest.importorskip("pydicom")
    from test_dataset_vindr import IMAGES, make_vindr

    make_vindr(tmp_path, IMAGES[:3])
    path = tmp_path / "finding_annotations.csv"
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    if edit is not None:
        rows = edit(rows)
    with open(path, "w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    return path


def _vindr_set(tmp_path, split):
    return wsl_bench.create_dataset("vindr", root=str(tmp_path), split=split, image_size=(96, 64))


@pytest.mark.parametrize(
    "cell",
    ["[" * 50_000, "[" * 50_000 + "]" * 50_000, "[" + ", ".join(["'Mass'"] * 10_000) + "]", "(" * 5000 + "'x'"],
    ids=["open-50000", "nested-50000", "huge-list", "tuples"],
)
def test_vindr_hostile_categories_cell_fails_that_image_only(tmp_path, cell):
    def edit(rows):
        rows[1][9] = cell
        return rows

    _vindr(tmp_path, edit)
    train = _vindr_set(tmp_path, "train")
    with pytest.raises(SampleError, match=r"finding_annotations.csv line 2: finding_categories") as err:
        train.get("img_a")
    assert len(str(err.value)) < 500
    assert _vindr_set(tmp_path, "test").get("img_c").labels == {"benign": 0, "malignant": 0}


def test_vindr_huge_cell_names_the_file_and_line(tmp_path):
    def edit(rows):
        rows[2][8] = "D" * 200_000
        return rows

    _vindr(tmp_path, edit)
    with pytest.raises(DatasetError, match=r"finding_annotations.csv, line 3: unreadable CSV .*field larger"):
        _vindr_set(tmp_path, "test").ids()


@pytest.mark.parametrize(("column", "value"), [(0, "../../etc"), (0, "/abs"), (2, "../img_x"), (2, "a/b"), (0, "..")])
def test_vindr_ids_that_would_leave_the_images_folder_are_refused(tmp_path, column, value):
    def edit(rows):
        rows[1][column] = value
        return rows

    _vindr(tmp_path, edit)
    found = {}
    for split in ("train", "val", "test"):
        try:
            ds = _vindr_set(tmp_path, split)
            found.update({i: ds for i in ds.ids()})
        except DatasetError:
            pass
    sample_id = value if column == 2 else "img_a"
    name = "image_id" if column == 2 else "study_id"
    opened = []
    import wsl_bench.datasets.vindr as vindr

    original = vindr.read_dicom_with_info
    vindr.read_dicom_with_info = lambda p: opened.append(p) or original(p)
    try:
        with pytest.raises(SampleError, match=rf"finding_annotations.csv line 2: {name} .* refused as a path"):
            found[sample_id].get(sample_id)
        found[sample_id].describe()
    finally:
        vindr.read_dicom_with_info = original
    assert opened == []


def test_vindr_unrepresentable_image_id_is_refused(tmp_path):
    def edit(rows):
        rows[1][2] = "img\x00a"
        return rows

    _vindr(tmp_path, edit)
    with pytest.raises(DatasetError, match=r"finding_annotations.csv line 2: image_id .* control character"):
        _vindr_set(tmp_path, "test").ids()


def test_vindr_describe_follows_index_and_images(tmp_path):
    _vindr(tmp_path)
    before = _vindr_set(tmp_path, "test").describe()
    assert set(before["index_sha256"]) == {"finding_annotations.csv"}
    dicom = tmp_path / "images" / "study_2" / "img_c.dicom"
    dicom.write_bytes(dicom.read_bytes() + b"\0")
    assert _vindr_set(tmp_path, "test").describe()["files_stat_sha256"] != before["files_stat_sha256"]


@pytest.mark.parametrize("field", ["stem", "segmentation"])
@pytest.mark.parametrize("value", ["../../evil", "/tmp/evil", "a/b", ".."])
def test_nyu_stems_that_would_leave_their_folder_are_refused(tmp_path, field, value):
    from fixtures_real import make_nyu

    make_nyu(tmp_path, n_exams=1)
    exams = pickle.loads((tmp_path / "data.pkl").read_bytes())
    if field == "stem":
        exams[0]["L-CC"] = [value]
        sample_id, name = value, "image stem"
    else:
        exams[0]["L-CC_benign_seg"] = [value]
        sample_id, name = exams[0]["L-CC"][0], "benign segmentation name"
    (tmp_path / "data.pkl").write_bytes(pickle.dumps(exams))
    ds = wsl_bench.create_dataset("nyu", root=str(tmp_path), frame=(96, 64), image_size=(96, 64))
    with pytest.raises(SampleError, match=rf"data.pkl: exam #0, view L-CC: {name} .* refused as a path"):
        ds.get(sample_id)
    ds.describe()
    assert ds.get("0_R-CC").id == "0_R-CC"  # the other images load


def test_nyu_unrepresentable_stem_is_refused(tmp_path):
    from fixtures_real import make_nyu

    make_nyu(tmp_path, n_exams=1)
    exams = pickle.loads((tmp_path / "data.pkl").read_bytes())
    exams[0]["L-CC"] = ["x" * 300]
    (tmp_path / "data.pkl").write_bytes(pickle.dumps(exams))
    with pytest.raises(DatasetError, match=r"data.pkl: exam #0, view L-CC: image stem of 300 characters"):
        wsl_bench.create_dataset("nyu", root=str(tmp_path), frame=(96, 64), image_size=(96, 64)).ids()


@pytest.mark.parametrize("cell", ["{abs}", "../outside/S1/000000.dcm", "CBIS-DDSM/../../outside/S1/000000.dcm"])
def test_cbis_path_cells_are_never_followed_out_of_the_root(tmp_path, cell):
    pytest.importorskip("pydicom")
    import shutil

    from fixtures_real import CbisWriter
    from test_dataset_cbis import cases, open_ds

    root = tmp_path / "root"
    writer = CbisWriter(root)
    for case in cases():
        writer.add(case)
    writer.finish()
    ds = open_ds(root)
    real = ds.get("P_00006_RIGHT_CC").meta["source"]
    outside = tmp_path / "outside" / "S1" / "000000.dcm"
    outside.parent.mkdir(parents=True)
    shutil.copy(real, outside)
    path = root / "calc_case_description_test_set.csv"
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    column = rows[0].index("image file path")
    (row,) = [r for r in rows if r[0] == "P_00006" and "RIGHT" in r]
    row[column] = cell.replace("{abs}", str(outside))
    with open(path, "w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    (root / "metadata.csv").unlink()
    with pytest.raises(SampleError, match="full mammogram .* not found"):
        open_ds(root).get("P_00006_RIGHT_CC")
