"""The supervised reference points ``fsl`` and ``supervised``: which masks they train on, their budget,
their outputs, and the guard that keeps masks away from every other method."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pytest
import torch
from conftest import ToyDataset

import wsl_bench
from wsl_bench import pipeline
from wsl_bench.data import DatasetError
from wsl_bench.evaluation.harness import RunConfig
from wsl_bench.methods.segmentation import FewShotSegmentation, SupervisedSegmentation
from wsl_bench.presets import get_preset
from wsl_bench.registry import DATASETS
from wsl_bench.training.augment import VerticalFlip, sample_rng
from wsl_bench.training.data import UNANNOTATED, MaskedImages
from wsl_bench.training.trainer import TrainConfig, Trainer


class RecordingMasks(dict):
    """A sample's masks that note the split of the dataset they came from whenever one is read."""

    def __init__(self, masks: dict, split: str, reads: list[str]) -> None:
        super().__init__(masks)
        self._split, self._reads = split, reads

    def _read(self) -> None:
        self._reads.append(self._split)

    def __getitem__(self, key):
        self._read()
        return super().__getitem__(key)

    def get(self, key, default=None):
        self._read()
        return super().get(key, default)

    def __iter__(self):
        self._read()
        return super().__iter__()

    def keys(self):
        self._read()
        return super().keys()

    def values(self):
        self._read()
        return super().values()

    def items(self):
        self._read()
        return super().items()

    def copy(self):
        self._read()
        return dict(super().items())


class RecordingToy(ToyDataset):
    """The toy dataset, each sample's masks recording reads once the sample is loaded and validated."""

    name: ClassVar[str] = "recording-toy"
    reads: ClassVar[list[str]] = []

    def get(self, sample_id: str):
        sample = super().get(sample_id)  # Sample.validate looks at the masks' shapes: not a read by the method
        sample.masks = RecordingMasks(sample.masks, self.split, type(self).reads)
        return sample


@pytest.fixture
def recording_toy():
    DATASETS.register("recording-toy", RecordingToy)
    RecordingToy.reads = []
    yield RecordingToy
    DATASETS.unregister("recording-toy")


def _train(name: str) -> set[str]:
    """Train ``name`` as a tiny run of the recording dataset does; the splits whose masks it read."""
    RecordingToy.reads.clear()
    config = RunConfig(methods=(name,), dataset="recording-toy", preset="tiny")
    method = pipeline.create_run_method(name, config).method
    pipeline.ensure_trained(method, config, progress=False)
    return set(RecordingToy.reads)


def test_fsl_reads_only_validation_masks_and_supervised_only_training_masks(recording_toy):
    assert _train("fsl") == {"val"}
    assert _train("supervised") == {"train"}
    # the instrument sees a read where there is one: a weakly-supervised method reads the validation masks
    # (validation Dice/PxAP, checkpoint selection) and never a training mask
    assert _train("cam") == {"val"}


def test_budget_and_splits_of_the_training_jobs(toy_dataset):
    config = RunConfig(methods=("fsl", "supervised"), dataset="toy", preset="tiny")
    epochs, counts = get_preset("tiny").epochs, ToyDataset.counts
    fsl = pipeline.training_job(pipeline.create_run_method("fsl", config).method, config)
    supervised = pipeline.training_job(pipeline.create_run_method("supervised", config).method, config)
    assert (fsl.train_set.split, fsl.val_set) == ("val", None)
    assert (supervised.train_set.split, supervised.val_set) == ("train", None)
    # the image passes of one weakly-supervised training (the preset's epochs over the training split)
    assert supervised.train_config.epochs == epochs
    assert fsl.train_config.epochs == round(epochs * counts["train"] / counts["val"])
    assert fsl.key != supervised.key and fsl.key_data["val_data"] is None
    # an explicit --epochs wins over the budget
    assert pipeline.training_job(fsl.method, config, epochs=1).train_config.epochs == 1
    cam = pipeline.training_job(pipeline.create_run_method("cam", config).method, config)
    assert (cam.train_set.split, cam.val_set.split, cam.train_config.epochs) == ("train", "val", epochs)


def test_they_are_in_the_default_run():
    for preset in ("tiny", "cpu"):
        assert {"fsl", "supervised"} <= set(pipeline.default_methods(preset))


def test_trained_outputs_are_probability_maps_at_half_resolution_and_top_pixel_scores(toy_dataset):
    config = RunConfig(methods=("fsl",), dataset="toy", preset="tiny")
    method = pipeline.create_run_method("fsl", config).method
    before = {k: v.clone() for k, v in method.network().state_dict().items()}
    facts = pipeline.ensure_trained(method, config, progress=False)
    assert facts["path"].endswith("final.pt") and facts["learning_check"] == []
    after = method.network().state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    h, w = config.size()
    images = torch.from_numpy(np.stack([toy_dataset(split="test", image_size=(h, w)).get(i).image
                                        for i in ("toy-test-000", "toy-test-003", "toy-test-005")]))
    output = method.predict(images)
    assert output.maps.shape == (3, 2, h // 2, w // 2) and output.map_range == "probability"
    assert output.scores.shape == (3, 2)
    assert 0 <= float(output.maps.min()) and float(output.maps.max()) <= 1
    k = round(method.score_fraction * (h // 2) * (w // 2))
    expected = output.maps.flatten(2).sort(dim=2, descending=True).values[..., :k].mean(dim=2)
    torch.testing.assert_close(output.scores, expected)


def test_masked_images_flip_masks_with_their_image_and_mark_unannotated_classes(toy_dataset):
    dataset = toy_dataset(split="val", image_size=(32, 24))
    original = dataset.load

    def partly_annotated(sample_id):
        sample = original(sample_id)
        sample.masks["malignant"] = None
        return sample

    dataset.load = partly_annotated
    images = MaskedImages(dataset, max_cached=10, split="val")
    flip = VerticalFlip(probability=0.5)
    # positions whose generator flips and does not
    flipped = next(p for p in range(20) if sample_rng(0, 0, p).uniform() < 0.5)
    kept = next(p for p in range(20) if sample_rng(0, 0, p).uniform() >= 0.5)
    batch_images, labels, masks = images.batch([(1, flipped), (1, kept)], seed=0, epoch=0, augment=flip)
    sample = original("toy-val-001")
    benign = torch.from_numpy(sample.masks["benign"]).float()
    assert benign.any()
    torch.testing.assert_close(masks[0, 0], benign.flip(0))
    torch.testing.assert_close(masks[1, 0], benign)
    torch.testing.assert_close(batch_images[0], torch.from_numpy(sample.image).flip(-2))
    assert torch.isnan(masks[:, 1]).all()  # the unannotated class
    assert labels.shape == (2, 2) and images.get("toy-val-001")[2].dtype == torch.uint8
    assert int(images.get("toy-val-001")[2][1].max()) == UNANNOTATED


def test_masks_reach_only_a_method_that_declares_the_split(toy_dataset, tmp_path):
    with pytest.raises(DatasetError, match="masks of the 'val' split was given the 'train' split"):
        MaskedImages(toy_dataset(split="train"), 10, "val")
    fsl = FewShotSegmentation(image_size=(64, 48))
    config = TrainConfig(epochs=1, batch_size=4)
    with pytest.raises(ValueError, match="not validated while it trains"):
        Trainer(fsl, config, tmp_path / "a", progress=False).fit(toy_dataset(split="val"), toy_dataset(split="val"))
    with pytest.raises(DatasetError, match="given the 'train' split"):
        Trainer(fsl, config, tmp_path / "b", progress=False).fit(toy_dataset(split="train"))
    # a weakly-supervised method's loss is never handed masks: cam's training_loss takes none
    cam = wsl_bench.create_method("cam", image_size=(64, 48))
    Trainer(cam, config, tmp_path / "c", progress=False).fit(toy_dataset(split="train", n=4))
    with pytest.raises(ValueError, match="trains with masks"):
        SupervisedSegmentation(image_size=(64, 48)).training_loss(torch.zeros(1, 1, 64, 48), torch.zeros(1, 2))
