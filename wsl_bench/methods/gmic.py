"""GMIC: Globally-Aware Multiple Instance Classifier (Shen et al., Medical Image Analysis 2021).

A global network (pre-activation ResNet-22) gives a coarse saliency map and ``y_global``; K
windows where the map peaks are cropped at full resolution, a ResNet-18 encodes each, gated
attention pools them into ``y_local``, and a fusion layer combines the global and local
representations into ``y_fusion``, GMIC's prediction. See ``methods/gmic.md`` for the exact path.

Registered methods: ``gmic`` (trainable) and the published-weight variants ``gmic.m1`` … ``gmic.m5``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from wsl_bench.methods import backbones as bb
from wsl_bench.methods import geometry, inference
from wsl_bench.methods.published import PublishedModelMethod, WeightVariant, register_variant
from wsl_bench.registry import METHODS
from wsl_bench.saliency import CLASSES, SaliencyOutput, TrainingStage

GMIC_REPOSITORY = "https://github.com/nyukat/GMIC"

PUBLISHED_GMIC_MODELS: dict[str, tuple[float, float, float]] = {
    "m1": (3.26e-6, 0.02, 4.13e-6),
    "m2": (2.28e-4, 0.03, 1.16e-5),
    "m3": (1.42e-4, 0.03, 3.22e-5),
    "m4": (9.41e-6, 0.05, 1.46e-5),
    "m5": (4.28e-5, 0.1, 3.53e-6),
}
"""The five published GMIC-ResNet-18 models: (β, top-t fraction, learning rate)."""


@dataclass(frozen=True)
class GmicConfig(bb.ScaledNetworkConfig):
    """Everything that fixes what GMIC computes (stored in checkpoints; a mismatch refuses a load).

    Attributes:
        image_size: ``(H, W)``; 2944×1920 published.
        patch_side: square patch side in pixels; ``None`` = ``round(256 · H / 2944)``.
        num_patches: K, patches per image (6 published).
        percent_t: top-t fraction of the saliency map pooled into ``y_global`` (0.02, 0.03,
            0.03, 0.05, 0.1 for the five published models).
        geometry: ``"scaled"`` (default): strides derived from ``image_size`` so the map, patches and
            receptive field keep their published size relative to the image (the published network
            at 2944×1920); ``"pixels"``: the published strides at any size (see :mod:`.geometry`).
        width: channel multiplier of the global network (1 published: 16 … 256 channels).
        local_width: channel multiplier of the patch ResNet-18 (1 published: 64 … 512 channels).
    """

    PUBLISHED_PATCH_SIDE: ClassVar[int] = 256

    image_size: tuple[int, int] = bb.PUBLISHED_IMAGE_SIZE
    patch_side: int | None = None
    num_patches: int = 6
    percent_t: float = 0.02
    geometry: str = "scaled"
    width: float = 1.0
    local_width: float = 1.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "image_size", tuple(int(v) for v in self.image_size))
        geometry.check_geometry(self.geometry)
        if min(self.width, self.local_width) <= 0:
            raise ValueError("GMIC width and local_width must be positive")
        if len(self.image_size) != 2 or min(self.image_size) < 32:
            raise ValueError(f"GMIC image_size must be (H, W) with both at least 32, got {self.image_size}")
        if self.num_patches < 1:
            raise ValueError(f"GMIC num_patches must be at least 1, got {self.num_patches}")
        if not 0 < self.percent_t <= 1:
            raise ValueError(f"GMIC percent_t must be in (0, 1], got {self.percent_t}")



@dataclass(frozen=True)
class GmicTrainingConfig:
    """GMIC's training recipe: published model 1's (β, learning rate) by default, the other published
    models' through ``gmic.m2`` … ``gmic.m5`` (see :data:`PUBLISHED_GMIC_MODELS`; top-t is
    :attr:`GmicConfig.percent_t`).

    Attributes:
        beta: weight of the L1 term ``mean|saliency map|``.
        learning_rate: Adam learning rate (the trainer's ``lr``).
        crop_jitter: random crop-window jitter of the training images, in pixels at the published
            2944-row resolution (100 published; scaled with the image height; 0 turns it off).
        global_init: a trainable method whose trained ResNet-22 the global network starts from
            (``"cam"``), as the published one starts from a mammogram classifier's weights; ``None``:
            random initialisation (see :meth:`PublishedModelMethod.global_backbone`).
        warmup_epochs: share of the preset's epochs of a first stage that trains everything but the
            global ResNet-22 (saliency head, local network, attention, fusion) with the backbone frozen
            (0: no such stage; see :meth:`PublishedModelMethod.warmup_stages`).
        warmup_lr_factor: that stage's learning rate is this times ``learning_rate``.
    """

    beta: float = PUBLISHED_GMIC_MODELS["m1"][0]
    learning_rate: float = PUBLISHED_GMIC_MODELS["m1"][2]
    crop_jitter: float = 100.0
    global_init: str | None = None
    warmup_epochs: float = 0.0
    warmup_lr_factor: float = 10.0

    def __post_init__(self) -> None:
        if self.beta < 0 or self.learning_rate <= 0 or self.crop_jitter < 0:
            raise ValueError("GMIC beta and crop_jitter must be non-negative and learning_rate positive")
        if self.warmup_epochs < 0 or self.warmup_lr_factor <= 0:
            raise ValueError("GMIC warmup_epochs must be non-negative and warmup_lr_factor positive")


class GmicPostprocess(nn.Module):
    """``left_postprocess_net``: 1×1 conv (256→2, no bias); a sigmoid follows."""

    def __init__(self, channels: int = 256) -> None:
        super().__init__()
        self.gn_conv_last = nn.Conv2d(channels, len(CLASSES), kernel_size=1, bias=False)


@dataclass
class GmicOutputs:
    """Everything one GMIC forward pass computes for N images and K patches.

    Attributes:
        saliency_map: ``N×2×h×w`` (46×30 published).
        y_global: ``N×2`` top-t pooled saliency.
        patch_locations: ``N×K×2`` int64 corners (row, column) in input pixels.
        patches: ``N×K×p×p`` crops.
        patch_features: ``N×K×512`` ResNet-18 features (global average pooled).
        patch_attention: ``N×K`` attention weights (sum to 1 over K).
        y_local: ``N×2`` attention-MIL prediction.
        y_fusion: ``N×2`` GMIC's prediction.
        global_features: ``N×256`` global max-pooled final map.
    """

    saliency_map: torch.Tensor
    y_global: torch.Tensor
    patch_locations: torch.Tensor
    patches: torch.Tensor
    patch_features: torch.Tensor
    patch_attention: torch.Tensor
    y_local: torch.Tensor
    y_fusion: torch.Tensor
    global_features: torch.Tensor


class GmicNetwork(nn.Module):
    """The whole GMIC model; ``state_dict`` keys equal the published checkpoint's."""

    def __init__(self, config: GmicConfig | None = None) -> None:
        super().__init__()
        self.config = config or GmicConfig()
        reductions = self.config.stride_reductions
        self.ds_net = bb.PreActResNet22.for_geometry(geometry.global_strides(reductions), self.config.width)
        self.left_postprocess_net = GmicPostprocess(self.ds_net.out_channels)
        local_strides = geometry.trunk_strides(geometry.GMIC_LOCAL_STRIDES, reductions)
        self.dn_resnet = bb.LocalResNet.for_geometry((2, 2, 2, 2), local_strides, self.config.local_width)
        feat = self.dn_resnet.out_channels
        self.mil_attn_V = nn.Linear(feat, 128, bias=False)
        self.mil_attn_U = nn.Linear(feat, 128, bias=False)
        self.mil_attn_w = nn.Linear(128, 1, bias=False)
        self.classifier_linear = nn.Linear(feat, len(CLASSES), bias=False)
        self.fusion_dnn = nn.Linear(self.ds_net.out_channels + feat, len(CLASSES))

    def run_global(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``N×1×H×W`` → ``(final map N×256×h×w, saliency N×2×h×w, y_global N×2)``."""
        _, final = self.ds_net(images)
        saliency = torch.sigmoid(self.left_postprocess_net.gn_conv_last(final))
        return final, saliency, gmic_top_t(self.config, saliency)

    def forward(self, images: torch.Tensor) -> GmicOutputs:
        final, saliency, y_global = self.run_global(images)
        locations, patches = choose_patches(self.config, images, saliency)
        n, k, ph, pw = patches.shape
        features = self.dn_resnet(patches.reshape(n * k, 1, ph, pw)).mean(dim=(2, 3)).view(n, k, -1)
        return gmic_heads(self, final, saliency, y_global, locations, patches, features)


def gmic_top_t(config: GmicConfig, saliency: torch.Tensor) -> torch.Tensor:
    """Top-t mean pooling of each class map: ``N×2×h×w`` → ``N×2``."""
    return bb.top_k_mean(saliency, bb.top_fraction_count(config.percent_t, (saliency.shape[-2], saliency.shape[-1])))


def choose_patches(
    config: GmicConfig, images: torch.Tensor, saliency: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """K greedy windows on the saliency map, mapped to pixels, cropped: ``(N×K×2, N×K×p×p)``."""
    return bb.choose_patches(config.patch_size, config.num_patches, images, saliency)


def gmic_heads(
    net: GmicNetwork,
    final: torch.Tensor,
    saliency: torch.Tensor,
    y_global: torch.Tensor,
    locations: torch.Tensor,
    patches: torch.Tensor,
    features: torch.Tensor,
) -> GmicOutputs:
    """Gated attention MIL over the patch features and the fusion layer (reference steps 6–7).

    Args:
        features: ``N×K×512`` patch features.
    """
    features = features.to(net.mil_attn_U.weight.dtype)
    gate = torch.sigmoid(net.mil_attn_U(features)) * torch.tanh(net.mil_attn_V(features))
    attention = torch.softmax(net.mil_attn_w(gate), dim=1)  # N×K×1
    z = (attention * features).sum(dim=1)
    y_local = torch.sigmoid(net.classifier_linear(z))
    g = final.amax(dim=(2, 3)).to(z.dtype)
    y_fusion = torch.sigmoid(net.fusion_dnn(torch.cat([g, z], dim=1)))
    return GmicOutputs(saliency, y_global, locations, patches, features, attention[..., 0], y_local, y_fusion, g)


class GmicEngine:
    """GMIC inference: the same computation as :class:`GmicNetwork` in eval mode, faster.

    Both backbones run as :mod:`.inference` engines (BatchNorm folded, ReLU and residual adds fused,
    channels-last, ``precision`` compute dtype); everything after them runs in float32.
    """

    def __init__(self, network: GmicNetwork, precision: str) -> None:
        dtype = inference.compute_dtype(precision)
        self.network = network
        self.global_engine = inference.PreActResNetEngine(network.ds_net, dtype)
        self.local_engine = inference.LocalResNetEngine(network.dn_resnet, dtype)

    def __call__(self, images: torch.Tensor) -> GmicOutputs:
        net = self.network
        _, final = self.global_engine(images)
        final = final.float()
        saliency = torch.sigmoid(net.left_postprocess_net.gn_conv_last(final))
        y_global = gmic_top_t(net.config, saliency)
        locations, patches = choose_patches(net.config, images, saliency)
        n, k, ph, pw = patches.shape
        features = self.local_engine(patches.reshape(n * k, 1, ph, pw)).float().mean(dim=(2, 3)).view(n, k, -1)
        return gmic_heads(net, final, saliency, y_global, locations, patches, features)


@METHODS.register("gmic")
class GmicMethod(PublishedModelMethod):
    """GMIC (Shen et al., Medical Image Analysis 2021): saliency map, six patches, attention MIL, fusion.

    Args:
        device: where it runs.
        seed: seeds the random initialisation (used when no ``weights`` are given).
        image_size: ``(H, W)``; ``None`` = the published 2944×1920. Patch and window sizes scale
            with it (see :class:`GmicConfig`).
        weights: a published checkpoint (``sample_model_N.p`` or the reference ``.npz``) or a
            checkpoint saved by this project.
        **hyperparameters: fields of :class:`GmicConfig` (``num_patches``, ``percent_t``,
            ``patch_side``) and :class:`GmicTrainingConfig` (``beta``, ``learning_rate``,
            ``crop_jitter``), plus
            ``precision`` (``"fp32"``/``"bf16"``) and ``fast`` (default True).
    """

    name: ClassVar[str] = "gmic"
    published_source: ClassVar[str | None] = GMIC_REPOSITORY
    description: ClassVar[str] = "GMIC (Shen et al. 2021): globally-aware multiple instance classifier"
    map_range: ClassVar[str] = "probability"

    network_class: ClassVar[type[nn.Module]] = GmicNetwork
    config_class: ClassVar[type] = GmicConfig
    training_config_class: ClassVar[type] = GmicTrainingConfig
    model_label: ClassVar[str] = "GMIC"

    def forward(self, images: torch.Tensor) -> GmicOutputs:
        """Inference forward pass without autograd, every intermediate kept."""
        images = inference.check_images(images, self.device, self.name)
        with torch.inference_mode():
            if not self.fast:
                with inference.eval_mode(self._network):
                    return self._network(images)
            return self._engine.get(self._network, self.precision, GmicEngine)(images)

    def predict(self, images: torch.Tensor) -> SaliencyOutput:
        out = self.forward(images)
        return SaliencyOutput(
            maps=out.saliency_map.float(),
            scores=out.y_fusion.float(),
            map_range="probability",
            extras={
                "patch_locations": out.patch_locations,
                "patch_attention": out.patch_attention.float(),
                "y_global": out.y_global.float(),
                "y_local": out.y_local.float(),
            },
        )

    # -- training ------------------------------------------------------------------------------
    def global_backbone(self) -> nn.Module:
        return self._network.ds_net

    def final_saliency_head(self) -> nn.Conv2d:
        return self._network.left_postprocess_net.gn_conv_last

    def training_stages(self) -> tuple[TrainingStage, ...]:
        """The optional warm-up of everything but the global ResNet-22 (:meth:`warmup_stages`), then the
        whole network (one stage, the published recipe)."""
        return (*self.warmup_stages(loss=None), TrainingStage())

    def warmup_modules(self) -> tuple[str, ...]:
        net = self._network
        return tuple(name for name, _ in net.named_children() if name != "ds_net")

    def training_loss(
        self, images: torch.Tensor, labels: torch.Tensor, pos_weight: torch.Tensor | None = None
    ) -> torch.Tensor:
        """GMIC's loss: Σ over classes of BCE(y_global) + BCE(y_local) + BCE(y_fusion), mean over
        images, + β·mean|saliency map|.

        Computes what ``GmicNetwork.forward`` computes; under autocast (mixed-precision training) only
        the two backbones run in low precision, the saliency head, pooling, attention, fusion and the
        losses in float32.

        Args:
            images: ``N×1×H×W``; labels: ``N×2`` float {0, 1}.
            pos_weight: optional ``2`` weights of positive terms in every BCE (class imbalance).
        """
        labels = labels.to(dtype=torch.float32, device=images.device)
        net = self._network
        _, final = net.ds_net(images)
        with torch.autocast(images.device.type, enabled=False):
            final = final.float()
            saliency = torch.sigmoid(net.left_postprocess_net.gn_conv_last(final))
            y_global = gmic_top_t(self.config, saliency)
        locations, patches = choose_patches(self.config, images, saliency)
        n, k, ph, pw = patches.shape
        features = net.dn_resnet(patches.reshape(n * k, 1, ph, pw))
        with torch.autocast(images.device.type, enabled=False):
            features = features.float().mean(dim=(2, 3)).view(n, k, -1)
            out = gmic_heads(net, final, saliency, y_global, locations, patches, features)
            bce = sum(
                bb.binary_cross_entropy(y, labels, pos_weight) for y in (out.y_global, out.y_local, out.y_fusion)
            )
            return bce + self.training_config.beta * out.saliency_map.abs().mean()

    def classifier(self) -> tuple[nn.Module, nn.Module]:
        """Classifier view of the global network for post-hoc explainers.

        Returns:
            ``(module, target_layer)``: ``module(images)`` gives ``N×2`` logits, the logit of
            ``y_global`` (top-t pooled saliency, clamped to [1e-6, 1 − 1e-6]); ``target_layer`` is
            the last block of the global backbone (``ds_net.layer_list.4.1``).
        """
        return GmicClassifier(self._network), self._network.ds_net.layer_list[-1][-1]


class GmicClassifier(nn.Module):
    """``images → logit(y_global)``; see :meth:`GmicMethod.classifier`."""

    def __init__(self, network: GmicNetwork) -> None:
        super().__init__()
        self.network = network

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.logit(self.network.run_global(images)[2], eps=1e-6)


GMIC_VARIANTS: tuple[WeightVariant, ...] = tuple(
    WeightVariant(
        tag,
        f"sample_model_{tag[1:]}.p",
        f"GMIC, published weights sample_model_{tag[1:]}.p (top-t {percent_t})",
        {"percent_t": percent_t, "beta": beta, "learning_rate": lr},
    )
    for tag, (beta, percent_t, lr) in PUBLISHED_GMIC_MODELS.items()
)
"""The five published GMIC models, registered as ``gmic.m1`` … ``gmic.m5`` with their file and configuration."""

for _variant in GMIC_VARIANTS:
    register_variant(GmicMethod, _variant)
del _variant

__all__ = ["GMIC_VARIANTS", "PUBLISHED_GMIC_MODELS", "GmicConfig", "GmicMethod", "GmicNetwork", "GmicOutputs"]
