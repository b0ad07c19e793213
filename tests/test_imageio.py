"""Image and mask I/O: exact round trips, atomic writes, and a clear SampleError for every bad file."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest
from PIL import Image

from wsl_bench.data import SampleError
from wsl_bench.datasets._imageio import read_image, read_mask, write_mask_png, write_png8, write_png16


@pytest.fixture
def image_u16() -> np.ndarray:
    rng = np.random.default_rng(7)
    return rng.integers(0, 4096, size=(61, 37), dtype=np.uint16)


def test_png16_round_trip_is_exact(tmp_path, image_u16):
    path = tmp_path / "sub" / "a.png"
    write_png16(path, image_u16)
    back = read_image(path)
    assert back.dtype == np.uint16
    assert np.array_equal(back, image_u16)
    assert sorted(p.name for p in path.parent.iterdir()) == ["a.png"]  # no temporary file left behind


def test_full_16_bit_range_and_big_endian_input(tmp_path):
    values = np.array([[0, 1, 255, 256], [4095, 32768, 65534, 65535]], dtype=">u2")
    write_png16(tmp_path / "b.png", values)
    back = read_image(tmp_path / "b.png")
    assert back.dtype == np.uint16 and np.array_equal(back, values.astype(np.uint16))


def test_png8_and_tiff16_keep_their_dtype(tmp_path, image_u16):
    small = (image_u16 // 16).astype(np.uint8)
    write_png8(tmp_path / "c.png", small)
    back8 = read_image(tmp_path / "c.png")
    assert back8.dtype == np.uint8 and np.array_equal(back8, small)
    Image.fromarray(image_u16).save(tmp_path / "d.tif")
    back16 = read_image(tmp_path / "d.tif")
    assert back16.dtype == np.uint16 and np.array_equal(back16, image_u16)


@pytest.mark.parametrize("keep", ["half", "minus_1", "minus_4", "minus_12", "header_only"])
def test_truncated_png_is_detected(tmp_path, image_u16, keep):
    good = tmp_path / "good.png"
    write_png16(good, image_u16)
    data = good.read_bytes()
    cut = {
        "half": len(data) // 2,
        "minus_1": len(data) - 1,
        "minus_4": len(data) - 4,
        "minus_12": len(data) - 12,
        "header_only": 40,
    }[keep]
    bad = tmp_path / "bad.png"
    bad.write_bytes(data[:cut])
    with pytest.raises(SampleError) as info:
        read_image(bad)
    assert str(bad) in str(info.value)
    assert "truncated or corrupt PNG" in str(info.value)
    assert info.value.path == str(bad)


def test_corrupt_png_data_is_detected(tmp_path, image_u16):
    path = tmp_path / "flip.png"
    write_png16(path, image_u16)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # inside the compressed pixel data: the chunk CRC no longer matches
    path.write_bytes(bytes(data))
    with pytest.raises(SampleError, match="corrupt PNG"):
        read_image(path)


def test_missing_and_unsupported_files(tmp_path):
    with pytest.raises(SampleError, match="not found") as info:
        read_image(tmp_path / "nope.png")
    assert "nope.png" in str(info.value)
    (tmp_path / "x.jpg").write_bytes(b"\xff\xd8\xff")
    with pytest.raises(SampleError, match="unsupported image format '.jpg'"):
        read_image(tmp_path / "x.jpg")
    (tmp_path / "junk.png").write_bytes(b"this is not a png at all")
    with pytest.raises(SampleError, match="junk.png: truncated or corrupt PNG"):
        read_image(tmp_path / "junk.png")


def test_colour_image_is_refused(tmp_path):
    Image.fromarray(np.zeros((4, 5, 3), dtype=np.uint8)).save(tmp_path / "rgb.png")
    with pytest.raises(SampleError, match="unsupported image mode 'RGB'"):
        read_image(tmp_path / "rgb.png")


def test_mask_round_trip_values_and_size_check(tmp_path):
    mask = np.zeros((20, 30), dtype=bool)
    mask[3:9, 4:20] = True
    path = tmp_path / "m.png"
    write_mask_png(path, mask)
    with Image.open(path) as im:
        stored = np.asarray(im)
        assert im.mode == "L"
    assert set(np.unique(stored)) == {0, 255}
    back = read_mask(path, shape=(20, 30))
    assert back.dtype == bool and np.array_equal(back, mask)
    with pytest.raises(SampleError) as info:
        read_mask(path, shape=(21, 30))
    message = str(info.value)
    assert str(path) in message and "20×30" in message and "21×30" in message


def test_palette_and_one_bit_masks_are_read_as_nonzero(tmp_path):
    mask = np.zeros((8, 8), dtype=bool)
    mask[2:5, 1:7] = True
    Image.fromarray(mask).save(tmp_path / "bit.png")  # mode "1"
    pal = Image.fromarray(mask.astype(np.uint8) * 3).convert("P")
    pal.save(tmp_path / "pal.png")
    assert np.array_equal(read_mask(tmp_path / "bit.png"), mask)
    assert np.array_equal(read_mask(tmp_path / "pal.png"), mask)


def test_failed_write_leaves_old_file_and_no_temporary(tmp_path, image_u16, monkeypatch):
    path = tmp_path / "keep.png"
    write_png16(path, image_u16)
    before = path.read_bytes()

    def broken_save(self, fp, *args, **kwargs):
        fp.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        write_png16(path, image_u16 // 2)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["keep.png"]


def test_writers_refuse_wrong_arrays(tmp_path):
    with pytest.raises(ValueError, match="uint16"):
        write_png16(tmp_path / "f.png", np.zeros((4, 4), dtype=np.float32))
    with pytest.raises(ValueError, match="2-D"):
        write_png16(tmp_path / "g.png", np.zeros((2, 4, 4), dtype=np.uint16))
    with pytest.raises(ValueError, match="2-D"):
        write_mask_png(tmp_path / "h.png", np.zeros((4,), dtype=bool))


def test_dicom_is_delegated_lazily(tmp_path, monkeypatch):
    calls = []
    fake = types.ModuleType("wsl_bench.datasets._dicom")

    def read_dicom(path):
        calls.append(path)
        if "broken" in str(path):
            raise RuntimeError("bad transfer syntax")
        return np.full((5, 4), 9, dtype=np.uint16)

    fake.read_dicom = read_dicom
    monkeypatch.setitem(sys.modules, "wsl_bench.datasets._dicom", fake)
    (tmp_path / "a.dcm").write_bytes(b"DICM")
    (tmp_path / "broken.dcm").write_bytes(b"DICM")
    out = read_image(tmp_path / "a.dcm")
    assert out.shape == (5, 4) and calls and calls[0].name == "a.dcm"
    with pytest.raises(SampleError, match="broken.dcm: unreadable DICOM .*bad transfer syntax"):
        read_image(tmp_path / "broken.dcm")
    with pytest.raises(SampleError, match="not found"):
        read_image(tmp_path / "missing.dcm")
