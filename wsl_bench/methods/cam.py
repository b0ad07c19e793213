"""Class activation mapping (Zhou et al., CVPR 2016) from a small one-channel ResNet.

The classifier is a ResNet with global average pooling and a linear head, trained from
image-level labels only. Its CAM for class c is ``Σ_k w_ck F_k`` where ``F`` is the last
convolutional feature map and ``w`` the head's weights: the map whose spatial mean (plus the
bias) is exactly the class logit. The same classifier is what post-hoc explainers
(Grad-CAM family, captum) explain when run with ``--classifier cam``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import torch
from torch import nn
from torch.nn import functional as F

from ..augment import VerticalFlip
from ..registry import METHODS
from ..saliency import CLASSES, SaliencyOutput, TrainableMethod


@dataclass(frozen=True)
class CamConfig:
    """Architecture of the CAM classifier.

    Attributes:
        widths: channels of the four residual stages.
        strides: stride of each stage (after a stride-4 stem); the product sets the map resolution
            (4·1·2·2·1 = 16: a 736×480 image gives a 46×30 map, like GMIC's at full resolution).
        blocks: residual blocks per stage (two: with one per stage the classifier did not learn the
            synthetic task at 368×240 within 12 epochs, its loss stayed at 0.69).
    """

    widths: tuple[int, ...] = (16, 32, 64, 128)
    strides: tuple[int, ...] = (1, 2, 2, 1)
    blocks: tuple[int, ...] = (2, 2, 2, 2)


class BasicBlock(nn.Module):
    """Post-activation residual block: conv3×3 → BN → ReLU → conv3×3 → BN, plus shortcut, ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), nn.BatchNorm2d(out_channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CamClassifier(nn.Module):
    """ResNet features → global average pooling → linear head.

    ``forward(images N×1×H×W) -> N×C logits``; ``features`` gives the ``N×K×h×w`` last feature map.
    """

    def __init__(self, config: CamConfig, num_classes: int = len(CLASSES)) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(1, config.widths[0], 7, 2, 3, bias=False),
            nn.BatchNorm2d(config.widths[0]),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2, 1),
        )
        stages: list[nn.Module] = []
        in_channels = config.widths[0]
        for width, stride, blocks in zip(config.widths, config.strides, config.blocks, strict=True):
            layers = [BasicBlock(in_channels, width, stride)]
            layers += [BasicBlock(width, width, 1) for _ in range(blocks - 1)]
            stages.append(nn.Sequential(*layers))
            in_channels = width
        self.stages = nn.Sequential(*stages)
        self.head = nn.Linear(in_channels, num_classes)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """``N×1×H×W`` → ``N×K×h×w`` last convolutional feature map."""
        return self.stages(self.stem(images))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images).mean(dim=(2, 3)))

    def class_activation_maps(self, features: torch.Tensor) -> torch.Tensor:
        """``N×K×h×w`` features → ``N×C×h×w`` CAMs, ``Σ_k w_ck F_k`` (the bias is a constant shift, left out)."""
        return torch.einsum("ck,nkhw->nchw", self.head.weight, features)

    @property
    def target_layer(self) -> nn.Module:
        """The last convolutional block: the default layer for Grad-CAM-style explainers."""
        return self.stages[-1]


@METHODS.register("cam")
class CAM(TrainableMethod):
    """Class activation maps of a GAP + linear-head ResNet trained with image-level labels."""

    description: ClassVar[str] = "class activation mapping (Zhou et al. 2016) of a small ResNet classifier"
    map_range: ClassVar[str] = "unbounded"

    def __init__(self, config: CamConfig | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.config = config or CamConfig()
        torch.manual_seed(self.seed)  # deterministic initialisation from the method seed
        self.model = CamClassifier(self.config).to(self.device)
        self.model.eval()

    train_overrides: ClassVar[dict[str, Any]] = {"lr": 3e-3}
    """The recipe's learning rate (from scratch; at 1e-3 it learnt more slowly in 12 epochs)."""

    def network(self) -> nn.Module:
        return self.model

    def training_augmentation(self) -> VerticalFlip:
        """Up-down flips (probability 0.5): twice the views of a small training split."""
        return VerticalFlip()

    def config_dict(self) -> dict[str, Any]:
        return {**super().config_dict(), **asdict(self.config)}

    def classifier(self) -> tuple[nn.Module, nn.Module]:
        """``(module mapping N×1×H×W → N×C logits, its default target layer)`` for post-hoc explainers."""
        return self.model, self.model.target_layer

    def training_loss(
        self, images: torch.Tensor, labels: torch.Tensor, pos_weight: torch.Tensor | None = None
    ) -> torch.Tensor:
        logits = self.model(images)
        return F.binary_cross_entropy_with_logits(logits, labels, pos_weight=pos_weight)

    @torch.inference_mode()
    def predict(self, images: torch.Tensor) -> SaliencyOutput:
        self.model.eval()
        features = self.model.features(images)
        logits = self.model.head(features.mean(dim=(2, 3)))
        maps = self.model.class_activation_maps(features)
        return SaliencyOutput(maps, torch.sigmoid(logits), "unbounded")
