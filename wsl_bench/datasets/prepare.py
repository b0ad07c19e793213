"""One-off preparation of a raw dataset into the fast ``folder`` layout.

``prepare_dataset("cbis-ddsm", src, out)`` loads and preprocesses every sample of every split
once, in a process pool, and writes ``out`` in the ``folder`` format (16-bit PNG images already
at the target size, PNG masks, ``labels.csv``) plus ``out/prepare_manifest.json``: the dataset,
the preprocessing parameters, SHA-256 checksums of the index files and of every source file of
every sample, and the failures. Benchmarks then read ``out`` with the ``folder`` dataset instead
of decoding DICOMs again.

Resuming: rerunning the same command skips every sample already in ``out/labels.csv`` (the
writer appends a row only after the sample's files are complete) and retries the failed ones.
Rerunning with another dataset, image size or preprocessing into the same ``out`` is refused.

A sample that fails (unreadable file, bad label, ...) is recorded in the manifest with its error,
and the others go on.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

from wsl_bench.atomic_io import current_umask
from wsl_bench.data import SPLITS, DatasetError, MammogramDataset, SampleError
from wsl_bench.regular_files import open_regular
from wsl_bench.saliency import CLASSES

log = logging.getLogger(__name__)

MANIFEST_NAME = "prepare_manifest.json"
MANIFEST_SCHEMA = 1
EXTRA_COLUMNS: tuple[str, ...] = (
    "dataset",
    "view",
    "laterality",
    "patient",
    "mask_kind",
    "label_source",
    "lesion_areas",
    "geometry",
    "source_file",
)
"""Sample meta stored as ``labels.csv`` columns (``lesion_areas`` as JSON, the rest as text)."""

__all__ = ["EXTRA_COLUMNS", "MANIFEST_NAME", "PrepareSummary", "pool_map", "prepare_dataset", "sha256_file"]


@dataclass(frozen=True)
class PrepareSummary:
    """What :func:`prepare_dataset` did.

    Attributes:
        out: the output folder.
        manifest: path of ``prepare_manifest.json``.
        written: samples written by this call.
        skipped: samples already present (resumed).
        failed: samples that failed (their errors are in the manifest).
        seconds: wall time of this call.
    """

    out: Path
    manifest: Path
    written: int
    skipped: int
    failed: int
    seconds: float

    def __str__(self) -> str:
        return f"{self.out} ({self.written} written, {self.skipped} already there, {self.failed} failed)"


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """SHA-256 hex digest of a file, read in chunks."""
    digest = hashlib.sha256()
    with open_regular(path) as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def to_uint16(image: np.ndarray) -> np.ndarray:
    """``1×H×W`` or ``H×W`` float image → ``H×W`` uint16 by min–max scaling.

    Standardisation is invariant to affine maps, so the ``folder`` loader, which standardises what
    it reads, recovers the same image up to 16-bit quantisation.
    """
    img = np.asarray(image, dtype=np.float64).reshape(image.shape[-2:])
    lo, hi = float(img.min()), float(img.max())
    if hi <= lo:
        return np.zeros(img.shape, dtype=np.uint16)
    return np.round((img - lo) * (65535.0 / (hi - lo))).astype(np.uint16)


# -- worker side ------------------------------------------------------------------------------------
_WORKER: dict[str, Any] = {}


def _worker_init(name: str, src: str, image_size: tuple[int, int], options: dict[str, Any]) -> None:
    _WORKER.update(name=name, src=src, image_size=image_size, options=options, datasets={})


def _dataset(split: str) -> MammogramDataset:
    from wsl_bench.registry import create_dataset

    cache = _WORKER["datasets"]
    if split not in cache:
        cache[split] = create_dataset(
            _WORKER["name"], root=_WORKER["src"], split=split, image_size=_WORKER["image_size"], **_WORKER["options"]
        )
    return cache[split]


def _process(split: str, sample_id: str) -> dict[str, Any]:
    """Load, preprocess and checksum one sample (runs in a worker process)."""
    try:
        sample = _dataset(split).get(sample_id)
        sources = sample.meta.get("sources") or [sample.meta.get("source")]
        checksums = {str(p): sha256_file(p) for p in sources if p}
        return {
            "id": sample_id,
            "split": split,
            "ok": True,
            "image": to_uint16(sample.image),
            "masks": sample.masks,
            "labels": sample.labels,
            "meta": sample.meta,
            "checksums": checksums,
        }
    except Exception as exc:  # noqa: BLE001 - one bad sample is recorded, the others go on
        return {"id": sample_id, "split": split, "ok": False, "error": f"{type(exc).__name__}: {exc}"}


def pool_map(
    fn: Callable[..., Any],
    jobs: Iterable[tuple[Any, ...]],
    workers: int,
    initializer: Callable[..., None] | None = None,
    initargs: tuple[Any, ...] = (),
) -> Iterator[Any]:
    """``fn(*job)`` for every job, in worker processes, yielded in completion order.

    With ``workers`` 0 or 1 everything runs in this process (after ``initializer(*initargs)``).
    Otherwise workers are *spawned* (no inherited torch/OpenMP threads from this process; each
    starts by importing wsl_bench, a few seconds), ``fn`` and ``initializer`` must be importable
    module-level functions, and at most ``2 * workers`` jobs are in flight, so results holding
    whole images never pile up in memory. A caller running this from a script needs the
    ``if __name__ == "__main__":`` guard (the ``wsl-bench`` command has it).
    """
    if workers <= 1:
        if initializer is not None:
            initializer(*initargs)
        for job in jobs:
            yield fn(*job)
        return
    with ProcessPoolExecutor(
        max_workers=workers, mp_context=get_context("spawn"), initializer=initializer, initargs=initargs
    ) as pool:
        queue = iter(jobs)
        running = set()
        for job in queue:
            running.add(pool.submit(fn, *job))
            if len(running) >= 2 * workers:
                break
        while running:
            done, running = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                yield future.result()
                nxt = next(queue, None)
                if nxt is not None:
                    running.add(pool.submit(fn, *nxt))


# -- main side --------------------------------------------------------------------------------------
def _write_json_atomic(path: Path, data: Mapping[str, Any]) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=1, sort_keys=False, default=str)
            fh.write("\n")
        os.chmod(tmp, 0o666 & ~current_umask())  # as open(path, "w") would (mkstemp makes it 0600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _index_files(dataset: MammogramDataset) -> list[Path]:
    getter = getattr(dataset, "index_files", None)
    return list(getter()) if callable(getter) else []


def _storable(result: dict[str, Any], src: Path) -> tuple[dict, dict, dict, list[str]]:
    """Masks, labels and meta the folder format can hold, and notes on what had to change.

    The folder format reads "no mask file and label 0" as an empty annotated mask, and cannot
    hold a mask with lesion pixels under label 0 or an empty mask under label 1; such masks are
    dropped (with a note) rather than written wrong.
    """
    notes = []
    labels = {c: int(result["labels"][c]) for c in CLASSES if c in result["labels"]}
    missing = [c for c in CLASSES if c not in labels]
    if missing:
        raise SampleError(f"{result['id']}: no label for {', '.join(missing)}: the folder format needs every class")
    masks: dict[str, np.ndarray | None] = {}
    for cls in CLASSES:
        mask = result["masks"].get(cls)
        if mask is not None and bool(mask.any()) != bool(labels[cls]):
            what = "has lesion pixels" if mask.any() else "is empty"
            notes.append(f"{cls} mask {what} but the label is {labels[cls]}: mask not stored")
            mask = None
        elif mask is None and labels[cls] == 0:
            notes.append(f"{cls} not annotated with label 0: stored as annotated without lesion")
        masks[cls] = mask
    meta = dict(result["meta"])
    source = meta.get("source")
    if source:
        try:
            meta["source_file"] = str(Path(source).resolve().relative_to(src.resolve()))
        except ValueError:
            meta["source_file"] = str(source)
    for key in ("geometry",):
        if key in meta:
            meta[key] = json.dumps(meta[key], separators=(",", ":"))
    return masks, labels, {k: meta.get(k) for k in EXTRA_COLUMNS}, notes


def _pending(datasets: Mapping[str, MammogramDataset], writer: Any) -> tuple[list[tuple[str, str]], int]:
    todo, skipped = [], 0
    for split, dataset in datasets.items():
        for sample_id in dataset.ids():
            if writer.has(sample_id):
                skipped += 1
            else:
                todo.append((split, sample_id))
    return todo, skipped


def prepare_dataset(
    name: str,
    src: str | os.PathLike,
    out: str | os.PathLike,
    image_size: tuple[int, int] = (2944, 1920),
    workers: int = 2,
    progress: bool = True,
    options: Mapping[str, Any] | None = None,
    splits: tuple[str, ...] = SPLITS,
) -> PrepareSummary:
    """Preprocess every sample of a registered dataset once into the ``folder`` layout.

    Args:
        name: registered dataset name (``nyu``, ``cbis-ddsm``, ``inbreast``, ``vindr``, ...).
        src: the raw dataset folder (the loader's ``root``).
        out: output folder (created; an earlier preparation there is resumed).
        image_size: ``(H, W)`` of the written images.
        workers: worker processes; 0 or 1 runs in this process. Workers are *spawned* (no
            inherited torch/OpenMP state), so each starts by importing wsl_bench (a few seconds),
            and a script calling this with ``workers > 1`` needs the ``if __name__ == "__main__":``
            guard (the ``wsl-bench`` command has it). The main process writes the PNGs.
        progress: show a tqdm progress bar.
        options: extra constructor options of the dataset (e.g. ``{"abnormality": "mass"}``).
        splits: which splits to prepare (empty splits are skipped).

    Returns:
        A :class:`PrepareSummary`.

    Raises:
        DatasetError: the dataset cannot be indexed, every split is empty, or ``out`` holds a
            preparation of another dataset or with other parameters.
    """
    from tqdm.auto import tqdm

    from wsl_bench._version import __version__
    from wsl_bench.datasets.folder import FolderWriter
    from wsl_bench.registry import create_dataset

    started = time.perf_counter()
    src, out = Path(src), Path(out)
    image_size = (int(image_size[0]), int(image_size[1]))
    options = dict(options or {})
    datasets: dict[str, MammogramDataset] = {}
    errors: list[DatasetError] = []
    for split in splits:
        # an empty split is normal (NYU exam lists are test-only): skip it, fail only if all are
        try:
            ds = create_dataset(name, root=str(src), split=split, image_size=image_size, **options)
            ds.ids()
        except DatasetError as exc:
            log.info("%s: split %s skipped: %s", name, split, exc)
            errors.append(exc)
            continue
        datasets[split] = ds
    if not datasets:
        raise errors[0] if errors else DatasetError(f"{src}: no split to prepare")
    first = next(iter(datasets.values()))
    params = {
        "dataset": name,
        "image_size": list(image_size),
        "options": {k: v for k, v in options.items()},
        "preprocess": first.describe().get("preprocess"),
    }

    out.mkdir(parents=True, exist_ok=True)
    manifest_path = out / MANIFEST_NAME
    manifest: dict[str, Any]
    if manifest_path.exists():
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        if manifest.get("parameters") != json.loads(json.dumps(params, default=str)):
            raise DatasetError(
                f"{manifest_path}: {out} holds a preparation with parameters {manifest.get('parameters')}, "
                f"not {params}; use another --out"
            )
    else:
        manifest = {"schema": MANIFEST_SCHEMA, "parameters": params, "samples": {}, "failures": {}}
    manifest.update(
        {
            "wsl_bench_version": __version__,
            "source_root": str(src.resolve()),
            "index_files": {str(p): sha256_file(p) for p in _index_files(first) if Path(p).is_file()},
            "updated": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        }
    )
    manifest.setdefault("created", manifest["updated"])

    writer = FolderWriter(out, extra_columns=EXTRA_COLUMNS)
    todo, skipped = _pending(datasets, writer)
    written = failed = 0
    last_save = time.monotonic()

    def record(result: dict[str, Any]) -> None:
        nonlocal written, failed
        sample_id = result["id"]
        if result["ok"]:
            try:
                masks, labels, meta, notes = _storable(result, src)
                writer.write(sample_id, result["split"], result["image"], masks, labels, meta)
            except (SampleError, ValueError, OSError) as exc:
                result = {**result, "ok": False, "error": f"{type(exc).__name__}: {exc}"}
            else:
                manifest["samples"][sample_id] = {
                    "split": result["split"],
                    "sources": result["checksums"],
                    **({"notes": notes} if notes else {}),
                }
                manifest["failures"].pop(sample_id, None)
                written += 1
                return
        failed += 1
        manifest["failures"][sample_id] = {"split": result["split"], "error": result["error"]}
        log.warning("%s: %s", sample_id, result["error"])

    def results() -> Iterator[dict[str, Any]]:
        # results hold whole images: the pool keeps a bounded number in flight
        yield from pool_map(_process, todo, workers, _worker_init, (name, str(src), image_size, options))

    try:
        with tqdm(
            total=len(todo) + skipped, initial=skipped, desc=f"prepare {name}", unit="img", disable=not progress
        ) as bar:
            for result in results():
                record(result)
                bar.update(1)
                if time.monotonic() - last_save > 30:
                    _write_json_atomic(manifest_path, manifest)
                    last_save = time.monotonic()
    finally:
        manifest["counts"] = {
            "samples": len(manifest["samples"]),
            "failures": len(manifest["failures"]),
            "per_split": {s: sum(v["split"] == s for v in manifest["samples"].values()) for s in SPLITS},
        }
        _write_json_atomic(manifest_path, manifest)
    return PrepareSummary(out, manifest_path, written, skipped, failed, time.perf_counter() - started)
