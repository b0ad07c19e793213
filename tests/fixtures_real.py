"""Writers of small mammography files in the real published formats, for the loader tests.

A *phantom* is a small synthetic mammogram: background 0, a half-elliptic breast of smooth
tissue against the chest wall side, bright disk lesions, and optionally a bright label marker
detached from the breast (as scanners burn into films). Lesion intensity is above every tissue
value, so a test can find the lesions in a preprocessed image by thresholding and compare them
with the masks the loader produced — an alignment check that does not depend on the geometry code.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

TISSUE_MAX = 2000
LESION_VALUE = 3600
MARKER_VALUE = 4095


@dataclass
class Phantom:
    """A phantom image and its lesions.

    Attributes:
        image: ``H×W`` uint16.
        lesions: per lesion, an ``H×W`` bool mask.
        boxes: per lesion, ``(x0, y0, x1, y1)`` pixel-edge box.
    """

    image: np.ndarray
    lesions: list[np.ndarray] = field(default_factory=list)
    boxes: list[tuple[float, float, float, float]] = field(default_factory=list)


def phantom(
    shape: tuple[int, int] = (160, 120),
    chest_wall: str = "left",
    lesions: tuple[tuple[float, float, float], ...] = ((0.5, 0.35, 0.07),),
    marker: bool = True,
    seed: int = 0,
    square: bool = False,
) -> Phantom:
    """A synthetic mammogram.

    Args:
        shape: ``(H, W)``.
        chest_wall: ``"left"`` or ``"right"``: the side the breast is attached to.
        lesions: ``(cy, cx, r)`` as fractions of H, of W *measured from the chest wall*, and of H.
        marker: add a bright label block in the corner away from the breast.
        square: draw lesions as squares (exactly their box) instead of disks.
    """
    h, w = shape
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w].astype(np.float64)
    dist = xx if chest_wall == "left" else (w - 1 - xx)  # distance from the chest wall
    breast = (dist / (0.78 * w)) ** 2 + ((yy - h / 2) / (0.44 * h)) ** 2 < 1
    tissue = 900 + 600 * np.exp(-((dist / (0.5 * w)) ** 2)) + rng.normal(0, 40, size=shape)
    image = np.where(breast, np.clip(tissue, 500, TISSUE_MAX), 0)
    out = Phantom(image=np.zeros(shape, np.uint16))
    for cy, cx, r in lesions:
        py, px, pr = cy * h, cx * w, r * h
        px = px if chest_wall == "left" else w - px
        if square:
            mask = (np.abs(yy + 0.5 - py) < pr) & (np.abs(xx + 0.5 - px) < pr)
        else:
            mask = (yy + 0.5 - py) ** 2 + (xx + 0.5 - px) ** 2 < pr**2
        image[mask] = LESION_VALUE
        out.lesions.append(mask)
        rows, cols = np.nonzero(mask)
        out.boxes.append((float(cols.min()), float(rows.min()), float(cols.max() + 1), float(rows.max() + 1)))
    if marker:
        mh, mw = max(2, h // 30), max(3, w // 12)
        if chest_wall == "left":
            image[1 : 1 + mh, w - 1 - mw : w - 1] = MARKER_VALUE
        else:
            image[1 : 1 + mh, 1 : 1 + mw] = MARKER_VALUE
    out.image = image.astype(np.uint16)
    return out


def bright_region(image: np.ndarray) -> np.ndarray:
    """Lesion pixels of a preprocessed ``1×H×W`` or ``H×W`` image, found from intensities alone.

    Standardisation is affine and the background (0) is the image minimum, so a level 78% of the
    way from the minimum to the maximum separates lesions (3600) from tissue (≤ 2000) whether the
    maximum is a lesion or a 4095 label marker.
    """
    img = np.asarray(image, dtype=np.float64).reshape(image.shape[-2:])
    lo, hi = img.min(), img.max()
    return img > lo + 0.78 * (hi - lo)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    union = (a | b).sum()
    return float((a & b).sum() / union) if union else 1.0


def chest_wall_left(image: np.ndarray) -> bool:
    """Whether the breast in a (preprocessed) image has more tissue in its left half."""
    img = np.asarray(image, dtype=np.float64).reshape(image.shape[-2:])
    fg = img > np.percentile(img, 5) + 1e-3
    w = img.shape[1]
    return fg[:, : w // 2].sum() > fg[:, w - w // 2 :].sum()


# -- DICOM ---------------------------------------------------------------------------------------
_UID_ROOT = "1.2.826.0.1.3680043.8.498."


def uid(n: int | str) -> str:
    """A syntactically valid DICOM UID under pydicom's example root."""
    return f"{_UID_ROOT}{n}"


def write_dicom(
    path: Path,
    pixels: np.ndarray,
    photometric: str = "MONOCHROME2",
    bits_stored: int = 12,
    laterality: str = "L",
    view: str = "CC",
    patient_id: str = "P0",
    study_uid: str | None = None,
    series_uid: str | None = None,
    sop_uid: str | None = None,
    window: tuple[float, float] | None = None,
    voi_lut: tuple[int, np.ndarray] | None = None,
    rescale: tuple[float, float] | None = None,
    transfer_syntax: str | None = None,
    preamble: bool = True,
) -> Path:
    """Write a digital-mammography DICOM file with real tags.

    Args:
        pixels: ``H×W`` uint16 (uint8 for masks).
        window: ``(center, width)`` VOI window.
        voi_lut: ``(first_mapped, lut_data uint16)`` for a VOILUTSequence.
        rescale: ``(slope, intercept)`` modality LUT.
        transfer_syntax: a UID; compressed ones are encoded with pydicom's native encoders (RLE).
    """
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, RLELossless

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.asarray(pixels)
    sop_uid = sop_uid or uid(abs(hash(str(path))) % 10**12)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.2"  # Digital Mammography X-Ray Image Storage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = uid(1)
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = study_uid or uid(2)
    ds.SeriesInstanceUID = series_uid or uid(3)
    ds.Modality = "MG"
    ds.PatientID = patient_id
    ds.StudyDate = datetime.date(2020, 1, 1).strftime("%Y%m%d")
    ds.ImageLaterality = laterality
    ds.ViewPosition = view
    ds.ImagerPixelSpacing = [0.07, 0.07]
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 8 if pixels.dtype == np.uint8 else 16
    ds.BitsStored = 8 if pixels.dtype == np.uint8 else bits_stored
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 0
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    if voi_lut is not None:
        first, data = voi_lut
        item = pydicom.Dataset()
        item.LUTDescriptor = [len(data), first, 16]
        item.LUTData = np.asarray(data, dtype="<u2").tobytes()
        ds.VOILUTSequence = [item]
    if rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = rescale
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    if transfer_syntax == RLELossless:
        ds.compress(RLELossless)
    elif transfer_syntax is not None and transfer_syntax != ExplicitVRLittleEndian:
        # A compressed syntax pydicom cannot encode: store a fake encapsulated frame (decoding must fail).
        from pydicom.encaps import encapsulate

        ds.file_meta.TransferSyntaxUID = transfer_syntax
        ds.PixelData = encapsulate([b"\xff\xd8\xff\xc3" + b"\0" * 64 + b"\xff\xd9"])
        ds["PixelData"].VR = "OB"
    ds.save_as(str(path), enforce_file_format=True)
    if not preamble:
        path.write_bytes(path.read_bytes()[132:])
    return path


def write_png16(path: Path, pixels: np.ndarray) -> Path:
    from wsl_bench.datasets._imageio import write_png16 as _write

    _write(path, np.asarray(pixels, dtype=np.uint16))
    return Path(path)


def write_mask(path: Path, mask: np.ndarray) -> Path:
    from wsl_bench.datasets._imageio import write_mask_png

    write_mask_png(path, mask)
    return Path(path)


def truncate(path: Path, keep: float = 0.5) -> Path:
    """Cut a file to ``keep`` of its length (an interrupted copy)."""
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: int(len(data) * keep)])
    return Path(path)


# -- OsiriX XML (INbreast) -----------------------------------------------------------------------
def osirix_xml(rois: list[tuple[str, list[tuple[float, float]]]], image_shape: tuple[int, int]) -> str:
    """An OsiriX ROI export (XML property list) as INbreast ships it."""

    def roi(name: str, pts: list[tuple[float, float]], index: int) -> str:
        px = "".join(f"<string>({x:.6f}, {y:.6f})</string>" for x, y in pts)
        mm = "".join(f"<string>({x * 0.07:.6f}, {y * 0.07:.6f}, 0.000000)</string>" for x, y in pts)
        cx = np.mean([p[0] for p in pts]) if pts else 0.0
        cy = np.mean([p[1] for p in pts]) if pts else 0.0
        return (
            "<dict><key>Area</key><real>0</real>"
            f"<key>Center</key><string>({cx:.6f}, {cy:.6f}, 0.000000)</string>"
            "<key>Dev</key><real>0</real>"
            f"<key>IndexInImage</key><integer>{index}</integer>"
            "<key>Max</key><real>0</real><key>Mean</key><real>0</real><key>Min</key><real>0</real>"
            f"<key>Name</key><string>{name}</string>"
            f"<key>NumberOfPoints</key><integer>{len(pts)}</integer>"
            f"<key>Point_mm</key><array>{mm}</array>"
            f"<key>Point_px</key><array>{px}</array>"
            "<key>Total</key><real>0</real>"
            f"<key>Type</key><integer>{15 if len(pts) > 2 else 19}</integer></dict>"
        )

    body = "".join(roi(n, p, i) for i, (n, p) in enumerate(rois))
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<!DOCTYPE plist PUBLIC "-//Apple Computer//DTD PLIST 1.0//EN" '
        '"http://www.apple.com/DTDs/PropertyList-1.0.dtd">\n'
        '<plist version="1.0">\n<dict>\n<key>Images</key>\n<array>\n<dict>'
        f"<key>ImageHeight</key><integer>{image_shape[0]}</integer>"
        "<key>ImageIndex</key><integer>0</integer>"
        f"<key>ImageWidth</key><integer>{image_shape[1]}</integer>"
        f"<key>NumberOfROIs</key><integer>{len(rois)}</integer>"
        f"<key>ROIs</key><array>{body}</array></dict>\n</array>\n</dict>\n</plist>\n"
    )


def polygon_of(mask: np.ndarray, n: int = 24) -> list[tuple[float, float]]:
    """A polygon tracing a disk-like mask (its centroid and equivalent radius), ``n`` vertices."""
    rows, cols = np.nonzero(mask)
    cy, cx = rows.mean(), cols.mean()
    r = np.sqrt(mask.sum() / np.pi)
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return [(float(cx + r * np.cos(a)), float(cy + r * np.sin(a))) for a in t]


# -- NYU exam-list layout --------------------------------------------------------------------------
NYU_VIEWS = ("L-CC", "R-CC", "L-MLO", "R-MLO")


def make_nyu(
    root: Path,
    n_exams: int = 2,
    shape: tuple[int, int] = (110, 80),
    frame: tuple[int, int] = (96, 64),
    horizontal_flip: str = "NO",
    numpy_centers: bool = False,
    splits: tuple[str, ...] | None = None,
) -> dict[str, dict]:
    """Write the published GMIC/GLAM sample layout: ``data.pkl``, ``cropped_images/``, ``segmentation/``.

    Exam ``e`` has a lesion in one breast: benign on the right for even ``e``, malignant on the
    left for odd ``e``. Images are stored the way the exam's ``horizontal_flip`` implies ('NO': left
    views face right, right views face left), with 12-bit values in 16-bit PNGs. ``best_center`` is
    at mid-height in the flipped frame, so the model-frame window starts at row
    ``(H - frame_h) // 2 + ...`` computed here by hand; segmentations are cut from that window.

    Returns:
        stem → ``{"labels": {...}, "lesion_class": str | None, "split": str}``.
    """
    import pickle

    root = Path(root)
    expected: dict[str, dict] = {}
    exams = []
    h, w = shape
    fh, fw = frame
    for e in range(n_exams):
        lesion_side, cls = ("R", "benign") if e % 2 == 0 else ("L", "malignant")
        exam: dict = {"horizontal_flip": horizontal_flip, "best_center": {}, "window_location": {}}
        exam["cancer_label"] = {
            "benign": int(cls == "benign"),
            "malignant": int(cls == "malignant"),
            "unknown": 0,
            "left_benign": 0,
            "right_benign": int(lesion_side == "R" and cls == "benign"),
            "left_malignant": int(lesion_side == "L" and cls == "malignant"),
            "right_malignant": 0,
        }
        if splits is not None:
            exam["split"] = splits[e]
        for view in NYU_VIEWS:
            stem = f"{e}_{view}"
            exam[view] = [stem]
            right = view.startswith("R")
            # 'NO': stored as acquired (right views face left: chest wall on the right)
            wall_right = right if horizontal_flip == "NO" else not right
            has_lesion = view[0] == lesion_side
            ph = phantom(
                shape,
                chest_wall="right" if wall_right else "left",
                lesions=((0.5, 0.3, 0.07),) if has_lesion else (),
                marker=False,
                seed=e * 10 + len(stem),
            )
            write_png16(root / "cropped_images" / f"{stem}.png", ph.image)
            cy, cx = h // 2, fw // 2
            center = (np.int64(cy), np.float64(cx)) if numpy_centers else (float(cy), float(cx))
            exam["best_center"][view] = [center]
            exam["window_location"][view] = [(0, h, 0, w)]
            top = cy - fh // 2  # window centred on best_center, inside the image (h >= fh here)
            for c in ("benign", "malignant"):
                exam[f"{view}_{c}_seg"] = [f"{stem}_{c}"]
            if has_lesion:
                lesion = ph.lesions[0][:, ::-1] if wall_right else ph.lesions[0]
                write_mask(root / "segmentation" / f"{stem}_{cls}.png", lesion[top : top + fh, 0:fw])
            labels = {
                "benign": exam["cancer_label"][("right" if right else "left") + "_benign"],
                "malignant": exam["cancer_label"][("right" if right else "left") + "_malignant"],
            }
            expected[stem] = {
                "labels": labels,
                "lesion_class": cls if has_lesion else None,
                "split": splits[e] if splits else "test",
            }
        exams.append(exam)
    (root / "segmentation").mkdir(parents=True, exist_ok=True)
    (root / "data.pkl").write_bytes(pickle.dumps(exams, protocol=3))
    return expected


# -- CBIS-DDSM download layout ---------------------------------------------------------------------
CBIS_MASS_HEADER = [
    "patient_id",
    "breast_density",
    "left or right breast",
    "image view",
    "abnormality id",
    "abnormality type",
    "mass shape",
    "mass margins",
    "assessment",
    "pathology",
    "subtlety",
    "image file path",
    "cropped image file path",
    "ROI mask file path",
]
CBIS_CALC_HEADER = [
    "patient_id",
    "breast density",
    "left or right breast",
    "image view",
    "abnormality id",
    "abnormality type",
    "calc type",
    "calc distribution",
    "assessment",
    "pathology",
    "subtlety",
    "image file path",
    "cropped image file path",
    "ROI mask file path",
]
CBIS_METADATA_HEADER = [
    "Series UID",
    "Collection",
    "3rd Party Analysis",
    "Data Description URI",
    "Subject ID",
    "Study UID",
    "Study Description",
    "Study Date",
    "Series Description",
    "Manufacturer",
    "Modality",
    "SOP Class Name",
    "SOP Class UID",
    "Number of Images",
    "File Size",
    "File Location",
    "Download Timestamp",
]


@dataclass
class CbisCase:
    """One abnormality row to write (and the image it sits on)."""

    kind: str  # "mass" or "calc"
    official: str  # "train" or "test"
    patient: str
    side: str  # LEFT / RIGHT
    view: str  # CC / MLO
    pathology: str
    abnormality: int = 1
    lesion: tuple[float, float, float] = (0.5, 0.35, 0.07)
    mask_shape: tuple[int, int] | None = None  # None: the image's size
    swap_columns: bool = False
    old_layout: bool = False  # files stored where the CSV path says (older downloads)
    newline: bool = True  # a trailing newline in the ROI path cells, as in the published CSVs


class CbisWriter:
    """Writes CBIS-DDSM mini datasets in the layout of a current TCIA download."""

    def __init__(self, root: Path, shape: tuple[int, int] = (120, 90)) -> None:
        self.root = Path(root)
        self.shape = shape
        self.rows: dict[tuple[str, str], list[list[str]]] = {}
        self.metadata: list[list[str]] = []
        self.images: dict[str, Phantom] = {}
        self.counter = 100
        self.full_series: dict[str, list[Path]] = {}
        self.last_folder = self.root

    def _uid(self) -> str:
        self.counter += 1
        return uid(f"{self.counter}.{self.counter * 7919 % 90000 + 10000}")

    def _series(
        self, subject: str, description: str, files: list[tuple[str, np.ndarray]], old_layout: bool
    ) -> tuple[str, list[str]]:
        """Write one series; returns the CSV path prefix ``subject/study/series`` and the file names used."""
        study, series = self._uid(), self._uid()
        if old_layout:
            folder = self.root / "CBIS-DDSM" / subject / study / series
            names = [f"{i:06d}.dcm" for i in range(len(files))]
        else:
            folder = (
                self.root
                / "CBIS-DDSM"
                / subject
                / f"07-20-2016-DDSM-NA-{study[-5:]}"
                / f"1.000000-{description}-{series[-5:]}"
            )
            names = [f"1-{i + 1}.dcm" for i in range(len(files))]
        self.last_folder = folder
        for name, (_, pixels) in zip(names, files, strict=True):
            write_dicom(
                folder / name,
                pixels,
                patient_id=subject,
                study_uid=study,
                series_uid=series,
                sop_uid=self._uid(),
                bits_stored=16 if pixels.dtype == np.uint16 else 8,
            )
        location = "./" + str(folder.relative_to(self.root)).replace("\\", "/")
        self.metadata.append(
            [
                series,
                "CBIS-DDSM",
                "NO",
                "",
                subject,
                study,
                "DDSM",
                "07-20-2016",
                description,
                "",
                "MG",
                "",
                "",
                str(len(files)),
                "1 MB",
                location,
                "2024-01-01",
            ]
        )
        return f"{subject}/{study}/{series}", [f"{i:06d}.dcm" for i in range(len(files))]

    def add(self, case: CbisCase) -> Phantom:
        kind_title = "Mass" if case.kind == "mass" else "Calc"
        phase = "Training" if case.official == "train" else "Test"
        subject = f"{kind_title}-{phase}_{case.patient}_{case.side}_{case.view}"
        ph = phantom(
            self.shape,
            chest_wall="right" if case.side == "RIGHT" else "left",
            lesions=(case.lesion,),
            marker=False,
            seed=len(self.images),
        )
        key = f"{case.patient}_{case.side}_{case.view}"
        if key in self.images:  # the same mammogram again (a second abnormality or the other CSV)
            base = self.images[key]
            base.image = np.maximum(base.image, ph.image)
            base.lesions.append(ph.lesions[0])
            ph = Phantom(base.image, [ph.lesions[0]])
        else:
            self.images[key] = ph
        full_prefix, full_names = self._series(subject, "full mammogram images", [("full", ph.image)], case.old_layout)
        self.full_series.setdefault(key, []).append(self.last_folder)
        mask = ph.lesions[0]
        if case.mask_shape is not None:
            mh, mw = case.mask_shape
            rows = (np.arange(mh) * self.shape[0] / mh).astype(int)
            cols = (np.arange(mw) * self.shape[1] / mw).astype(int)
            mask = mask[rows[:, None], cols[None, :]]
        mask_u8 = np.where(mask, 255, 0).astype(np.uint8)
        r, c = np.nonzero(ph.lesions[0])
        crop = ph.image[max(r.min() - 3, 0) : r.max() + 4, max(c.min() - 3, 0) : c.max() + 4].copy()
        roi_subject = f"{subject}_{case.abnormality}"
        if case.swap_columns:
            # crop and mask in separate series, and the CSV cells pointing at each other's file
            crop_prefix, _ = self._series(roi_subject, "cropped images", [("crop", crop)], case.old_layout)
            mask_prefix, _ = self._series(roi_subject, "ROI mask images", [("mask", mask_u8)], case.old_layout)
            crop_cell, mask_cell = f"{mask_prefix}/000000.dcm", f"{crop_prefix}/000000.dcm"
        else:
            prefix, names = self._series(
                roi_subject, "ROI mask images", [("crop", crop), ("mask", mask_u8)], case.old_layout
            )
            crop_cell, mask_cell = f"{prefix}/{names[0]}", f"{prefix}/{names[1]}"
        nl = "\n" if case.newline else ""
        extra = ["OVAL", "CIRCUMSCRIBED"] if case.kind == "mass" else ["PLEOMORPHIC", "CLUSTERED"]
        row = [
            case.patient,
            "3",
            case.side,
            case.view,
            str(case.abnormality),
            case.kind,
            *extra,
            "4",
            case.pathology,
            "4",
            f"{full_prefix}/{full_names[0]}",
            crop_cell + nl,
            mask_cell + nl,
        ]
        self.rows.setdefault((case.kind, case.official), []).append(row)
        return ph

    def finish(self, metadata: bool = True) -> None:
        import csv

        import pydicom

        # every copy of a mammogram shows all its lesions (mass and calcification rows of one image)
        for key, folders in self.full_series.items():
            for folder in folders:
                for path in folder.glob("*.dcm"):
                    ds = pydicom.dcmread(path)
                    ds.PixelData = self.images[key].image.tobytes()
                    ds.save_as(path)

        for kind in ("mass", "calc"):
            for official in ("train", "test"):
                header = CBIS_MASS_HEADER if kind == "mass" else CBIS_CALC_HEADER
                path = self.root / f"{kind}_case_description_{official}_set.csv"
                with open(path, "w", newline="") as fh:
                    writer = csv.writer(fh)
                    writer.writerow(header)
                    writer.writerows(self.rows.get((kind, official), []))
        if metadata:
            with open(self.root / "metadata.csv", "w", newline="") as fh:
                writer = csv.writer(fh)
                writer.writerow(CBIS_METADATA_HEADER)
                writer.writerows(self.metadata)
