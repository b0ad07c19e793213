"""Run manifests: what produced a run folder, so its numbers can be traced and reproduced."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch

MANIFEST_SCHEMA = 1
_PACKAGES = ("wsl-bench", "torch", "torchvision", "numpy", "scipy", "pandas", "matplotlib", "captum", "grad-cam")


def config_hash(config: dict[str, Any]) -> str:
    """Stable short hash of a JSON-serialisable configuration."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in _PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def plugin_packages() -> dict[str, dict[str, dict[str, Any]]]:
    """Every installed plugin, methods and datasets, by registered name: its package name, version,
    entry point and whether it loaded (``wsl_bench.registry.Registry.plugins``). Recorded whether or not
    the run uses it: a plugin may register more than its entry point names, so its presence is part
    of what produced the run."""
    from wsl_bench.registry import DATASETS, METHODS, load_builtins

    load_builtins()  # built-in names first: a plugin cannot take one of them
    return {"methods": METHODS.plugins(), "datasets": DATASETS.plugins()}


def git_state() -> dict[str, Any]:
    """Commit and dirty flag of the checkout the package is imported from (``None`` outside git)."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here, capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()
        return {"commit": commit, "dirty": bool(dirty)}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


ARITHMETIC_FEATURES = (
    "sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16", "avx512_fp16",
    "amx_tile", "amx_bf16", "amx_int8", "asimd", "sve", "sve2", "bf16", "i8mm",
)
"""CPU features (Linux ``/proc/cpuinfo`` names; x86, then Arm) that decide which kernels torch and
oneDNN run, and so how float32 and bfloat16 arithmetic rounds: the manifest lists those present."""


def _cpuinfo() -> dict[str, str]:
    """The first processor's fields of ``/proc/cpuinfo`` (empty where there is none: not Linux)."""
    fields: dict[str, str] = {}
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return fields
    for line in text.splitlines():
        if not line.strip():
            if fields:
                break  # the first processor is enough: they are all the same model
            continue
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip().lower(), value.strip())
    return fields


def cpu_info() -> dict[str, Any]:
    """What decides the CPU's arithmetic: model name, the features of :data:`ARITHMETIC_FEATURES` it
    has, torch's version and CPU capability (the kernels its dispatcher chose: ``AVX512``, ``AVX2``,
    ...), and whether oneDNN computes bfloat16 natively (what turns the ``cpu_amp`` training on)."""
    fields = _cpuinfo()
    model = fields.get("model name") or fields.get("hardware") or fields.get("cpu model") or ""
    if not model and platform.system() == "Darwin":
        try:
            model = subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True,
                                   timeout=5, check=True).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            model = ""
    present = set((fields.get("flags") or fields.get("features") or "").split())
    capability = getattr(getattr(torch.backends, "cpu", None), "get_cpu_capability", None)
    bf16_check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return {
        "model": model or platform.processor() or platform.machine(),
        "features": [f for f in ARITHMETIC_FEATURES if f in present],
        "torch": torch.__version__,
        "torch_cpu_capability": capability() if capability is not None else None,
        "native_bf16": bool(bf16_check()) if bf16_check is not None else None,
    }


def device_info(device: torch.device) -> dict[str, Any]:
    """The device a run computes on, and the CPU beside it (:func:`cpu_info`: on a GPU run it still
    loads, scores and may train parts of the work)."""
    info: dict[str, Any] = {"type": device.type, "torch_threads": torch.get_num_threads()}
    if device.type == "cuda":
        info["name"] = torch.cuda.get_device_name(device)
    else:
        info["name"] = platform.processor() or platform.machine()
        info["cpu_count"] = os.cpu_count()
    info["cpu"] = cpu_info()
    return info


def write_json_atomic(path: str | Path, data: Any) -> None:
    """Write JSON to a temporary file in the same folder, then rename it over ``path``
    (:func:`wsl_bench.atomic_io.write_json_atomic`: fsync-ed, the temporary file removed on error)."""
    from wsl_bench.atomic_io import write_json_atomic as _write_json_atomic

    _write_json_atomic(path, data)


def read_json(path: str | Path) -> Any:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)
