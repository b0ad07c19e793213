"""CBIS-DDSM (dataset ``cbis-ddsm``): full-field DICOMs, ROI-mask DICOMs and the four description CSVs.

Layout under the root (as a TCIA download produces it)::

    mass_case_description_train_set.csv   calc_case_description_train_set.csv
    mass_case_description_test_set.csv    calc_case_description_test_set.csv
    metadata.csv                          (the download's metadata: Series UID → File Location)
    CBIS-DDSM/<Subject ID>/<study folder>/<series folder>/1-1.dcm ...

The CSVs hold one row per abnormality and paths of the form
``<Subject ID>/<StudyInstanceUID>/<SeriesInstanceUID>/000000.dcm``, which do not match the folders
a current download writes (``07-20-2016-DDSM-NA-74994/1.000000-full mammogram images-24515/1-1.dcm``).
Each path is resolved in turn: as written (older downloads), then through ``metadata.csv`` by the
series UID, then through a one-off scan of the DICOM headers (SeriesInstanceUID). Other traps
handled: trailing newlines and spaces in path cells; the density column spelled ``breast_density``
(mass CSVs) and ``breast density`` (calc CSVs); cropped-image and ROI-mask cells that point at each
other's file (the mask is told apart as the binary image the size of the full mammogram); masks
whose size differs from their image (resized, nearest, with a warning, when the aspect ratio
agrees; refused otherwise); several abnormalities of one image merged per class.

Labels: ``pathology`` MALIGNANT → malignant; BENIGN and BENIGN_WITHOUT_CALLBACK → benign. Every
abnormality has an ROI, so both class masks are annotated (all-false when none of that class).
Samples are images keyed ``<patient>_<LEFT|RIGHT>_<CC|MLO>``, mass and calcification rows of the
same image merged. Splits by patient: a patient in any official test CSV is ``test``; the other
patients are ``train``, except a fixed 10% (hash of the patient id) held out as ``val``.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from wsl_bench.data import DatasetError, Sample, SampleError
from wsl_bench.datasets._dicom import read_dicom_header, read_dicom_with_info
from wsl_bench.datasets._files import path_inside
from wsl_bench.datasets._preprocess import PreprocessConfig, preprocess
from wsl_bench.datasets._raw import IndexEntry, RawDataset, holdout_split, read_csv_rows
from wsl_bench.registry import DATASETS
from wsl_bench.saliency import CLASSES

log = logging.getLogger(__name__)

CSV_NAMES: dict[tuple[str, str], str] = {
    ("mass", "train"): "mass_case_description_train_set.csv",
    ("mass", "test"): "mass_case_description_test_set.csv",
    ("calc", "train"): "calc_case_description_train_set.csv",
    ("calc", "test"): "calc_case_description_test_set.csv",
}
REQUIRED_COLUMNS: tuple[str, ...] = (
    "patient_id",
    "left or right breast",
    "image view",
    "abnormality id",
    "pathology",
    "image file path",
    "cropped image file path",
    "ROI mask file path",
)
COLUMN_ALIASES: dict[str, tuple[str, ...]] = {
    "breast_density": ("breast density",),  # mass CSVs: breast_density; calc CSVs: breast density
    "abnormality type": (),
    "assessment": (),
}
PATHOLOGY: dict[str, str] = {"MALIGNANT": "malignant", "BENIGN": "benign", "BENIGN_WITHOUT_CALLBACK": "benign"}
ASPECT_TOLERANCE = 0.02
"""Relative aspect-ratio difference below which a mask of another size is resized to its image."""


def clean_path(cell: str) -> str:
    """A CSV path cell without the surrounding whitespace/newlines/quotes, with forward slashes."""
    return cell.strip().strip('"').strip().replace("\\", "/")


def _is_binary(values: np.ndarray) -> bool:
    return np.unique(values).size <= 2


@DATASETS.register("cbis-ddsm")
class CBISDDSMDataset(RawDataset):
    """CBIS-DDSM: full-field DICOMs, ROI masks, four description CSVs; patient-level splits.

    Args:
        root: download folder (CSVs, ``metadata.csv`` and the ``CBIS-DDSM`` tree, at the root or one
            level below).
        split: ``train``/``val``/``test`` (see the module doc).
        image_size: output ``(H, W)``, default 2944×1920.
        abnormality: ``"both"``, ``"mass"`` or ``"calc"``: which CSVs to read.
        val_fraction: share of training patients held out as ``val``.
    """

    name = "cbis-ddsm"
    description = "CBIS-DDSM: DICOM full-field mammograms with ROI masks (mass and calcification CSVs)"

    def __init__(
        self,
        root: str | None = None,
        split: str = "test",
        image_size: tuple[int, int] | None = None,
        abnormality: str = "both",
        val_fraction: float = 0.1,
        preprocess: PreprocessConfig | None = None,
    ) -> None:
        super().__init__(root=root, split=split, image_size=image_size, preprocess=preprocess)
        if abnormality not in ("both", "mass", "calc"):
            raise DatasetError(f"abnormality must be 'both', 'mass' or 'calc', got {abnormality!r}")
        self.abnormality = abnormality
        self.val_fraction = val_fraction
        self._series_folders: dict[str, Path] | None = None
        self._scanned: dict[str, list[Path]] | None = None

    # -- files ------------------------------------------------------------------------------------
    def _find(self, name: str) -> Path | None:
        for folder in (self.root_path, *sorted(p for p in self.root_path.iterdir() if p.is_dir())):
            if (folder / name).is_file():
                return folder / name
        return None

    def csv_files(self) -> dict[tuple[str, str], Path]:
        kinds = ("mass", "calc") if self.abnormality == "both" else (self.abnormality,)
        found = {}
        for (kind, split), name in CSV_NAMES.items():
            if kind in kinds:
                path = self._find(name)
                if path is not None:
                    found[(kind, split)] = path
        if not found:
            wanted = ", ".join(n for (k, _), n in CSV_NAMES.items() if k in kinds)
            raise DatasetError(f"{self.root_path}: no CBIS-DDSM description CSV found (expected {wanted})")
        return found

    def series_folders(self) -> dict[str, Path]:
        """Series UID → folder, from the download's ``metadata.csv`` (empty without one)."""
        if self._series_folders is None:
            self._series_folders = {}
            meta = self._find("metadata.csv")
            if meta is not None:
                for row in read_csv_rows(meta, ("Series UID", "File Location")):
                    location = clean_path(row["File Location"])
                    location = location[2:] if location.startswith("./") else location
                    folder = path_inside(meta.parent, location)  # '..' / absolute locations may not leave it
                    if folder is not None:
                        self._series_folders[row["Series UID"].strip()] = Path(folder)
        return self._series_folders

    def scanned_series(self) -> dict[str, list[Path]]:
        """Series UID → DICOM files, from reading every DICOM header under the root (built once)."""
        if self._scanned is None:
            log.warning(
                "%s: resolving CBIS-DDSM paths by scanning DICOM headers (no metadata.csv match)", self.root_path
            )
            self._scanned = defaultdict(list)
            for path in sorted(self.root_path.rglob("*.dcm")):
                try:
                    self._scanned[read_dicom_header(path).series_uid].append(path)
                except SampleError as exc:
                    log.warning("skipping unreadable DICOM while scanning: %s", exc)
        return self._scanned

    def resolve(self, cell: str, csv_path: Path) -> list[Path]:
        """DICOM files a CSV path cell refers to (the file itself, or every file of its series)."""
        rel = clean_path(cell)
        if not rel:
            return []
        for base in (self.root_path, self.root_path / "CBIS-DDSM", csv_path.parent, csv_path.parent / "CBIS-DDSM"):
            # a cell is a path below the folder: '..' and absolute paths are never followed out of it
            candidate = path_inside(base, rel)
            if candidate is not None and Path(candidate).is_file():
                return [Path(candidate)]
        parts = rel.split("/")
        series = parts[-2] if len(parts) >= 2 else ""
        folder = self.series_folders().get(series)
        if folder is not None and folder.is_dir():
            files = sorted(folder.glob("*.dcm"))
            if files:
                return files
        return sorted(self.scanned_series().get(series, []))

    # -- index ------------------------------------------------------------------------------------
    def index_files(self) -> list[Path]:
        meta = self._find("metadata.csv")
        return [*sorted(self.csv_files().values()), *([meta] if meta is not None else [])]

    def build_index(self) -> dict[str, IndexEntry]:
        rows_by_id: dict[str, list[dict[str, Any]]] = defaultdict(list)
        test_patients: set[str] = set()
        problems: dict[str, list[str]] = defaultdict(list)
        for (kind, official), csv_path in sorted(self.csv_files().items()):
            rows = read_csv_rows(csv_path, REQUIRED_COLUMNS, aliases=COLUMN_ALIASES)
            for line, row in enumerate(rows, start=2):
                patient = row["patient_id"].strip()
                side = row["left or right breast"].strip().upper()
                view = row["image view"].strip().upper()
                sid = f"{patient}_{side}_{view}"
                where = f"{csv_path} line {line}"
                if side not in ("LEFT", "RIGHT") or view not in ("CC", "MLO"):
                    problems[sid].append(f"{where}: laterality {side!r} / view {view!r} outside the known values")
                pathology = row["pathology"].strip().upper()
                if pathology not in PATHOLOGY:
                    problems[sid].append(
                        f"{where}: pathology {row['pathology']!r} is outside the known values {', '.join(PATHOLOGY)}"
                    )
                rows_by_id[sid].append({**row, "_kind": kind, "_csv": str(csv_path), "_line": line, "_where": where})
                if official == "test":
                    test_patients.add(patient)
        index = {}
        for sid, rows in rows_by_id.items():
            patient = rows[0]["patient_id"].strip()
            split = "test" if patient in test_patients else holdout_split(patient, self.val_fraction)
            index[sid] = IndexEntry(split=split, patient=patient, data={"rows": rows}, problems=problems.get(sid, []))
        return index

    # -- loading ----------------------------------------------------------------------------------
    def load_entry(self, sample_id: str, entry: IndexEntry) -> Sample:
        rows = entry.data["rows"]
        first = rows[0]
        files = self.resolve(first["image file path"], Path(first["_csv"]))
        if not files:
            raise SampleError(
                f"{first['_where']}: full mammogram {clean_path(first['image file path'])!r} not found under "
                f"{self.root_path} (neither as written, nor through metadata.csv, nor by series UID)",
                sample_id,
            )
        image_path = files[0]
        image, info = read_dicom_with_info(image_path)
        shape = image.shape
        masks = {c: np.zeros(shape, dtype=bool) for c in CLASSES}
        labels = {c: 0 for c in CLASSES}
        quirks: list[str] = []
        sources = [str(image_path)]
        abnormalities = []
        for row in rows:
            cls = PATHOLOGY[row["pathology"].strip().upper()]
            labels[cls] = 1
            mask, mask_path, notes = self._roi_mask(row, shape, sample_id)
            masks[cls] |= mask
            sources.append(str(mask_path))
            quirks += notes
            abnormalities.append(
                {
                    "type": row["_kind"],
                    "id": row["abnormality id"].strip(),
                    "pathology": row["pathology"].strip().upper(),
                    "assessment": row.get("assessment", "").strip(),
                }
            )
        pre = preprocess(image, masks, config=self.config, source=str(image_path))
        meta = {
            "source": str(image_path),
            "sources": sources,
            "patient": entry.patient,
            "laterality": "L" if first["left or right breast"].strip().upper() == "LEFT" else "R",
            "view": first["image view"].strip().upper(),
            "density": first.get("breast_density", "").strip(),
            "abnormalities": abnormalities,
            "quirks": quirks,
            "mask_kind": "pixel",
            "label_source": "pathology",
            "dicom_inverted": info.inverted,
        }
        return self.make_sample(sample_id, pre, labels, meta)

    def _roi_mask(
        self, row: dict[str, Any], shape: tuple[int, int], sample_id: str
    ) -> tuple[np.ndarray, Path, list[str]]:
        """The binary ROI mask of one abnormality row, in the full image's frame."""
        csv_path = Path(row["_csv"])
        notes: list[str] = []
        mask_files = self.resolve(row["ROI mask file path"], csv_path)
        crop_files = self.resolve(row["cropped image file path"], csv_path)
        candidates = list(dict.fromkeys(mask_files + crop_files))
        if not candidates:
            raise SampleError(
                f"{row['_where']}: ROI mask {clean_path(row['ROI mask file path'])!r} not found under {self.root_path}",
                sample_id,
            )
        best: tuple[float, Path, np.ndarray] | None = None
        for path in candidates:
            values, _ = read_dicom_with_info(path, apply_voi=False)
            if not _is_binary(values):
                continue  # the cropped lesion image, not the mask
            aspect_gap = abs(values.shape[0] / values.shape[1] - shape[0] / shape[1]) / (shape[0] / shape[1])
            size_gap = abs(values.shape[0] - shape[0]) + abs(values.shape[1] - shape[1])
            score = aspect_gap * 1e6 + size_gap
            if best is None or score < best[0]:
                best = (score, path, values > values.min())  # all-false for a constant (empty) mask
        if best is None:
            raise SampleError(
                f"{row['_where']}: no binary ROI mask among {', '.join(str(p) for p in candidates)} "
                "(the files found are cropped lesion images)",
                sample_id,
            )
        _, path, mask = best
        if path not in mask_files:
            notes.append(f"{row['_where']}: ROI mask and cropped image columns swapped; mask taken from {path.name}")
            log.warning(notes[-1])
        if mask.shape != shape:
            aspect_gap = abs(mask.shape[0] / mask.shape[1] - shape[0] / shape[1]) / (shape[0] / shape[1])
            if aspect_gap > ASPECT_TOLERANCE:
                raise SampleError(
                    f"{path}: ROI mask is {mask.shape[0]}×{mask.shape[1]} but the image is {shape[0]}×{shape[1]} "
                    f"and the aspect ratios differ by {aspect_gap:.1%}: refusing to guess the alignment",
                    sample_id,
                    str(path),
                )
            rows_idx = np.minimum(
                ((np.arange(shape[0]) + 0.5) * mask.shape[0] / shape[0]).astype(np.int64), mask.shape[0] - 1
            )
            cols_idx = np.minimum(
                ((np.arange(shape[1]) + 0.5) * mask.shape[1] / shape[1]).astype(np.int64), mask.shape[1] - 1
            )
            mask = mask[rows_idx[:, None], cols_idx[None, :]]
            notes.append(f"{path}: ROI mask of another size resized to {shape[0]}×{shape[1]} (same aspect ratio)")
            log.warning(notes[-1])
        if not mask.any():
            notes.append(f"{path}: ROI mask is empty")
            log.warning(notes[-1])
        return mask, path, notes
