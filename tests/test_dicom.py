"""DICOM reading: MONOCHROME1 inversion, modality and VOI LUTs, compression, broken files."""

from __future__ import annotations

import numpy as np
import pytest
from fixtures_real import phantom, truncate, uid, write_dicom

pydicom = pytest.importorskip("pydicom")
from pydicom.uid import JPEGLosslessSV1, RLELossless  # noqa: E402

from wsl_bench.data import SampleError  # noqa: E402
from wsl_bench.datasets import _dicom as dicom  # noqa: E402
from wsl_bench.datasets._imageio import read_image  # noqa: E402


@pytest.fixture
def pixels():
    return phantom((48, 40), marker=False).image


def test_monochrome2_values_unchanged(tmp_path, pixels):
    path = write_dicom(tmp_path / "a.dcm", pixels)
    out, info = dicom.read_dicom_with_info(path)
    assert out.dtype == np.float32 and out.shape == pixels.shape
    np.testing.assert_array_equal(out, pixels.astype(np.float32))
    assert not info.inverted and info.voi == "none" and info.photometric == "MONOCHROME2"


def test_monochrome1_is_inverted_so_tissue_is_bright(tmp_path, pixels):
    stored = (4095 - pixels).astype(np.uint16)  # MONOCHROME1: background stored white
    path = write_dicom(tmp_path / "m1.dcm", stored, photometric="MONOCHROME1")
    out, info = dicom.read_dicom_with_info(path)
    assert info.inverted
    np.testing.assert_array_equal(out, stored.max() + stored.min() - stored.astype(np.float32))
    assert out[pixels == 0].max() < out[pixels > 0].min()  # background darkest again


def test_window_is_applied(tmp_path):
    ramp = np.tile(np.arange(0, 4096, 64, dtype=np.uint16), (4, 1))
    path = write_dicom(tmp_path / "w.dcm", ramp, window=(2048, 1024))
    out, info = dicom.read_dicom_with_info(path)
    assert info.voi == "window"
    row, x = out[0], ramp[0]
    below, above, inside = x < 2048 - 512 - 1, x > 2048 + 512, (x > 1536) & (x < 2560)
    assert np.all(row[below] == row.min()) and np.all(row[above] == row.max())
    assert np.all(np.diff(row[inside]) > 0)
    raw = dicom.read_dicom_with_info(path, apply_voi=False)[0]
    np.testing.assert_array_equal(raw, ramp.astype(np.float32))


def test_voi_lut_sequence_is_applied(tmp_path):
    img = np.array([[0, 5, 10, 15, 20, 300]], dtype=np.uint16)
    lut = (np.arange(16, dtype=np.uint16) * 100)[::-1].copy()  # a decreasing table, first mapped value 5
    path = write_dicom(tmp_path / "lut.dcm", img, voi_lut=(5, lut))
    out, info = dicom.read_dicom_with_info(path)
    assert info.voi == "lut"
    expected = lut[np.clip(img.astype(int) - 5, 0, 15)]
    np.testing.assert_array_equal(out, expected.astype(np.float32))


def test_modality_rescale_is_applied(tmp_path, pixels):
    path = write_dicom(tmp_path / "r.dcm", pixels, rescale=(2.0, -100.0))
    np.testing.assert_allclose(dicom.read_dicom(path), 2.0 * pixels - 100.0)


def test_rle_compressed_decodes_natively(tmp_path, pixels):
    path = write_dicom(tmp_path / "rle.dcm", pixels, transfer_syntax=RLELossless)
    assert pydicom.dcmread(path).file_meta.TransferSyntaxUID == RLELossless
    np.testing.assert_array_equal(dicom.read_dicom(path), pixels)


def test_compressed_without_decoder_names_the_extra(tmp_path, pixels, monkeypatch):
    path = write_dicom(tmp_path / "jpeg.dcm", pixels, transfer_syntax=JPEGLosslessSV1)
    monkeypatch.setattr(dicom, "_decoder_available", lambda tsuid: False)
    with pytest.raises(SampleError) as err:
        dicom.read_dicom(path)
    message = str(err.value)
    assert str(path) in message and 'pip install "wsl-bench[dicom]"' in message and "JPEG Lossless" in message


def test_compressed_without_decoder_unpatched(tmp_path, pixels):
    from pydicom.pixels import get_decoder

    if get_decoder(JPEGLosslessSV1).is_available:
        pytest.skip("a JPEG Lossless decoder is installed here")
    path = write_dicom(tmp_path / "jpeg.dcm", pixels, transfer_syntax=JPEGLosslessSV1)
    with pytest.raises(SampleError, match=r"wsl-bench\[dicom\]"):
        read_image(path)


def test_truncated_dicom_names_the_file(tmp_path, pixels):
    path = truncate(write_dicom(tmp_path / "cut.dcm", pixels), keep=0.6)
    with pytest.raises(SampleError, match=f"{path}.*(truncated|corrupt)"):
        dicom.read_dicom(path)
    header_only = truncate(write_dicom(tmp_path / "cut2.dcm", pixels), keep=0.1)
    with pytest.raises(SampleError, match=str(header_only)):
        dicom.read_dicom(header_only)


def test_corrupt_missing_and_not_dicom(tmp_path, pixels):
    garbage = tmp_path / "garbage.dcm"
    garbage.write_bytes(b"\x00" * 128 + b"DICM" + bytes(range(256)) * 4)
    with pytest.raises(SampleError, match=str(garbage)):
        dicom.read_dicom(garbage)
    with pytest.raises(SampleError, match="file not found"):
        dicom.read_dicom(tmp_path / "absent.dcm")
    no_preamble = write_dicom(tmp_path / "raw.dcm", pixels, preamble=False)
    with pytest.raises(SampleError, match=f"{no_preamble}: not a DICOM file"):
        dicom.read_dicom(no_preamble)


def test_header_and_imageio_dispatch(tmp_path, pixels):
    path = write_dicom(tmp_path / "img.dicom", pixels, laterality="R", view="MLO", patient_id="P_7", series_uid=uid(77))
    info = dicom.read_dicom_header(path)
    assert (info.laterality, info.view, info.patient_id, info.series_uid) == ("R", "MLO", "P_7", uid(77))
    assert info.rows == 48 and info.columns == 40 and info.pixel_spacing == (0.07, 0.07)
    np.testing.assert_array_equal(read_image(path), pixels)  # the .dicom suffix VinDr uses
