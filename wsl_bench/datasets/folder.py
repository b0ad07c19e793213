"""The generic ``folder`` dataset format: a CSV index, one image file and one PNG mask per class.

Layout (``datasets/folder.md`` is the reference)::

    ROOT/labels.csv                  id, split, benign, malignant [, image] [, any extra columns]
    ROOT/images/<id>.png             16- or 8-bit grayscale PNG (TIFF/DICOM via the ``image`` column)
    ROOT/masks/benign/<id>.png       8-bit PNG, nonzero = lesion
    ROOT/masks/malignant/<id>.png

Mask semantics, per image and class: a mask file present means annotated (its pixels are the
lesions); no file and label 0 means annotated with no lesion (all-false mask); no file and label 1
means not annotated (mask ``None``).

:class:`FolderDataset` reads it, :class:`FolderWriter` writes it (resumable), and
:func:`write_synthetic` exports the built-in synthetic dataset in this format.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from wsl_bench.data import SPLITS, DatasetError, MammogramDataset, Sample, SampleError, standardise
from wsl_bench.datasets._files import checked_csv_rows, files_digest, name_problem, path_inside, text_problem
from wsl_bench.datasets._imageio import read_image, read_mask, write_mask_png, write_png8, write_png16
from wsl_bench.limits import MAX_INDEX_BYTES, describe_bound
from wsl_bench.registry import DATASETS
from wsl_bench.regular_files import read_regular
from wsl_bench.saliency import CLASSES

INDEX_FILE = "labels.csv"
REQUIRED_COLUMNS: tuple[str, ...] = ("id", "split", *CLASSES)
IMAGE_COLUMN = "image"
# Optional per-class mask path columns (relative to ROOT); empty or absent: masks/<class>/<id>.png.
MASK_COLUMNS: dict[str, str] = {cls: f"{cls}_mask" for cls in CLASSES}
# Extra columns holding JSON (lists/dicts) that the reader decodes; every other extra column stays text.
JSON_COLUMNS: tuple[str, ...] = ("lesion_areas", "lesions")
# Bounds of a JSON cell: longer or deeper cells fail their sample (json.loads recurses on nesting).
MAX_JSON_CHARS = 64 * 1024
MAX_JSON_DEPTH = 16
# Columns that are not extras (not copied into meta).
_FORMAT_COLUMNS = frozenset({*REQUIRED_COLUMNS, IMAGE_COLUMN, *MASK_COLUMNS.values()})
# Meta keys that are never written as extra columns (they are columns already, or machine-local).
_RESERVED_META = frozenset({"id", "split", "source", IMAGE_COLUMN, *CLASSES, *MASK_COLUMNS.values()})
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")

# Fractions of write_synthetic's n that go to each split (test and val rounded, train the rest).
SYNTHETIC_SPLIT_FRACTIONS: dict[str, float] = {"train": 0.7, "val": 0.1, "test": 0.2}
SYNTHETIC_COLUMNS: tuple[str, ...] = ("view", "laterality", "density", "density_category", "lesion_areas", "lesions")

__all__ = [
    "FolderDataset",
    "FolderWriter",
    "INDEX_FILE",
    "synthetic_split_counts",
    "write_synthetic",
]


def _mask_path(root: Path, cls: str, sample_id: str) -> Path:
    """Where FolderWriter puts a mask (ids written are safe file names)."""
    return root / "masks" / cls / f"{sample_id}.png"


def _default_image(sample_id: str) -> str:
    return f"images/{sample_id}.png"


def _default_mask(cls: str, sample_id: str) -> str:
    return f"masks/{cls}/{sample_id}.png"


# ----------------------------------------------------------------------------- reading
@dataclass(frozen=True)
class _Row:
    """One row of labels.csv: id, split, labels, image and mask files (checked to lie inside ROOT),
    extra columns."""

    id: str
    split: str
    labels: tuple[tuple[str, int], ...]
    image: str
    masks: tuple[tuple[str, str | None], ...]  # class → mask file; None: no mask file is looked up
    extras: tuple[tuple[str, str], ...]
    line: int


def _parse_label(value: str, cls: str, line: int, index_path: Path) -> int:
    text = value.strip()
    try:
        number = float(text)  # "1", "1.0" (pandas writes floats when a column had NaN)
    except ValueError:
        number = math.nan
    if number not in (0.0, 1.0):
        raise DatasetError(f"{index_path}, line {line}: {cls} label {value!r} is not 0 or 1")
    return int(number)


def _inside(root: Path, relative: str, column: str, line: int, index_path: Path) -> str:
    path = path_inside(root, relative)
    if path is None:
        raise DatasetError(
            f"{index_path}, line {line}: {column} path {relative!r} is outside the dataset folder {root} "
            "(paths are relative to it; '..' and absolute paths may not leave it)"
        )
    return path


def read_index(root: Path) -> list[_Row]:
    """Read and validate ``ROOT/labels.csv`` (all splits).

    Raises:
        DatasetError: missing file, missing required column, an id that cannot be represented
            (empty, over 255 characters, control characters), unknown split, a label outside
            {0, 1}, a repeated id, an image or mask path outside ROOT, an id that is not a file
            name without an ``image`` cell, or a cell above the CSV field limit; the message
            names the file and the line.
    """
    index_path = root / INDEX_FILE
    if not index_path.is_file():
        raise DatasetError(
            f"{index_path}: index file not found (the folder format needs ROOT/{INDEX_FILE}; see datasets/folder.md)"
        )
    try:
        text = read_regular(index_path, MAX_INDEX_BYTES,
                            describe_bound("MAX_INDEX_BYTES", MAX_INDEX_BYTES, "bytes")).decode("utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{index_path}: unreadable ({exc})") from exc
    except ValueError as exc:  # above the size bound
        raise DatasetError(str(exc)) from None
    reader = csv.reader(io.StringIO(text))
    rows_in = checked_csv_rows(reader, index_path)
    try:
        header = [h.strip() for h in next(rows_in)]
    except StopIteration:
        raise DatasetError(f"{index_path}: empty file (expected a header with {', '.join(REQUIRED_COLUMNS)})") from None
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        raise DatasetError(
            f"{index_path}: missing required column(s) {', '.join(missing)} (found: {', '.join(header) or 'none'})"
        )
    if len(set(header)) != len(header):
        raise DatasetError(f"{index_path}: repeated column names in the header {header}")
    rows: list[_Row] = []
    seen: dict[str, int] = {}
    end = reader.line_num
    for values in rows_in:
        line, end = end + 1, reader.line_num  # the physical line a row starts on (a quoted cell may span lines)
        if not any(v.strip() for v in values):
            continue  # blank line
        if len(values) > len(header):
            raise DatasetError(f"{index_path}, line {line}: {len(values)} fields but the header has {len(header)}")
        cells = {name: (values[i].strip() if i < len(values) else "") for i, name in enumerate(header)}
        sample_id = cells["id"]
        problem = text_problem(sample_id)
        if problem is not None:
            raise DatasetError(f"{index_path}, line {line}: {problem}")
        if sample_id in seen:
            raise DatasetError(f"{index_path}, line {line}: id {sample_id!r} repeats line {seen[sample_id]}")
        seen[sample_id] = line
        if cells["split"] not in SPLITS:
            raise DatasetError(f"{index_path}, line {line}: split {cells['split']!r} is not one of {', '.join(SPLITS)}")
        labels = tuple((c, _parse_label(cells[c], c, line, index_path)) for c in CLASSES)
        # an id names files only when it is one plain file name: an id holding '/' or '..' is a
        # legal id, but its files must be given by the image (and mask) columns
        id_is_name = name_problem(sample_id) is None
        if cells.get(IMAGE_COLUMN):
            image = _inside(root, cells[IMAGE_COLUMN], IMAGE_COLUMN, line, index_path)
        elif id_is_name:  # a plain file name cannot leave images/
            image = os.path.join(root, _default_image(sample_id))
        else:
            raise DatasetError(
                f"{index_path}, line {line}: id {sample_id!r} is not a plain file name, so its image cannot be "
                f"{_default_image('<id>')}: give the image's path in the {IMAGE_COLUMN!r} column"
            )
        masks = []
        for cls in CLASSES:
            column = MASK_COLUMNS[cls]
            if cells.get(column):
                masks.append((cls, _inside(root, cells[column], column, line, index_path)))
            elif id_is_name:
                masks.append((cls, os.path.join(root, _default_mask(cls, sample_id))))
            else:
                masks.append((cls, None))
        extras = tuple((k, v) for k, v in cells.items() if k not in _FORMAT_COLUMNS and v != "")
        rows.append(_Row(sample_id, cells["split"], labels, image, tuple(masks), extras, line))
    return rows


def _resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize an ``H×W`` image to ``size``: area averaging when shrinking, bilinear when enlarging."""
    h, w = size
    shrinking = h <= image.shape[0] and w <= image.shape[1]
    resample = Image.Resampling.BOX if shrinking else Image.Resampling.BILINEAR
    return np.asarray(Image.fromarray(image.astype(np.float32)).resize((w, h), resample=resample), dtype=np.float32)


def _resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of an ``H×W`` bool mask; a lesion that would vanish keeps its covered pixels."""
    h, w = size
    im = Image.fromarray(mask.astype(np.uint8) * 255)
    out = np.asarray(im.resize((w, h), resample=Image.Resampling.NEAREST)) > 127
    if mask.any() and not out.any():
        # a lesion smaller than one output pixel: keep every output pixel it overlaps
        out = np.asarray(im.resize((w, h), resample=Image.Resampling.BOX)) > 0
    return out


def _lesion_areas(masks: Mapping[str, np.ndarray | None]) -> dict[str, list[int]]:
    """Areas (pixels) of the 8-connected components of each annotated mask."""
    from scipy import ndimage

    areas: dict[str, list[int]] = {}
    for cls, mask in masks.items():
        if mask is None:
            continue
        labelled, count = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
        areas[cls] = [int(a) for a in np.bincount(labelled.ravel())[1:]] if count else []
    return areas


@DATASETS.register("folder")
class FolderDataset(MammogramDataset):
    """Images, masks and labels in the generic folder format (see ``datasets/folder.md``).

    Args:
        root: the dataset folder (holds ``labels.csv``).
        split: "train", "val" or "test".
        image_size: ``(H, W)`` to resize every image (area/bilinear) and mask (nearest) to;
            ``None`` keeps each file's own size.

    Raises:
        DatasetError: missing root or labels.csv, a missing required column, a bad label (the
            row's line and the file are named), or no rows for ``split``.
    """

    name = "folder"
    description = "any dataset in the generic folder format: labels.csv + 16-bit PNG images + one PNG mask per class"
    needs_root = True

    def __init__(
        self, root: str | os.PathLike | None = None, split: str = "test", image_size: tuple[int, int] | None = None
    ) -> None:
        super().__init__(root=None if root is None else str(root), split=split, image_size=image_size)
        self.path = Path(self.root)
        if not self.path.is_dir():
            raise DatasetError(f"{self.path}: dataset folder not found")
        if self.image_size is not None and (len(self.image_size) != 2 or min(self.image_size) < 1):
            raise DatasetError(f"image_size must be (H, W) with positive sizes, got {self.image_size}")
        rows = read_index(self.path)
        self._rows = {r.id: r for r in rows if r.split == split}
        if not self._rows:
            counts = {s: sum(r.split == s for r in rows) for s in SPLITS}
            present = ", ".join(f"{s}={n}" for s, n in counts.items())
            raise DatasetError(f"{self.path / INDEX_FILE}: no rows for split {split!r} (rows per split: {present})")
        self._ids = list(self._rows)

    def ids(self) -> list[str]:
        return list(self._ids)

    def load(self, sample_id: str) -> Sample:
        """Read, check, resize (if asked) and standardise one sample.

        Raises:
            SampleError: unknown id, a missing or corrupt image or mask, a mask of another size
                than its image, or a mask that contradicts the label (the file is named).
        """
        row = self._rows.get(sample_id)
        if row is None:
            raise SampleError(f"{sample_id!r} is not in split {self.split!r} of {self.path / INDEX_FILE}", sample_id)
        image_path = Path(row.image)
        try:
            pixels = read_image(image_path)
            labels = dict(row.labels)
            masks: dict[str, np.ndarray | None] = {}
            for cls, mask_name in row.masks:
                mask_path = None if mask_name is None else Path(mask_name)
                if mask_path is not None and mask_path.exists():
                    mask = read_mask(mask_path, shape=pixels.shape)
                    if mask.any() != bool(labels[cls]):
                        problem = "has lesion pixels" if mask.any() else "is empty"
                        raise SampleError(
                            f"{mask_path}: mask {problem} but {self.path / INDEX_FILE} line {row.line} "
                            f"has {cls}={labels[cls]}",
                            sample_id,
                            str(mask_path),
                        )
                    masks[cls] = mask
                else:
                    masks[cls] = None if labels[cls] else np.zeros(pixels.shape, dtype=bool)
        except SampleError as exc:
            exc.sample_id = sample_id
            raise
        original_size = (int(pixels.shape[0]), int(pixels.shape[1]))
        image = pixels.astype(np.float32)
        if self.image_size is not None and tuple(self.image_size) != original_size:
            image = _resize_image(image, self.image_size)
            masks = {c: None if m is None else _resize_mask(m, self.image_size) for c, m in masks.items()}
        meta: dict[str, Any] = {
            "id": sample_id,
            "split": row.split,
            "source": str(image_path),
            "original_size": original_size,
        }
        index_path = str(self.path / INDEX_FILE)
        for key, value in row.extras:
            meta[key] = _decode_extra(key, value, index_path, row.line, sample_id)
        scale = (image.shape[0] * image.shape[1]) / (original_size[0] * original_size[1])
        if "lesion_areas" in meta:
            areas = _checked_lesion_areas(meta["lesion_areas"], index_path, row.line, sample_id)
            meta["lesion_areas"] = {c: [int(round(a * scale)) for a in v] for c, v in areas.items()}
        else:
            meta["lesion_areas"] = _lesion_areas(masks)
        return Sample(image=standardise(image)[None], masks=masks, labels=labels, meta=meta)

    def describe(self) -> dict[str, Any]:
        """Name, split, size, ``labels.csv``'s sha256 and ``files_sha256``: one digest over the split's
        image and mask files (their bytes, and which masks exist), so replacing, adding or removing
        any of them changes it. File hashes are remembered by stat in the project cache (see
        ``wsl_bench.datasets._files``), so only changed files are read again."""
        index = hashlib.sha256(read_regular(self.path / INDEX_FILE)).hexdigest()
        entries = [(row.id, (row.image, *(p for _, p in row.masks))) for row in self._rows.values()]
        files = files_digest(self.path, entries, content=True, cache_name=f"folder:{self.split}")
        return super().describe() | {"root": str(self.path.resolve()), "index_sha256": index, "files_sha256": files}


def _json_depth_problem(text: str) -> str | None:
    """Why a JSON text is too long or nested too deep to decode, or ``None`` (one pass, no recursion)."""
    if len(text) > MAX_JSON_CHARS:
        return f"{len(text):,} characters, above the limit of {MAX_JSON_CHARS:,}"
    depth, in_string, escaped = 0, False, False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            if depth > MAX_JSON_DEPTH:
                return f"nested deeper than {MAX_JSON_DEPTH} levels"
        elif char in "]}":
            depth -= 1
    return None


def _decode_extra(key: str, value: str, index_path: str, line: int, sample_id: str) -> Any:
    """An extra column's value: JSON columns decoded (within bounds), the rest text.

    Raises:
        SampleError: a JSON column that is too long, too deep or not JSON (names the file, line, column).
    """
    if key not in JSON_COLUMNS:
        return value
    problem = _json_depth_problem(value)
    if problem is None:
        try:
            return json.loads(value)
        except ValueError as exc:  # JSONDecodeError, or an integer of too many digits
            problem = f"not JSON ({exc})"
    shown = value if len(value) <= 60 else value[:60] + "…"
    raise SampleError(f"{index_path}, line {line}: {key} {shown!r} cannot be decoded: {problem}", sample_id, index_path)


def _checked_lesion_areas(value: Any, index_path: str, line: int, sample_id: str) -> dict[str, list[float]]:
    """``lesion_areas`` as class → list of non-negative finite areas.

    Raises:
        SampleError: any other shape (names the file and line).
    """
    ok = isinstance(value, dict) and all(
        cls in CLASSES
        and isinstance(areas, list)
        and all(isinstance(a, (int, float)) and not isinstance(a, bool) and math.isfinite(a) and a >= 0 for a in areas)
        for cls, areas in value.items()
    )
    if not ok:
        shown = json.dumps(value)[:80] if isinstance(value, (dict, list)) else repr(value)[:80]
        raise SampleError(
            f"{index_path}, line {line}: lesion_areas {shown} is not class → list of areas in pixels "
            f"(classes {', '.join(CLASSES)}; non-negative numbers)",
            sample_id,
            index_path,
        )
    return value


# ----------------------------------------------------------------------------- writing
def _encode_extra(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, separators=(",", ":"))
    if isinstance(value, (float, np.floating)):
        return repr(float(value))
    if isinstance(value, np.integer):
        return str(int(value))
    return str(value)


class FolderWriter:
    """Writes samples in the folder format, one at a time, resumably.

    Images and masks are written atomically before the sample's row is appended to
    ``labels.csv`` (and flushed), so a row exists only for a complete sample. Reopening an
    existing ROOT resumes: :meth:`has` is true for every id already listed, and a row cut short by
    a crash is dropped.

    Args:
        root: output folder (created).
        extra_columns: meta keys stored as extra columns, in this order; other meta keys are not
            stored. When ``None``, the first written sample's meta keys define the columns and
            later samples may not bring new keys (ValueError). An existing labels.csv's header wins.
    """

    def __init__(self, root: str | os.PathLike, extra_columns: Sequence[str] | None = None) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.index_path = self.root / INDEX_FILE
        self._strict = extra_columns is None
        self._columns: list[str] | None = None
        if extra_columns is not None:
            bad = [c for c in extra_columns if c in _RESERVED_META]
            if bad:
                raise ValueError(f"extra_columns may not include reserved names {bad}")
            self._columns = [*REQUIRED_COLUMNS, IMAGE_COLUMN, *extra_columns]
        self._ids: set[str] = set()
        self._resume()

    def _resume(self) -> None:
        if not self.index_path.exists():
            return
        data = self.index_path.read_bytes()
        if data and not data.endswith(b"\n"):
            # the last row was cut mid-write: drop it, its sample will be written again
            keep = data.rfind(b"\n") + 1
            with open(self.index_path, "r+b") as fh:
                fh.truncate(keep)
            data = data[:keep]
        if not data:
            return
        try:
            rows = list(csv.reader(io.StringIO(data.decode("utf-8-sig"))))
        except (csv.Error, UnicodeDecodeError) as exc:
            raise DatasetError(f"{self.index_path}: cannot resume, unreadable ({exc})") from exc
        header = [h.strip() for h in rows[0]]
        missing = [c for c in REQUIRED_COLUMNS if c not in header]
        if missing:
            raise DatasetError(f"{self.index_path}: cannot resume, missing column(s) {', '.join(missing)}")
        if self._columns is not None and header != self._columns:
            raise DatasetError(f"{self.index_path}: existing columns {header} differ from the requested "
                               f"{self._columns}")
        self._columns = header
        id_col = header.index("id")
        self._ids = {r[id_col].strip() for r in rows[1:] if len(r) > id_col and r[id_col].strip()}

    def has(self, sample_id: str) -> bool:
        """Whether ``sample_id`` is already written (its row is in labels.csv)."""
        return sample_id in self._ids

    def __len__(self) -> int:
        return len(self._ids)

    def write(
        self,
        sample_id: str,
        split: str,
        image_u16: np.ndarray,
        masks: Mapping[str, np.ndarray | None],
        labels: Mapping[str, int],
        meta: Mapping[str, Any] | None = None,
    ) -> None:
        """Write one sample: image, non-empty masks, then its row.

        Args:
            sample_id: unique id, usable as a file name (letters, digits, ``._-``).
            split: "train", "val" or "test".
            image_u16: ``H×W`` uint16 (written as 16-bit PNG) or uint8 (8-bit PNG).
            masks: class → ``H×W`` bool mask or ``None`` (not annotated); a missing class is ``None``.
            labels: class → 0/1 for every class.
            meta: extra columns (lists and dicts are stored as JSON).

        Raises:
            ValueError: a repeated id, a bad split, label, image or mask, a mask that contradicts
                its label (lesion pixels with label 0, or an empty mask with label 1, which the
                format cannot hold), or new meta keys (see the class docs).
        """
        if not isinstance(sample_id, str) or not _SAFE_ID.match(sample_id):
            raise ValueError(f"sample id {sample_id!r} is not usable as a file name (letters, digits, '._-')")
        if sample_id in self._ids:
            raise ValueError(f"{self.index_path}: id {sample_id!r} is already written (check has() first)")
        if split not in SPLITS:
            raise ValueError(f"{sample_id}: split {split!r} is not one of {', '.join(SPLITS)}")
        image = np.asarray(image_u16)
        if image.ndim != 2 or image.dtype not in (np.uint16, np.uint8):
            raise ValueError(f"{sample_id}: image must be 2-D uint16 or uint8, got {image.dtype} {image.shape}")
        for cls in CLASSES:
            if labels.get(cls) not in (0, 1):
                raise ValueError(f"{sample_id}: label {cls}={labels.get(cls)!r} must be 0 or 1")
        checked: dict[str, np.ndarray | None] = {}
        for cls in CLASSES:
            mask = masks.get(cls)
            if mask is not None:
                mask = np.asarray(mask).astype(bool, copy=False)
                if mask.shape != image.shape:
                    raise ValueError(f"{sample_id}: {cls} mask is {mask.shape} but the image is {image.shape}")
                if mask.any() != bool(labels[cls]):
                    what = "has lesion pixels" if mask.any() else "is empty"
                    raise ValueError(f"{sample_id}: {cls} mask {what} but the label is {labels[cls]}")
            checked[cls] = mask
        meta = {k: v for k, v in (meta or {}).items() if k not in _RESERVED_META}
        if self._columns is None:
            self._columns = [*REQUIRED_COLUMNS, IMAGE_COLUMN, *meta]
        extras = [c for c in self._columns if c not in REQUIRED_COLUMNS and c != IMAGE_COLUMN]
        unknown = [k for k in meta if k not in self._columns]
        if unknown and self._strict:
            raise ValueError(
                f"{sample_id}: meta keys {unknown} are not columns of {self.index_path} ({self._columns}); "
                "pass extra_columns to FolderWriter to choose the stored keys"
            )

        image_rel = _default_image(sample_id)
        if image.dtype == np.uint16:
            write_png16(self.root / image_rel, image)
        else:
            write_png8(self.root / image_rel, image)
        for cls, mask in checked.items():
            path = _mask_path(self.root, cls, sample_id)
            if mask is not None and mask.any():
                write_mask_png(path, mask)
            elif path.exists():
                path.unlink()  # a stale mask from an interrupted earlier attempt would change the meaning

        cells = {"id": sample_id, "split": split, IMAGE_COLUMN: image_rel, **{c: str(int(labels[c])) for c in CLASSES}}
        cells.update({k: _encode_extra(meta.get(k)) for k in extras})
        new_file = not self.index_path.exists() or self.index_path.stat().st_size == 0
        with open(self.index_path, "a", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh, lineterminator="\n")
            if new_file:
                writer.writerow(self._columns)
            writer.writerow([cells.get(c, "") for c in self._columns])
            fh.flush()
        self._ids.add(sample_id)


# ----------------------------------------------------------------------------- synthetic export
def synthetic_split_counts(n: int) -> dict[str, int]:
    """How :func:`write_synthetic` splits ``n`` images: test 20 % and val 10 % (rounded), train the rest."""
    if n < 1:
        raise ValueError(f"n must be ≥ 1, got {n}")
    test = int(round(n * SYNTHETIC_SPLIT_FRACTIONS["test"]))
    val = int(round(n * SYNTHETIC_SPLIT_FRACTIONS["val"]))
    return {"train": n - test - val, "val": val, "test": test}


def _generate_raw(split: str, n: int, image_size: tuple[int, int], seed: int, sample_id: str) -> Any:
    """One synthetic sample's raw item (run in a worker process by :func:`write_synthetic`)."""
    from wsl_bench.datasets.synthetic import SyntheticMammograms

    return SyntheticMammograms(split=split, n=n, image_size=image_size, seed=seed, cache_mb=0).raw(sample_id)


def write_synthetic(
    out: str | os.PathLike,
    n: int,
    image_size: tuple[int, int],
    seed: int,
    progress: bool = True,
    workers: int = 1,
    split_counts: Mapping[str, int] | None = None,
) -> Path:
    """Write ``n`` synthetic mammograms to ``out`` in the folder format (resumable).

    Image ``i`` of split ``s`` is ``SyntheticMammograms(split=s, n=counts[s], image_size=image_size,
    seed=seed)``'s image ``i``, with ``counts = synthetic_split_counts(n)``, so reading ``out``
    back with :class:`FolderDataset` gives the same samples. ``out/synthetic.json`` records the
    parameters; rerunning with the same ones resumes, with other ones is an error.

    Args:
        out: output folder.
        n: total number of images over the three splits.
        image_size: ``(H, W)``.
        seed: dataset seed.
        progress: show a tqdm progress bar.
        workers: processes generating images (each image is a pure function of its id, so the
            result does not depend on this; files are written by the calling process, in order).
        split_counts: images per split instead of :func:`synthetic_split_counts` (``n`` must be their
            sum), e.g. a preset's ``n_train``/``n_val``/``n_test``: the export then holds exactly the
            images the built-in ``synthetic`` dataset gives at that preset.

    Returns:
        ``out`` as a Path.

    Raises:
        ValueError: ``out`` holds a synthetic export with other parameters.
    """
    from tqdm.auto import tqdm

    from wsl_bench.datasets.synthetic import SyntheticMammograms
    from wsl_bench.datasets.synthetic_generator import GENERATOR_VERSION

    out = Path(out)
    counts = synthetic_split_counts(n)
    if split_counts is not None:
        counts = {split: int(split_counts.get(split, 0)) for split in SPLITS}
        if sum(counts.values()) != n or min(counts.values()) < 0:
            raise ValueError(f"split_counts {counts} must be non-negative and add up to n = {n}")
    params = {
        "generator": "synthetic",
        "generator_version": GENERATOR_VERSION,
        "seed": int(seed),
        "image_size": [int(image_size[0]), int(image_size[1])],
        "n": int(n),
        "split_counts": counts,
    }
    params_path = out / "synthetic.json"
    # a folder of other files, or another export, is the user's to sort out: one line each (DatasetError)
    if out.exists() and not out.is_dir():
        raise DatasetError(f"{out} is a file, not a folder; choose a folder for --out")
    if params_path.exists():
        try:
            previous = json.loads(read_regular(params_path).decode("utf-8"))
        except (OSError, ValueError) as exc:
            raise DatasetError(f"{params_path}: unreadable ({exc}); remove it or choose another --out") from None
        if previous != params:
            raise DatasetError(f"{params_path}: {out} holds a synthetic export made with {previous}, not {params}; "
                               "choose another --out or the same settings")
    elif (out / INDEX_FILE).exists():
        raise DatasetError(f"{out / INDEX_FILE} exists but {params_path} does not: {out} is not a synthetic export "
                           "(nothing was written there); choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    params_path.write_text(json.dumps(params, indent=2) + "\n")
    writer = FolderWriter(out, extra_columns=SYNTHETIC_COLUMNS)
    size = (int(image_size[0]), int(image_size[1]))
    todo = []
    for split in SPLITS:
        if counts[split] == 0:
            continue
        dataset = SyntheticMammograms(split=split, n=counts[split], image_size=size, seed=seed, cache_mb=0)
        todo += [(split, sample_id) for sample_id in dataset.ids() if not writer.has(sample_id)]
    with tqdm(total=n, initial=n - len(todo), desc=f"synthetic → {out}", unit="img", disable=not progress) as bar:
        with contextlib.ExitStack() as stack:
            if workers > 1:
                from concurrent.futures import ProcessPoolExecutor

                pool = stack.enter_context(ProcessPoolExecutor(max_workers=workers))
                items = pool.map(
                    _generate_raw, *zip(*[(s, counts[s], size, seed, i) for s, i in todo], strict=True), chunksize=4
                ) if todo else iter(())
            else:
                items = (_generate_raw(s, counts[s], size, seed, i) for s, i in todo)
            for (split, sample_id), item in zip(todo, items, strict=True):
                writer.write(sample_id, split, item.image_u16, item.masks, item.labels, item.meta)
                bar.update(1)
    return out
