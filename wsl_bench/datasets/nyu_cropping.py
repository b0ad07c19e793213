"""Step 1 of the published NYU preprocessing: crop a raw mammogram to the breast.

The rules are those of ``src/cropping/crop_mammogram.py`` in the published GMIC/GLAM code
(nyukat); this is an independent, vectorised implementation of them. For a raw ``H×W`` image
(unflipped, as stored):

1. foreground = pixels ``> 0``;
2. erosion with the 4-connected cross, ``iterations`` times (100), pixels outside the image
   counting as background (removes thin lines and small marks);
3. the largest 4-connected component of what is left (the first in raster order on a tie);
4. dilation with the cross, ``iterations`` times (recovers the breast without the thin lines);
5. the bounding box of that mask, widened by ``buffer_size`` (50) pixels at the top and bottom
   and on the side the breast points to (never past the image border);
6. recorded points, in the cropped *and flipped* frame (the breast pointing right):
   ``rightmost_points`` ``((y_first, y_last), x)`` — the column of the mask farthest along the
   breast's direction, searched below the top third of the crop, and the first/last mask rows in
   that column; ``bottommost_points`` ``(y, (x_first, x_last))`` — the mask's last row and its
   first/last mask columns; and ``distance_from_starting_side``, the number of empty columns
   between the chest-wall side of the image and the mask (0 for a well-oriented image).

Iterated erosion/dilation with the cross equals erosion/dilation with the taxicab (L1) ball of
radius ``iterations``, so both are computed from city-block distance transforms (two passes over
the image, whatever the iteration count). Where the published code gives a point one column off
a true mirror image (``x_edge_right - x`` and ``crop_width - x`` instead of ``... - 1 - x`` for
breasts pointing left), that is reproduced: the recorded numbers are the published ones, and the
optimal-centre step that reads them expects exactly those.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import ndimage

__all__ = [
    "BUFFER_SIZE",
    "ERODE_ITERATIONS",
    "RIGHTMOST_FROM_RATIO",
    "CropInfo",
    "NoBreastError",
    "breast_mask",
    "crop_info",
    "crop_mammogram",
    "image_orientation",
]

ERODE_ITERATIONS = 100
"""Erosion and dilation iterations (``--num-iterations`` of the published script)."""
BUFFER_SIZE = 50
"""Pixels added around the breast's bounding box (``--buffer-size`` of the published script)."""
RIGHTMOST_FROM_RATIO = 1 / 3
"""Fraction of the crop's height, from the top, ignored when searching the rightmost points.
A float under Python 3, the published code's version (under Python 2 ``1 / 3`` is 0)."""

Mode = Literal["left", "right"]


class NoBreastError(ValueError):
    """No foreground region survives the erosion: a blank image, or one without a breast."""


@dataclass(frozen=True)
class CropInfo:
    """What the cropping step records for one image (the published exam-list values).

    Attributes:
        window_location: ``(top, bottom, left, right)`` of the crop in the raw, unflipped image
            (bottom and right exclusive).
        rightmost_points: ``((y_first, y_last), x)`` in the cropped, flipped frame.
        bottommost_points: ``(y, (x_first, x_last))`` in the cropped, flipped frame.
        distance_from_starting_side: empty columns between the chest-wall side of the raw image
            and the breast mask (before the buffer).
    """

    window_location: tuple[int, int, int, int]
    rightmost_points: tuple[tuple[int, int], int]
    bottommost_points: tuple[int, tuple[int, int]]
    distance_from_starting_side: int

    @property
    def shape(self) -> tuple[int, int]:
        """``(height, width)`` of the cropped image."""
        top, bottom, left, right = self.window_location
        return bottom - top, right - left


def image_orientation(horizontal_flip: str, side: str) -> Mode:
    """The direction the breast points in the raw image: ``'right'`` (chest wall on the left) or ``'left'``.

    With ``horizontal_flip`` 'NO' left breasts point right and right breasts left; 'YES' swaps them.

    Raises:
        ValueError: ``horizontal_flip`` is not 'NO'/'YES' or ``side`` not 'L'/'R'.
    """
    if horizontal_flip not in ("NO", "YES"):
        raise ValueError(f"horizontal_flip must be 'NO' or 'YES', got {horizontal_flip!r}")
    if side not in ("L", "R"):
        raise ValueError(f"side must be 'L' or 'R', got {side!r}")
    points_right = (side == "L") == (horizontal_flip == "NO")
    return "right" if points_right else "left"


def _erode(mask: np.ndarray, radius: int) -> np.ndarray:
    """Erosion by the L1 ball of ``radius`` with the outside of the image as background.

    A pixel survives iff every pixel within city-block distance ``radius`` is inside the image and
    foreground, i.e. iff its distance to the nearest background pixel (the one-pixel ring around
    the image included) exceeds ``radius``.
    """
    padded = np.pad(mask, 1, constant_values=False)
    distance = ndimage.distance_transform_cdt(padded, metric="taxicab")
    return distance[1:-1, 1:-1] > radius


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Dilation by the L1 ball of ``radius``, clipped to the image (``mask`` must hold a pixel)."""
    # distance from every pixel to the nearest mask pixel; a rectangle is convex for city-block
    # paths, so the distance inside the image equals the one an unbounded image would give
    distance = ndimage.distance_transform_cdt(~mask, metric="taxicab")
    return distance <= radius


def breast_mask(image: np.ndarray, iterations: int = ERODE_ITERATIONS) -> np.ndarray:
    """The breast as the published cropping finds it: opening of the largest eroded component.

    Args:
        image: ``H×W`` raw image (any numeric dtype; foreground is ``> 0``).
        iterations: erosion and dilation iterations (at least 1).

    Returns:
        ``H×W`` bool mask.

    Raises:
        NoBreastError: nothing survives the erosion (the reason names which case).
    """
    if iterations < 1:
        raise ValueError(f"iterations must be at least 1, got {iterations}")
    image = np.asarray(image)
    foreground = image > 0
    if not foreground.any():
        raise NoBreastError("blank image: every pixel is 0, no breast to crop")
    if image.size and image.min() == image.max():  # all white (or any one value): no background, no outline
        raise NoBreastError(f"constant image: every pixel is {image.flat[0]}, no breast outline to crop")
    eroded = _erode(foreground, iterations)
    if not eroded.any():
        raise NoBreastError(
            f"no breast found: no foreground region survives {iterations} erosion iterations (it is thinner "
            f"than {2 * iterations + 1} pixels everywhere)"
        )
    labels, count = ndimage.label(eroded)  # default structure: the 4-connected cross
    if count > 1:
        sizes = np.bincount(labels.ravel())
        sizes[0] = 0  # background
        # np.argmax takes the first maximum: the lowest label, i.e. the component met first in
        # raster order, as the published pandas idxmax over labels in increasing order does
        eroded = labels == int(np.argmax(sizes))
    return _dilate(eroded, iterations)


def _first_last(flags: np.ndarray) -> tuple[int, int]:
    """Indices of the first and last True of a 1-D bool array (which holds one)."""
    where = np.flatnonzero(flags)
    return int(where[0]), int(where[-1])


def crop_info(mask: np.ndarray, mode: Mode, buffer_size: int = BUFFER_SIZE) -> CropInfo:
    """The crop window and recorded points of a breast mask (see the module docstring).

    Args:
        mask: ``H×W`` bool, the output of :func:`breast_mask` (non-empty).
        mode: the direction the breast points (:func:`image_orientation`).
        buffer_size: pixels added around the bounding box.
    """
    if mode not in ("left", "right"):
        raise ValueError(f"mode must be 'left' or 'right', got {mode!r}")
    height, width = mask.shape
    y_first, y_last = _first_last(mask.any(axis=1))
    x_first, x_last = _first_last(mask.any(axis=0))
    top, bottom, left, right = y_first, y_last + 1, x_first, x_last + 1
    bottom_x_first, bottom_x_last = _first_last(mask[y_last])

    distance_from_starting_side = width - right if mode == "left" else left
    top, bottom = max(top - buffer_size, 0), min(bottom + buffer_size, height)
    if mode == "left":  # the buffer goes on the side the breast points to only
        left = max(left - buffer_size, 0)
    else:
        right = min(right + buffer_size, width)

    if mode == "left":  # the flipped frame's columns, as published: right - x (not right - 1 - x)
        bottommost = (y_last - top, (right - bottom_x_last, right - bottom_x_first))
    else:
        bottommost = (y_last - top, (bottom_x_first - left, bottom_x_last - left))

    cropped = mask[top:bottom, left:right]
    skip = int(cropped.shape[0] * RIGHTMOST_FROM_RATIO)  # float product truncated, as published
    search = cropped[skip:]
    columns = np.flatnonzero(search.any(axis=0))
    if not len(columns):  # cannot happen for a mask from breast_mask: its last row is in the crop
        raise NoBreastError("no breast pixel below the top third of the crop")
    column = int(columns[-1] if mode == "right" else columns[0])
    r_first, r_last = _first_last(search[:, column])
    rightmost_x = cropped.shape[1] - column if mode == "left" else column  # published: width - x
    return CropInfo(
        window_location=(int(top), int(bottom), int(left), int(right)),
        rightmost_points=((r_first + skip, r_last + skip), int(rightmost_x)),
        bottommost_points=(int(bottommost[0]), (int(bottommost[1][0]), int(bottommost[1][1]))),
        distance_from_starting_side=int(distance_from_starting_side),
    )


def crop_mammogram(
    image: np.ndarray,
    horizontal_flip: str,
    view: str,
    iterations: int = ERODE_ITERATIONS,
    buffer_size: int = BUFFER_SIZE,
) -> tuple[np.ndarray, CropInfo]:
    """Crop one raw image as the published step does.

    Args:
        image: ``H×W`` raw image, as stored (not flipped).
        horizontal_flip: the exam's 'NO'/'YES'.
        view: ``L-CC``, ``R-CC``, ``L-MLO`` or ``R-MLO``.
        iterations: erosion/dilation iterations.
        buffer_size: buffer pixels.

    Returns:
        ``(cropped, info)``: the ``h×w`` crop of ``image`` (a view, unflipped, as the published code
        saves it) and its :class:`CropInfo`.

    Raises:
        NoBreastError: blank image or no breast; ValueError: bad ``horizontal_flip``/``view``.
    """
    mode = image_orientation(horizontal_flip, view[:1])
    info = crop_info(breast_mask(image, iterations), mode, buffer_size)
    top, bottom, left, right = info.window_location
    return image[top:bottom, left:right], info
