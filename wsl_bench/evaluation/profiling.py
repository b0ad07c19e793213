"""Cost measurement: wall time, peak memory and FLOPs of a method's ``predict``.

On CUDA, time is measured between synchronisations and memory is
``torch.cuda.max_memory_allocated`` reset before each measured call. On CPU, memory is the
method's own peak: how far the process's peak resident set rose above its resident set at the
start of the call (Linux lets a process reset its own high-water mark ``VmHWM`` by writing ``5``
to ``/proc/self/clear_refs``). The process's peak itself is no measure of a method: it holds the
interpreter, torch, the loaded images and every earlier method's leftovers, so a baseline that
allocates nothing reported about what GMIC did. Where the mark cannot be reset, the method's
own peak is unknown (``None``); :attr:`Measurement.process_peak_mb` still gives the lifetime peak.

The rise counts memory the call touched that the process did not hold already. Memory that the C
allocator freed earlier but kept is reused without a rise, so a caller that wants everything a
method allocates hands that memory back first (``release_free_memory``; the harness does it before
a method's first measured call only: doing it before every call would make each call fault the
memory in again, which measurably slows small methods, so later calls may count less).
"""

from __future__ import annotations

import contextlib
import ctypes
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


def _read_status_mb(field: str) -> float | None:
    """A memory line of ``/proc/self/status`` (``VmHWM``, ``VmRSS``) in MiB; ``None`` off Linux."""
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    except (OSError, ValueError):
        return None
    return None


def _read_vm_hwm_mb() -> float | None:
    """Peak resident memory since the last reset, from ``/proc/self/status`` (``VmHWM``), in MiB."""
    return _read_status_mb("VmHWM")


def _reset_vm_hwm() -> bool:
    try:
        _CLEAR_REFS.write_text("5")
        return True
    except OSError:
        return False


def release_free_memory() -> None:
    """Hand memory the C allocator holds but no longer uses back to the system (glibc
    ``malloc_trim``), so that the next measured call's rise counts everything it allocates."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc: nothing to hand back this way


def lifetime_peak_rss_mb() -> float:
    """Peak resident memory of the whole process so far, in MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024.0 * 1024.0) if sys.platform == "darwin" else peak / 1024.0


@dataclass
class Measurement:
    """One measured call, memory in MiB (``None`` where unknown).

    Attributes:
        seconds: wall time.
        peak_memory_mb: the call's own peak: on CUDA ``max_memory_allocated`` during the call, on
            CPU the rise of the process's peak resident set over its resident set at the start.
        process_peak_mb: on CPU the process's peak resident set during the call (everything the
            process holds included; its lifetime peak where the mark cannot be reset); on CUDA the
            same as ``peak_memory_mb``.
    """

    seconds: float
    peak_memory_mb: float | None
    process_peak_mb: float | None = None


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work so a timer measures it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def measure(device: torch.device, release_free: bool = False) -> Iterator[Measurement]:
    """Time and peak memory of the enclosed block on ``device`` (see the module docstring).

    Args:
        release_free: on CPU, first hand the allocator's unused memory back to the system
            (:func:`release_free_memory`, not timed), so the rise counts all the block allocates.

    Usage::

        with measure(device) as m:
            out = method.predict(images)
        m.seconds, m.peak_memory_mb
    """
    result = Measurement(0.0, None)
    cuda = device.type == "cuda"
    resident_before: float | None = None
    if cuda:
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    else:
        if release_free:
            release_free_memory()
        reset_ok = _reset_vm_hwm()
        resident_before = _read_status_mb("VmRSS") if reset_ok else None
    start = time.perf_counter()
    try:
        yield result
    finally:
        synchronize(device)
        result.seconds = time.perf_counter() - start
        if cuda:
            result.peak_memory_mb = torch.cuda.max_memory_allocated(device) / 2**20
            result.process_peak_mb = result.peak_memory_mb
        else:
            peak = _read_vm_hwm_mb() if reset_ok else None
            result.process_peak_mb = peak if peak is not None else lifetime_peak_rss_mb()
            if peak is not None and resident_before is not None:
                # the mark was reset to the resident set at the start, so the rise is never negative
                result.peak_memory_mb = max(peak - resident_before, 0.0)


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
    """What ``peak_memory_mb`` means on ``device``, for report captions and the manifest."""
    if device.type == "cuda":
        return "GPU memory allocated (torch.cuda.max_memory_allocated)"
    if _read_vm_hwm_mb() is None or not _CLEAR_REFS.exists():
        return "not measured on CPU here (needs Linux /proc/self/clear_refs)"
    return "the method's own peak: rise of the process's peak resident set over its resident set at the call's start"
