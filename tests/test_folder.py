"""The generic folder format: reader, resumable writer, synthetic export round trip, every bad input."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from PIL import Image

import wsl_bench
from wsl_bench.data import DatasetError, SampleError
from wsl_bench.datasets._imageio import write_mask_png, write_png16
from wsl_bench.datasets.folder import FolderDataset, FolderWriter, synthetic_split_counts, write_synthetic
from wsl_bench.datasets.synthetic import SyntheticMammograms
from wsl_bench.saliency import CLASSES

SIZE = (128, 80)


def _image(seed: int, shape=(40, 30)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 4096, size=shape, dtype=np.uint16)


def _blob(shape=(40, 30), rows=slice(5, 12), cols=slice(4, 9)) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[rows, cols] = True
    return mask


def _write_index(root, text: str) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / "labels.csv").write_text(text)


@pytest.fixture
def small_set(tmp_path):
    """A hand-made set: one image per mask case, in test split."""
    root = tmp_path / "set"
    w = FolderWriter(root, extra_columns=("view",))
    w.write(
        "both",
        "test",
        _image(1),
        {"benign": _blob(), "malignant": _blob(rows=slice(20, 30))},
        {"benign": 1, "malignant": 1},
        {"view": "CC"},
    )
    w.write(
        "none",
        "test",
        _image(2),
        {"benign": np.zeros((40, 30), bool), "malignant": None},
        {"benign": 0, "malignant": 0},
        {"view": "MLO"},
    )
    w.write(
        "unannotated",
        "test",
        _image(3),
        {"benign": None, "malignant": None},
        {"benign": 1, "malignant": 0},
        {"view": "MLO"},
    )
    w.write("trainimg", "train", _image(4), {}, {"benign": 0, "malignant": 0}, {"view": "CC"})
    return root


# ----------------------------------------------------------------------------- reading
def test_mask_semantics_and_meta(small_set):
    ds = FolderDataset(small_set, split="test")
    assert ds.ids() == ["both", "none", "unannotated"]
    both = ds.get("both")
    assert both.image.shape == (1, 40, 30) and both.image.dtype == np.float32
    assert abs(float(both.image.mean())) < 1e-4 and abs(float(both.image.std()) - 1) < 1e-3
    assert np.array_equal(both.masks["benign"], _blob())
    assert both.labels == {"benign": 1, "malignant": 1}
    assert both.meta["view"] == "CC" and both.meta["source"].endswith("images/both.png")
    assert both.meta["lesion_areas"] == {"benign": [35], "malignant": [50]}  # from the masks' components
    none = ds.get("none")
    assert none.masks["benign"] is not None and not none.masks["benign"].any()  # absent + label 0: no lesion
    assert none.masks["malignant"] is not None and not none.masks["malignant"].any()
    unannotated = ds.get("unannotated")
    assert unannotated.masks["benign"] is None  # absent + label 1: not annotated
    assert not unannotated.masks["malignant"].any()
    assert FolderDataset(small_set, split="train").ids() == ["trainimg"]


def test_registered_and_needs_root(small_set):
    ds = wsl_bench.create_dataset("folder", root=str(small_set), split="test")
    assert len(ds) == 3
    with pytest.raises(DatasetError, match="needs --data-root"):
        wsl_bench.create_dataset("folder", split="test")


def test_whitespace_tiff_image_column_and_8_bit(tmp_path):
    root = tmp_path / "ws"
    (root / "scans").mkdir(parents=True)
    img16 = _image(5)
    Image.fromarray(img16).save(root / "scans" / "a.tif")
    img8 = (img16 // 16).astype(np.uint8)
    (root / "images").mkdir()
    Image.fromarray(img8).save(root / "images" / "b.png")
    _write_index(
        root,
        " id , split , benign , malignant , image , site \n"
        " a , test , 0 , 0 , scans/a.tif , north \n"
        "b,test,0,0,,south\n",
    )
    ds = FolderDataset(root, split="test")
    a, b = ds.get("a"), ds.get("b")
    assert a.meta["site"] == "north" and a.meta["original_size"] == (40, 30)
    expected = (img16 - img16.astype(np.float64).mean()) / img16.std()
    assert np.allclose(a.image[0], expected, atol=1e-4)
    assert b.meta["site"] == "south" and b.meta["source"].endswith("images/b.png")


def test_resize_to_image_size(small_set):
    ds = FolderDataset(small_set, split="test", image_size=(20, 15))
    s = ds.get("both")
    assert s.image.shape == (1, 20, 15) and s.masks["benign"].shape == (20, 15)
    assert s.masks["benign"].sum() == pytest.approx(35 / 4, abs=4)
    assert s.masks["benign"][4, 3]  # the blob rows 5–11 / cols 4–8 → about rows 2–5 / cols 2–4
    up = FolderDataset(small_set, split="test", image_size=(80, 60)).get("both")
    assert up.image.shape == (1, 80, 60) and up.masks["malignant"].sum() == pytest.approx(200, abs=20)


def test_tiny_lesion_survives_downsizing(tmp_path):
    root = tmp_path / "tiny"
    mask = np.zeros((40, 30), dtype=bool)
    mask[13, 13] = True  # nearest-neighbour sampling at 1/4 would miss this single pixel
    FolderWriter(root).write("x", "test", _image(6), {"malignant": mask}, {"benign": 0, "malignant": 1})
    s = FolderDataset(root, split="test", image_size=(10, 8)).get("x")
    assert s.masks["malignant"].sum() >= 1 and s.labels["malignant"] == 1


# ----------------------------------------------------------------------------- bad input
def test_missing_root_and_index(tmp_path):
    with pytest.raises(DatasetError, match="dataset folder not found"):
        FolderDataset(tmp_path / "absent", split="test")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match=r"labels\.csv: index file not found"):
        FolderDataset(tmp_path / "empty", split="test")


def test_missing_column(tmp_path):
    _write_index(tmp_path / "r", "id,split,benign\nx,test,0\n")
    with pytest.raises(DatasetError) as info:
        FolderDataset(tmp_path / "r", split="test")
    assert "labels.csv" in str(info.value) and "missing required column(s) malignant" in str(info.value)


@pytest.mark.parametrize("value", ["2", "yes", "", "-1", "0.5"])
def test_bad_label_names_line_and_file(tmp_path, value):
    _write_index(tmp_path / "r", f"id,split,benign,malignant\nok,test,0,1\nbad,test,{value},0\n")
    with pytest.raises(DatasetError) as info:
        FolderDataset(tmp_path / "r", split="test")
    message = str(info.value)
    assert str(tmp_path / "r" / "labels.csv") in message and "line 3" in message and "benign label" in message


def test_float_labels_from_pandas_are_accepted(tmp_path):
    _write_index(tmp_path / "r", "id,split,benign,malignant\nok,test,1.0,0.0\n")
    assert FolderDataset(tmp_path / "r", split="test")._rows["ok"].labels == (("benign", 1), ("malignant", 0))


def test_empty_split_unknown_split_and_repeated_id(tmp_path):
    _write_index(tmp_path / "r", "id,split,benign,malignant\na,train,0,0\n")
    with pytest.raises(DatasetError, match=r"no rows for split 'test' \(rows per split: train=1, val=0, test=0\)"):
        FolderDataset(tmp_path / "r", split="test")
    _write_index(tmp_path / "s", "id,split,benign,malignant\na,testing,0,0\n")
    with pytest.raises(DatasetError, match="line 2: split 'testing'"):
        FolderDataset(tmp_path / "s", split="test")
    _write_index(tmp_path / "t", "id,split,benign,malignant\na,test,0,0\na,test,0,0\n")
    with pytest.raises(DatasetError, match="line 3: id 'a' repeats line 2"):
        FolderDataset(tmp_path / "t", split="test")


def test_missing_image_is_a_sample_error(small_set):
    (small_set / "images" / "none.png").unlink()
    ds = FolderDataset(small_set, split="test")  # opening the set still works: loading is lazy
    with pytest.raises(SampleError) as info:
        ds.get("none")
    assert "images/none.png" in str(info.value) and "not found" in str(info.value)
    assert info.value.sample_id == "none"
    assert ds.get("both").labels["benign"] == 1  # other samples unaffected


def test_truncated_image_is_a_sample_error(small_set):
    path = small_set / "images" / "both.png"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 30])
    with pytest.raises(SampleError, match=r"both\.png: truncated or corrupt PNG"):
        FolderDataset(small_set, split="test").get("both")


def test_mask_of_another_size_is_a_sample_error(small_set):
    write_mask_png(small_set / "masks" / "benign" / "both.png", _blob(shape=(41, 30)))
    with pytest.raises(SampleError) as info:
        FolderDataset(small_set, split="test").get("both")
    message = str(info.value)
    assert "masks/benign/both.png" in message and "41×30" in message and "40×30" in message


def test_mask_contradicting_label_is_a_sample_error(small_set):
    write_mask_png(small_set / "masks" / "malignant" / "none.png", _blob())
    with pytest.raises(SampleError, match=r"malignant/none\.png: mask has lesion pixels but .* malignant=0"):
        FolderDataset(small_set, split="test").get("none")


def test_unknown_id_is_a_sample_error(small_set):
    with pytest.raises(SampleError, match="'trainimg' is not in split 'test'"):
        FolderDataset(small_set, split="test").load("trainimg")


# ----------------------------------------------------------------------------- writer
def test_writer_files_and_header_written_once(small_set):
    text = (small_set / "labels.csv").read_text().splitlines()
    assert text[0] == "id,split,benign,malignant,image,view"
    assert len(text) == 5 and sum(line.startswith("id,") for line in text) == 1
    assert (small_set / "masks" / "benign" / "both.png").is_file()
    assert not (small_set / "masks" / "benign" / "none.png").exists()  # empty masks are not written
    assert not any(p.name.endswith(".tmp") for p in small_set.rglob("*"))


def test_writer_resumes(small_set):
    w = FolderWriter(small_set)
    assert len(w) == 4 and w.has("both") and w.has("trainimg") and not w.has("new")
    with pytest.raises(ValueError, match="already written"):
        w.write("both", "test", _image(1), {}, {"benign": 0, "malignant": 0})
    w.write("new", "val", _image(9), {}, {"benign": 0, "malignant": 0}, {"view": "CC"})
    rows = list(csv.DictReader(open(small_set / "labels.csv")))
    assert [r["id"] for r in rows] == ["both", "none", "unannotated", "trainimg", "new"]
    assert FolderDataset(small_set, split="val").ids() == ["new"]


def test_writer_drops_a_row_cut_mid_write(small_set):
    with open(small_set / "labels.csv", "a") as fh:
        fh.write("half,te")  # a crash in the middle of appending a row
    w = FolderWriter(small_set)
    assert not w.has("half") and len(w) == 4
    w.write("half", "test", _image(8), {}, {"benign": 0, "malignant": 0}, {"view": "CC"})
    assert FolderDataset(small_set, split="test").ids()[-1] == "half"
    assert (small_set / "labels.csv").read_text().count("half") == 1 + 1  # id and image path, one row


def test_writer_rejects_bad_input(tmp_path):
    w = FolderWriter(tmp_path / "w")
    ok = {"benign": 0, "malignant": 0}
    with pytest.raises(ValueError, match="file name"):
        w.write("../escape", "test", _image(1), {}, ok)
    with pytest.raises(ValueError, match="split"):
        w.write("a", "dev", _image(1), {}, ok)
    with pytest.raises(ValueError, match="uint16 or uint8"):
        w.write("a", "test", _image(1).astype(np.float32), {}, ok)
    with pytest.raises(ValueError, match="label benign=2"):
        w.write("a", "test", _image(1), {}, {"benign": 2, "malignant": 0})
    with pytest.raises(ValueError, match="benign mask has lesion pixels but the label is 0"):
        w.write("a", "test", _image(1), {"benign": _blob()}, ok)
    with pytest.raises(ValueError, match="malignant mask is empty but the label is 1"):
        w.write("a", "test", _image(1), {"malignant": np.zeros((40, 30), bool)}, {"benign": 0, "malignant": 1})
    with pytest.raises(ValueError, match="mask is"):
        w.write("a", "test", _image(1), {"benign": _blob(shape=(10, 10))}, {"benign": 1, "malignant": 0})
    assert not w.has("a") and not (tmp_path / "w" / "labels.csv").exists()
    w.write("a", "test", _image(1), {}, ok, {"site": "x"})
    with pytest.raises(ValueError, match=r"meta keys \['scanner'\] are not columns"):
        w.write("b", "test", _image(2), {}, ok, {"site": "y", "scanner": "z"})


def test_interrupted_sample_is_rewritten(tmp_path):
    """Image written, row not appended (a crash between the two): the sample is simply written again."""
    root = tmp_path / "crash"
    write_png16(root / "images" / "x.png", _image(1))
    write_mask_png(root / "masks" / "benign" / "x.png", _blob())  # stale mask from the failed attempt
    w = FolderWriter(root)
    assert not w.has("x")
    w.write("x", "test", _image(2), {"benign": None}, {"benign": 0, "malignant": 0})
    s = FolderDataset(root, split="test").get("x")
    assert not s.masks["benign"].any()  # the stale mask was removed
    assert np.array_equal(np.asarray(Image.open(root / "images" / "x.png")), _image(2))


# ----------------------------------------------------------------------------- synthetic export
def test_write_synthetic_round_trip(tmp_path):
    out = write_synthetic(tmp_path / "synth", n=10, image_size=SIZE, seed=4, progress=False)
    counts = synthetic_split_counts(10)
    assert counts == {"train": 7, "val": 1, "test": 2}  # the documented 70/10/20 split
    assert all(sum(synthetic_split_counts(n).values()) == n for n in (1, 7, 33, 500))
    for split, n in counts.items():
        folder = FolderDataset(out, split=split)
        synth = SyntheticMammograms(split=split, n=n, image_size=SIZE, seed=4)
        assert folder.ids() == synth.ids()
        for sample_id in folder.ids():
            a, b = folder.get(sample_id), synth.get(sample_id)
            assert np.allclose(a.image, b.image, atol=1e-5)
            assert a.labels == b.labels
            for c in CLASSES:
                assert np.array_equal(a.masks[c], b.masks[c])
            assert a.meta["lesion_areas"] == b.meta["lesion_areas"]
            assert a.meta["view"] == b.meta["view"]
            assert [r["kind"] for r in a.meta["lesions"]] == [r["kind"] for r in b.meta["lesions"]]


def test_write_synthetic_resumes_and_refuses_other_parameters(tmp_path):
    out = tmp_path / "synth"
    write_synthetic(out, n=5, image_size=SIZE, seed=1, progress=False)
    first = (out / "labels.csv").read_text()
    # simulate an interruption: drop the last two rows and one image
    lines = first.splitlines(keepends=True)
    (out / "labels.csv").write_text("".join(lines[:-2]))
    dropped = lines[-1].split(",")[0]
    (out / "images" / f"{dropped}.png").unlink()
    write_synthetic(out, n=5, image_size=SIZE, seed=1, progress=False)
    assert sorted((out / "labels.csv").read_text().splitlines()) == sorted(first.splitlines())
    assert (out / "images" / f"{dropped}.png").is_file()
    with pytest.raises(ValueError, match="other|made with"):
        write_synthetic(out, n=5, image_size=SIZE, seed=2, progress=False)
