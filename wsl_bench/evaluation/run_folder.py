"""What a run folder holds, when an earlier run in it is worth protecting, and how ``--overwrite`` clears it.

A run folder (``wsl_bench.evaluation.harness``) is resumed only with the same run-wide settings.
Three rules keep that from getting in a user's way:

* a folder whose run recorded nothing (it failed before its first record: a wrong ``--data-root``
  for the training split, a method that could not be built) protects nothing, and a run with other
  settings takes it over;
* when the settings do differ and there are records, the refusal names the settings that differ
  (:func:`settings_differences`) and the flag that replaces the old run;
* ``--overwrite`` (:func:`clear_run_folder`) deletes what a run writes there, and only that, and only
  in a folder that holds a run: a mistyped ``--out`` pointing at a folder of one's own is refused,
  never emptied.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

RUN_FILES = ("manifest.json", "done")
"""Files a run writes at the top of its folder (besides ``records*.jsonl``)."""
RUN_FOLDERS = ("maps", "report")
"""Folders a run writes in its folder."""
RECORDS_PATTERN = "records*.jsonl"
"""``records.jsonl`` and a distributed run's ``records.rank<r>.jsonl``."""


class NotARunFolder(ValueError):
    """``--overwrite`` on a folder that holds no wsl-bench run: it is left as it is."""


def is_run_folder(folder: Path) -> bool:
    """Whether ``folder`` holds a wsl-bench run (its ``manifest.json`` or a records file)."""
    return (folder / "manifest.json").is_file() or any(folder.glob(RECORDS_PATTERN))


def has_records(folder: Path) -> bool:
    """Whether a run in ``folder`` wrote anything to a records file (a partial line counts: it
    belongs to a run that was under way)."""
    return any(path.is_file() and path.stat().st_size > 0 for path in folder.glob(RECORDS_PATTERN))


def settings_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``"name: OLD there, NEW here"`` for every run-wide setting that differs (``methods`` aside:
    a run may add methods)."""
    names = sorted((set(old) | set(new)) - {"methods"})
    return [f"{name}: {_comparable(old.get(name))!r} there, {_comparable(new.get(name))!r} here" for name in names
            if _comparable(old.get(name)) != _comparable(new.get(name))]


def _comparable(value: Any) -> Any:
    """Tuples as lists: the manifest's JSON turns a configuration's tuples into lists."""
    return [_comparable(v) for v in value] if isinstance(value, (list, tuple)) else value


def clear_run_folder(folder: Path) -> list[str]:
    """Delete what a run wrote in ``folder`` (``--overwrite``): manifest, records, ``done``, maps and
    report. Other files (a user's notes, the lock the caller holds) stay. A missing or empty folder
    needs nothing.

    Returns:
        the names deleted, for the caller's message.

    Raises:
        NotARunFolder: ``folder`` holds files but no run (:func:`is_run_folder`).
    """
    if not folder.exists() or not any(p.name != ".lock" for p in folder.iterdir()):
        return []
    if not is_run_folder(folder):
        raise NotARunFolder(f"--overwrite: {folder} holds no wsl-bench run (no manifest.json or records.jsonl), "
                            "so nothing in it was deleted; choose another --out folder")
    deleted = []
    for path in [*(folder / name for name in RUN_FILES), *sorted(folder.glob(RECORDS_PATTERN))]:
        if path.is_file():
            path.unlink()
            deleted.append(path.name)
    for name in RUN_FOLDERS:
        if (folder / name).is_dir():
            shutil.rmtree(folder / name)
            deleted.append(name + "/")
    return deleted


def remove_if_untouched(folder: Path) -> None:
    """Remove ``folder`` if all it holds is a released lock (a run that created it and failed
    before writing anything), so a failed command leaves no folder behind."""
    lock = folder / ".lock"
    try:
        if [p.name for p in folder.iterdir()] == [".lock"] and lock.stat().st_size == 0:
            lock.unlink()
            folder.rmdir()
    except OSError:
        pass  # someone else is using it: leave it
