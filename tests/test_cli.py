"""The `wsl-bench` command line: listing, exit codes, the tiny run and report rebuild, data synth."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from wsl_bench.cli import main
from wsl_bench.records import read_records
from wsl_bench.report import RESULT_COLUMNS


def test_list_json_has_methods_and_datasets(capsys):
    assert main(["list", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    methods = {m["name"]: m["description"] for m in listing["methods"]}
    datasets = {d["name"]: d["description"] for d in listing["datasets"]}
    for name in ("cam", "glam", "gmic", "random", "centre_prior", "intensity", "gradcam"):
        assert methods.get(name), f"{name} missing or without a description"
    for name in ("synthetic", "folder", "nyu", "cbis-ddsm", "inbreast", "vindr"):
        assert datasets.get(name), f"{name} missing or without a description"


def test_list_text(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("methods:") and "datasets:" in out and "synthetic" in out


@pytest.mark.parametrize(
    "argv, named",
    [
        (["run", "--methods", "camm", "--preset", "tiny"], "unknown method 'camm'"),
        (["run", "--methods", "nothing*", "--preset", "tiny"], "no method matches 'nothing*'"),
        (["run", "--dataset", "mnist", "--preset", "tiny"], "unknown dataset 'mnist'"),
        (["run", "--preset", "huge"], "unknown preset 'huge'"),
        (["run", "--methods", "gradcam@nothing", "--preset", "tiny"], "unknown method 'nothing'"),
    ],
)
def test_unknown_names_exit_2_listing_valid_names(argv, named, capsys, tmp_path):
    assert main([*argv, "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert named in err and ("known" in err)


def test_tiny_run_then_report_rebuilds_identical_results(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["run", "--methods", "cam,intensity,centre_prior,random", "--preset", "tiny", "--out", str(out),
                 "--no-progress"])
    assert code == 0
    printed = capsys.readouterr().out
    assert str(out / "records.jsonl") in printed and "results.md" in printed
    for name in ("manifest.json", "records.jsonl", "report/results.csv", "report/results.md", "report/results.tex",
                 "report/qualitative.png", "report/dice_boxplot.pdf"):
        assert (out / name).exists(), name
    results = pd.read_csv(out / "report" / "results.csv")
    assert list(results.columns) == RESULT_COLUMNS and len(results) == 8
    assert main(["report", str(out), "--out", str(tmp_path / "again")]) == 0
    assert (tmp_path / "again" / "results.csv").read_bytes() == (out / "report" / "results.csv").read_bytes()


def test_data_synth_writes_the_folder_format_readable_by_the_folder_dataset(tmp_path):
    import wsl_bench

    out = tmp_path / "synth"
    assert main(["data", "synth", "--out", str(out), "--n", "10", "--size", "64x48", "--seed", "3"]) == 0
    labels = pd.read_csv(out / "labels.csv")
    assert len(labels) == 10 and {"id", "split", "benign", "malignant"} <= set(labels.columns)
    dataset = wsl_bench.create_dataset("folder", root=str(out), split="train")
    sample = dataset.get(dataset.ids()[0])
    assert sample.size == (64, 48)


def test_bad_size_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["data", "synth", "--out", "x", "--size", "big"])
    assert exit_info.value.code == 2
    assert "size must look like" in capsys.readouterr().err


def test_image_size_replaces_the_presets_size_for_data_methods_and_report(tmp_path, capsys):
    out = tmp_path / "small"
    code = main(["run", "--methods", "intensity,centre_prior", "--preset", "tiny", "--image-size", "128x80",
                 "--out", str(out), "--no-progress"])
    assert code == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["image_size"] == [128, 80]
    assert "preset `tiny` at 128×80" in (out / "report" / "results.md").read_text()
    # lesion_fraction = mask pixels / image pixels: with the mask's pixel count it gives the image size
    records = [r for r in read_records(out / "records.jsonl", split="test") if r["status"] == "ok"]
    assert len(records) == 2 * 8
    sized = [(r["dice_pixels"][c]["mask"], r["lesion_fraction"][c]) for r in records for c in ("benign", "malignant")
             if r["lesion_fraction"].get(c)]
    assert sized
    for mask_pixels, fraction in sized:
        assert mask_pixels / fraction == pytest.approx(128 * 80, rel=1e-6)
    # the same folder with the preset's own size is another configuration: refused, not mixed
    assert main(["run", "--methods", "intensity", "--preset", "tiny", "--out", str(out), "--no-progress"]) == 2
    assert "another configuration" in capsys.readouterr().err
