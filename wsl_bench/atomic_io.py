"""Atomic file writes: a file is either its old content or its complete new content, never a part.

Every file a run or a report writes (tables, ``index.html``, figures, figure maps, checkpoints,
manifests) goes through :func:`atomic_write`: the content is written to a temporary file in the
same folder (``.<name>.<random>.tmp``), flushed and ``fsync``-ed, then renamed over the target with
``os.replace``; on any error (a full disk, an exception in the writer, a kill) the temporary file is
removed (a SIGKILL can leave it behind, but never touches the target) and the old file is untouched.
The new file gets the permissions an ordinary ``open(path, "w")`` would give it (``0o666`` less the
umask), or the old file's permissions when it replaces one.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import numpy as np

_TEXT_MODES = ("w", "wt")
_BINARY_MODES = ("wb",)


def current_umask() -> int:
    """The process umask, read without changing it where Linux allows."""
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _mode_for(path: Path) -> int:
    try:
        return path.stat().st_mode & 0o7777
    except OSError:
        return 0o666 & ~current_umask()


def _fsync_folder(folder: Path) -> None:
    """Make the rename durable (best effort: not every file system lets a folder be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_write(
    path: str | os.PathLike, mode: str = "wb", *, encoding: str | None = None, newline: str | None = None
) -> Iterator[IO[Any]]:
    """Open a temporary file next to ``path``; on a clean exit it replaces ``path`` atomically.

    Args:
        path: the file to write (its folder is created if missing).
        mode: ``"wb"`` (bytes) or ``"w"`` (text; ``encoding`` defaults to UTF-8).
        encoding, newline: as for :func:`open`, text mode only.

    Yields:
        the open temporary file. Nothing is visible at ``path`` until the ``with`` block ends
        without an exception; if it raises, ``path`` keeps its old content and the temporary file
        is removed.
    """
    if mode not in _TEXT_MODES + _BINARY_MODES:
        raise ValueError(f"atomic_write mode must be one of {_TEXT_MODES + _BINARY_MODES}, got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        text = mode in _TEXT_MODES
        handle = os.fdopen(fd, mode, encoding=(encoding or "utf-8") if text else None,
                           newline=newline if text else None)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    try:
        with handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, _mode_for(path))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Atomically replace ``path`` by ``data``."""
    with atomic_write(path, "wb") as handle:
        handle.write(data)


def write_text_atomic(path: str | os.PathLike, text: str, encoding: str = "utf-8", newline: str | None = None) -> None:
    """Atomically replace ``path`` by ``text`` (newlines translated as :meth:`Path.write_text` does)."""
    with atomic_write(path, "w", encoding=encoding, newline=newline) as handle:
        handle.write(text)


def write_json_atomic(path: str | os.PathLike, data: Any) -> None:
    """Atomically write ``data`` as indented, key-sorted JSON (objects it cannot encode as ``str``)."""
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def save_figure_atomic(fig: Any, path: str | os.PathLike, **savefig_kwargs: Any) -> None:
    """``fig.savefig`` into a temporary file, then rename over ``path``.

    The format is ``savefig_kwargs["format"]`` or else the suffix of ``path`` (``.png``, ``.pdf``,
    ``.svg``, ...), as matplotlib would choose it for a file name.
    """
    path = Path(path)
    fmt = savefig_kwargs.pop("format", None) or path.suffix.lstrip(".").lower() or None
    with atomic_write(path, "wb") as handle:
        fig.savefig(handle, format=fmt, **savefig_kwargs)


def savez_atomic(path: str | os.PathLike, compressed: bool = True, **arrays: Any) -> None:
    """``np.savez_compressed`` (or ``np.savez``) into a temporary file, then rename over ``path``.

    Unlike ``np.savez`` on a file name, ``path`` is used as given (no ``.npz`` is appended).
    """
    with atomic_write(path, "wb") as handle:
        (np.savez_compressed if compressed else np.savez)(handle, **arrays)


TEMPORARY_PATTERN = ".*.tmp"
"""A glob matching this module's temporary files (``.<name>.<random>.tmp``), and the other hidden
``.tmp`` files the suite writes before a rename (``records.rewrite_records``); which of them are
the suite's own is decided by :func:`temporary_target`, on the whole name."""

_TEMPORARY_NAME = re.compile(r"^\.(?P<target>.+)\.[a-z0-9_]+\.tmp$")
"""``.<target>.<random letters of tempfile.mkstemp>.tmp``, or ``.<target>.rewrite.tmp``."""


def temporary_target(name: str) -> str | None:
    """The file a temporary file of the suite's writers was to replace (``".results.csv.k2j4_x9a.tmp"``
    → ``"results.csv"``), or ``None`` when ``name`` is not named like one (a user's ``.draft.tmp``)."""
    match = _TEMPORARY_NAME.match(name)
    return match.group("target") if match else None


def remove_leftover_temporaries(folder: str | os.PathLike, is_target: Callable[[str], bool] = lambda name: True) -> int:
    """Delete the temporary files a killed writer left in ``folder`` (a SIGKILL between the
    temporary file's creation and its rename leaves one behind; nothing else can clean it up).

    Only ``folder`` itself is looked at (never the folders below it, never through a symbolic
    link), and only regular files named as this module names its temporary files
    (:func:`temporary_target`) whose target name satisfies ``is_target``: a user's own ``.tmp``
    files are never touched. Call it only while no other process writes there (a run holds its
    folder's lock). Returns the number of files removed."""
    removed = 0
    try:
        entries = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return 0
    for entry in entries:
        target = temporary_target(entry.name)
        if target is not None and is_target(target) and entry.is_file(follow_symlinks=False):
            Path(entry.path).unlink(missing_ok=True)
            removed += 1
    return removed
