"""Reading and writing model weights: published checkpoints and this project's own format.

Two kinds of file load into a method's network:

* **Published** weights: a ``torch.save``-d flat state dict in the published key names (GLAM
  ``model_sep.ckpt`` / ``model_joint.ckpt``, GMIC ``sample_model_1.p`` … ``_5.p``), or the
  reference ``.npz`` files of ``../shared/reference`` (float16 arrays, cast to float32; reference outputs
  of the published code, not distributed: ``docs/published_reference.md``). The
  networks in :mod:`wsl_bench.methods` name their submodules after the published keys, so the key
  mapping (:func:`map_published_keys`) is the identity except for a ``module.`` prefix that
  ``DataParallel`` adds. Every key must be used and every shape must match.
* **Own** checkpoints, the format the trainer writes (``wsl_bench.training.trainer``):
  ``{"format": "wsl_bench.checkpoint/1", "method", "config", "state_dict", "meta": {"training_data",
  "seed", "metrics", ...}}``. :func:`save_checkpoint` writes one from a :class:`CheckpointMetadata`
  record atomically (temporary file, then ``os.replace``: a crash never leaves a half-written
  file); loading one into another method family or configuration is refused.

This module is the only place that reads a weights file and decides whether it fits a network:
:func:`load_weights` serves published-weight methods (``weights=``), the trainer (a stage starting
from the previous stage's checkpoint) and the training cache alike, with one compatibility rule.

Every file is read with ``torch.load(..., weights_only=True)`` (through
:func:`load_checkpoint_file`) or ``numpy.load(allow_pickle=False)``: no
arbitrary pickle is ever executed.

Published-weight variants (``glam.sep``, ``gmic.m1`` …) find their file through ``weights=`` or
the directory named by the ``WSL_BENCH_WEIGHTS_DIR`` environment variable, which holds the files
under their published names.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from wsl_bench.atomic_io import atomic_write
from wsl_bench.limits import MAX_WEIGHTS_EXPANSION, MIN_WEIGHTS_EXPANSION
from wsl_bench.regular_files import open_regular, regular_file_problem

FORMAT = "wsl_bench.checkpoint/1"
"""The ``format`` tag of the project's checkpoints (shared with the trainer)."""
WEIGHTS_DIR_ENV = "WSL_BENCH_WEIGHTS_DIR"
"""Environment variable naming a directory that holds published weight files under their published names."""


class CheckpointError(ValueError):
    """A weights file that cannot be used; the message names the file and the problem."""


class WeightsNotFoundError(FileNotFoundError):
    """A published-weight variant whose file was not supplied; the message says where to get it."""


@dataclass(frozen=True)
class CheckpointMetadata:
    """What a checkpoint of this project records besides the weights.

    Attributes:
        method: registered method name that produced the weights (``glam``, ``gmic.m2`` ...).
        config: the method's ``config_dict()`` (architecture and inference settings).
        training_data: the training data (a dataset's ``describe()`` record, or a description).
        seed: the seed of the run.
        metrics: validation metrics at save time (name → value).
        extra: anything else JSON-like the trainer records (``train_config``, ``epochs_completed`` ...).
    """

    method: str
    config: dict[str, Any]
    training_data: Any = ""
    seed: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_checkpoint(self, state_dict: Mapping[str, torch.Tensor]) -> dict[str, Any]:
        """The checkpoint dictionary in the trainer's layout."""
        return {
            "format": FORMAT,
            "method": self.method,
            "config": dict(self.config),
            "state_dict": dict(state_dict),
            "meta": self.meta_record(),
        }

    @classmethod
    def from_checkpoint(cls, obj: Mapping[str, Any], where: str) -> CheckpointMetadata:
        try:
            meta = dict(obj.get("meta") or {})
            return cls(
                method=str(obj["method"]),
                config=dict(obj["config"]),
                training_data=meta.pop("training_data", ""),
                seed=int(meta.pop("seed", 0)),
                metrics=dict(meta.pop("metrics", None) or {}),
                extra=meta,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{where}: incomplete wsl-bench checkpoint record ({exc})") from None

    def meta_record(self) -> dict[str, Any]:
        """The checkpoint's ``meta`` dictionary as the trainer wrote it (``training_data``, ``seed``,
        ``metrics`` and the ``extra`` entries such as ``epochs_completed``)."""
        return {**self.extra, "training_data": self.training_data, "seed": self.seed, "metrics": dict(self.metrics)}


# --------------------------------------------------------------------------------------------
# Reading files
# --------------------------------------------------------------------------------------------
def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` to a temporary file in the same folder, then rename over ``path``
    (:func:`wsl_bench.atomic_io.atomic_write`: fsync-ed, the temporary file removed on error)."""
    with atomic_write(path, "wb") as handle:
        torch.save(obj, handle)


def load_checkpoint_file(path: str | Path, map_location: str | torch.device = "cpu") -> Any:
    """Read a checkpoint with ``weights_only=True``.

    Raises:
        FileNotFoundError: naming the missing file.
        ValueError: the file is not a readable checkpoint or holds objects that are not plain
            tensors and containers (an unsafe pickle), naming the file.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    check_weights_file(path)  # a FIFO, or a zip entry inflating to gigabytes, refused before loading
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise ValueError(f"{path}: cannot load as a safe checkpoint (weights_only=True): {exc}") from exc


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file (recorded in run manifests)."""
    digest = hashlib.sha256()
    with open_regular(path) as f:  # a FIFO or a device would never end
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _torch_load(path: Path) -> Any:
    try:
        return load_checkpoint_file(path)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such file") from None
    except CheckpointError:
        raise
    except ValueError as exc:  # weights_only refuses arbitrary pickles; a corrupt file fails to parse
        raise CheckpointError(f"{path}: not a readable weights file ({exc.__cause__ or exc})") from None


def check_weights_file(path: Path) -> None:
    """Refuse, before anything is loaded, a weights path that is not a regular file (a FIFO would
    never end) or a zip (``torch.save``'s format, ``.npz``) whose entries decompress to more than
    :data:`~wsl_bench.limits.MAX_WEIGHTS_EXPANSION` times its size (plus
    :data:`~wsl_bench.limits.MIN_WEIGHTS_EXPANSION`): ``torch.load`` allocates a storage as large as
    its entry says before inflating it, so a 6 MB file could ask for 6 GiB.

    Raises:
        CheckpointError: naming the file and the problem or the bound.
    """
    problem = regular_file_problem(path)
    if problem is not None:
        raise CheckpointError(f"{problem}; refused")
    try:
        size = path.stat().st_size
        if not zipfile.is_zipfile(path):
            return  # a legacy torch file: its storages are read from the file itself, never inflated
        with zipfile.ZipFile(path) as archive:
            expanded = sum(info.file_size for info in archive.infolist())
    except (OSError, zipfile.BadZipFile, ValueError):
        return  # unreadable or damaged: the loader below names the problem
    limit = MAX_WEIGHTS_EXPANSION * size + MIN_WEIGHTS_EXPANSION
    if expanded > limit:
        raise CheckpointError(
            f"{path}: its {size:,} bytes decompress to {expanded:,} bytes, above the limit of "
            f"wsl_bench.limits.MAX_WEIGHTS_EXPANSION = {MAX_WEIGHTS_EXPANSION} times the file's size plus "
            f"MIN_WEIGHTS_EXPANSION = {MIN_WEIGHTS_EXPANSION:,} bytes (real weights are stored about as large as "
            "they load); refused")


def read_npz_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A state dict stored as ``.npz`` arrays (float16 → float32, integers kept)."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such file") from None
    except Exception as exc:
        raise CheckpointError(f"{path}: not a readable .npz file ({type(exc).__name__}: {exc})") from None
    state = {}
    for key, array in arrays.items():
        tensor = torch.from_numpy(np.array(array, copy=True))  # 0-d stays 0-d (ascontiguousarray would not)
        state[key] = tensor.float() if tensor.is_floating_point() else tensor
    return state


def read_weights_file(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], CheckpointMetadata | None]:
    """Read any supported weights file.

    Returns:
        ``(state_dict, metadata)``: metadata is ``None`` for published files and ``.npz``.

    Raises:
        CheckpointError: unreadable file, or content that is not a state dict.
    """
    path = Path(path)
    if path.exists():
        check_weights_file(path)
    if path.suffix == ".npz":
        return read_npz_state_dict(path), None
    obj = _torch_load(path)
    if isinstance(obj, Mapping) and isinstance(obj.get("format"), str) and obj["format"].startswith("wsl_bench."):
        if obj["format"] != FORMAT:
            raise CheckpointError(f"{path}: checkpoint format {obj['format']!r}, this wsl-bench reads {FORMAT!r}")
        metadata = CheckpointMetadata.from_checkpoint(obj, str(path))
        state = obj.get("state_dict")
        if not isinstance(state, Mapping):
            raise CheckpointError(f"{path}: checkpoint has no state_dict")
        return _as_state_dict(state, path), metadata
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"{path}: expected a state dict (a mapping of names to tensors), got {type(obj).__name__}"
        )
    return _as_state_dict(obj, path), None


def _as_state_dict(obj: Mapping, path: Path) -> dict[str, torch.Tensor]:
    bad = [str(k) for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{path}: entries that are not tensors: {', '.join(bad[:10])}")
    return {str(k): v for k, v in obj.items()}


def map_published_keys(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Published key names → this project's module names.

    The networks use the published names as submodule names, so the mapping is the identity;
    only the ``module.`` prefix of a checkpoint saved from ``DataParallel`` is removed.
    """
    if state and all(k.startswith("module.") for k in state):
        return {k[len("module.") :]: v for k, v in state.items()}
    return dict(state)


# --------------------------------------------------------------------------------------------
# Matching a state dict to a module
# --------------------------------------------------------------------------------------------
def check_finite(state: Mapping[str, torch.Tensor], where: str) -> None:
    """Refuse weights holding NaN or infinite values: a network loaded with them gives NaN maps on
    every image, which would surface as one failed record per image instead of one clear error.

    Raises:
        CheckpointError: naming ``where`` and the first tensors concerned.
    """
    bad = [key for key, value in state.items()
           if value.is_floating_point() and not bool(torch.isfinite(value).all())]
    if bad:
        shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise CheckpointError(f"{where}: weights hold NaN or infinite values ({shown}); refused")


def check_state_dict(module: nn.Module, state: Mapping[str, torch.Tensor], where: str) -> None:
    """Require that ``state`` supplies exactly the module's keys, each with the right shape.

    Raises:
        CheckpointError: listing missing, unexpected and mis-shaped keys (with both shapes).
    """
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    misshaped = sorted(
        f"{k} (file {tuple(state[k].shape)}, model {tuple(expected[k].shape)})"
        for k in set(expected) & set(state)
        if tuple(state[k].shape) != tuple(expected[k].shape)
    )
    if missing or unexpected or misshaped:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)):
            if keys:
                shown = ", ".join(keys[:20]) + (f", ... ({len(keys) - 20} more)" if len(keys) > 20 else "")
                parts.append(f"{len(keys)} {label} key(s): {shown}")
        raise CheckpointError(f"{where}: weights do not fit {type(module).__name__}: " + "; ".join(parts))


def load_state_dict_strict(module: nn.Module, state: Mapping[str, torch.Tensor], where: str) -> None:
    """:func:`check_state_dict` and :func:`check_finite`, then copy every tensor into the module
    (dtype and device of the module)."""
    check_state_dict(module, state, where)
    check_finite(state, where)
    expected = module.state_dict()
    converted = {k: v.to(dtype=expected[k].dtype) for k, v in state.items()}
    module.load_state_dict(converted, strict=True)


# --------------------------------------------------------------------------------------------
# Own format
# --------------------------------------------------------------------------------------------
def save_checkpoint(path: str | os.PathLike, module: nn.Module, metadata: CheckpointMetadata) -> Path:
    """Write ``module``'s state dict with ``metadata`` in the project's format, atomically.

    Returns:
        The path written.
    """
    path = Path(path)
    state = {k: v.detach().cpu() for k, v in module.state_dict().items()}
    atomic_torch_save(metadata.to_checkpoint(state), path)
    return path


def load_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], CheckpointMetadata]:
    """Read a checkpoint written by :func:`save_checkpoint`.

    Raises:
        CheckpointError: the file is not one of this project's checkpoints.
    """
    state, metadata = read_weights_file(path)
    if metadata is None:
        raise CheckpointError(
            f"{path}: not a wsl-bench checkpoint (no metadata record); published weights load "
            "through the method's weights= option"
        )
    return state, metadata


def method_family(name: str) -> str:
    """``gmic.m3`` → ``gmic``: variants share an architecture."""
    return name.split(".", 1)[0]


def check_compatible(metadata: CheckpointMetadata, method: str, config: Mapping[str, Any], where: str) -> None:
    """Refuse a checkpoint of another method family or another configuration.

    The ``"training"`` entry of a configuration (loss weights, learning rate) is not compared: it
    shaped the weights but does not change what a loaded network computes.

    Raises:
        CheckpointError: naming the method or the differing configuration fields.
    """
    if method_family(metadata.method) != method_family(method):
        raise CheckpointError(f"{where}: checkpoint of method {metadata.method!r} cannot be loaded into {method!r}")
    ours = json.loads(json.dumps(dict(config)))  # tuples → lists (torch.save may have kept tuples)
    theirs = json.loads(json.dumps(dict(metadata.config)))
    ours.pop("training", None)
    theirs.pop("training", None)
    differing = sorted(k for k in set(ours) | set(theirs) if ours.get(k) != theirs.get(k))
    if differing:
        detail = ", ".join(f"{k}: checkpoint {theirs.get(k)!r}, method {ours.get(k)!r}" for k in differing)
        raise CheckpointError(
            f"{where}: checkpoint was saved with another {method_family(method)} configuration ({detail})"
        )


# --------------------------------------------------------------------------------------------
# Front door for methods
# --------------------------------------------------------------------------------------------
def resolve_weights(
    method: str, weights: str | os.PathLike | None, published_file: str | None, source: str | None
) -> Path | None:
    """The weights file a method should load, or ``None`` for a randomly initialised method.

    ``weights`` wins; a published-weight variant (``published_file`` set) otherwise looks for
    ``$WSL_BENCH_WEIGHTS_DIR/<published_file>``.

    Raises:
        WeightsNotFoundError: a variant whose file is nowhere to be found, or a ``weights`` path
            that does not exist; the message says where to obtain the file.
    """
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            hint = f" (the published file {published_file!r} is available from {source})" if published_file else ""
            raise WeightsNotFoundError(f"{method}: weights file {path} does not exist{hint}")
        return path
    if published_file is None:
        return None
    directory = os.environ.get(WEIGHTS_DIR_ENV)
    if directory:
        candidate = Path(directory).expanduser() / published_file
        if candidate.is_file():
            return candidate
        where = f"not found in ${WEIGHTS_DIR_ENV}={directory}"
    else:
        where = f"${WEIGHTS_DIR_ENV} is not set"
    raise WeightsNotFoundError(
        f"{method} needs the published weights file {published_file!r} ({where}). Its licence does not let "
        f"wsl-bench redistribute it: download it from {source}, then pass weights=PATH (--weights PATH) or put "
        f"it in a directory named by ${WEIGHTS_DIR_ENV}."
    )


@dataclass(frozen=True)
class LoadedWeights:
    """What :func:`load_weights` loaded.

    Attributes:
        path: the file.
        sha256: its hex SHA-256 (:func:`file_sha256`).
        kind: ``"published"`` (published state dict or ``.npz``) or ``"wsl-bench"`` (own checkpoint).
        metadata: the own checkpoint's record; ``None`` for published files.
    """

    path: Path
    sha256: str
    kind: str
    metadata: CheckpointMetadata | None = None

    def info(self) -> dict[str, str]:
        """``{"weights": path, "sha256": digest, "kind": kind}`` for manifests (a method's ``checksums()``)."""
        return {"weights": str(self.path), "sha256": self.sha256, "kind": self.kind}


def load_weights(
    module: nn.Module,
    path: str | os.PathLike,
    method: str,
    config: Mapping[str, Any],
    own_only: bool = False,
) -> LoadedWeights:
    """Load any supported weights file into ``module``: the one checkpoint loader of wsl-bench.

    Published methods (``weights=``), the trainer (a stage starting from the previous stage's
    checkpoint) and the training cache all load through here, so one compatibility rule holds:

    * an own checkpoint (``wsl_bench.checkpoint/1``) must come from the same method family with
      the same configuration (:func:`check_compatible`; the ``"training"`` entry is not compared);
    * a published state dict or ``.npz`` goes through :func:`map_published_keys`;
    * either way every key must be used and every shape must match (:func:`check_state_dict`).

    Args:
        module: the network to load into (dtype and device are kept).
        path: the file.
        method: the registered name of the method the network belongs to (``gmic.m2`` ...).
        config: that method's configuration (``config_dict()`` / ``training_identity()["config"]``).
        own_only: refuse published files (the trainer and the cache read only their own checkpoints).

    Returns:
        :class:`LoadedWeights` (``.info()`` for manifests, ``.metadata`` for own checkpoints).

    Raises:
        CheckpointError: unreadable, incompatible or mismatching weights; the message names the file.
    """
    path = Path(path)
    state, metadata = read_weights_file(path)
    if metadata is None:
        if own_only:
            raise CheckpointError(f"{path}: not a wsl-bench checkpoint (format {FORMAT!r} expected)")
        state = map_published_keys(state)
        kind = "published"
    else:
        check_compatible(metadata, method, config, str(path))
        kind = "wsl-bench"
    load_state_dict_strict(module, state, str(path))
    return LoadedWeights(path=path, sha256=file_sha256(path), kind=kind, metadata=metadata)
