"""Scoring and writing off the critical path: one background thread, one job at a time.

The harness hands each batch's maps to :class:`BackgroundWriter` as one job — score them, write
their records (JSON line, flush, ``fsync``) and figure maps — and goes on with the next batch's
``predict``. The bound is one job in flight: a job is handed over only once the previous one is
done and durable, so a kill loses at most the batch in flight (the record being written at the
default batch size of 1; ``records.jsonl`` keeps its atomicity, :mod:`wsl_bench.evaluation.records`),
the main thread never runs ahead by more than one batch, and at most two batches of maps are held.
A job that fails (a full disk) is raised in the main thread at the next hand-over or at :meth:`close`.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from wsl_bench.evaluation.records import RecordWriter

_STOP = object()


class BackgroundWriter:
    """Runs jobs (scoring a batch, writing records and figure maps) in a thread, at most one in flight.

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
        self.wait_idle()  # the previous job is durable: at most one in flight
        self._jobs.put(job)

    def wait_idle(self) -> float:
        """Wait until the job in flight (if any) is done; return the seconds waited (also added to
        :attr:`waited_s`). Raises the error of a job that failed."""
        start = time.perf_counter()
        self._jobs.join()
        waited = time.perf_counter() - start
        self.waited_s += waited
        self._raise_failure()
        return waited

    def run(self, job: Callable[[], None]) -> None:
        """Run ``job`` in the thread once the job in flight is done (a job that scores a batch and
        writes its records through :attr:`records`: the harness's way to take scoring off the
        critical path too)."""
        self._hand_over(job)

    def _raise_failure(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def write(self, record: dict[str, Any]) -> None:
        """Append ``record`` (in the thread; it is durable before the next job starts)."""
        self._hand_over(lambda: self.records.write(record))

    def flush(self) -> None:
        """Wait until every job is written; raise the error of one that failed."""
        self.wait_idle()

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
