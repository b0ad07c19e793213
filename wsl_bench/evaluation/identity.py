"""Run identity of a method: everything that can change its records, hashed.

A run folder resumes by keeping the records it already holds. That is only right while the records
would come out the same, so every method of a run has an identity (``manifest.json`` ``methods.<name>
.identity``, and the same hash in each of its records) made of:

* ``options``: the method's constructor options after the preset's and the user's are merged
  (``--option``, ``--classifier``, ``--weights`` paths included);
* ``weights``: the checksums of any weights file the method loaded (``--weights``);
* ``training``: the checkpoint cache key of the weights it trains or reuses
  (:func:`wsl_bench.pipeline.training_job`: training data, budget, recipe, donor, trainer code), or
  ``None`` for methods with nothing to train. In a run with several training seeds it is the key of
  the training at the dataset seed: each seed's key is a function of the same settings and of the
  seed, which every record names (``seed``), so one identity serves every seed;
* ``code``: sha256 of the source files that decide the method's maps and how they are scored: the
  modules of its class hierarchy (and of the classifier an explainer wraps), of its network's
  layers that belong to wsl-bench or to the plugin's package, the scoring code and the dataset
  loader;
* ``data``: the description (``MammogramDataset.describe()``, content checksums for folders) of every
  split the run scores.

The run-wide settings (dataset, preset, image size, dataset seed, bins, splits) are the run's own
identity (``RunConfig.identity``); a folder with other settings is refused as a whole (its training
seeds may grow: ``wsl_bench.evaluation.harness.open_manifest``). When a method's
identity changes, its old records are stale: the harness ignores them, recomputes, and drops them
from ``records.jsonl``; methods whose identity did not change keep their records.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from wsl_bench.evaluation.manifest import config_hash
from wsl_bench.saliency import SaliencyMethod

IDENTITY_FIELDS = ("options", "weights", "training", "code", "data")
"""The parts of a method identity, in the order a changed-identity message names them."""

_SCORING_MODULES = ("wsl_bench.evaluation.scoring", "wsl_bench.saliency", "wsl_bench.evaluation.metrics")


def method_code_files(
    method: SaliencyMethod, extra_modules: tuple[str, ...] = (), related: Sequence[SaliencyMethod] = ()
) -> list[Path]:
    """Source files whose code decides ``method``'s maps and records (see the module docstring);
    ``related``: methods whose code decides them too (the classifier method an explainer explains)."""
    objects: list[Any] = [method, *related]
    packages = {"wsl_bench"} | {type(o).__module__.split(".")[0] for o in objects}
    modules = set(_SCORING_MODULES) | set(extra_modules)
    for obj in objects:
        modules |= {cls.__module__ for cls in type(obj).__mro__}
        try:  # the layers it runs: a trainable method's network, an explainer's classifier
            modules |= {type(layer).__module__ for module in obj.modules().values() for layer in module.modules()}
        except (NotImplementedError, AttributeError):
            pass  # a method without a network
    files = {Path(sys.modules[name].__file__) for name in modules
             if name.split(".")[0] in packages and getattr(sys.modules.get(name), "__file__", None)}
    return sorted(files)


def code_fingerprint(files: list[Path]) -> str:
    """sha256 over the files' names and bytes."""
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def method_identity(
    method: SaliencyMethod,
    options: dict[str, Any],
    training: str | None,
    data: dict[str, Any],
    dataset_module: str | None = None,
    related: Sequence[SaliencyMethod] = (),
) -> dict[str, Any]:
    """The identity data of one method in one run (hash it with :func:`identity_hash`).

    Args:
        method: the created (not necessarily trained) method.
        options: its merged constructor options.
        training: the checkpoint cache key of the weights it runs on (its own, or for a post-hoc
            explainer its classifier method's), or ``None`` when nothing is trained.
        data: split → ``describe()`` of every split the run scores.
        dataset_module: the module of the dataset class (its loader code counts as the method's code).
        related: methods whose code also decides its maps (the classifier method an explainer explains).
    """
    extra = (dataset_module,) if dataset_module else ()
    return {
        "options": json.loads(json.dumps(options, sort_keys=True, default=str)),
        "weights": dict(method.checksums()),
        "training": training,
        "code": code_fingerprint(method_code_files(method, extra, related)),
        "data": config_hash(data),
    }


def identity_hash(identity: dict[str, Any]) -> str:
    """Short stable hash of :func:`method_identity`'s data."""
    return config_hash(identity)


def changed_fields(old: dict[str, Any] | None, new: dict[str, Any]) -> list[str]:
    """The identity parts that differ (all of them when ``old`` is unknown)."""
    if not old:
        return list(IDENTITY_FIELDS)
    return [name for name in IDENTITY_FIELDS if old.get(name) != new.get(name)]


def current_records(records: list[dict[str, Any]], manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """The records that belong to each method's current run identity (``manifest.json``
    ``methods.<name>.identity``): a record made under another identity (other options, weights,
    checkpoint, code or data) is stale and left out. A method the manifest gives no identity (a run
    folder from before identities existed) keeps all its records."""
    identities = {name: entry.get("identity") for name, entry in (manifest.get("methods") or {}).items()
                  if isinstance(entry, dict)}
    return [r for r in records if identities.get(r["method"]) is None or r.get("identity") == identities[r["method"]]]
