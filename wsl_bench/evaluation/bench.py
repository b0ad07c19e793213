"""Inference speed and memory of methods at one image size: ``wsl-bench bench``.

For each method, at batch 1: median, 90th-percentile and minimum seconds per image (after
warm-up, CUDA-synchronised on GPU), GFLOP per image (``torch.utils.flop_counter``, counted on the
method's plain reference path: the fused kernels of the fast path compute the same convolutions but
are invisible to the counter), achieved GFLOP/s (at the median), and memory: on GPU
``torch.cuda.max_memory_allocated`` during one call (and its rise above the memory allocated
before the call), on CPU the process's peak resident set during one call (the kernel's counter is
reset first where Linux allows) and its rise above the resident set before the call.

The same run measures the machine's practical ceiling: the best GFLOP/s of a dense 3×3
convolution, 512→512 channels on a 128×128 map (GLAM's dominant layer), in NCHW and
channels-last, in the benchmark's precision. The ratio of achieved to ceiling says how much of
the machine a model uses, a figure that travels between machines better than seconds.

Repeats are interleaved round-robin (each round times every method once and the ceiling
convolution once), so load from other processes on a shared machine hits all of them alike and
ratios within one run stay meaningful even when absolute times do not.

On a machine shared with other busy processes, run with ``OMP_WAIT_POLICY=PASSIVE`` in the
environment (it must be set before the process starts). With the default policy, OpenMP threads
spin at every barrier; when the cores are oversubscribed, a spinning thread burns the time slice
its partner needs, and every parallel operator can cost a scheduler slice: on the 2-core machine
this suite was tuned on, at load 4, a 256×160 GMIC took 0.93 s per image with the default policy,
0.026 s with ``PASSIVE`` and 0.03 s single-threaded. The policy in force is recorded with the results.
"""

from __future__ import annotations

import ctypes
import gc
import os
import resource
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F

MethodSpec = str | tuple[str, dict[str, Any]]


@dataclass(frozen=True)
class BenchResult:
    """One method's figures (see the module docstring); times in seconds per image."""

    method: str
    options: str
    device: str
    precision: str
    image_size: tuple[int, int]
    repeats: int
    median_s: float
    p90_s: float
    min_s: float
    gflop: float
    achieved_gflops: float
    ceiling_gflops: float
    ceiling_conv: str
    ceiling_nchw_gflops: float
    ceiling_channels_last_gflops: float
    fraction_of_ceiling: float
    fraction_of_ceiling_at_min: float
    peak_memory_mb: float
    working_memory_mb: float
    memory_kind: str
    threads: int
    omp_wait_policy: str
    load_average: float

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["image_size"] = list(self.image_size)
        return d


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    lo, hi = int(pos), min(int(pos) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def _load_average() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


# --------------------------------------------------------------------------------------------
# Memory
# --------------------------------------------------------------------------------------------
def _trim_heap() -> None:
    """Hand freed heap memory back to the kernel (glibc ``malloc_trim``), so that the resident set
    measures live memory and not what earlier calls freed but the allocator kept."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter of this process (Linux: ``echo 5 > /proc/self/clear_refs``)."""
    _trim_heap()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _current_rss_mb() -> float:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def _peak_rss_mb() -> float:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


# --------------------------------------------------------------------------------------------
# Measurements
# --------------------------------------------------------------------------------------------
def count_gflop(fn: Callable[[], Any]) -> float:
    """GFLOP that ``fn()`` executes, by ``torch.utils.flop_counter.FlopCounterMode``."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return counter.get_total_flops() / 1e9


def time_calls(fn: Callable[[], Any], device: torch.device, repeats: int, warmup: int = 1) -> list[float]:
    """Wall seconds of ``repeats`` calls of ``fn`` after ``warmup`` calls (synchronised on CUDA)."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return times


def conv_ceiling(
    device: str | torch.device = "cpu", precision: str = "fp32", repeats: int = 5, size: int = 128, channels: int = 512
) -> dict[str, float]:
    """Best GFLOP/s of a dense 3×3 convolution ``channels→channels`` on a ``size×size`` map, batch 1.

    Returns:
        ``{"nchw": ..., "channels_last": ..., "best": ...}`` in GFLOP/s.
    """
    device = torch.device(device)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, channels, size, size, generator=gen).to(device, dtype)
    w = (torch.randn(channels, channels, 3, 3, generator=gen) * 0.02).to(device, dtype)
    flop = 2.0 * channels * channels * 9 * size * size
    result = {}
    with torch.inference_mode():
        for name, fmt in (("nchw", torch.contiguous_format), ("channels_last", torch.channels_last)):
            xf, wf = x.contiguous(memory_format=fmt), w.contiguous(memory_format=fmt)
            times = time_calls(lambda xf=xf, wf=wf: F.conv2d(xf, wf, padding=1), device, repeats, warmup=2)
            result[name] = flop / min(times) / 1e9
    result["best"] = max(result["nchw"], result["channels_last"])
    return result


class _CeilingProbe:
    """The ceiling convolution (both memory formats), timed once per :meth:`measure` call."""

    def __init__(self, device: torch.device, precision: str, channels: int, side: int) -> None:
        dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(1, channels, side, side, generator=gen).to(device, dtype)
        w = (torch.randn(channels, channels, 3, 3, generator=gen) * 0.02).to(device, dtype)
        self.device = device
        self.flop = 2.0 * channels * channels * 9 * side * side
        self.inputs = {
            name: (x.contiguous(memory_format=fmt), w.contiguous(memory_format=fmt))
            for name, fmt in (("nchw", torch.contiguous_format), ("channels_last", torch.channels_last))
        }
        self.times: dict[str, list[float]] = {name: [] for name in self.inputs}
        with torch.inference_mode():
            for xf, wf in self.inputs.values():  # warm-up: oneDNN builds its kernels on first use
                time_calls(lambda xf=xf, wf=wf: F.conv2d(xf, wf, padding=1), device, repeats=0, warmup=2)

    def measure(self) -> None:
        with torch.inference_mode():
            for name, (xf, wf) in self.inputs.items():
                self.times[name] += time_calls(lambda xf=xf, wf=wf: F.conv2d(xf, wf, padding=1), self.device, 1, 0)

    def best(self) -> dict[str, float]:
        result = {name: self.flop / min(t) / 1e9 for name, t in self.times.items()}
        result["best"] = max(result.values())
        return result


def _spec(spec: MethodSpec) -> tuple[str, dict[str, Any]]:
    if isinstance(spec, str):
        return spec, {}
    name, options = spec
    return name, dict(options)


def run_bench(
    methods: Sequence[MethodSpec],
    device: str = "cpu",
    size: tuple[int, int] = (2944, 1920),
    precision: str = "fp32",
    repeats: int = 5,
    warmup: int = 1,
    seed: int = 0,
    ceiling_shape: tuple[int, int] = (512, 128),
) -> list[dict[str, Any]]:
    """Benchmark ``methods`` on one random standardised image of ``size`` at batch 1.

    Args:
        methods: registered names, or ``(name, options)`` pairs passed to ``create_method``
            (e.g. ``("glam", {"fast": False})`` for the plain reference path).
        device: ``"cpu"`` or ``"cuda[:i]"``.
        size: ``(H, W)``; methods are built for this image size.
        precision: ``"fp32"`` or ``"bf16"`` (passed to methods that accept it, and used for the ceiling).
        repeats: timed calls per method (interleaved round-robin across methods).
        warmup: untimed calls per method first.
        ceiling_shape: ``(channels, map side)`` of the ceiling convolution (smaller only in tests).

    Returns:
        One :meth:`BenchResult.to_dict` per method, in the order given.
    """
    from wsl_bench.registry import create_method

    dev = torch.device(device)
    gen = torch.Generator().manual_seed(seed)
    image = torch.randn(1, 1, *size, generator=gen).to(dev)
    specs = [_spec(s) for s in methods]

    built = []
    for name, options in specs:
        opts = {"device": device, "seed": seed, "image_size": tuple(size), **options}
        if precision != "fp32":
            opts.setdefault("precision", precision)
        method = create_method(name, **opts)
        plain_opts = {**opts, "fast": False} if "fast" in _accepted_options(method) else opts
        gflop = _model_gflop(name, plain_opts, image)
        built.append((name, options, method, gflop))

    # warm-up, then peak memory per method over one call
    memory = {}
    for i, (_, _, method, _) in enumerate(built):
        for _ in range(warmup):
            method.predict(image)
        gc.collect()
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
            torch.cuda.reset_peak_memory_stats(dev)
            before = torch.cuda.memory_allocated(dev) / 2**20
            method.predict(image)
            torch.cuda.synchronize(dev)
            peak = torch.cuda.max_memory_allocated(dev) / 2**20
            memory[i] = (peak, peak - before, "cuda_max_memory_allocated")
        else:
            reset = _reset_peak_rss()
            before = _current_rss_mb()
            method.predict(image)
            peak = _peak_rss_mb()
            memory[i] = (peak, peak - before if reset else float("nan"), "peak_rss" if reset else "peak_rss_of_process")

    # timed rounds: every method once per round, and the ceiling convolution once per round, so
    # that load from other processes hits all of them alike
    channels, side = ceiling_shape
    ceiling_probe = _CeilingProbe(dev, precision, channels, side)
    times: dict[int, list[float]] = {i: [] for i in range(len(built))}
    for _ in range(repeats):
        ceiling_probe.measure()
        for i, (_, _, method, _) in enumerate(built):
            times[i] += time_calls(lambda m=method: m.predict(image), dev, repeats=1, warmup=0)
    ceiling_probe.measure()
    ceiling = ceiling_probe.best()

    results = []
    for i, (name, options, _, gflop) in enumerate(built):
        median = statistics.median(times[i])
        achieved = gflop / median if median > 0 else float("nan")
        results.append(
            BenchResult(
                method=name,
                options=",".join(f"{k}={v}" for k, v in sorted(options.items())),
                device=str(dev),
                precision=precision,
                image_size=tuple(size),
                repeats=repeats,
                median_s=median,
                p90_s=_percentile(times[i], 0.9),
                min_s=min(times[i]),
                gflop=gflop,
                achieved_gflops=achieved,
                ceiling_gflops=ceiling["best"],
                ceiling_conv=f"3x3 {channels}->{channels} on {side}x{side}",
                ceiling_nchw_gflops=ceiling["nchw"],
                ceiling_channels_last_gflops=ceiling["channels_last"],
                fraction_of_ceiling=achieved / ceiling["best"],
                fraction_of_ceiling_at_min=gflop / min(times[i]) / ceiling["best"],
                peak_memory_mb=memory[i][0],
                working_memory_mb=memory[i][1],
                memory_kind=memory[i][2],
                threads=torch.get_num_threads(),
                omp_wait_policy=os.environ.get("OMP_WAIT_POLICY", "(default)"),
                load_average=_load_average(),
            ).to_dict()
        )
    return results


def _accepted_options(method: Any) -> set[str]:
    """Hyper-parameters a built method understands beyond the common ones (GLAM/GMIC take ``fast``)."""
    return {"fast"} if hasattr(method, "fast") else set()


def _model_gflop(name: str, options: dict[str, Any], image: torch.Tensor) -> float:
    from wsl_bench.registry import create_method

    method = create_method(name, **options)
    return count_gflop(lambda: method.predict(image))


def format_bench(results: Sequence[dict[str, Any]]) -> str:
    """A plain-text table of :func:`run_bench` results."""
    if not results:
        return "(no results)"
    first = results[0]
    labels = [r["method"] + (f" [{r['options']}]" if r["options"] else "") for r in results]
    width = max(24, *(len(label) for label in labels))  # a long label widens the column, not the row
    lines = [
        f"device {first['device']}, {first['precision']}, {first['image_size'][0]}×{first['image_size'][1]}, batch 1, "
        f"{first['repeats']} repeats, {first['threads']} threads (OMP_WAIT_POLICY {first['omp_wait_policy']}), "
        f"load average {first['load_average']:.2f}",
        f"conv ceiling ({first['ceiling_conv']}): NCHW {first['ceiling_nchw_gflops']:.0f} GFLOP/s, "
        f"channels-last {first['ceiling_channels_last_gflops']:.0f} GFLOP/s",
        "GFLOP/s: at the median time; ceil@med, ceil@min: GFLOP/s at the median and at the fastest repeat, as a share "
        "of the conv ceiling",
        "",
        f"{'method':<{width}} {'median s':>9} {'p90 s':>8} {'min s':>8} {'GFLOP':>8} {'GFLOP/s':>8} {'ceil@med':>10} "
        f"{'ceil@min':>8} {'peak MiB':>9} {'+MiB':>7}",
    ]
    for label, r in zip(labels, results, strict=True):  # each value as wide as its column's header above
        lines.append(
            f"{label:<{width}} {r['median_s']:>9.3f} {r['p90_s']:>8.3f} {r['min_s']:>8.3f} {r['gflop']:>8.1f} "
            f"{r['achieved_gflops']:>8.0f} "
            f"{r['fraction_of_ceiling']:>10.0%} {r['fraction_of_ceiling_at_min']:>8.0%} {r['peak_memory_mb']:>9.0f} "
            f"{r['working_memory_mb']:>7.0f}"
        )
    return "\n".join(lines)


def print_bench(results: Sequence[dict[str, Any]], file: Any = None) -> None:
    """Print :func:`format_bench` (to stdout by default)."""
    print(format_bench(results), file=file or sys.stdout)
