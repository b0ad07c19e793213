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

Before a run writes or deletes anything, not even its lock file, :func:`check_run_folder` refuses a
folder that holds files but no run manifest (a run would otherwise replace a user's own
``report/index.html`` or ``results.csv``), an ``--out`` that is a file or a dangling link, and run
files that are symbolic links or of the wrong kind (a ``report`` link planted in a run folder would
make the run write outside it). Once the folder is locked, :func:`remove_run_temporaries` deletes
the temporary files a killed run left, by name, in the folders a run writes, and nothing else.
"""

from __future__ import annotations

import fnmatch
import os
import shutil
from pathlib import Path
from typing import Any

from wsl_bench.atomic_io import remove_leftover_temporaries

RUN_FILES = ("manifest.json", "done")
"""Files a run writes at the top of its folder (besides ``records*.jsonl``)."""
RUN_FOLDERS = ("maps", "report")
"""Folders a run writes in its folder."""
RECORDS_PATTERN = "records*.jsonl"
"""``records.jsonl`` and a distributed run's ``records.rank<r>.jsonl``."""


LOCK_NAME = ".lock"
"""The run folder's lock file (``wsl_bench.evaluation.run_lock``)."""


class RunFolderError(ValueError):
    """A run folder the run cannot use as it is; the message names the path, the problem and the fix.
    Nothing was written or deleted there."""


class NotARunFolder(RunFolderError):
    """A folder that holds files but no wsl-bench run (with or without ``--overwrite``): it is left as it is."""


def check_run_folder(folder: Path) -> None:
    """Refuse ``folder`` as a run folder before anything is written there (the lock file included):

    * a path that exists and is not a folder, or a symbolic link to nothing;
    * a folder holding files but no ``manifest.json`` (not a wsl-bench run: the user's own files);
    * run files of the wrong kind (``records.jsonl`` or ``.lock`` a folder, ``report`` a file) or
      symbolic links (``report`` or ``records.jsonl`` linking elsewhere would make the run write
      outside its folder). ``folder`` itself may be a link: the user chose it.

    Raises:
        RunFolderError: naming the path and what to do (:class:`NotARunFolder` for the second case).
    """
    if os.path.islink(folder) and not folder.exists():
        raise RunFolderError(f"{folder} is a symbolic link to {os.readlink(folder)}, which does not exist; "
                             "create that folder or choose another --out")
    if not folder.exists():
        return
    if not folder.is_dir():
        raise RunFolderError(f"{folder} is a file, not a folder; choose a folder for --out")
    entries = {entry.name: entry for entry in os.scandir(folder)}
    if set(entries) - {LOCK_NAME} and not _is_file(folder / "manifest.json"):
        raise NotARunFolder(
            f"{folder} holds no wsl-bench run (no manifest.json) but other files, so nothing was written or deleted "
            "there; choose a new or empty --out folder (--overwrite replaces only a wsl-bench run's files, never a "
            "folder of other files)")
    files = [name for name in entries if name in (LOCK_NAME, *RUN_FILES) or fnmatch.fnmatch(name, RECORDS_PATTERN)]
    for name in files:
        path = folder / name
        if path.is_symlink() or not path.is_file():
            kind = "a symbolic link" if path.is_symlink() else "a folder" if path.is_dir() else "not a regular file"
            raise RunFolderError(f"{path} is {kind}, where the run keeps a file of its own: remove it (a run writes "
                                 f"only inside {folder}), or choose another --out")
    folders = [folder / name for name in RUN_FOLDERS if name in entries]
    if (folder / "maps").is_dir() and not (folder / "maps").is_symlink():  # maps/<method>/, where links matter
        folders += [path for path in (folder / "maps").iterdir() if path.is_symlink()]
    for path in folders:
        if path.is_symlink() or not path.is_dir():
            kind = "a symbolic link" if path.is_symlink() else "a file"
            raise RunFolderError(f"{path} is {kind}, where the run keeps a folder of its own: remove it (a run writes "
                                 f"only inside {folder}), or choose another --out")


def _is_file(path: Path) -> bool:
    return path.is_file() and not path.is_symlink()


def _is_run_file(name: str) -> bool:
    return name in RUN_FILES or fnmatch.fnmatch(name, RECORDS_PATTERN)


def remove_run_temporaries(folder: Path) -> int:
    """Delete the temporary files a killed run left in ``folder`` (the caller holds its lock): in
    the folder itself those of its own files (manifest, records, ``done``), in ``report/`` and in
    each ``maps/<method>/`` any of the suite's temporary files (:func:`wsl_bench.atomic_io.temporary_target`),
    never a user's own ``.tmp`` file and never through a symbolic link. Returns how many went."""
    removed = remove_leftover_temporaries(folder, _is_run_file)
    report, maps = folder / "report", folder / "maps"
    for sub in [report, *(sorted(maps.iterdir()) if maps.is_dir() and not maps.is_symlink() else [])]:
        if sub.is_dir() and not sub.is_symlink():
            removed += remove_leftover_temporaries(sub)
    return removed


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
