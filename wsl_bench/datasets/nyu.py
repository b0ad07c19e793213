"""The NYU exam-list format of the published GMIC/GLAM sample data (dataset ``nyu``).

Layout under the root (names as published; each can be overridden)::

    data.pkl                      pickled list of exams (read with wsl_bench.datasets._safe_pickle);
                                  data.json, the same list as JSON, when there is no pickle
    cropped_images/<stem>.png     16-bit PNGs (``images/`` is used when there is no cropped_images/)
    segmentation/<stem>_benign.png, <stem>_malignant.png   uint8 {0,255}, in the model frame

An exam is a dict: ``horizontal_flip`` ('NO'/'YES'), view keys ``L-CC``, ``R-CC``, ``L-MLO``,
``R-MLO`` (lists of file stems), ``cancer_label`` (``left_benign``, ``right_benign``,
``left_malignant``, ``right_malignant``, ...), optionally ``best_center`` (view → list of
``(y, x)``), ``window_location`` and ``<view>_<class>_seg`` (lists of segmentation stems).

Semantics, following the published code: with ``horizontal_flip`` 'NO' the right views are
flipped, with 'YES' the left views, so that every view has the chest wall on the left. The model
frame is the 2944×1920 window centred on ``best_center`` in the flipped image (zero padded the
published way when the image is smaller: CC views at top and bottom, MLO views at the bottom,
both on the right); an image that already has the window's size is the model frame.
Segmentations are in the model frame; a listed segmentation whose file does not exist means "no
lesion of that class". Images are 16-bit PNGs that may hold 12-bit values: only relative
intensities matter after standardisation.

A *raw* exam list (the published ``exam_list_before_cropping.pkl``: no exam has ``best_center`` or
``window_location``) whose images are not already in the model frame cannot be scored: opening it
raises a :class:`DatasetError` telling the user to run ``wsl-bench data prepare nyu`` (the
published cropping and optimal-centre steps, :mod:`wsl_bench.datasets.nyu_prepare`) first.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from wsl_bench.data import DatasetError, Sample, SampleError
from wsl_bench.datasets._files import name_problem, text_problem
from wsl_bench.datasets._imageio import read_image, read_mask
from wsl_bench.datasets._preprocess import (
    Geometry,
    PreprocessConfig,
    Preprocessed,
    apply_geometry,
    breast_bbox,
    fit_size,
)
from wsl_bench.datasets._raw import IndexEntry, RawDataset
from wsl_bench.datasets._safe_pickle import MAX_BYTES, UnsafePickleError
from wsl_bench.datasets._safe_pickle import load as safe_load
from wsl_bench.registry import DATASETS
from wsl_bench.regular_files import open_regular, read_regular
from wsl_bench.saliency import CLASSES

log = logging.getLogger(__name__)

VIEWS: tuple[str, ...] = ("L-CC", "R-CC", "L-MLO", "R-MLO")
MODEL_FRAME: tuple[int, int] = (2944, 1920)
_SPLIT_NAMES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
}


def nyu_window(
    shape: tuple[int, int], center: Sequence[float], view: str, frame: tuple[int, int] = MODEL_FRAME
) -> tuple[int, int, int, int]:
    """The model-frame window ``(top, left, bottom, right)`` around ``best_center`` (no augmentation noise).

    The window of size ``frame`` is centred on ``(y, x)`` and shifted to lie inside the image;
    along an axis where the image is smaller than the window it is zero padded instead: CC views
    symmetrically at top and bottom, MLO views at the bottom, and every view on the right.
    The box may therefore extend beyond the image (negative top, bottom > height).
    """
    h, w = shape
    fh, fw = frame
    cy, cx = int(round(float(center[0]))), int(round(float(center[1])))
    if h < fh:
        top = -((fh - h) // 2) if view.endswith("CC") else 0
    else:
        top = min(max(cy - fh // 2, 0), h - fh)
    left = 0 if w < fw else min(max(cx - fw // 2, 0), w - fw)
    return top, left, top + fh, left + fw


def _read_json_exam_list(path: Path) -> Any:
    """An exam list stored as JSON (tuples become lists, which the loader reads alike)."""
    size = path.stat().st_size
    if size > MAX_BYTES:
        raise DatasetError(f"{path}: {size:,} bytes, above the limit of {MAX_BYTES:,} bytes; refused")
    try:
        return json.loads(read_regular(path, MAX_BYTES).decode("utf-8"))
    except (ValueError, RecursionError) as exc:  # malformed JSON or text, absurd nesting
        raise DatasetError(f"{path}: malformed JSON exam list ({type(exc).__name__}: {exc})") from None


def load_exam_list(path: Path) -> list[dict[str, Any]]:
    """The exams of an exam list — a pickle read with the restricted unpickler, or the JSON copy
    ``wsl-bench data prepare nyu`` writes — checked to be a list of dicts (possibly empty).

    Raises:
        DatasetError: unsafe or malformed file, not a list of dicts; the message names the file.
    """
    if path.suffix.lower() == ".json":
        exams = _read_json_exam_list(path)
    else:
        try:
            exams = safe_load(path)
        except UnsafePickleError as exc:
            raise DatasetError(str(exc)) from exc
    if not isinstance(exams, list):
        raise DatasetError(f"{path}: expected a list of exams, got {type(exams).__name__}")
    for number, exam in enumerate(exams):
        if not isinstance(exam, dict):
            raise DatasetError(f"{path}: exam #{number} is a {type(exam).__name__}, not a dict")
    return exams


def _png_size(path: Path) -> tuple[int, int] | None:
    """``(H, W)`` from an image file's header (nothing decoded), or None when it cannot be read."""
    try:
        with open_regular(path) as handle, Image.open(handle) as image:  # a FIFO would block
            width, height = image.size
    except (OSError, ValueError, SyntaxError):  # missing, not an image, a damaged header
        return None
    return int(height), int(width)


def _label_value(value: Any) -> int | None:
    """0/1 from a label stored as int, bool, float or numeric string; None if outside {0, 1}."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (int, float)) and value in (0, 1):
        return int(value)
    if isinstance(value, str) and value.strip() in ("0", "1"):
        return int(value.strip())
    return None


@DATASETS.register("nyu")
class NYUDataset(RawDataset):
    """NYU exam-list format (GMIC/GLAM sample data): pickled exam list, 16-bit PNGs, segmentation PNGs.

    Args:
        root: folder holding the exam list, images and segmentations.
        split: exams carrying a ``split`` key are assigned by it (train/training, val/validation,
            test); without one every exam is in ``test`` (the published lists are evaluation lists).
        image_size: output ``(H, W)``; default 2944×1920 (the model frame itself, untouched).
        exam_list: the pickle, relative to root; default ``data.pkl`` (else the only ``*.pkl``).
        image_dir: image folder relative to root; default ``cropped_images`` else ``images``.
        segmentation_dir: default ``segmentation`` when it exists; without one masks are None
            (not annotated).
        flip: ``"exam"`` applies the ``horizontal_flip`` semantics; ``"none"`` for images stored
            already flipped (as GMIC's ``cropped_images``, read with flipping disabled).
        frame: the model frame size, ``(2944, 1920)``.
    """

    name = "nyu"
    description = "NYU exam-list format (GMIC/GLAM sample data): pickled exams, 16-bit PNGs, segmentations"

    def __init__(
        self,
        root: str | None = None,
        split: str = "test",
        image_size: tuple[int, int] | None = None,
        exam_list: str | None = None,
        image_dir: str | None = None,
        segmentation_dir: str | None = None,
        flip: str = "exam",
        frame: tuple[int, int] = MODEL_FRAME,
        preprocess: PreprocessConfig | None = None,
    ) -> None:
        super().__init__(root=root, split=split, image_size=image_size, preprocess=preprocess)
        if flip not in ("exam", "none"):
            raise DatasetError(f"flip must be 'exam' or 'none', got {flip!r}")
        self.flip_mode = flip
        self.frame = (int(frame[0]), int(frame[1]))
        self.exam_list_path = self._find_exam_list(exam_list)
        self.image_dir = self._find_dir(image_dir, ("cropped_images", "images"), required=True)
        self.segmentation_dir = self._find_dir(segmentation_dir, ("segmentation", "segmentations"), required=False)

    # -- locating files ---------------------------------------------------------------------------
    def _find_exam_list(self, name: str | None) -> Path:
        if name is not None:
            path = self.root_path / name
            if not path.is_file():
                raise DatasetError(f"{path}: exam list not found")
            return path
        default = self.root_path / "data.pkl"
        if default.is_file():
            return default
        pickles = sorted(self.root_path.glob("*.pkl"))
        if len(pickles) == 1:
            return pickles[0]
        if not pickles:
            if (self.root_path / "data.json").is_file():  # the JSON copy `data prepare nyu` writes
                return self.root_path / "data.json"
            raise DatasetError(f"{self.root_path}: no exam list (data.pkl, another *.pkl or data.json) found")
        raise DatasetError(
            f"{self.root_path}: several exam lists ({', '.join(p.name for p in pickles)}); choose one with exam_list="
        )

    def _find_dir(self, name: str | None, defaults: Sequence[str], required: bool) -> Path | None:
        if name is not None:
            path = self.root_path / name
            if not path.is_dir():
                raise DatasetError(f"{path}: folder not found")
            return path
        for candidate in defaults:
            if (self.root_path / candidate).is_dir():
                return self.root_path / candidate
        if required:
            return self.root_path  # images directly under the root
        return None

    # -- index ------------------------------------------------------------------------------------
    def index_files(self) -> list[Path]:
        return [self.exam_list_path]

    def build_index(self) -> dict[str, IndexEntry]:
        where = self.exam_list_path
        exams = load_exam_list(where)
        self._refuse_raw_list(exams)
        index: dict[str, IndexEntry] = {}
        for number, exam in enumerate(exams):
            raw_split = str(exam.get("split", "test")).strip().lower()
            split = _SPLIT_NAMES.get(raw_split)
            exam_problems = []
            if split is None:
                exam_problems.append(f"{where}: exam #{number} has unknown split {exam.get('split')!r}")
                split = "test"
            flip_value = exam.get("horizontal_flip", "NO")
            if flip_value not in ("NO", "YES"):
                exam_problems.append(
                    f"{where}: exam #{number} horizontal_flip is {flip_value!r}, outside the known values 'NO'/'YES'"
                )
            for view in VIEWS:
                stems = exam.get(view) or []
                if isinstance(stems, str):
                    stems = [stems]
                for k, stem in enumerate(stems):
                    stem = str(stem)
                    problem = text_problem(stem, "image stem")
                    if problem is not None:
                        raise DatasetError(f"{where}: exam #{number}, view {view}: {problem}")
                    problems = list(exam_problems)
                    # stems and segmentation names are file names in their folders: never paths
                    problem = name_problem(stem, "image stem")
                    if problem is not None:
                        problems.append(f"{where}: exam #{number}, view {view}: {problem}; refused as a path")
                    if stem in index:
                        problems.append(f"{where}: image {stem!r} is listed twice (exam #{number}, view {view})")
                    labels, label_problems = self._labels(exam, view, number)
                    problems += label_problems
                    centers = (exam.get("best_center") or {}).get(view) or []
                    windows = (exam.get("window_location") or {}).get(view) or []
                    segs = {}
                    for cls in CLASSES:
                        listed = exam.get(f"{view}_{cls}_seg")
                        if isinstance(listed, str):
                            listed = [listed]
                        segs[cls] = str(listed[k]) if isinstance(listed, list) and k < len(listed) else f"{stem}_{cls}"
                        problem = name_problem(segs[cls], f"{cls} segmentation name")
                        if problem is not None:
                            problems.append(f"{where}: exam #{number}, view {view}: {problem}; refused as a path")
                    index[stem] = IndexEntry(
                        split=split,
                        patient=f"exam{number}",
                        data={
                            "exam": number,
                            "view": view,
                            "horizontal_flip": flip_value,
                            "labels": labels,
                            "best_center": list(centers[k]) if k < len(centers) and centers[k] is not None else None,
                            "window_location": list(windows[k])
                            if k < len(windows) and windows[k] is not None
                            else None,
                            "segmentations": segs,
                        },
                        problems=problems,
                    )
        return index

    def _refuse_raw_list(self, exams: list[dict]) -> None:
        """A raw exam list (as ``exam_list_before_cropping.pkl``) cannot be scored: its images are not
        cropped and it has no ``best_center``, so its model-frame segmentations match no window.

        Raised when no exam has ``best_center`` or ``window_location`` and the first listed image
        that exists (its PNG header is read, up to 8 tried) is not of the frame's size; lists of
        images already in the model frame (GMIC's ``cropped_images``) need no centre.

        Raises:
            DatasetError: telling the user to run ``wsl-bench data prepare nyu``.
        """
        if not exams or any("best_center" in e or "window_location" in e for e in exams):
            return
        tried = 0
        for exam in exams:
            for view in VIEWS:
                stems = exam.get(view) or []
                for stem in [stems] if isinstance(stems, str) else stems if isinstance(stems, (list, tuple)) else []:
                    stem = str(stem)
                    if name_problem(stem, "image stem") is not None:
                        continue
                    path = self.image_dir / f"{stem}.png"
                    if tried >= 8:
                        return
                    tried += 1
                    size = _png_size(path)
                    if size is None:
                        continue
                    if size == self.frame:
                        return
                    raise DatasetError(
                        f"{self.exam_list_path}: a raw exam list: no exam has best_center or window_location, and its "
                        f"images are not in the {self.frame[0]}×{self.frame[1]} model frame ({path.name} is "
                        f"{size[0]}×{size[1]}), so its segmentations cannot be placed. Crop the images and compute "
                        "their optimal centres first, as the published pipeline does: wsl-bench data prepare nyu "
                        f"--src {self.root_path} --out DIR, then wsl-bench run --dataset nyu --data-root DIR "
                        "(datasets/nyu.md)"
                    )

    def _labels(self, exam: dict, view: str, number: int) -> tuple[dict[str, int], list[str]]:
        cancer = exam.get("cancer_label")
        if cancer is None:
            return {}, []
        if not isinstance(cancer, dict):
            return {}, [f"{self.exam_list_path}: exam #{number} cancer_label is not a dict"]
        side = "left" if view.startswith("L") else "right"
        labels, problems = {}, []
        for cls in CLASSES:
            key = f"{side}_{cls}"
            if key not in cancer:
                continue
            value = _label_value(cancer[key])
            if value is None:
                problems.append(
                    f"{self.exam_list_path}: exam #{number} cancer_label[{key!r}] = {cancer[key]!r} "
                    "is outside the known values 0/1"
                )
            else:
                labels[cls] = value
        return labels, problems

    def source_files(self, sample_id: str, entry: IndexEntry) -> list[Path]:
        if entry.problems:
            return []
        files = [self.image_dir / f"{sample_id}.png"]
        if self.segmentation_dir is not None:
            files += [self.segmentation_dir / f"{entry.data['segmentations'][c]}.png" for c in CLASSES]
        return files

    # -- loading ----------------------------------------------------------------------------------
    def load_entry(self, sample_id: str, entry: IndexEntry) -> Sample:
        d = entry.data
        view = d["view"]
        image_path = self.image_dir / f"{sample_id}.png"
        if not image_path.is_file():
            raise SampleError(
                f"{image_path}: image listed in {self.exam_list_path} (exam #{d['exam']}, {view}) not found",
                sample_id,
                str(image_path),
            )
        image = read_image(image_path)
        flip = False
        if self.flip_mode == "exam":
            right = view.startswith("R")
            flip = (d["horizontal_flip"] == "NO" and right) or (d["horizontal_flip"] == "YES" and not right)
        h, w = image.shape
        if (h, w) == self.frame:
            crop = (0, 0, h, w)
            frame_note = "image is the model frame"
        elif d["best_center"] is not None:
            crop = nyu_window((h, w), d["best_center"], view, self.frame)
            frame_note = "model-frame window around best_center"
        else:
            crop = (0, 0, h, w)
            frame_note = "no best_center: whole image"
        crop_shape = (crop[2] - crop[0], crop[3] - crop[1])
        resized, offset = fit_size(crop_shape, self.config)
        geometry = Geometry((h, w), flip, crop, resized, offset, tuple(self.config.image_size))

        masks: dict[str, np.ndarray | None] = {c: None for c in CLASSES}
        sources = [str(image_path)]
        if self.segmentation_dir is not None:
            for cls in CLASSES:
                seg_path = self.segmentation_dir / f"{d['segmentations'][cls]}.png"
                if seg_path.is_file():
                    seg = read_mask(seg_path)
                    if seg.shape != crop_shape:
                        raise SampleError(
                            f"{seg_path}: {cls} segmentation is {seg.shape[0]}×{seg.shape[1]} but the model frame of "
                            f"{image_path.name} is {crop_shape[0]}×{crop_shape[1]} ({frame_note})",
                            sample_id,
                            str(seg_path),
                        )
                    masks[cls] = seg
                    sources.append(str(seg_path))
                else:
                    masks[cls] = np.zeros(crop_shape, dtype=bool)  # listed but absent: no lesion of this class
        fill = float(image.min())
        out, _, _ = apply_geometry(geometry, image, fill=fill)
        frame_geometry = geometry.in_crop_frame()
        out_masks = {c: (None if m is None else frame_geometry.apply_mask(m)) for c, m in masks.items()}
        info: dict[str, Any] = {
            "orientation": f"exam: horizontal_flip={d['horizontal_flip']}, flipped={flip}",
            "frame": frame_note,
        }
        info["orientation_check"] = self._orientation_check(geometry.apply_image(image, fill=fill), image_path)
        pre = Preprocessed(out, out_masks, {}, geometry, info)
        meta = {
            "source": str(image_path),
            "sources": sources,
            "view": view.split("-")[1],
            "laterality": view[0],
            "exam": d["exam"],
            "horizontal_flip": d["horizontal_flip"],
            "best_center": d["best_center"],
            "window_location": d["window_location"],
            "mask_kind": "pixel" if self.segmentation_dir is not None else "none",
            "label_source": "cancer_label",
        }
        return self.make_sample(sample_id, pre, d["labels"], meta)

    def _orientation_check(self, oriented: np.ndarray, path: Path) -> str:
        """Whether the oriented image has its chest wall on the left, as the flip semantics promise."""
        try:
            _, wall_right = breast_bbox(oriented, self.config)
        except ValueError:
            return "blank image: not checked"
        if wall_right:
            log.warning(
                "%s: after applying horizontal_flip the chest wall appears on the right; if the images are stored "
                "already flipped, load with flip='none'",
                path,
            )
            return "chest wall appears on the right"
        return "ok"
