"""How conspicuous lesions are: two image measures, the same on real and synthetic mammograms.

A weakly-supervised benchmark is only as hard as its lesions are hard to see. On real screening
mammograms dense tissue and the pectoral muscle are as bright as most masses; what tells a lesion
from tissue is its form. Two numbers per lesion say how much brightness alone gives away:

* **contrast** (:func:`lesion_contrasts`): the lesion's mean intensity minus the mean of a ring of
  breast pixels 1–4 px outside its mask, in units of the breast's intensity standard deviation;
* **percentile** (:func:`lesion_percentiles`): the fraction of the breast's pixels darker than the
  lesion's mean intensity.

Both are invariant to an affine intensity transform (standardised images give the values the raw
pixels give). The breast is every pixel above the image's minimum (the background of a mammogram is
its darkest value); a lesion is a 8-connected component of a class mask. The ring is
``{p : 1 < d(p, lesion) ≤ 4}`` with ``d`` the Euclidean distance to the lesion's mask (the mask
dilated by a 4-px disc minus the mask dilated by a 1-px disc), restricted to the breast.

Measured on the two annotated views of the published NYU sample (one benign mass, in the published
model frame, at 736×480) the contrast is 0.46 and 0.25 and the percentile 0.73 and 0.72
(``datasets/synthetic.md``, "Conspicuity").
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

RING_INNER_PX = 1.0
RING_OUTER_PX = 4.0


@dataclass(frozen=True)
class LesionConspicuity:
    """The two measures of one lesion (a connected component of a class mask).

    Attributes:
        contrast: (lesion mean − ring mean) / breast sd.
        percentile: fraction of breast pixels below the lesion mean, in [0, 1].
        area_px: the lesion's pixels inside the breast.
    """

    contrast: float
    percentile: float
    area_px: int


def breast_region(image: np.ndarray) -> np.ndarray:
    """``H×W`` bool: the pixels above the image's minimum (a mammogram's background is its darkest value)."""
    image = np.asarray(image)
    return image > image.min()


def lesion_components(mask: np.ndarray) -> list[np.ndarray]:
    """The 8-connected components of ``mask`` (``H×W`` bool), one ``H×W`` bool mask each."""
    labels, count = ndimage.label(np.asarray(mask, dtype=bool), structure=np.ones((3, 3), dtype=bool))
    return [labels == k for k in range(1, count + 1)]


def measure_lesion(image: np.ndarray, lesion: np.ndarray, breast: np.ndarray | None = None) -> LesionConspicuity | None:
    """Contrast and percentile of one lesion.

    Args:
        image: ``H×W`` intensities (raw or standardised).
        lesion: ``H×W`` bool mask of one lesion.
        breast: ``H×W`` bool breast region (default :func:`breast_region`).

    Returns:
        the measures, or ``None`` when the lesion has no pixel in the breast or no ring pixel.
    """
    image = np.asarray(image, dtype=np.float64)
    breast = breast_region(image) if breast is None else breast
    inside = lesion & breast
    if not inside.any():
        return None
    distance = ndimage.distance_transform_edt(~lesion)
    ring = (distance > RING_INNER_PX) & (distance <= RING_OUTER_PX) & breast
    if not ring.any():
        return None
    breast_values = image[breast]
    sd = float(breast_values.std())
    lesion_mean = float(image[inside].mean())
    contrast = (lesion_mean - float(image[ring].mean())) / sd if sd > 0 else 0.0
    percentile = float((breast_values < lesion_mean).mean())
    return LesionConspicuity(contrast, percentile, int(inside.sum()))


def measure_image(image: np.ndarray, mask: np.ndarray) -> list[LesionConspicuity]:
    """The measures of every lesion (connected component) of ``mask`` on ``image`` (both ``H×W``)."""
    breast = breast_region(image)
    measured = (measure_lesion(image, lesion, breast) for lesion in lesion_components(mask))
    return [m for m in measured if m is not None]


def lesion_contrasts(measures: list[LesionConspicuity]) -> np.ndarray:
    """The contrasts of ``measures`` as an array (for medians over lesions)."""
    return np.array([m.contrast for m in measures], dtype=np.float64)


def lesion_percentiles(measures: list[LesionConspicuity]) -> np.ndarray:
    """The percentiles of ``measures`` as an array."""
    return np.array([m.percentile for m in measures], dtype=np.float64)


@dataclass(frozen=True)
class ClassConspicuity:
    """Medians over the lesions of one class in a set of images.

    Attributes:
        contrast: median :attr:`LesionConspicuity.contrast`.
        percentile: median :attr:`LesionConspicuity.percentile`.
        lesions: how many lesions were measured.
    """

    contrast: float
    percentile: float
    lesions: int


def summarise(items: Iterable[tuple[np.ndarray, dict[str, np.ndarray | None]]]) -> dict[str, ClassConspicuity]:
    """Per class, the medians of both measures over every lesion of ``items`` (``(H×W image, class →
    H×W mask)`` pairs, e.g. a synthetic split's ``(image_u16, masks)``); classes without a lesion are left out."""
    measured: dict[str, list[LesionConspicuity]] = {}
    for image, masks in items:
        for cls, mask in masks.items():
            if mask is not None and mask.any():
                measured.setdefault(cls, []).extend(measure_image(image, mask))
    return {cls: ClassConspicuity(float(np.median(lesion_contrasts(ms))), float(np.median(lesion_percentiles(ms))),
                                  len(ms))
            for cls, ms in measured.items() if ms}


__all__ = [
    "ClassConspicuity",
    "summarise",
    "LesionConspicuity",
    "breast_region",
    "lesion_components",
    "lesion_contrasts",
    "lesion_percentiles",
    "measure_image",
    "measure_lesion",
]
