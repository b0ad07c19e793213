"""Building blocks shared by GLAM and GMIC: backbones, pooling, window search, crops, pasting.

Module attribute names follow the published checkpoints (``first_conv``, ``layer_list``,
``final_bn``, ``dn_resnet.layer1`` ...), so a published state dict maps onto these modules key for
key (see :mod:`wsl_bench.weights`).

Every function here works on a whole batch with tensor operations: no loop over images or
patches, no host round trip. The only Python loop is over the K sequential window searches of
:func:`select_windows`, where each search depends on the previous one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from wsl_bench.methods import geometry

PUBLISHED_IMAGE_SIZE = geometry.PUBLISHED_IMAGE_SIZE


# --------------------------------------------------------------------------------------------
# Global backbone: pre-activation ("v2") ResNet-22
# --------------------------------------------------------------------------------------------
def conv3x3(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, kernel_size=3, stride=stride, padding=1, bias=False)


class PreActBlock(nn.Module):
    """Pre-activation basic block: ``BN → ReLU → conv3×3(stride) → BN → ReLU → conv3×3`` + shortcut.

    With ``projection`` the shortcut is a 1×1 convolution (``downsample.0``, no BN) of the
    *pre-activated* input; otherwise the raw input is added.

    Args:
        in_ch, out_ch: channels.
        stride: stride of ``conv1`` and of the projection.
        projection: whether the block has a ``downsample`` projection.
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int, projection: bool) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_ch)
        self.conv1 = conv3x3(in_ch, out_ch, stride)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.conv2 = conv3x3(out_ch, out_ch)
        self.downsample = (
            nn.Sequential(nn.Conv2d(in_ch, out_ch, kernel_size=1, stride=stride, bias=False)) if projection else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``N×in_ch×h×w`` → ``N×out_ch×h'×w'``."""
        pre = F.relu(self.bn1(x))
        shortcut = self.downsample(pre) if self.downsample is not None else x
        out = self.conv2(F.relu(self.bn2(self.conv1(pre))))
        return out + shortcut


class PreActResNet22(nn.Module):
    """The global backbone of GLAM and GMIC (published as ``ResNetV2``, 22 layers).

    ``first_conv`` 7×7/2 (1→16) → ``first_pool`` max 3×3/2 (no padding) → five stages
    (``layer_list.0..4``) of two :class:`PreActBlock` each, widths 16·2^i, strides 1, 2, 2, 2, 2,
    the first block of every stage projecting → ``final_bn`` → ReLU.

    At 2944×1920 the stage outputs are 735×479, 368×240, 184×120, 92×60 and 46×30. Smaller inputs
    take derived strides (``stem_stride``, ``pool``, ``strides``; see :mod:`.geometry`) that keep
    those map sizes relative to the image.
    """

    def __init__(
        self,
        in_channels: int = 1,
        width: int = 16,
        blocks: Sequence[int] = (2, 2, 2, 2, 2),
        strides: Sequence[int] = (1, 2, 2, 2, 2),
        stem_stride: int = 2,
        pool: bool = True,
    ) -> None:
        super().__init__()
        self.first_conv = nn.Conv2d(in_channels, width, kernel_size=7, stride=stem_stride, padding=3, bias=False)
        # Without its stride the max-pool is dropped, not kept at stride 1: a 3×3 pool without
        # padding would shave two rows off every map. An identity keeps the state dict unchanged.
        self.first_pool: nn.Module = nn.MaxPool2d(kernel_size=3, stride=2, padding=0) if pool else nn.Identity()
        stages = []
        in_ch = width
        for i, (n_blocks, stride) in enumerate(zip(blocks, strides, strict=True)):
            out_ch = width * 2**i
            layers = [PreActBlock(in_ch, out_ch, stride, projection=True)]
            layers += [PreActBlock(out_ch, out_ch, 1, projection=False) for _ in range(n_blocks - 1)]
            stages.append(nn.Sequential(*layers))
            in_ch = out_ch
        self.layer_list = nn.ModuleList(stages)
        self.final_bn = nn.BatchNorm2d(in_ch)
        self.out_channels = in_ch
        self.stage_channels = tuple(width * 2**i for i in range(len(blocks)))

    @classmethod
    def for_geometry(cls, strides: geometry.GlobalStrides, width: float = 1.0) -> PreActResNet22:
        """The ResNet-22 with derived strides (:func:`.geometry.global_strides`) and widths ``16·width·2^i``."""
        return cls(width=geometry.scaled_width(16, width), strides=strides.stages, stem_stride=strides.stem,
                   pool=strides.pool)

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Args:
            x: ``N×1×H×W``.

        Returns:
            ``(stage_outputs, final)``: the raw output of each stage (before any activation) and
            ``ReLU(final_bn(last stage))`` (``N×256×h×w``).
        """
        stage_outputs = self.stage_outputs(x)
        return stage_outputs, F.relu(self.final_bn(stage_outputs[-1]))

    def stage_outputs(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The raw output of each stage for ``N×1×H×W`` images (before ``final_bn``)."""
        h = self.first_pool(self.first_conv(x))
        outputs = []
        for stage in self.layer_list:
            h = stage(h)
            outputs.append(h)
        return outputs


# --------------------------------------------------------------------------------------------
# Local backbones: post-activation ResNets (torchvision layout and names)
# --------------------------------------------------------------------------------------------
class BasicBlock(nn.Module):
    """Post-activation basic block: ``conv → BN → ReLU → conv → BN`` + shortcut, then ReLU.

    The shortcut is ``downsample`` = 1×1 conv + BN where the shape changes, else the input.
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.conv1 = conv3x3(in_ch, out_ch, stride)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = conv3x3(out_ch, out_ch)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.downsample = None
        if stride != 1 or in_ch != out_ch:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, kernel_size=1, stride=stride, bias=False), nn.BatchNorm2d(out_ch)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = self.downsample(x) if self.downsample is not None else x
        return F.relu(out + shortcut)


class LocalResNet(nn.Module):
    """Post-activation ResNet trunk without pooling head, for patches.

    ``conv1`` 7×7/2 (3→64) → ``bn1`` → ReLU → ``maxpool`` 3×3/2 (padding 1) → ``layer1..4``.
    The one-channel patch is repeated to the three input channels the published weights expect.

    Args:
        blocks: basic blocks per stage: ``(2, 2, 2, 2)`` ResNet-18 (GMIC), ``(3, 4, 6, 3)`` the
            ResNet-34 layout (GLAM).
        strides: stage strides: ``(1, 2, 2, 2)`` standard (GMIC), ``(1, 1, 1, 1)`` GLAM's
            full-resolution local module.
        width: channels of the stem and the first stage (64 published).
        stem_stride, pool: the stem's stride and whether its max-pool is kept (2 and True
            published; smaller inputs drop them, see :mod:`.geometry`).
    """

    def __init__(
        self, blocks: Sequence[int], strides: Sequence[int], width: int = 64, stem_stride: int = 2, pool: bool = True
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=stem_stride, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.maxpool: nn.Module = nn.MaxPool2d(kernel_size=3, stride=2, padding=1) if pool else nn.Identity()
        in_ch = width
        for i, (n_blocks, stride) in enumerate(zip(blocks, strides, strict=True)):
            out_ch = width * 2**i
            layers = [BasicBlock(in_ch, out_ch, stride)] + [BasicBlock(out_ch, out_ch, 1) for _ in range(n_blocks - 1)]
            self.add_module(f"layer{i + 1}", nn.Sequential(*layers))
            in_ch = out_ch
        self.num_stages = len(blocks)
        self.out_channels = in_ch

    @classmethod
    def for_geometry(cls, blocks: Sequence[int], strides: geometry.TrunkStrides, width: float = 1.0) -> LocalResNet:
        """A trunk with derived strides (:func:`.geometry.trunk_strides`) and widths ``64·width·2^i``."""
        return cls(blocks, strides.stages, geometry.scaled_width(64, width), strides.stem, strides.pool)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``M×1×p×p`` patches → ``M×512×p/4×p/4`` (GLAM) or ``M×512×p/32×p/32`` (GMIC)."""
        x = x.expand(-1, 3, -1, -1)
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        for i in range(self.num_stages):
            x = getattr(self, f"layer{i + 1}")(x)
        return x


def resnet18_trunk() -> LocalResNet:
    """GMIC's local network: a standard ResNet-18 trunk."""
    return LocalResNet(blocks=(2, 2, 2, 2), strides=(1, 2, 2, 2))


def resnet34_stride1_trunk() -> LocalResNet:
    """GLAM's local network: the ResNet-34 block layout with every stage at stride 1."""
    return LocalResNet(blocks=(3, 4, 6, 3), strides=(1, 1, 1, 1))


# --------------------------------------------------------------------------------------------
# Sizes
# --------------------------------------------------------------------------------------------
def scaled_patch_size(published_side: int, image_size: tuple[int, int]) -> tuple[int, int]:
    """Side of the square patch for an input of ``image_size``: ``round(side · H / 2944)``, at least 1.

    The published models use 512 (GLAM) and 256 (GMIC) pixels at 2944×1920; smaller inputs keep
    the same patch-to-image proportion (by height), so the tiny 256×160 preset gets 45 / 22
    pixels and the 736×480 preset 128 / 64.
    """
    side = max(1, int(round(published_side * image_size[0] / PUBLISHED_IMAGE_SIZE[0])))
    return side, side


class ScaledNetworkConfig:
    """What GLAM's and GMIC's configurations share: a frozen dataclass with ``image_size``,
    ``patch_side`` and ``geometry`` fields, whose strides and patch side follow the image size.

    Subclasses set ``PUBLISHED_PATCH_SIDE`` (the patch side at 2944×1920).
    """

    PUBLISHED_PATCH_SIDE: ClassVar[int]
    image_size: tuple[int, int]
    patch_side: int | None
    geometry: str

    @property
    def stride_reductions(self) -> int:
        """Factors of two taken out of the published strides at this size (:func:`.geometry.stride_reductions`)."""
        return geometry.stride_reductions(self.image_size, self.geometry)

    @property
    def patch_size(self) -> tuple[int, int]:
        """``(ph, pw)`` of the local module's input: ``patch_side`` or the published side scaled."""
        if self.patch_side is not None:
            return self.patch_side, self.patch_side
        return scaled_patch_size(self.PUBLISHED_PATCH_SIDE, self.image_size)

    def to_dict(self) -> dict[str, Any]:
        """The fields as JSON-ready values (tuples as lists): stored in checkpoints and cache keys."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def window_in_map(patch: tuple[int, int], map_size: tuple[int, int], image_size: tuple[int, int]) -> tuple[int, int]:
    """The patch size expressed in saliency-map cells: ``round(p · h / H)``, clipped to ``[1, h]``.

    32×32 for GLAM (512 px on a 184×120 map of a 2944×1920 image), 4×4 for GMIC.
    """
    return tuple(  # type: ignore[return-value]
        min(m, max(1, int(round(p * m / s)))) for p, m, s in zip(patch, map_size, image_size, strict=True)
    )


def top_fraction_count(fraction: float, map_size: tuple[int, int]) -> int:
    """``k = round(fraction · h · w)``, at least 1 (Python's round-half-to-even, as published)."""
    return max(1, int(round(fraction * map_size[0] * map_size[1])))


# --------------------------------------------------------------------------------------------
# Pooling, window search, crops, pasting
# --------------------------------------------------------------------------------------------
def top_k_mean(maps: torch.Tensor, k: int) -> torch.Tensor:
    """Mean of the ``k`` largest values of each map: ``N×C×h×w`` → ``N×C``."""
    return maps.flatten(2).topk(k, dim=2).values.mean(dim=2)


def binary_cross_entropy(
    probabilities: torch.Tensor, labels: torch.Tensor, pos_weight: torch.Tensor | None = None
) -> torch.Tensor:
    """BCE on probabilities, summed over classes and averaged over images.

    Args:
        probabilities: ``N×C`` in [0, 1]; labels: ``N×C`` {0, 1}.
        pos_weight: optional ``C`` weights of the positive terms (the trainer's class-imbalance
            weights, ``binary_cross_entropy_with_logits`` semantics).
    """
    weight = None
    if pos_weight is not None:
        weight = torch.where(labels > 0, pos_weight.to(probabilities), torch.ones_like(probabilities))
    return F.binary_cross_entropy(probabilities, labels, weight=weight, reduction="none").sum(dim=1).mean()


def select_windows(saliency: torch.Tensor, window: tuple[int, int], count: int) -> torch.Tensor:
    """Greedy window search of GLAM/GMIC, batched.

    Each class map is min–max normalised over the image and the classes are summed into one map;
    then ``count`` times: the ``window``-sized box with the largest mean (average pooling with
    stride 1; ties go to the first position in row-major order) is chosen and zeroed in the map.
    Row and column come from floor division of the flat index (the published code's intent; its
    ``/`` turned into true division on current PyTorch, making every column 0).

    Args:
        saliency: ``N×C×h×w`` maps (any float dtype; searched in float32).
        window: ``(wh, ww)`` in map cells, ``1 ≤ wh ≤ h``, ``1 ≤ ww ≤ w``.
        count: number of windows ``K``.

    Returns:
        ``N×K×2`` int64 upper-left corners (row, column) in map cells.
    """
    saliency = saliency.detach().float()
    n, _, h, w = saliency.shape
    wh, ww = window
    flat = saliency.flatten(2)
    lo = flat.min(dim=2).values[:, :, None, None]
    span = flat.max(dim=2).values[:, :, None, None] - lo
    # a constant map has span 0: the published code divides by it (NaN, first window wins); keep it finite
    span = torch.where(span > 0, span, torch.ones_like(span))
    current = ((saliency - lo) / span).sum(dim=1, keepdim=True)
    rows = torch.arange(h, device=saliency.device)
    cols = torch.arange(w, device=saliency.device)
    pooled_w = w - ww + 1
    corners = []
    for _ in range(count):
        pooled = F.avg_pool2d(current, (wh, ww), stride=1)
        index = pooled.flatten(1).argmax(dim=1)
        r, c = index // pooled_w, index % pooled_w
        corners.append(torch.stack([r, c], dim=1))
        in_rows = (rows[None, :] >= r[:, None]) & (rows[None, :] < r[:, None] + wh)
        in_cols = (cols[None, :] >= c[:, None]) & (cols[None, :] < c[:, None] + ww)
        current = current.masked_fill(in_rows[:, None, :, None] & in_cols[:, None, None, :], 0.0)
    return torch.stack(corners, dim=1)


def map_to_image_coords(corners: torch.Tensor, map_size: tuple[int, int], image_size: tuple[int, int]) -> torch.Tensor:
    """Map cells → input pixels: ``round(r / h · H)``, ``round(c / w · W)`` (float64, half to even).

    Args:
        corners: ``N×K×2`` int64 (row, column) in map cells.

    Returns:
        ``N×K×2`` int64 upper-left corners in input pixels.
    """
    # (r / h) · H in float64, like the published numpy code (float32 where the device has no float64)
    dtype = torch.float32 if corners.device.type == "mps" else torch.float64
    scale = torch.tensor([image_size[0], image_size[1]], dtype=dtype, device=corners.device)
    size = torch.tensor([map_size[0], map_size[1]], dtype=dtype, device=corners.device)
    return (corners.to(dtype) / size * scale).round().long()


def _patch_grid(corners: torch.Tensor, size: int, limit: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Source rows (or columns) of every patch row and whether they hold image content.

    A patch starting at ``x`` covers image rows ``[x0, x1) = [clip(x), clip(x + size))``; like
    the published crop, that valid part sits at the *end* of the patch, so patch row ``i`` shows
    image row ``x1 − size + i`` and rows ``i < size − (x1 − x0)`` are background.

    Returns:
        ``(index, valid)``, each ``N×K×size``: image row per patch row (clamped into the image)
        and whether it is real content.
    """
    x0 = corners.clamp(0, limit)
    x1 = (corners + size).clamp(0, limit)
    index = x1[..., None] - size + torch.arange(size, device=corners.device)
    valid = index >= x0[..., None]
    return index.clamp(0, limit - 1), valid


def extract_patches(images: torch.Tensor, corners: torch.Tensor, patch: tuple[int, int]) -> torch.Tensor:
    """Crop ``patch``-sized windows at ``corners`` from every image, in one gather.

    Parts outside the image take the image's minimum and the valid part is placed at the
    bottom-right of the patch (the published ``crop_pytorch`` with ``upper_left``).

    Args:
        images: ``N×1×H×W``.
        corners: ``N×K×2`` int64 upper-left corners in pixels.
        patch: ``(ph, pw)``.

    Returns:
        ``N×K×ph×pw`` patches.
    """
    n, _, height, width = images.shape
    rows, valid_r = _patch_grid(corners[..., 0], patch[0], height)
    cols, valid_c = _patch_grid(corners[..., 1], patch[1], width)
    batch = torch.arange(n, device=images.device)[:, None, None, None]
    values = images[:, 0][batch, rows[..., :, None], cols[..., None, :]]
    background = images.flatten(1).min(dim=1).values[:, None, None, None]
    return torch.where(valid_r[..., :, None] & valid_c[..., None, :], values, background)


def nearest_source_index(out_size: int, in_size: int, device: torch.device | None = None) -> torch.Tensor:
    """Source index of each output position of a ``mode="nearest"`` resize, as PyTorch computes it.

    ``min(floor(i · (in / out)), in − 1)`` with the scale and product in float32, so indexing with it
    reproduces ``F.interpolate(..., mode="nearest")`` exactly.
    """
    scale = torch.tensor(in_size / out_size, dtype=torch.float32)
    index = (torch.arange(out_size, dtype=torch.float32) * scale).floor().long().clamp_(max=in_size - 1)
    return index.to(device) if device is not None else index


def _paste_index(
    corners: torch.Tensor, patch: tuple[int, int], channels: int, image_size: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Where each patch pixel lands in a flat ``N×C×H×W`` canvas, for :func:`paste_patches`.

    Returns:
        ``(flat, rows, cols, keep)``: ``flat`` ``N×K×C×ph×pw`` indices into the flattened canvas,
        with background pixels and pixels overwritten by a later patch redirected to the extra
        element ``N·C·H·W`` (a sink that is dropped); ``rows`` ``N×K×ph`` and ``cols`` ``N×K×pw``
        the image row / column of each patch row / column.
    """
    n, k = corners.shape[:2]
    ph, pw = patch
    height, width = image_size
    device = corners.device
    rows, valid_r = _patch_grid(corners[..., 0], ph, height)  # N×K×ph
    cols, valid_c = _patch_grid(corners[..., 1], pw, width)  # N×K×pw
    keep = valid_r[..., :, None] & valid_c[..., None, :]  # N×K×ph×pw
    if k > 1:
        # pixel (i, j) of patch k is overwritten when a later patch k' > k covers the same image pixel
        r0, r1 = corners[..., 0].clamp(0, height), (corners[..., 0] + ph).clamp(0, height)
        c0, c1 = corners[..., 1].clamp(0, width), (corners[..., 1] + pw).clamp(0, width)
        in_r = (rows[:, :, None, :] >= r0[:, None, :, None]) & (rows[:, :, None, :] < r1[:, None, :, None])
        in_c = (cols[:, :, None, :] >= c0[:, None, :, None]) & (cols[:, :, None, :] < c1[:, None, :, None])
        later = torch.ones(k, k, dtype=torch.bool, device=device).triu(diagonal=1)  # [k, k'] k' > k
        in_r = in_r & later[None, :, :, None]
        covered = (in_r[..., :, None] & in_c[..., None, :]).any(dim=2)  # N×K×ph×pw
        keep = keep & ~covered
    pixel = rows[..., :, None] * width + cols[..., None, :]  # N×K×ph×pw
    plane = torch.arange(n, device=device)[:, None] * channels + torch.arange(channels, device=device)
    flat = plane[:, None, :, None, None] * (height * width) + pixel[:, :, None]  # N×K×C×ph×pw
    sink = n * channels * height * width
    flat = torch.where(keep[:, :, None], flat, torch.full_like(flat, sink))
    return flat, rows, cols, keep


def paste_patches(patch_maps: torch.Tensor, corners: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
    """Paste per-patch maps into an all-zero canvas of the image size, in one scatter.

    Each patch map (already at patch resolution) lands on the image pixels its patch content came
    from (see :func:`extract_patches`; in the published configuration exactly the rectangle at
    its corner). Where patches overlap the later one wins, as in the published sequential paste.

    Args:
        patch_maps: ``N×K×C×ph×pw``.
        corners: ``N×K×2`` int64 upper-left corners in pixels.
        image_size: ``(H, W)``.

    Returns:
        ``N×C×H×W`` canvas, zero outside the patches; differentiable in ``patch_maps``.
    """
    n, _, c, ph, pw = patch_maps.shape
    flat, _, _, _ = _paste_index(corners, (ph, pw), c, image_size)
    sink = n * c * image_size[0] * image_size[1]
    canvas = patch_maps.new_zeros(sink + 1).index_put((flat.flatten(),), patch_maps.flatten())
    return canvas[:sink].view(n, c, *image_size)


def fuse_half_and_half(
    global_map: torch.Tensor, patch_maps: torch.Tensor, corners: torch.Tensor, image_size: tuple[int, int]
) -> torch.Tensor:
    """``(paste_patches(patch_maps) + nearest_resize(global_map)) / 2`` without materialising the canvas.

    Outside the patches the result is ``global / 2`` (written once, by nearest upsampling of the
    halved small map); only the patch pixels are computed as ``(local + global) / 2``. Bit-for-bit
    the same values as the straightforward formula (halving is exact in binary floating point).

    Args:
        global_map: ``N×C×h×w``.
        patch_maps: ``N×K×C×ph×pw`` local maps at patch resolution.
        corners: ``N×K×2`` int64 corners in pixels.
        image_size: ``(H, W)``.

    Returns:
        ``N×C×H×W`` (no autograd support needed: inference only).
    """
    n, c, h, w = global_map.shape
    height, width = image_size
    ph, pw = patch_maps.shape[-2:]
    device = global_map.device
    rows_cpu, cols_cpu = nearest_source_index(height, h), nearest_source_index(width, w)  # from shapes only
    src_r, src_c = rows_cpu.to(device), cols_cpu.to(device)
    sink = n * c * height * width
    buffer = global_map.new_empty(sink + 1)
    fused = buffer[:sink].view(n, c, height, width)
    half = global_map * 0.5
    fh, fw = height // h, width // w
    if torch.equal(rows_cpu, torch.arange(height) // fh) and torch.equal(cols_cpu, torch.arange(width) // fw):
        # whole-number factors (16 × 16 published): a broadcasting copy, one streaming write
        fused.view(n, c, h, fh, w, fw).copy_(half[:, :, :, None, :, None].expand(n, c, h, fh, w, fw))
    else:
        torch.index_select(torch.index_select(half, 2, src_r), 3, src_c, out=fused)
    flat, rows, cols, _ = _paste_index(corners, (ph, pw), c, image_size)
    # global value under each patch pixel, read from the small map through the same nearest indices
    batch = torch.arange(n, device=device)[:, None, None, None, None]
    channel = torch.arange(c, device=device)[None, None, :, None, None]
    under = global_map[batch, channel, src_r[rows][:, :, None, :, None], src_c[cols][:, :, None, None, :]]
    buffer.index_put_((flat.flatten(),), ((patch_maps.to(global_map.dtype) + under) / 2).flatten())
    return fused


def choose_patches(
    patch_size: tuple[int, int], num_patches: int, images: torch.Tensor, saliency: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """GLAM's and GMIC's patch selection: ``num_patches`` greedy windows on the saliency map,
    mapped to pixels and cropped.

    Args:
        patch_size: ``(ph, pw)`` crop size in pixels.
        num_patches: K.
        images: ``N×1×H×W``.
        saliency: ``N×2×h×w`` class maps.

    Returns:
        ``(locations N×K×2 (row, column of the top-left corner, pixels), patches N×K×ph×pw)``.
    """
    map_size = (saliency.shape[-2], saliency.shape[-1])
    image_size = (images.shape[-2], images.shape[-1])
    window = window_in_map(patch_size, map_size, image_size)
    corners = select_windows(saliency, window, num_patches)
    locations = map_to_image_coords(corners, map_size, image_size)
    return locations, extract_patches(images, locations, patch_size)
