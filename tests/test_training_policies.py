"""The trainer's end-of-epoch policies (wsl_bench.training.policies): best checkpoint, log, callbacks."""

from __future__ import annotations

import csv
import math
from typing import Any

import pytest
import torch

import wsl_bench
from wsl_bench.training.policies import CRITERIA, BestCheckpoint, EpochCallback, StatefulCallback, TrainingLog
from wsl_bench.training.trainer import TrainConfig, Trainer

SMALL = (96, 64)


class _FakeTrainer:
    """What a policy reads from the trainer: its history, train split and checkpoint builder."""

    def __init__(self) -> None:
        self.history: list[dict[str, Any]] = []
        self.train_set = "train-split"
        self.saved: list[int] = []

    def method_checkpoint(self, train_set: Any, metrics: dict[str, Any]) -> dict[str, Any]:
        assert train_set == "train-split"
        self.saved.append(metrics["epoch"])
        return {"epoch": metrics["epoch"]}


@pytest.mark.parametrize(
    ("criterion", "values", "best_epochs"),
    [
        ("loss", [0.9, 0.7, 0.8, 0.7, 0.5], [1, 2, 5]),  # lower is better; a tie keeps the earlier epoch
        ("mean_auc", [0.6, math.nan, 0.7, 0.65, 0.9], [1, 3, 5]),  # NaN never best
        ("mean_pxap", [math.nan, 0.2, 0.1], [2]),
    ],
)
def test_best_checkpoint_picks_the_right_epochs_on_a_fake_history(tmp_path, criterion, values, best_epochs):
    key, _ = CRITERIA[criterion]
    policy, trainer = BestCheckpoint(criterion, tmp_path / "best.pt"), _FakeTrainer()
    for epoch, value in enumerate(values, start=1):
        row = {"epoch": epoch, key: value}
        trainer.history.append(row)
        policy.on_epoch_end(trainer, row)
    assert trainer.saved == best_epochs
    assert torch.load(tmp_path / "best.pt", weights_only=True) == {"epoch": best_epochs[-1]}
    # the state survives a round trip (resume), and the restored policy goes on from it
    restored = BestCheckpoint(criterion, tmp_path / "best.pt")
    restored.load_state_dict(policy.state_dict())
    assert restored.best_value == policy.best_value
    assert not restored.is_best({key: values[best_epochs[-1] - 1]})
    assert not restored.is_best({"epoch": 9})  # no validation column: never best


def test_best_checkpoint_refuses_an_unknown_criterion(tmp_path):
    with pytest.raises(ValueError, match="criterion must be one of"):
        BestCheckpoint("accuracy", tmp_path / "best.pt")


def test_training_log_writes_the_csv_and_the_curves(tmp_path):
    history = [{"epoch": 1, "train_loss": 0.5}, {"epoch": 2, "train_loss": 0.4, "val_loss": 0.6}]
    TrainingLog(tmp_path).write([])
    assert not (tmp_path / "log.csv").exists()
    TrainingLog(tmp_path, title="t").write(history)
    with open(tmp_path / "log.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["epoch"] for r in rows] == ["1", "2"] and rows[0]["val_loss"] == "" and rows[1]["val_loss"] == "0.6"
    assert (tmp_path / "curves.png").stat().st_size > 0


class _Recorder:
    """A stateful callback: sees every epoch, and its count is resumed from last.pt."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []
        self.calls = 0

    def on_epoch_end(self, trainer: Trainer, row: dict[str, Any]) -> None:
        assert trainer.history[-1] is row and trainer.epoch == row["epoch"]
        assert (trainer.out_dir / "log.csv").exists()  # the trainer's own policies ran first
        self.rows.append(row)
        self.calls += 1

    def state_dict(self) -> dict[str, Any]:
        return {"recorder_calls": self.calls}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.calls = state["recorder_calls"]


@pytest.mark.slow
def test_trainer_calls_its_policies_and_registered_callbacks_every_epoch(toy_dataset, tmp_path):
    train, val = (wsl_bench.create_dataset("toy", split=s, image_size=SMALL, n=4) for s in ("train", "val"))
    make = lambda epochs, recorder: Trainer(  # noqa: E731
        wsl_bench.create_method("cam", image_size=SMALL), TrainConfig(epochs=epochs, batch_size=4), tmp_path,
        progress=False, callbacks=[recorder])
    recorder = _Recorder()
    trainer = make(2, recorder)
    assert isinstance(recorder, StatefulCallback) and isinstance(trainer.best_checkpoint, EpochCallback)
    assert trainer.callbacks == [trainer.best_checkpoint, trainer.training_log, recorder]
    result = trainer.fit(train, val)
    # the stage's start is validated too (epoch 0, the reference of learning_check.localisation_regressions),
    # but no epoch-end policy runs for it: nothing was trained yet
    assert [row["epoch"] for row in recorder.rows] == [1, 2] and [result.history[0], *recorder.rows] == result.history
    assert result.history[0]["epoch"] == 0 and "val_pxap_benign" in result.history[0]
    assert trainer.best_value == trainer.best_checkpoint.best_value is not None
    state = torch.load(trainer.last_path, weights_only=False)
    assert state["recorder_calls"] == 2 and state["best_value"] == trainer.best_value

    # resuming restores every stateful callback from last.pt (but these epochs are done: nothing runs)
    resumed_recorder = _Recorder()
    resumed = make(2, resumed_recorder)
    resumed.fit(train, val, resume=True)
    assert resumed_recorder.calls == 2 and resumed_recorder.rows == []
    assert resumed.best_value == trainer.best_value
