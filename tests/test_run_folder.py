"""A failed run blocks no corrected command; a refused folder names what differs and the flag that
replaces it; ``--overwrite`` deletes a run's files only (issue 16, item 5)."""

from __future__ import annotations

import csv
import json
import shutil

import pytest

from wsl_bench.cli import main
from wsl_bench.evaluation.run_folder import NotARunFolder, clear_run_folder, settings_differences


def exit_code(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exit_info:
        return exit_info.code


@pytest.fixture
def folder_data(tmp_path):
    """A small folder-format set, and a copy of it holding only its test split (wrong for training)."""
    good = tmp_path / "synth"
    assert main(["data", "synth", "--out", str(good), "--n", "12", "--size", "64x48"]) == 0
    only_test = tmp_path / "only-test"
    shutil.copytree(good, only_test)
    with open(good / "labels.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    with open(only_test / "labels.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(r for r in rows if r["split"] == "test")
    return good, only_test


@pytest.mark.slow
def test_a_run_that_failed_before_its_first_record_does_not_block_the_corrected_command(folder_data, tmp_path,
                                                                                        capsys):
    good, only_test = folder_data
    out = tmp_path / "run"
    common = ["--dataset", "folder", "--preset", "tiny", "--out", str(out), "--no-progress"]
    # the test split opens, the training split does not: the run fails once the manifest exists
    assert exit_code(["run", "--methods", "cam", "--data-root", str(only_test), *common]) == 2
    assert "no rows for split 'train'" in capsys.readouterr().err
    assert exit_code(["run", "--methods", "intensity", "--data-root", str(good), *common]) == 0
    assert json.loads((out / "manifest.json").read_text())["config"]["data_root"] == str(good)


def test_a_dataset_that_fails_to_open_leaves_no_folder(tmp_path, capsys):
    root = tmp_path / "bad"
    root.mkdir()
    (root / "labels.csv").write_text("id,split,benign\nx,test,0\n")  # no malignant column
    out = tmp_path / "run"
    assert exit_code(["run", "--methods", "intensity", "--dataset", "folder", "--data-root", str(root),
                      "--preset", "tiny", "--out", str(out), "--no-progress"]) == 2
    assert not out.exists()


@pytest.mark.slow
def test_a_refusal_names_the_settings_that_differ_and_overwrite_replaces_the_run(toy_dataset, tmp_path, capsys):
    out = tmp_path / "run"
    common = ["--methods", "intensity", "--dataset", "toy", "--preset", "tiny", "--out", str(out), "--no-progress"]
    assert exit_code(["run", *common, "--image-size", "128x80", "--seed", "1"]) == 0
    (out / "notes.txt").write_text("mine")
    capsys.readouterr()
    assert exit_code(["run", *common]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert "image_size: [128, 80] there, None here" in error and "seed: 1 there, 0 here" in error
    assert "--overwrite" in error and "{" not in error  # the differences, not two dumps of settings
    assert exit_code(["run", *common, "--overwrite"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["image_size"] is None and manifest["config"]["seed"] == 0
    assert (out / "notes.txt").read_text() == "mine"  # only what a run writes is deleted


def test_overwrite_refuses_a_folder_that_holds_no_run(toy_dataset, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    assert exit_code(["run", "--methods", "intensity", "--dataset", "toy", "--preset", "tiny", "--out", str(out),
                      "--no-progress", "--overwrite"]) == 2
    assert "holds no wsl-bench run" in capsys.readouterr().err
    assert [p.name for p in out.iterdir() if p.name != ".lock"] == ["thesis.tex"]


def test_clear_run_folder_deletes_run_files_only(tmp_path):
    folder = tmp_path / "run"
    (folder / "maps" / "cam").mkdir(parents=True)
    (folder / "report").mkdir()
    for name in ("manifest.json", "records.jsonl", "records.rank1.jsonl", "done", "README.txt"):
        (folder / name).write_text("x")
    assert set(clear_run_folder(folder)) == {"manifest.json", "records.jsonl", "records.rank1.jsonl", "done",
                                             "maps/", "report/"}
    assert [p.name for p in folder.iterdir()] == ["README.txt"]
    with pytest.raises(NotARunFolder):
        clear_run_folder(folder)  # README.txt alone is no run


def test_settings_differences_ignore_methods_and_tuple_list_spelling():
    old = {"methods": ["cam"], "image_size": [128, 80], "seed": 0, "preset": "tiny"}
    new = {"image_size": (128, 80), "seed": 0, "preset": "cpu"}
    assert settings_differences(old, new) == ["preset: 'tiny' there, 'cpu' here"]
