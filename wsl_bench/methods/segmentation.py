"""Supervised reference points: a U-Net trained with lesion masks (``fsl`` and ``supervised``).

A weakly-supervised benchmark that selects checkpoints and thresholds on annotated validation images
must show what those annotations buy when a network is trained on them directly (Choe et al., CVPR
2020: such a few-shot learner beat every WSOL method they tested), and what the training split's
masks would give:

- ``fsl``: trained on the **validation** split's masks only, the annotations a WSOL method already
  uses for checkpoint and threshold selection;
- ``supervised``: trained on the **training** split's masks, the ceiling.

Both are the same network and loss; they differ only in the split whose masks they train on
(:attr:`~wsl_bench.saliency.TrainableMethod.mask_split`). The network is MONAI's ``BasicUNet``
(2-D), not written here. Neither is validated while it trains (validation reads the validation
masks): each trains a fixed budget, the image passes of one weakly-supervised training, and keeps its
final checkpoint (``wsl_bench.pipeline.mask_training``). They form their own report family,
"supervised (uses masks)", shown apart like the floor and never ranked with the weakly-supervised
methods (``wsl_bench.report.families``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import torch
from torch import nn
from torch.nn import functional as F

from wsl_bench.registry import METHODS
from wsl_bench.saliency import CLASSES, SaliencyOutput, TrainableMethod
from wsl_bench.training.augment import VerticalFlip

BASE_FEATURES: tuple[int, ...] = (32, 32, 64, 128, 256, 32)
"""MONAI ``BasicUNet``'s default channels (five encoder levels, then the last decoder level), which
``SegmentationConfig.width`` scales."""

LEVELS = 4
"""Max-poolings of ``BasicUNet``: its input sides must be multiples of 2**LEVELS (the network pads)."""


@dataclass(frozen=True)
class SegmentationConfig:
    """Architecture of the U-Net of ``fsl`` and ``supervised``.

    Attributes:
        width: multiplier of :data:`BASE_FEATURES` (channels rounded, at least 4).
        downsample: the network sees the image average-pooled by this factor and returns its maps at
            that resolution (the harness upsamples them): 2 at 368×240 keeps a median lesion (about 25
            pixels across) 12 cells wide for a quarter of the cost of full resolution.
    """

    width: float = 0.5
    downsample: int = 2

    def __post_init__(self) -> None:
        if self.width <= 0:
            raise ValueError(f"U-Net width must be positive, got {self.width}")
        if self.downsample < 1:
            raise ValueError(f"downsample must be at least 1, got {self.downsample}")

    @property
    def features(self) -> tuple[int, ...]:
        return tuple(max(4, round(f * self.width)) for f in BASE_FEATURES)


class SegmentationNetwork(nn.Module):
    """``images N×1×H×W -> N×C×h×w`` lesion logits per class, ``h = ⌈H/d⌉``, ``w = ⌈W/d⌉`` for
    ``d = config.downsample``: average pooling by ``d``, replicate padding to a multiple of 16, MONAI's
    2-D ``BasicUNet`` (instance normalisation: each image is normalised alone, so a batch gives what
    its images give one by one), then the padding cropped off.
    """

    def __init__(self, config: SegmentationConfig, num_classes: int = len(CLASSES)) -> None:
        super().__init__()
        # imported here: MONAI takes seconds to import, which every command would otherwise pay
        from monai.networks.nets import BasicUNet

        self.downsample = config.downsample
        self.unet = BasicUNet(spatial_dims=2, in_channels=1, out_channels=num_classes, features=config.features)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = F.avg_pool2d(images, self.downsample, ceil_mode=True) if self.downsample > 1 else images
        height, width = x.shape[-2:]
        multiple = 2**LEVELS
        pad_h, pad_w = -height % multiple, -width % multiple
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
        return self.unet(x)[..., :height, :width]


class MaskSupervisedSegmentation(TrainableMethod):
    """A U-Net trained with the masks of one split (the subclasses name it): per-pixel binary
    cross-entropy plus soft Dice per class, at the network's resolution.

    Maps: the sigmoid of the logits, ``N×2×h×w`` probabilities, scored as they are. Scores: per class,
    the mean of the ``score_fraction`` most probable pixels of the map (at least one), so an image's
    score is its most lesion-like region of about the smallest lesion's size, not one stray pixel.

    Args:
        config: :class:`SegmentationConfig` (or the options ``width=`` and ``downsample=``).
        score_fraction: share of the map's pixels whose mean probability is the image-level score.
    """

    map_range: ClassVar[str] = "probability"
    train_overrides: ClassVar[dict[str, Any]] = {"lr": 1e-3}
    """Adam at 1e-3, the suite's rate for networks trained from scratch (``cam``)."""

    def __init__(self, config: SegmentationConfig | None = None, score_fraction: float = 0.001,
                 **kwargs: Any) -> None:
        architecture = {name: kwargs.pop(name) for name in ("width", "downsample") if name in kwargs}
        super().__init__(**kwargs)
        if not 0 < score_fraction <= 1:
            raise ValueError(f"score_fraction must lie in (0, 1], got {score_fraction}")
        self.config = config or SegmentationConfig(**architecture)
        self.score_fraction = score_fraction
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)  # the same seed builds the same network
            self.model = SegmentationNetwork(self.config).to(self.device)
        self.model.eval()

    def network(self) -> nn.Module:
        return self.model

    def config_dict(self) -> dict[str, Any]:
        return {**super().config_dict(), **asdict(self.config)}

    def training_augmentation(self) -> VerticalFlip:
        """Up-down flips (probability 0.5), as ``cam`` trains; the trainer flips the masks alike."""
        return VerticalFlip()

    def training_loss(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        pos_weight: torch.Tensor | None = None,
        masks: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Binary cross-entropy per pixel (``pos_weight`` weighting lesion pixels) plus soft Dice per
        class over the batch (MONAI's ``DiceLoss``), against the masks average-pooled to the network's
        resolution (a cell's target is the share of it the lesion covers). Classes a mask leaves
        unannotated (NaN) count in neither term. ``labels`` are not used: the masks hold them.

        Args:
            masks: ``N×C×H×W`` float masks, NaN where unannotated (given by the trainer).

        Raises:
            ValueError: no masks (this method trains only through the trainer's mask path).
        """
        from monai.losses import DiceLoss

        if masks is None:
            raise ValueError(f"{self.name or type(self).__name__} trains with masks, and none were given")
        logits = self.model(images).float()  # the loss in float32 under bfloat16 autocast
        annotated = ~torch.isnan(masks).flatten(2).any(dim=2)  # N×C
        target = torch.nan_to_num(masks.float(), nan=0.0)
        if self.config.downsample > 1:
            target = F.avg_pool2d(target, self.config.downsample, ceil_mode=True)
        weight = annotated[:, :, None, None].to(logits.dtype)  # N×C×1×1: unannotated classes count for nothing
        if not annotated.any():
            return (logits * 0).sum()  # nothing annotated in this batch: no gradient, still a graph
        positive = None if pos_weight is None else pos_weight.to(logits).view(1, -1, 1, 1)
        bce = F.binary_cross_entropy_with_logits(logits, target, pos_weight=positive, reduction="none")
        bce = (bce * weight).sum() / (weight.sum() * logits.shape[-2] * logits.shape[-1])
        dice = DiceLoss(sigmoid=False, batch=True)(torch.sigmoid(logits) * weight, target * weight)
        return bce + dice

    @torch.inference_mode()
    def predict(self, images: torch.Tensor) -> SaliencyOutput:
        self.model.eval()
        maps = torch.sigmoid(self.model(images).float())  # N×C×h×w
        k = max(1, round(self.score_fraction * maps.shape[-2] * maps.shape[-1]))
        scores = maps.flatten(2).topk(k, dim=2).values.mean(dim=2)  # N×C
        return SaliencyOutput(maps, scores, "probability")


@METHODS.register("fsl")
class FewShotSegmentation(MaskSupervisedSegmentation):
    """U-Net trained on the validation split's masks only (Choe et al.'s few-shot learner)."""

    description: ClassVar[str] = "U-Net trained on the validation masks only (few-shot reference; uses masks)"
    mask_split: ClassVar[str | None] = "val"


@METHODS.register("supervised")
class SupervisedSegmentation(MaskSupervisedSegmentation):
    """U-Net trained on the training split's masks (the fully supervised ceiling)."""

    description: ClassVar[str] = "U-Net trained on the training masks (supervised ceiling; uses masks)"
    mask_split: ClassVar[str | None] = "train"
