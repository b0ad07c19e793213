"""The weakly-supervised trainer shared by every trainable method.

Only image-level labels reach the loss: masks are never read during training (validation reads
them to pick the best checkpoint by a localisation metric when asked). One trainer for all methods
keeps the comparison fair: same optimiser, same data order, same budget rules.

Reproducibility and resumption: the data order of epoch ``e`` is a permutation drawn from
``(seed, e)``, and a checkpoint stores the model, optimiser, epoch, step-in-epoch and every RNG state.
A run killed at any moment and resumed from its last checkpoint therefore ends with the same
weights as an uninterrupted run (on CPU). Checkpoints are written atomically (temporary file, then
``os.replace``), so a kill during a write leaves the previous checkpoint intact.
"""

from __future__ import annotations

import csv
import logging
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .checkpoint_io import atomic_torch_save, load_checkpoint_file
from .data import DatasetError, MammogramDataset, SampleError
from .metrics import auc
from .saliency import CLASSES, TrainableMethod

log = logging.getLogger(__name__)

TRAINER_STATE_FORMAT = "wsl_bench.trainer_state/1"


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of one training run.

    Attributes:
        epochs: passes over the training split.
        batch_size: images per optimisation step.
        lr: Adam learning rate.
        weight_decay: Adam (L2) weight decay.
        seed: seeds initialisation-independent randomness: data order and augmentation.
        balance: ``"pos_weight"`` weights positives by negatives/positives per class in the BCE
            terms, ``"none"`` does nothing (use on balanced data such as the synthetic set).
        checkpoint_every_steps: also checkpoint every this many steps inside an epoch (0: only at
            epoch ends).
        best_criterion: validation quantity that selects the kept "best" checkpoint:
            ``"mean_auc"`` or ``"loss"`` (lowest).
        amp: mixed precision (bfloat16 autocast) on CUDA; ignored on CPU.
        max_cached_images: training images kept decoded in memory (0: reload every time).
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
    max_cached_images: int = 4000

    def __post_init__(self) -> None:
        if self.balance not in ("none", "pos_weight"):
            raise ValueError(f"balance must be 'none' or 'pos_weight', got {self.balance!r}")
        if self.best_criterion not in ("mean_auc", "loss"):
            raise ValueError(f"best_criterion must be 'mean_auc' or 'loss', got {self.best_criterion!r}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("epochs and batch_size must be at least 1")


@dataclass
class TrainResult:
    """What a finished training run leaves behind."""

    final_checkpoint: Path
    best_checkpoint: Path
    history: list[dict[str, float]] = field(default_factory=list)
    skipped_samples: list[str] = field(default_factory=list)


class LabelledImages:
    """Images and label vectors of a dataset split, loaded lazily and cached in memory.

    Samples that fail to load are reported once and left out (training never dies on one image).
    """

    def __init__(self, dataset: MammogramDataset, max_cached: int) -> None:
        self.dataset = dataset
        self.ids = dataset.ids()
        if not self.ids:
            raise DatasetError(f"dataset {dataset.name!r} split {dataset.split!r} is empty: nothing to train on")
        self.max_cached = max_cached
        self._cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.failed: dict[str, str] = {}

    def get(self, sample_id: str) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(1×H×W image, C labels)`` or ``None`` when the sample cannot be loaded."""
        if sample_id in self._cache:
            return self._cache[sample_id]
        if sample_id in self.failed:
            return None
        try:
            sample = self.dataset.get(sample_id)
        except SampleError as exc:
            log.warning("training skips %s: %s", sample_id, exc)
            self.failed[sample_id] = str(exc)
            return None
        labels = sample.label_vector()
        if np.isnan(labels).any():
            raise DatasetError(
                f"sample {sample_id} of dataset {self.dataset.name!r} has no image-level label for every class "
                f"({dict(zip(CLASSES, labels.tolist(), strict=True))}); weakly-supervised training needs labels"
            )
        item = (torch.from_numpy(sample.image), torch.from_numpy(labels))
        if len(self._cache) < self.max_cached:
            self._cache[sample_id] = item
        return item

    def batch(self, ids: list[str]) -> tuple[torch.Tensor, torch.Tensor] | None:
        items = [item for item in (self.get(i) for i in ids) if item is not None]
        if not items:
            return None
        return torch.stack([i for i, _ in items]), torch.stack([label for _, label in items])

    def positive_weights(self) -> torch.Tensor:
        """``C`` weights negatives/positives per class over the split (1 where a class has no positive)."""
        labels = torch.stack([item[1] for item in (self.get(i) for i in self.ids) if item is not None])
        positives = labels.sum(0)
        negatives = labels.shape[0] - positives
        return torch.where(positives > 0, negatives / positives.clamp_min(1), torch.ones_like(positives))


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The data order of one epoch: a permutation of ``range(n)`` fixed by ``(seed, epoch)``."""
    return np.random.default_rng([seed, epoch]).permutation(n).tolist()


def _rng_state() -> dict[str, Any]:
    """Torch's generator states: the only global randomness a training step may use (augmentation
    and dropout draw from it; data order comes from :func:`epoch_order`)."""
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Trainer:
    """Trains one :class:`TrainableMethod` on a dataset split.

    Args:
        method: the method; its network is trained in place.
        config: hyper-parameters.
        out_dir: where checkpoints (``last.pt``, ``best.pt``, ``final.pt``), ``log.csv`` and the
            curve figure go.
        progress: show tqdm progress bars.
    """

    def __init__(self, method: TrainableMethod, config: TrainConfig, out_dir: str | Path, progress: bool = True):
        self.method = method
        self.config = config
        self.out_dir = Path(out_dir)
        self.progress = progress
        self.network = method.network()
        self.optimizer = torch.optim.Adam(self.network.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        self.epoch = 0
        self.step_in_epoch = 0
        self.global_step = 0
        self.best_value: float | None = None
        self.history: list[dict[str, float]] = []

    # -- checkpointing ---------------------------------------------------------------------------
    @property
    def last_path(self) -> Path:
        return self.out_dir / "last.pt"

    def _state(self) -> dict[str, Any]:
        return {
            "format": TRAINER_STATE_FORMAT,
            "identity": self.method.training_identity(),
            "train_config": asdict(self.config),
            "network": self.network.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "global_step": self.global_step,
            "best_value": self.best_value,
            "history": self.history,
            "rng": _rng_state(),
        }

    def save_state(self) -> None:
        atomic_torch_save(self._state(), self.last_path)

    def load_state(self, path: Path) -> None:
        """Restore everything from a trainer checkpoint, refusing one of another method or configuration."""
        state = load_checkpoint_file(path)
        if state.get("format") != TRAINER_STATE_FORMAT:
            raise ValueError(f"{path}: not a wsl-bench trainer checkpoint (format {state.get('format')!r})")
        if state["identity"] != self.method.training_identity():
            raise ValueError(
                f"{path}: checkpoint of {state['identity']} cannot resume {self.method.training_identity()}"
            )
        if state["train_config"] != asdict(self.config):
            raise ValueError(
                f"{path}: checkpoint was trained with {state['train_config']}, not {asdict(self.config)}; "
                "use a new output folder or the same training configuration"
            )
        self.network.load_state_dict(state["network"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.epoch, self.step_in_epoch = state["epoch"], state["step_in_epoch"]
        self.global_step, self.best_value = state["global_step"], state["best_value"]
        self.history = list(state["history"])
        _set_rng_state(state["rng"])

    # -- training --------------------------------------------------------------------------------
    def fit(
        self, train_set: MammogramDataset, val_set: MammogramDataset | None = None, resume: bool = False
    ) -> TrainResult:
        """Train for ``config.epochs`` epochs (continuing from ``last.pt`` when ``resume``)."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if resume and self.last_path.exists():
            self.load_state(self.last_path)
            log.info("resuming %s at epoch %d step %d", self.method.name, self.epoch, self.step_in_epoch)
        elif not resume:
            torch.manual_seed(self.config.seed)
        device = self.method.device
        train = LabelledImages(train_set, self.config.max_cached_images)
        val = LabelledImages(val_set, self.config.max_cached_images) if val_set is not None else None
        pos_weight = train.positive_weights().to(device) if self.config.balance == "pos_weight" else None
        steps_per_epoch = math.ceil(len(train.ids) / self.config.batch_size)
        use_amp = self.config.amp and device.type == "cuda"

        while self.epoch < self.config.epochs:
            order = epoch_order(len(train.ids), self.config.seed, self.epoch)
            bar = tqdm(
                total=steps_per_epoch,
                initial=self.step_in_epoch,
                desc=f"train {self.method.name} epoch {self.epoch + 1}/{self.config.epochs}",
                disable=not self.progress,
                leave=False,
            )
            losses: list[float] = []
            self.network.train()
            while self.step_in_epoch < steps_per_epoch:
                start = self.step_in_epoch * self.config.batch_size
                batch = train.batch([train.ids[i] for i in order[start : start + self.config.batch_size]])
                if batch is not None:
                    images, labels = batch[0].to(device), batch[1].to(device)
                    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                        loss = self.method.training_loss(images, labels, pos_weight=pos_weight)
                    if not torch.isfinite(loss):
                        raise FloatingPointError(
                            f"{self.method.name}: loss became {loss.item()} at epoch {self.epoch + 1} "
                            f"step {self.step_in_epoch + 1}; lower the learning rate"
                        )
                    self.optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    self.optimizer.step()
                    losses.append(float(loss.detach()))
                    bar.set_postfix(loss=f"{losses[-1]:.4f}")
                self.step_in_epoch += 1
                self.global_step += 1
                bar.update(1)
                every = self.config.checkpoint_every_steps
                if every and self.global_step % every == 0 and self.step_in_epoch < steps_per_epoch:
                    self.save_state()
            bar.close()
            self.network.eval()
            row = {"epoch": self.epoch + 1, "train_loss": float(np.mean(losses)) if losses else float("nan")}
            if val is not None:
                row.update(self.validate(val, pos_weight))
            self.history.append(row)
            self.epoch += 1
            self.step_in_epoch = 0
            if self._is_best(row):
                self.best_value = self._criterion(row)
                atomic_torch_save(self.method_checkpoint(train_set, row), self.out_dir / "best.pt")
            self.save_state()
            self._write_log()

        final_path = self.out_dir / "final.pt"
        final_row = self.history[-1] if self.history else {}
        atomic_torch_save(self.method_checkpoint(train_set, final_row), final_path)
        best_path = self.out_dir / "best.pt"
        if not best_path.exists():
            best_path = final_path
        return TrainResult(final_path, best_path, self.history, sorted(train.failed))

    @torch.no_grad()
    def validate(self, val: LabelledImages, pos_weight: torch.Tensor | None) -> dict[str, float]:
        """Validation loss and AUC per class (image-level labels only)."""
        device = self.method.device
        scores, labels, losses = [], [], []
        for start in range(0, len(val.ids), self.config.batch_size):
            batch = val.batch(val.ids[start : start + self.config.batch_size])
            if batch is None:
                continue
            images, target = batch[0].to(device), batch[1].to(device)
            losses.append(float(self.method.training_loss(images, target, pos_weight=pos_weight)))
            scores.append(self.method.predict(images).scores.float().cpu())
            labels.append(target.cpu())
        if not scores:
            return {}
        score_matrix, label_matrix = torch.cat(scores).numpy(), torch.cat(labels).numpy()
        row = {"val_loss": float(np.mean(losses))}
        for c, name in enumerate(CLASSES):
            row[f"val_auc_{name}"] = auc(score_matrix[:, c], label_matrix[:, c])
        row["val_mean_auc"] = float(np.nanmean([row[f"val_auc_{name}"] for name in CLASSES]))
        return row

    def _criterion(self, row: dict[str, float]) -> float | None:
        key = "val_mean_auc" if self.config.best_criterion == "mean_auc" else "val_loss"
        value = row.get(key)
        if value is None or not np.isfinite(value):
            return None
        return value if key == "val_mean_auc" else -value  # larger is better internally

    def _is_best(self, row: dict[str, float]) -> bool:
        value = self._criterion(row)
        return value is not None and (self.best_value is None or value > self.best_value)

    def method_checkpoint(self, train_set: MammogramDataset, metrics: dict[str, float]) -> dict[str, Any]:
        """The project's checkpoint format: weights plus the record of how they were made."""
        identity = self.method.training_identity()
        return {
            "format": "wsl_bench.checkpoint/1",
            "method": identity["method"],
            "config": identity["config"],
            "state_dict": self.network.state_dict(),
            "meta": {
                "training_data": train_set.describe(),
                "train_config": asdict(self.config),
                "seed": self.config.seed,
                "metrics": dict(metrics),
                "epochs_completed": self.epoch,
            },
        }

    def _write_log(self) -> None:
        """``log.csv`` with one row per epoch (rewritten whole: it is tiny) and the curve figure."""
        if not self.history:
            return
        keys = list(dict.fromkeys(k for row in self.history for k in row))
        tmp = self.out_dir / "log.csv.tmp"
        with open(tmp, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=keys)
            writer.writeheader()
            writer.writerows(self.history)
        os.replace(tmp, self.out_dir / "log.csv")
        try:
            from .report_figures import plot_training_curves

            plot_training_curves(self.history, self.out_dir / "curves.png", title=f"training {self.method.name}")
        except Exception as exc:  # a figure must never stop training
            log.warning("could not draw the training curves: %s", exc)
