"""The headline Dice: the threshold chosen on the validation split, applied unchanged to the test split.

End to end (records of both splits, resume, sharding, the report's three Dice columns), a dataset
without annotated validation images (the column is missing with its reason, never a fallback), and
records written before records named their split.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from wsl_bench.evaluation.harness import RunConfig
from wsl_bench.evaluation.records import decode_counts, read_records
from wsl_bench.pipeline import merge_shard_records, run
from wsl_bench.report.tables import RESULT_COLUMNS, RunData, build_report, method_class_row
from wsl_bench.saliency import CLASSES

CHEAP = ("random", "centre_prior", "intensity")
REPO = Path(__file__).resolve().parents[1]


def _lesion_histograms(records, method, cls):
    usable = [r for r in records if r["method"] == method and r["status"] == "ok" and r["has_lesion"].get(cls)]
    pos = np.stack([decode_counts(r["hist"][cls]["pos"]) for r in usable]) if usable else np.zeros((0, 0))
    neg = np.stack([decode_counts(r["hist"][cls]["neg"]) for r in usable]) if usable else np.zeros((0, 0))
    return pos, neg


def _dice_at_bin(pos, neg, k):
    """Per-image Dice with S = {bin >= k}, by counting (independent of wsl_bench.evaluation.metrics)."""
    inter = pos[:, k:].sum(axis=1)
    predicted = inter + neg[:, k:].sum(axis=1)
    return 2.0 * inter / (predicted + pos.sum(axis=1))


@pytest.mark.slow
def test_tiny_run_reports_dice_at_the_validation_threshold_and_resumes_validation_records(tmp_path):
    out = tmp_path / "run"
    config = RunConfig(methods=CHEAP, preset="tiny")  # synthetic: 8 test and 8 validation images
    first = run(config, out, progress=False)
    assert first.computed == 3 * (8 + 8) and first.failed == 0

    records = read_records(out / "records.jsonl")
    val = [r for r in records if r["split"] == "val"]
    test = [r for r in records if r["split"] == "test"]
    assert len(val) == 3 * 8 and len(test) == 3 * 8
    assert all(r["image_id"].startswith("synth-s0-val-") for r in val)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["validation_split"] == "val"
    assert manifest["validation"]["reason"] is None and manifest["validation"]["n_images"] == 8

    results = pd.read_csv(out / "report" / "results.csv")
    assert list(results.columns) == RESULT_COLUMNS
    intensity = results[results["method"] == "intensity"]
    for column in ("dice_val_tau", "dice_val_tau_ci_low", "dice_val_tau_ci_high", "tau_val", "dice_at_0_5",
                   "dice_oracle", "tau_oracle"):
        assert intensity[column].notna().all(), column
    # Every headline value equals a brute-force search over the stored histograms: tau on validation
    # images (ties to the lowest), mean Dice on test images at that tau.
    checked = 0
    for _, row in results.iterrows():
        pos_val, neg_val = _lesion_histograms(val, row["method"], row["class"])
        pos_test, neg_test = _lesion_histograms(test, row["method"], row["class"])
        assert row["n_val_images"] == len(pos_val) and row["n_images"] == len(pos_test)
        if not len(pos_val) or not len(pos_test):
            continue
        bins = pos_val.shape[1]
        means = [float(_dice_at_bin(pos_val, neg_val, k).mean()) for k in range(bins)]
        k = int(np.flatnonzero(np.isclose(means, max(means), rtol=0, atol=1e-12))[0])
        assert row["tau_val"] == pytest.approx(k / bins, abs=1e-9)
        assert row["dice_val_tau"] == pytest.approx(_dice_at_bin(pos_test, neg_test, k).mean(), rel=1e-5)
        assert row["dice_val_tau_ci_low"] <= row["dice_val_tau"] <= row["dice_val_tau_ci_high"]
        assert row["dice_val_tau"] <= row["dice_oracle"] + 1e-6  # the oracle tau is chosen on these images
        checked += 1
    assert checked >= 4
    # The figures show the headline: per-image Dice at each method's validation tau
    from wsl_bench.report.figures import _per_image_frame

    means = _per_image_frame(RunData.load(out), results).groupby(["method", "class"])["dice_val_tau"].mean()
    for _, row in results.iterrows():
        if row["n_images"]:
            assert means[(row["method"], row["class"])] == pytest.approx(row["dice_val_tau"], rel=1e-5)
    # Dice@0.5 is still the records' own per-image Dice at 0.5
    for _, row in results.iterrows():
        cls = row["class"]
        values = [r["dice"][cls] for r in test if r["method"] == row["method"] and r["has_lesion"][cls]]
        if values:
            assert row["dice_at_0_5"] == pytest.approx(np.mean(values), rel=1e-5)

    markdown = (out / "report" / "results.md").read_text()
    header = next(line for line in markdown.splitlines() if line.startswith("| method"))
    assert header.index("Dice (val τ) [95% CI]") < header.index("val τ |") < header.index("Dice@0.5 [95% CI]") \
        < header.index("oracle Dice (τ)")
    row = intensity.iloc[0]
    line = next(x for x in markdown.splitlines() if x.startswith(f"| intensity | {row['class']} |"))
    cells = [c.strip() for c in line.split("|")[1:-1]]
    assert cells[2].startswith(f"{row['dice_val_tau']:.3f} [") and cells[3] == f"{row['tau_val']:.3f}"
    assert cells[4].startswith(f"{row['dice_at_0_5']:.3f} [")
    assert cells[5] == f"{row['dice_oracle']:.3f} ({row['tau_oracle']:.3f})"
    assert "Headline Dice missing" not in markdown and "**validation** images" in markdown
    assert r"Dice (val $\tau$)" in (out / "report" / "results.tex").read_text()
    assert "dice_val_tau" in (out / "report" / "index.html").read_text()

    # Resume: validation records count as done like test records; a second run computes nothing.
    again = run(config, out, progress=False, write_report=False)
    assert again.computed == 0 and again.reused == 3 * 16
    # Without the validation records of one method, exactly those are computed again.
    lines = (out / "records.jsonl").read_text().splitlines()
    kept = [x for x in lines if not (json.loads(x)["split"] == "val" and json.loads(x)["method"] == "random")]
    assert len(kept) == len(lines) - 8
    (out / "records.jsonl").write_text("\n".join(kept) + "\n")
    (out / "done").unlink()
    resumed = run(config, out, progress=False)
    assert resumed.computed == 8 and resumed.reused == 3 * 16 - 8 and resumed.statuses == {"random": {
        "ok": 8, "failed": 0, "oom": 0}}
    assert (out / "done").exists()
    rebuilt = build_report(out, tmp_path / "again")  # from records alone, validation records included
    for name in ("results.csv", "details.csv", "results.md"):
        assert (rebuilt / name).read_bytes() == (out / "report" / name).read_bytes(), name


def _folder_without_annotated_validation(root: Path, drop_split: bool) -> Path:
    from wsl_bench.datasets.folder import write_synthetic

    write_synthetic(root, n=20, image_size=(64, 48), seed=0, progress=False)  # 14 train, 2 val, 4 test
    index = root / "labels.csv"
    with open(index, newline="") as handle:
        rows = list(csv.DictReader(handle))
    val_ids = [r["id"] for r in rows if r["split"] == "val"]
    assert len(val_ids) == 2
    if drop_split:  # no validation split at all
        for r in rows:
            if r["split"] == "val":
                r["split"] = "train"
    else:  # validation images without their masks: lesions labelled but not annotated
        for sample_id in val_ids:
            for cls in CLASSES:
                (root / "masks" / cls / f"{sample_id}.png").unlink(missing_ok=True)
        assert any(r["benign"] == "1" or r["malignant"] == "1" for r in rows if r["split"] == "val")
    with open(index, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return root


@pytest.mark.slow
@pytest.mark.parametrize("drop_split, reason", [
    (False, "no annotated validation images: dataset folder split val has 2 images, none with a lesion mask"),
    (True, "no validation split: dataset folder split val cannot be opened"),
])
def test_dataset_without_annotated_validation_images_reports_the_column_missing_with_the_reason(
        tmp_path, drop_split, reason):
    root = _folder_without_annotated_validation(tmp_path / "data", drop_split)
    out = tmp_path / "run"
    config = RunConfig(methods=("intensity", "random"), dataset="folder", data_root=str(root), preset="tiny",
                       image_size=(64, 48))
    summary = run(config, out, progress=False)
    assert summary.failed == 0 and summary.computed == 2 * 4  # test images only
    records = read_records(out / "records.jsonl")
    assert {r["split"] for r in records} == {"test"}, "nothing is scored on a validation split that cannot choose τ"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["validation"]["reason"].startswith(reason)
    assert (out / "done").exists()

    results = pd.read_csv(out / "report" / "results.csv")
    assert results["dice_val_tau"].isna().all() and results["tau_val"].isna().all(), "no fallback to another τ"
    assert (results["n_val_images"] == 0).all()
    assert results["dice_at_0_5"].notna().any() and results["dice_oracle"].notna().any()
    details = pd.read_csv(out / "report" / "details.csv")
    assert details["dice_val_tau_missing"].str.startswith(reason).all()
    markdown = (out / "report" / "results.md").read_text()
    assert "**Headline Dice missing**" in markdown
    assert f"Dice (val τ) is missing for every method and class: {reason}" in markdown
    assert reason in (out / "report" / "index.html").read_text()
    assert f"% Dice (val τ) is missing for every method and class: {reason}" in (
        out / "report" / "results.tex").read_text()
    if drop_split:
        assert "no rows for split 'val'" in markdown
    # figures say they show Dice at 0.5 because the run has no validation tau
    assert (out / "report" / "dice_boxplot.png").exists() and (out / "report" / "cost_vs_dice.png").exists()


@pytest.mark.slow
def test_validation_split_none_or_equal_to_the_evaluated_split_is_missing_with_its_reason(toy_dataset, tmp_path):
    for name, options, reason in (
        ("none", {"validation_split": None}, "validation_split=None"),
        ("same", {"split": "val"}, "the validation split is the evaluated split (val)"),
    ):
        out = tmp_path / name
        run(RunConfig(methods=("intensity",), dataset="toy", preset="tiny", **options), out, progress=False)
        assert {r["split"] for r in read_records(out / "records.jsonl")} == {options.get("split", "test")}
        details = pd.read_csv(out / "report" / "details.csv")
        assert details["dice_val_tau_missing"].str.contains(reason, regex=False).all(), name
        assert pd.read_csv(out / "report" / "results.csv")["dice_val_tau"].isna().all()


@pytest.mark.slow
def test_a_method_without_validation_lesions_of_a_class_is_missing_for_that_class_only(toy_dataset, tmp_path,
                                                                                       monkeypatch):
    # val images 0 (no lesion) and 1 (benign only)
    monkeypatch.setattr(toy_dataset, "counts", {"train": 4, "val": 2, "test": 4})
    out = tmp_path / "run"
    run(RunConfig(methods=("intensity",), dataset="toy", preset="tiny"), out, progress=False)
    results = pd.read_csv(out / "report" / "results.csv").set_index("class")
    assert np.isfinite(results.loc["benign", "dice_val_tau"]) and np.isnan(results.loc["malignant", "dice_val_tau"])
    markdown = (out / "report" / "results.md").read_text()
    assert ("Dice (val τ) is missing for intensity (malignant): no annotated validation image with a malignant "
            "lesion (dataset toy split val: 2 images scored, 2 annotated for malignant)") in markdown


def test_sharded_validation_records_merge_into_the_single_process_records(toy_dataset, tmp_path):
    config = RunConfig(methods=("intensity", "random"), dataset="toy", preset="tiny")
    run(config, tmp_path / "single", progress=False, write_report=False)
    for rank in (0, 1):
        run(config, tmp_path / "sharded", progress=False, shard=(rank, 2), write_report=False)
    merge_shard_records(config, tmp_path / "sharded")
    assert (tmp_path / "sharded" / "done").exists() and not list((tmp_path / "sharded").glob("records.rank*"))

    def comparable(path):
        volatile = ("time_s", "stage_s", "peak_memory_mb")
        lines = path.read_text().splitlines()
        return [{k: v for k, v in json.loads(line).items() if k not in volatile} for line in lines]

    single, sharded = (comparable(tmp_path / d / "records.jsonl") for d in ("single", "sharded"))
    assert sharded == single  # same records, in the single-process order: method, test then validation
    assert [r["split"] for r in single if r["method"] == "intensity"] == ["test"] * 6 + ["val"] * 8


@pytest.mark.slow
def test_old_records_without_split_still_load_and_report(toy_dataset, tmp_path):
    out = tmp_path / "run"
    run(RunConfig(methods=("intensity", "random"), dataset="toy", preset="tiny"), out, progress=False)
    new_results = pd.read_csv(out / "report" / "results.csv")
    # What a run folder written before records named their split looks like: test records only,
    # no split field, no validation entry in the manifest.
    lines = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    old = [{k: v for k, v in r.items() if k != "split"} for r in lines if r["split"] == "test"]
    (out / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in old))
    manifest = json.loads((out / "manifest.json").read_text())
    del manifest["validation"], manifest["config"]["validation_split"]
    (out / "manifest.json").write_text(json.dumps(manifest))

    records = read_records(out / "records.jsonl")
    assert len(records) == 12 and {r["split"] for r in records} == {"test"}
    report = build_report(out, tmp_path / "old-report")
    results = pd.read_csv(report / "results.csv")
    pd.testing.assert_series_equal(results["dice_at_0_5"], new_results["dice_at_0_5"])
    pd.testing.assert_series_equal(results["dice_oracle"], new_results["dice_oracle"])
    assert results["dice_val_tau"].isna().all()
    assert "this run folder has no validation records" in (report / "results.md").read_text()


def test_the_committed_reference_records_without_split_still_load():
    data = RunData.load(REPO / "reports" / "cpu-736x480")
    assert len(data.records) == 240 and not data.val_records and {r["split"] for r in data.records} == {"test"}
    row, details = method_class_row(data, "glam", "benign")
    assert row["dice_at_0_5"] == pytest.approx(0.017, abs=5e-4)  # the committed results.md: 0.017
    assert row["dice_oracle"] == pytest.approx(0.239, abs=5e-4) and row["tau_oracle"] == pytest.approx(0.412)
    assert np.isnan(row["dice_val_tau"]) and "no validation records" in details["dice_val_tau_missing"]
