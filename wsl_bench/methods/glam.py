"""GLAM: Global-Local Activation Maps (Liu et al., MIDL 2021), faithful to the published model.

A global module (pre-activation ResNet-22) gives three coarse saliency maps and the image-level
prediction; the window where their weighted sum peaks is cropped at full resolution and a local
module (ResNet-34 layout, all stages stride 1) segments it; the fused map is the mean of the
pasted local map and the upsampled global map. See ``methods/glam.md`` ("What the model computes",
steps 1–7) for the exact path.

Registered methods: ``glam`` (trainable, random initialisation unless ``weights=`` is given) and
the published-weight variants ``glam.sep`` and ``glam.joint``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from wsl_bench.methods import backbones as bb
from wsl_bench.methods import geometry, inference
from wsl_bench.methods.published import PublishedModelMethod, WeightVariant, register_variant
from wsl_bench.registry import METHODS
from wsl_bench.saliency import CLASSES, SaliencyOutput, TrainableMethod, TrainingMap, TrainingStage

GLAM_REPOSITORY = "https://github.com/nyukat/GLAM"


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GlamConfig(bb.ScaledNetworkConfig):
    """Everything that fixes what GLAM computes (stored in checkpoints; a mismatch refuses a load).

    Attributes:
        image_size: ``(H, W)`` of the inputs; 2944×1920 is the published configuration.
        patch_side: side of the square patch in pixels; ``None`` = ``round(512 · H / 2944)``.
        num_patches: windows searched per image (``top_k_per_class``; 1 published).
        percent_k: fraction of global-map pixels in the top-k pooling (0.03 published).
        local_percent_k: fraction of local-map pixels pooled into a patch prediction (0.3,
            ``detection_pooling_percent_k``); used by the training loss.
        global_weights: weights of ``(cam_level3, cam_level2, cam_level1)`` in the global saliency.
        geometry: ``"scaled"`` (default): strides derived from ``image_size`` so the maps, patch and
            receptive field keep their published size relative to the image (the published network
            at 2944×1920); ``"pixels"``: the published strides at any size (see :mod:`.geometry`).
        width: channel multiplier of the global module (1 published: 16 … 256 channels).
        local_width: channel multiplier of the local module (1 published: 64 … 512 channels).
        local_blocks: basic blocks per stage of the local module (``(3, 4, 6, 3)`` published).
    """

    PUBLISHED_PATCH_SIDE: ClassVar[int] = 512

    image_size: tuple[int, int] = bb.PUBLISHED_IMAGE_SIZE
    patch_side: int | None = None
    num_patches: int = 1
    percent_k: float = 0.03
    local_percent_k: float = 0.3
    global_weights: tuple[float, float, float] = (0.2, 0.6, 0.2)
    geometry: str = "scaled"
    width: float = 1.0
    local_width: float = 1.0
    local_blocks: tuple[int, ...] = (3, 4, 6, 3)

    def __post_init__(self) -> None:
        object.__setattr__(self, "image_size", tuple(int(v) for v in self.image_size))
        object.__setattr__(self, "global_weights", tuple(float(v) for v in self.global_weights))
        object.__setattr__(self, "local_blocks", tuple(int(v) for v in self.local_blocks))
        geometry.check_geometry(self.geometry)
        if min(self.width, self.local_width) <= 0 or len(self.local_blocks) != 4 or min(self.local_blocks) < 1:
            raise ValueError("GLAM width and local_width must be positive and local_blocks four positive counts")
        if len(self.image_size) != 2 or min(self.image_size) < 32:
            raise ValueError(f"GLAM image_size must be (H, W) with both at least 32, got {self.image_size}")
        if self.num_patches < 1:
            raise ValueError(f"GLAM num_patches must be at least 1, got {self.num_patches}")
        for name in ("percent_k", "local_percent_k"):
            if not 0 < getattr(self, name) <= 1:
                raise ValueError(f"GLAM {name} must be in (0, 1], got {getattr(self, name)}")



DONORLESS_HEAD_STARTS = ("random", "zero")
"""How GLAM's stage-3 and stage-4 saliency heads may start beside a donor (``donorless_heads``)."""


@dataclass(frozen=True)
class GlamTrainingConfig:
    """GLAM's training recipe (the paper's stages; hyper-parameters chosen for this suite, as the
    published code ships no training).

    Attributes:
        stage: the last stage of the recipe ``global`` → ``local`` → ``joint``, which is also the loss
            ``training_loss`` computes when the trainer names none. ``"joint"`` (default): global
            module, then local module, then joint fine-tuning of both (the published ``model_joint``
            variant); ``"local"`` (alias ``"sep"``): global then local, modules trained separately
            (``model_sep``); ``"global"``: the global module alone.
        beta: weight of the L1 term on the saliency maps (global maps in the global stage, local maps
            in the local stage, both in the joint stage).
        learning_rate: Adam learning rate of the global and local stages (the trainer's ``lr``).
        crop_jitter: random crop-window jitter of the training images, in pixels at the published
            2944-row resolution (scaled with the image height; 0 turns it off).
        global_epochs, local_epochs, joint_epochs: share of the preset's epochs each stage trains.
        joint_lr_factor: the joint stage's learning rate is this times ``learning_rate``.
        global_init: a trainable method whose trained ResNet-22 the global module starts from
            (``"cam"``), as the published global modules start from a mammogram classifier's weights;
            ``None``: random initialisation (see :meth:`PublishedModelMethod.global_backbone`).
        warmup_epochs: share of the preset's epochs of a first stage that trains only the three saliency
            heads of the global module (``postprocess_module``) with its ResNet-22 frozen, before the
            global stage (0: no such stage; see :meth:`PublishedModelMethod.warmup_stages`).
        warmup_lr_factor: that stage's learning rate is this times ``learning_rate``.
        donorless_heads: how the two saliency heads no donor can start (on stages 3 and 4, weighted 0.2
            and 0.6 in the global map) start when the global module starts from ``global_init``:
            ``"random"`` (their default initialisation) or ``"zero"`` (zero weights: their sigmoid is 0.5
            everywhere, so the global map starts ranking pixels as the donor's class activation map does,
            and their gradients still move them from the first step). See :meth:`GlamMethod.initialise_global_backbone`.
    """

    stage: str = "joint"
    beta: float = 1e-4
    learning_rate: float = 1e-5
    crop_jitter: float = 100.0
    global_epochs: float = 1.0
    local_epochs: float = 1.0
    joint_epochs: float = 0.5
    joint_lr_factor: float = 0.1
    global_init: str | None = None
    warmup_epochs: float = 0.0
    warmup_lr_factor: float = 10.0
    donorless_heads: str = "random"

    def __post_init__(self) -> None:
        if self.stage == "sep":
            object.__setattr__(self, "stage", "local")
        if self.stage not in GLAM_STAGES:
            raise ValueError(f"GLAM training stage must be one of {GLAM_STAGES} (or 'sep'), got {self.stage!r}")
        if self.beta < 0 or self.learning_rate <= 0 or self.crop_jitter < 0:
            raise ValueError("GLAM beta and crop_jitter must be non-negative and learning_rate positive")
        if min(self.global_epochs, self.local_epochs, self.joint_epochs, self.joint_lr_factor) <= 0:
            raise ValueError("GLAM stage epoch shares and joint_lr_factor must be positive")
        if self.warmup_epochs < 0 or self.warmup_lr_factor <= 0:
            raise ValueError("GLAM warmup_epochs must be non-negative and warmup_lr_factor positive")
        if self.donorless_heads not in DONORLESS_HEAD_STARTS:
            raise ValueError(
                f"GLAM donorless_heads must be one of {DONORLESS_HEAD_STARTS}, got {self.donorless_heads!r}"
            )


GLAM_STAGES: tuple[str, ...] = ("joint", "global", "local")
GLAM_RECIPE: tuple[str, ...] = ("global", "local", "joint")
"""The order of GLAM's training stages; ``GlamTrainingConfig.stage`` says where the recipe stops."""


# --------------------------------------------------------------------------------------------
# Network (submodule names = the published checkpoint's keys)
# --------------------------------------------------------------------------------------------
class UnusedWeight(nn.Module):
    """Holds a published tensor the forward pass never uses (GLAM's ``combine`` 1×1 conv).

    A buffer, not a parameter: it round-trips through state dicts but an optimiser or
    DistributedDataParallel never sees an unused parameter.
    """

    def __init__(self, *shape: int) -> None:
        super().__init__()
        self.register_buffer("weight", torch.zeros(*shape))


class GlamSaliencyHeads(nn.Module):
    """``postprocess_module``: 1×1 convolutions (no bias) to the two classes at three depths."""

    def __init__(self, channels: tuple[int, int, int] = (64, 128, 256), classes: int = len(CLASSES)) -> None:
        super().__init__()
        self.gn_conv_1 = nn.Conv2d(channels[0], classes, kernel_size=1, bias=False)
        self.gn_conv_2 = nn.Conv2d(channels[1], classes, kernel_size=1, bias=False)
        self.gn_conv_last = nn.Conv2d(channels[2], classes, kernel_size=1, bias=False)
        self.combine = UnusedWeight(classes, 3 * classes, 1, 1)


class GlamGlobalNetwork(nn.Module):
    """``global_network``: the ResNet-22 backbone and its saliency heads (on stages 3, 4 and the final map)."""

    def __init__(self, config: GlamConfig) -> None:
        super().__init__()
        strides = geometry.global_strides(config.stride_reductions)
        self.downsampling_branch = bb.PreActResNet22.for_geometry(strides, config.width)
        channels = self.downsampling_branch.stage_channels
        self.postprocess_module = GlamSaliencyHeads((channels[2], channels[3], channels[4]))


class GlamLocalNetwork(nn.Module):
    """``detection_network``: stride-1 ResNet-34 trunk + 1×1 conv (512→2) + sigmoid (published)."""

    def __init__(self, config: GlamConfig) -> None:
        super().__init__()
        strides = geometry.trunk_strides(geometry.GLAM_LOCAL_STRIDES, config.stride_reductions)
        self.dn_resnet = bb.LocalResNet.for_geometry(config.local_blocks, strides, config.local_width)
        self.gn_conv_last = nn.Conv2d(self.dn_resnet.out_channels, len(CLASSES), kernel_size=1, bias=False)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        """``M×1×ph×pw`` → local maps ``M×2×hl×wl`` in [0, 1] (``ph/4`` published; up to ``ph`` at
        smaller inputs, see :mod:`.geometry`)."""
        return torch.sigmoid(self.gn_conv_last(self.dn_resnet(patches)))


@dataclass
class GlamGlobalOutputs:
    """The global module's outputs for N images (h×w = the stage-3 map, 184×120 published).

    Attributes:
        cam_level1, cam_level2, cam_level3: ``N×2×h×w`` sigmoid maps of the three heads.
        cam_mean: ``N×2×h×w`` their mean.
        saliency_map_global: ``N×2×h×w`` weighted sum used for window search and fusion.
        y_cam_logits: ``4×N×2`` top-k pooled cam_level1, 2, 3 and cam_mean (probabilities,
            named as published).
        y_global: ``N×2`` the image-level prediction (mean of the first three).
    """

    cam_level1: torch.Tensor
    cam_level2: torch.Tensor
    cam_level3: torch.Tensor
    cam_mean: torch.Tensor
    saliency_map_global: torch.Tensor
    y_cam_logits: torch.Tensor
    y_global: torch.Tensor


@dataclass
class GlamOutputs:
    """Everything one GLAM forward pass computes for N images and K patches.

    Attributes:
        glob: :class:`GlamGlobalOutputs`.
        patch_locations: ``N×K×2`` int64 upper-left corners (row, column) in input pixels.
        patches: ``N×K×ph×pw`` crops fed to the local module.
        local_maps: ``N×K×2×hl×wl`` local module maps (``raw_local_cam``).
        y_local: ``N×K×2`` top-k pooled patch predictions (k = local_percent_k of the pixels).
        saliency_map: ``N×2×H×W`` fused map, or ``None`` when not requested.
    """

    glob: GlamGlobalOutputs
    patch_locations: torch.Tensor
    patches: torch.Tensor
    local_maps: torch.Tensor
    y_local: torch.Tensor
    saliency_map: torch.Tensor | None = None
    extras: dict[str, Any] = field(default_factory=dict)


def glam_global_from_features(
    config: GlamConfig,
    heads: GlamSaliencyHeads,
    stage3: torch.Tensor,
    stage4: torch.Tensor,
    final: torch.Tensor,
) -> GlamGlobalOutputs:
    """Saliency heads, global saliency and top-k pooling (reference steps 2–4).

    Args:
        heads: anything with ``gn_conv_1``, ``gn_conv_2``, ``gn_conv_last`` callables.
        stage3, stage4: raw outputs of ``layer_list.2`` and ``layer_list.3``.
        final: ``ReLU(final_bn(layer_list.4))``.
    """
    size = stage3.shape[-2:]
    cam1 = torch.sigmoid(heads.gn_conv_1(stage3))
    cam2 = torch.sigmoid(F.interpolate(heads.gn_conv_2(stage4), size=size, mode="nearest"))
    cam3 = torch.sigmoid(F.interpolate(heads.gn_conv_last(final), size=size, mode="nearest"))
    cam_mean = (cam1 + cam2 + cam3) / 3
    w3, w2, w1 = config.global_weights
    saliency = w3 * cam3 + w2 * cam2 + w1 * cam1
    k = bb.top_fraction_count(config.percent_k, (size[0], size[1]))
    pooled = torch.stack([bb.top_k_mean(m, k) for m in (cam1, cam2, cam3, cam_mean)])
    y_global = (pooled[0] + pooled[1] + pooled[2]) / 3
    return GlamGlobalOutputs(cam1, cam2, cam3, cam_mean, saliency, pooled, y_global)


class GlamNetwork(nn.Module):
    """The whole GLAM model; ``state_dict`` keys equal the published checkpoint's.

    Args:
        config: :class:`GlamConfig`.
    """

    def __init__(self, config: GlamConfig | None = None) -> None:
        super().__init__()
        self.config = config or GlamConfig()
        self.global_network = GlamGlobalNetwork(self.config)
        self.detection_network = GlamLocalNetwork(self.config)

    # -- pieces ------------------------------------------------------------------------------
    def run_global(self, images: torch.Tensor) -> GlamGlobalOutputs:
        """Global module on ``N×1×H×W`` images."""
        stages, final = self.global_network.downsampling_branch(images)
        return glam_global_from_features(
            self.config, self.global_network.postprocess_module, stages[2], stages[3], final
        )

    def choose_patches(self, images: torch.Tensor, saliency: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Window search on the global saliency, then crops (reference steps 5–6).

        Returns:
            ``(patch_locations N×K×2 int64, patches N×K×ph×pw)``.
        """
        return choose_patches(self.config, images, saliency)

    def forward(self, images: torch.Tensor, fuse: bool = True) -> GlamOutputs:
        """Args:
        images: ``N×1×H×W`` standardised images.
        fuse: whether to build the ``N×2×H×W`` fused map (not needed for the loss).
        """
        glob = self.run_global(images)
        locations, patches = self.choose_patches(images, glob.saliency_map_global)
        n, k, ph, pw = patches.shape
        local = self.detection_network(patches.reshape(n * k, 1, ph, pw))
        return finish_glam(self.config, images.shape[-2:], glob, locations, patches, local, fuse)


def choose_patches(
    config: GlamConfig, images: torch.Tensor, saliency: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """See :meth:`GlamNetwork.choose_patches`."""
    return bb.choose_patches(config.patch_size, config.num_patches, images, saliency)


def finish_glam(
    config: GlamConfig,
    image_size: tuple[int, int] | torch.Size,
    glob: GlamGlobalOutputs,
    locations: torch.Tensor,
    patches: torch.Tensor,
    local: torch.Tensor,
    fuse: bool,
    fuse_fn: Any = None,
) -> GlamOutputs:
    """Patch predictions and fusion (reference steps 7–8) from the local maps ``(N·K)×2×hl×wl``.

    ``fuse_fn`` replaces :func:`fuse_maps` (same signature and result), e.g. :func:`fuse_maps_fast`.
    """
    n, k, ph, pw = patches.shape
    hl, wl = local.shape[-2:]
    y_local = bb.top_k_mean(local, bb.top_fraction_count(config.local_percent_k, (hl, wl))).view(n, k, -1)
    local_maps = local.view(n, k, -1, hl, wl)
    fused = None
    if fuse:
        fused = (fuse_fn or fuse_maps)(glob.saliency_map_global, local, locations, (ph, pw), tuple(image_size))
    return GlamOutputs(glob, locations, patches, local_maps, y_local, fused)


def fuse_maps(
    global_map: torch.Tensor,
    local: torch.Tensor,
    locations: torch.Tensor,
    patch: tuple[int, int],
    image_size: tuple[int, int],
) -> torch.Tensor:
    """``(pasted local maps + global map) / 2`` at input resolution, both resized nearest.

    Args:
        global_map: ``N×2×h×w``.
        local: ``(N·K)×2×hl×wl`` local maps.
        locations: ``N×K×2`` corners in pixels.

    Returns:
        ``N×2×H×W``.
    """
    n, k = locations.shape[:2]
    local_up = F.interpolate(local, size=patch, mode="nearest").view(n, k, -1, patch[0], patch[1])
    canvas = bb.paste_patches(local_up.to(global_map.dtype), locations, image_size)
    return (canvas + F.interpolate(global_map, size=image_size, mode="nearest")) / 2


class GlamEngine:
    """GLAM inference: the same computation as :class:`GlamNetwork` in eval mode, faster.

    Both backbones run as :mod:`.inference` engines (BatchNorm folded, ReLU and residual adds fused
    into the convolutions, channels-last, ``precision`` compute dtype); heads, pooling, window
    search, crops and fusion run in float32 exactly as in the plain network.
    """

    def __init__(self, network: GlamNetwork, precision: str) -> None:
        dtype = inference.compute_dtype(precision)
        self.config = network.config
        self.heads = network.global_network.postprocess_module
        self.global_engine = inference.PreActResNetEngine(network.global_network.downsampling_branch, dtype)
        self.local_engine = inference.LocalResNetEngine(network.detection_network.dn_resnet, dtype)
        self.local_head = network.detection_network.gn_conv_last

    def __call__(self, images: torch.Tensor, fuse: bool = True) -> GlamOutputs:
        stages, final = self.global_engine(images)
        glob = glam_global_from_features(self.config, self.heads, stages[2].float(), stages[3].float(), final.float())
        locations, patches = choose_patches(self.config, images, glob.saliency_map_global)
        n, k, ph, pw = patches.shape
        features = self.local_engine(patches.reshape(n * k, 1, ph, pw))
        local = torch.sigmoid(self.local_head(features.float()))
        return finish_glam(self.config, images.shape[-2:], glob, locations, patches, local, fuse, fuse_maps_fast)


def fuse_maps_fast(
    global_map: torch.Tensor,
    local: torch.Tensor,
    locations: torch.Tensor,
    patch: tuple[int, int],
    image_size: tuple[int, int],
) -> torch.Tensor:
    """:func:`fuse_maps` with the same values, computing only the patch pixels beyond ``global / 2``
    (see :func:`~.backbones.fuse_half_and_half`)."""
    n, k = locations.shape[:2]
    local_up = F.interpolate(local, size=patch, mode="nearest").view(n, k, -1, patch[0], patch[1])
    return bb.fuse_half_and_half(global_map, local_up, locations, image_size)


# --------------------------------------------------------------------------------------------
# Registered methods
# --------------------------------------------------------------------------------------------
@METHODS.register("glam")
class GlamMethod(PublishedModelMethod):
    """GLAM (Liu et al., MIDL 2021): global saliency, one full-resolution patch, fused map.

    Args:
        device: where it runs.
        seed: seeds the random initialisation (used when no ``weights`` are given).
        image_size: ``(H, W)``; ``None`` = the published 2944×1920. Patch and window sizes scale
            with it (see :class:`GlamConfig`).
        weights: a published checkpoint (``model_sep.ckpt`` / ``model_joint.ckpt``, or the
            reference ``.npz``) or a checkpoint saved by this project.
        **hyperparameters: fields of :class:`GlamConfig` (``num_patches``, ``percent_k``,
            ``local_percent_k``, ``patch_side``) and of :class:`GlamTrainingConfig` (``stage``,
            ``beta``, ``learning_rate``, ``crop_jitter``, ``global_epochs``, ``local_epochs``,
            ``joint_epochs``, ``joint_lr_factor``), plus ``precision`` (``"fp32"`` or ``"bf16"``, CPU/GPU
            inference only) and ``fast`` (default True: folded, fused inference path; False runs
            the plain modules).
    """

    name: ClassVar[str] = "glam"
    description: ClassVar[str] = "GLAM (Liu et al. 2021): global-local activation maps, fused at full resolution"
    map_range: ClassVar[str] = "probability"
    published_source: ClassVar[str | None] = GLAM_REPOSITORY

    network_class: ClassVar[type[nn.Module]] = GlamNetwork
    config_class: ClassVar[type] = GlamConfig
    training_config_class: ClassVar[type] = GlamTrainingConfig
    model_label: ClassVar[str] = "GLAM"

    def forward(self, images: torch.Tensor, fuse: bool = True) -> GlamOutputs:
        """Inference forward pass without autograd, every intermediate kept (figures, fidelity tests).

        Uses the fast engine (folded BatchNorm, channels-last, optional bfloat16) unless ``fast=False``.
        """
        images = inference.check_images(images, self.device, self.name)
        with torch.inference_mode():
            if not self.fast:
                with inference.eval_mode(self._network):
                    return self._network(images, fuse=fuse)
            engine = self._engine.get(self._network, self.precision, GlamEngine)
            return engine(images, fuse=fuse)

    def predict(self, images: torch.Tensor) -> SaliencyOutput:
        out = self.forward(images, fuse=True)
        return SaliencyOutput(
            maps=out.saliency_map.float(),
            scores=out.glob.y_global.float(),
            map_range="probability",
            extras={
                "patch_locations": out.patch_locations,
                "global_map": out.glob.saliency_map_global.float(),
                "local_maps": out.local_maps.float(),
            },
        )

    # -- training ------------------------------------------------------------------------------
    def global_backbone(self) -> nn.Module:
        return self._network.global_network.downsampling_branch

    def training_maps(self, output: SaliencyOutput) -> dict[str, TrainingMap]:
        """``global``: the global saliency (``N×2×h×w``, what chooses the patch); ``local``: the local
        maps inside their patches (``(N·K)×2×hl×wl``); ``fused``: the returned map."""
        extras = output.extras
        local = extras["local_maps"]
        n, k = local.shape[:2]
        return {
            "global": TrainingMap(extras["global_map"]),
            "local": TrainingMap(local.reshape(n * k, *local.shape[2:]), patch_locations=extras["patch_locations"],
                                 patch_size=self.config.patch_size),
            "fused": TrainingMap(output.maps),
        }

    def final_saliency_head(self) -> nn.Conv2d:
        return self._network.global_network.postprocess_module.gn_conv_last

    def initialise_global_backbone(self, donor: TrainableMethod) -> None:
        """The donor's ResNet-22 and class weights (:meth:`PublishedModelMethod.initialise_global_backbone`),
        then the two heads it cannot start as ``donorless_heads`` says.

        Why ``"zero"`` exists: with random stage-3 and stage-4 heads, which the published global map
        weights 0.8 in all, the global map starts below chance although its donor-started head localises
        as well as GMIC's (measured on the cpu preset's validation split, obvious lesions, CAM seed-0
        donor: PxAP 0.005 / 0.013 for the global map, 0.103 / 0.194 for the final-map head alone).
        """
        super().initialise_global_backbone(donor)
        if self.training_config.donorless_heads == "zero":
            heads = self._network.global_network.postprocess_module
            with torch.no_grad():
                heads.gn_conv_1.weight.zero_()
                heads.gn_conv_2.weight.zero_()

    def training_stages(self) -> tuple[TrainingStage, ...]:
        """The paper's stages up to ``training_config.stage``, each resumable on its own.

        global: BCE(``y_global``) + β·mean|global saliency|, only ``global_network`` trained.
        local: BCE(patch prediction) + β·mean|local maps| on the windows the frozen global module
        chooses, only ``detection_network`` trained; its best checkpoint is chosen by validation loss
        (the image-level scores, ``y_global``, do not change in this stage). joint: both losses, the
        whole network, at ``joint_lr_factor`` times the learning rate.
        """
        tc = self.training_config
        stages = {
            "global": TrainingStage("global", loss="global", trainable=("global_network",),
                                    epochs_fraction=tc.global_epochs, maps=("global",)),
            "local": TrainingStage("local", loss="local", trainable=("detection_network",),
                                   epochs_fraction=tc.local_epochs, criterion="loss", maps=("local",)),
            "joint": TrainingStage("joint", loss="joint", epochs_fraction=tc.joint_epochs,
                                   lr_factor=tc.joint_lr_factor, maps=("global", "local", "fused")),
        }
        last = GLAM_RECIPE.index(tc.stage)
        recipe = (stages[name] for name in GLAM_RECIPE[: last + 1])
        return (*self.warmup_stages(loss="global", maps=("global",)), *recipe)

    def warmup_modules(self) -> tuple[str, ...]:
        return ("global_network.postprocess_module",)

    def training_loss(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        pos_weight: torch.Tensor | None = None,
        stage: str | None = None,
    ) -> torch.Tensor:
        """Weakly-supervised GLAM loss of one stage (default: ``training_config.stage``).

        joint: BCE(y_global) + BCE(patch prediction) + β·(mean|global saliency| + mean|local maps|);
        global: the first and the global L1 term; local: the second and the local L1 term, with
        the global module run without gradient. The patch prediction of an image is the largest
        top-k pooled prediction over its K patches (one patch in the published configuration).

        Under autocast (mixed-precision training) only the two backbones run in low precision: the
        saliency heads, sigmoids, pooling, window search and the losses run in float32.

        Args:
            images: ``N×1×H×W``; labels: ``N×2`` float {0, 1}.
            pos_weight: optional ``2`` weights of positive terms in every BCE (class imbalance).
            stage: ``"global"``, ``"local"`` or ``"joint"``.
        """
        stage = self.training_config.stage if stage is None else stage
        if stage not in GLAM_STAGES:
            raise ValueError(f"GLAM training stage must be one of {GLAM_STAGES}, got {stage!r}")
        labels = labels.to(dtype=torch.float32, device=images.device)
        beta, net = self.training_config.beta, self._network
        with torch.set_grad_enabled(torch.is_grad_enabled() and stage != "local"):
            glob = _global_outputs_float32(self.config, net, images)
        if stage == "global":
            with _float32(images):
                return glam_global_loss(glob, labels, beta, pos_weight)
        locations, patches = net.choose_patches(images, glob.saliency_map_global)
        n, k, ph, pw = patches.shape
        features = net.detection_network.dn_resnet(patches.reshape(n * k, 1, ph, pw))
        with _float32(images):
            local = torch.sigmoid(net.detection_network.gn_conv_last(features.float()))
            out = finish_glam(self.config, images.shape[-2:], glob, locations, patches, local, fuse=False)
            loss = glam_local_loss(out, labels, beta, pos_weight)
            if stage == "joint":
                loss = loss + glam_global_loss(glob, labels, beta, pos_weight)
        return loss

    def classifier(self) -> tuple[nn.Module, nn.Module]:
        """Classifier view of the global module for post-hoc explainers.

        Returns:
            ``(module, target_layer)``: ``module(images N×1×H×W)`` gives ``N×2`` logits, the logit
            of ``y_global`` (the pooled probability, clamped to [1e-6, 1 − 1e-6]), so explaining a
            logit explains GLAM's own image-level decision; ``target_layer`` is the last block of
            the global backbone (``layer_list.4.1``, 256×46×30 published).
        """
        return GlamClassifier(self._network), self._network.global_network.downsampling_branch.layer_list[-1][-1]


class GlamClassifier(nn.Module):
    """``images → logit(y_global)``; see :meth:`GlamMethod.classifier`."""

    def __init__(self, network: GlamNetwork) -> None:
        super().__init__()
        self.network = network

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.logit(self.network.run_global(images).y_global, eps=1e-6)


def glam_global_loss(
    glob: GlamGlobalOutputs, labels: torch.Tensor, beta: float, pos_weight: torch.Tensor | None = None
) -> torch.Tensor:
    """BCE on ``y_global`` (summed over classes, mean over images) + β·mean|global saliency|."""
    return bb.binary_cross_entropy(glob.y_global, labels, pos_weight) + beta * glob.saliency_map_global.abs().mean()


def glam_local_loss(
    out: GlamOutputs, labels: torch.Tensor, beta: float, pos_weight: torch.Tensor | None = None
) -> torch.Tensor:
    """BCE on the image's patch prediction (max over its patches) + β·mean|local maps|."""
    return bb.binary_cross_entropy(out.y_local.amax(dim=1), labels, pos_weight) + beta * out.local_maps.abs().mean()


def _float32(images: torch.Tensor) -> torch.autocast:
    """A region where autocast is off: heads, pooling and losses stay in float32 under mixed precision."""
    return torch.autocast(images.device.type, enabled=False)


def _global_outputs_float32(config: GlamConfig, net: GlamNetwork, images: torch.Tensor) -> GlamGlobalOutputs:
    """:meth:`GlamNetwork.run_global` with the backbone under any active autocast and the rest in float32
    (identical to ``run_global`` when autocast is off)."""
    stages, final = net.global_network.downsampling_branch(images)
    with _float32(images):
        return glam_global_from_features(
            config, net.global_network.postprocess_module, stages[2].float(), stages[3].float(), final.float()
        )


GLAM_VARIANTS: tuple[WeightVariant, ...] = (
    WeightVariant("sep", "model_sep.ckpt", "GLAM, published weights model_sep.ckpt (modules trained separately)"),
    WeightVariant("joint", "model_joint.ckpt", "GLAM, published weights model_joint.ckpt (modules fine-tuned jointly)"),
)
"""The published GLAM weights, registered as ``glam.<tag>`` (the published configuration is the default one)."""

for _variant in GLAM_VARIANTS:
    register_variant(GlamMethod, _variant)
del _variant

__all__ = [
    "GLAM_RECIPE",
    "GLAM_STAGES",
    "GLAM_VARIANTS",
    "GlamConfig",
    "GlamMethod",
    "GlamNetwork",
    "GlamOutputs",
    "GlamTrainingConfig",
]
