"""Inference support shared by GLAM and GMIC: input checks, weights, and the fast engines.

The networks in :mod:`.glam` and :mod:`.gmic` are plain ``nn.Module`` trees that train under
autograd. For inference an *engine* is derived from them (see :class:`EngineCache`).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from wsl_bench import weights as checkpoints

PRECISIONS: tuple[str, ...] = ("fp32", "bf16")


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return precision


def check_images(images: torch.Tensor, device: torch.device, method: str) -> torch.Tensor:
    """Validate an ``N×1×H×W`` float batch and move it to ``device``.

    Raises:
        ValueError: naming the method and the bad shape or dtype.
    """
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 1:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"{method}: images must be an N×1×H×W tensor, got {shape}")
    if not images.is_floating_point():
        raise ValueError(f"{method}: images must be floating point, got {images.dtype}")
    return images.to(device=device, dtype=torch.float32)


@contextlib.contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """Temporarily put ``module`` in eval mode, restoring its training flag afterwards."""
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)


def load_method_weights(method: Any, weights: str | None) -> dict[str, str]:
    """Resolve and load the weights of a GLAM/GMIC method (see :func:`wsl_bench.weights.resolve_weights`)."""
    path = checkpoints.resolve_weights(
        method.name, weights, getattr(method, "published_file", None), getattr(method, "published_source", None)
    )
    if path is None:
        return {}
    loaded = checkpoints.load_weights(method.network(), path, method.name, method.config_dict())
    method.network().to(method.device)
    return loaded.info()


class EngineCache:
    """Builds an inference engine from a network and rebuilds it only when the weights changed.

    A change is detected from the parameters' and buffers' identities and in-place version
    counters, so training steps, ``load_state_dict`` and device moves all invalidate the cache.
    """

    def __init__(self) -> None:
        self._key: tuple | None = None
        self._engine: Any = None

    @staticmethod
    def _fingerprint(network: nn.Module, precision: str) -> tuple:
        tensors = list(network.parameters()) + list(network.buffers())
        return (precision, tuple((id(t), t.data_ptr(), t._version, t.device.type) for t in tensors))

    def get(self, network: nn.Module, precision: str, factory: Any) -> Any:
        key = self._fingerprint(network, precision)
        if key != self._key:
            self._engine = factory(network, precision)
            self._key = key
        return self._engine


# --------------------------------------------------------------------------------------------
# Fast inference units: BatchNorm folded into convolutions, fused ReLU / residual add
# --------------------------------------------------------------------------------------------
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def compute_dtype(precision: str) -> torch.dtype:
    return _DTYPES[check_precision(precision)]


def bn_affine(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel ``(scale, shift)`` with ``bn(x) = x · scale + shift`` at inference (float64)."""
    weight, bias, mean, var = (_f64(t) for t in (bn.weight, bn.bias, bn.running_mean, bn.running_var))
    scale = weight / torch.sqrt(var + bn.eps)
    return scale, bias - mean * scale


def _f64(t: torch.Tensor) -> torch.Tensor:
    """A float64 copy on the CPU (folding is done there: not every accelerator has float64)."""
    return t.detach().to(device="cpu", dtype=torch.float64)


def fold_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Weights and bias of ``bn(conv(x))`` as one convolution (computed in float64)."""
    weight = _f64(conv.weight)
    bias = _f64(conv.bias) if conv.bias is not None else None
    if bn is None:
        return weight, bias
    scale, shift = bn_affine(bn)
    weight = weight * scale[:, None, None, None]
    bias = shift if bias is None else bias * scale + shift
    return weight, bias


def _pointwise_op() -> Any:
    ops = getattr(torch.ops, "mkldnn", None)
    return getattr(ops, "_convolution_pointwise", None) if ops is not None else None


class ConvUnit:
    """One inference convolution: folded weights, channels-last, optional fused ReLU and residual add.

    On CPU the convolution, bias, residual addition and ReLU run as a single oneDNN primitive
    (``torch.ops.mkldnn._convolution_pointwise``, the op PyTorch's own compiler emits for this
    pattern), so the output is written once. Elsewhere, or where that op is unavailable, it falls
    back to ``F.conv2d`` followed by in-place ``add_``/``relu_``.

    Args:
        weight, bias: float64 folded parameters (bias may be ``None``).
        stride, padding: as in the convolution.
        dtype: compute dtype (float32 or bfloat16).
        device: where the weights live.
    """

    def __init__(
        self,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        stride: tuple[int, int],
        padding: tuple[int, int],
        dtype: torch.dtype,
        device: torch.device,
        groups: int = 1,
    ) -> None:
        self.weight = weight.to(device=device, dtype=dtype).contiguous(memory_format=torch.channels_last)
        if bias is None:
            bias = torch.zeros(weight.shape[0], dtype=torch.float64)
        self.bias = bias.to(device=device, dtype=dtype)
        self.stride = list(stride)
        self.padding = list(padding)
        self.groups = groups
        self.fused = device.type == "cpu" and FUSED_CPU_CONV

    @classmethod
    def from_modules(
        cls, conv: nn.Conv2d, bn: nn.BatchNorm2d | None, dtype: torch.dtype, sum_input_channels: bool = False
    ) -> ConvUnit:
        """Fold ``bn`` into ``conv``; ``sum_input_channels`` turns a conv over an input repeated
        across its channels into an equivalent one-channel conv (a third of the work)."""
        weight, bias = fold_conv_bn(conv, bn)
        if sum_input_channels:
            weight = weight.sum(dim=1, keepdim=True)
        return cls(weight, bias, conv.stride, conv.padding, dtype, conv.weight.device)

    def __call__(self, x: torch.Tensor, relu: bool = False, residual: torch.Tensor | None = None) -> torch.Tensor:
        """``conv(x) [+ residual] [→ ReLU]``.

        The result is written *into* ``residual`` when one is given: the engines pass a shortcut
        tensor they no longer need, which saves allocating (and page-faulting) a fresh output.
        """
        if self.fused:
            if residual is None:
                return _pointwise_op()(
                    x, self.weight, self.bias, self.padding, self.stride, [1, 1], self.groups,
                    "relu" if relu else "none", [], "",
                )  # fmt: skip
            return torch.ops.mkldnn._convolution_pointwise_.binary(
                residual, x, self.weight, self.bias, self.padding, self.stride, [1, 1], self.groups, "add", None,
                "relu" if relu else None, [], None,
            )  # fmt: skip
        y = F.conv2d(x, self.weight, self.bias, self.stride, self.padding, 1, self.groups)
        if residual is not None:
            y = residual.add_(y)
        return y.relu_() if relu else y


def _probe_fused_cpu_conv() -> bool:
    """Whether the fused oneDNN convolution exists here and agrees with the plain ops."""
    op = _pointwise_op()
    if op is None or not torch.backends.mkldnn.is_available():
        return False
    try:
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(1, 8, 9, 7, generator=gen).contiguous(memory_format=torch.channels_last)
        r = torch.randn(1, 8, 9, 7, generator=gen).contiguous(memory_format=torch.channels_last)
        w = torch.randn(8, 8, 3, 3, generator=gen).contiguous(memory_format=torch.channels_last)
        b = torch.randn(8, generator=gen)
        with torch.inference_mode():
            want = F.conv2d(x, w, b, padding=1)
            got = op(x, w, b, [1, 1], [1, 1], [1, 1], 1, "relu", [], "")
            expected_sum = (want + r).relu()
            got_sum = torch.ops.mkldnn._convolution_pointwise_.binary(
                r, x, w, b, [1, 1], [1, 1], [1, 1], 1, "add", None, "relu", [], None
            )
        return bool(torch.allclose(got, want.relu(), atol=1e-4) and torch.allclose(got_sum, expected_sum, atol=1e-4))
    except Exception:  # an internal op whose signature changed: use the plain path
        return False


FUSED_CPU_CONV: bool = _probe_fused_cpu_conv()
"""Whether :class:`ConvUnit` uses the fused oneDNN op on CPU (probed once at import)."""


def _register_fused_conv_flops() -> None:
    """Teach ``torch.utils.flop_counter`` the fused convolutions, so FLOP counts of the fast path
    (the harness counts FLOPs on ``predict``) include them like any ``aten.convolution``."""
    from torch.utils import flop_counter

    def formula(x_index: int, w_index: int):
        def count(*args, out_shape=None, **kwargs) -> int:
            return flop_counter.conv_flop_count(list(args[x_index]), list(args[w_index]), list(out_shape))

        return count

    ops = getattr(torch.ops, "mkldnn", None)
    out_of_place = getattr(ops, "_convolution_pointwise", None)
    in_place = getattr(ops, "_convolution_pointwise_", None)
    if out_of_place is not None and out_of_place not in flop_counter.flop_registry:
        default, binary = formula(0, 1), formula(0, 2)  # (X, W, ...) and (X, other, W, ...)
        flop_counter.register_flop_formula(out_of_place)(
            lambda *args, out_shape=None, **kw: (binary if len(args) >= 13 else default)(*args, out_shape=out_shape)
        )
    if in_place is not None and in_place not in flop_counter.flop_registry:
        flop_counter.register_flop_formula(in_place)(formula(1, 2))  # (other, X, W, ...)


if FUSED_CPU_CONV:
    _register_fused_conv_flops()


def channels_last(x: torch.Tensor) -> torch.Tensor:
    """``x`` in channels-last layout, with strides that say so even for one channel.

    A contiguous ``N×1×H×W`` tensor already satisfies the channels-last check, but its strides
    look like NCHW, and oneDNN then writes the *output* of the next convolution in NCHW; every
    later layer (max-pooling above all) runs several times slower on that layout. Re-striding the
    same memory as ``(H·W, 1, W, 1)`` makes the layout explicit at no cost.
    """
    if x.shape[1] == 1:
        x = x.contiguous()
        n, _, h, w = x.shape
        return x.as_strided(x.shape, (h * w, 1, w, 1))
    return x.contiguous(memory_format=torch.channels_last)


class Affine:
    """Inference BatchNorm followed by ReLU: ``relu(x · scale + shift)`` per channel.

    Runs as a depthwise 1×1 convolution with fused ReLU where the fused oneDNN op is available:
    one pass over the tensor instead of two (multiply-add, then ReLU); these passes over the
    large early feature maps are memory-bound.
    """

    def __init__(self, bn: nn.BatchNorm2d, dtype: torch.dtype) -> None:
        scale, shift = bn_affine(bn)
        device = bn.weight.device
        channels = scale.numel()
        self.depthwise = ConvUnit(scale.view(channels, 1, 1, 1), shift, (1, 1), (0, 0), dtype, device, groups=channels)
        self.scale = scale.to(device=device, dtype=dtype)[None, :, None, None]
        self.shift = shift.to(device=device, dtype=dtype)[None, :, None, None]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.depthwise.fused:
            return self.depthwise(x, relu=True)
        return torch.addcmul(self.shift, x, self.scale).relu_()


STEM_STRIPE_BYTES = 16 * 2**20
"""Largest convolution output a striped stem materialises at once (below glibc's 32 MiB mmap
ceiling, so the stripes reuse heap memory instead of page-faulting fresh memory every call)."""


def striped_conv_pool(conv: ConvUnit, pool: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``pool(conv(x))`` computed in horizontal stripes, never holding the whole convolution output.

    At 2944×1920 GLAM's and GMIC's first convolution writes 90 MB that the max-pool immediately
    shrinks fourfold; in stripes the intermediate stays in cache-sized pieces and no 90 MB block is
    allocated and faulted in on every call. Each stripe recomputes the convolution rows its pool
    windows share with the next stripe, so the result is exactly that of the unstriped form.

    Args:
        conv: the stem convolution (square kernel, stride ``s``, padding ``p``).
        pool: max-pool without padding (``kernel_size``, ``stride``), or an identity (no pooling).
        x: ``N×C×H×W`` channels-last input.
    """
    if not isinstance(pool, nn.MaxPool2d):  # a stem without its max-pool (derived geometry): nothing to stripe
        return pool(conv(x))
    n, _, height, width = x.shape
    k = conv.weight.shape[-1]
    (s, _), (p, _) = conv.stride, conv.padding
    pk, ps = pool.kernel_size, pool.stride
    pk, ps = (pk if isinstance(pk, int) else pk[0]), (ps if isinstance(ps, int) else ps[0])
    conv_h = (height + 2 * p - k) // s + 1
    conv_w = (width + 2 * p - k) // s + 1
    out_h = (conv_h - pk) // ps + 1
    row_bytes = n * conv.weight.shape[0] * conv_w * conv.weight.element_size()
    stripes = max(1, min(out_h, -(-conv_h * row_bytes // STEM_STRIPE_BYTES)))
    plain_pool = pool.padding in (0, (0, 0)) and pool.dilation in (1, (1, 1)) and not pool.ceil_mode
    if stripes == 1 or not plain_pool or conv.groups != 1:
        return pool(conv(x))
    column_conv = copy.copy(conv)
    column_conv.padding = [0, p]  # columns padded by the convolution, rows by slicing (zero rows only at the edges)
    step = -(-out_h // stripes)
    pieces = []
    for a in range(0, out_h, step):
        b = min(a + step, out_h)
        r0, r1 = ps * a, ps * (b - 1) + pk  # convolution rows [r0, r1) feed pool rows [a, b)
        first, last = s * r0 - p, s * (r1 - 1) - p + k  # input rows they read, [first, last)
        rows = x[:, :, max(first, 0) : min(last, height)]
        if first < 0 or last > height:
            rows = F.pad(rows, (0, 0, max(-first, 0), max(last - height, 0)))
        pieces.append(pool(column_conv(channels_last(rows))))
    return torch.cat(pieces, dim=2)


class PreActResNetEngine:
    """Inference form of :class:`~.backbones.PreActResNet22` (same outputs, channels-last).

    ``bn2`` is folded into ``conv1`` (with ReLU fused), the residual add into ``conv2``; ``bn1``
    cannot be folded (its input is also the raw shortcut) and runs as one fused multiply-add + ReLU.
    """

    def __init__(self, net: nn.Module, dtype: torch.dtype) -> None:
        self.dtype = dtype
        self.first_conv = ConvUnit.from_modules(net.first_conv, None, dtype)
        self.first_pool = net.first_pool
        self.stages = []
        for stage in net.layer_list:
            blocks = []
            for block in stage:
                ds = ConvUnit.from_modules(block.downsample[0], None, dtype) if block.downsample is not None else None
                blocks.append(
                    (
                        Affine(block.bn1, dtype),
                        ConvUnit.from_modules(block.conv1, block.bn2, dtype),
                        ConvUnit.from_modules(block.conv2, None, dtype),
                        ds,
                    )
                )
            self.stages.append(blocks)
        self.final = Affine(net.final_bn, dtype)

    def __call__(self, images: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """``N×1×H×W`` → (raw stage outputs, ``relu(final_bn(last))``), channels-last, compute dtype."""
        x = striped_conv_pool(self.first_conv, self.first_pool, channels_last(images.to(self.dtype)))
        outputs = []
        for blocks in self.stages:
            for pre_act, conv1, conv2, ds in blocks:
                pre = pre_act(x)
                # the raw input is the shortcut of a block without projection and is not needed
                # afterwards (stage outputs are the projecting blocks' inputs): sum into it in place
                shortcut = ds(pre) if ds is not None else x
                x = conv2(conv1(pre, relu=True), residual=shortcut)
            outputs.append(x)
        return outputs, self.final(x)


class LocalResNetEngine:
    """Inference form of :class:`~.backbones.LocalResNet`: every BatchNorm folded, ReLU and residual
    fused, and the stem convolution applied to the one-channel patch directly (its weights summed
    over the three identical input channels)."""

    def __init__(self, net: nn.Module, dtype: torch.dtype) -> None:
        self.dtype = dtype
        self.stem = ConvUnit.from_modules(net.conv1, net.bn1, dtype, sum_input_channels=True)
        self.maxpool = net.maxpool
        self.blocks = []
        for i in range(net.num_stages):
            for block in getattr(net, f"layer{i + 1}"):
                ds = None
                if block.downsample is not None:
                    ds = ConvUnit.from_modules(block.downsample[0], block.downsample[1], dtype)
                self.blocks.append(
                    (
                        ConvUnit.from_modules(block.conv1, block.bn1, dtype),
                        ConvUnit.from_modules(block.conv2, block.bn2, dtype),
                        ds,
                    )
                )

    def __call__(self, patches: torch.Tensor) -> torch.Tensor:
        """``M×1×p×p`` → ``M×512×h×w`` (channels-last, compute dtype)."""
        x = self.maxpool(self.stem(channels_last(patches.to(self.dtype)), relu=True))
        for conv1, conv2, ds in self.blocks:
            shortcut = ds(x) if ds is not None else x  # summed into in place: not needed afterwards
            x = conv2(conv1(x, relu=True), relu=True, residual=shortcut)
        return x
