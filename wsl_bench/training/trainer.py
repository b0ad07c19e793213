"""The weakly-supervised trainer shared by every trainable method.

Only image-level labels reach the loss: masks are never read during training, except by a method that
declares a ``mask_split`` (the supervised reference points ``fsl`` and ``supervised``): its loss receives
the masks of that one split (:class:`~wsl_bench.training.data.MaskedImages`, built for no other method),
and it is not validated while it trains. Validation reads them
to report Dice and PxAP per epoch (computed by :mod:`wsl_bench.evaluation.scoring` and
:mod:`wsl_bench.evaluation.metrics`, the harness's own definitions) and, when asked, to pick the
best checkpoint by one of them. One trainer for all methods keeps the comparison fair: same
optimiser, same data order, same budget.

Stages. A method may declare a sequence of :class:`TrainingStage` (``training_stages()``), each a
loss, a subset of the network to train and a share of the epoch budget: GLAM trains its global
module, then its local module on the windows the frozen global module chooses, then optionally
both. One :class:`Trainer` runs one stage into its own folder; ``wsl_bench.training.cache.train_stages``
runs them in order, each starting from the previous stage's best checkpoint.

Policies. What happens after each epoch besides the loop is a list of small callbacks
(:mod:`wsl_bench.training.policies`): :class:`~wsl_bench.training.policies.BestCheckpoint` writes
``best.pt``, :class:`~wsl_bench.training.policies.TrainingLog` writes ``log.csv`` and ``curves.png``;
more can be passed to :class:`Trainer` (``callbacks``).

Reproducibility and resumption. The data order of epoch ``e`` is drawn from ``(seed, e)``; every
training image's augmentation from ``(seed, e, position)`` (:mod:`wsl_bench.training.augment`); a checkpoint
stores the network, the optimiser, epoch, step in epoch, the losses of the epoch so far and torch's
RNG states. A run killed at any moment and resumed from its last checkpoint therefore ends with the
same weights as an uninterrupted run (on CPU). Checkpoints are written atomically (temporary file,
then ``os.replace``), so a kill during a write leaves the previous checkpoint intact.

Mixed precision (``amp`` on CUDA, ``cpu_amp`` on CPUs with native bfloat16): the forward pass runs
under bfloat16 autocast. bfloat16 keeps
float32's exponent range, so no gradient scaler is needed (fp16 would need one); the methods compute
their heads, pooling and losses in float32 (see their ``training_loss``).

Data parallelism (``torchrun``, see :mod:`wsl_bench.training.distributed`). Every rank computes the same
epoch order; each global batch is split over the ranks (``numpy.array_split``), each rank's loss (a
mean over its images) is weighted by ``n_rank · world / n_global`` so that DistributedDataParallel's
gradient average equals the gradient of the global batch mean, and BatchNorm statistics are
synchronised. Only rank 0 validates and writes checkpoints, logs and figures.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from wsl_bench import weights as weights_io
from wsl_bench.data import MammogramDataset
from wsl_bench.evaluation.metrics import AUCMetric, PxAPMetric, auc_chance_p_value
from wsl_bench.evaluation.records import decode_counts
from wsl_bench.evaluation.scoring import score_image
from wsl_bench.saliency import CLASSES, CRITERION_NAMES, TrainableMethod, TrainingStage  # noqa: F401 (re-export)
from wsl_bench.training.augment import Augmentation
from wsl_bench.training.data import (  # noqa: F401  (re-exported: the trainer's data API)
    FirstImages,
    LabelledImages,
    MaskedImages,
    ValidationImages,
    balanced_order,
    epoch_order,
)
from wsl_bench.training.distributed import SINGLE_PROCESS, DistContext, synchronise_batchnorm
from wsl_bench.training.policies import (  # noqa: F401  (CRITERIA, plot_curves: re-exported)
    CRITERIA,
    BestCheckpoint,
    EpochCallback,
    StatefulCallback,
    TrainingLog,
    plot_curves,
)
from wsl_bench.training.validation import TrainingMapScores
from wsl_bench.weights import atomic_torch_save, file_sha256, load_checkpoint_file

log = logging.getLogger(__name__)

TRAINER_STATE_FORMAT = "wsl_bench.trainer_state/2"
METHOD_CHECKPOINT_FORMAT = weights_io.FORMAT  # the one checkpoint format (wsl_bench.weights)
BALANCE_MODES: tuple[str, ...] = ("none", "pos_weight", "sampler")
LR_SCHEDULES: tuple[str, ...] = ("constant", "cosine")
WARMUP_FRACTION = 0.05
"""Share of a stage's steps the ``"cosine"`` schedule warms up over."""


class WeightAverage:
    """An exponential moving average of a network's floating-point weights and buffers.

    ``update()`` after every optimisation step; ``swapped_in()`` is a context in which the network holds
    the average (validation, checkpoints) and afterwards its own weights again. Integer buffers (BatchNorm's
    step counters) follow the network.

    Args:
        network: the trained network (its ``state_dict`` keys are the average's).
        decay: ``d`` of ``average ← d·average + (1 − d)·weights``.
    """

    def __init__(self, network: nn.Module, decay: float) -> None:
        self.network, self.decay = network, decay
        self.average = {k: v.detach().clone() for k, v in network.state_dict().items()}

    @torch.no_grad()
    def update(self) -> None:
        for key, value in self.network.state_dict().items():
            if value.is_floating_point():
                self.average[key].mul_(self.decay).add_(value.detach(), alpha=1.0 - self.decay)
            else:
                self.average[key].copy_(value)

    @contextmanager
    def swapped_in(self) -> Iterator[None]:
        own = {k: v.detach().clone() for k, v in self.network.state_dict().items()}
        self.network.load_state_dict(self.average)
        try:
            yield
        finally:
            self.network.load_state_dict(own)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.average

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for key, value in state.items():
            self.average[key].copy_(value)


def scheduled_lr(schedule: str, peak: float, step: int, total: int) -> float:
    """The learning rate of optimisation step ``step`` (0-based) of ``total`` under ``schedule``.

    ``"cosine"``: ``peak·(step+1)/w`` for the first ``w = max(1, round(WARMUP_FRACTION·total))`` steps,
    then ``peak·(1 + cos(π·t))/2`` with ``t`` going from 0 to 1 over the remaining steps.
    """
    if schedule == "constant" or total <= 1:
        return peak
    warmup = max(1, round(WARMUP_FRACTION * total))
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup - 1)
    return peak * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of one training run.

    Attributes:
        epochs: passes over the training split (a stage trains a share of them, see
            :class:`TrainingStage`).
        batch_size: images per optimisation step (the global batch, split over ranks).
        lr: Adam learning rate.
        weight_decay: Adam (L2) weight decay.
        seed: seeds initialisation-independent randomness: data order and augmentation.
        balance: class-imbalance handling. ``"pos_weight"``: positive terms of every BCE weighted
            by negatives/positives of their class over the training split; ``"sampler"``: each
            epoch draws as many images as the split holds, with replacement, every label pattern
            (none, benign, malignant, both) equally likely; ``"none"``: neither (balanced data
            such as the synthetic set).
        checkpoint_every_steps: also checkpoint every this many steps inside an epoch (0: only at
            epoch ends).
        best_criterion: validation quantity that selects ``best.pt`` (see :data:`CRITERIA`):
            ``"mean_auc"`` (image-level labels only, the default), ``"loss"`` (lowest),
            ``"mean_dice"`` or ``"mean_pxap"`` (these read the validation masks).
        amp: bfloat16 autocast on CUDA.
        cpu_amp: bfloat16 autocast on the CPU too, where it computes bfloat16 natively (oneDNN's check;
            elsewhere ignored), with the network in channels-last layout: about 2.3× faster training
            of the narrow networks of the cpu preset on an AVX512-BF16 CPU (measured, CAM at 368×240).
        val_bins: histogram bins of the validation Dice/PxAP (the harness's default is 1000).
        max_cached_images: training images kept decoded in memory (0: reload every time).
        epoch_images: images per epoch (the validation interval), drawn in turn from a stream of
            passes over the split (:func:`~wsl_bench.training.data.epoch_order`); ``None``: an epoch
            is one pass over the split.
        ema_decay: 0: the network trained is the network kept. Otherwise an exponential moving average of
            its weights (and BatchNorm statistics), ``ema ← d·ema + (1 − d)·weights`` after every step, is
            what every epoch validates and what ``best.pt`` and ``final.pt`` hold (Polyak averaging): the
            average over the last ``1/(1 − d)`` steps moves far less from one epoch to the next than the
            weights themselves (see :class:`WeightAverage`).
        lr_schedule: ``"constant"``: ``lr`` at every step; ``"cosine"``: a linear warm-up over the first
            :data:`WARMUP_FRACTION` of a stage's steps to ``lr``, then a cosine decay to 0 at its last
            step (:func:`scheduled_lr`). A function of the step, so a resumed run follows it exactly.
    """

    epochs: int = 8
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 1e-5
    seed: int = 0
    balance: str = "none"
    checkpoint_every_steps: int = 0
    best_criterion: str = "mean_auc"
    amp: bool = True
    cpu_amp: bool = False
    val_bins: int = 1000
    max_cached_images: int = 4000
    epoch_images: int | None = None
    lr_schedule: str = "constant"
    ema_decay: float = 0.0

    def __post_init__(self) -> None:
        if self.balance not in BALANCE_MODES:
            raise ValueError(f"balance must be one of {BALANCE_MODES}, got {self.balance!r}")
        if self.best_criterion not in CRITERIA:
            raise ValueError(f"best_criterion must be one of {tuple(CRITERIA)}, got {self.best_criterion!r}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("epochs and batch_size must be at least 1")
        if self.lr <= 0 or self.checkpoint_every_steps < 0 or self.val_bins < 2:
            raise ValueError("lr must be positive, checkpoint_every_steps non-negative and val_bins at least 2")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        if self.epoch_images is not None and self.epoch_images < 1:
            raise ValueError(f"epoch_images must be at least 1 (or None: a pass per epoch), got {self.epoch_images}")


def training_stages(method: TrainableMethod) -> tuple[TrainingStage, ...]:
    """The method's stages (``TrainableMethod.training_stages()``, by default one stage training
    everything), checked for unique names."""
    stages = tuple(method.training_stages())
    names = [s.name for s in stages]
    if len(set(names)) != len(names):
        raise ValueError(f"{method.name}: stage names must be unique, got {names}")
    return stages or (TrainingStage(),)


def training_augmentation(method: TrainableMethod) -> Augmentation | None:
    """The method's training-time augmentation (``TrainableMethod.training_augmentation()``), or ``None``."""
    return method.training_augmentation()


@dataclass
class TrainResult:
    """What a finished training run (one stage, or all of them) leaves behind."""

    final_checkpoint: Path
    best_checkpoint: Path
    history: list[dict[str, Any]] = field(default_factory=list)
    skipped_samples: list[str] = field(default_factory=list)
    stages: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------------------------
# RNG state and small helpers
# --------------------------------------------------------------------------------------------
def _rng_state() -> dict[str, Any]:
    """Torch's generator states: the only global randomness a training step may use (dropout;
    data order and augmentation are drawn from their own seeded generators)."""
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _trainable_parameters(network: nn.Module, names: tuple[str, ...], stage: str) -> list[nn.Parameter]:
    if not names:
        return list(network.parameters())
    for name in names:
        try:
            network.get_submodule(name)
        except AttributeError:
            known = ", ".join(n for n, _ in network.named_children())
            raise ValueError(f"stage {stage!r} trains {name!r}, which the network lacks (children: {known})") from None
    chosen = [p for n, p in network.named_parameters() if any(n.startswith(f"{m}.") for m in names)]
    if not chosen:
        raise ValueError(f"stage {stage!r}: submodules {names} hold no parameters")
    return chosen


def load_network_weights(method: TrainableMethod, path: Path) -> dict[str, Any]:
    """Load a project-format checkpoint (``wsl_bench.checkpoint/1``) into ``method.network()``
    through :func:`wsl_bench.weights.load_weights` (the one loader and compatibility rule).

    Returns:
        the checkpoint's ``meta`` record (``metrics``, ``epochs_completed`` ...).

    Raises:
        wsl_bench.weights.CheckpointError (a ValueError): not such a checkpoint, or one of another
            method family or configuration; the message names the file.
    """
    identity = method.training_identity()
    loaded = weights_io.load_weights(method.network(), path, identity["method"], identity["config"], own_only=True)
    assert loaded.metadata is not None  # own_only
    return loaded.metadata.meta_record()


def describe_differences(stored: Any, current: Any, prefix: str = "") -> str:
    """``"key: stored value in the checkpoint, current value here"`` for every differing (nested) key."""
    if isinstance(stored, dict) and isinstance(current, dict):
        parts = [
            describe_differences(stored.get(k, "<absent>"), current.get(k, "<absent>"), f"{prefix}{k}.")
            for k in dict.fromkeys([*stored, *current])
            if stored.get(k, "<absent>") != current.get(k, "<absent>")
        ]
        return "; ".join(parts)
    return f"{prefix.rstrip('.') or 'value'}: {stored!r} in the checkpoint, {current!r} here"


class _LossModule(nn.Module):
    """``(images, labels, pos_weight) → method.training_loss(...)`` as a module, so that the loss runs
    through DistributedDataParallel's forward (which its gradient synchronisation needs)."""

    def __init__(self, method: TrainableMethod, network: nn.Module, loss_kwargs: dict[str, Any]) -> None:
        super().__init__()
        self.network = network
        self._method = method  # not a module: only the network's parameters belong to this one
        self._loss_kwargs = loss_kwargs

    def forward(self, images: torch.Tensor, labels: torch.Tensor, pos_weight: torch.Tensor | None,
                masks: torch.Tensor | None = None) -> torch.Tensor:
        extra = {} if masks is None else {"masks": masks}  # only a method with a mask_split gets masks
        return self._method.training_loss(images, labels, pos_weight=pos_weight, **self._loss_kwargs, **extra)


# --------------------------------------------------------------------------------------------
# The trainer
# --------------------------------------------------------------------------------------------
def cpu_has_native_bf16() -> bool:
    """Whether oneDNN computes bfloat16 natively on this CPU (AVX512-BF16 or AMX)."""
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return bool(check is not None and check())


def uses_amp(config: TrainConfig, device: torch.device, dtype: torch.dtype) -> bool:
    """Whether training runs under bfloat16 autocast: on CUDA with ``amp``; on a CPU with ``cpu_amp``
    where oneDNN computes bfloat16 natively; never for float64 networks (exactness tests)."""
    if dtype != torch.float32:
        return False
    if device.type == "cuda":
        return config.amp
    return device.type == "cpu" and config.cpu_amp and cpu_has_native_bf16()


class Trainer:
    """Trains one :class:`TrainableMethod` (one stage of its recipe) on a dataset split.

    Args:
        method: the method; its network is trained in place.
        config: hyper-parameters.
        out_dir: where checkpoints (``last.pt``, ``best.pt``, ``final.pt``), ``log.csv`` and
            ``curves.png`` go.
        progress: show tqdm progress bars (rank 0 only).
        stage: the stage to train (default: everything, the method's plain loss).
        init_from: a project checkpoint (the previous stage's) loaded before a fresh start; its
            checksum is recorded, and resuming refuses a ``last.pt`` started from another file.
        context: the distributed context (default: one process).
        callbacks: more :class:`~wsl_bench.training.policies.EpochCallback` objects, called after the
            trainer's own (:attr:`best_checkpoint`, then :attr:`training_log`) at the end of every epoch
            on rank 0; those with ``state_dict``/``load_state_dict`` are saved in ``last.pt`` and
            restored on resume.
    """

    def __init__(
        self,
        method: TrainableMethod,
        config: TrainConfig,
        out_dir: str | Path,
        progress: bool = True,
        stage: TrainingStage | None = None,
        init_from: str | Path | None = None,
        context: DistContext = SINGLE_PROCESS,
        callbacks: Sequence[EpochCallback] = (),
    ) -> None:
        self.method = method
        self.config = config
        self.out_dir = Path(out_dir)
        self.context = context
        self.progress = progress and context.is_main
        self.stage = stage or TrainingStage()
        self.init_from = Path(init_from) if init_from is not None else None
        self.network = method.network()
        self.epochs = self.stage.epochs(config)
        self.criterion = self.stage.criterion or config.best_criterion
        self.loss_kwargs: dict[str, Any] = {} if self.stage.loss is None else {"stage": self.stage.loss}
        self.parameters = _trainable_parameters(self.network, self.stage.trainable, self.stage.name)
        # Images and labels reach the loss in the network's floating dtype (float32 normally; float64
        # networks are trained exactly, e.g. for numerical equivalence checks).
        self.input_dtype = next((p.dtype for p in self.network.parameters() if p.is_floating_point()), torch.float32)
        self.uses_amp = uses_amp(self.config, method.device, self.input_dtype)
        if self.uses_amp and method.device.type == "cpu":
            # oneDNN's bfloat16 convolutions are fastest in channels-last layout (their outputs follow it)
            self.network.to(memory_format=torch.channels_last)
        self.optimizer = torch.optim.Adam(
            self.parameters, lr=config.lr * self.stage.lr_factor, weight_decay=config.weight_decay
        )
        self.epoch = 0
        self.step_in_epoch = 0
        self.global_step = 0
        self.epoch_losses: list[float] = []
        self.epoch_seconds = 0.0
        self.history: list[dict[str, Any]] = []
        self.init_sha256: str | None = None
        self.train_set: MammogramDataset | None = None  # the training split of the current fit()
        self._skip_warned = False
        self.average = WeightAverage(self.network, config.ema_decay) if config.ema_decay else None
        self.best_checkpoint = BestCheckpoint(self.criterion, self.out_dir / "best.pt")
        self.training_log = TrainingLog(self.out_dir, title=f"training {method.name}, stage {self.stage.name}")
        self.callbacks: list[EpochCallback] = [self.best_checkpoint, self.training_log, *callbacks]

    @property
    def precision(self) -> str:
        """The training arithmetic: ``"bfloat16 autocast"`` (:func:`uses_amp`), else the network's
        dtype (``"float32"``)."""
        return "bfloat16 autocast" if self.uses_amp else str(self.input_dtype).removeprefix("torch.")

    @property
    def best_value(self) -> float | None:
        """The best criterion value so far, times its sign (see :class:`BestCheckpoint`)."""
        return self.best_checkpoint.best_value

    # -- checkpointing ---------------------------------------------------------------------------
    @property
    def last_path(self) -> Path:
        return self.out_dir / "last.pt"

    def _state(self) -> dict[str, Any]:
        return {
            "format": TRAINER_STATE_FORMAT,
            "identity": self.method.training_identity(),
            "train_config": asdict(self.config),
            "stage": self.stage.to_dict(),
            "init_sha256": self.init_sha256,
            "network": self.network.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "global_step": self.global_step,
            "epoch_losses": list(self.epoch_losses),
            "epoch_seconds": self.epoch_seconds,
            **{k: v for cb in self.callbacks if isinstance(cb, StatefulCallback) for k, v in cb.state_dict().items()},
            "history": self.history,
            "rng": _rng_state(),
            **({"weight_average": self.average.state_dict()} if self.average is not None else {}),
        }

    def save_state(self) -> None:
        """Write ``last.pt`` atomically (rank 0 only)."""
        if self.context.is_main:
            atomic_torch_save(self._state(), self.last_path)

    def load_state(self, path: Path) -> None:
        """Restore everything from a trainer checkpoint, refusing one of another method, configuration
        or stage, or one whose stage started from another checkpoint."""
        state = load_checkpoint_file(path, map_location=self.method.device)
        if not isinstance(state, dict) or state.get("format") != TRAINER_STATE_FORMAT:
            found = state.get("format") if isinstance(state, dict) else type(state).__name__
            raise ValueError(f"{path}: not a wsl-bench trainer checkpoint (format {found!r})")
        identity = self.method.training_identity()
        if state["identity"] != identity:
            raise ValueError(
                f"{path}: checkpoint of another method or configuration cannot be resumed here "
                f"({describe_differences(state['identity'], identity)}); use a new output folder or the same settings"
            )
        if state["train_config"] != asdict(self.config):
            raise ValueError(
                f"{path}: checkpoint was trained with another training configuration "
                f"({describe_differences(state['train_config'], asdict(self.config))}); "
                "use a new output folder or the same training configuration"
            )
        if state["stage"] != self.stage.to_dict():
            raise ValueError(
                f"{path}: checkpoint of another training stage "
                f"({describe_differences(state['stage'], self.stage.to_dict())})"
            )
        if state["init_sha256"] != self.init_sha256:
            raise ValueError(
                f"{path}: stage {self.stage.name!r} started from another checkpoint than {self.init_from} "
                "(the previous stage was trained again); train this stage afresh (without --resume)"
            )
        self.network.load_state_dict(state["network"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.epoch, self.step_in_epoch = state["epoch"], state["step_in_epoch"]
        self.global_step = state["global_step"]
        for callback in self.callbacks:
            if isinstance(callback, StatefulCallback):
                callback.load_state_dict(state)
        self.epoch_losses, self.epoch_seconds = list(state["epoch_losses"]), float(state["epoch_seconds"])
        self.history = list(state["history"])
        if self.average is not None:
            self.average.load_state_dict(state["weight_average"])
        _set_rng_state(state["rng"])

    # -- training --------------------------------------------------------------------------------
    def fit(
        self, train_set: MammogramDataset, val_set: MammogramDataset | None = None, resume: bool = False
    ) -> TrainResult:
        """Train this stage for its epochs (continuing from ``last.pt`` when ``resume`` and it exists)."""
        context, device = self.context, self.method.device
        self.train_set = train_set
        mask_split = getattr(self.method, "mask_split", None)
        if mask_split is not None and val_set is not None:
            raise ValueError(f"{self.method.name} trains with the masks of the {mask_split!r} split and is not "
                             "validated while it trains (validation reads the validation masks): pass no "
                             "validation split")
        train = (LabelledImages(train_set, self.config.max_cached_images) if mask_split is None
                 else MaskedImages(train_set, self.config.max_cached_images, mask_split))
        val = ValidationImages(val_set) if val_set is not None else None
        if context.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        self.init_sha256 = file_sha256(self.init_from) if self.init_from is not None else None
        if resume and self.last_path.exists():
            self.load_state(self.last_path)
            log.info("resuming %s stage %s at epoch %d step %d", self.method.name, self.stage.name, self.epoch,
                     self.step_in_epoch)
        else:
            if self.init_from is not None:
                load_network_weights(self.method, self.init_from)
            if self.average is not None:  # the average starts from the stage's starting weights
                self.average = WeightAverage(self.network, self.config.ema_decay)
            self._validate_start(val)
            torch.manual_seed(self.config.seed)

        already_done = self.epoch >= self.epochs
        labels = train.label_matrix() if self.config.balance != "none" and not already_done else None
        pos_weight = None
        if self.config.balance == "pos_weight" and not already_done:
            pos_weight = train.positive_weights().to(device)
        augment = training_augmentation(self.method)

        for p in self.network.parameters():
            p.requires_grad_(False)
        for p in self.parameters:
            p.requires_grad_(True)
        try:
            synchronise_batchnorm(self.network, device, context)
            loss_module: nn.Module = _LossModule(self.method, self.network, self.loss_kwargs)
            if context.enabled:
                from torch.nn.parallel import DistributedDataParallel

                ids = [device.index if device.index is not None else torch.cuda.current_device()] if (
                    device.type == "cuda") else None
                loss_module = DistributedDataParallel(loss_module, device_ids=ids)
            self._loop(train, val, labels, pos_weight, augment, loss_module)
        finally:
            for p in self.network.parameters():
                p.requires_grad_(True)
            if self.average is not None:  # what training hands on is the weight average
                self.network.load_state_dict(self.average.state_dict())
            # Hand the network back in the layout a loaded checkpoint has: bfloat16 training on a CPU
            # switched it to channels-last, whose convolutions round differently in the last bit, so
            # a network evaluated right after training would not score as the cached one does.
            self.network.to(memory_format=torch.contiguous_format)

        final_path, best_path = self.out_dir / "final.pt", self.out_dir / "best.pt"
        if context.is_main and not (already_done and final_path.exists()):
            atomic_torch_save(self.method_checkpoint(train_set, self.history[-1] if self.history else {}), final_path)
        context.barrier()  # every rank may read final.pt from here on
        if not best_path.exists():
            best_path = final_path
        self.network.eval()
        return TrainResult(final_path, best_path, self.history, sorted(train.failed), [self.stage.name])

    def _validate_start(self, val: ValidationImages | None) -> None:
        """The validation row of the network the stage starts from, as epoch 0 of its history (rank 0):
        the reference its selected checkpoint is compared with (``learning_check.localisation_regressions``)."""
        if val is None or not self.context.is_main:
            return
        self.network.eval()
        row = {"stage": self.stage.name, "epoch": 0, "train_loss": float("nan"),
               "lr": self.optimizer.param_groups[0]["lr"], "epoch_seconds": 0.0}
        row.update(self.validate(val, None))
        self.history.append(row)

    def start_row(self) -> dict[str, Any] | None:
        """The epoch-0 row of this stage's history (:meth:`_validate_start`), if validated."""
        return next((row for row in self.history if row.get("epoch") == 0), None)

    def _epoch_order(self, train: LabelledImages, labels: np.ndarray | None) -> list[int]:
        if self.config.balance == "sampler":
            return balanced_order(labels, self.config.seed, self.epoch, self.config.epoch_images)
        return epoch_order(len(train.ids), self.config.seed, self.epoch, self.config.epoch_images)

    def _set_train_mode(self) -> None:
        """Train mode for what this stage trains; eval mode (fixed BatchNorm statistics) elsewhere."""
        if not self.stage.trainable:
            self.network.train()
            return
        self.network.eval()
        for name in self.stage.trainable:
            self.network.get_submodule(name).train()

    def _loop(
        self,
        train: LabelledImages,
        val: ValidationImages | None,
        labels: np.ndarray | None,
        pos_weight: torch.Tensor | None,
        augment: Augmentation | None,
        loss_module: nn.Module,
    ) -> None:
        batch_size = self.config.batch_size
        epoch_length = self.config.epoch_images or len(train.ids)
        total_steps = self.epochs * math.ceil(epoch_length / batch_size)  # the stage's, for the schedule
        peak = self.config.lr * self.stage.lr_factor
        while self.epoch < self.epochs:
            order = self._epoch_order(train, labels)
            steps = math.ceil(len(order) / batch_size)
            bar = tqdm(
                total=steps,
                initial=self.step_in_epoch,
                desc=f"train {self.method.name} {self.stage.name} epoch {self.epoch + 1}/{self.epochs}",
                disable=not self.progress,
                leave=False,
            )
            self._set_train_mode()
            while self.step_in_epoch < steps:
                started = time.perf_counter()
                for group in self.optimizer.param_groups:
                    group["lr"] = scheduled_lr(self.config.lr_schedule, peak, self.global_step, total_steps)
                positions = list(range(self.step_in_epoch * batch_size, min((self.step_in_epoch + 1) * batch_size,
                                                                             len(order))))
                loss = self._train_step(train, order, positions, pos_weight, augment, loss_module)
                if loss is not None:
                    self.epoch_losses.append(loss)
                    bar.set_postfix(loss=f"{loss:.4f}")
                self.step_in_epoch += 1
                self.global_step += 1
                self.epoch_seconds += time.perf_counter() - started
                bar.update(1)
                every = self.config.checkpoint_every_steps
                if every and self.global_step % every == 0 and self.step_in_epoch < steps:
                    self.save_state()
            bar.close()
            self._end_epoch(train, val, pos_weight)

    def _train_step(
        self,
        train: LabelledImages,
        order: list[int],
        positions: list[int],
        pos_weight: torch.Tensor | None,
        augment: Augmentation | None,
        loss_module: nn.Module,
    ) -> float | None:
        """One optimisation step on the global batch ``order[positions]``; returns its mean loss
        (``None`` when the step is skipped because some rank has no loadable image)."""
        context, device = self.context, self.method.device
        mine = np.array_split(np.asarray(positions), context.world_size)[context.rank] if context.enabled else positions
        batch = train.batch([(order[p], int(p)) for p in mine], self.config.seed, self.epoch, augment)
        n_local = 0 if batch is None else len(batch[1])
        counts = torch.zeros(context.world_size, dtype=torch.float64, device=context.collective_device(device))
        counts[context.rank] = n_local
        context.all_reduce_sum(counts)
        if float(counts.min()) == 0:
            if not self._skip_warned:
                log.warning("%s: a step whose images do not reach every rank (or none loads) is skipped "
                            "(epoch %d step %d, images per rank %s)", self.method.name, self.epoch + 1,
                            self.step_in_epoch + 1, counts.tolist())
                self._skip_warned = True
            return None
        total = float(counts.sum())
        images, target, *masks = (t.to(device=device, dtype=self.input_dtype) for t in batch)  # masks: MaskedImages
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.uses_amp):
            loss = loss_module(images, target, pos_weight, *masks)
        summed = torch.stack([loss.detach().double() * n_local]).to(counts)
        mean_loss = float(context.all_reduce_sum(summed)[0]) / total
        if not math.isfinite(mean_loss):
            raise FloatingPointError(
                f"{self.method.name}: loss became {mean_loss} in stage {self.stage.name!r} at epoch {self.epoch + 1} "
                f"step {self.step_in_epoch + 1}; lower the learning rate"
            )
        self.optimizer.zero_grad(set_to_none=True)
        # DistributedDataParallel averages gradients over ranks: weighting each rank's mean by its share
        # of the global batch (times the world size) makes that average the gradient of the global mean.
        (loss * (n_local * context.world_size / total)).backward()
        self.optimizer.step()
        if self.average is not None:
            self.average.update()
        return mean_loss

    def _end_epoch(self, train: LabelledImages, val: ValidationImages | None, pos_weight: torch.Tensor | None) -> None:
        self.network.eval()
        row: dict[str, Any] = {
            "stage": self.stage.name,
            "epoch": self.epoch + 1,
            "train_loss": float(np.mean(self.epoch_losses)) if self.epoch_losses else float("nan"),
            "lr": self.optimizer.param_groups[0]["lr"],
            "epoch_seconds": round(self.epoch_seconds, 3),
        }
        with self._kept_weights():  # the weight average, when there is one, is what is validated and kept
            if val is not None and self.context.is_main:
                row.update(self.validate(val, pos_weight))
            self.history.append(row)
            self.epoch += 1
            self.step_in_epoch = 0
            self.epoch_losses, self.epoch_seconds = [], 0.0
            if self.context.is_main:
                for callback in self.callbacks:  # best.pt, log.csv and curves.png, then anything added
                    callback.on_epoch_end(self, row)
        if self.context.is_main:
            self.save_state()

    def _kept_weights(self) -> AbstractContextManager[None]:
        """A context in which the network holds the weights a checkpoint keeps: the weight average
        (``TrainConfig.ema_decay``) or the trained weights themselves."""
        return self.average.swapped_in() if self.average is not None else nullcontext()

    @torch.no_grad()
    def validate(self, val: ValidationImages, pos_weight: torch.Tensor | None) -> dict[str, float]:
        """Validation loss, AUC per class (image-level labels) and Dice/PxAP per class (masks).

        Dice (at τ = 0.5, mean over the images holding a lesion of the class) and PxAP (pixel
        histograms pooled over the same images; also ``val_pxap_<map>_<class>`` of each of the method's
        :meth:`~wsl_bench.saliency.TrainableMethod.training_maps`, see :mod:`wsl_bench.training.validation`)
        are computed exactly as the harness scores a run:
        :func:`wsl_bench.evaluation.scoring.score_image` on the method's ``predict`` output, its
        histograms pooled by :class:`wsl_bench.evaluation.metrics.PxAPMetric`; AUC by
        :class:`~wsl_bench.evaluation.metrics.AUCMetric`. Dice is the mean of ``score_image``'s values
        (:class:`~wsl_bench.evaluation.metrics.DiceMetric` thresholds raw maps, not the harness's histograms).
        """
        device = self.method.device
        losses, sizes = [], []
        aucs = {c: AUCMetric() for c in CLASSES}
        pxaps = {c: PxAPMetric(self.config.val_bins) for c in CLASSES}
        training_maps = TrainingMapScores(self.config.val_bins)
        dice: dict[str, list[float]] = {c: [] for c in CLASSES}
        for start in range(0, len(val.ids), self.config.batch_size):
            samples = val.samples(val.ids[start : start + self.config.batch_size])
            if not samples:
                continue
            images = torch.from_numpy(np.stack([s.image for s in samples])).to(device=device, dtype=self.input_dtype)
            target = torch.from_numpy(np.stack([s.label_vector() for s in samples])).to(device, self.input_dtype)
            loss = self.method.training_loss(images, target, pos_weight=pos_weight, **self.loss_kwargs)
            losses.append(float(loss))
            sizes.append(len(samples))
            output = self.method.predict(images).detach_to("cpu")
            batch_scores, batch_labels = output.scores.float(), target.cpu()
            for c, name in enumerate(CLASSES):
                aucs[name].update(batch_scores[:, c], batch_labels[:, c])
            for i, sample in enumerate(samples):
                scored = score_image(output.maps[i], output.map_range, sample, self.config.val_bins).fields
                for name in CLASSES:
                    if scored["has_lesion"][name]:  # both metrics score the images holding a lesion of the class
                        dice[name].append(scored["dice"][name])
                        pxaps[name].update_histograms(*(decode_counts(scored["hist"][name][k]) for k in ("pos", "neg")))
            training_maps.update(self.method.training_maps(output), samples)
        if not sizes:
            return {}
        row: dict[str, float] = {"val_loss": float(np.average(losses, weights=sizes))}
        for name in CLASSES:
            row[f"val_auc_{name}"] = aucs[name].compute()
            # what chance scores on this split, kept beside the metrics (training.learning_check)
            row[f"val_auc_p_{name}"] = auc_chance_p_value(row[f"val_auc_{name}"], *aucs[name].counts())
            row[f"val_pxap_chance_{name}"] = pxaps[name].chance()
        for name in CLASSES:
            row[f"val_dice_{name}"] = float(np.mean(dice[name])) if dice[name] else float("nan")
            row[f"val_pxap_{name}"] = pxaps[name].compute()  # NaN without a lesion pixel
        row.update(training_maps.row())
        for metric in ("auc", "dice", "pxap"):
            values = [row[f"val_{metric}_{name}"] for name in CLASSES]
            finite = [v for v in values if np.isfinite(v)]
            row[f"val_mean_{metric}"] = float(np.mean(finite)) if finite else float("nan")
        return row

    def method_checkpoint(self, train_set: MammogramDataset, metrics: dict[str, Any]) -> dict[str, Any]:
        """The project's checkpoint format: weights plus the record of how they were made."""
        identity = self.method.training_identity()
        return {
            "format": METHOD_CHECKPOINT_FORMAT,
            "method": identity["method"],
            "config": identity["config"],
            "state_dict": self.network.state_dict(),
            "meta": {
                "training_data": train_set.describe(),
                "train_config": asdict(self.config),
                "stage": self.stage.to_dict(),
                "seed": self.config.seed,
                # the arithmetic actually used (it depends on the CPU: ``cpu_amp`` needs native bfloat16)
                "precision": self.precision,
                "metrics": dict(metrics),
                "start_metrics": dict(self.start_row() or {}),
                "epochs_completed": self.epoch,
            },
        }
