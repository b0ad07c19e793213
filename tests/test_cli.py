"""The `wsl-bench` command line: listing, exit codes, the tiny run and report rebuild, data synth."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from wsl_bench.cli import main
from wsl_bench.evaluation.records import read_records
from wsl_bench.report.tables import RESULT_COLUMNS


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


@pytest.mark.slow
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


@pytest.mark.slow
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


# -- a run folder whose records file holds lines that are not valid records -------------------------
BAD_RECORD_LINES = [
    b"[1, 2]",
    b'"x"',
    b"3",
    b'{"image_id": 12, "method": "intensity", "status": "ok"}',
    b'{"image_id": "synth-s0-test-00000", "method": "intensity", "status": "brilliant"}',
    b'{"image_id": "synth-s0-test-00001", "method": "intensity", "status": "ok"}',
    b'{"image_id": "\xff\xfe", "method": "intensity", "status": "ok"}',
]


@pytest.mark.slow
def test_report_and_resume_skip_and_name_records_lines_that_are_not_valid_records(tmp_path, capsys, caplog):
    out = tmp_path / "run"
    argv = ["run", "--methods", "intensity,centre_prior,random", "--preset", "tiny", "--out", str(out), "--no-progress"]
    assert main(argv) == 0
    good = (out / "report" / "results.csv").read_bytes()
    records_file = out / "records.jsonl"
    lines = records_file.read_bytes().splitlines()
    # bad lines at the start, in the middle and at the end (each one complete, with its newline)
    mixed = [BAD_RECORD_LINES[0], *lines[:5], *BAD_RECORD_LINES[1:4], *lines[5:], *BAD_RECORD_LINES[4:]]
    records_file.write_bytes(b"\n".join(mixed) + b"\n")
    bad_numbers = [n for n, line in enumerate(mixed, 1) if line in BAD_RECORD_LINES]
    capsys.readouterr()
    caplog.clear()
    with caplog.at_level("WARNING", logger="wsl_bench.evaluation.records"):
        assert main(["report", str(out), "--out", str(tmp_path / "again")]) == 0
    assert (tmp_path / "again" / "results.csv").read_bytes() == good  # the bad lines changed nothing
    warned = {r.getMessage().split(":")[0] for r in caplog.records if r.levelname == "WARNING"}
    assert warned == {f"{records_file} line {n}" for n in bad_numbers}
    # resuming the run reads the same file: nothing to recompute, no crash
    assert main(argv) == 0
    assert "Traceback" not in capsys.readouterr().err
    # (a resumed run lists its methods sorted in the manifest, so only the row order may differ)
    assert sorted((out / "report" / "results.csv").read_bytes().splitlines()) == sorted(good.splitlines())


# -- usage errors are one line, exit 2, without a traceback (unless -v) ------------------------------
def cli_exit_code(argv: list[str]) -> int:
    """``main``'s exit code, whether it returns it or argparse exits."""
    try:
        return main(argv)
    except SystemExit as exit_info:
        return exit_info.code


def assert_one_error_line(err: str, *named: str) -> str:
    errors = [line for line in err.splitlines() if line.startswith("wsl-bench: error:")]
    assert len(errors) == 1, err
    assert "Traceback" not in err, err
    for text in named:
        assert text in errors[0], err
    return errors[0]


@pytest.fixture
def bad_labels_root(tmp_path):
    root = tmp_path / "bad-folder"
    root.mkdir()
    (root / "labels.csv").write_text("id,split,benign\nx,test,0\n")
    return root


@pytest.mark.parametrize("command", ["run", "train"])
def test_bad_labels_csv_is_one_error_line_naming_the_file(command, bad_labels_root, tmp_path, capsys):
    method = ["--methods", "intensity"] if command == "run" else ["--method", "cam"]
    code = cli_exit_code([command, *method, "--dataset", "folder", "--data-root", str(bad_labels_root),
                          "--preset", "tiny", "--out", str(tmp_path / "out"), "--no-progress"])
    assert code == 2
    assert_one_error_line(capsys.readouterr().err, str(bad_labels_root / "labels.csv"), "malignant")


def test_verbose_adds_the_traceback_to_a_usage_error(bad_labels_root, tmp_path, capsys):
    code = cli_exit_code(["-v", "run", "--methods", "intensity", "--dataset", "folder", "--data-root",
                          str(bad_labels_root), "--preset", "tiny", "--out", str(tmp_path / "out"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" in err and "DatasetError" in err
    assert err.strip().splitlines()[-1].startswith("wsl-bench: error:")


@pytest.mark.parametrize(
    "extra, named",
    [
        (["--weights", "w.pt"], ["--weights", "'intensity'", "'weights'"]),
        (["--option", "foo=1"], ["--option foo", "'intensity'", "'foo'"]),
        (["--classifier", "cam"], ["--classifier", "'intensity'"]),
    ],
)
def test_an_option_the_method_does_not_take_is_one_error_line(extra, named, tmp_path, capsys):
    code = cli_exit_code(["run", "--methods", "intensity", *extra, "--preset", "tiny", "--out", str(tmp_path / "out"),
                          "--no-progress"])
    assert code == 2
    assert_one_error_line(capsys.readouterr().err, *named)


def test_train_with_an_option_the_method_does_not_take_is_one_error_line(tmp_path, capsys):
    code = cli_exit_code(["train", "--method", "cam", "--option", "nonsense=3", "--preset", "tiny",
                          "--out", str(tmp_path / "out"), "--no-progress"])
    assert code == 2
    assert_one_error_line(capsys.readouterr().err, "--option nonsense", "'cam'")


@pytest.mark.parametrize(
    "argv, flag",
    [
        (["run", "--batch-size", "0"], "--batch-size"),
        (["run", "--batch-size", "-4"], "--batch-size"),
        (["run", "--seed", "-1"], "--seed"),
        (["train", "--method", "cam", "--batch-size", "0"], "--batch-size"),
        (["train", "--method", "cam", "--max-images", "2", "--epochs", "-1"], "--epochs"),
        (["train", "--method", "cam", "--checkpoint-every", "0"], "--checkpoint-every"),
        (["train", "--method", "cam", "--max-images", "-2"], "--max-images"),
        (["data", "synth", "--out", "OUT", "--n", "0", "--size", "32x16"], "--n"),
        (["data", "synth", "--out", "OUT", "--n", "2", "--size", "32x16", "--workers", "-1"], "--workers"),
        (["bench", "--repeats", "0"], "--repeats"),
        (["run", "--batch-size", "two"], "--batch-size"),
    ],
)
def test_counts_below_one_are_one_error_line_naming_the_flag(argv, flag, tmp_path, capsys):
    # cheap settings, should the flag ever be accepted: the tiny preset, a method with nothing to train
    cheap = {"run": ["--methods", "intensity", "--preset", "tiny", "--out", str(tmp_path / "out"), "--no-progress"],
             "train": ["--preset", "tiny", "--epochs", "1", "--out", str(tmp_path / "out"), "--no-progress"],
             "data": [], "bench": ["--methods", "intensity", "--size", "32x16"]}[argv[0]]
    assert cli_exit_code([str(tmp_path / "out") if a == "OUT" else a for a in argv] + cheap) == 2
    assert_one_error_line(capsys.readouterr().err, f"argument {flag}:")


@pytest.mark.parametrize("command", ["run", "train"])
def test_a_missing_data_root_is_one_error_line_naming_the_flag(command, tmp_path, capsys):
    method = ["--methods", "intensity"] if command == "run" else ["--method", "cam"]
    missing = tmp_path / "no-such-folder"
    code = cli_exit_code([command, *method, "--dataset", "folder", "--data-root", str(missing), "--preset", "tiny",
                          "--out", str(tmp_path / "out")])
    assert code == 2
    assert_one_error_line(capsys.readouterr().err, "--data-root", str(missing))
    assert not (tmp_path / "out").exists()


def test_an_unexpected_type_error_keeps_its_traceback(monkeypatch):
    import wsl_bench.cli as cli

    def broken(args):
        raise TypeError("helper() got an unexpected keyword argument 'weights'")  # a bug, not the user's option

    monkeypatch.setitem(cli.COMMANDS, "list", broken)
    with pytest.raises(TypeError, match="helper"):
        main(["list"])


def test_a_report_without_valid_records_is_one_error_line(tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "manifest.json").write_text(json.dumps({"config": {"split": "test", "methods": []}}))
    (run_dir / "records.jsonl").write_bytes(b"[1, 2]\n3\n")
    assert cli_exit_code(["report", str(run_dir)]) == 1
    assert_one_error_line(capsys.readouterr().err, str(run_dir), "no records to report")


@pytest.mark.parametrize("method", ["intensity", "random"])
def test_train_on_a_method_with_nothing_to_train_says_so_and_succeeds(method, tmp_path, capsys):
    out = tmp_path / "out"
    code = cli_exit_code(["train", "--method", method, "--preset", "tiny", "--out", str(out), "--no-progress"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "has nothing to train" in captured.out and f"--methods {method}" in captured.out
    assert captured.err == ""
    assert not out.exists()  # information only: nothing is built or written
