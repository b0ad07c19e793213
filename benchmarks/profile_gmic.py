"""Where GMIC's CPU time goes, layer by layer, against the machine's convolution ceiling.

Run (idle machine; not part of the test suite)::

    OMP_WAIT_POLICY=PASSIVE python benchmarks/profile_gmic.py [--precision bf16] [--size 2944x1920]

Prints the median predict time, then every operator group (operator, input shape, weight shape)
with its share of the profiled time, its GFLOP per call (convolutions: 2·N·Cout·Hout·Wout·Cin·kh·kw
/ groups) and achieved GFLOP/s, against the ceiling of ``wsl_bench.evaluation.bench.conv_ceiling``
measured in the same process. Issue 14 asked GMIC bf16 to reach 85 % of that ceiling or for a
profile that shows why it cannot: this is that profile (numbers in ``methods/gmic.md``).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict

import torch
from torch.profiler import ProfilerActivity, profile

from wsl_bench.evaluation.bench import conv_ceiling
from wsl_bench.registry import create_method

CONV_OPS = ("mkldnn::_convolution_pointwise", "mkldnn::_convolution_pointwise_", "aten::mkldnn_convolution",
            "aten::convolution", "aten::_convolution", "aten::conv2d")


def conv_shapes_and_gflop(size: tuple[int, int], precision: str) -> dict[tuple, float]:
    """``(input shape, weight shape)`` → GFLOP per call of every convolution of GMIC's plain path
    (forward hooks see each layer's real output size, strides included)."""
    plain = create_method("gmic", device="cpu", seed=0, image_size=size, precision=precision, fast=False)
    found: dict[tuple, float] = {}

    def hook(module: torch.nn.Conv2d, inputs: tuple, output: torch.Tensor) -> None:
        n, out_c, h, w = output.shape
        in_c, kh, kw = module.weight.shape[1:]
        found[(tuple(inputs[0].shape), tuple(module.weight.shape))] = 2.0 * n * out_c * h * w * in_c * kh * kw / 1e9

    handles = [m.register_forward_hook(hook) for m in plain._network.modules() if isinstance(m, torch.nn.Conv2d)]
    plain.predict(torch.randn(1, 1, *size))
    for handle in handles:
        handle.remove()
    return found


def _conv_key(name: str, shapes: list) -> tuple | None:
    """``(input shape, weight shape)`` of a profiled convolution call (the fused kernels that add a
    residual take it as their second argument, before the weight)."""
    four_d = [tuple(s) for s in shapes if isinstance(s, list) and len(s) == 4]
    if len(four_d) < 2:
        return None
    x = four_d[0]
    weights = [s for s in four_d[1:] if s[2:] != x[2:]]  # a weight's kernel is not the map's size
    return (x, weights[0]) if weights else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--precision", default="bf16", choices=["fp32", "bf16"])
    parser.add_argument("--size", default="2944x1920")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    size = tuple(int(v) for v in args.size.split("x"))
    method = create_method("gmic", device="cpu", seed=0, image_size=size, precision=args.precision)
    image = torch.randn(1, 1, *size)
    for _ in range(2):
        method.predict(image)
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        method.predict(image)
        times.append(time.perf_counter() - start)
    ceiling = conv_ceiling("cpu", args.precision, repeats=5)
    print(f"GMIC {args.precision} {size[0]}×{size[1]}: predict median {statistics.median(times):.3f} s "
          f"(min {min(times):.3f}); conv ceiling {ceiling['best']:.0f} GFLOP/s "
          f"(NCHW {ceiling['nchw']:.0f}, channels-last {ceiling['channels_last']:.0f}); "
          f"{torch.get_num_threads()} threads")
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(args.repeats):
            method.predict(image)
    flops = conv_shapes_and_gflop(size, args.precision)
    groups: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0.0, 0.0])
    total = 0.0
    for event in prof.key_averages(group_by_input_shape=True):
        seconds = event.self_cpu_time_total / 1e6 / args.repeats
        total += seconds
        key = _conv_key(event.key, event.input_shapes) if event.key in CONV_OPS else None
        if key is not None:
            group = ("conv", f"{list(key[0])} * {list(key[1])}")
            groups[group][1] += flops.get(key, 0.0) * event.count / args.repeats
        else:
            group = (event.key, str(event.input_shapes[:1])[:60])
        groups[group][0] += seconds
    conv_seconds = sum(v[0] for k, v in groups.items() if k[0] == "conv")
    conv_flop = sum(v[1] for k, v in groups.items() if k[0] == "conv")
    print(f"profiled per call: {total * 1000:.0f} ms, of which convolutions {conv_seconds * 1000:.0f} ms "
          f"({conv_seconds / total:.0%}) at {conv_flop / conv_seconds:.0f} GFLOP/s "
          f"({conv_flop / conv_seconds / ceiling['best']:.0%} of the ceiling); everything else "
          f"{(total - conv_seconds) * 1000:.0f} ms")
    print(f"\n{'operator':<34} {'input * weight':<60} {'ms':>7} {'share':>6} {'GFLOP':>7} {'GFLOP/s':>8}")
    for (kind, shapes), (seconds, flop) in sorted(groups.items(), key=lambda item: -item[1][0])[:30]:
        rate = f"{flop / seconds:8.0f}" if flop and seconds else " " * 8
        print(f"{kind[:34]:<34} {shapes:<60} {seconds * 1000:7.1f} {seconds / total:6.1%} {flop:7.2f} {rate}")


if __name__ == "__main__":
    main()
