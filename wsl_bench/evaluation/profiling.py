"""Cost measurement: wall time, peak memory and FLOPs of a method's ``predict``.

On CUDA, time is measured between synchronisations and memory is
``torch.cuda.max_memory_allocated`` reset before each measured call. On CPU, memory is the peak
resident set size of the process: Linux lets a process reset its own high-water mark by writing
``5`` to ``/proc/self/clear_refs``, so the peak is measured per call; elsewhere the lifetime peak
(``ru_maxrss``) is reported and flagged as such.
"""

from __future__ import annotations

import contextlib
import resource
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

_CLEAR_REFS = Path("/proc/self/clear_refs")
_STATUS = Path("/proc/self/status")


def _read_vm_hwm_mb() -> float | None:
    """Peak resident memory since the last reset, from ``/proc/self/status`` (``VmHWM``), in MiB."""
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def _reset_vm_hwm() -> bool:
    try:
        _CLEAR_REFS.write_text("5")
        return True
    except OSError:
        return False


def lifetime_peak_rss_mb() -> float:
    """Peak resident memory of the whole process so far, in MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024.0 * 1024.0) if sys.platform == "darwin" else peak / 1024.0


@dataclass
class Measurement:
    """One measured call: wall seconds and peak memory in MiB (``None`` where unknown)."""

    seconds: float
    peak_memory_mb: float | None


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work so a timer measures it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def measure(device: torch.device) -> Iterator[Measurement]:
    """Time and peak memory of the enclosed block on ``device``.

    Usage::

        with measure(device) as m:
            out = method.predict(images)
        m.seconds, m.peak_memory_mb
    """
    result = Measurement(0.0, None)
    cuda = device.type == "cuda"
    if cuda:
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    else:
        reset_ok = _reset_vm_hwm()
    start = time.perf_counter()
    try:
        yield result
    finally:
        synchronize(device)
        result.seconds = time.perf_counter() - start
        if cuda:
            result.peak_memory_mb = torch.cuda.max_memory_allocated(device) / 2**20
        else:
            result.peak_memory_mb = _read_vm_hwm_mb() if reset_ok else lifetime_peak_rss_mb()


def count_gflops(fn: Callable[[], object]) -> float | None:
    """GFLOPs of one call of ``fn`` (``torch.utils.flop_counter``), or ``None`` if counting fails.

    Counts the operators PyTorch has FLOP formulas for (convolutions, matrix products, attention):
    the standard way papers report model cost. Backward passes run inside ``fn`` (gradient
    explainers) are counted too.
    """
    try:
        counter = FlopCounterMode(display=False)
        with counter:
            fn()
        return counter.get_total_flops() / 1e9
    except Exception:  # an exotic operator must not stop a benchmark
        return None


def memory_kind(device: torch.device) -> str:
    """What ``peak_memory_mb`` means on ``device``, for report captions."""
    return "GPU memory allocated (torch.cuda.max_memory_allocated)" if device.type == "cuda" else "process peak RSS"
