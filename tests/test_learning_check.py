"""The learning check: a trained checkpoint whose validation metrics are at chance is reported, loudly."""

from __future__ import annotations

import json

import numpy as np
import pytest

from wsl_bench.evaluation.harness import RunConfig
from wsl_bench.evaluation.metrics import AUCMetric, PxAPMetric, auc, auc_chance_p_value, pxap
from wsl_bench.pipeline import open_dataset, run
from wsl_bench.report.tables import learning_warnings, to_html, to_markdown
from wsl_bench.training.learning_check import AUC_P_VALUE, learning_problems


# -- the statistics -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("n_pos", "n_neg", "value"), [(20, 20, 0.62), (23, 17, 0.70), (14, 26, 0.55)])
def test_auc_p_value_matches_the_permutation_distribution(n_pos, n_neg, value):
    """The normal approximation against the exact null: AUCs of random scores under shuffled labels."""
    rng = np.random.default_rng(0)
    labels = np.r_[np.ones(n_pos, bool), np.zeros(n_neg, bool)]
    null = np.array([auc(rng.random(n_pos + n_neg), labels) for _ in range(4000)])
    simulated = float(np.mean(null >= value))
    assert auc_chance_p_value(value, n_pos, n_neg) == pytest.approx(simulated, abs=0.025)


def test_auc_p_value_edges():
    assert auc_chance_p_value(0.5, 20, 20) == pytest.approx(0.5)
    assert auc_chance_p_value(0.9, 20, 20) < auc_chance_p_value(0.7, 20, 20) < 0.5
    assert np.isnan(auc_chance_p_value(float("nan"), 20, 20))
    assert np.isnan(auc_chance_p_value(0.8, 0, 20))


def test_metric_counts_and_chance_level():
    metric = AUCMetric()
    metric.update([0.1, 0.9, 0.4], [0, 1, 1])
    metric.update([0.3], [0])
    assert metric.counts() == (2, 2)
    masks = np.zeros((2, 8, 8), bool)
    masks[0, 2:5, 2:4] = True  # 6 lesion pixels of 128
    maps = np.random.default_rng(1).random((2, 8, 8))
    chance = PxAPMetric(bins=100)
    chance.update(maps, masks)
    assert chance.chance() == pytest.approx(6 / 128)
    # a constant map scores exactly the lesion pixel fraction: that is what "chance" means
    assert pxap(np.full((2, 8, 8), 0.5), masks, bins=100) == pytest.approx(chance.chance())
    assert np.isnan(PxAPMetric(bins=10).chance())


# -- the check ------------------------------------------------------------------------------------------------------
def _row(auc_value: float, p_value: float, pxap_value: float, chance: float) -> dict[str, float]:
    row = {}
    for cls in ("benign", "malignant"):
        row |= {f"val_auc_{cls}": auc_value, f"val_auc_p_{cls}": p_value,
                f"val_pxap_{cls}": pxap_value, f"val_pxap_chance_{cls}": chance}
    return row


def test_a_checkpoint_at_chance_is_named_for_every_class_with_both_signals():
    problems = learning_problems(_row(0.55, 0.3, 0.012, 0.008))
    assert len(problems) == 2
    assert [p.split(":")[0] for p in problems] == ["benign", "malignant"]
    assert all("AUC 0.550" in p and "PxAP 0.0120" in p for p in problems)


def test_one_signal_above_chance_is_enough():
    # chosen for localisation, its AUC on 40 images may not be significant: it learned
    assert learning_problems(_row(0.62, 0.09, 0.15, 0.008)) == []
    # classifies without localising: the method's result, not a failed training
    assert learning_problems(_row(0.85, 0.001, 0.010, 0.008)) == []
    # one class at chance, the other not
    row = _row(0.55, 0.3, 0.012, 0.008) | {"val_pxap_malignant": 0.2}
    assert [p.split(":")[0] for p in learning_problems(row)] == ["benign"]
    # a split without masks: the AUC alone decides
    no_masks = _row(0.55, 0.3, float("nan"), float("nan"))
    assert len(learning_problems(no_masks)) == 2 and "PxAP" not in learning_problems(no_masks)[0]


def test_a_classifier_below_chance_is_caught_even_when_its_maps_pass():
    """GMIC's case (issue 22): the checkpoint kept by validation PxAP had validation AUC 0.309 on 23 benign
    and 17 other images, with a PxAP just above twice chance; its malignant AUC was 0.500."""
    row = {
        "val_auc_benign": 0.309, "val_auc_p_benign": auc_chance_p_value(0.309, 23, 17),
        "val_pxap_benign": 0.0185, "val_pxap_chance_benign": 0.0090,  # 2.06× chance: localisation passes
        "val_auc_malignant": 0.500, "val_auc_p_malignant": auc_chance_p_value(0.500, 14, 26),
        "val_pxap_malignant": 0.0240, "val_pxap_chance_malignant": 0.0110,
    }
    problems = learning_problems(row)
    assert len(problems) == 1 and problems[0].startswith("benign: validation AUC 0.309, below chance")
    assert "p = 0.021" in problems[0]  # P(AUC ≤ 0.309) for scores unrelated to the labels
    # the lower tail is the upper tail mirrored: a classifier as far above chance passes on its AUC
    mirrored = row | {"val_auc_benign": 0.691, "val_auc_p_benign": auc_chance_p_value(0.691, 23, 17)}
    assert learning_problems(mirrored) == []
    # below 0.5 but not significantly (40 images): judged as before, its maps pass
    assert learning_problems(row | {"val_auc_benign": 0.42,
                                    "val_auc_p_benign": auc_chance_p_value(0.42, 23, 17)}) == []


def test_a_below_chance_p_value_matches_the_permutation_distribution():
    rng = np.random.default_rng(1)
    labels = np.r_[np.ones(23, bool), np.zeros(17, bool)]
    null = np.array([auc(rng.random(40), labels) for _ in range(4000)])
    assert 1.0 - auc_chance_p_value(0.309, 23, 17) == pytest.approx(float(np.mean(null <= 0.309)), abs=0.01)


def test_a_checkpoint_that_learned_passes_and_old_checkpoints_are_not_judged():
    assert learning_problems(_row(0.8, AUC_P_VALUE / 10, 0.2, 0.008)) == []
    assert learning_problems({"val_auc_benign": 0.5, "val_pxap_benign": 0.001}) == []  # no chance keys stored
    assert learning_problems(None) == []
    nan_row = _row(float("nan"), float("nan"), float("nan"), float("nan"))
    assert learning_problems(nan_row) == []  # a split without masks or without both labels is not judged


def test_the_report_puts_the_warning_before_the_table():
    manifest = {"config": {}, "checkpoints": {"cam": {"learning_check": ["benign: validation AUC 0.500 is not above "
                                                                         "chance (one-sided p = 0.50)"]},
                                              "gmic": {"learning_check": []}}}
    warnings = learning_warnings(manifest)
    assert len(warnings) == 1 and warnings[0].startswith("cam did not learn: benign: validation AUC 0.500")
    import pandas as pd

    empty_details = pd.DataFrame(columns=["n_failed", "n_oom", "n_skipped", "n_val_not_scored", "box_ground_truth",
                                          "method"])
    markdown = to_markdown(pd.DataFrame(), empty_details, manifest)
    assert markdown.index("Training did not converge") < markdown.index("| method | class |")
    assert "cam did not learn" in markdown
    assert "Training did not converge" not in to_markdown(pd.DataFrame(), empty_details, {"config": {}})
    page = to_html(pd.DataFrame({"method": ["cam"]}), markdown, [], warnings=warnings)
    assert page.index("cam did not learn") < page.index("<table")


# -- end to end: what the trainer stores and the run reports --------------------------------------------------------
@pytest.mark.slow
def test_a_run_stores_the_chance_levels_and_the_verdict(toy_dataset, tmp_path):
    toy_dataset.counts = {"train": 16, "val": 8, "test": 4}
    config = RunConfig(methods=("cam",), dataset="toy", split="val", preset="tiny", batch_size=8)
    run(config, tmp_path / "run", progress=False)
    facts = json.loads((tmp_path / "run" / "manifest.json").read_text())["checkpoints"]["cam"]
    metrics = facts["train_metrics"]
    val = open_dataset(config, "val")
    samples = [val.get(i) for i in val.ids()]
    for cls in ("benign", "malignant"):
        lesion_masks = [s.masks[cls] for s in samples if s.masks.get(cls) is not None and s.masks[cls].any()]
        lesion_fraction = np.mean(np.concatenate([m.ravel() for m in lesion_masks]))
        assert metrics[f"val_pxap_chance_{cls}"] == pytest.approx(lesion_fraction)
        labels = np.array([s.labels[cls] for s in samples])
        n_pos = int(labels.sum())
        assert metrics[f"val_auc_p_{cls}"] == pytest.approx(
            auc_chance_p_value(metrics[f"val_auc_{cls}"], n_pos, len(labels) - n_pos))
    assert facts["learning_check"] == learning_problems(metrics)
    report = (tmp_path / "run" / "report" / "results.md").read_text()
    assert ("Training did not converge" in report) == bool(facts["learning_check"])
