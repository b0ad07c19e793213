"""What the report's header says about where its numbers come from: seeds, CPU, torch, precision.

A ranking can depend on the machine that trained it (bfloat16 kernels differ between CPUs), so the
header names what decides the arithmetic, from the manifest (``wsl_bench.evaluation.manifest.cpu_info``
and each checkpoint's recorded training precision): a difference between two reports can then be traced.
Manifests from before these facts were recorded give the header it had then.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from wsl_bench.evaluation.seeds import checkpoint_facts, format_seeds, run_seeds


def seeds_phrase(manifest: Mapping[str, Any]) -> str:
    """``seed 0`` for a run whose one training seed is its dataset seed (as a one-seed run always
    said), else ``dataset seed 0, training seeds 0, 1, 2``."""
    config = manifest.get("config") or {}
    dataset_seed = config.get("seed", manifest.get("seed"))
    seeds = run_seeds(manifest)
    if seeds == [dataset_seed]:
        return f"seed {dataset_seed}"
    plural = "s" if len(seeds) > 1 else ""
    return f"dataset seed {dataset_seed}, training seed{plural} {format_seeds(seeds)}"


def cpu_phrase(manifest: Mapping[str, Any]) -> str:
    """`` on AMD EPYC (avx2, avx512f, avx512_bf16; torch 2.14.1, CPU capability AVX512)``, or nothing
    for a manifest without CPU facts."""
    cpu = (manifest.get("device") or {}).get("cpu")
    if not isinstance(cpu, dict):
        return ""
    features = ", ".join(cpu.get("features") or []) or "no listed vector extensions"
    torch_part = f"torch {cpu.get('torch')}" if cpu.get("torch") else "torch"
    capability = f", CPU capability {cpu['torch_cpu_capability']}" if cpu.get("torch_cpu_capability") else ""
    return f" on {cpu.get('model') or 'an unnamed CPU'} ({features}; {torch_part}{capability})"


def precision_sentence(manifest: Mapping[str, Any]) -> str:
    """`` Training precision: bfloat16 autocast (cam, gmic).``: the arithmetic each trained network
    was trained in, as its checkpoint records it; nothing when no checkpoint records it."""
    by_precision: dict[str, list[str]] = {}
    for method, _, facts in checkpoint_facts(manifest):
        precision = facts.get("precision")
        if not precision:
            continue
        trained = facts.get("trained_method") or method
        names = by_precision.setdefault(str(precision), [])
        if trained not in names:
            names.append(trained)
    if not by_precision:
        return ""
    parts = [f"{precision} ({', '.join(sorted(names))})" for precision, names in sorted(by_precision.items())]
    return f" Training precision: {'; '.join(parts)}."
