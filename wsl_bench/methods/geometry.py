"""Scale-faithful geometry: the published networks' strides, derived for smaller inputs.

GLAM and GMIC were designed for 2944×1920 mammograms. What matters for localisation is geometry
*relative to the image and to the lesions*: how many saliency-map cells an image has, how wide the
patch is, how much of the image one map cell sees (its receptive field). Run unchanged on a
368×240 image, the published networks keep their pixel geometry: a 6×4 map whose every cell sees
2.4 image heights. The functions here derive, for an input of any size, the strides that keep
the published proportions:

* ``reductions = round(log2(2944 / H))`` factors of two are taken out of the network's strides
  (0 at the published size: the published network, unchanged);
* in the global ResNet-22 they are taken from the *latest* strides that do not define the ratios
  between its three maps (stage 3, stage 2, the stem's max-pool, the stem convolution, in that
  order), so the cheap early layers keep their downsampling and the stage-3/4/5 maps keep the
  published cell counts;
* the patch-level trunks (GLAM's stride-1 ResNet, GMIC's ResNet-18) lose the same number of
  factors, as far as they have them (GLAM's local map cannot get finer than one pixel).

A stride change keeps every parameter's shape, so a published checkpoint loads into a derived
network; the channel widths (``width`` multiplier) and GLAM's local block counts are what a CPU
budget may additionally narrow.

:func:`receptive_field` and :func:`output_stride` measure the *built* networks
(``wsl_bench.report.describe`` also runs them on PyTorch's meta device: no memory, no compute), so tables
and tests state what the code computes, never a restated constant.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn

PUBLISHED_IMAGE_SIZE: tuple[int, int] = (2944, 1920)
"""``(H, W)`` of the published GLAM/GMIC input; sizes in the papers are relative to it."""

GEOMETRIES: tuple[str, ...] = ("scaled", "pixels")
"""``scaled``: strides derived from the input size (the default; the published network at 2944×1920);
``pixels``: the published strides at every input size (the published code run on a smaller image)."""


def check_geometry(geometry: str) -> str:
    if geometry not in GEOMETRIES:
        raise ValueError(f"geometry must be one of {GEOMETRIES}, got {geometry!r}")
    return geometry


MAX_REDUCTIONS = 4
"""The ResNet-22 has four factors of two to give (see :func:`global_strides`): below about 184 rows
the maps can no longer keep their published cell counts (stage 3 then runs at the input's resolution)."""


def stride_reductions(image_size: Sequence[int], geometry: str = "scaled") -> int:
    """Factors of two to take out of the published strides for an input of ``image_size``.

    ``round(log2(2944 / H))`` clipped to ``[0, 4]``: 0 at 2944 rows, 2 at 736, 3 at 368, 4 at 256
    (where ``log2`` is 3.52 and both 3 and 4 keep the map within a factor 1.5 of the published cell
    count, 4 keeps the receptive field within it too). Always 0 for ``geometry="pixels"``.
    """
    if check_geometry(geometry) == "pixels":
        return 0
    return min(MAX_REDUCTIONS, max(0, round(math.log2(PUBLISHED_IMAGE_SIZE[0] / image_size[0]))))


def scaled_width(channels: int, width: float) -> int:
    """``round(channels · width)``, at least 1 channel."""
    if width <= 0:
        raise ValueError(f"width multiplier must be positive, got {width}")
    return max(1, int(round(channels * width)))


@dataclass(frozen=True)
class GlobalStrides:
    """Strides of the pre-activation ResNet-22 (published: stem 2, max-pool, stages 1, 2, 2, 2, 2).

    Attributes:
        stem: stride of ``first_conv``.
        pool: whether ``first_pool`` (max 3×3, stride 2) is kept.
        stages: stride of each of the five stages.
    """

    stem: int = 2
    pool: bool = True
    stages: tuple[int, ...] = (1, 2, 2, 2, 2)


def global_strides(reductions: int) -> GlobalStrides:
    """The ResNet-22's strides with ``reductions`` factors of two removed, latest first.

    Stages 4 and 5 keep theirs (they set the 2× and 4× ratios between GLAM's three maps and GMIC's
    map), so at most four factors can go: stage 3, stage 2, the max-pool, the stem convolution.

    Raises:
        ValueError: more reductions than the network has strides to give.
    """
    if not 0 <= reductions <= MAX_REDUCTIONS:
        raise ValueError(f"the ResNet-22 can lose 0 to 4 factors of two of its stride, asked for {reductions}")
    stages = [1, 2, 2, 2, 2]
    for stage in (2, 1)[:reductions]:
        stages[stage] = 1
    return GlobalStrides(stem=1 if reductions >= 4 else 2, pool=reductions < 3, stages=tuple(stages))


@dataclass(frozen=True)
class TrunkStrides:
    """Strides of a post-activation patch trunk (``conv1`` stride, whether its max-pool downsamples, stages)."""

    stem: int
    pool: bool
    stages: tuple[int, ...]


def trunk_strides(published: TrunkStrides, reductions: int) -> TrunkStrides:
    """``published`` with up to ``reductions`` factors of two removed, latest first (stages from the
    last, then the max-pool, then the stem convolution); a trunk with fewer keeps stride 1."""
    stages = list(published.stages)
    pool, stem = published.pool, published.stem
    left = reductions
    for i in reversed(range(len(stages))):
        if left and stages[i] == 2:
            stages[i], left = 1, left - 1
    if left and pool:
        pool, left = False, left - 1
    if left and stem == 2:
        stem, left = 1, left - 1
    return TrunkStrides(stem, pool, tuple(stages))


GLAM_LOCAL_STRIDES = TrunkStrides(stem=2, pool=True, stages=(1, 1, 1, 1))
"""GLAM's local module: the ResNet-34 layout, stride 4 in the stem, every stage at stride 1."""
GMIC_LOCAL_STRIDES = TrunkStrides(stem=2, pool=True, stages=(1, 2, 2, 2))
"""GMIC's local module: a standard ResNet-18 trunk (stride 32)."""


# --------------------------------------------------------------------------------------------
# Measuring built networks
# --------------------------------------------------------------------------------------------
_SHORTCUT_NAMES = ("downsample", "shortcut")


def _main_path_layers(module: nn.Module, upto: str | None = None) -> list[nn.Module]:
    """Convolutions and max-pools on the main path, in registration (= forward) order, up to the end
    of the submodule ``upto``; shortcut projections are skipped (1×1: they widen nothing, and their
    stride is already counted on the main path)."""
    layers, seen = [], False
    for name, child in module.named_modules():
        if upto is not None:
            within = name == upto or name.startswith(upto + ".")
            if seen and not within:
                break
            seen = seen or within
        if any(part in _SHORTCUT_NAMES for part in name.split(".")):
            continue
        if isinstance(child, (nn.Conv2d, nn.MaxPool2d)):
            layers.append(child)
    return layers


def _pair(value: int | tuple[int, ...]) -> int:
    return value if isinstance(value, int) else value[0]


def receptive_field(module: nn.Module, upto: str | None = None) -> int:
    """Theoretical receptive field (rows) of the output of ``module`` (or of its submodule ``upto``).

    ``1 + Σ (k_l − 1) · d_l · J_l`` over the convolutions and max-pools on the main path, ``J_l``
    the product of the strides before layer ``l``.
    """
    field, jump = 1, 1
    for layer in _main_path_layers(module, upto):
        k, s, d = _pair(layer.kernel_size), _pair(layer.stride), _pair(layer.dilation)
        field += (k - 1) * d * jump
        jump *= s
    return field


def output_stride(module: nn.Module) -> int:
    """Input pixels per output cell of ``module`` (the product of its main-path strides)."""
    return math.prod(_pair(layer.stride) for layer in _main_path_layers(module))
