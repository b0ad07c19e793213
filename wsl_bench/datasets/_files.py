"""Where a dataset's files may be, and what they hold: path containment and file fingerprints.

Two concerns of every loader that turns index cells into file names:

* :func:`path_inside` — a relative path taken from an index file (``labels.csv``'s ``image``
  column, ...) is accepted only if its *lexical* normalisation (``os.path.normpath`` of
  ``root/relative``) stays inside ``root``. Symbolic links the user made inside the root are
  followed when the file is opened (they are the user's own choice); ``..`` and absolute paths in
  the index cannot leave the root, and the file opened is the normalised path, so a ``..`` after a
  symlink never reaches the operating system. :func:`name_problem` checks a cell used as one file
  name component (``study_id``, a stem).
* :func:`files_digest` — one sha256 over the files that feed a dataset split, for ``describe()``
  (the checkpoint cache key). With ``content=True`` each file's bytes are hashed, but only when
  its ``(size, mtime_ns, ctime_ns, inode)`` differ from what a small persistent stat→hash cache
  remembers; the cache lives under the project cache (``wsl_bench.paths.cache_root()``, i.e.
  ``$WSL_BENCH_CACHE``), never in the data folder. With ``content=False`` the stat facts
  themselves are hashed (for raw datasets of hundreds of gigabytes).
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from wsl_bench.limits import MAX_INDEX_ROWS, describe_bound
from wsl_bench.paths import cache_root
from wsl_bench.regular_files import open_regular

__all__ = ["files_digest", "name_problem", "path_inside", "text_problem"]

MAX_ID_CHARS = 255
HASH_CACHE_VERSION = 1
# A file changed this recently may change again within the filesystem's timestamp granularity
# without its stat changing ("racily clean", as git calls it): its hash is not remembered until its
# ctime (which no program can set back) is older than this.
_RACY_SECONDS = 2.0
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def text_problem(text: str, what: str = "id") -> str | None:
    """Why ``text`` cannot be an id (empty, over 255 characters, NUL or control characters), or ``None``."""
    if not text:
        return f"empty {what}"
    if len(text) > MAX_ID_CHARS:
        return f"{what} of {len(text):,} characters (at most {MAX_ID_CHARS})"
    bad = _CONTROL.search(text)
    if bad is not None:
        return f"{what} {_short(text)} contains the control character {bad.group()!r}"
    return None


def name_problem(text: str, what: str = "id") -> str | None:
    """Why ``text`` cannot be one file name component (see :func:`text_problem`; also ``/``, ``\\``,
    ``.`` and ``..``), or ``None``."""
    problem = text_problem(text, what)
    if problem is not None:
        return problem
    if "/" in text or "\\" in text or text in (".", ".."):
        return f"{what} {_short(text)} is not a single file name (it holds '/', '\\\\' or is '.'/'..')"
    return None


def path_inside(root: str | os.PathLike, relative: str) -> str | None:
    """``root/relative`` normalised lexically (``root`` kept as given, the rest without ``..``), or
    ``None`` when that leaves ``root`` (or is ``root``).

    ``..`` components are resolved on the text, before any symbolic link is followed; an absolute
    ``relative`` is accepted only if it names a path under ``root``. NUL and control characters
    are refused (``None``).
    """
    if not relative or _CONTROL.search(relative):
        return None
    given = os.fspath(root)
    base = os.path.abspath(given)
    candidate = os.path.normpath(os.path.join(base, relative))
    prefix = base if base.endswith(os.sep) else base + os.sep
    if not candidate.startswith(prefix) or candidate == base:
        return None
    return os.path.join(given, candidate[len(prefix):])  # as given below root, without any '..'


def _short(text: str, limit: int = 60) -> str:
    return repr(text) if len(text) <= limit else repr(text[:limit]) + f"… ({len(text):,} characters)"


def _sha256_file(path: str) -> str:
    """Hex sha256 of a regular file's bytes (a FIFO or a device raises :class:`NotARegularFile`,
    an ``OSError``, instead of blocking or reading forever)."""
    digest = hashlib.sha256()
    with open_regular(path) as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _cache_file(root: str, name: str) -> Path:

    key = hashlib.sha256(f"{root}\0{name}".encode("utf-8", "surrogatepass")).hexdigest()[:32]
    return cache_root() / "file-hashes" / f"{key}.json"


def _read_cache(path: Path, root: str) -> dict[str, list]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("version") != HASH_CACHE_VERSION or data.get("root") != root:
        return {}
    files = data.get("files")
    return files if isinstance(files, dict) else {}


def _write_cache(path: Path, root: str, files: dict[str, list]) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"version": HASH_CACHE_VERSION, "root": root, "files": files}))
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only cache only costs speed


def files_digest(root: str | os.PathLike, entries: Iterable[tuple[str, Sequence[Path | None]]],
                 content: bool = True, cache_name: str = "") -> str:
    """sha256 over ``(key, file state)`` for every file of ``entries``, in order.

    Args:
        root: the dataset folder; the stat→hash cache is kept per root (absolute path).
        entries: ``(key, paths)`` pairs, e.g. a sample id and its image and mask paths; a ``None``
            path or a missing file counts as "absent" (so adding a mask changes the digest too).
        content: hash each file's bytes (remembered by stat); else hash ``(size, mtime_ns)``.
        cache_name: which stat→hash cache of ``root`` to use (e.g. the split): each call keeps
            only the entries of the files it listed, so one cache per file list stays small.

    Returns:
        a hex digest that changes when any listed file is added, removed or changes.
    """
    root_key = os.path.abspath(os.fspath(root))
    cache_path = _cache_file(root_key, cache_name) if content else None
    cache = _read_cache(cache_path, root_key) if cache_path is not None else {}
    seen: set[str] = set()
    changed = False
    now = time.time()
    digest = hashlib.sha256()
    for key, paths in entries:
        digest.update(key.encode("utf-8", "surrogatepass") + b"\0")
        for path in paths:
            if path is None:
                digest.update(b"-\0")
                continue
            name = os.fspath(path)
            try:
                st = os.stat(name)
            except OSError:
                digest.update(b"absent\0")
                continue
            if not content:
                digest.update(f"{st.st_size}:{st.st_mtime_ns}\0".encode())
                continue
            stat_key = [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]
            seen.add(name)
            remembered = cache.get(name)
            if isinstance(remembered, list) and remembered[:4] == stat_key and len(remembered) == 5:
                file_hash = remembered[4]
            else:
                try:
                    file_hash = _sha256_file(name)
                except OSError:
                    digest.update(b"unreadable\0")
                    continue
                if now - st.st_ctime_ns / 1e9 > _RACY_SECONDS:  # any later change moves ctime past it
                    cache[name] = [*stat_key, file_hash]
                    changed = True
            digest.update(file_hash.encode() + b"\0")
    if cache_path is not None and (changed or len(seen) < len(cache)):
        _write_cache(cache_path, root_key, {k: v for k, v in cache.items() if k in seen})
    return digest.hexdigest()


def checked_csv_rows(reader: Any, path: str | os.PathLike, max_rows: int = MAX_INDEX_ROWS) -> Iterator[Any]:
    """The rows of a ``csv.reader`` or ``csv.DictReader``; a CSV error (a cell above the csv module's
    field limit, ...) becomes a :class:`~wsl_bench.data.DatasetError` naming the file and the line,
    and so does a data row beyond ``max_rows`` (:data:`~wsl_bench.limits.MAX_INDEX_ROWS`: refused
    as it is reached, before the rows past it cost memory)."""
    from wsl_bench.data import DatasetError

    line_source = getattr(reader, "reader", reader)  # a DictReader counts lines in its inner reader
    header = 0 if hasattr(reader, "fieldnames") else 1  # a csv.reader yields the header row too
    count = 0
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise DatasetError(
                f"{path}, line {line_source.line_num}: unreadable CSV ({exc}; a cell may hold at most "
                f"{csv.field_size_limit():,} characters)"
            ) from None
        count += 1
        if count > max_rows + header:
            raise DatasetError(f"{path}, line {line_source.line_num}: more than {max_rows:,} data rows, above "
                               f"{describe_bound('MAX_INDEX_ROWS', max_rows, 'rows')}; refused")
        yield row
