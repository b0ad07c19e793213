"""``wsl-bench data prepare nyu``: a raw NYU exam list → the layout the ``nyu`` loader reads.

The published GMIC/GLAM pipeline turns a raw exam list (``exam_list_before_cropping.pkl``, raw
16-bit PNGs in ``images/``) into ``data.pkl`` + ``cropped_images/`` in two steps, which this module
runs for every image of every view, in a process pool:

1. crop each raw image to the breast (:mod:`wsl_bench.datasets.nyu_cropping`), recording
   ``window_location``, ``rightmost_points``, ``bottommost_points`` and
   ``distance_from_starting_side``;
2. compute the optimal centre of the cropped, flipped image (:mod:`wsl_bench.datasets.nyu_centers`),
   recording ``best_center``.

Written under ``out`` (and nowhere else; temporary files live next to their targets)::

    cropped_images/<stem>.png     16-bit crops of the raw images, unflipped (as published)
    segmentation/<name>.png       the source's segmentations of the prepared images, copied
    data.pkl                      the exam list with the five keys added, standard pickle
                                  (protocol 4, plain dicts/lists/tuples/ints/floats)
    data.json                     the same exam list as JSON (nothing downstream needs pickle)
    prepare_manifest.json         parameters, sha256 of every source and crop, per-image results,
                                  failures with their reasons, timing

An image that cannot be prepared (missing, unreadable, not a 16-bit grayscale PNG, blank, listed
twice, an unsafe stem) is left out of the output exam list (its exam keeps its other images, so
exam numbers match the raw list) and recorded in the manifest's ``failures`` with the reason; the
others are prepared. Rerunning the same command reuses every image whose source and crop still
have the recorded sha256, and recomputes the rest (all of them when the parameters changed).
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import os
import pickle
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wsl_bench.atomic_io import write_bytes_atomic, write_json_atomic
from wsl_bench.data import DatasetError, SampleError
from wsl_bench.datasets._files import name_problem, text_problem
from wsl_bench.datasets._imageio import read_image, write_png16
from wsl_bench.datasets.nyu import load_exam_list
from wsl_bench.datasets.nyu_centers import MODEL_FRAME, best_center, flip_for_view
from wsl_bench.datasets.nyu_cropping import BUFFER_SIZE, ERODE_ITERATIONS, NoBreastError, crop_mammogram
from wsl_bench.datasets.prepare import MANIFEST_NAME, pool_map, sha256_file
from wsl_bench.regular_files import read_regular
from wsl_bench.saliency import CLASSES

log = logging.getLogger(__name__)

__all__ = [
    "ADDED_KEYS",
    "MANIFEST_KIND",
    "RAW_EXAM_LIST",
    "NYUPrepareSummary",
    "exam_list_state",
    "find_exam_list",
    "prepare_nyu",
    "read_exam_list",
]

VIEWS: tuple[str, ...] = ("L-CC", "R-CC", "L-MLO", "R-MLO")  # the published VIEWS.LIST order
RAW_EXAM_LIST = "exam_list_before_cropping.pkl"
"""The published name of a raw exam list (preferred over ``data.pkl`` when both are there)."""
ADDED_KEYS: tuple[str, ...] = (
    "window_location",
    "rightmost_points",
    "bottommost_points",
    "distance_from_starting_side",
    "best_center",
)
"""Keys the two steps add to every exam, each ``view → [value per image]``."""
MANIFEST_KIND = "nyu-crop-and-center"
MANIFEST_SCHEMA = 1
PICKLE_PROTOCOL = 4
"""What the published code's ``pickle.HIGHEST_PROTOCOL`` was under its Python 3.6."""
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_COLOUR_TYPES = {0: "grayscale", 2: "RGB", 3: "palette", 4: "grayscale+alpha", 6: "RGBA"}


@dataclass(frozen=True)
class NYUPrepareSummary:
    """What :func:`prepare_nyu` did.

    Attributes:
        out: the output folder.
        exam_list: the written ``data.pkl``.
        manifest: ``prepare_manifest.json``.
        prepared: images in the output exam list (cropped and centred by this call or reused).
        reused: of those, images reused from an earlier call.
        failed: images left out, with their reasons in ``failures``.
        seconds: wall time of this call.
        failures: failure key (the stem) → reason.
    """

    out: Path
    exam_list: Path
    manifest: Path
    prepared: int
    reused: int
    failed: int
    seconds: float
    failures: dict[str, str] = field(default_factory=dict)

    @property
    def images_per_second(self) -> float:
        """Images processed (not reused) per second of this call."""
        done = self.prepared - self.reused + self.failed
        return done / self.seconds if self.seconds > 0 else float("nan")

    def __str__(self) -> str:
        reused = f", {self.reused} reused" if self.reused else ""
        return f"{self.out} ({self.prepared} images cropped and centred{reused}, {self.failed} failed)"


# -- the exam list ----------------------------------------------------------------------------------
def find_exam_list(root: str | os.PathLike, name: str | None = None) -> Path:
    """The raw exam list under ``root``: ``name`` if given, else ``exam_list_before_cropping.pkl``,
    else ``data.pkl``, else the only ``*.pkl``.

    Raises:
        DatasetError: not found, or several candidates.
    """
    root = Path(root)
    if name is not None:
        path = root / name
        if not path.is_file():
            raise DatasetError(f"{path}: exam list not found")
        return path
    for default in (RAW_EXAM_LIST, "data.pkl"):
        if (root / default).is_file():
            return root / default
    pickles = sorted(root.glob("*.pkl"))
    if len(pickles) == 1:
        return pickles[0]
    if not pickles:
        raise DatasetError(f"{root}: no exam list ({RAW_EXAM_LIST}, data.pkl or another *.pkl) found")
    raise DatasetError(f"{root}: several exam lists ({', '.join(p.name for p in pickles)}); choose one")


def read_exam_list(path: Path) -> list[dict[str, Any]]:
    """The exams of an exam list (:func:`wsl_bench.datasets.nyu.load_exam_list`), which must not be empty.

    Raises:
        DatasetError: unsafe or malformed pickle, not a list of dicts, or empty.
    """
    exams = load_exam_list(path)
    if not exams:
        raise DatasetError(f"{path}: the exam list is empty")
    return exams


def exam_list_state(exams: Sequence[dict[str, Any]]) -> str:
    """``"raw"`` (no exam has ``best_center`` or ``window_location``), ``"prepared"`` (every exam
    has ``best_center``), ``"cropped"`` (every exam has ``window_location``, none ``best_center``:
    the cropping step's output alone) or ``"mixed"``."""
    centres = [isinstance(e, dict) and "best_center" in e for e in exams]
    windows = [isinstance(e, dict) and "window_location" in e for e in exams]
    if all(centres):
        return "prepared"
    if not any(centres) and not any(windows):
        return "raw"
    if not any(centres) and all(windows):
        return "cropped"
    return "mixed"


def _stems(value: Any) -> list[Any]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value) if isinstance(value, (list, tuple)) else [value]


# -- worker side ------------------------------------------------------------------------------------
_PARAMS: dict[str, Any] = {}


def _init_worker(params: dict[str, Any]) -> None:
    _PARAMS.clear()
    _PARAMS.update(params)


def _png_problem(data: bytes, path: Path) -> str | None:
    """Why ``data`` is not a 16-bit grayscale PNG (read from its IHDR chunk), or None."""
    if not data.startswith(_PNG_SIGNATURE):
        return f"{path}: not a PNG file (no PNG signature)"
    if len(data) < 26 or data[12:16] != b"IHDR":
        return f"{path}: truncated or corrupt PNG (no IHDR chunk)"
    depth, colour = data[24], data[25]
    if (depth, colour) != (16, 0):
        kind = _PNG_COLOUR_TYPES.get(colour, f"colour type {colour}")
        return (
            f"{path}: unexpected bit depth: {depth}-bit {kind} PNG; raw images of the NYU format are 16-bit "
            "grayscale PNGs"
        )
    return None


def _prepare_one(job: dict[str, Any]) -> dict[str, Any]:
    """Crop and centre one image and write its crop (runs in a worker process).

    Returns the job's key fields plus ``ok`` and either the recorded values or ``error``.
    """
    started = time.perf_counter()
    source = Path(job["source"])
    target = Path(_PARAMS["out"]) / "cropped_images" / f"{job['stem']}.png"
    base = {"key": job["key"], "stem": job["stem"]}
    try:
        try:
            data = read_regular(source)  # a FIFO or a device would never end
        except FileNotFoundError:
            raise SampleError(f"{source}: file not found") from None
        except OSError as exc:
            raise SampleError(f"{source}: cannot read ({exc})") from exc
        source_sha256 = hashlib.sha256(data).hexdigest()
        previous = job.get("previous")
        if (
            previous
            and previous.get("source_sha256") == source_sha256
            and (previous.get("view"), previous.get("horizontal_flip")) == (job["view"], job["horizontal_flip"])
            and target.is_file()
            and sha256_file(target) == previous.get("cropped_sha256")
        ):
            return {**base, **previous, "ok": True, "reused": True}
        problem = _png_problem(data, source)
        if problem is not None:
            raise SampleError(problem)
        image = read_image(source)  # SampleError naming the file when truncated or corrupt
        try:
            cropped, info = crop_mammogram(
                image, job["horizontal_flip"], job["view"], _PARAMS["iterations"], _PARAMS["buffer_size"]
            )
        except NoBreastError as exc:
            raise SampleError(f"{source}: {exc}") from None
        flipped = flip_for_view(cropped, job["view"], job["horizontal_flip"])
        center = best_center(flipped, job["view"], info.rightmost_points, info.bottommost_points, _PARAMS["frame"])
        write_png16(target, cropped)
        return {
            **base,
            "ok": True,
            "reused": False,
            "view": job["view"],
            "horizontal_flip": job["horizontal_flip"],
            "source": str(source),
            "source_sha256": source_sha256,
            "raw_shape": [int(image.shape[0]), int(image.shape[1])],
            "cropped_shape": [int(cropped.shape[0]), int(cropped.shape[1])],
            "cropped_sha256": sha256_file(target),
            "window_location": list(info.window_location),
            "rightmost_points": [list(info.rightmost_points[0]), info.rightmost_points[1]],
            "bottommost_points": [info.bottommost_points[0], list(info.bottommost_points[1])],
            "distance_from_starting_side": info.distance_from_starting_side,
            "best_center": [center[0], center[1]],
            "seconds": round(time.perf_counter() - started, 4),
        }
    except Exception as exc:  # noqa: BLE001 - one bad image is recorded, the others go on
        message = str(exc) if isinstance(exc, SampleError) else f"{source}: {type(exc).__name__}: {exc}"
        return {**base, "ok": False, "error": message}


# -- main side --------------------------------------------------------------------------------------
def _published_values(entry: dict[str, Any]) -> dict[str, Any]:
    """The five exam-list values of one image, as the published pipeline stores them (tuples)."""
    (r_first, r_last), r_x = entry["rightmost_points"]
    b_y, (b_first, b_last) = entry["bottommost_points"]
    return {
        "window_location": tuple(int(v) for v in entry["window_location"]),
        "rightmost_points": ((int(r_first), int(r_last)), int(r_x)),
        "bottommost_points": (int(b_y), (int(b_first), int(b_last))),
        "distance_from_starting_side": int(entry["distance_from_starting_side"]),
        # floats, as in the published sample data.pkl ((1136.0, 158.0)); the values are whole numbers
        "best_center": (float(entry["best_center"][0]), float(entry["best_center"][1])),
    }


def _jobs(
    exams: list[dict[str, Any]], list_path: Path, image_dir: Path, previous: dict[str, Any]
) -> tuple[list[dict[str, Any]], dict[tuple[int, str, int], str], dict[str, dict[str, Any]]]:
    """Per-image jobs in the published order (exam, view L-CC/R-CC/L-MLO/R-MLO, image), the key of
    every listed image, and the images refused before any reading (with their reasons)."""
    jobs, keys, refused, seen = [], {}, {}, set()
    for number, exam in enumerate(exams):
        flip = exam.get("horizontal_flip")
        for view in VIEWS:
            for k, stem in enumerate(_stems(exam.get(view))):
                stem = str(stem)
                where = f"{list_path}: exam #{number}, view {view}"
                key = stem if stem not in seen else f"{stem} (exam #{number} {view} #{k})"
                keys[(number, view, k)] = key
                problem = text_problem(stem, "image stem") or name_problem(stem, "image stem")
                if problem is not None:
                    refused[key] = {"exam": number, "view": view, "error": f"{where}: {problem}; refused as a path"}
                elif stem in seen:
                    refused[key] = {"exam": number, "view": view, "error": f"{where}: image {stem!r} is listed twice"}
                elif flip not in ("NO", "YES"):
                    refused[key] = {
                        "exam": number,
                        "view": view,
                        "error": f"{where}: horizontal_flip is {flip!r}, outside the known values 'NO'/'YES'",
                    }
                else:
                    jobs.append(
                        {
                            "key": key,
                            "stem": stem,
                            "exam": number,
                            "view": view,
                            "horizontal_flip": flip,
                            "source": str(image_dir / f"{stem}.png"),
                            "previous": previous.get(stem),
                        }
                    )
                seen.add(stem)
    return jobs, keys, refused


def _segmentation_names(exam: dict[str, Any], view: str, k: int, stem: str) -> dict[str, str]:
    """Segmentation file stem per class (listed ``<view>_<class>_seg`` entry, else ``<stem>_<class>``)."""
    names = {}
    for cls in CLASSES:
        listed = _stems(exam.get(f"{view}_{cls}_seg"))
        names[cls] = str(listed[k]) if k < len(listed) else f"{stem}_{cls}"
    return names


def _output_exams(
    exams: list[dict[str, Any]], keys: dict[tuple[int, str, int], str], done: dict[str, dict[str, Any]]
) -> list[dict[str, Any]]:
    """The exam list with failed images removed (from their view and segmentation lists) and the
    five keys added for every view the exam lists; plain dicts/lists/tuples/ints/floats only."""
    out = []
    for number, exam in enumerate(exams):
        new = dict(exam)
        added: dict[str, dict[str, list]] = {key: {} for key in ADDED_KEYS}
        for view in VIEWS:
            if view not in exam:
                continue
            stems = _stems(exam[view])
            keep = [k for k in range(len(stems)) if keys.get((number, view, k)) in done]
            new[view] = [str(stems[k]) for k in keep]
            for cls in CLASSES:
                seg_key = f"{view}_{cls}_seg"
                if isinstance(exam.get(seg_key), list):
                    new[seg_key] = [exam[seg_key][k] for k in keep if k < len(exam[seg_key])]
            values = [_published_values(done[keys[(number, view, k)]]) for k in keep]
            for key in ADDED_KEYS:
                added[key][view] = [v[key] for v in values]
        new.update(added)
        out.append(new)
    return out


def _copy_segmentations(
    exams: list[dict[str, Any]],
    keys: dict[tuple[int, str, int], str],
    done: dict[str, dict[str, Any]],
    seg_dir: Path,
    out: Path,
) -> tuple[int, dict[str, list[str]]]:
    """Copy the existing segmentation files of prepared images to ``out/segmentation``."""
    target_dir = out / "segmentation"
    target_dir.mkdir(parents=True, exist_ok=True)
    copied, notes = 0, {}
    for number, exam in enumerate(exams):
        for view in VIEWS:
            for k, stem in enumerate(_stems(exam.get(view))):
                key = keys.get((number, view, k))
                if key not in done:
                    continue
                for cls, name in _segmentation_names(exam, view, k, str(stem)).items():
                    problem = name_problem(name, f"{cls} segmentation name")
                    if problem is not None:
                        notes.setdefault(key, []).append(f"{problem}; not copied")
                        continue
                    source = seg_dir / f"{name}.png"
                    if source.is_file():
                        data = source.read_bytes()
                        target = target_dir / source.name
                        if not target.is_file() or target.read_bytes() != data:
                            write_bytes_atomic(target, data)
                        done[key].setdefault("segmentations", {})[cls] = hashlib.sha256(data).hexdigest()
                        copied += 1
    return copied, notes


def _load_manifest(path: Path, out: Path) -> dict[str, Any] | None:
    if not path.exists():
        if (out / "data.pkl").exists():
            raise DatasetError(
                f"{out}: holds a data.pkl that wsl-bench data prepare nyu did not write (no {MANIFEST_NAME}); "
                "use another --out"
            )
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{path}: unreadable preparation manifest ({exc}); use another --out") from exc
    if not isinstance(manifest, dict) or manifest.get("kind") != MANIFEST_KIND:
        raise DatasetError(f"{path}: {out} holds another kind of preparation; use another --out")
    return manifest


def prepare_nyu(
    src: str | os.PathLike,
    out: str | os.PathLike,
    workers: int = 2,
    progress: bool = True,
    exam_list: str | None = None,
    image_dir: str | None = None,
    segmentation_dir: str | None = None,
    iterations: int = ERODE_ITERATIONS,
    buffer_size: int = BUFFER_SIZE,
    frame: tuple[int, int] = MODEL_FRAME,
) -> NYUPrepareSummary:
    """Run the published cropping and optimal-centre steps on a raw NYU exam list.

    Args:
        src: the raw data folder (``exam_list_before_cropping.pkl`` or another ``*.pkl``, ``images/``,
            optionally ``segmentation/``).
        out: output folder (created; an earlier preparation there is resumed).
        workers: worker processes; 0 or 1 runs in this process (see
            :func:`wsl_bench.datasets.prepare.pool_map` for what spawning costs).
        progress: show a tqdm progress bar.
        exam_list: the exam list's file name under ``src`` (default: see :func:`find_exam_list`).
        image_dir: raw image folder under ``src`` (default ``images``, else ``src`` itself).
        segmentation_dir: segmentation folder under ``src`` (default ``segmentation`` or
            ``segmentations`` when there is one).
        iterations: erosion/dilation iterations (published default 100).
        buffer_size: crop buffer in pixels (published default 50).
        frame: the model frame ``(Fh, Fw)`` the centres are computed for (published 2944×1920).

    Returns:
        A :class:`NYUPrepareSummary`.

    Raises:
        DatasetError: no or unsafe exam list, a list that is not raw (already has ``best_center``
            or ``window_location``), ``out`` equal to ``src`` or holding something else.
    """
    from tqdm.auto import tqdm

    from wsl_bench._version import __version__

    started = time.perf_counter()
    src, out = Path(src), Path(out)
    if not src.is_dir():
        raise DatasetError(f"{src}: source folder not found")
    list_path = find_exam_list(src, exam_list)
    exams = read_exam_list(list_path)
    state = exam_list_state(exams)
    if state != "raw":
        what = {
            "prepared": "already has best_center: it is prepared; run on it directly (wsl-bench run --dataset nyu "
            f"--data-root {src})",
            "cropped": "has window_location but no best_center (the cropping step's output alone); prepare from the "
            "raw exam list",
            "mixed": "mixes exams with and without best_center/window_location; prepare from the raw exam list",
        }[state]
        raise DatasetError(f"{list_path}: not a raw exam list: it {what}")
    images = src / image_dir if image_dir is not None else (src / "images" if (src / "images").is_dir() else src)
    if not images.is_dir():
        raise DatasetError(f"{images}: image folder not found")
    if segmentation_dir is not None:
        seg_dir: Path | None = src / segmentation_dir
        if not seg_dir.is_dir():
            raise DatasetError(f"{seg_dir}: segmentation folder not found")
    else:
        seg_dir = next((src / n for n in ("segmentation", "segmentations") if (src / n).is_dir()), None)
    if out.resolve() in (src.resolve(), images.resolve()):
        raise DatasetError(f"{out}: --out must differ from the source folder (its data.pkl would be overwritten)")

    out.mkdir(parents=True, exist_ok=True)
    manifest_path = out / MANIFEST_NAME
    previous = _load_manifest(manifest_path, out)
    params = {
        "iterations": int(iterations),
        "buffer_size": int(buffer_size),
        "frame": [int(frame[0]), int(frame[1])],
        "rightmost_from_ratio": "1/3 (Python 3 float)",
    }
    reusable = previous.get("images", {}) if previous and previous.get("parameters") == params else {}
    jobs, keys, refused = _jobs(exams, list_path, images, reusable)
    (out / "cropped_images").mkdir(exist_ok=True)

    done: dict[str, dict[str, Any]] = {}
    failures: dict[str, dict[str, Any]] = dict(refused)
    by_key = {job["key"]: job for job in jobs}
    worker_params = {
        "out": str(out),
        "iterations": int(iterations),
        "buffer_size": int(buffer_size),
        "frame": (int(frame[0]), int(frame[1])),
    }
    with tqdm(total=len(jobs), desc="prepare nyu (crop + centre)", unit="img", disable=not progress) as bar:
        for result in pool_map(_prepare_one, ((job,) for job in jobs), workers, _init_worker, (worker_params,)):
            key = result.pop("key")
            job = by_key[key]
            if result.pop("ok"):
                result.pop("stem", None)
                done[key] = result
            else:
                failures[key] = {"exam": job["exam"], "view": job["view"], "error": result["error"]}
                log.warning("%s", result["error"])
                stale = out / "cropped_images" / f"{job['stem']}.png"
                if stale.is_file():  # an earlier preparation's crop of an image that now fails
                    stale.unlink()
            bar.update(1)

    notes: dict[str, list[str]] = {}
    if seg_dir is not None:
        _, notes = _copy_segmentations(exams, keys, done, seg_dir, out)
    for key, entry in done.items():
        if entry.get("distance_from_starting_side"):
            notes.setdefault(key, []).append(
                f"the breast starts {entry['distance_from_starting_side']} columns from the chest-wall side of the "
                "image: horizontal_flip may be wrong for this image (the published pipeline rejects such images)"
            )
    output = _output_exams(exams, keys, done)
    write_bytes_atomic(out / "data.pkl", pickle.dumps(output, protocol=PICKLE_PROTOCOL))
    write_json_atomic(out / "data.json", output)

    seconds = time.perf_counter() - started
    reused = sum(1 for e in done.values() if e.get("reused"))
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    manifest = {
        "schema": MANIFEST_SCHEMA,
        "kind": MANIFEST_KIND,
        "wsl_bench_version": __version__,
        "parameters": params,
        "source_root": str(src.resolve()),
        "exam_list": {"path": str(list_path), "sha256": sha256_file(list_path)},
        "image_dir": str(images),
        "segmentation_dir": str(seg_dir) if seg_dir is not None else None,
        "images": {stem: {k: v for k, v in e.items() if k != "reused"} for stem, e in done.items()},
        "notes": notes,
        "failures": failures,
        "counts": {"listed": len(keys), "prepared": len(done), "reused": reused, "failed": len(failures)},
        "seconds": round(seconds, 3),
        "created": (previous or {}).get("created", now),
        "updated": now,
    }
    write_json_atomic(manifest_path, manifest)
    return NYUPrepareSummary(
        out=out,
        exam_list=out / "data.pkl",
        manifest=manifest_path,
        prepared=len(done),
        reused=reused,
        failed=len(failures),
        seconds=seconds,
        failures={k: v["error"] for k, v in failures.items()},
    )
