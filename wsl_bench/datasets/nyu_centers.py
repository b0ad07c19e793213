"""Step 2 of the published NYU preprocessing: each view's optimal centre (``best_center``).

The rules are those of ``src/optimal_centers/`` in the published GMIC/GLAM code (nyukat); this is
an independent, vectorised implementation of them. On the cropped image, flipped so the breast
points right (``horizontal_flip`` 'NO' flips the right views, 'YES' the left views), with a model
frame of ``F = (Fh, Fw)`` = 2944×1920, ``half = F // 2`` and ``com = (h // 2, w // 2)``:

* candidate centres along an axis run from ``half`` to ``size - (F - half)`` inclusive, every
  pixel (step 1, no downsampling); where that range is empty (image no larger than the frame
  along the axis) the only candidate is ``com``;
* CC views: the column is fixed to ``rightmost_x - half_x - 1`` (the frame's right edge just left
  of the rightmost breast column); the published code skips this constraint when the column range
  holds no room, but compares against an exclusive bound so that case never occurs: the
  constraint always applies;
* MLO views: the centre is fixed to ``(b - half_y - 1, rightmost_x - half_x - 1)``, where ``b`` is
  ``bottommost_y``, lowered to the last row holding a nonzero pixel in the image's last ``Fw``
  columns (all columns when the image is narrower) when that row is higher;
* each candidate's window is the ``F`` box centred on it (``c - half`` to ``c + F - half``), moved
  down/right by what sticks out at the top/left and clipped at the bottom/right; its score is the
  number of pixels ``> 0`` in it (an integral image), the image's own pixels, not the breast mask;
* the best centre has the highest score; among ties the one nearest ``com`` (squared Euclidean
  distance), and among equally near ones the first in row-major order (smaller row first, then
  smaller column), as ``np.argmin`` over the published ``(y, x)`` grid order picks.

The centre may lie outside the image (a negative column for a narrow breast): the loader's window
(:func:`wsl_bench.datasets.nyu.nyu_window`) shifts or pads the frame as the published loader does.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["MODEL_FRAME", "best_center", "candidate_axes", "flip_for_view", "window_scores"]

MODEL_FRAME: tuple[int, int] = (2944, 1920)
"""The published model input size (``INPUT_SIZE_DICT``), the same for every view."""


def flip_for_view(image: np.ndarray, view: str, horizontal_flip: str) -> np.ndarray:
    """``image`` mirrored left–right when the exam's ``horizontal_flip`` says this view must be.

    'NO': right views (``R-CC``, ``R-MLO``) are flipped; 'YES': left views. Any other value flips
    nothing (as the published ``flip_image`` does). Returns a view, not a copy.
    """
    right = view.startswith("R")
    if (horizontal_flip == "NO" and right) or (horizontal_flip == "YES" and not right):
        return image[:, ::-1]
    return image


def _axis_range(size: int, center: int, frame: int) -> tuple[int, int]:
    """``[first, last]`` candidate centres along one axis (both inclusive)."""
    half = frame // 2
    first, last = half, size - (frame - half)
    if first >= last:  # the published code tests >=, so a single-position range also falls back to com
        return center, center
    return first, last


def candidate_axes(
    image: np.ndarray,
    view: str,
    rightmost_x: int,
    bottommost_y: int,
    frame: Sequence[int] = MODEL_FRAME,
) -> tuple[np.ndarray, np.ndarray]:
    """Candidate rows and columns of the optimal-centre search (the grid is their product).

    Args:
        image: ``h×w`` cropped image, flipped (breast pointing right).
        view: the full view name; CC and MLO differ.
        rightmost_x: ``rightmost_points[1]``.
        bottommost_y: ``bottommost_points[0]``.
        frame: ``(Fh, Fw)``.

    Returns:
        ``(ys, xs)``, 1-D int64 arrays.
    """
    h, w = image.shape
    fh, fw = int(frame[0]), int(frame[1])
    if view.endswith("MLO"):
        # the last nonzero row among the rightmost Fw columns caps bottommost_y (empty rows below
        # the breast in that band would otherwise push the frame past the breast)
        band = image[:, max(w - fw, 0) :]
        rows = np.flatnonzero((band != 0).any(axis=1))
        bottom = min(int(rows[-1]), int(bottommost_y)) if len(rows) else int(bottommost_y)
        y = bottom - fh // 2 - 1
        x = int(rightmost_x) - fw // 2 - 1
        return np.array([y], dtype=np.int64), np.array([x], dtype=np.int64)
    if view.endswith("CC"):
        y0, y1 = _axis_range(h, h // 2, fh)
        x = int(rightmost_x) - fw // 2 - 1
        return np.arange(y0, y1 + 1, dtype=np.int64), np.array([x], dtype=np.int64)
    raise ValueError(f"view must end with CC or MLO, got {view!r}")


def window_scores(image: np.ndarray, ys: np.ndarray, xs: np.ndarray, frame: Sequence[int] = MODEL_FRAME) -> np.ndarray:
    """Nonzero-pixel count of the frame window around every candidate ``(y, x)``.

    Args:
        image: ``h×w`` flipped cropped image.
        ys, xs: candidate rows and columns.
        frame: ``(Fh, Fw)``.

    Returns:
        ``len(ys)×len(xs)`` int64 scores (row ``i`` for ``ys[i]``).

    Raises:
        ValueError: a candidate whose window would start beyond the image (the published code
            asserts against it; the candidates of :func:`candidate_axes` never do).
    """
    h, w = image.shape
    integral = np.zeros((h + 1, w + 1), dtype=np.int64)
    np.cumsum(np.cumsum(image > 0, axis=0, dtype=np.int64), axis=1, out=integral[1:, 1:])

    def bounds(centers: np.ndarray, frame_size: int, size: int) -> tuple[np.ndarray, np.ndarray]:
        half = frame_size // 2
        start = centers - half
        shift = np.clip(-start, 0, None)  # what sticks out before 0 moves the window forward
        start = np.clip(start, 0, None)
        stop = np.minimum(centers + (frame_size - half) + shift, size)
        if np.any(stop < start):
            raise ValueError(f"a candidate window starts beyond the image (size {size}, centres {centers.tolist()})")
        return start, stop

    t, b = bounds(np.asarray(ys, dtype=np.int64), int(frame[0]), h)
    left, r = bounds(np.asarray(xs, dtype=np.int64), int(frame[1]), w)
    t, b = t[:, None], b[:, None]
    return integral[b, r] - integral[t, r] - integral[b, left] + integral[t, left]


def best_center(
    image: np.ndarray,
    view: str,
    rightmost_points: Sequence,
    bottommost_points: Sequence,
    frame: Sequence[int] = MODEL_FRAME,
) -> tuple[int, int]:
    """The optimal centre ``(y, x)`` of one cropped, flipped image.

    Args:
        image: ``h×w`` cropped image flipped with :func:`flip_for_view`.
        view: ``L-CC``, ``R-CC``, ``L-MLO`` or ``R-MLO``.
        rightmost_points: ``((y_first, y_last), x)`` from the cropping step.
        bottommost_points: ``(y, (x_first, x_last))`` from the cropping step.
        frame: ``(Fh, Fw)``; the published 2944×1920 by default.

    Returns:
        ``(y, x)`` as Python ints, in the flipped cropped image's coordinates.
    """
    ys, xs = candidate_axes(image, view, int(rightmost_points[1]), int(bottommost_points[0]), frame)
    if len(ys) * len(xs) == 1:
        return int(ys[0]), int(xs[0])
    scores = window_scores(image, ys, xs, frame).ravel()  # row-major: the published (y, x) grid order
    best = np.flatnonzero(scores == scores.max())
    if len(best) > 1:
        h, w = image.shape
        cy, cx = ys[best // len(xs)], xs[best % len(xs)]
        distance = (cy - h // 2) ** 2 + (cx - w // 2) ** 2
        best = best[[int(np.argmin(distance))]]  # first minimum: the earliest in row-major order
    k = int(best[0])
    return int(ys[k // len(xs)]), int(xs[k % len(xs)])
