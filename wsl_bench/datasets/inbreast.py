"""INbreast (dataset ``inbreast``): DICOMs, the BI-RADS spreadsheet and OsiriX XML ROIs.

Layout under the root (as distributed)::

    AllDICOMs/<file id>_<patient hash>_MG_<L|R>_<CC|ML>_ANON.dcm
    AllXML/<file id>.xml          OsiriX ROI export (an XML property list), annotated images only
    INbreast.csv                  semicolon-separated: Laterality;View;File Name;ACR;Bi-Rads;...
    (or INbreast.xls, read with pandas when xlrd is installed)

Quirks handled: the file name spells the MLO view ``ML`` while the spreadsheet says ``MLO``; the
``File Name`` column holds only the numeric file id (``22678622``, ``22678622.0`` after a
spreadsheet round trip) and is matched to the DICOM by prefix; the patient is identified by the
hash in the file name (the spreadsheet's patient columns are anonymised); BI-RADS values are
``1 2 3 4a 4b 4c 5 6`` in any case; blank trailing rows are skipped. ROIs: each ROI's ``Point_px``
list (``"(x, y)"`` strings) is a polygon (filled) when it has three or more points, and one or
two points (single calcifications) are drawn as disks of ``point_radius`` pixels (joined by a
stroke for two points). An ROI with no points is an error naming the XML file.

Labels are a **BI-RADS proxy** (INbreast has no per-lesion pathology in the XML): BI-RADS 1 →
neither class; 2–3 → benign; 4a/4b/4c/5/6 → malignant; every ROI of an image belongs to its
proxy class (the other class is annotated empty). An image without an XML has masks None (not
annotated) unless it is BI-RADS 1 (both masks empty). There is no official split: patients are
split 70/10/20 by a hash of the patient hash (``wsl_bench.datasets._raw.hash_split``).
"""

from __future__ import annotations

import logging
import math
import plistlib
import re
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from wsl_bench.data import DatasetError, Sample, SampleError
from wsl_bench.datasets._dicom import read_dicom_with_info
from wsl_bench.datasets._preprocess import PreprocessConfig, preprocess
from wsl_bench.datasets._raw import DEFAULT_SPLIT_FRACTIONS, IndexEntry, RawDataset, hash_split, read_csv_rows
from wsl_bench.registry import DATASETS
from wsl_bench.regular_files import open_regular
from wsl_bench.saliency import CLASSES

log = logging.getLogger(__name__)

FILE_PATTERN = re.compile(r"^(\d+)_([0-9A-Za-z]+)_MG_([LR])_(CC|MLO|ML)_ANON\.dcm$", re.IGNORECASE)
BIRADS_CLASS: dict[str, str | None] = {
    "1": None,
    "2": "benign",
    "3": "benign",
    "4": "malignant",
    "4A": "malignant",
    "4B": "malignant",
    "4C": "malignant",
    "5": "malignant",
    "6": "malignant",
}
CSV_ALIASES: dict[str, tuple[str, ...]] = {
    "File Name": ("FileName", "File name"),
    "Bi-Rads": ("Bi-RADS", "BIRADS", "BI-RADS"),
    "Laterality": (),
    "View": (),
    "ACR": (),
}
_NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")


def parse_point(text: str, where: str) -> tuple[float, float]:
    """``"(x, y)"`` or ``"(x, y, z)"`` → ``(x, y)``, finite numbers (``1e400`` reads as infinity)."""
    numbers = _NUMBER.findall(str(text))
    if len(numbers) < 2:
        raise SampleError(f"{where}: malformed point {text!r}", path=where.split(":")[0])
    x, y = float(numbers[0]), float(numbers[1])
    if not (math.isfinite(x) and math.isfinite(y)):
        raise SampleError(f"{where}: point {text!r} is not a finite position", path=where.split(":")[0])
    return x, y


POINT_MARGIN = 0.01
"""How far outside the image (a fraction of its size) an ROI point may lie: an outline traced up to
the image's edge can end a pixel beyond it; a point further out is not this image's annotation."""


def check_points_inside(rois: list[dict[str, Any]], shape: tuple[int, int], xml_path: Path) -> None:
    """Refuse ROIs with a point outside the ``H×W`` image (beyond :data:`POINT_MARGIN`): drawn, such
    an outline would fill a large part of the image (a point at 1e300 filled 47 % of it).

    Raises:
        SampleError: naming the file, the ROI and the point.
    """
    h, w = shape
    mx, my = POINT_MARGIN * w, POINT_MARGIN * h
    for number, roi in enumerate(rois):
        for k, (x, y) in enumerate(roi["points"]):
            if not (-mx <= x <= w + mx and -my <= y <= h + my):
                raise SampleError(f"{xml_path}: ROI #{number} ({roi['name']}) point #{k} ({x:g}, {y:g}) lies outside "
                                  f"the {h}×{w} image", path=str(xml_path))


def read_osirix_rois(path: Path) -> list[dict[str, Any]]:
    """ROIs of an OsiriX XML export: ``[{"name": str, "points": [(x, y), ...]}, ...]``.

    Raises:
        SampleError: unreadable/malformed XML, or an ROI with no points (naming the file and the ROI).
    """
    try:
        with open_regular(path) as fh:
            plist = plistlib.load(fh)
    except FileNotFoundError:
        raise SampleError(f"{path}: file not found", path=str(path)) from None
    except Exception as exc:  # ExpatError, InvalidFileException, ValueError
        raise SampleError(f"{path}: malformed OsiriX XML ({type(exc).__name__}: {exc})", path=str(path)) from exc
    images = plist.get("Images") if isinstance(plist, dict) else None
    if not isinstance(images, list):
        raise SampleError(f"{path}: no 'Images' array in the OsiriX XML", path=str(path))
    rois = []
    for image in images:
        for number, roi in enumerate((image or {}).get("ROIs") or []):
            name = str(roi.get("Name", "?"))
            points = roi.get("Point_px") or []
            if not points:
                raise SampleError(f"{path}: ROI #{number} ({name}) has no points", path=str(path))
            rois.append({"name": name, "points": [parse_point(p, f"{path}: ROI #{number} ({name})") for p in points]})
    return rois


def draw_rois(rois: list[dict[str, Any]], shape: tuple[int, int], point_radius: float) -> np.ndarray:
    """Fill ROIs into an ``H×W`` bool mask: polygons filled, 1–2 point ROIs as disks / a thick stroke."""
    canvas = Image.new("L", (shape[1], shape[0]), 0)
    draw = ImageDraw.Draw(canvas)
    r = point_radius
    for roi in rois:
        pts = roi["points"]
        if len(pts) >= 3:
            draw.polygon(pts, fill=255, outline=255)
        else:
            for x, y in pts:
                draw.ellipse((x - r, y - r, x + r, y + r), fill=255)
            if len(pts) == 2:
                draw.line(pts, fill=255, width=max(1, int(round(2 * r))))
    return np.asarray(canvas) > 0


def _normalise_birads(value: Any) -> str:
    text = str(value).strip().upper().replace("BI-RADS", "").strip()
    if re.fullmatch(r"\d+\.0", text):
        text = text[:-2]
    return text


@DATASETS.register("inbreast")
class INbreastDataset(RawDataset):
    """INbreast: DICOMs, BI-RADS spreadsheet (BI-RADS proxy labels), OsiriX XML ROIs.

    Args:
        root: the INbreast release folder.
        split: ``train``/``val``/``test`` of the deterministic patient split.
        image_size: output ``(H, W)``, default 2944×1920.
        split_fractions: train/val/test fractions of patients.
        point_radius: radius in source pixels of the disks drawn for one/two-point ROIs (70 µm pixels:
            6 px ≈ 0.4 mm).
        roi_names: only ROIs with these names (case-insensitive, e.g. ``("Mass",)``); None keeps all.
    """

    name = "inbreast"
    description = "INbreast: DICOM mammograms with OsiriX XML ROIs; BI-RADS proxy labels"

    def __init__(
        self,
        root: str | None = None,
        split: str = "test",
        image_size: tuple[int, int] | None = None,
        split_fractions: tuple[float, float, float] = DEFAULT_SPLIT_FRACTIONS,
        point_radius: float = 6.0,
        roi_names: tuple[str, ...] | None = None,
        preprocess: PreprocessConfig | None = None,
    ) -> None:
        super().__init__(root=root, split=split, image_size=image_size, preprocess=preprocess)
        self.split_fractions = tuple(split_fractions)
        self.point_radius = float(point_radius)
        self.roi_names = None if roi_names is None else {n.lower() for n in roi_names}
        self.dicom_dir = self.root_path / "AllDICOMs" if (self.root_path / "AllDICOMs").is_dir() else self.root_path
        self.xml_dir = self.root_path / "AllXML" if (self.root_path / "AllXML").is_dir() else self.root_path

    # -- spreadsheet ------------------------------------------------------------------------------
    def spreadsheet(self) -> tuple[Path, list[dict[str, str]]]:
        required = ("File Name", "Bi-Rads", "Laterality", "View")
        csv_path = self.root_path / "INbreast.csv"
        if csv_path.is_file():
            return csv_path, read_csv_rows(csv_path, required, delimiter=";", aliases=CSV_ALIASES)
        xls_path = self.root_path / "INbreast.xls"
        if xls_path.is_file():
            return xls_path, self._read_xls(xls_path, required)
        raise DatasetError(f"{self.root_path}: no INbreast.csv (semicolon-separated) or INbreast.xls found")

    def _read_xls(self, path: Path, required: tuple[str, ...]) -> list[dict[str, str]]:
        import pandas as pd

        try:
            frame = pd.read_excel(path, dtype=str)
        except ImportError as exc:
            raise DatasetError(
                f"{path}: reading .xls needs the 'xlrd' package (pip install xlrd), or save the sheet as "
                f"INbreast.csv with ';' separators ({exc})"
            ) from exc
        except Exception as exc:
            raise DatasetError(f"{path}: unreadable spreadsheet ({type(exc).__name__}: {exc})") from exc
        columns = {str(c).strip().lower(): str(c) for c in frame.columns}
        rows = []
        mapping = {}
        for canonical in required:
            for spelling in (canonical, *CSV_ALIASES.get(canonical, ())):
                if spelling.lower() in columns:
                    mapping[canonical] = columns[spelling.lower()]
                    break
        missing = [c for c in required if c not in mapping]
        if missing:
            raise DatasetError(f"{path}: missing column(s) {', '.join(repr(m) for m in missing)}")
        for _, rec in frame.iterrows():
            row = {k: ("" if pd.isna(rec[v]) else str(rec[v])) for k, v in mapping.items()}
            if any(v.strip() for v in row.values()):
                rows.append(row)
        return rows

    # -- index ------------------------------------------------------------------------------------
    def index_files(self) -> list[Path]:
        return [p for p in (self.root_path / "INbreast.csv", self.root_path / "INbreast.xls") if p.is_file()]

    def build_index(self) -> dict[str, IndexEntry]:
        files: dict[str, tuple[Path, re.Match[str]]] = {}
        for path in sorted(self.dicom_dir.glob("*.dcm")):
            match = FILE_PATTERN.match(path.name)
            if match:
                files[match.group(1)] = (path, match)
            else:
                log.warning("%s: not an INbreast file name (<id>_<hash>_MG_<L|R>_<CC|ML>_ANON.dcm); ignored", path)
        sheet, rows = self.spreadsheet()
        index: dict[str, IndexEntry] = {}
        for line, row in enumerate(rows, start=2):
            file_id = row["File Name"].strip()
            if re.fullmatch(r"\d+\.0", file_id):
                file_id = file_id[:-2]  # a number that went through a spreadsheet
            where = f"{sheet} line {line}"
            if not file_id:
                continue
            problems = []
            birads = _normalise_birads(row["Bi-Rads"])
            if birads not in BIRADS_CLASS:
                problems.append(f"{where}: Bi-Rads {row['Bi-Rads']!r} is outside the known values 1, 2, 3, 4a-4c, 5, 6")
            found = files.get(file_id)
            if found is None:
                problems.append(
                    f"{where}: File Name {file_id} has no DICOM {file_id}_<hash>_MG_<L|R>_<CC|ML>_ANON.dcm "
                    f"in {self.dicom_dir}"
                )
                patient = file_id
                path, lat, view = None, row["Laterality"].strip().upper(), row["View"].strip().upper()
            else:
                path, match = found
                patient, lat, view = match.group(2), match.group(3).upper(), match.group(4).upper()
                view = "MLO" if view == "ML" else view  # file names say ML, the spreadsheet MLO
                sheet_view = row["View"].strip().upper()
                sheet_view = "MLO" if sheet_view in ("ML", "MLO") else sheet_view
                if row["Laterality"].strip().upper() != lat or sheet_view != view:
                    problems.append(
                        f"{where}: spreadsheet says {row['Laterality']}/{row['View']} but {path.name} is {lat}/{view}"
                    )
            if file_id in index:
                problems.append(f"{where}: File Name {file_id} is listed twice")
            index[file_id] = IndexEntry(
                split=hash_split(patient, self.split_fractions),
                patient=patient,
                data={
                    "path": path,
                    "birads": birads,
                    "laterality": lat,
                    "view": view,
                    "acr": row.get("ACR", "").strip(),
                },
                problems=problems,
            )
        listed = set(index)
        for file_id, (path, _) in files.items():
            if file_id not in listed:
                log.warning("%s: not listed in %s; ignored", path, sheet)
        return index

    def source_files(self, sample_id: str, entry: IndexEntry) -> list[Path]:
        if entry.problems or entry.data["path"] is None:
            return []
        return [entry.data["path"], self.xml_dir / f"{sample_id}.xml"]

    # -- loading ----------------------------------------------------------------------------------
    def load_entry(self, sample_id: str, entry: IndexEntry) -> Sample:
        d = entry.data
        path: Path = d["path"]
        image, info = read_dicom_with_info(path)
        cls = BIRADS_CLASS[d["birads"]]
        labels = {c: int(c == cls) for c in CLASSES}
        xml_path = self.xml_dir / f"{sample_id}.xml"
        sources = [str(path)]
        rois: list[dict[str, Any]] = []
        masks: dict[str, np.ndarray | None]
        notes = []
        if xml_path.is_file():
            rois = read_osirix_rois(xml_path)
            if self.roi_names is not None:
                rois = [r for r in rois if r["name"].lower() in self.roi_names]
            check_points_inside(rois, image.shape, xml_path)
            sources.append(str(xml_path))
            masks = {c: np.zeros(image.shape, dtype=bool) for c in CLASSES}
            if cls is not None:
                masks[cls] = draw_rois(rois, image.shape, self.point_radius)
            elif rois:
                notes.append(f"{xml_path}: {len(rois)} ROI(s) on a BI-RADS 1 image: not assigned to a class")
                log.warning(notes[-1])
        elif cls is None:
            masks = {c: np.zeros(image.shape, dtype=bool) for c in CLASSES}
        else:
            masks = {c: None for c in CLASSES}
        pre = preprocess(image, masks, config=self.config, source=str(path))
        meta = {
            "source": str(path),
            "sources": sources,
            "patient": entry.patient,
            "laterality": d["laterality"],
            "view": d["view"],
            "birads": d["birads"],
            "density": d["acr"],
            "roi_names": sorted({r["name"] for r in rois}),
            "mask_kind": "pixel",
            "label_source": "birads-proxy",
            "quirks": notes,
            "dicom_inverted": info.inverted,
        }
        return self.make_sample(sample_id, pre, labels, meta)
