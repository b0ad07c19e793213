"""Which ``--device`` values this machine can run, checked before any work starts.

PyTorch only finds out that a device is missing when the first tensor reaches it (for CUDA without
a driver: a long traceback ending "Found no NVIDIA driver"), by which time a run has opened its
dataset, written its manifest and built its methods. :func:`check_device` asks PyTorch up front
and turns a device this machine cannot use into one line naming it and the devices it has.
"""

from __future__ import annotations

import torch


class DeviceError(ValueError):
    """A ``--device`` this machine cannot run; the message names it and the devices available."""


def cuda_count() -> int:
    """CUDA devices PyTorch can use here (0 without a CUDA build, a driver or a GPU)."""
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def mps_available() -> bool:
    """Whether Apple's Metal (``mps``) device is usable."""
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def available_devices() -> list[str]:
    """The devices ``--device`` may name here: ``cpu``, then ``cuda`` and ``cuda:0`` … when CUDA works,
    ``mps`` on Apple silicon."""
    count = cuda_count()
    devices = ["cpu"]
    if count:
        devices += ["cuda"] + [f"cuda:{i}" for i in range(count)]
    if mps_available():
        devices.append("mps")
    return devices


def _why_no_cuda() -> str:
    if torch.version.cuda is None:
        return f"this PyTorch ({torch.__version__}) is a build without CUDA"
    return "PyTorch finds no CUDA device (no NVIDIA GPU, or no driver for it)"


def check_device(name: str) -> str:
    """``name`` when this machine can run it (``cpu``, ``cuda``, ``cuda:N``, ``mps``).

    Raises:
        DeviceError: one line naming ``name``, why it cannot be used and the devices available.
    """
    available = ", ".join(available_devices())
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        hint = " (a CUDA GPU is 'cuda' or 'cuda:N')" if name.strip().lower() in ("gpu", "nvidia") else ""
        raise DeviceError(f"--device {name}: not a device name{hint}; available here: {available}") from None
    if device.type == "cpu":
        return name
    if device.type == "cuda":
        count = cuda_count()
        if count == 0:
            raise DeviceError(f"--device {name}: {_why_no_cuda()}; available here: {available}")
        if device.index is not None and device.index >= count:
            raise DeviceError(f"--device {name}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}; "
                              f"available here: {available}")
        return name
    if device.type == "mps" and mps_available():
        return name
    raise DeviceError(f"--device {name}: not usable by wsl-bench on this machine; available here: {available}")
