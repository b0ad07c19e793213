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


@pytest.mark.slow
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


@pytest.mark.slow
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


# -- the report: their own family, apart like the floor, never ranked -------------------------------------------
REPORTED = ("glam", "gmic", "cam", "fsl", "supervised", "intensity", "centre_prior", "random")


@pytest.fixture(scope="module")
def reported(tmp_path_factory):
    """A fabricated run where the supervised reference points localise best of all, and its report."""
    from report_fixtures import fake_run

    from wsl_bench.report.tables import build_report

    # below 0.5 a map's lesion and background values overlap (report_fixtures): no ranked method is perfect
    quality = {"glam": 0.4, "gmic": 0.2, "cam": 0.3, "intensity": 0.25, "centre_prior": 0.1, "random": 0.0,
               "fsl": 0.7, "supervised": 0.9}
    run_dir = fake_run(tmp_path_factory.mktemp("supervised") / "run", methods=REPORTED, n_images=9,
                       quality=quality, figure_images=3)
    return run_dir, build_report(run_dir)


def test_the_family_is_its_own_and_sits_between_the_ranked_methods_and_the_floor():
    from wsl_bench.report.families import BASELINES, LEARNED, SUPERVISED, UNRANKED, family_of, ordered

    assert family_of("fsl") is SUPERVISED and family_of("supervised") is SUPERVISED
    assert family_of("cam") is LEARNED and family_of("intensity") is BASELINES and SUPERVISED in UNRANKED
    assert ordered(["random", "fsl", "cam", "supervised", "glam", "intensity"], {}) == [
        "glam", "cam", "fsl", "supervised", "intensity", "random"]


@pytest.mark.slow
def test_the_summary_sets_them_apart_and_never_calls_them_the_best(reported):
    import pandas as pd

    from wsl_bench.report import summary
    from wsl_bench.report.tables import RunData

    run_dir, out = reported
    results, details = pd.read_csv(out / "results.csv"), pd.read_csv(out / "details.csv")
    for cls_summary in summary.summarise(results, details, RunData.load(run_dir).manifest):
        assert [e.name for e in cls_summary.references] == ["fsl", "supervised"]
        assert not {"fsl", "supervised"} & {m for e in cls_summary.ranked for m in e.methods}
        # they localise best of all in this run, yet the best value of a column is a ranked method's or the floor's
        assert max(e.dice for e in cls_summary.references) > cls_summary.best("dice")
        assert cls_summary.ranked[0].name == "glam"
        sentence = summary.reference_sentence(cls_summary)
        assert sentence.startswith(f"Supervised reference points ({cls_summary.cls}; trained with masks, not ranked)")
        assert "The best weakly-supervised method, `glam`," in sentence and "% of `fsl`'s" in sentence
    markdown = (out / "results.md").read_text(encoding="utf-8")
    assert "| uses masks | fsl | supervised (uses masks) |" in markdown
    assert "| 1 | glam |" in markdown and "| 4 |" not in markdown.split("## Summary", 1)[1].split("###", 2)[1]
    assert summary.SUPERVISED_DEFINITION in markdown
    page = (out / "index.html").read_text(encoding="utf-8")
    assert page.count("supervised reference points (trained with masks, not ranked)</th>") == 2  # one per class


@pytest.mark.slow
def test_every_figure_shows_the_family(reported):
    _, out = reported
    assert (out / "qualitative_supervised.png").exists()
    for name in ("dice_boxplot", "dice_vs_lesion_size", "cost_vs_dice"):
        assert (out / f"{name}.png").exists(), name
    from wsl_bench.report.families import SUPERVISED, families
    from wsl_bench.report.styles import FAMILY_MARKERS, styles

    family = families(REPORTED, {})
    style = styles(list(REPORTED), family)
    assert style["fsl"].colour != style["supervised"].colour and style["fsl"].linestyle == style["supervised"].linestyle
    assert style["fsl"].marker == FAMILY_MARKERS[SUPERVISED.key] != FAMILY_MARKERS["learned"]


def test_the_evidence_lines_say_where_they_stand_and_never_count_them_as_the_best_other_method():
    import importlib.util
    from pathlib import Path

    import pandas as pd

    path = Path(__file__).resolve().parents[1] / "reports" / "evidence.py"
    spec = importlib.util.spec_from_file_location("report_evidence", path)
    evidence = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(evidence)
    rows = [{"method": m, "class": cls, "dice_val_tau": d, "pxap": p} for cls in ("benign", "malignant")
            for m, d, p in [("glam", 0.30, 0.20), ("cam", 0.25, 0.15), ("fsl", 0.60, 0.50), ("supervised", 0.75, 0.70),
                            ("intensity", 0.12, 0.08), ("centre_prior", 0.04, 0.02), ("random", 0.02, 0.01)]]
    text = evidence.evidence_markdown(pd.DataFrame(rows))
    assert "GLAM 0.300 against cam 0.250: +20.0 %" in text  # not against fsl or supervised
    assert ("- benign: fsl 0.600 / 0.500 (the best weakly-supervised at 50 %); supervised 0.750 / 0.700 "
            "(the best weakly-supervised at 40 %); best weakly-supervised: glam 0.300") in text
