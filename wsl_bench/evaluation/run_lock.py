"""An exclusive lock on a run folder, so two runs never write one folder's manifest and records at once.

The lock is ``<run folder>/.lock``, held with ``fcntl.flock`` for the life of the run and holding the
holder's pid, host and start time. The kernel releases a flock when its process dies (even by
SIGKILL), so a lock left by a dead run is taken over without any clean-up; a live holder makes the
second run stop with an error naming it. Limit: ``flock`` is per host; on network file systems
that do not forward it, two hosts writing one folder are not detected (torchrun shards take the
lock once, on rank 0, and write per-rank record files).
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

try:  # POSIX; on other systems the lock is a no-op with a warning in the docs
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None  # type: ignore[assignment]

LOCK_FILE = ".lock"


class RunFolderLocked(RuntimeError):
    """Another live process holds the run folder."""


class RunFolderLock:
    """``with RunFolderLock(folder): ...`` holds ``folder/.lock`` exclusively.

    The lock file is opened without following a symbolic link (a ``.lock`` link planted in the
    folder would otherwise have the lock truncate the file it points to).

    Args:
        folder: the folder to hold (created if missing).
        wait: block until the holder releases it instead of refusing (the checkpoint cache, where a
            second process waits for the first one's training rather than repeating it);
            ``on_wait(holder)`` is called once before waiting, with the holder's pid, host and time.
        what: how the refusal names the holder (``"wsl-bench run"``, ``"wsl-bench training"``).
        lock_name: the lock file's name in ``folder`` (default ``.lock``).

    Raises:
        RunFolderLocked: on entry, when another live process holds it (naming its pid and host).
    """

    def __init__(self, folder: str | Path, wait: bool = False,
                 on_wait: Callable[[dict[str, object]], None] | None = None, what: str = "wsl-bench run",
                 lock_name: str = LOCK_FILE) -> None:
        self.folder = Path(folder)
        self.path = self.folder / lock_name
        self.wait = wait
        self.on_wait = on_wait
        self.what = what
        self._handle: int | None = None

    def acquire(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        handle = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
        if fcntl is not None:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(handle)
                if self.wait:
                    if self.on_wait is not None:
                        self.on_wait(holder)
                    try:
                        fcntl.flock(handle, fcntl.LOCK_EX)
                    except BaseException:
                        os.close(handle)
                        raise
                else:
                    os.close(handle)
                    raise RunFolderLocked(
                        f"{self.folder} is in use by another {self.what} (pid {holder.get('pid', '?')} on "
                        f"{holder.get('host', '?')}, since {holder.get('since', '?')}); wait for it to finish, or "
                        "use another --out folder"
                    ) from None
        holder = {"pid": os.getpid(), "host": socket.gethostname(),
                  "since": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
        os.ftruncate(handle, 0)
        os.pwrite(handle, (json.dumps(holder) + "\n").encode(), 0)
        self._handle = handle

    def release(self) -> None:
        if self._handle is None:
            return
        os.ftruncate(self._handle, 0)  # a later reader sees no holder; the file itself stays
        if fcntl is not None:
            fcntl.flock(self._handle, fcntl.LOCK_UN)
        os.close(self._handle)
        self._handle = None

    def __enter__(self) -> RunFolderLock:
        self.acquire()
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.release()


def _read_holder(handle: int) -> dict[str, object]:
    try:
        data = os.pread(handle, 4096, 0)
        holder = json.loads(data.decode("utf-8")) if data.strip() else {}
        return holder if isinstance(holder, dict) else {}
    except (OSError, ValueError):
        return {}
