"""Training-time augmentation whose randomness is a pure function of (seed, epoch, position).

The trainer gives every training image its own ``numpy.random.Generator`` seeded by the training
seed, the epoch and the image's position in that epoch's order (:func:`sample_rng`). An augmentation
draws only from that generator, so the augmented batch does not depend on what ran before: a run
resumed from a checkpoint, or one whose global batch is split over several ranks, sees exactly the
same augmented images as an uninterrupted single-process run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from torch.nn import functional as F

PUBLISHED_HEIGHT = 2944
"""Image height at which published pixel amounts (e.g. GMIC's 100-pixel crop jitter) are given."""


def sample_rng(seed: int, epoch: int, position: int) -> np.random.Generator:
    """The generator of the image at ``position`` of epoch ``epoch``'s order."""
    return np.random.default_rng([seed, epoch, position, 0xA06])


class Augmentation(Protocol):
    """``augment(image 1×H×W, rng) -> 1×H×W``: one training image, randomness from ``rng`` only."""

    def __call__(self, image: torch.Tensor, rng: np.random.Generator) -> torch.Tensor: ...


@dataclass(frozen=True)
class CropJitter:
    """Random crop-window jitter (the GMIC training augmentation).

    The crop window, initially the whole image, has its height and width changed by up to
    ``max_pixels`` each and its centre moved by up to ``max_pixels`` along each axis (uniform draws);
    the window is then resampled to the input size (bilinear). Parts of the window outside the image
    take the image's minimum (the background of a standardised mammogram).

    Attributes:
        max_pixels: jitter amplitude in pixels of the images it is applied to.
    """

    max_pixels: float

    @classmethod
    def scaled(cls, published_pixels: float, image_size: tuple[int, int]) -> CropJitter:
        """Jitter given in pixels at the published 2944-row resolution, scaled to ``image_size``."""
        return cls(published_pixels * image_size[0] / PUBLISHED_HEIGHT)

    def draw(self, rng: np.random.Generator) -> np.ndarray:
        """``[d_height, d_width, d_row, d_col]`` in pixels, each uniform in ±``max_pixels``."""
        return rng.uniform(-1.0, 1.0, size=4) * self.max_pixels

    def __call__(self, image: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        """Args:
        image: ``1×H×W`` float.
        rng: this image's generator (:func:`sample_rng`).

        Returns:
            ``1×H×W`` the resampled window.
        """
        if self.max_pixels <= 0:
            return image
        _, height, width = image.shape
        d_height, d_width, d_row, d_col = self.draw(rng)
        # affine_grid works in normalised coordinates [-1, 1]: the window's half-size and centre.
        theta = torch.tensor(
            [
                [(width + d_width) / width, 0.0, 2.0 * d_col / width],
                [0.0, (height + d_height) / height, 2.0 * d_row / height],
            ],
            dtype=torch.float32,
            device=image.device,
        )[None]
        grid = F.affine_grid(theta, [1, 1, height, width], align_corners=False)
        floor = image.min()
        # zero padding of (image − min) is padding with the image minimum
        out = F.grid_sample((image - floor)[None].float(), grid, mode="bilinear", padding_mode="zeros",
                            align_corners=False)[0]
        return (out + floor).to(image.dtype)


@dataclass(frozen=True)
class VerticalFlip:
    """Flip the image upside down with probability ``probability`` (rows reversed).

    Up-down is the one mirror that keeps a mammogram plausible: the chest wall stays on its side, and
    CC views are symmetric about the nipple line; MLO views put the pectoral muscle at the bottom,
    which the models must then not rely on.
    """

    probability: float = 0.5

    def __call__(self, image: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        """``1×H×W`` → ``1×H×W``, flipped or not by one draw from ``rng``."""
        return image.flip(-2) if rng.uniform() < self.probability else image
