"""Opening only regular files: a FIFO, a device or a socket named where a file is expected is
refused before anything waits on it.

``open()`` on a FIFO blocks until a writer appears, and reading ``/dev/zero`` (through a symbolic
link named ``scan.png``) never ends. Every file wsl-bench reads from a user's dataset, weights or
run folder is opened here: with ``O_NONBLOCK`` (so opening a FIFO returns at once), then checked
with ``fstat`` on the open descriptor (so the check and the read concern the same file), and
refused unless it is a regular file. Symbolic links are followed: they are the user's own choice.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import BinaryIO


class NotARegularFile(OSError):
    """A path that names a FIFO, a device, a socket or a folder instead of a regular file."""


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def open_regular(path: str | os.PathLike) -> BinaryIO:
    """Open ``path`` for reading in binary mode, refusing anything but a regular file.

    Raises:
        FileNotFoundError: the path does not exist.
        NotARegularFile: it is a FIFO, device, socket or folder (the message names it and what it is).
        OSError: any other reason it cannot be opened.
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotARegularFile(f"{os.fspath(path)} is {_kind(mode)}, not a regular file; refused")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def regular_file_problem(path: str | os.PathLike) -> str | None:
    """Why ``path`` (symbolic links followed) is not an existing regular file, without opening it;
    ``None`` when it is one or does not exist (the caller reports a missing file its own way)."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    return None if stat.S_ISREG(mode) else f"{os.fspath(path)} is {_kind(mode)}, not a regular file"


def read_regular(path: str | os.PathLike, max_bytes: int | None = None, what: str = "") -> bytes:
    """The bytes of a regular file (:func:`open_regular`), refusing one above ``max_bytes``.

    Args:
        what: the bound's description for the error (e.g. ``limits.describe_bound(...)``).

    Raises:
        ValueError: the file holds more than ``max_bytes`` bytes (checked before and while reading).
        NotARegularFile, FileNotFoundError, OSError: as :func:`open_regular`.
    """
    with open_regular(path) as handle:
        if max_bytes is None:
            return handle.read()
        size = os.fstat(handle.fileno()).st_size
        data = handle.read(max_bytes + 1) if size <= max_bytes else b""
        if size > max_bytes or len(data) > max_bytes:
            bound = what or f"the limit of {max_bytes:,} bytes"
            raise ValueError(f"{os.fspath(path)}: {max(size, len(data)):,} bytes, above {bound}; refused")
        return data


def is_regular(path: str | os.PathLike) -> bool:
    """Whether ``path`` (symbolic links followed) is an existing regular file."""
    try:
        return stat.S_ISREG(Path(path).stat().st_mode)
    except OSError:
        return False
