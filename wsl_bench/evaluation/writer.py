"""The run folder's writes, off the critical path: one background thread, one job at a time.

Writing a record (JSON line, flush, ``fsync``) and an image's figure maps (two small ``.npz``
files) takes the disk's time, not the CPU's; the harness hands each write to
:class:`BackgroundWriter` and goes on with the next image. The bound is one job in flight: a job is
handed over only once the previous one is durable, so a kill still loses at most the record being
written (``records.jsonl`` keeps its promise, :mod:`wsl_bench.evaluation.records`), and the main
thread never runs ahead of the disk by more than one image. A write that fails (a full disk) is
raised in the main thread at the next hand-over or at :meth:`close`.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from wsl_bench.data import Sample
from wsl_bench.evaluation.figure_maps import save_figure_maps
from wsl_bench.evaluation.records import RecordWriter

_STOP = object()


class BackgroundWriter:
    """Writes records and figure maps in a thread, at most one job in flight.

    Args:
        records: where records go (its :meth:`RecordWriter.write` runs in the thread).

    Attributes:
        waited_s: seconds the calling thread spent waiting for the previous job (the harness
            reports it as the ``write`` stage).
    """

    def __init__(self, records: RecordWriter) -> None:
        self.records = records
        self.waited_s = 0.0
        self._jobs: queue.Queue[Any] = queue.Queue(maxsize=1)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._work, name="wsl-bench-writer", daemon=True)
        self._thread.start()

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            try:
                if job is _STOP:
                    return
                if self._error is None:  # after a failure, nothing more is written
                    job()
            except BaseException as exc:  # handed to the main thread
                self._error = exc
            finally:
                self._jobs.task_done()

    def _hand_over(self, job: Callable[[], None]) -> None:
        start = time.perf_counter()
        self._jobs.join()  # the previous job is durable: at most one in flight
        self.waited_s += time.perf_counter() - start
        self._raise_failure()
        self._jobs.put(job)

    def _raise_failure(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def write(self, record: dict[str, Any]) -> None:
        """Append ``record`` (in the thread; it is durable before the next job starts)."""
        self._hand_over(lambda: self.records.write(record))

    def save_figure_maps(self, out_dir: Path, method: str, sample: Sample, maps: torch.Tensor) -> None:
        """Keep one image's normalised maps for the qualitative figure (``maps``: ``C×H×W``, CPU)."""
        self._hand_over(lambda: save_figure_maps(out_dir, method, sample, maps))

    def flush(self) -> None:
        """Wait until every job is written; raise the error of one that failed."""
        start = time.perf_counter()
        self._jobs.join()
        self.waited_s += time.perf_counter() - start
        self._raise_failure()

    def close(self) -> None:
        """Flush and stop the thread (the records file stays open: it belongs to the caller)."""
        try:
            self.flush()
        finally:
            self._jobs.put(_STOP)
            self._thread.join()

    def __enter__(self) -> BackgroundWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
