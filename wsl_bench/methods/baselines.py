"""Trivial baselines every learned method must beat: the floor of every benchmark
(docs/architecture.md#reference-points-the-floor-and-the-ceiling).

- ``random``: uniform noise; the floor of every metric.
- ``centre_prior``: a Gaussian bump at the centre of the breast region, the best one can do knowing
  only where tissue usually is.
- ``intensity``: the image itself; lesions are often brighter than fat, so a method that does not
  beat this has learned nothing beyond "bright is suspicious".

None has an image-level classifier: their ``scores`` are a constant 0.5, so their AUC is 0.5.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from wsl_bench.registry import METHODS
from wsl_bench.saliency import CLASSES, SaliencyMethod, SaliencyOutput


def _constant_scores(images: torch.Tensor) -> torch.Tensor:
    """``N×C`` scores of 0.5: "no opinion" on every image."""
    return torch.full((images.shape[0], len(CLASSES)), 0.5, device=images.device)


@METHODS.register("random")
class RandomSaliency(SaliencyMethod):
    """Uniform random maps, seeded per image content so batching does not change them."""

    description: ClassVar[str] = "uniform random map (lower bound of every metric)"
    map_range: ClassVar[str] = "probability"

    def __init__(self, resolution: tuple[int, int] = (64, 64), **kwargs) -> None:
        super().__init__(**kwargs)
        self.resolution = tuple(resolution)

    @torch.inference_mode()
    def predict(self, images: torch.Tensor) -> SaliencyOutput:
        maps = []
        for image in images:
            # Seed from the method seed and the image content: the same image always gets the
            # same map, whether it arrives alone or in a batch (a conformance requirement).
            content_key = int(torch.round(image.double().abs().sum() * 1000).item()) % (2**31)
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + content_key)
            maps.append(torch.rand((len(CLASSES), *self.resolution), generator=generator))
        return SaliencyOutput(torch.stack(maps).to(images.device), _constant_scores(images), "probability")


@METHODS.register("centre_prior")
class CentrePriorSaliency(SaliencyMethod):
    """A Gaussian bump centred on the breast tissue of each image (same map for both classes)."""

    description: ClassVar[str] = "Gaussian bump at the centre of the breast region (location prior only)"
    map_range: ClassVar[str] = "unbounded"

    def __init__(self, sigma_fraction: float = 0.25, resolution: tuple[int, int] = (128, 128), **kwargs) -> None:
        super().__init__(**kwargs)
        self.sigma_fraction = sigma_fraction
        self.resolution = tuple(resolution)

    @torch.inference_mode()
    def predict(self, images: torch.Tensor) -> SaliencyOutput:
        n = images.shape[0]
        small = torch.nn.functional.adaptive_avg_pool2d(images, self.resolution)  # N×1×h×w
        # Background is the darkest value of each standardised image; tissue is anything above it.
        background = small.flatten(1).min(dim=1).values.view(n, 1, 1, 1)
        tissue = (small > background + 0.1).float()
        h, w = self.resolution
        rows = torch.arange(h, device=images.device, dtype=torch.float32).view(1, 1, h, 1)
        cols = torch.arange(w, device=images.device, dtype=torch.float32).view(1, 1, 1, w)
        mass = tissue.sum(dim=(2, 3), keepdim=True).clamp_min(1.0)
        centre_r = (tissue * rows).sum(dim=(2, 3), keepdim=True) / mass
        centre_c = (tissue * cols).sum(dim=(2, 3), keepdim=True) / mass
        sigma_r, sigma_c = self.sigma_fraction * h, self.sigma_fraction * w
        bump = torch.exp(-0.5 * (((rows - centre_r) / sigma_r) ** 2 + ((cols - centre_c) / sigma_c) ** 2))
        maps = (bump * tissue).expand(n, len(CLASSES), h, w).contiguous()
        return SaliencyOutput(maps, _constant_scores(images), "unbounded")


@METHODS.register("intensity")
class IntensitySaliency(SaliencyMethod):
    """The image itself as the map for both classes (min–max scaled by the harness)."""

    description: ClassVar[str] = "the image itself, min-max scaled ('bright is suspicious')"
    map_range: ClassVar[str] = "unbounded"

    @torch.inference_mode()
    def predict(self, images: torch.Tensor) -> SaliencyOutput:
        maps = images.expand(-1, len(CLASSES), -1, -1).clone()
        return SaliencyOutput(maps, _constant_scores(images), "unbounded")
