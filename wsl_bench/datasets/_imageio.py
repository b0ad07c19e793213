"""Reading and writing mammogram images and lesion masks.

Every reader fails with :class:`wsl_bench.data.SampleError` naming the file and the problem, so a
harness can record one bad file as a failed sample and go on. Every writer is atomic: it writes a
temporary file in the destination folder and renames it over the target with ``os.replace``, so
an interrupted run never leaves a half-written image under its final name.

Formats: PNG and TIFF through Pillow (8- or 16-bit grayscale, 32-bit integer or float
grayscale), DICOM through :func:`wsl_bench.datasets._dicom.read_dicom` (imported only when a ``.dcm`` file
is read, so the optional DICOM dependencies are needed only by those who read DICOM).
"""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from wsl_bench.atomic_io import current_umask
from wsl_bench.data import SampleError
from wsl_bench.limits import MAX_IMAGE_PIXELS, describe_bound
from wsl_bench.regular_files import NotARegularFile, read_regular

PILLOW_SUFFIXES: tuple[str, ...] = (".png", ".tif", ".tiff")
DICOM_SUFFIXES: tuple[str, ...] = (".dcm", ".dicom")
SUPPORTED_SUFFIXES: tuple[str, ...] = PILLOW_SUFFIXES + DICOM_SUFFIXES

# Pillow grayscale modes and the numpy dtype the pixels keep. Colour and palette modes are not
# accepted for images: a mammogram stored as RGB is a preparation mistake worth reporting.
_IMAGE_MODES: dict[str, np.dtype] = {
    "L": np.dtype(np.uint8),
    "I;16": np.dtype(np.uint16),
    "I;16L": np.dtype(np.uint16),
    "I;16B": np.dtype(np.uint16),
    "I": np.dtype(np.int32),
    "F": np.dtype(np.float32),
}
# Masks may also come as 1-bit or palette images (nonzero index = lesion).
_MASK_MODES: tuple[str, ...] = ("1", "P", *_IMAGE_MODES)
# The PNG end chunk's type and CRC, the last 8 bytes of every complete PNG file.
_PNG_IEND = b"IEND\xaeB`\x82"


def _open_pillow(path: Path, allowed_modes: tuple[str, ...] | dict[str, np.dtype]) -> np.ndarray:
    """Fully decode a PNG/TIFF and return its pixels as ``H×W``.

    Pillow decodes lazily and, for PNG, stops reading at the end of the pixel data; a file cut
    inside the data fails in ``load()``, one cut after it (missing IEND, bad CRC) only in
    ``verify()``. So PNGs are verified first (chunk structure and CRCs, no decompression), then
    reopened and decoded in full.
    """
    kind = "PNG" if path.suffix.lower() == ".png" else "TIFF"
    try:
        # One read from disk (a regular file only: a FIFO or a device would never end); both
        # passes below work on the bytes in memory.
        data = read_regular(path)
        if kind == "PNG":
            # verify() stops at the IEND chunk's type without reading its CRC, so a file cut in
            # its last 4 bytes passes it; the complete IEND chunk must be there.
            if data.rfind(_PNG_IEND) < 0:
                raise OSError("missing or incomplete IEND chunk (file cut short)")
            with Image.open(io.BytesIO(data)) as probe:
                probe.verify()
        with Image.open(io.BytesIO(data)) as im:
            _check_pixels(path, im.size[1], im.size[0])  # from the header, before decoding
            im.load()
            mode = im.mode
            if mode not in allowed_modes:
                allowed = ", ".join(allowed_modes)
                raise SampleError(
                    f"{path}: unsupported image mode {mode!r} (expected grayscale: {allowed})", path=str(path)
                )
            pixels = np.array(im)
    except SampleError:
        raise
    except FileNotFoundError:
        raise SampleError(f"{path}: file not found", path=str(path)) from None
    except NotARegularFile as exc:
        raise SampleError(str(exc), path=str(path)) from None
    except Exception as exc:  # Pillow raises OSError, SyntaxError, struct.error, zlib.error, ...
        raise SampleError(f"{path}: truncated or corrupt {kind} ({type(exc).__name__}: {exc})", path=str(path)) from exc
    if pixels.ndim != 2:
        raise SampleError(f"{path}: expected a single-channel image, got array shape {pixels.shape}", path=str(path))
    if mode in ("I;16", "I;16L", "I;16B"):
        pixels = pixels.astype(np.uint16, copy=False)  # native byte order whatever the file's
    return pixels


def _check_pixels(path: Path, height: int, width: int) -> None:
    """Refuse an image whose header declares more than :data:`~wsl_bench.limits.MAX_IMAGE_PIXELS`
    pixels, before its pixels are decoded (a 386 KB PNG can declare 169 Mpx)."""
    if height * width > MAX_IMAGE_PIXELS:
        raise SampleError(
            f"{path}: image of {height}×{width} = {height * width:,} pixels, above "
            f"{describe_bound('MAX_IMAGE_PIXELS', MAX_IMAGE_PIXELS, 'pixels')}; refused", path=str(path))


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read a grayscale image.

    Args:
        path: a ``.png``, ``.tif``/``.tiff`` or ``.dcm`` file.

    Returns:
        ``H×W`` array in the file's own dtype: uint16 for 16-bit PNG/TIFF, uint8 for 8-bit,
        int32 or float32 for 32-bit TIFF; whatever :func:`wsl_bench.datasets._dicom.read_dicom` returns for DICOM.

    Raises:
        SampleError: missing file, unsupported suffix or mode, truncated or corrupt file; the
            message names the path and the problem.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in DICOM_SUFFIXES:
        return _read_dicom(path)
    if suffix not in PILLOW_SUFFIXES:
        raise SampleError(
            f"{path}: unsupported image format {suffix or '(no suffix)'!r}; supported: {', '.join(SUPPORTED_SUFFIXES)}",
            path=str(path),
        )
    if not path.exists():  # (anything else than a regular file is refused when it is opened, by name)
        raise SampleError(f"{path}: file not found", path=str(path))
    return _open_pillow(path, _IMAGE_MODES)


def _read_dicom(path: Path) -> np.ndarray:
    if not path.exists():  # (anything else than a regular file is refused when it is opened, by name)
        raise SampleError(f"{path}: file not found", path=str(path))
    try:
        from wsl_bench.datasets._dicom import read_dicom  # lazy: DICOM support is optional
    except ImportError as exc:
        raise SampleError(f"{path}: DICOM support is unavailable ({exc})", path=str(path)) from exc
    try:
        pixels = np.asarray(read_dicom(path))
    except SampleError:
        raise
    except Exception as exc:
        raise SampleError(f"{path}: unreadable DICOM ({type(exc).__name__}: {exc})", path=str(path)) from exc
    if pixels.ndim != 2:
        raise SampleError(
            f"{path}: expected a single-frame grayscale DICOM, got array shape {pixels.shape}", path=str(path)
        )
    return pixels


def read_mask(path: str | os.PathLike, shape: tuple[int, int] | None = None) -> np.ndarray:
    """Read a lesion mask (any nonzero pixel is lesion).

    Args:
        path: a PNG or TIFF mask (8-bit, 1-bit, palette or 16-bit).
        shape: expected ``(H, W)``; checked when given.

    Returns:
        ``H×W`` bool array.

    Raises:
        SampleError: unreadable file (as :func:`read_image`), or a mask whose size differs from
            ``shape`` (the message names the file and both sizes).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in PILLOW_SUFFIXES:
        raise SampleError(
            f"{path}: unsupported mask format {suffix or '(no suffix)'!r}; supported: {', '.join(PILLOW_SUFFIXES)}",
            path=str(path),
        )
    if not path.exists():  # (anything else than a regular file is refused when it is opened, by name)
        raise SampleError(f"{path}: file not found", path=str(path))
    mask = _open_pillow(path, _MASK_MODES) != 0
    if shape is not None and tuple(mask.shape) != tuple(shape):
        raise SampleError(
            f"{path}: mask is {mask.shape[0]}×{mask.shape[1]} but the image is {shape[0]}×{shape[1]}",
            path=str(path),
        )
    return mask


def _atomic_save(path: Path, image: Image.Image, **save_options) -> None:
    """Save ``image`` as PNG to ``path`` through a temporary file in the same folder, with the
    permissions an ordinary ``open(path, "w")`` gives (``0o666`` less the umask; ``mkstemp``
    alone would leave the file ``0o600`` whatever the umask)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            image.save(fh, format="PNG", **save_options)
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def write_png16(path: str | os.PathLike, image_u16: np.ndarray, compress_level: int = 3) -> None:
    """Write a 16-bit grayscale PNG atomically.

    Args:
        path: destination; its folder is created if needed.
        image_u16: ``H×W`` uint16 array.
        compress_level: zlib level 0–9 (3 is a good speed/size trade-off for noisy images).

    Raises:
        ValueError: the array is not 2-D uint16.
    """
    image_u16 = np.asarray(image_u16)
    if image_u16.ndim != 2 or image_u16.dtype.kind != "u" or image_u16.dtype.itemsize != 2:  # either byte order
        raise ValueError(f"write_png16 needs a 2-D uint16 array, got {image_u16.dtype} of shape {image_u16.shape}")
    # Pillow maps little-endian uint16 to mode I;16; make the byte order explicit and contiguous.
    array = np.ascontiguousarray(image_u16.astype("<u2", copy=False))
    _atomic_save(Path(path), Image.fromarray(array), compress_level=compress_level)


def write_png8(path: str | os.PathLike, image_u8: np.ndarray, compress_level: int = 3) -> None:
    """Write an 8-bit grayscale PNG atomically (``image_u8``: ``H×W`` uint8)."""
    image_u8 = np.asarray(image_u8)
    if image_u8.ndim != 2 or image_u8.dtype != np.uint8:
        raise ValueError(f"write_png8 needs a 2-D uint8 array, got {image_u8.dtype} of shape {image_u8.shape}")
    _atomic_save(Path(path), Image.fromarray(np.ascontiguousarray(image_u8)), compress_level=compress_level)


def write_mask_png(path: str | os.PathLike, mask_bool: np.ndarray) -> None:
    """Write a lesion mask atomically as an 8-bit PNG with values {0, 255}.

    Args:
        path: destination; its folder is created if needed.
        mask_bool: ``H×W`` array; nonzero/True pixels are lesion.
    """
    mask_bool = np.asarray(mask_bool)
    if mask_bool.ndim != 2:
        raise ValueError(f"write_mask_png needs a 2-D array, got shape {mask_bool.shape}")
    # Masks compress extremely well, so the maximum level costs nothing noticeable.
    write_png8(path, np.where(mask_bool != 0, 255, 0).astype(np.uint8), compress_level=9)
