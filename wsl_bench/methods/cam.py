"""Class activation mapping (Zhou et al., CVPR 2016) from a small one-channel ResNet.

The classifier is the ResNet-22 of GLAM and GMIC with global average pooling and a linear head,
trained from image-level labels only. Its CAM for class c is ``Σ_k w_ck F_k`` where ``F`` is the last
convolutional feature map and ``w`` the head's weights: the map whose spatial mean (plus the
bias) is exactly the class logit. The same classifier is what post-hoc explainers
(Grad-CAM family, captum) explain when run with ``--classifier cam``.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import torch
from torch import nn
from torch.nn import functional as F

from wsl_bench.methods import geometry
from wsl_bench.methods.backbones import PreActResNet22
from wsl_bench.registry import METHODS
from wsl_bench.saliency import CLASSES, SaliencyOutput, TrainableMethod
from wsl_bench.training.augment import VerticalFlip


@dataclass(frozen=True)
class CamConfig:
    """Architecture of the CAM classifier: the global network of GLAM and GMIC (pre-activation
    ResNet-22) with a global-average-pooling + linear head.

    Sharing that backbone and its derived strides (:mod:`.geometry`) gives CAM GMIC's saliency map
    at every size (46×30 cells at 2944×1920 and at 368×240 alike) and the same receptive field
    relative to the image, so CAM and GMIC differ only in how their maps become predictions.

    Attributes:
        geometry: ``"scaled"`` (default; strides derived from the image size) or ``"pixels"``
            (the published ResNet-22 strides at any size).
        width: channel multiplier of the ResNet-22 (1: 16 … 256 channels).
    """

    geometry: str = "scaled"
    width: float = 1.0

    def __post_init__(self) -> None:
        geometry.check_geometry(self.geometry)
        if self.width <= 0:
            raise ValueError(f"CAM width must be positive, got {self.width}")


class CamClassifier(nn.Module):
    """ResNet-22 features → global average pooling → linear head.

    ``forward(images N×1×H×W) -> N×C logits``; ``features`` gives the ``N×K×h×w`` last feature map.

    Args:
        config: :class:`CamConfig`.
        image_size: ``(H, W)`` the strides are derived for.
    """

    def __init__(self, config: CamConfig, image_size: tuple[int, int], num_classes: int = len(CLASSES)) -> None:
        super().__init__()
        strides = geometry.global_strides(geometry.stride_reductions(image_size, config.geometry))
        self.backbone = PreActResNet22.for_geometry(strides, config.width)
        # The ReLU after final_bn as a module of its own: Grad-CAM-style explainers hook its output,
        # the very features the head pools, so their maps of this classifier can equal CAM's.
        self.activation = nn.ReLU()
        self.head = nn.Linear(self.backbone.out_channels, num_classes)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """``N×1×H×W`` → ``N×K×h×w`` last convolutional feature map (after the final BatchNorm and ReLU)."""
        return self.activation(self.backbone.final_bn(self.backbone.stage_outputs(images)[-1]))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.features(images)
        # Pooling and head in the head's precision (float32, or float64 in exactness tests) even under
        # mixed-precision training: a lesion covers about 0.5 %
        # of the map, so its share of the pooled features is below bfloat16's resolution (8 mantissa
        # bits, 0.4 %); pooled in bfloat16 the class signal drowns in rounding and training stalls
        # depending on how the CPU rounds (measured, see methods/cam.md).
        device = images.device.type  # 'meta' tensors (FLOP counting) have no autocast to turn off
        with torch.autocast(device, enabled=False) if torch.amp.is_autocast_available(device) else nullcontext():
            return self.head(features.to(self.head.weight.dtype).mean(dim=(2, 3)))

    def class_activation_maps(self, features: torch.Tensor) -> torch.Tensor:
        """``N×K×h×w`` features → ``N×C×h×w`` CAMs, ``Σ_k w_ck F_k`` (the bias is a constant shift, left out)."""
        return torch.einsum("ck,nkhw->nchw", self.head.weight, features)

    @property
    def target_layer(self) -> nn.Module:
        """The final activation: the default layer for Grad-CAM-style explainers."""
        return self.activation


@METHODS.register("cam")
class CAM(TrainableMethod):
    """Class activation maps of a GAP + linear-head ResNet trained with image-level labels."""

    description: ClassVar[str] = "class activation mapping (Zhou et al. 2016) of a small ResNet classifier"
    map_range: ClassVar[str] = "unbounded"

    def __init__(self, config: CamConfig | None = None, **kwargs: Any) -> None:
        architecture = {name: kwargs.pop(name) for name in ("geometry", "width") if name in kwargs}
        super().__init__(**kwargs)
        self.config = config or CamConfig(**architecture)
        torch.manual_seed(self.seed)  # deterministic initialisation from the method seed
        self.model = CamClassifier(self.config, self.image_size).to(self.device)
        self.model.eval()

    train_overrides: ClassVar[dict[str, Any]] = {"lr": 1e-3}
    """The recipe's learning rate from scratch, GLAM's and GMIC's at the cpu preset (measured at 368×240,
    width 0.5: the ResNet-22 did not learn at 3e-3, training loss 0.69 after 4 epochs; 0.64 at 1e-3)."""

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
