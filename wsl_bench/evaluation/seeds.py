"""Training seeds in a run folder: which records belong to which training, which seeds a folder holds.

A run with several training seeds (``wsl-bench run --seeds 0,1,2``) trains every trainable method
once per seed and scores each training on the same images (those of the dataset seed, ``--seed``).
Methods with nothing to train (the baselines, a method on a user's weights file) are scored once:
their records serve every seed. So every record says which training it scores:

* ``seed``: the training seed of a trained method's record; ``null`` for a record shared by every seed.
* A record written before records carried the field belongs to the run's one training seed when its
  method was trained (that run trained with its ``seed``), else to every seed (:func:`legacy_seeds`).

The manifest lists the folder's training seeds (``seeds``; a folder from before lists none: its
``seed`` was the one), and the checkpoint facts of every seed's training: ``checkpoints.<method>`` holds
the first seed's, as a one-seed run writes them, and a run with several seeds adds
``checkpoints_by_seed.<method>.<seed>`` for each (:func:`checkpoint_facts` reads both).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def run_seeds(manifest: Mapping[str, Any]) -> list[int]:
    """The training seeds of the run folder whose manifest is ``manifest``, in order."""
    seeds = manifest.get("seeds")
    if seeds:
        return [int(s) for s in seeds]
    config = manifest.get("config") or {}
    seed = config.get("seed", manifest.get("seed"))
    return [int(seed)] if seed is not None else [0]


def trained_methods(manifest: Mapping[str, Any]) -> set[str]:
    """The run's methods whose records belong to a training seed: those whose identity names a
    checkpoint key (``methods.<m>.identity_data.training``), or, in a manifest from before
    identities, whose checkpoint facts have one."""
    trained = set()
    for name, entry in (manifest.get("methods") or {}).items():
        if isinstance(entry, dict) and ((entry.get("identity_data") or {}).get("training")):
            trained.add(name)
    for name, facts in (manifest.get("checkpoints") or {}).items():
        if name not in (manifest.get("methods") or {}) and isinstance(facts, dict) and facts.get("cache_key"):
            trained.add(name)
    return trained


def legacy_seeds(manifest: Mapping[str, Any]) -> dict[str, int]:
    """method → the seed of its records that carry no ``seed`` field (written before records had one,
    by a run with one training seed): the run's first seed for trained methods; other methods' such
    records are shared by every seed (not in the mapping)."""
    first = run_seeds(manifest)[0]
    return {name: first for name in trained_methods(manifest)}


def expected_seeds(manifest: Mapping[str, Any], method: str) -> list[int | None]:
    """The ``seed`` values a complete run folder holds records of ``method`` under: every training
    seed of the run for a trained method, ``None`` (shared) for the others."""
    return list(run_seeds(manifest)) if method in trained_methods(manifest) else [None]


def checkpoint_facts(manifest: Mapping[str, Any]) -> list[tuple[str, int | None, dict[str, Any]]]:
    """``(method, seed, facts)`` of every training the manifest records, methods in its order and
    seeds in the run's; ``seed`` is ``None`` for facts written before they carried one."""
    by_seed = manifest.get("checkpoints_by_seed") or {}
    first = run_seeds(manifest)[0]
    found: list[tuple[str, int | None, dict[str, Any]]] = []
    for name, facts in (manifest.get("checkpoints") or {}).items():
        seeds = by_seed.get(name) if isinstance(by_seed, dict) else None
        if isinstance(seeds, dict) and seeds:
            if str(first) not in seeds and isinstance(facts, dict):  # the first seed's, from before it had company
                found.append((name, first, facts))
            found += [(name, int(seed), dict(f or {})) for seed, f in seeds.items()]
        elif isinstance(facts, dict):
            found.append((name, facts.get("seed"), facts))
    return found


def added_seeds(existing: Sequence[int], requested: Sequence[int]) -> list[int] | None:
    """The seeds a run folder holds once a run asking for ``requested`` has run in it: ``existing``
    then the new ones, in the order asked; ``None`` when ``requested`` leaves out one of ``existing``
    (the folder's report would silently keep the seeds this run did not ask for)."""
    if not set(existing) <= set(requested):
        return None
    return list(existing) + [s for s in requested if s not in existing]


def seed_label(name: str, seed: int | None, seeds: Sequence[int]) -> str:
    """How progress lines name ``name``'s work at ``seed``: ``cam (seed 1)`` in a run with several
    training seeds, the name alone otherwise and for methods shared by every seed."""
    return name if seed is None or len(seeds) <= 1 else f"{name} (seed {seed})"


def format_seeds(seeds: Sequence[int]) -> str:
    """``0, 1, 2``."""
    return ", ".join(str(s) for s in seeds)
