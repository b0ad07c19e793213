"""Numbers a report must not show, plugins that must not end a run, and the smaller refusals
(issue 24, items 4, 5 and 10).

* Records are checked against the run's images and value ranges, a manifest from another run does
  not title these records, and a report built from part of the records says what is missing.
* A plugin method that raises in its constructor, calls ``sys.exit()`` or raises
  ``KeyboardInterrupt`` in ``predict``, or returns a map of 20000² pixels fails that method alone
  (failed records with the reason, a line in the summary); later methods run and the report is
  written. A real Ctrl-C still stops the run.
* NaN weights and ``--option x=NaN`` are refused at once; images written by ``data synth`` and
  ``data prepare nyu`` follow the umask; ``verify --help`` says it runs the checkout's code.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from wsl_bench.cli import main
from wsl_bench.evaluation.records import read_records
from wsl_bench.registry import DATASETS, METHODS, load_builtins

RUN = ["--dataset", "toy", "--preset", "tiny", "--no-progress"]


def exit_code(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exit_info:
        return exit_info.code


def results(run: Path) -> dict[tuple[str, str], dict[str, str]]:
    with open(run / "report" / "results.csv", newline="") as handle:
        return {(r["method"], r["class"]): r for r in csv.DictReader(handle)}


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    """One finished run of the module, made once (with ``toy`` registered and a cache of its own)."""
    from conftest import finished_toy_run

    return finished_toy_run(tmp_path_factory, ["--methods", "intensity,random", *RUN])


@pytest.fixture
def finished_run(toy_dataset, reference_run, tmp_path):
    """A copy of the module's finished run, for one test to damage."""
    out = tmp_path / "run"
    shutil.copytree(reference_run, out, symlinks=True)
    return out


def _rewrite(path: Path, edit) -> None:
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    path.write_text("".join(json.dumps(r) + "\n" for r in edit(lines)))


# ------------------------------------------------------------------------------- 4: wrong numbers, exit 0
@pytest.mark.slow
def test_a_record_of_an_image_not_in_the_dataset_is_not_counted(finished_run, capsys):
    before = results(finished_run)

    def add_stranger(records):
        lesion = next(r for r in records if r["method"] == "intensity" and r["split"] == "test"
                      and r["has_lesion"]["malignant"])
        return [*records, {**lesion, "image_id": "not-in-the-dataset"}]

    _rewrite(finished_run / "records.jsonl", add_stranger)
    assert exit_code(["report", str(finished_run)]) == 0
    key = ("intensity", "malignant")
    assert results(finished_run)[key]["n_images"] == before[key]["n_images"]
    # a resumed run drops it too, and is complete
    assert exit_code(["run", "--methods", "intensity,random", *RUN, "--out", str(finished_run)]) == 0
    assert "not-in-the-dataset" not in {r["image_id"] for r in read_records(finished_run / "records.jsonl")}
    after = results(finished_run)
    assert {key: row["n_images"] for key, row in after.items()} == {key: row["n_images"] for key, row in before.items()}


@pytest.mark.slow
def test_values_out_of_range_are_never_reported(finished_run):
    def implausible(records):
        for record in records:
            if record["method"] == "intensity" and record["split"] == "test" and record["has_lesion"]["benign"]:
                record["dice"]["benign"] = 1e308
                break
        return records

    _rewrite(finished_run / "records.jsonl", implausible)
    assert exit_code(["report", str(finished_run)]) == 0
    row = results(finished_run)[("intensity", "benign")]
    assert 0.0 <= float(row["dice_at_0_5"]) <= 1.0
    assert "no record for 1 of 6 evaluated images" in (finished_run / "report" / "results.md").read_text()


@pytest.mark.slow
def test_a_manifest_from_another_run_does_not_title_these_records(finished_run, tmp_path, capsys):
    other = tmp_path / "other"
    data = tmp_path / "data"
    from wsl_bench.datasets.folder import write_synthetic

    write_synthetic(data, 12, (64, 48), seed=0, progress=False, split_counts={"train": 4, "val": 4, "test": 4})
    assert exit_code(["run", "--methods", "centre_prior", "--dataset", "folder", "--data-root", str(data),
                      "--preset", "tiny", "--no-progress", "--out", str(other)]) == 0
    (finished_run / "manifest.json").write_bytes((other / "manifest.json").read_bytes())
    capsys.readouterr()
    status = exit_code(["report", str(finished_run)])
    err = capsys.readouterr().err
    assert status == 1 and "manifest.json" in err.strip().splitlines()[-1], err
    assert "`folder`" not in (finished_run / "report" / "results.md").read_text()  # the old report stays


@pytest.mark.slow
def test_a_report_from_part_of_the_records_says_what_is_missing(finished_run):
    def half(records):
        tests = [r for r in records if r["method"] == "intensity" and r["split"] == "test"]
        dropped = {r["image_id"] for r in tests[: len(tests) // 2]}
        return [r for r in records if not (r["method"] == "intensity" and r["image_id"] in dropped)]

    _rewrite(finished_run / "records.jsonl", half)
    assert exit_code(["report", str(finished_run)]) == 0
    markdown = (finished_run / "report" / "results.md").read_text()
    assert "Incomplete" in markdown and "- intensity: no record for 3 of 6 evaluated images" in markdown
    assert "- random:" not in markdown.split("Incomplete", 1)[1].split("\n\n", 2)[1]
    assert "no record for 3 of 6 evaluated images" in (finished_run / "report" / "index.html").read_text()


@pytest.mark.slow
def test_a_report_over_training_seeds_counts_the_missing_records_of_every_seed(tmp_path):
    """A run of several training seeds reports what each seed lacks: part of one seed's records, or a
    seed with no record at all (the missing count of the first seed alone said nothing)."""
    sys.path.insert(0, str(Path(__file__).parent))
    from test_seeds import _fake_seed_run

    from wsl_bench.report.tables import build_report

    run_dir = _fake_seed_run(tmp_path / "run")
    manifest = json.loads((run_dir / "manifest.json").read_text())
    records = read_records(run_dir / "records.jsonl")
    manifest["image_ids"] = {split: sorted({r["image_id"] for r in records if r["split"] == split})
                             for split in ("test", "val")}
    (run_dir / "manifest.json").write_text(json.dumps(manifest))
    tests = manifest["image_ids"]["test"]
    kept = [r for r in records
            if not (r["method"] == "cam" and r["seed"] == 1 and r["split"] == "test" and r["image_id"] in tests[:5])
            and not (r["method"] == "glam" and r["seed"] == 2)]
    (run_dir / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kept))
    build_report(run_dir, run_dir / "report")
    markdown = (run_dir / "report" / "results.md").read_text()
    n, v = len(tests), len(manifest["image_ids"]["val"])
    assert f"- cam: no record for 5 of {3 * n} evaluated images" in markdown
    assert f"- glam: no record for {n} of {3 * n} evaluated images and {v} of {3 * v} validation images" in markdown
    assert "- random:" not in markdown.split("Incomplete", 1)[1].split("\n\n", 2)[1]


# ------------------------------------------------------------------------------- 5: plugins
PLUGINS = '''
import os
import signal
import sys

import torch
from wsl_bench.saliency import SaliencyMethod, SaliencyOutput, TrainableMethod


class Flat(SaliencyMethod):
    def predict(self, images):
        n = images.shape[0]
        return SaliencyOutput(torch.full((n, 2, 4, 4), 0.5), torch.full((n, 2), 0.5))


class Exits(Flat):
    def predict(self, images):
        sys.exit(0)


class RaisesInterrupt(Flat):
    def predict(self, images):
        raise KeyboardInterrupt("not from the keyboard")


class BrokenConstructor(Flat):
    trainable = True  # so that even the run's plan, which looks for what to train, builds it

    def __init__(self, **kwargs):
        raise RuntimeError("the plugin's constructor is broken")


class HugeMap(Flat):
    def predict(self, images):
        n = images.shape[0]  # a view: 20000x20000 maps that cost nothing until someone reads them
        return SaliencyOutput(torch.zeros(1, 1, 1, 1).expand(n, 2, 20000, 20000), torch.full((n, 2), 0.5))


class CtrlC(Flat):
    def predict(self, images):
        os.kill(os.getpid(), signal.SIGINT)  # the user pressing Ctrl-C while the method runs
        return super().predict(images)


class TrainingBreaks(TrainableMethod):
    def __init__(self, device="cpu", seed=0, image_size=None):
        super().__init__(device=device, seed=seed, image_size=image_size)
        self.net = torch.nn.Conv2d(1, 2, 1)

    def network(self):
        return self.net

    def training_loss(self, images, labels, pos_weight=None):
        raise RuntimeError("the plugin's training is broken")

    def predict(self, images):
        n = images.shape[0]
        return SaliencyOutput(torch.full((n, 2, 4, 4), 0.5), torch.full((n, 2), 0.5))
'''
PLUGIN_NAMES = {"exits-plugin": "Exits", "interrupt-plugin": "RaisesInterrupt", "broken-plugin": "BrokenConstructor",
                "huge-map-plugin": "HugeMap", "ctrl-c-plugin": "CtrlC", "train-broken-plugin": "TrainingBreaks"}


def _site(root: Path) -> Path:
    """A folder holding the plugin package ``hostile_plugins`` as if it were pip-installed."""
    site = root / "site"
    (site / "hostile_plugins").mkdir(parents=True)
    (site / "hostile_plugins" / "__init__.py").write_text(textwrap.dedent(PLUGINS))
    info = site / "hostile_plugins-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: hostile-plugins\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        "[wsl_bench.methods]\n" + "".join(f"{name} = hostile_plugins:{cls}\n" for name, cls in PLUGIN_NAMES.items()))
    return site


@pytest.fixture
def hostile_plugins(tmp_path, monkeypatch):
    load_builtins()
    monkeypatch.syspath_prepend(str(_site(tmp_path)))
    for registry in (METHODS, DATASETS):
        monkeypatch.setattr(registry, "_entry_points_loaded", False)
        monkeypatch.setattr(registry, "_entries", dict(registry._entries))
        monkeypatch.setattr(registry, "_plugins", {})
    yield
    sys.modules.pop("hostile_plugins", None)


@pytest.mark.slow
def test_a_plugins_failure_is_that_methods_failure(toy_dataset, hostile_plugins, tmp_path, capsys):
    out = tmp_path / "run"
    status = exit_code(["run", "--methods", "exits-plugin,broken-plugin,interrupt-plugin,intensity", *RUN,
                        "--out", str(out)])
    captured = capsys.readouterr()
    assert status == 1, captured.err
    assert "Traceback" not in captured.err
    records = read_records(out / "records.jsonl")
    by_method = {m: [r for r in records if r["method"] == m] for m in ("exits-plugin", "broken-plugin",
                                                                         "interrupt-plugin", "intensity")}
    assert all(len(rs) == 14 for rs in by_method.values())  # 6 test + 8 validation images each
    assert {r["status"] for r in by_method["intensity"]} == {"ok"}
    assert all(r["status"] == "failed" and "SystemExit" in r["error"] for r in by_method["exits-plugin"])
    assert all(r["status"] == "failed" and "KeyboardInterrupt" in r["error"] for r in by_method["interrupt-plugin"])
    assert all(r["status"] == "failed" and "the plugin's constructor is broken" in r["error"]
               for r in by_method["broken-plugin"])
    assert (out / "report" / "index.html").is_file()
    summary = {line.split(":")[0].strip(): line for line in captured.out.splitlines() if line.startswith("  ")}
    assert "failed 14" in summary["exits-plugin"] and "failed 14" in summary["interrupt-plugin"]
    assert "failed 14" in summary["broken-plugin"] and "constructor is broken" in summary["broken-plugin"]


@pytest.mark.slow
def test_a_plugin_whose_training_fails_fails_each_training_seed_and_the_run_goes_on(toy_dataset, hostile_plugins,
                                                                                     tmp_path, capsys):
    """With ``--seeds`` a plugin's failed training is that seed's failure: failed records of each seed
    with the reason, a summary line per seed; the method after it runs and the report is written."""
    out = tmp_path / "run"
    status = exit_code(["run", "--methods", "train-broken-plugin,intensity", "--seeds", "0,1", *RUN,
                        "--out", str(out)])
    captured = capsys.readouterr()
    assert status == 1, captured.err
    assert "Traceback" not in captured.err
    records = read_records(out / "records.jsonl")
    broken = [r for r in records if r["method"] == "train-broken-plugin"]
    assert sorted({r["seed"] for r in broken}) == [0, 1] and len(broken) == 2 * 14  # 6 test + 8 validation
    assert all(r["status"] == "failed" and "could not be trained" in r["error"]
               and "the plugin's training is broken" in r["error"] for r in broken)
    assert {r["status"] for r in records if r["method"] == "intensity"} == {"ok"}
    assert (out / "report" / "index.html").is_file()
    summary = {line.split(":")[0].strip(): line for line in captured.out.splitlines() if line.startswith("  ")}
    for seed in (0, 1):
        line = summary[f"train-broken-plugin (seed {seed})"]
        assert "failed 14" in line and "training is broken" in line


def test_a_real_ctrl_c_still_stops_the_run(toy_dataset, hostile_plugins, tmp_path, capsys):
    out = tmp_path / "run"
    assert exit_code(["run", "--methods", "ctrl-c-plugin,intensity", *RUN, "--out", str(out)]) == 130
    assert "interrupted" in capsys.readouterr().err
    assert not [r for r in read_records(out / "records.jsonl") if r["method"] == "intensity"]


@pytest.mark.slow
def test_a_plugin_map_of_20000_squared_pixels_fails_its_records_within_the_memory_bound(tmp_path):
    """In a subprocess with the address-space cap of ``test_adversarial_limits`` (the plugin installed
    through ``PYTHONPATH``): refused from its shape, before the harness reads or resizes it."""
    sys.path.insert(0, str(Path(__file__).parent))
    from test_adversarial_limits import capped

    from wsl_bench.datasets.folder import write_synthetic

    data = tmp_path / "data"
    write_synthetic(data, 12, (64, 48), seed=0, progress=False, split_counts={"train": 4, "val": 4, "test": 4})
    site = _site(tmp_path)
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([str(site), old or ""])
    try:
        out = tmp_path / "run"
        status, stderr, grew = capped(["run", "--methods", "huge-map-plugin,intensity", "--dataset", "folder",
                                       "--data-root", str(data), "--preset", "tiny", "--no-progress", "--out",
                                       str(out)], tmp_path)
    finally:
        if old is None:
            os.environ.pop("PYTHONPATH")
        else:
            os.environ["PYTHONPATH"] = old
    assert status == 1, stderr[-3000:]
    records = read_records(out / "records.jsonl")
    huge = [r for r in records if r["method"] == "huge-map-plugin"]
    assert huge and all(r["status"] == "failed" and "MAX_IMAGE_PIXELS" in r["error"] for r in huge)
    assert {r["status"] for r in records if r["method"] == "intensity"} == {"ok"}
    assert grew < 1024


# ------------------------------------------------------------------------------- 10: smaller
def test_nan_weights_are_refused_at_load_naming_the_file(toy_dataset, tmp_path, capsys):
    from wsl_bench.evaluation.harness import RunConfig
    from wsl_bench.pipeline import create_run_method

    network = create_run_method("glam", RunConfig(methods=("glam",), dataset="toy", preset="tiny")).method.network()
    state = {k: v.clone() for k, v in network.state_dict().items()}
    first = next(k for k, v in state.items() if v.is_floating_point())
    state[first].view(-1)[0] = float("nan")
    weights = tmp_path / "nan.pt"
    torch.save(state, weights)
    assert exit_code(["run", "--methods", "glam", *RUN, "--weights", str(weights), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    line = [x for x in err.splitlines() if x.startswith("wsl-bench: error:")]
    assert len(line) == 1 and str(weights) in line[0] and "NaN" in line[0] and first in line[0]
    assert not (tmp_path / "run" / "records.jsonl").exists() or not read_records(tmp_path / "run" / "records.jsonl")


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity", "[1, NaN]"])
def test_a_non_finite_option_is_refused(toy_dataset, tmp_path, value, capsys):
    assert exit_code(["run", "--methods", "centre_prior", *RUN, "--option", f"sigma_fraction={value}", "--out",
                      str(tmp_path / "run")]) == 2
    assert not (tmp_path / "run").exists()
    assert "not a finite number" in capsys.readouterr().err


@pytest.fixture
def umask_022():
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def test_data_synth_images_follow_the_umask(tmp_path, umask_022):
    out = tmp_path / "synth"
    assert exit_code(["data", "synth", "--out", str(out), "--n", "6", "--size", "64x48"]) == 0
    written = [p for p in out.rglob("*.png")]
    assert written and {oct(p.stat().st_mode & 0o777) for p in written} == {oct(0o644)}


def test_data_prepare_nyu_images_follow_the_umask(tmp_path, umask_022):
    sys.path.insert(0, str(Path(__file__).parent))
    from test_nyu_prepare import VIEWS, raw_exam, small_raw, write_raw_list

    from wsl_bench.datasets._imageio import write_png16

    src, out = tmp_path / "raw", tmp_path / "prepared"
    for view in VIEWS:
        write_png16(src / "images" / f"0_{view}.png", small_raw(view, "NO"))
    write_raw_list(src, [raw_exam(0, "NO")])
    assert exit_code(["data", "prepare", "nyu", "--src", str(src), "--out", str(out), "--workers", "1",
                      "--no-progress"]) in (0, 1)
    written = list((out / "cropped_images").glob("*.png"))
    assert written and {oct(p.stat().st_mode & 0o777) for p in written} == {oct(0o644)}


def test_verify_help_says_it_runs_the_checkouts_code():
    done = subprocess.run([sys.executable, "-m", "wsl_bench", "verify", "--help"], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)})
    text = " ".join(done.stdout.split())
    assert done.returncode == 0 and "imports and runs the Python code of the checkout" in text
    listing = subprocess.run([sys.executable, "-m", "wsl_bench", "--help"], capture_output=True, text=True,
                             env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)})
    assert "imports and runs that checkout's Python code" in " ".join(listing.stdout.split())
