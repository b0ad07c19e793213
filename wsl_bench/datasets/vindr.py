"""VinDr-Mammo (dataset ``vindr``): DICOMs with box annotations in ``finding_annotations.csv``.

Layout under the root (as published)::

    images/<study_id>/<image_id>.dicom      note the ``.dicom`` suffix
    finding_annotations.csv                 one row per finding; images without one have a
                                            'No Finding' row
    breast-level_annotations.csv, metadata.csv   (not needed)

``finding_annotations.csv`` columns: ``study_id, series_id, image_id, laterality, view_position,
height, width, breast_birads, breast_density, finding_categories, finding_birads, xmin, ymin,
xmax, ymax, split``. Quirks handled: ``finding_categories`` is a Python list written as text
(``"['Mass', 'Suspicious Calcification']"``, read by a small flat parser — a list of quoted names,
at most 10 KB — never ``eval`` or a recursive parser, so a hostile cell fails its image only);
BI-RADS values are written ``"BI-RADS 4"``; box cells are empty for 'No Finding' rows; the
``height``/``width`` columns are checked against the DICOM so boxes are never put in the wrong
frame; ``split`` is ``training``/``test``.

Labels are a **BI-RADS proxy**: a finding is malignant with BI-RADS 4–5 and benign with 2–3
(its own ``finding_birads``, else the breast's); the image is labelled malignant when any finding
is, or when ``breast_birads`` is 4–5, and benign when any finding is benign. Masks are the
findings' boxes filled (``meta["mask_kind"] = "box"``, boxes in ``meta["boxes"]``): metrics on them
are box-based, and reports must say so. A class labelled 1 with no box has mask None (not
annotated). Splits: the official ``test`` split; ``training`` studies are ``train`` except a fixed
10% (hash of the study id) held out as ``val``.
"""

from __future__ import annotations

import logging
import math
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from wsl_bench.data import DatasetError, Sample, SampleError
from wsl_bench.datasets._dicom import read_dicom_with_info
from wsl_bench.datasets._files import name_problem, text_problem
from wsl_bench.datasets._preprocess import PreprocessConfig, boxes_to_mask, preprocess
from wsl_bench.datasets._raw import IndexEntry, RawDataset, holdout_split, read_csv_rows
from wsl_bench.registry import DATASETS
from wsl_bench.saliency import CLASSES

log = logging.getLogger(__name__)

REQUIRED_COLUMNS: tuple[str, ...] = (
    "study_id",
    "image_id",
    "laterality",
    "view_position",
    "height",
    "width",
    "breast_birads",
    "finding_categories",
    "finding_birads",
    "xmin",
    "ymin",
    "xmax",
    "ymax",
    "split",
)
SPLITS = {"training": "train", "train": "train", "test": "test"}
MAX_CATEGORIES_CHARS = 10 * 1024
"""Longest ``finding_categories`` cell parsed (the published ones are under 100 characters)."""


def _short(text: str, limit: int = 60) -> str:
    return repr(text) if len(text) <= limit else repr(text[:limit]) + f"… ({len(text):,} characters)"


def parse_birads(text: str) -> int | None:
    """``"BI-RADS 4"`` / ``"4"`` → 4; ``""`` → None.

    Raises:
        ValueError: any other text, or a category outside 0–6.
    """
    text = str(text).strip()
    if not text or text.lower() == "nan":
        return None
    match = re.fullmatch(r"(?:BI-?RADS\s*)?(\d)(?:\.0)?", text, re.IGNORECASE) if len(text) < 40 else None
    if not match or not 0 <= int(match.group(1)) <= 6:
        raise ValueError(f"BI-RADS {_short(text)} is outside the known values (BI-RADS 0-6)")
    return int(match.group(1))


_ESCAPES = {"n": "\n", "t": "\t", "\\": "\\", "'": "'", '"': '"'}


def parse_categories(text: str) -> list[str]:
    """``"['Mass', 'Suspicious Calcification']"`` → the list.

    The grammar is flat: ``[`` (or ``(``), quoted names (``'`` or ``"``, backslash escapes)
    separated by commas, an optional trailing comma, ``]`` (``)``); a single quoted name; or empty.
    One pass, no recursion, at most :data:`MAX_CATEGORIES_CHARS` characters.

    Raises:
        ValueError: longer text, or text that is not a flat list of quoted names.
    """
    text = text.strip()
    if len(text) > MAX_CATEGORIES_CHARS:
        raise ValueError(
            f"finding_categories of {len(text):,} characters is longer than the {MAX_CATEGORIES_CHARS:,} allowed"
        )
    if not text:
        return []
    bad = ValueError(f"finding_categories {_short(text)} is not a list written as text")
    closing = {"[": "]", "(": ")"}.get(text[0])
    body = text[1:-1] if closing is not None else text
    if closing is not None and not text.endswith(closing):
        raise bad
    names: list[str] = []
    i, n = 0, len(body)
    expect_item = True
    while True:
        while i < n and body[i].isspace():
            i += 1
        if i == n:
            break
        if expect_item:
            quote = body[i]
            if quote not in "'\"":
                raise bad
            i += 1
            chars: list[str] = []
            while i < n and body[i] != quote:
                if body[i] == "\\" and i + 1 < n:
                    i += 1
                    chars.append(_ESCAPES.get(body[i], "\\" + body[i]))
                else:
                    chars.append(body[i])
                i += 1
            if i == n:
                raise bad  # unterminated name
            i += 1
            names.append("".join(chars).strip())
            expect_item = False
        elif body[i] == ",":
            i += 1
            expect_item = True
        else:
            raise bad
    if closing is None and len(names) != 1:
        raise bad  # without brackets: one quoted name only
    return names


def birads_class(birads: int | None) -> str | None:
    """The proxy class of a BI-RADS category: 4–5 malignant, 2–3 benign, else none."""
    if birads in (4, 5):
        return "malignant"
    if birads in (2, 3):
        return "benign"
    return None


def _float(text: str) -> float | None:
    text = str(text).strip()
    if not text or text.lower() == "nan":
        return None
    value = float(text)
    return None if math.isnan(value) else value


def _image_size(row: dict[str, str]) -> tuple[int, int]:
    """``(height, width)`` of a row: positive whole numbers of pixels ("3518" or "3518.0").

    Raises:
        ValueError: naming the column and the value (``inf``, ``-1``, ``12.5``, text, ...).
    """
    size = []
    for column in ("height", "width"):
        text = str(row[column]).strip()
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f"{column} {text!r} is not a number") from None
        if not (math.isfinite(value) and value >= 1 and value == int(value)):
            raise ValueError(f"{column} {text!r} is not a positive whole number of pixels")
        size.append(int(value))
    return size[0], size[1]


BOX_MARGIN = 0.01
"""How far outside the image (a fraction of its size) a box edge may lie: an annotation tool may
draw a box to a pixel beyond the image's edge; further out, it is not this image's box."""


def _box_problem(coords: list[float], size: tuple[int, int]) -> str | None:
    """Why a box ``[xmin, ymin, xmax, ymax]`` cannot be on an image of ``size`` (``None`` when it can)."""
    h, w = size
    xmin, ymin, xmax, ymax = coords
    mx, my = BOX_MARGIN * w, BOX_MARGIN * h
    if not all(math.isfinite(c) for c in coords):
        return f"box xmin/ymin/xmax/ymax = {coords} is not finite"
    if not (-mx <= xmin and xmax <= w + mx and -my <= ymin and ymax <= h + my):
        return f"box xmin/ymin/xmax/ymax = {coords} lies outside the {h}×{w} image"
    return None


@DATASETS.register("vindr")
class VinDrDataset(RawDataset):
    """VinDr-Mammo: DICOMs with finding boxes; BI-RADS proxy labels, box-based masks.

    Args:
        root: the VinDr-Mammo release folder.
        split: ``train``/``val``/``test``.
        image_size: output ``(H, W)``, default 2944×1920.
        val_fraction: share of training studies held out as ``val``.
    """

    name = "vindr"
    description = "VinDr-Mammo: DICOM mammograms with finding boxes; BI-RADS proxy labels, box-based masks"

    def __init__(
        self,
        root: str | None = None,
        split: str = "test",
        image_size: tuple[int, int] | None = None,
        val_fraction: float = 0.1,
        preprocess: PreprocessConfig | None = None,
    ) -> None:
        super().__init__(root=root, split=split, image_size=image_size, preprocess=preprocess)
        self.val_fraction = val_fraction
        self.csv_path = self.root_path / "finding_annotations.csv"
        self.image_dir = self.root_path / "images"

    def index_files(self) -> list[Path]:
        return [self.csv_path]

    def build_index(self) -> dict[str, IndexEntry]:
        if not self.csv_path.is_file():
            raise DatasetError(f"{self.csv_path}: file not found (VinDr-Mammo's finding annotations)")
        rows = read_csv_rows(self.csv_path, REQUIRED_COLUMNS)
        by_image: dict[str, list[tuple[int, dict[str, str]]]] = defaultdict(list)
        for line, row in enumerate(rows, start=2):
            image_id = row["image_id"].strip()
            problem = text_problem(image_id, "image_id")
            if problem is not None:
                raise DatasetError(f"{self.csv_path} line {line}: {problem}")
            by_image[image_id].append((line, row))
        index = {}
        for image_id, items in by_image.items():
            problems: list[str] = []
            first = items[0][1]
            study = first["study_id"].strip()
            # both name files (images/<study_id>/<image_id>.dicom): each must be one plain file name
            for column, value in (("image_id", image_id), ("study_id", study)):
                problem = name_problem(value, column)
                if problem is not None:
                    problems.append(f"{self.csv_path} line {items[0][0]}: {problem}; refused as a path")
            split_value = first["split"].strip().lower()
            if split_value not in SPLITS:
                problems.append(f"{self.csv_path} line {items[0][0]}: split {first['split']!r} is not training/test")
                split = "test"
            else:
                split = SPLITS[split_value]
                split = holdout_split(study, self.val_fraction) if split == "train" else split
            findings = []
            breast_birads = None
            size: tuple[int, int] | None = None
            for line, row in items:
                where = f"{self.csv_path} line {line}"
                try:
                    breast_birads = parse_birads(row["breast_birads"])
                    finding_birads = parse_birads(row["finding_birads"])
                    categories = parse_categories(row["finding_categories"])
                    coords = [_float(row[k]) for k in ("xmin", "ymin", "xmax", "ymax")]
                    size = _image_size(row)
                except ValueError as exc:
                    problems.append(f"{where}: {exc}")
                    continue
                if categories == ["No Finding"] or all(c is None for c in coords):
                    continue
                if any(c is None for c in coords) or not (coords[0] < coords[2] and coords[1] < coords[3]):
                    problems.append(f"{where}: malformed box xmin/ymin/xmax/ymax = {coords}")
                    continue
                problem = _box_problem(coords, size)
                if problem is not None:  # drawn, a box at ±1e12 filled the whole image
                    problems.append(f"{where}: {problem}")
                    continue
                birads = finding_birads if finding_birads is not None else breast_birads
                findings.append({"categories": categories, "birads": birads, "box": coords, "line": line})
            index[image_id] = IndexEntry(
                split=split,
                patient=study,
                data={
                    "study": study,
                    "laterality": first["laterality"].strip().upper(),
                    "view": first["view_position"].strip().upper(),
                    "breast_birads": breast_birads,
                    "size": size if not problems else None,
                    "findings": findings,
                    "density": first.get("breast_density", "").strip(),
                },
                problems=problems,
            )
        return index

    def source_files(self, sample_id: str, entry: IndexEntry) -> list[Path]:
        return [] if entry.problems else [image_path(self.root_path, entry.data["study"], sample_id)]

    def load_entry(self, sample_id: str, entry: IndexEntry) -> Sample:
        d = entry.data
        path = image_path(self.root_path, d["study"], sample_id)
        if not path.is_file():
            raise SampleError(f"{path}: image listed in {self.csv_path} not found", sample_id, str(path))
        image, info = read_dicom_with_info(path)
        if d["size"] is not None and tuple(image.shape) != tuple(d["size"]):
            raise SampleError(
                f"{path}: the DICOM is {image.shape[0]}×{image.shape[1]} but {self.csv_path.name} says "
                f"{d['size'][0]}×{d['size'][1]}: the boxes would be in another frame",
                sample_id,
                str(path),
            )
        boxes: dict[str, list[list[float]]] = {c: [] for c in CLASSES}
        categories: dict[str, list[str]] = {c: [] for c in CLASSES}
        for finding in d["findings"]:
            cls = birads_class(finding["birads"])
            if cls is not None:
                boxes[cls].append(finding["box"])
                categories[cls] += finding["categories"]
        labels = {c: int(bool(boxes[c])) for c in CLASSES}
        if d["breast_birads"] in (4, 5):
            labels["malignant"] = 1
        masks: dict[str, np.ndarray | None] = {}
        box_arrays: dict[str, np.ndarray] = {}
        for cls in CLASSES:
            if labels[cls] and not boxes[cls]:
                masks[cls] = None  # positive without a box: not annotated
            else:
                box_arrays[cls] = np.asarray(boxes[cls], dtype=np.float64).reshape(-1, 4)
                masks[cls] = boxes_to_mask(box_arrays[cls], image.shape)
        pre = preprocess(image, masks, box_arrays, config=self.config, source=str(path))
        meta: dict[str, Any] = {
            "source": str(path),
            "sources": [str(path)],
            "patient": entry.patient,
            "study": d["study"],
            "laterality": d["laterality"],
            "view": d["view"],
            "birads": d["breast_birads"],
            "density": d["density"],
            "finding_categories": {c: sorted(set(v)) for c, v in categories.items() if v},
            "mask_kind": "box",
            "label_source": "birads-proxy",
            "dicom_inverted": info.inverted,
        }
        return self.make_sample(sample_id, pre, labels, meta)


def image_path(root: str | Path, study_id: str, image_id: str) -> Path:
    """Where VinDr-Mammo keeps an image: ``images/<study_id>/<image_id>.dicom``."""
    return Path(root) / "images" / study_id / f"{image_id}.dicom"
