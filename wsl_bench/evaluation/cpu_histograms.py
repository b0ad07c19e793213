"""Fixed-bin histograms of saliency maps on the CPU, in one fused pass per map (numba).

The scorer's CUDA path bins with tensor operations (``torch.bincount``): there, the passes over
memory are cheap. On a CPU the same path makes four passes over every pixel (normalise, widen,
multiply, truncate) before ``bincount`` counts them on one core; two 2944×1920 maps took 35–48 ms.
Here one compiled loop per map segment reads each raw value once, normalises it with the same
float32 operations as :meth:`wsl_bench.evaluation.scoring._Prepared.normalise`, forms the bin the
same way (the float64 product ``v · bins``, exact, truncated: see ``scoring._Binner``), and counts
it in the image's total histogram and, where the lesion mask is set, in the lesion histogram. The
segments run in threads (the loop releases the GIL), so both cores count at once. Counts equal the
tensor path's bin for bin (``tests/test_scoring.py`` checks it on random and edge-value maps).

Why numba and not a C extension: the project installs from a plain ``pip install``, with no compiler
on the user's machine; numba compiles the loop at first use (about 1.5 s, once per process) and
nothing is written to disk (no ``cache=True``: its cache would land beside the installed package).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from typing import Any

import numpy as np

NORMALISE_NONE, NORMALISE_CLAMP, NORMALISE_MIN_MAX = 0, 1, 2
"""How a raw value becomes the normalised one: as it is (a ``probability`` map inside [0, 1]),
clamped to [0, 1] (a ``probability`` map straying by round-off), ``(v - low) / div`` (``unbounded``)."""

SEGMENT_PIXELS = 2**20
"""Pixels per task: small enough that the two maps of one image make enough tasks to keep every
thread busy, large enough that a task's start-up (about 10 µs) is noise. Also keeps each task's
int32 sub-histograms far from overflow."""

_BLOCK = 512
"""Values whose bins are formed in one vectorisable loop before they are counted (fits in L1)."""

@lru_cache(maxsize=1)
def _kernels() -> tuple[Any, Any]:
    """The compiled loops ``(count_run, count_points)`` (compiled at first use; importing numba costs
    about 0.3 s)."""
    import numba

    @numba.njit(nogil=True, boundscheck=False, cache=False, inline="always")
    def bin_of(v, low, div, mode, scale):  # pragma: no cover (compiled)
        """The bin of raw value ``v`` (float32): normalised in float32 as the tensor path does, then
        the exact float64 product truncated."""
        if mode == 2:
            v = (v - low) / div
        elif mode == 1:
            v = min(max(v, np.float32(0.0)), np.float32(1.0))
        return np.int32(np.float64(v) * scale)

    @numba.njit(nogil=True, boundscheck=False, cache=False)
    def count_run(flat, low, div, mode, bins, total):  # pragma: no cover (compiled)
        """Add the bins of every value of ``flat`` (float32, 1-D) to ``total`` (int64, ``bins + 1``)."""
        n = flat.shape[0]
        scale = np.float64(bins)
        index = np.empty(_BLOCK, np.int32)
        # Four interleaved sub-histograms: neighbouring pixels of a smooth map fall in the same bin,
        # and incrementing one counter back to back waits for the previous store each time.
        counts = np.zeros((4, bins + 1), np.int32)
        for start in range(0, n, _BLOCK):
            m = min(_BLOCK, n - start)
            # Bins first, in a loop the compiler vectorises: one loop per mode, since a branch in
            # the loop body stops it from vectorising (measured: 2.5× slower).
            if mode == 2:
                for j in range(m):
                    index[j] = np.int32(np.float64((flat[start + j] - low) / div) * scale)
            elif mode == 1:
                for j in range(m):
                    index[j] = np.int32(np.float64(min(max(flat[start + j], np.float32(0.0)), np.float32(1.0))) * scale)
            else:
                for j in range(m):
                    index[j] = np.int32(np.float64(flat[start + j]) * scale)
            for j in range(m):
                # A safety net, not a step of the binning: a value the caller failed to validate
                # (NaN converts to -2**31) must not write outside the histogram. Vectorises, ~free.
                index[j] = min(max(index[j], 0), bins)
            j = 0
            while j + 4 <= m:
                counts[0, index[j]] += 1
                counts[1, index[j + 1]] += 1
                counts[2, index[j + 2]] += 1
                counts[3, index[j + 3]] += 1
                j += 4
            while j < m:
                counts[0, index[j]] += 1
                j += 1
        for k in range(bins + 1):
            total[k] += counts[0, k] + counts[1, k] + counts[2, k] + counts[3, k]

    @numba.njit(nogil=True, boundscheck=False, cache=False)
    def count_points(flat, points, low, div, mode, bins, total):  # pragma: no cover (compiled)
        """Add the bins of ``flat[points]`` (``points``: int64 indices) to ``total``."""
        scale = np.float64(bins)
        for p in points:
            total[min(max(bin_of(flat[p], low, div, mode, scale), 0), bins)] += 1

    return count_run, count_points


def _run_all(run: Any, count: int, threads: int) -> None:
    """``run(0) … run(count - 1)``, in ``threads`` threads of a pool kept for the process."""
    if threads <= 1 or count == 1:
        for t in range(count):
            run(t)
    else:
        list(_pool(threads).map(run, range(count)))


@lru_cache(maxsize=4)
def _pool(threads: int) -> ThreadPoolExecutor:
    """A pool kept for the process (starting threads per image would cost more than a segment)."""
    return ThreadPoolExecutor(max_workers=threads, thread_name_prefix="wsl-bench-histograms")


def histograms(
    maps: list[tuple[np.ndarray, np.ndarray | None, float, float, int]], bins: int, threads: int
) -> np.ndarray:
    """Lesion and total counts of several maps, counted in ``threads`` threads.

    Args:
        maps: per map ``(flat, lesion, low, div, mode)``: ``flat`` the raw values (float32, 1-D,
            contiguous), ``lesion`` the flat indices of its lesion pixels (int64) or ``None`` (no
            lesion counts), ``low``/``div`` the min–max normalisation (float32 values; ignored unless
            ``mode`` is :data:`NORMALISE_MIN_MAX`), ``mode`` one of the ``NORMALISE_*`` constants.
        bins: histogram bins; counts keep one more, for the value 1.0 (the caller folds it).
        threads: how many segments are counted at once.

    Returns:
        ``len(maps) × 2 × (bins + 1)`` int64: per map, the lesion counts (zeros without lesion
        pixels), then the counts of every pixel.
    """
    count_run, count_points = _kernels()
    out = np.zeros((len(maps), 2, bins + 1), np.int64)
    tasks: list[tuple[int, int, Any]] = []  # (map, row of ``out``: 0 lesion / 1 all, what to count)
    for m, (flat, lesion, _, _, _) in enumerate(maps):
        tasks += [(m, 1, flat[start : start + SEGMENT_PIXELS]) for start in range(0, flat.shape[0], SEGMENT_PIXELS)]
        if lesion is not None and len(lesion):
            tasks.append((m, 0, lesion))
    partial = np.zeros((len(tasks), bins + 1), np.int64)

    def run(t: int) -> None:
        m, row, what = tasks[t]
        flat, _, low, div, mode = maps[m]
        low, div = np.float32(low), np.float32(div)
        if row == 1:
            count_run(what, low, div, mode, bins, partial[t])
        else:
            count_points(flat, what, low, div, mode, bins, partial[t])

    _run_all(run, len(tasks), threads)
    for t, (m, row, _) in enumerate(tasks):
        out[m, row] += partial[t]
    return out
