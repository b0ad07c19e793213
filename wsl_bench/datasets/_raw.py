"""Shared machinery of the loaders of raw published datasets (NYU, CBIS-DDSM, INbreast, VinDr).

Each loader builds an *index* once (id → :class:`IndexEntry`) from the dataset's own metadata
files, then loads and preprocesses one sample at a time. Problems confined to one sample found
while indexing (an unknown label value, a missing file) are kept in the entry and raised as a
:class:`SampleError` when that sample is loaded, so a run records that sample as failed and goes
on; problems with the metadata files themselves (missing file, missing column) are a
:class:`DatasetError` naming the file.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from wsl_bench.data import SPLITS, DatasetError, MammogramDataset, Sample, SampleError
from wsl_bench.datasets._files import checked_csv_rows, files_digest
from wsl_bench.datasets._preprocess import DEFAULT_IMAGE_SIZE, PreprocessConfig, Preprocessed, lesion_areas
from wsl_bench.limits import MAX_INDEX_BYTES, describe_bound
from wsl_bench.regular_files import open_regular, read_regular

log = logging.getLogger(__name__)

DEFAULT_SPLIT_FRACTIONS: tuple[float, float, float] = (0.7, 0.1, 0.2)
"""Train/val/test fractions of the deterministic patient-level split of datasets without one."""

SPLIT_SALT = "wsl-bench-split-v1"


def hash_fraction(key: str, salt: str = SPLIT_SALT) -> float:
    """A fixed pseudo-random number in [0, 1) for ``key`` (SHA-256; stable across machines and versions)."""
    digest = hashlib.sha256(f"{salt}:{key}".encode()).hexdigest()
    return int(digest[:13], 16) / float(16**13)


def hash_split(key: str, fractions: Sequence[float] = DEFAULT_SPLIT_FRACTIONS) -> str:
    """Assign ``key`` (a patient id) to ``train``/``val``/``test`` with the given fractions."""
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(f"split fractions must be three non-negative numbers summing to 1, got {tuple(fractions)}")
    u = hash_fraction(key)
    if u < fractions[0]:
        return "train"
    if u < fractions[0] + fractions[1]:
        return "val"
    return "test"


def holdout_split(key: str, val_fraction: float = 0.1) -> str:
    """``val`` for a fixed ``val_fraction`` of keys (patients), else ``train``: a validation split
    carved from an official training split."""
    return "val" if hash_fraction(key) < val_fraction else "train"


@dataclass
class IndexEntry:
    """One sample as the index knows it.

    Attributes:
        split: ``train``/``val``/``test``.
        patient: patient (or exam) key used for the split.
        data: loader-specific fields (paths, rows, labels).
        problems: errors found while indexing, raised as SampleError at load.
    """

    split: str
    patient: str
    data: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def read_csv_rows(
    path: Path, required: Iterable[str], delimiter: str = ",", aliases: dict[str, Sequence[str]] | None = None
) -> list[dict[str, str]]:
    """Read a CSV into dicts keyed by canonical column names.

    Args:
        path: the CSV file.
        required: canonical column names that must be present.
        delimiter: field separator.
        aliases: canonical name → other spellings accepted in the header (matched after
            stripping spaces and ignoring case).

    Raises:
        DatasetError: missing/unreadable file, a missing column (naming the file and the column), or
            a cell above the csv module's field limit (naming the file and the line).
    """
    if not path.is_file():
        raise DatasetError(f"{path}: file not found")
    try:
        data = read_regular(path, MAX_INDEX_BYTES, describe_bound("MAX_INDEX_BYTES", MAX_INDEX_BYTES, "bytes"))
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read ({exc})") from exc
    except ValueError as exc:
        raise DatasetError(str(exc)) from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = data.decode("latin-1")
    reader = csv.DictReader(text.splitlines(), delimiter=delimiter)
    try:
        header = [h for h in (reader.fieldnames or [])]
    except csv.Error as exc:
        raise DatasetError(f"{path} line {reader.reader.line_num}: unreadable CSV header ({exc})") from None
    norm = {h.strip().lower(): h for h in header if h is not None}
    mapping: dict[str, str] = {}
    aliases = aliases or {}
    for canonical in set(required) | set(aliases):
        for spelling in (canonical, *aliases.get(canonical, ())):
            if spelling.strip().lower() in norm:
                mapping[canonical] = norm[spelling.strip().lower()]
                break
    missing = [c for c in required if c not in mapping]
    if missing:
        raise DatasetError(
            f"{path}: missing column(s) {', '.join(repr(m) for m in missing)}; the header has: {', '.join(header)}"
        )
    rows = []
    for raw in checked_csv_rows(reader, path):
        if not any((v or "").strip() for v in raw.values() if isinstance(v, str)):
            continue  # blank line (spreadsheet exports often end with some)
        row = {k: (raw.get(k) or "") for k in header if k is not None}
        for canonical, actual in mapping.items():
            row[canonical] = raw.get(actual) or ""
        rows.append(row)
    return rows


class RawDataset(MammogramDataset):
    """Base of the raw-dataset loaders: root check, preprocessing config, lazily built index.

    Subclasses implement :meth:`build_index` (id → IndexEntry for *all* splits) and
    :meth:`load_entry`.
    """

    def __init__(
        self,
        root: str | None = None,
        split: str = "test",
        image_size: tuple[int, int] | None = None,
        preprocess: PreprocessConfig | None = None,
    ) -> None:
        super().__init__(root=root, split=split, image_size=image_size)
        size = tuple(self.image_size) if self.image_size is not None else DEFAULT_IMAGE_SIZE
        base = preprocess or PreprocessConfig()
        self.config = dataclasses.replace(base, image_size=size)
        self.root_path = Path(root).expanduser() if root is not None else Path(".")
        if not self.root_path.is_dir():
            raise DatasetError(f"{self.root_path}: dataset root not found (dataset {self.name!r})")
        self._index: dict[str, IndexEntry] | None = None

    # -- index ------------------------------------------------------------------------------------
    def build_index(self) -> dict[str, IndexEntry]:
        raise NotImplementedError

    def index(self) -> dict[str, IndexEntry]:
        """id → entry for every split (built once)."""
        if self._index is None:
            self._index = self.build_index()
            if not self._index:
                raise DatasetError(f"{self.root_path}: no images found for dataset {self.name!r} (empty dataset)")
        return self._index

    def ids(self) -> list[str]:
        ids = sorted(i for i, e in self.index().items() if e.split == self.split)
        if not ids:
            counts = {s: sum(e.split == s for e in self.index().values()) for s in SPLITS}
            raise DatasetError(
                f"{self.root_path}: split {self.split!r} of dataset {self.name!r} is empty "
                f"(images per split: {counts}); see datasets/{self.name}.md for how splits are defined"
            )
        return ids

    def entry(self, sample_id: str) -> IndexEntry:
        try:
            entry = self.index()[sample_id]
        except KeyError:
            raise SampleError(
                f"{self.root_path}: no sample {sample_id!r} in dataset {self.name!r}", sample_id
            ) from None
        if entry.problems:
            raise SampleError("; ".join(entry.problems), sample_id)
        return entry

    def load(self, sample_id: str) -> Sample:
        entry = self.entry(sample_id)
        try:
            return self.load_entry(sample_id, entry)
        except SampleError as exc:
            if not exc.sample_id:
                exc.sample_id = sample_id
            raise
        except (OSError, ValueError, KeyError, IndexError, TypeError) as exc:
            # Anything else one sample's files can provoke fails that sample only, never the run.
            raise SampleError(
                f"{self.name} sample {sample_id!r}: unexpected {type(exc).__name__} while loading: {exc}", sample_id
            ) from exc

    def load_entry(self, sample_id: str, entry: IndexEntry) -> Sample:
        raise NotImplementedError

    def index_files(self) -> list[Path]:
        """The metadata files the index is built from (checksummed in preparation manifests)."""
        return []

    def source_files(self, sample_id: str, entry: IndexEntry) -> list[Path]:
        """The files one sample is read from (for :meth:`describe`); empty where a loader cannot
        tell without reading them (then only its index files are covered)."""
        return []

    def describe(self) -> dict[str, Any]:
        """Name, split, size, preprocessing, the sha256 of each index file (``index_sha256``) and
        ``files_stat_sha256``: one digest over the size and modification time of the split's image
        (and annotation) files as :meth:`source_files` lists them — not their bytes: hashing a raw
        release (hundreds of gigabytes of DICOMs) is not cheap. A file replaced in place with the
        same size and a restored modification time is not noticed; ``wsl-bench data prepare`` into
        the folder format gets content hashes."""
        d = super().describe()
        d["preprocess"] = self.config.to_dict()
        d["index_sha256"] = {}
        for path in self.index_files():
            digest = hashlib.sha256()
            with open_regular(path) as fh:
                for block in iter(lambda fh=fh: fh.read(1 << 20), b""):
                    digest.update(block)
            d["index_sha256"][path.name] = digest.hexdigest()
        entries = [(i, self.source_files(i, e)) for i, e in sorted(self.index().items()) if e.split == self.split]
        d["files_stat_sha256"] = files_digest(self.root_path, entries, content=False)
        return d

    # -- helpers ----------------------------------------------------------------------------------
    def make_sample(
        self,
        sample_id: str,
        pre: Preprocessed,
        labels: dict[str, int],
        meta: dict[str, Any],
    ) -> Sample:
        """Assemble a Sample from preprocessing output, recording geometry and lesion areas."""
        meta = {
            "id": sample_id,
            "dataset": self.name,
            "split": self.split,
            **meta,
            "geometry": pre.geometry.to_dict(),
            "preprocess": pre.info,
            "lesion_areas": {c: lesion_areas(m) for c, m in pre.masks.items() if m is not None},
        }
        boxes = {c: b.round(2).tolist() for c, b in pre.boxes.items() if len(b)}
        if boxes:
            meta["boxes"] = boxes
        return Sample(image=pre.image.astype(np.float32, copy=False), masks=pre.masks, labels=labels, meta=meta)
