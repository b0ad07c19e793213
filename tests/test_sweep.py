"""``wsl-bench sweep`` (issue 23 §3): the same methods at several conspicuity levels, one run folder per
level, checkpoints cached per level, and a report saying where each method stops beating the floor.

The sweep runs once per module at the ``tiny`` preset (at 128×80) on two levels with two baselines and
a two-layer trainable network (a real training job through the pipeline and the checkpoint cache, in
seconds), then again into the same folder, then into a new one; the tests read what each left behind.
Each level's own report is written without its figures here (``tests/test_report_figures.py`` tests
those; they would be two thirds of this module's time); the sweep's figure is drawn.
"""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any, ClassVar

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from wsl_bench.cli import SWEEP_LEVELS, main
from wsl_bench.datasets.synthetic_generator import CONSPICUITY_LEVELS
from wsl_bench.registry import METHODS
from wsl_bench.report import summary
from wsl_bench.report.sweep import SWEEP_COLUMNS, Breakdown
from wsl_bench.saliency import CLASSES, SaliencyOutput, TrainableMethod
from wsl_bench.sweep import SWEEP_METHODS, SweepError, default_sweep_methods, level_folders, parse_levels

LEARNER = "sweep-test-cam"
LEVELS = ("obvious", "faint")
BASELINES = ("intensity", "centre_prior")
METHODS_RUN = (LEARNER, *BASELINES)


class _TwoLayerCam(TrainableMethod):
    """Class activation maps of two strided convolutions and a 1×1 class convolution (GAP head): trains one
    epoch of the tiny preset in about a second."""

    description: ClassVar[str] = "test-only two-layer CAM"
    map_range: ClassVar[str] = "probability"
    train_overrides: ClassVar[dict[str, Any]] = {"epochs": 1, "lr": 1e-3}

    def __init__(self, device="cpu", seed=0, image_size=None) -> None:
        super().__init__(device=device, seed=seed, image_size=image_size)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.net = nn.Sequential(nn.Conv2d(1, 4, 3, stride=2, padding=1), nn.ReLU(),
                                     nn.Conv2d(4, 4, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(4, 2, 1))
        self.net.eval()

    def network(self) -> nn.Module:
        return self.net

    def training_loss(self, images, labels, pos_weight=None):
        return F.binary_cross_entropy_with_logits(self.net(images).mean(dim=(2, 3)), labels, pos_weight=pos_weight)

    @torch.inference_mode()
    def predict(self, images: torch.Tensor) -> SaliencyOutput:
        maps = self.net(images)
        return SaliencyOutput(maps=torch.sigmoid(maps), scores=torch.sigmoid(maps.mean(dim=(2, 3))),
                              map_range="probability")


def _main(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def _sweep_argv(out: Path) -> list[str]:
    return ["sweep", "--methods", ",".join(METHODS_RUN), "--levels", ",".join(LEVELS), "--preset", "tiny",
            "--image-size", "128x80", "--out", str(out), "--no-progress"]


# a whole sweep of two levels (about 12 s): the tests that read it are all marked slow
@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """The sweep, its rerun into the same folder, a rerun into a new folder, and ``--report`` on both,
    sharing one checkpoint cache: what each printed and where it wrote."""
    root = tmp_path_factory.mktemp("sweep")
    METHODS.register(LEARNER, _TwoLayerCam)
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("WSL_BENCH_CACHE", str(root / "cache"))
            patch.setattr("wsl_bench.report.figures.draw_all", lambda *args, **kwargs: [])
            first = _main(_sweep_argv(root / "out"))
            snapshot = {name: (root / "out" / name).read_bytes() for name in ("sweep.csv", "sweep.md")}
            again = _main(_sweep_argv(root / "out"))
            fresh = _main(_sweep_argv(root / "fresh"))
            (root / "out" / "sweep.csv").unlink()
            (root / "out" / "sweep.png").unlink()
            rebuilt = _main(["sweep", "--report", str(root / "out")])
    finally:
        METHODS.unregister(LEARNER)
    return {"root": root, "out": root / "out", "first": first, "snapshot": snapshot, "again": again,
            "fresh": fresh, "rebuilt": rebuilt}


@pytest.mark.slow
def test_the_sweep_runs_and_announces_each_level(swept):
    code, stdout, stderr = swept["first"]
    assert code == 0, stderr
    assert f"level 1/2: obvious (contrast ×1) -> {swept['out'] / 'obvious'}" in stderr
    faint = CONSPICUITY_LEVELS["faint"].contrast
    assert f"level 2/2: faint (contrast ×{faint:g}) -> {swept['out'] / 'faint'}" in stderr
    assert stderr.index("level 1/2") < stderr.index("plan:") < stderr.index("level 2/2")  # the run's plan inside
    assert "obvious: done in" in stdout and "trained 1 (sweep-test-cam)" in stdout
    assert str(swept["out"] / "sweep.md") in stdout


@pytest.mark.slow
def test_one_ordinary_run_folder_per_level_with_the_level_in_its_manifest(swept):
    keys = set()
    for level in LEVELS:
        folder = swept["out"] / level
        manifest = json.loads((folder / "manifest.json").read_text())
        assert manifest["config"]["dataset_options"] == [["conspicuity", level]]
        assert manifest["config"]["preset"] == "tiny" and manifest["config"]["methods"] == list(METHODS_RUN)
        assert (folder / "records.jsonl").exists() and (folder / "report" / "results.md").exists()
        keys.add(manifest["checkpoints"][LEARNER]["cache_key"])
    assert len(keys) == len(LEVELS)  # each level trains its own checkpoint
    assert [level for level, _ in level_folders(swept["out"])] == list(LEVELS)


@pytest.mark.slow
def test_the_measured_conspicuity_falls_with_the_level(swept):
    measured = {level: json.loads((swept["out"] / level / "conspicuity.json").read_text()) for level in LEVELS}
    for level in LEVELS:
        assert measured[level]["dataset"]["conspicuity"]["level"] == level and measured[level]["images"] == 8
    for cls in CLASSES:
        easy, hard = (measured[level]["classes"][cls] for level in LEVELS)
        assert easy["lesions"] == hard["lesions"] > 0  # the same lesions, drawn fainter
        assert easy["contrast_median"] > hard["contrast_median"]


@pytest.mark.slow
def test_the_report_holds_one_row_per_method_level_and_class(swept):
    out = swept["out"]
    for name in ("sweep.md", "sweep.pdf"):
        assert (out / name).stat().st_size > 0
    table = pd.read_csv(io.BytesIO(swept["snapshot"]["sweep.csv"]))
    assert list(table.columns) == SWEEP_COLUMNS
    assert len(table) == len(METHODS_RUN) * len(LEVELS) * len(CLASSES)
    assert not table.duplicated(["method", "level", "class"]).any()
    # the values are the level's own report's
    for level in LEVELS:
        results = pd.read_csv(out / level / "report" / "results.csv").set_index(["method", "class"])
        mine = table[table["level"] == level].set_index(["method", "class"])
        for column in ("dice_val_tau", "pxap"):
            pd.testing.assert_series_equal(mine[column].sort_index(), results.loc[mine.index, column].sort_index(),
                                           check_names=False, rtol=1e-5)
    # baselines are the floor; the learned method has a verdict against it at every level and class
    assert set(table.loc[table["method"].isin(BASELINES), "verdict"].fillna("")) == {""}
    learned = table[table["method"] == LEARNER]
    assert set(learned["verdict"]) <= {summary.ABOVE, summary.UNCLEAR, summary.BELOW}
    floor = table[table["method"].isin(BASELINES)].groupby(["level", "class"])["pxap"].max()
    for _, row in table[table["method"] == LEARNER].iterrows():
        assert row["floor_pxap"] == pytest.approx(floor[(row["level"], row["class"])], rel=1e-5)
    markdown = swept["snapshot"]["sweep.md"].decode()
    assert "## Where each method breaks" in markdown and "![" in markdown
    for cls in CLASSES:
        assert f"### {cls} lesions" in markdown
    assert markdown.count(f"| {LEARNER} | learned |") == len(CLASSES)


@pytest.mark.slow
def test_a_rerun_reuses_every_record_and_a_new_folder_every_checkpoint(swept):
    code, stdout, stderr = swept["again"]
    assert code == 0, stderr
    for level in LEVELS:
        assert f"{level}: done in" in stdout
    assert "trained 0" in stdout and "0 image(s) scored" in stdout and "trained 1" not in stdout
    code, stdout, stderr = swept["fresh"]
    assert code == 0, stderr
    assert stdout.count(f"trained 0; checkpoints reused 1 ({LEARNER})") == len(LEVELS)
    fresh = pd.read_csv(swept["root"] / "fresh" / "sweep.csv")
    first = pd.read_csv(io.BytesIO(swept["snapshot"]["sweep.csv"]))
    pd.testing.assert_frame_equal(fresh, first)  # the same checkpoints give the same numbers


@pytest.mark.slow
def test_report_rebuilds_the_same_tables_from_the_level_folders(swept):
    code, stdout, stderr = swept["rebuilt"]
    assert code == 0, stderr
    out = swept["out"]
    assert (out / "sweep.csv").read_bytes() == swept["snapshot"]["sweep.csv"]
    assert (out / "sweep.md").read_bytes() == swept["snapshot"]["sweep.md"]
    assert (out / "sweep.png").stat().st_size > 0


@pytest.mark.parametrize("extra, message", [
    (["--levels", "obvious,blinding"], "--levels: unknown conspicuity level 'blinding'; known levels"),
    (["--levels", "real"], "--levels: a sweep needs at least two levels"),
    (["--dataset", "folder"], "--dataset folder: a sweep runs on the synthetic dataset only"),
    (["--dataset-option", "conspicuity=faint"], "--dataset-option conspicuity: the sweep sets it per level"),
    (["--dataset-option", "lesion_contrast=0.5"], "--dataset-option lesion_contrast: the sweep sets it per level"),
    (["--methods", "camm"], "unknown method 'camm'"),
])
def test_bad_input_is_one_line_and_exit_2(extra, message, tmp_path):
    out = tmp_path / "out"
    code, stdout, stderr = _main(["sweep", "--preset", "tiny", "--methods", "intensity", "--out", str(out),
                                  "--no-progress", *extra])
    assert code == 2
    errors = [line for line in stderr.splitlines() if line.startswith("wsl-bench: error:")]
    assert len(errors) == 1 and message in errors[0], stderr
    assert "Traceback" not in stderr and not out.exists()


def test_report_of_a_folder_without_levels_is_one_line_and_exit_2(tmp_path):
    code, _, stderr = _main(["sweep", "--report", str(tmp_path)])
    assert code == 2 and f"wsl-bench: error: {tmp_path}: no level folder" in stderr and "Traceback" not in stderr


def _fake_level(out: Path, level: str, preset: str) -> None:
    folder = out / level
    folder.mkdir(parents=True)
    config = {"dataset": "synthetic", "preset": preset, "seed": 0, "split": "test", "methods": ["intensity"],
              "dataset_options": [["conspicuity", level]]}
    (folder / "manifest.json").write_text(json.dumps({"config": config}))


def test_level_folders_of_other_settings_are_not_one_sweep(tmp_path):
    _fake_level(tmp_path, "real", "tiny")
    _fake_level(tmp_path, "obvious", "cpu")
    with pytest.raises(SweepError, match="preset"):
        level_folders(tmp_path)


def test_levels_are_ordered_most_conspicuous_first_and_the_help_lists_them():
    assert SWEEP_LEVELS == tuple(CONSPICUITY_LEVELS)
    assert parse_levels(None) == tuple(CONSPICUITY_LEVELS)
    assert parse_levels("faint, obvious") == ("obvious", "faint")


def test_default_methods_are_the_registered_ones_of_the_list():
    names = default_sweep_methods()
    assert names[:6] == ["glam", "gmic", "cam", "gradcam++", "intensity", "centre_prior"]
    assert names == [m for m in SWEEP_METHODS if m in METHODS]
    if "fsl" not in METHODS:  # a supervised reference point joins as soon as it is registered
        METHODS.register("fsl", _TwoLayerCam)
        try:
            assert "fsl" in default_sweep_methods()
        finally:
            METHODS.unregister("fsl")


@pytest.mark.parametrize("verdicts, breaks_at, cell, words", [
    ((summary.ABOVE, summary.UNCLEAR, summary.ABOVE), None, "none",
     "beats the floor at every level judged (not distinguishable from it at `clear`)"),
    ((summary.ABOVE, summary.UNCLEAR, summary.BELOW), "real", "`real`",
     "beats the floor down to `clear` and first fails at `real`"),
    ((summary.ABOVE, summary.BELOW, summary.ABOVE), "clear", "`clear`", "(it beats it again at `real`)"),
    ((summary.BELOW, summary.BELOW, summary.BELOW), "obvious", "never beats it",
     "does not beat the floor at any level judged, not even `obvious`"),
    ((summary.UNJUDGED, summary.BELOW, summary.ABOVE), "clear", "`clear`",
     "does not beat the floor at `clear`, the most conspicuous level judged, but beats it at `real`"),
    ((summary.UNJUDGED,) * 3, None, "–", "not judged at any level"),
])
def test_where_a_method_breaks(verdicts, breaks_at, cell, words):
    item = Breakdown("cam", tuple(zip(("obvious", "clear", "real"), verdicts, strict=True)))
    assert item.breaks_at == breaks_at and item.cell() == cell
    assert words in item.sentence()


def test_sweep_help_does_not_import_torch():
    probe = ("import atexit, sys; atexit.register(lambda: print('torch imported:', 'torch' in sys.modules, "
             "file=sys.stderr)); from wsl_bench.cli import main; sys.exit(main(['sweep', '--help']))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "torch imported: False" in done.stderr, done.stderr
    assert "--levels" in done.stdout and ", ".join(SWEEP_LEVELS) in " ".join(done.stdout.split())
