"""Bilinear resizing of low-resolution maps to the image size on the CPU, without materialising it.

A GMIC or CAM map is a few dozen pixels on a side; the scorer resizes it to 2944×1920 (bilinear,
``align_corners=False``) before binning. ``F.interpolate`` writes 22 MB per map for that, which
took 46 ms for one image's two maps on the 2-core machine, more than GMIC's whole scoring budget.
Bilinear resizing is separable: every output pixel of row ``y`` mixes two rows of the map resized
along its width only (``rows``, ``h×W``, a few hundred KB). So this module resizes the width once
and leaves the height to whoever reads a pixel: the histogram loop (``cpu_histograms``), the range
pass and, for the few figure images, :meth:`RowMaps.materialise`.

Values equal ``F.interpolate``'s bit for bit where torch's CPU kernel computes what this module
does: per axis, source index ``max(s·(d + ½) − ½, 0)`` with ``s = in/out`` in float32, weights
``λ1 = clamp(real − ⌊real⌋, 0, 1)``, ``λ0 = 1 − λ1``; along the width ``fma(x0, λ0, x1·λ1)``, then
along the height ``fma(r0, λ0, r1·λ1)`` (torch 2.x's vectorised kernel, compiled with fused
multiply-add). That holds on this project's machines for integer upscaling factors (the maps of
GMIC, CAM and GLAM's global network); it may not hold for other factors or on a CPU without FMA.
So :func:`verified` checks each geometry once per process against ``F.interpolate`` on the first
maps that need it, and the scorer falls back to ``F.interpolate`` where they differ.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from wsl_bench.evaluation.cpu_threads import SEGMENT_PIXELS, run_all

log = logging.getLogger(__name__)


def axis_table(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Source indices and weights of bilinear resizing along one axis (``align_corners=False``).

    Returns:
        ``(i0, i1, l0, l1)``, each of length ``out_size``: output ``d`` is
        ``fma(x[i0], l0, x[i1] · l1)`` (``i0``/``i1`` int64, ``l0``/``l1`` float32).
    """
    scale = np.float32(in_size) / np.float32(out_size)
    real = np.maximum(scale * (np.arange(out_size, dtype=np.float32) + np.float32(0.5)) - np.float32(0.5),
                      np.float32(0))
    i0 = np.minimum(np.floor(real).astype(np.int64), in_size - 1)
    l1 = np.clip(real - i0.astype(np.float32), np.float32(0), np.float32(1)).astype(np.float32)
    l0 = (np.float32(1) - l1).astype(np.float32)
    i1 = np.where(i0 < in_size - 1, i0 + 1, i0)
    return i0, i1, l0, l1


@lru_cache(maxsize=1)
def kernels() -> dict[str, Any]:
    """The compiled loops (compiled at first use). ``fma32`` is LLVM's ``llvm.fma.f32``: one rounding,
    as the CPU's fused multiply-add instruction does."""
    import numba
    from numba import types
    from numba.extending import intrinsic

    @intrinsic
    def fma32(typingctx, a, b, c):  # pragma: no cover (compiled)
        def codegen(context, builder, signature, args):
            return builder.fma(*args)

        return types.float32(types.float32, types.float32, types.float32), codegen

    @numba.njit(nogil=True, boundscheck=False, cache=False)
    def resize_width(small, i0, i1, l0, l1, out):  # pragma: no cover (compiled)
        """``out[r, x] = fma(small[r, i0[x]], l0[x], small[r, i1[x]] · l1[x])`` (``small``: M×h×w)."""
        for m in range(small.shape[0]):
            for r in range(small.shape[1]):
                for x in range(out.shape[2]):
                    out[m, r, x] = fma32(small[m, r, i0[x]], l0[x], small[m, r, i1[x]] * l1[x])

    @numba.njit(nogil=True, boundscheck=False, cache=False, inline="always")
    def pixel_row(rows, m, y, i0, i1, l0, l1, out):  # pragma: no cover (compiled)
        """Row ``y`` of map ``m`` at the image size into ``out`` (float32, W)."""
        a, b = rows[m, i0[y]], rows[m, i1[y]]
        w0, w1 = l0[y], l1[y]
        for x in range(out.shape[0]):
            out[x] = fma32(a[x], w0, b[x] * w1)

    @numba.njit(nogil=True, boundscheck=False, cache=False)
    def materialise(rows, m, start, i0, i1, l0, l1, out):  # pragma: no cover (compiled)
        """Rows ``start:start + len(out)`` of map ``m`` at the image size into ``out`` (rows × W)."""
        for y in range(out.shape[0]):
            pixel_row(rows, m, start + y, i0, i1, l0, l1, out[y])

    return {"fma32": fma32, "resize_width": resize_width, "pixel_row": pixel_row, "materialise": materialise}


@dataclass
class RowMaps:
    """Maps at the image size ``H×W``, held as their width-resized rows.

    Attributes:
        rows: ``M×h×W`` float32: each of the M maps (image-major, class-minor) resized along its width.
        i0, i1, l0, l1: the height's :func:`axis_table` (length H).
    """

    rows: np.ndarray
    i0: np.ndarray
    i1: np.ndarray
    l0: np.ndarray
    l1: np.ndarray

    @classmethod
    def of(cls, maps: torch.Tensor, size: tuple[int, int]) -> RowMaps:
        """``maps``: ``N×C×h×w`` float32 on the CPU, resized (virtually) to ``size``."""
        small = np.ascontiguousarray(maps.reshape(-1, *maps.shape[-2:]).numpy())
        j0, j1, k0, k1 = axis_table(small.shape[2], size[1])
        rows = np.empty((small.shape[0], small.shape[1], size[1]), np.float32)
        kernels()["resize_width"](small, j0, j1, k0, k1, rows)
        return cls(rows, *axis_table(small.shape[1], size[0]))

    @property
    def size(self) -> tuple[int, int]:
        return len(self.i0), self.rows.shape[2]

    def materialise(self, m: int) -> np.ndarray:
        """Map ``m`` at the image size (``H×W`` float32)."""
        out = np.empty(self.size, np.float32)
        kernels()["materialise"](self.rows, m, 0, self.i0, self.i1, self.l0, self.l1, out)
        return out

    def ranges(self, threads: int) -> np.ndarray:
        """``M×2`` float64: min and max of every map at the image size (exact: float32 values)."""
        materialise = kernels()["materialise"]
        height, width = self.size
        step = max(1, min(height, SEGMENT_PIXELS // width))
        tasks = [(m, y) for m in range(self.rows.shape[0]) for y in range(0, height, step)]
        partial = np.empty((len(tasks), 2), np.float64)
        block = 64  # rows formed at a time (half a MB at 1920 wide: stays in cache for min and max)

        def run(t: int) -> None:
            m, y = tasks[t]
            buffer = np.empty((block, width), np.float32)
            low, high = np.inf, -np.inf
            for start in range(y, min(height, y + step), block):
                lines = buffer[: min(block, height - start, y + step - start)]
                materialise(self.rows, m, start, self.i0, self.i1, self.l0, self.l1, lines)
                low, high = min(low, float(lines.min())), max(high, float(lines.max()))  # numpy's SIMD loops
            partial[t] = low, high

        run_all(run, len(tasks), threads)
        out = np.empty((self.rows.shape[0], 2), np.float64)
        owner = np.array([m for m, _ in tasks])
        for m in range(self.rows.shape[0]):
            out[m] = partial[owner == m, 0].min(), partial[owner == m, 1].max()
        return out


_verdicts: dict[tuple[int, int, int, int], bool] = {}


def verified(maps: torch.Tensor, size: tuple[int, int]) -> bool:
    """Whether :class:`RowMaps` resizes ``maps`` (``N×C×h×w``, CPU float32) to ``size`` exactly as
    ``F.interpolate`` does. Checked once per ``(h, w) → size`` in a process, on these maps (one
    ``F.interpolate`` of the batch); later calls answer from that check."""
    key = (int(maps.shape[-2]), int(maps.shape[-1]), int(size[0]), int(size[1]))
    verdict = _verdicts.get(key)
    if verdict is None:
        reference = F.interpolate(maps, size=size, mode="bilinear", align_corners=False)
        reference = reference.reshape(-1, *size).numpy()
        row_maps = RowMaps.of(maps, size)
        verdict = all(np.array_equal(row_maps.materialise(m), reference[m]) for m in range(reference.shape[0]))
        _verdicts[key] = verdict
        if not verdict:
            log.info("resizing %d×%d maps to %d×%d: torch's bilinear kernel rounds differently from the "
                     "separable resize on this machine; scoring materialises the resized maps (slower)", *key)
    return verdict
