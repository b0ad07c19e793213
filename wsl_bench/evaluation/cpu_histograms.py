"""Fixed-bin histograms of saliency maps on the CPU, in one fused pass per map (numba).

The scorer's CUDA path bins with tensor operations (``torch.bincount``): there, the passes over
memory are cheap. On a CPU the same path makes four passes over every pixel (normalise, widen,
multiply, truncate) before ``bincount`` counts them on one core; two 2944×1920 maps took 35–48 ms.
Here one compiled loop per map segment reads each raw value once, normalises it with the same
float32 operations as :meth:`wsl_bench.evaluation.scoring._Prepared.normalise`, forms the bin the
same way (the float64 product ``v · bins``, exact, truncated: see ``scoring._Binner``), and counts
it in the image's histogram; a second, short loop bins the lesion pixels (their flat indices,
:meth:`wsl_bench.data.Sample.lesion_pixels`). A low-resolution map is never resized in memory: the
loop reads its width-resized rows (:class:`wsl_bench.evaluation.cpu_resize.RowMaps`) and forms each
pixel there. Segments run in threads (the loops release the GIL), so every core counts at once.
Counts equal the tensor path's bin for bin (``tests/test_scoring.py`` checks it on random, clamped,
constant and bin-edge maps).

Why numba and not a C extension: the project installs from a plain ``pip install``, with no compiler
on the user's machine; numba compiles the loop at first use (about 1.5 s, once per process) and
nothing is written to disk (no ``cache=True``: its cache would land beside the installed package).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np

from wsl_bench.evaluation.cpu_threads import SEGMENT_PIXELS, run_all

if TYPE_CHECKING:
    from wsl_bench.evaluation.cpu_resize import RowMaps

NORMALISE_NONE, NORMALISE_CLAMP, NORMALISE_MIN_MAX = 0, 1, 2
"""How a raw value becomes the normalised one: as it is (a ``probability`` map inside [0, 1]),
clamped to [0, 1] (a ``probability`` map straying by round-off), ``(v - low) / div`` (``unbounded``)."""

_BLOCK = 512
"""Values whose bins are formed in one vectorisable loop before they are counted (fits in L1)."""

@lru_cache(maxsize=1)
def _kernels() -> dict[str, Any]:
    """The compiled loops (compiled at first use, about 1.5 s; importing numba costs about 0.3 s)."""
    import numba

    from wsl_bench.evaluation.cpu_resize import kernels as resize_kernels

    pixel_row, fma32 = resize_kernels()["pixel_row"], resize_kernels()["fma32"]

    @numba.njit(nogil=True, boundscheck=False, cache=False, inline="always")
    def bin_from_product(q, scale):  # pragma: no cover (compiled)
        """The bin of the float64 product ``q = v · bins``: truncated, after a safety net that is not a
        step of the binning (a valid ``v`` lies in [0, 1]): a value the caller failed to validate must
        not count outside the histogram, and NaN (both comparisons false) lands in bin 0."""
        q = q if q >= 0.0 else 0.0
        q = q if q <= scale else scale
        return np.uint32(q)

    @numba.njit(nogil=True, boundscheck=False, cache=False, inline="always")
    def bin_of(v, low, div, mode, scale):  # pragma: no cover (compiled)
        """The bin of raw value ``v`` (float32): normalised in float32 as the tensor path does, then
        the exact float64 product truncated."""
        if mode == 2:
            v = (v - low) / div
        elif mode == 1:
            v = min(max(v, np.float32(0.0)), np.float32(1.0))
        return bin_from_product(np.float64(v) * scale, scale)

    @numba.njit(nogil=True, boundscheck=False, cache=False, inline="always")
    def count_values(values, low, div, mode, bins, index, counts):  # pragma: no cover (compiled)
        """Add the bins of ``values`` (float32, at most ``len(index)``) to ``counts``: four
        interleaved sub-histograms of ``bins + 1`` counts (int32, flat)."""
        m = values.shape[0]
        scale = np.float64(bins)
        # Bins first, in a loop the compiler vectorises: one loop per mode, since a branch in the
        # loop body stops it from vectorising (measured: 2.5× slower).
        if mode == 2:
            for j in range(m):
                index[j] = bin_from_product(np.float64((values[j] - low) / div) * scale, scale)
        elif mode == 1:
            for j in range(m):
                v = min(max(values[j], np.float32(0.0)), np.float32(1.0))
                index[j] = bin_from_product(np.float64(v) * scale, scale)
        else:
            for j in range(m):
                index[j] = bin_from_product(np.float64(values[j]) * scale, scale)
        # Four sub-histograms: neighbouring pixels of a smooth map fall in the same bin, and
        # incrementing one counter back to back waits for the previous store each time. Unsigned
        # indices into one flat array spare the compiler negative-index handling (30 % faster).
        stride = np.uint32(bins + 1)
        j = 0
        while j + 4 <= m:
            counts[index[j]] += 1
            counts[stride + index[j + 1]] += 1
            counts[2 * stride + index[j + 2]] += 1
            counts[3 * stride + index[j + 3]] += 1
            j += 4
        while j < m:
            counts[index[j]] += 1
            j += 1

    @numba.njit(nogil=True, boundscheck=False, cache=False, inline="always")
    def fold(counts, total):  # pragma: no cover (compiled)
        n = total.shape[0]
        for k in range(n):
            total[k] += counts[k] + counts[n + k] + counts[2 * n + k] + counts[3 * n + k]

    @numba.njit(nogil=True, boundscheck=False, cache=False)
    def count_run(flat, low, div, mode, bins, total):  # pragma: no cover (compiled)
        """Add the bins of every value of ``flat`` (float32, 1-D) to ``total`` (int64, ``bins + 1``)."""
        index = np.empty(_BLOCK, np.uint32)
        counts = np.zeros(4 * (bins + 1), np.int32)
        for start in range(0, flat.shape[0], _BLOCK):
            count_values(flat[start : start + _BLOCK], low, div, mode, bins, index, counts)
        fold(counts, total)

    @numba.njit(nogil=True, boundscheck=False, cache=False)
    def count_rows(rows, m, y_start, y_stop, i0, i1, l0, l1, low, div, mode, bins, total):  # pragma: no cover
        """The same for rows ``y_start:y_stop`` of map ``m`` of a :class:`~cpu_resize.RowMaps`."""
        width = rows.shape[2]
        line = np.empty(width, np.float32)
        index = np.empty(_BLOCK, np.uint32)
        counts = np.zeros(4 * (bins + 1), np.int32)
        for y in range(y_start, y_stop):
            pixel_row(rows, m, y, i0, i1, l0, l1, line)
            for start in range(0, width, _BLOCK):
                count_values(line[start : start + _BLOCK], low, div, mode, bins, index, counts)
        fold(counts, total)

    @numba.njit(nogil=True, boundscheck=False, cache=False)
    def count_points(flat, points, low, div, mode, bins, total):  # pragma: no cover (compiled)
        """Add the bins of ``flat[points]`` (``points``: int64 indices) to ``total``."""
        scale = np.float64(bins)
        for p in points:
            total[bin_of(flat[p], low, div, mode, scale)] += 1

    @numba.njit(nogil=True, boundscheck=False, cache=False)
    def count_row_points(rows, m, i0, i1, l0, l1, points, low, div, mode, bins, total):  # pragma: no cover
        """The same for the pixels ``points`` (flat indices at the image size) of a row map."""
        scale = np.float64(bins)
        width = rows.shape[2]
        for p in points:
            y, x = p // width, p % width
            v = fma32(rows[m, i0[y], x], l0[y], rows[m, i1[y], x] * l1[y])
            total[bin_of(v, low, div, mode, scale)] += 1

    return {"count_run": count_run, "count_rows": count_rows, "count_points": count_points,
            "count_row_points": count_row_points}


@dataclass(frozen=True)
class MapToBin:
    """One map to count, with its normalisation.

    Attributes:
        values: the raw values at the image size, flat (float32, 1-D, contiguous), or ``None`` when
            the map is row ``row_index`` of ``row_maps`` (resized on the fly).
        lesion: flat indices (int64) of its lesion pixels, or ``None`` (no lesion counts).
        low, div: the min–max normalisation (float32 values; used only when ``mode`` is
            :data:`NORMALISE_MIN_MAX`).
        mode: one of the ``NORMALISE_*`` constants.
    """

    values: np.ndarray | None
    lesion: np.ndarray | None
    low: float
    div: float
    mode: int
    row_maps: RowMaps | None = None
    row_index: int = 0


def histograms(maps: list[MapToBin], bins: int, threads: int) -> np.ndarray:
    """Lesion and total counts of several maps, counted in ``threads`` threads.

    Returns:
        ``len(maps) × 2 × (bins + 1)`` int64: per map, the lesion counts (zeros without lesion
        pixels), then the counts of every pixel. The caller folds the last count (the value 1.0)
        into the last bin.
    """
    k = _kernels()
    tasks: list[tuple[int, int, Any]] = []  # (map, 0 lesion / 1 all pixels, what to count)
    for m, job in enumerate(maps):
        if job.values is not None:
            pixels = job.values.shape[0]
            tasks += [(m, 1, (start, start + SEGMENT_PIXELS)) for start in range(0, pixels, SEGMENT_PIXELS)]
        else:
            height, width = job.row_maps.size
            step = max(1, SEGMENT_PIXELS // width)
            tasks += [(m, 1, (y, min(height, y + step))) for y in range(0, height, step)]
        if job.lesion is not None and len(job.lesion):
            tasks.append((m, 0, None))
    partial = np.zeros((len(tasks), bins + 1), np.int64)

    def run(t: int) -> None:
        m, row, span = tasks[t]
        job = maps[m]
        low, div = np.float32(job.low), np.float32(job.div)
        if job.values is not None:
            if row == 1:
                k["count_run"](job.values[span[0] : span[1]], low, div, job.mode, bins, partial[t])
            else:
                k["count_points"](job.values, job.lesion, low, div, job.mode, bins, partial[t])
        else:
            r = job.row_maps
            if row == 1:
                k["count_rows"](r.rows, job.row_index, span[0], span[1], r.i0, r.i1, r.l0, r.l1, low, div, job.mode,
                                bins, partial[t])
            else:
                k["count_row_points"](r.rows, job.row_index, r.i0, r.i1, r.l0, r.l1, job.lesion, low, div, job.mode,
                                      bins, partial[t])

    run_all(run, len(tasks), threads)
    out = np.zeros((len(maps), 2, bins + 1), np.int64)
    for t, (m, row, _) in enumerate(tasks):
        out[m, row] += partial[t]
    return out


def warm_up() -> None:
    """Compile every loop now (about 2 s), so that no image's scoring time holds the compilation."""
    import torch

    from wsl_bench.evaluation.cpu_resize import RowMaps

    values = np.linspace(0, 1, 64, dtype=np.float32)
    rows = RowMaps.of(torch.from_numpy(values.reshape(1, 1, 8, 8)), (16, 16))
    rows.ranges(threads=1)
    lesion = np.arange(3, dtype=np.int64)
    for mode in (NORMALISE_NONE, NORMALISE_CLAMP, NORMALISE_MIN_MAX):
        jobs = [MapToBin(values, lesion, 0.0, 1.0, mode), MapToBin(None, lesion, 0.0, 1.0, mode, rows, 0)]
        histograms(jobs, 10, threads=1)
