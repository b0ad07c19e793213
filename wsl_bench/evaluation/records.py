"""Run records: one JSON object per (split, image, method) in ``records.jsonl``, written so a kill
loses at most the record being written (the harness writes them from one background thread, a batch
at a time: :mod:`wsl_bench.evaluation.writer`).

Each record is appended as one line, flushed and ``fsync``-ed before the next image is scored.
A killed run can leave a partial last line; :class:`RecordWriter` cuts it off when the file is
reopened, and :func:`read_records` skips (with a warning naming the file and line) any line that is
not a valid record — not UTF-8, not JSON, not an object, fields missing or of the wrong type — so
neither resuming nor a report ever fails on one. When the same (split, image, method) appears
twice (a retried failure), the last record wins.

Every record names its ``split``: a run scores its evaluated split (``test``) and, for choosing the
headline Dice threshold, the validation split (``val``). Records written before the field existed
have none; :func:`read_records` gives them the run's evaluated split (``default_split``).

Every record names the training ``seed`` it scores (``null``: a method with nothing to train, whose
records serve every seed of the run; :mod:`wsl_bench.evaluation.seeds`). Records written before the
field existed have none; :func:`read_records` gives them ``default_seed``'s seed of their method.

Per-class pixel histograms (the counts every localisation metric is computed from) are stored
compactly: little-endian uint32 counts, zlib-compressed, base64 text.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import zlib
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from wsl_bench.saliency import CLASSES

log = logging.getLogger(__name__)

RECORD_SCHEMA = 1
STATUSES = ("ok", "failed", "oom", "skipped")


def encode_counts(counts: np.ndarray) -> str:
    """Histogram counts (non-negative integers < 2**32) → compact text."""
    array = np.asarray(counts)
    if array.size and (array.min() < 0 or array.max() >= 2**32):
        raise ValueError("histogram counts must lie in [0, 2**32)")
    return base64.b64encode(zlib.compress(array.astype("<u4").tobytes(), 6)).decode("ascii")


def decode_counts(text: str) -> np.ndarray:
    """Inverse of :func:`encode_counts`: an int64 array."""
    return np.frombuffer(zlib.decompress(base64.b64decode(text)), dtype="<u4").astype(np.int64)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"cannot store {type(value).__name__} in a record")


def _clean_floats(value: Any) -> Any:
    """Replace NaN/inf by ``None``: JSON has no NaN and a record must stay standard JSON."""
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean_floats(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean_floats(v) for v in value]
    return value


class RecordWriter:
    """Appends records to a JSON Lines file durably.

    Args:
        path: the ``records.jsonl`` file (created if missing).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._drop_partial_last_line()
        self._handle = open(self.path, "a", encoding="utf-8")

    def _drop_partial_last_line(self) -> None:
        """Cut a last line that has no newline (a write interrupted by a kill)."""
        if not self.path.exists() or self.path.stat().st_size == 0:
            return
        with open(self.path, "rb+") as handle:
            data = handle.read()
            if data.endswith(b"\n"):
                return
            keep = data.rfind(b"\n") + 1
            log.warning("%s: dropping an incomplete last record (%d bytes) left by an interrupted run",
                        self.path, len(data) - keep)
            handle.truncate(keep)

    def write(self, record: dict[str, Any]) -> None:
        """Append one record and make it durable before returning."""
        if record.get("status") not in STATUSES:
            raise ValueError(f"record status must be one of {STATUSES}, got {record.get('status')!r}")
        line = json.dumps(_clean_floats({"schema": RECORD_SCHEMA, **record}), default=_json_default,
                          allow_nan=False, separators=(",", ":"))
        self._handle.write(line + "\n")
        self._handle.flush()
        os.fsync(self._handle.fileno())

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> RecordWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_records(
    paths: str | Path | Iterable[str | Path], default_split: str = "test", split: str | None = None,
    default_seed: Mapping[str, int] | None = None,
) -> list[dict[str, Any]]:
    """All valid records of one or several files, the last one per (split, image, method, seed) kept.

    Lines that are not valid UTF-8, not valid JSON (a partial line from a killed run) or not a
    valid record (:func:`record_problem`) are skipped with a warning naming the file and line.

    Args:
        paths: one or several ``records*.jsonl`` files.
        default_split: the split of records without a ``split`` field (written before records had
            one: they are the run's evaluated split); it is filled in on the returned records.
        split: keep only the records of this split (``None``: every split).
        default_seed: method → the training seed of its records without a ``seed`` field (written
            before records had one: :func:`wsl_bench.evaluation.seeds.legacy_seeds`); other methods'
            such records get ``None`` (shared by every seed). It is filled in on the returned records.
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    default_seed = default_seed or {}
    latest: dict[tuple[str, str, str, int | None], dict[str, Any]] = {}
    for path in paths:
        for record in _iter_file(Path(path)):
            if record.get("split") is None:
                record["split"] = default_split
            if "seed" not in record:
                record["seed"] = default_seed.get(record["method"])
            latest[(record["split"], record["image_id"], record["method"], record["seed"])] = record
    return [r for r in latest.values() if split is None or r["split"] == split]


_NUMBER = (int, float)
_PER_CLASS_REQUIRED_IF_OK = ("dice", "has_lesion", "score", "label")
"""Per-class fields every ``ok`` record has (the report reads them): objects mapping each class to
a number, ``true``/``false`` or ``null``."""
_PER_CLASS_SCALARS = (*_PER_CLASS_REQUIRED_IF_OK, "lesion_fraction")
_OPTIONAL_NUMBERS = ("time_s", "peak_memory_mb", "gflops")


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def record_problem(record: Any) -> str | None:
    """Why a parsed JSON line is not a usable record (``None`` when it is one).

    A record is an object with string ``image_id`` and ``method``, a ``status`` among
    :data:`STATUSES` and, if present, a string ``split`` and a ``seed`` (a non-negative integer or
    ``null``); the per-class fields (``dice``,
    ``has_lesion``, ``score``, ``label``: required on ``ok`` records, with an entry per class;
    ``lesion_fraction``) map classes to a number, a boolean or ``null``; ``hist`` maps classes to
    ``{"pos": text, "neg": text}``; ``time_s``, ``peak_memory_mb`` and ``gflops`` are numbers or
    ``null`` (the fields resuming and the report read).
    """
    if not isinstance(record, dict):
        return f"a JSON {type(record).__name__}, not a record object"
    for key in ("image_id", "method"):
        if key not in record:
            return f"no {key!r}"
        if not isinstance(record[key], str) or not record[key]:
            return f"{key!r} is {_short(record[key])}, not a non-empty string"
    if record.get("status") not in STATUSES:
        return f"status {_short(record.get('status'))} is not one of {', '.join(STATUSES)}"
    if record.get("split") is not None and not isinstance(record["split"], str):
        return f"split {_short(record['split'])} is not a string"
    seed = record.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        return f"seed {_short(seed)} is not a non-negative integer or null"
    for key in _PER_CLASS_SCALARS:
        if key not in record:
            if record["status"] == "ok" and key in _PER_CLASS_REQUIRED_IF_OK:
                return f"an ok record without {key!r}"
            continue
        value = record[key]
        required = record["status"] == "ok" and key in _PER_CLASS_REQUIRED_IF_OK
        if value is None and not required:
            continue
        if not isinstance(value, dict):
            return f"{key!r} is {type(value).__name__}, not an object of per-class values"
        missing = [cls for cls in CLASSES if cls not in value] if required else []
        if missing:
            return f"{key!r} has no {missing[0]!r} entry"
        for cls, item in value.items():
            if item is not None and not isinstance(item, (*_NUMBER, bool)):
                return f"{key}[{_short(cls)}] is {_short(item)}, not a number, true/false or null"
    hist = record.get("hist", {})
    if not isinstance(hist, dict):
        return f"'hist' is {type(hist).__name__}, not an object"
    for cls, counts in hist.items():
        if counts is not None and not (isinstance(counts, dict) and all(isinstance(counts.get(k), str)
                                                                        for k in ("pos", "neg"))):
            return f"hist[{_short(cls)}] is not an object with text 'pos' and 'neg'"
    for key in _OPTIONAL_NUMBERS:
        value = record.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, _NUMBER)):
            return f"{key!r} is {_short(value)}, not a number or null"
    return None


def _iter_file(path: Path) -> Iterator[dict[str, Any]]:
    """The usable records of one file, in order; every other line is reported and skipped.

    The file is read as bytes and each line decoded on its own, so one line of invalid UTF-8, a line
    that is not JSON (a partial line from a killed run), JSON that is not an object or a record
    with missing or mistyped fields (:func:`record_problem`) costs that line alone: a warning names
    the file, the line number and the reason.
    """
    if not path.exists():
        return
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, 1):
            raw = raw.strip()
            if not raw:
                continue
            try:
                record = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError as exc:
                log.warning("%s line %d: not valid UTF-8 (%s), skipped", path, number, exc.reason)
                continue
            except (ValueError, RecursionError):
                log.warning("%s line %d: not a complete record, skipped", path, number)
                continue
            problem = record_problem(record)
            if problem is not None:
                log.warning("%s line %d: not a valid record (%s), skipped", path, number, problem)
                continue
            yield record


def rewrite_records(path: str | Path, records: Iterable[dict[str, Any]]) -> None:
    """Replace ``path`` with exactly ``records`` (written to a temporary file, then renamed), so a
    kill leaves either the old file or the new one. Callers hold the run folder's lock."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.rewrite.tmp")
    tmp.unlink(missing_ok=True)
    with RecordWriter(tmp) as writer:
        for record in records:
            writer.write(record)
    tmp.replace(path)
