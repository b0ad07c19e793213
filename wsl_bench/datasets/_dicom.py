"""Reading mammography DICOM files into display-ready grayscale arrays.

What :func:`read_dicom` does, in order:

1. reads the file with pydicom (a file without the DICOM preamble/``DICM`` marker is refused
   rather than guessed at);
2. decodes the pixel data: uncompressed and RLE natively; JPEG 2000, JPEG Lossless and JPEG-LS
   through whichever pydicom plugin is installed (pylibjpeg, GDCM, Pillow). A compressed file
   with no decoder installed fails with a message naming the transfer syntax and the extra to
   install, ``pip install "wsl-bench[dicom]"``;
3. applies the modality LUT (rescale slope/intercept) and then the VOI LUT or window
   (centre/width) when the file has one, so the values are those a radiologist sees;
4. inverts MONOCHROME1 images (where a higher value is darker) so that, for every file, tissue
   is brighter than background.

Every failure is a :class:`wsl_bench.data.SampleError` naming the file and the problem.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from wsl_bench.data import SampleError
from wsl_bench.limits import MAX_IMAGE_PIXELS, describe_bound
from wsl_bench.regular_files import NotARegularFile, open_regular

INSTALL_HINT = 'pip install "wsl-bench[dicom]"'

__all__ = ["DicomInfo", "INSTALL_HINT", "read_dicom", "read_dicom_header", "read_dicom_with_info"]


@dataclass(frozen=True)
class DicomInfo:
    """Header fields the loaders use (empty string where the file has none).

    Attributes:
        path: the file.
        rows, columns: pixel matrix size.
        photometric: ``MONOCHROME1`` or ``MONOCHROME2``.
        transfer_syntax: the transfer syntax UID.
        laterality: ``L``/``R`` from ImageLaterality, else Laterality.
        view: ViewPosition (``CC``, ``MLO``, ...).
        patient_id, study_uid, series_uid, sop_uid: identifiers.
        pixel_spacing: ``(row, column)`` spacing in mm (ImagerPixelSpacing, else PixelSpacing), or None.
        inverted: whether :func:`read_dicom` inverted the values (MONOCHROME1).
        voi: what intensity transform was applied: ``"lut"``, ``"window"`` or ``"none"``.
    """

    path: str
    rows: int
    columns: int
    photometric: str
    transfer_syntax: str
    laterality: str
    view: str
    patient_id: str
    study_uid: str
    series_uid: str
    sop_uid: str
    pixel_spacing: tuple[float, float] | None
    inverted: bool = False
    voi: str = "none"


def _pydicom():
    try:
        import pydicom
    except ImportError as exc:  # the optional extra is not installed
        raise ImportError(f"reading DICOM needs pydicom: {INSTALL_HINT}") from exc
    return pydicom


def _dcmread(path: Path, stop_before_pixels: bool) -> Any:
    pydicom = _pydicom()
    from pydicom.errors import InvalidDicomError

    if not path.exists():
        raise SampleError(f"{path}: file not found", path=str(path))
    try:
        # a regular file only: a FIFO or a device named as a DICOM file would never end
        with open_regular(path) as handle:
            return pydicom.dcmread(handle, stop_before_pixels=stop_before_pixels)
    except NotARegularFile as exc:
        raise SampleError(str(exc), path=str(path)) from None
    except InvalidDicomError as exc:
        raise SampleError(f"{path}: not a DICOM file ({exc})", path=str(path)) from exc
    except Exception as exc:  # struct.error, EOFError, OSError from a truncated header
        raise SampleError(
            f"{path}: truncated or corrupt DICOM header ({type(exc).__name__}: {exc})", path=str(path)
        ) from exc


def _text(ds: Any, keyword: str) -> str:
    value = ds.get(keyword, "")
    return str(value).strip() if value is not None else ""


def _info(ds: Any, path: Path, inverted: bool = False, voi: str = "none") -> DicomInfo:
    spacing = ds.get("ImagerPixelSpacing") or ds.get("PixelSpacing")
    try:
        pixel_spacing = (float(spacing[0]), float(spacing[1])) if spacing else None
    except (TypeError, ValueError, IndexError):
        pixel_spacing = None
    meta = getattr(ds, "file_meta", None)
    tsuid = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
    return DicomInfo(
        path=str(path),
        rows=int(ds.get("Rows", 0) or 0),
        columns=int(ds.get("Columns", 0) or 0),
        photometric=_text(ds, "PhotometricInterpretation"),
        transfer_syntax=tsuid,
        laterality=(_text(ds, "ImageLaterality") or _text(ds, "Laterality")).upper(),
        view=_text(ds, "ViewPosition").upper(),
        patient_id=_text(ds, "PatientID"),
        study_uid=_text(ds, "StudyInstanceUID"),
        series_uid=_text(ds, "SeriesInstanceUID"),
        sop_uid=_text(ds, "SOPInstanceUID"),
        pixel_spacing=pixel_spacing,
        inverted=inverted,
        voi=voi,
    )


def read_dicom_header(path: str | os.PathLike) -> DicomInfo:
    """The header fields of a DICOM file, without decoding its pixels (fast: used to index folders).

    Raises:
        SampleError: missing, not DICOM, or a truncated header.
    """
    path = Path(path)
    return _info(_dcmread(path, stop_before_pixels=True), path)


def _decoder_available(transfer_syntax: str) -> bool:
    """Whether an installed pydicom plugin can decode ``transfer_syntax`` (a module-level hook tests replace)."""
    try:
        from pydicom.pixels import get_decoder  # pydicom >= 3
    except ImportError:  # pydicom 2.x: let decoding itself report a missing handler
        return True
    try:
        return bool(get_decoder(transfer_syntax).is_available)
    except NotImplementedError:  # a transfer syntax pydicom has no decoder for at all
        return False


def read_dicom_with_info(path: str | os.PathLike, apply_voi: bool = True) -> tuple[np.ndarray, DicomInfo]:
    """Read a single-frame grayscale DICOM.

    Args:
        path: the file (any suffix; VinDr uses ``.dicom``).
        apply_voi: apply the VOI LUT / window stored in the file (after the modality LUT).

    Returns:
        ``(pixels, info)``: ``H×W`` float32 pixels, tissue brighter than background, and the header
        fields of :class:`DicomInfo`.

    Raises:
        SampleError: missing, not DICOM, truncated or corrupt, compressed without an installed
            decoder (naming ``pip install "wsl-bench[dicom]"``), multi-frame or colour.
    """
    path = Path(path)
    ds = _dcmread(path, stop_before_pixels=False)
    if "PixelData" not in ds:
        raise SampleError(f"{path}: the DICOM file has no pixel data (truncated, or not an image)", path=str(path))
    meta = getattr(ds, "file_meta", None)
    tsuid = meta.get("TransferSyntaxUID") if meta is not None else None
    if tsuid is not None and tsuid.is_compressed and not _decoder_available(str(tsuid)):
        raise SampleError(
            f"{path}: pixel data is compressed as {tsuid.name} ({tsuid}) and no installed decoder handles it; "
            f"install the DICOM extra: {INSTALL_HINT}",
            path=str(path),
        )
    rows, columns = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    if rows * columns > MAX_IMAGE_PIXELS:  # from the header, before the pixels are decoded
        raise SampleError(f"{path}: image of {rows}×{columns} = {rows * columns:,} pixels, above "
                          f"{describe_bound('MAX_IMAGE_PIXELS', MAX_IMAGE_PIXELS, 'pixels')}; refused", path=str(path))
    try:
        pixels = ds.pixel_array
    except Exception as exc:  # ValueError (pixel data shorter than the header says), decoder errors, ...
        message = str(exc)
        if "missing required dependencies" in message or "no pixel data handlers" in message.lower():
            raise SampleError(f"{path}: no installed decoder for {tsuid}; {INSTALL_HINT}", path=str(path)) from exc
        raise SampleError(
            f"{path}: truncated or corrupt DICOM pixel data ({type(exc).__name__}: {message})", path=str(path)
        ) from exc
    if pixels.ndim != 2:
        raise SampleError(
            f"{path}: expected a single-frame grayscale image, got pixel array of shape {pixels.shape}", path=str(path)
        )
    photometric = _text(ds, "PhotometricInterpretation").upper()
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise SampleError(f"{path}: unsupported PhotometricInterpretation {photometric!r}", path=str(path))

    try:
        from pydicom.pixels import apply_modality_lut, apply_voi_lut  # pydicom >= 3
    except ImportError:  # pydicom 2.x
        from pydicom.pixel_data_handlers.util import apply_modality_lut, apply_voi_lut

    values = apply_modality_lut(pixels, ds)
    voi = "none"
    if apply_voi:
        if "VOILUTSequence" in ds:
            voi = "lut"
        elif ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None:
            voi = "window"
        if voi != "none":
            try:
                values = apply_voi_lut(values, ds, index=0)
            except Exception as exc:  # malformed LUT data or window values
                raise SampleError(
                    f"{path}: invalid VOI LUT / window ({type(exc).__name__}: {exc})", path=str(path)
                ) from exc
    values = np.asarray(values, dtype=np.float32)
    inverted = photometric == "MONOCHROME1"
    if inverted:
        # MONOCHROME1: the minimum is displayed white. Reflect within the data's own range so the
        # background becomes the minimum, as in MONOCHROME2, whatever LUT was applied.
        values = np.float32(values.max()) + np.float32(values.min()) - values
    if not np.isfinite(values).all():
        raise SampleError(f"{path}: pixel values are not finite after the modality/VOI LUT", path=str(path))
    return values, _info(ds, path, inverted=inverted, voi=voi)


def read_dicom(path: str | os.PathLike) -> np.ndarray:
    """``H×W`` float32 pixels of a DICOM file; see :func:`read_dicom_with_info`."""
    return read_dicom_with_info(path)[0]
