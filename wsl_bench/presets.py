"""Named run sizes: image size, split sizes and training budget, from seconds (tiny) to the paper (full)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from wsl_bench.registry import UnknownNameError, unknown_name_message


@dataclass(frozen=True)
class Network:
    """The architecture a preset gives GLAM, GMIC or CAM (constructor options of those methods).

    Attributes:
        width: channel multiplier of the global ResNet-22 (1: the published widths).
        local_width: channel multiplier of the local network (GLAM, GMIC).
        local_blocks: residual blocks per stage of GLAM's local ResNet.
    """

    width: float
    local_width: float | None = None
    local_blocks: tuple[int, int, int, int] | None = None


@dataclass(frozen=True)
class Training:
    """How a trainable method trains at a preset (constructor options of GLAM and GMIC).

    Attributes:
        learning_rate: Adam learning rate of the recipe.
        global_epochs, local_epochs, joint_epochs: shares of the preset's epochs GLAM's global, local
            and joint stages train.
        global_init: trained method whose global network starts this one's (``"cam"``).
        donorless_heads: how GLAM's stage-3 and stage-4 saliency heads, which no donor starts, begin
            (``"zero"`` or ``"random"``).
    """

    learning_rate: float | None = None
    global_epochs: float | None = None
    local_epochs: float | None = None
    joint_epochs: float | None = None
    global_init: str | None = None
    donorless_heads: str | None = None


@dataclass(frozen=True)
class Attribution:
    """Settings of an attribution explainer at a preset.

    Attributes:
        n_steps: integration steps of integrated gradients.
    """

    n_steps: int | None = None


@dataclass(frozen=True)
class MethodSettings:
    """What a preset sets for one method: typed groups whose field names are the method's
    constructor options (``tests/test_presets.py`` builds every method with them). Unset fields
    (``None``) leave the method's default."""

    network: Network | None = None
    training: Training | None = None
    attribution: Attribution | None = None

    def options(self) -> dict[str, Any]:
        """The constructor options, flattened: ``{"width": 0.5, "learning_rate": 1e-4, ...}``."""
        options: dict[str, Any] = {}
        for group in (self.network, self.training, self.attribution):
            if group is not None:
                options.update({k: v for k, v in asdict(group).items() if v is not None})
        return options


@dataclass(frozen=True)
class Preset:
    """One run size.

    Attributes:
        name: preset name (``--preset``).
        image_size: ``(H, W)`` every image is produced or resized to.
        n_train, n_val, n_test: images per split of the synthetic dataset.
        epochs: training epochs of trainable methods.
        batch_size: training batch size.
        description: one line for help texts.
        best_criterion: validation quantity selecting the evaluated checkpoint of every trainable
            method (see ``wsl_bench.training.trainer.CRITERIA``).
        methods: per-method settings this budget needs (:class:`MethodSettings`, merged under the
            user's own ``--option`` values), e.g. narrower networks or the learning rate of training
            from scratch on a small split.
        skip_by_default: methods that ``wsl-bench run`` without ``--methods`` leaves out at this
            size because they cost too much time (they still run when named).
        cpu_amp: train under bfloat16 autocast on CPUs that compute it natively
            (``wsl_bench.training.trainer.TrainConfig.cpu_amp``).
        epoch_images: images per training epoch, drawn in turn from the training split
            (``TrainConfig.epoch_images``); ``None``: an epoch is a pass over the split.
        lr_schedule: ``TrainConfig.lr_schedule`` of every trainable method (``"constant"`` or ``"cosine"``).
    """

    name: str
    image_size: tuple[int, int]
    n_train: int
    n_val: int
    n_test: int
    epochs: int
    batch_size: int
    description: str
    best_criterion: str = "mean_auc"
    methods: Mapping[str, MethodSettings] = field(default_factory=dict)
    skip_by_default: tuple[str, ...] = ()
    cpu_amp: bool = False
    epoch_images: int | None = None
    lr_schedule: str = "constant"

    @property
    def method_options(self) -> dict[str, dict[str, Any]]:
        """``{method: constructor options}`` of :attr:`methods` (what the pipeline merges)."""
        return {name: settings.options() for name, settings in self.methods.items()}

    def to_dict(self) -> dict:
        """The preset as the manifest records it: plain values, :attr:`methods` as ``method_options``."""
        values = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "methods"}
        return {**values, "method_options": self.method_options}


# Below 2944×1920 the networks take the strides derived for the input size (methods/geometry.py): their
# maps keep the published cell counts, so they cost about what the published ones cost from stage 3 on,
# whatever the image size. What a CPU budget narrows is the channel width (and GLAM's local depth,
# which also keeps its receptive field at about half the patch, as published). The cpu preset trains
# under bfloat16 autocast (TrainConfig.cpu_amp), which makes width 0.5 cost what width 0.25 costs in
# float32 (CAM at 368x240, 2 cores, batch 16: 50 ms per training image either way; 22 ms at 0.25).
SMALL_NETWORKS: dict[str, Network] = {
    "glam": Network(width=0.5, local_width=0.25, local_blocks=(2, 2, 2, 2)),
    "gmic": Network(width=0.5, local_width=0.5),
    "cam": Network(width=0.5),
}
"""The cpu preset's networks."""

TINY_NETWORKS: dict[str, Network] = {
    "glam": Network(width=0.25, local_width=0.125, local_blocks=(1, 1, 1, 1)),
    "gmic": Network(width=0.25, local_width=0.25),
    "cam": Network(width=0.25),
}
"""The tiny preset's networks: a quarter of the widths (float32 training, seconds per test) and one
block per local stage (at a 45-pixel patch the published depth would see 1.6 patches)."""

# CAM trains from scratch at 1e-3 (its ResNet-22 did not learn at 3e-3: loss 0.69 after 4 epochs).
# GLAM's and GMIC's global ResNet-22 start from CAM's trained one, as the published global modules
# start from a mammogram classifier's weights (global_init): from random weights their top-k pooled
# maps did not learn in this budget (validation loss at chance, validation PxAP 0.004, below random's
# 0.008, by epoch 4 of both). They fine-tune at 1e-4, between the published fine-tuning rates (4e-6
# to 3e-5) and 1e-3, which erased the initialisation within an epoch (GMIC's validation PxAP 0.003
# after it; 0.05/0.07 at 1e-4 after 4 epochs). GLAM's global, local and joint stages get a quarter,
# a third and a sixth of the epochs, which keeps the first run within its 20-minute budget. The global
# stage's quarter is chosen on the validation split: fine-tuned for all 12 epochs, its validation mean
# PxAP was highest after epoch 1 (0.023; 0.013 or less from epoch 2 on, 0.008 at epoch 12), so the
# checkpoint the criterion hands to the local stage was epoch 1's and the last 11 epochs (5.5 minutes
# of a 2-core run) changed nothing; 3 epochs keep a margin for machines whose trajectory differs.
# GLAM's two saliency heads that no donor starts (stages 3 and 4, weighted 0.6 + 0.2 in its global
# map) start at zero: left random they buried the donor-started head, so the global map started below
# chance (validation PxAP 0.005 / 0.013 benign / malignant, obvious lesions, CAM seed-0 donor) where
# its final-map head alone and GMIC's global map from the same donor scored 0.103 / 0.194 and
# 0.104 / 0.198; at zero the global map starts at 0.103 / 0.190. Three epochs of the global stage kept
# 0.013-0.028 / 0.072-0.096 (random heads: 0.004-0.007 / 0.011; another donor, see glam.md).
FINE_TUNING_FROM_CAM: dict[str, Training] = {
    "glam": Training(learning_rate=1e-4, global_epochs=0.25, local_epochs=0.34, joint_epochs=0.17,
                     global_init="cam", donorless_heads="zero"),
    "gmic": Training(learning_rate=1e-4, global_init="cam"),
}
"""How GLAM and GMIC train in the cpu experiment (the cpu and gpu presets)."""

FEWER_INTEGRATION_STEPS = Attribution(n_steps=8)
"""8 Gauss-Legendre steps instead of 50: 0.23 s instead of 1.8 s per image at the cpu preset (measured)."""


def _settings(
    networks: Mapping[str, Network] | None = None,
    training: Mapping[str, Training] | None = None,
    attribution: Mapping[str, Attribution] | None = None,
) -> dict[str, MethodSettings]:
    """One :class:`MethodSettings` per method named in any of the groups."""
    groups = {"network": networks or {}, "training": training or {}, "attribution": attribution or {}}
    names = dict.fromkeys(name for group in groups.values() for name in group)
    return {name: MethodSettings(**{kind: group.get(name) for kind, group in groups.items()}) for name in names}


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            "tiny", (256, 160), 24, 8, 8, 1, 8, "seconds; for tests and smoke runs",
            methods=_settings(networks=TINY_NETWORKS),
        ),
        Preset(
            "cpu", (368, 240), 3840, 120, 240, 12, 16, "the default benchmark, sized for a 2-core CPU",
            # Localisation on held-out images picks the checkpoint (training itself sees labels only):
            # from scratch on 320 images, CAM-style maps localise early and then drift to context
            # while AUC still rises (methods/cam.md); WSOL model selection as in Choe et al. 2020.
            best_criterion="mean_pxap",
            methods=_settings(
                networks=SMALL_NETWORKS,
                training=FINE_TUNING_FROM_CAM,
                attribution={"integrated_gradients": FEWER_INTEGRATION_STEPS},
            ),
            # A cached default run has 2 minutes on 2 cores for 80 images (test and validation) per
            # method. Left out, they run when named: the perturbation explainers (128 or 225 forward
            # passes per image and class: 1.3-3.4 s per image), and the pixel-gradient attributions
            # and FullGrad of the ResNet-22 CAM classifier at width 0.5, measured per image in the
            # first default run: integrated gradients 1.34 s, guided Grad-CAM 0.25 s, input x
            # gradient 0.17 s, FullGrad 0.17 s, saliency 0.16 s (together 170 s for 80 images).
            skip_by_default=(
                "ablationcam", "fullgrad", "guided_gradcam", "input_x_gradient", "integrated_gradients", "occlusion",
                "saliency", "scorecam",
            ),
            cpu_amp=True,
            epoch_images=320,
        ),
        Preset("full", (2944, 1920), 2000, 200, 400, 30, 4, "the published 2944×1920 resolution; needs a GPU"),
        Preset(
            "gpu", (2944, 1920), 320, 40, 40, 12, 16,
            "the default (cpu) experiment at the published 2944×1920 with the published networks; one GPU",
            # The cpu preset's data, budget, criterion and training settings, so the two runs differ only
            # in scale: the same synthetic images (ids and content, at 8x the side), the published
            # networks instead of the derived, narrowed ones. benchmarks/gpu_full.py runs it end to end.
            best_criterion="mean_pxap",
            methods=_settings(
                training=FINE_TUNING_FROM_CAM, attribution={"integrated_gradients": FEWER_INTEGRATION_STEPS}
            ),
            skip_by_default=("ablationcam", "occlusion", "scorecam"),
        ),
    )
}



def get_preset(name: str) -> Preset:
    """The preset called ``name``.

    Raises:
        UnknownNameError: listing the known presets.
    """
    try:
        return PRESETS[name]
    except KeyError:
        raise UnknownNameError(unknown_name_message("preset", name, PRESETS)) from None
