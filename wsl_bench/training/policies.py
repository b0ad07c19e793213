"""What the trainer does at the end of an epoch, apart from the loop: small objects it calls.

The :class:`~wsl_bench.training.trainer.Trainer` runs the loop (data order, steps, DDP, resume,
validation) and, on rank 0 after each epoch, calls every callback's ``on_epoch_end(trainer, row)``
in order, then writes ``last.pt``. A callback that keeps state across epochs (as
:class:`BestCheckpoint` does) also has ``state_dict()`` and ``load_state_dict(state)``: its entries
are stored in the trainer checkpoint beside the trainer's own, so a resumed run continues it.
Lightning's callbacks are the model; this is the smallest part of that idea the trainer needs.

* :class:`BestCheckpoint` — which validation column decides ``best.pt`` (:data:`CRITERIA`) and when
  to write it.
* :class:`TrainingLog` — ``log.csv`` (one row per epoch) and ``curves.png``, both written atomically.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from wsl_bench.atomic_io import atomic_write, save_figure_atomic
from wsl_bench.saliency import CLASSES, CRITERION_NAMES
from wsl_bench.weights import atomic_torch_save

log = logging.getLogger(__name__)

CRITERIA: dict[str, tuple[str, int]] = {
    "mean_auc": ("val_mean_auc", 1),
    "loss": ("val_loss", -1),
    "mean_dice": ("val_mean_dice", 1),
    "mean_pxap": ("val_mean_pxap", 1),
}
"""Best-checkpoint criteria: the validation column and its sign (+1: larger is better)."""
assert tuple(CRITERIA) == CRITERION_NAMES  # the contract (wsl_bench.saliency) names the same ones


class TrainerView(Protocol):
    """What a callback reads of the :class:`~wsl_bench.training.trainer.Trainer` that calls it.

    Declared here rather than imported: the trainer imports this module, and an import back, even one
    for type checking alone, would be a cycle (``tests/test_architecture.py``).
    """

    out_dir: Path
    epoch: int
    history: list[dict[str, Any]]
    train_set: Any  # the training split of the current fit() (a MammogramDataset)

    @property
    def last_path(self) -> Path: ...

    def method_checkpoint(self, train_set: Any, metrics: dict[str, Any]) -> dict[str, Any]: ...


@runtime_checkable
class EpochCallback(Protocol):
    """Called by the trainer (rank 0 only) after each epoch, with that epoch's ``log.csv`` row.

    When it runs, ``trainer.history`` already ends with ``row`` and ``trainer.epoch`` counts the
    epoch as completed; ``trainer.last_path`` is written after every callback has run.
    """

    def on_epoch_end(self, trainer: TrainerView, row: dict[str, Any]) -> None: ...


@runtime_checkable
class StatefulCallback(EpochCallback, Protocol):
    """A callback whose state is saved in ``last.pt`` and restored on resume.

    ``state_dict()`` returns entries stored beside the trainer's own (their keys must not clash
    with them); ``load_state_dict`` receives the whole trainer checkpoint.
    """

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class BestCheckpoint:
    """Writes ``best.pt`` whenever an epoch improves on a validation criterion.

    Args:
        criterion: a key of :data:`CRITERIA` (its validation column and sign).
        path: where the best checkpoint goes (the trainer's ``out_dir / "best.pt"``).

    An epoch whose column is missing or not finite (no validation, NaN) is never best. Ties keep the
    earlier epoch. State: ``best_value``, the best criterion value so far times its sign.
    """

    def __init__(self, criterion: str, path: str | Path) -> None:
        if criterion not in CRITERIA:
            raise ValueError(f"criterion must be one of {tuple(CRITERIA)}, got {criterion!r}")
        self.criterion = criterion
        self.path = Path(path)
        self.best_value: float | None = None

    def value(self, row: dict[str, Any]) -> float | None:
        """The row's criterion value times its sign (larger is better), ``None`` when absent or not finite."""
        key, sign = CRITERIA[self.criterion]
        value = row.get(key)
        if value is None or not np.isfinite(value):
            return None
        return sign * float(value)

    def is_best(self, row: dict[str, Any]) -> bool:
        """Whether ``row`` is better than every epoch seen so far."""
        value = self.value(row)
        return value is not None and (self.best_value is None or value > self.best_value)

    def on_epoch_end(self, trainer: TrainerView, row: dict[str, Any]) -> None:
        if self.is_best(row):
            self.best_value = self.value(row)
            atomic_torch_save(trainer.method_checkpoint(trainer.train_set, row), self.path)

    def state_dict(self) -> dict[str, Any]:
        return {"best_value": self.best_value}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best_value = state["best_value"]


class TrainingLog:
    """``log.csv`` with one row per epoch (rewritten whole: it is tiny) and ``curves.png``.

    Args:
        out_dir: the folder of both files.
        title: the figure's title.

    Both files are written atomically; a figure that cannot be drawn is logged as a warning and never
    stops training.
    """

    def __init__(self, out_dir: str | Path, title: str = "training") -> None:
        self.out_dir = Path(out_dir)
        self.title = title

    def on_epoch_end(self, trainer: TrainerView, row: dict[str, Any]) -> None:
        self.write(trainer.history)

    def write(self, history: list[dict[str, Any]]) -> None:
        """Write ``log.csv`` and ``curves.png`` for ``history`` (nothing when it is empty)."""
        if not history:
            return
        keys = list(dict.fromkeys(k for row in history for k in row))
        with atomic_write(self.out_dir / "log.csv", "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=keys)
            writer.writeheader()
            writer.writerows(history)
        try:
            plot_curves(history, self.out_dir / "curves.png", title=self.title)
        except Exception as exc:  # a figure must never stop training
            log.warning("could not draw the training curves: %s", exc)


def training_map_names(history: list[dict[str, Any]]) -> list[str]:
    """The names of the training maps (``val_pxap_<map>_<class>`` columns) in ``history``, in order."""
    names: dict[str, None] = {}
    for key in (k for row in history for k in row):
        for cls in CLASSES:
            suffix = f"_{cls}"
            if key.startswith("val_pxap_") and key.endswith(suffix) and not key.startswith("val_pxap_chance_"):
                name = key[len("val_pxap_"):-len(suffix)]
                if name:
                    names[name] = None
    return list(names)


def plot_curves(history: list[dict[str, Any]], path: str | Path, title: str = "training") -> None:
    """Loss, validation AUC and validation Dice/PxAP per epoch, with the PxAP of every training map
    (``val_pxap_<map>_<class>``) and the epoch-0 row (the stage's start) where present (one PNG, three
    panels)."""
    from matplotlib.ticker import MaxNLocator

    from wsl_bench.plotting import CLASS_COLOURS, plt  # lazily: pyplot is slow to import

    epochs = [row["epoch"] for row in history]

    def series(key: str) -> list[float]:
        return [float(row.get(key, np.nan)) for row in history]

    fig, (left, middle, right) = plt.subplots(1, 3, figsize=(13, 3.6))
    for key, style in (("train_loss", "-o"), ("val_loss", "--s")):
        if np.isfinite(series(key)).any():
            left.plot(epochs, series(key), style, label=key.replace("_", " "))
    left.set(xlabel="epoch", ylabel="loss", title="loss")
    for cls in CLASSES:
        if np.isfinite(series(f"val_auc_{cls}")).any():
            middle.plot(epochs, series(f"val_auc_{cls}"), "-o", color=CLASS_COLOURS[cls], label=f"AUC {cls}")
        for metric, style in (("dice", "-o"), ("pxap", "--s")):
            if np.isfinite(series(f"val_{metric}_{cls}")).any():
                right.plot(epochs, series(f"val_{metric}_{cls}"), style, color=CLASS_COLOURS[cls],
                           label=f"{'Dice' if metric == 'dice' else 'PxAP'} {cls}")
        for name, style in zip(training_map_names(history), ("-.^", ":v", "-.D", ":x"), strict=False):
            if np.isfinite(series(f"val_pxap_{name}_{cls}")).any():
                right.plot(epochs, series(f"val_pxap_{name}_{cls}"), style, color=CLASS_COLOURS[cls], alpha=0.8,
                           markersize=4, label=f"PxAP {name} map {cls}")
        if np.isfinite(series(f"val_pxap_chance_{cls}")).any():  # what a map unrelated to the lesions scores
            right.plot(epochs, series(f"val_pxap_chance_{cls}"), ":", color=CLASS_COLOURS[cls], alpha=0.7,
                       label=f"PxAP chance {cls}")
    middle.axhline(0.5, color="grey", linestyle=":", linewidth=1, label="chance")
    middle.set(xlabel="epoch", ylabel="AUC", ylim=(0, 1), title="validation AUC")
    right.set(xlabel="epoch", ylabel="Dice (τ = 0.5) / PxAP", title="validation localisation")
    right.set_ylim(bottom=0)
    for axis in (left, middle, right):
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.grid(alpha=0.3)
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    save_figure_atomic(fig, path, dpi=110)
    plt.close(fig)


__all__ = [
    "CRITERIA",
    "BestCheckpoint",
    "EpochCallback",
    "StatefulCallback",
    "TrainingLog",
    "plot_curves",
    "training_map_names",
]
