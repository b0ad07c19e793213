"""``wsl-bench run`` says what it will do, how far it is, and what it did (issue 16, items 6 and 8a)."""

from __future__ import annotations

import io
import json

import pytest

from wsl_bench.cli import main
from wsl_bench.estimates import (
    REFERENCE_TRAININGS,
    VALIDATION_SHARE,
    TrainingWork,
    network_fingerprint,
    timing_facts,
    training_estimate,
)
from wsl_bench.run_progress import RunPlan, RunProgress, report_top_lines


def run_cli(argv, capsys):
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.slow
def test_a_first_run_prints_its_plan_then_a_summary_and_a_second_one_reuses_the_checkpoint(toy_dataset, tmp_path,
                                                                                           capsys, isolated_cache):
    common = ["--methods", "cam,intensity,random", "--dataset", "toy", "--preset", "tiny", "--no-progress"]
    code, out, err = run_cli(["run", *common, "--out", str(tmp_path / "first")], capsys)
    assert code == 0, err
    plan = [line for line in err.splitlines() if line.startswith(("plan:", "  "))]
    assert plan[0].startswith("plan: train 1 method(s) first, about ")
    assert any(line.strip().startswith("train cam") and "(reference)" in line for line in plan)
    assert any("then score 3 method(s) on 6 test + 8 val images each (42 images in all" in line for line in plan)
    assert "|" not in err  # --no-progress: no bar, the plan only
    summary = out.splitlines()[0]
    assert summary.startswith("done in ") and "trained 1 (cam)" in summary and "checkpoints reused 0" in summary
    assert "evaluated 3 (cam, intensity, random): 42 image(s) scored" in summary and "failed 0" in summary
    assert f"report:  {tmp_path / 'first' / 'report' / 'results.md'}" in out
    lines = out.splitlines()
    lead = next(i for i, line in enumerate(lines) if line.startswith(f"from {tmp_path / 'first' / 'report'}"))
    assert any(line.startswith("  | ") for line in lines[lead + 1:])  # the report's lead tables follow

    # the training kept its work beside its time: the next plan's estimate of it is measured here
    folder = next(isolated_cache.glob("checkpoints/cam/*/timing.json")).parent
    timing = json.loads((folder / "timing.json").read_text())
    network = network_fingerprint(json.loads((folder / "key.json").read_text()))
    assert timing["device"] == "cpu" and timing["stage_epochs"] == 1 and timing["train_images"] == 24
    assert timing["val_images"] == 8 and timing["image_size"] == [256, 160] and timing["preset"] == "tiny"
    assert timing["network"] == network and timing["start_validations"] == 1  # the trainer validates epoch 0
    work = TrainingWork(1, 24, 8, (256, 160), "tiny", network, 1)
    same = training_estimate("cam", "cpu", work, isolated_cache / "checkpoints")
    assert same.source == "measured here" and same.seconds == pytest.approx(timing["training_seconds"], abs=0.06)
    double = training_estimate("cam", "cpu", TrainingWork(2, 24, 8, (256, 160), "tiny", network, 1),
                               isolated_cache / "checkpoints")
    assert double.seconds - work.overhead() > 1.9 * (same.seconds - work.overhead())  # twice the epochs
    elsewhere = TrainingWork(1, 24, 8, (256, 160), "tiny", "another-network")  # measured rates: same network only
    assert training_estimate("cam", "cpu", elsewhere, isolated_cache / "checkpoints").source == "reference"
    assert training_estimate("cam", "cuda", work, isolated_cache / "checkpoints").source == "reference"

    code, out, err = run_cli(["run", *common, "--out", str(tmp_path / "second")], capsys)
    assert code == 0, err
    assert "plan: nothing to train" in err and "reused from the checkpoint cache: cam" in err
    assert "trained 0; checkpoints reused 1 (cam)" in out.splitlines()[0]


def test_estimates_fall_back_to_the_reference_and_scale_with_the_work(tmp_path):
    reference = TrainingWork(12, 320, 40, (368, 240), "cpu")
    small = training_estimate("gmic", "cpu", reference, tmp_path)
    assert small.source == "reference" and small.seconds == pytest.approx(380.7)  # the reference training itself
    large = training_estimate("gmic", "cpu", TrainingWork(12, 320, 40, (736, 480), "cpu"), tmp_path)
    assert large.seconds - reference.overhead() == pytest.approx(4 * (380.7 - reference.overhead()))
    facts = timing_facts(12.34, "cuda:1", TrainingWork(3, 10, 4, (64, 48), "tiny", "abc", 2))
    assert facts == {"training_seconds": 12.3, "device": "cuda", "stage_epochs": 3, "train_images": 10,
                     "val_images": 4, "image_size": [64, 48], "preset": "tiny", "network": "abc",
                     "start_validations": 2}


@pytest.mark.parametrize("preset", sorted(REFERENCE_TRAININGS))
def test_each_reference_training_is_estimated_as_it_was_measured(preset, tmp_path):
    """The plan of a preset's reference run gives back that run's measured times (the tiny smoke run's
    are the ones README states; benchmarks/smoke_run.py checks a new run against them within 1.5×)."""
    for method, (seconds, work) in REFERENCE_TRAININGS[preset].items():
        assert training_estimate(method, "cpu", work, tmp_path).seconds == pytest.approx(seconds)


def test_the_work_counts_every_stage_and_the_validation_images():
    glam_cpu = REFERENCE_TRAININGS["cpu"]["glam"][1]
    assert glam_cpu.stage_epochs == 3 + 4 + 2  # GLAM's global, local and joint stages at 12 epochs
    plain = TrainingWork(9, 320, 0, (368, 240))
    assert glam_cpu.units() == pytest.approx(plain.units() * (320 + VALIDATION_SHARE * 40) / 320)
    assert TrainingWork(9, 320, 40, (736, 480)).units() == pytest.approx(4 * glam_cpu.units())
    # each stage's starting network is validated too (epoch 0): three more validation passes for GLAM
    started = TrainingWork(9, 320, 40, (368, 240), start_validations=3)
    assert started.units() - glam_cpu.units() == pytest.approx(3 * VALIDATION_SHARE * 40)


def test_the_work_of_a_training_is_what_its_job_trains_and_validates(isolated_cache):
    """An epoch is the preset's epoch_images where it sets them (the cpu preset: 320 of 3840 training
    images), every stage validates its start, and a training on masks (fsl) has no validation split."""
    from wsl_bench.evaluation.harness import RunConfig
    from wsl_bench.pipeline import create_trainee, training_job, training_work

    def work(method: str, preset: str) -> TrainingWork:
        config = RunConfig(methods=(method,), preset=preset)
        return training_work(training_job(create_trainee(method, config), config), config)

    cam, glam, fsl = work("cam", "cpu"), work("glam", "cpu"), work("fsl", "tiny")
    assert (cam.stage_epochs, cam.train_images, cam.val_images, cam.start_validations) == (12, 320, 120, 1)
    assert (glam.stage_epochs, glam.start_validations) == (3 + 4 + 2, 3)
    assert fsl.val_images == 0 and fsl.start_validations == 0 and fsl.train_images == 8


def test_a_preset_without_a_reference_training_borrows_the_cpu_presets_rate(tmp_path):
    gpu = training_estimate("cam", "cpu", TrainingWork(12, 320, 40, (2944, 1920), "gpu"), tmp_path)
    cpu = training_estimate("cam", "cpu", TrainingWork(12, 320, 40, (2944, 1920), "cpu"), tmp_path)
    assert gpu.source == cpu.source == "reference" and gpu.seconds == pytest.approx(cpu.seconds)
    plugin = training_estimate("my_plugin", "cpu", TrainingWork(12, 320, 40, (368, 240), "cpu"), tmp_path)
    assert plugin.seconds == pytest.approx(380.7)  # as slow as the slowest reference (GMIC)


def test_the_plan_counts_every_stage_of_glams_recipe(isolated_cache):
    """The plan of the smoke run estimates each training as its reference measured it: GLAM's three
    stages (one epoch each at the tiny preset) and the validation images included."""
    from wsl_bench.evaluation.harness import RunConfig
    from wsl_bench.pipeline import plan_run

    methods = ("glam", "gmic", "cam")
    config = RunConfig(methods=methods, preset="tiny")
    pending = {name: {seed: 16 for seed in config.training_seeds()} for name in methods}  # 8 test + 8 val images
    plan = plan_run(config, pending, "8 test + 8 val images")
    estimates = {t.method: t.estimate for t in plan.train}
    for method in ("glam", "gmic", "cam"):
        assert estimates[method].source == "reference"
        assert estimates[method].seconds == pytest.approx(REFERENCE_TRAININGS["tiny"][method][0])


def test_the_overall_bar_counts_estimated_seconds_across_items_and_reaches_the_end():
    stream = io.StringIO()
    progress = RunProgress(stream, bars=True)
    progress.expect(("train", "k"), 30.0)
    progress.expect(("evaluate", "cam"), 10.0)
    progress.show_plan(RunPlan())
    progress.stage("train cam")
    progress.done(("train", "k"))
    assert progress._bar.n == pytest.approx(30.0) and progress._bar.total == pytest.approx(40.0)
    progress.expect(("evaluate", "cam"), 4.0)  # the run found fewer images to score than planned
    for _ in range(10):
        progress.tick(("evaluate", "cam"), 1.0)  # never beyond what the item was expected to cost
    assert progress._bar.n == pytest.approx(34.0) and progress._bar.total == pytest.approx(34.0)
    progress.close()
    assert "plan: nothing to train" in stream.getvalue() and "100%" in stream.getvalue()


def test_a_silent_tracker_prints_nothing():
    progress = RunProgress(None)
    progress.expect("x", 1.0)
    progress.show_plan(RunPlan())
    progress.done("x")
    progress.close()  # nothing to show, nothing raised


@pytest.mark.slow
def test_a_subset_run_says_the_report_covers_every_method_of_the_folder(toy_dataset, tmp_path, capsys):
    out = tmp_path / "run"
    common = ["--dataset", "toy", "--preset", "tiny", "--out", str(out), "--no-progress"]
    code, stdout, _ = run_cli(["run", "--methods", "intensity,random,centre_prior", *common], capsys)
    assert code == 0 and "report rebuilt for all" not in stdout
    code, stdout, _ = run_cli(["run", "--methods", "intensity", *common], capsys)
    assert code == 0
    assert ("report rebuilt for all 3 methods of the folder, not only this run's 1: also random, centre_prior "
            "(from earlier runs)") in stdout


def test_the_report_lead_is_the_section_of_its_first_tables_each_shortened(tmp_path):
    rows = "\n".join(f"| {i} | m{i} |" for i in range(1, 10))
    (tmp_path / "results.md").write_text(
        "# results\n\nintro\n\n## Summary: ranked\n\n### benign lesions\n\n| rank | method |\n|---|---|\n"
        f"{rows}\n\nnot clearly above the floor\n\n### malignant lesions\n\n| rank | method |\n|---|---|\n| 1 | x |\n"
        "\n## All results\n\n| method | class |\n|---|---|\n| y | benign |\n")
    lines = report_top_lines(tmp_path, rows=2)
    assert lines == [f"from {tmp_path / 'results.md'}, Summary: ranked:", "  benign lesions", "  | rank | method |",
                     "  |---|---|", "  | 1 | m1 |", "  | 2 | m2 |", "  ...", "  malignant lesions",
                     "  | rank | method |", "  |---|---|", "  | 1 | x |"]


def test_the_plan_says_what_a_shared_training_serves(isolated_cache):
    """CAM's training is planned once: explainers explain its classifier, and GLAM and GMIC start their
    global network from it (the cpu preset's ``global_init``); each of those is its own line."""
    from wsl_bench.evaluation.harness import RunConfig
    from wsl_bench.pipeline import plan_run

    config = RunConfig(methods=("cam", "gradcam", "glam", "gmic", "intensity"), preset="cpu")
    # images still to score per training seed (seed 0); intensity trains nothing: under None
    pending = {name: {None if name == "intensity" else 0: 80} for name in config.methods}
    plan = plan_run(config, pending, "40 test + 40 val images")
    assert [t.method for t in plan.train] == ["cam", "glam", "gmic"]
    lines = plan.lines()
    cam = next(line for line in lines if line.startswith("  train cam"))
    assert cam.endswith("; explained by gradcam; glam and gmic then start their global network from it")
    assert all(line.endswith("(reference)") for line in lines if line.startswith(("  train glam", "  train gmic")))
    alone = plan_run(RunConfig(methods=("glam",), preset="cpu"), {"glam": {0: 80}}, "40 test + 40 val images")
    assert alone.lines()[1].endswith("(reference); glam then starts its global network from it")
