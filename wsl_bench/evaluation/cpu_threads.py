"""The thread pool the CPU scorer's compiled loops run in (:mod:`cpu_histograms`, :mod:`cpu_resize`).

The loops release the GIL, so Python threads run them on every core at once; a map is cut into
segments of :data:`SEGMENT_PIXELS` so that one image's two maps keep every thread busy.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache

SEGMENT_PIXELS = 2**20
"""Pixels per task: small enough that the two maps of one image make enough tasks to keep every
thread busy, large enough that a task's start-up (about 10 µs) is noise. Also keeps each task's
int32 sub-histograms far from overflow."""


def run_all(run: Callable[[int], None], count: int, threads: int) -> None:
    """``run(0) … run(count - 1)``, in ``threads`` threads of a pool kept for the process."""
    if threads <= 1 or count == 1:
        for t in range(count):
            run(t)
    else:
        list(_pool(threads).map(run, range(count)))


@lru_cache(maxsize=4)
def _pool(threads: int) -> ThreadPoolExecutor:
    """A pool kept for the process (starting threads per image would cost more than a segment)."""
    return ThreadPoolExecutor(max_workers=threads, thread_name_prefix="wsl-bench-scoring")
