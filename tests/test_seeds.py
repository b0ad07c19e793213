"""Several training seeds in one run folder (issue 22 §3) and what a run records of the machine (§6).

``--seeds`` trains every trainable method once per training seed on the same images, keys each
training as a one-seed run would, resumes per seed, and reports mean ± sd over seeds with intervals
over test images of the seed mean; methods with nothing to train are scored once for every seed.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.distributed as dist
from report_fixtures import fake_run

from wsl_bench import cli, pipeline
from wsl_bench.evaluation import manifest as manifest_module
from wsl_bench.evaluation.harness import RunConfig, RunConfigMismatch
from wsl_bench.evaluation.metrics import bootstrap_ci, bootstrap_pxap_ci
from wsl_bench.evaluation.records import read_records
from wsl_bench.evaluation.seeds import checkpoint_facts, legacy_seeds
from wsl_bench.report import seeds as report_seeds
from wsl_bench.report import summary
from wsl_bench.report.tables import RunData, build_report, results_tables
from wsl_bench.training.distributed import DistContext
from wsl_bench.weights import load_checkpoint_file

TOY_COUNTS = {"train": 12, "val": 6, "test": 6}


def _config(methods: tuple[str, ...] = ("cam", "random"), **kw) -> RunConfig:
    """A run that trains in seconds: the toy images at their own size, a narrow CAM."""
    options = tuple((m, (("width", 0.125),)) for m in methods if m == "cam")
    return RunConfig(methods=methods, dataset="toy", preset="tiny", image_size=(64, 48), loader_workers=0,
                     method_options=options, **kw)


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines() if line.strip()]


def _exit_code(argv: list[str]) -> int:
    try:
        return cli.main(argv)
    except SystemExit as exit_info:
        return exit_info.code


# -- one run, several trainings ---------------------------------------------------------------------------------------
@pytest.mark.slow
def test_seeds_train_each_method_once_per_seed_on_the_same_images_and_one_report_gives_mean_and_sd(
    toy_dataset, tmp_path
):
    toy_dataset.counts = dict(TOY_COUNTS)
    out = tmp_path / "seeds"
    ran = pipeline.run(_config(seeds=(0, 1)), out, progress=False)
    assert ran.trained == ["cam (seed 0)", "cam (seed 1)"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["seeds"] == [0, 1]

    # distinct trainings: their own keys and weights
    by_seed = manifest["checkpoints_by_seed"]["cam"]
    assert set(by_seed) == {"0", "1"} and by_seed["0"]["seed"] == 0 and by_seed["1"]["seed"] == 1
    assert manifest["checkpoints"]["cam"] == by_seed["0"]  # where a one-seed run keeps its checkpoint
    assert by_seed["0"]["cache_key"] != by_seed["1"]["cache_key"]
    weights = [load_checkpoint_file(Path(by_seed[s]["path"]))["state_dict"] for s in ("0", "1")]
    assert any(not torch.equal(weights[0][k], weights[1][k]) for k in weights[0])

    # the same images for every seed; the baseline scored once, for every seed
    records = _records(out)
    images = {seed: {(r["split"], r["image_id"]) for r in records if r["method"] == "cam" and r["seed"] == seed}
              for seed in (0, 1)}
    assert images[0] == images[1] and len(images[0]) == TOY_COUNTS["val"] + TOY_COUNTS["test"]
    baseline = [r for r in records if r["method"] == "random"]
    assert len(baseline) == len(images[0]) and all(r["seed"] is None for r in baseline)
    assert (out / "done").exists()

    # one report: seed means, their sd and each seed's value, as each seed's own records give it
    results = pd.read_csv(out / "report" / "results.csv")
    cam = results[results["method"] == "cam"].set_index("class")
    one_seed = {s: results_tables(RunData.load(out).for_seed(s))[0].set_index(["method", "class"]) for s in (0, 1)}
    for cls, row in cam.iterrows():
        per_seed = [one_seed[s].loc[("cam", cls), "dice_val_tau"] for s in (0, 1)]
        close = {"rel": 1e-5}  # results.csv keeps 6 significant digits
        assert [row["dice_val_tau_seed0"], row["dice_val_tau_seed1"]] == pytest.approx(per_seed, **close)
        assert row["dice_val_tau"] == pytest.approx(np.mean(per_seed), **close)
        assert row["dice_val_tau_sd"] == pytest.approx(np.std(per_seed, ddof=1), **close)
        assert row["auc"] == pytest.approx(np.mean([one_seed[s].loc[("cam", cls), "auc"] for s in (0, 1)]), **close)
    assert (cam["n_seeds"] == 2).all()
    rnd = results[results["method"] == "random"]
    assert (rnd["n_seeds"] == 1).all() and rnd["dice_val_tau_sd"].isna().all()
    assert (rnd["dice_val_tau_seed0"] == rnd["dice_val_tau_seed1"]).all()  # one scoring serves both seeds
    markdown = (out / "report" / "results.md").read_text()
    assert "dataset seed 0, training seeds 0, 1" in markdown and "**Seeds.**" in markdown
    assert "Rank stability (benign, seeds 0, 1)" in markdown
    cam_line = next(line for line in markdown.splitlines() if line.startswith("| cam | benign |"))
    assert " ± " in cam_line
    assert "Rank stability" in (out / "report" / "index.html").read_text()

    # the report is rebuilt from the records alone
    assert cli.main(["report", str(out), "--out", str(tmp_path / "rebuilt")]) == 0
    for name in ("results.csv", "results.md", "details.csv"):
        assert (tmp_path / "rebuilt" / name).read_text() == (out / "report" / name).read_text()

    # a one-seed run (the same --seed) trains nothing: its checkpoint is seed 0's
    alone = pipeline.run(_config(), tmp_path / "one", progress=False, write_report=False)
    assert alone.trained == [] and alone.reused_checkpoints == ["cam"]
    one_manifest = json.loads((tmp_path / "one" / "manifest.json").read_text())
    assert one_manifest["checkpoints"]["cam"]["cache_key"] == by_seed["0"]["cache_key"]
    assert "checkpoints_by_seed" not in one_manifest

    # torchrun: every rank trains each seed together, evaluates its shard; rank 0 merges per seed
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        sharded = pipeline.run_sharded(_config(seeds=(0, 1)), tmp_path / "sharded", DistContext(0, 1, 0, "gloo"),
                                       progress=False)
    finally:
        dist.destroy_process_group()
    assert sharded.trained == []  # both seeds' checkpoints were in the cache
    key = lambda r: (r["method"], r["seed"], r["split"], r["image_id"])  # noqa: E731
    assert sorted(map(key, _records(tmp_path / "sharded"))) == sorted(map(key, records))
    assert (tmp_path / "sharded" / "done").exists()


@pytest.mark.slow
def test_the_manifest_and_the_report_header_record_the_cpu_torch_and_the_training_precision(
    toy_dataset, tmp_path, monkeypatch
):
    toy_dataset.counts = dict(TOY_COUNTS)
    # what a bfloat16-capable CPU does with a preset that asks for bfloat16 training
    from wsl_bench.training import trainer as trainer_module

    monkeypatch.setattr(trainer_module, "uses_amp", lambda *args: True)
    out = tmp_path / "run"
    pipeline.run(_config(methods=("cam", "gradcam")), out, progress=False)
    manifest = json.loads((out / "manifest.json").read_text())
    cpu = manifest["device"]["cpu"]
    assert cpu["model"] and cpu["torch"] == torch.__version__
    assert cpu["torch_cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert isinstance(cpu["features"], list) and isinstance(cpu["native_bf16"], bool)
    facts = manifest["checkpoints"]
    assert facts["cam"]["precision"] == "bfloat16 autocast" and facts["cam"]["trained_method"] == "cam"
    assert facts["gradcam"]["trained_method"] == "cam"  # an explainer's checkpoint is its classifier's
    header = (out / "report" / "results.md").read_text().splitlines()[2]
    assert f"on {cpu['model']} (" in header and f"CPU capability {cpu['torch_cpu_capability']}" in header
    assert f"torch {torch.__version__}" in header
    assert "Training precision: bfloat16 autocast (cam)." in header


def test_cpu_info_lists_the_model_and_the_arithmetic_features_it_has(monkeypatch):
    monkeypatch.setattr(manifest_module, "_cpuinfo", lambda: {
        "model name": "Intel(R) Xeon(R) Platinum 8480+",
        "flags": "fpu sse4_2 avx avx2 fma avx512f avx512_bf16 amx_bf16 amx_tile hypervisor"})
    info = manifest_module.cpu_info()
    assert info["model"] == "Intel(R) Xeon(R) Platinum 8480+"
    assert info["features"] == ["sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16"]
    monkeypatch.setattr(manifest_module, "_cpuinfo", lambda: {"model name": "AMD EPYC", "flags": "avx2 avx512f"})
    assert manifest_module.cpu_info()["features"] == ["avx2", "avx512f"]


def test_the_trainer_stores_the_precision_it_trained_in(toy_dataset, tmp_path, monkeypatch):
    from wsl_bench.training import trainer as trainer_module

    config = _config(methods=("cam",))
    cam = pipeline.create_run_method("cam", config).method
    train_set = pipeline.open_dataset(config, "train")
    plain = trainer_module.Trainer(cam, trainer_module.TrainConfig(cpu_amp=False), tmp_path / "a", progress=False)
    assert plain.precision == "float32"
    assert plain.method_checkpoint(train_set, {})["meta"]["precision"] == "float32"
    monkeypatch.setattr(trainer_module, "uses_amp", lambda *args: True)
    mixed = trainer_module.Trainer(cam, trainer_module.TrainConfig(cpu_amp=True), tmp_path / "b", progress=False)
    assert mixed.method_checkpoint(train_set, {})["meta"]["precision"] == "bfloat16 autocast"


# -- keys ------------------------------------------------------------------------------------------------------------
def test_a_training_has_one_cache_key_whichever_run_asks_for_it():
    """(dataset seed, training seed) decides a training's key: a one-seed run and seed 0 of a ``--seeds``
    run with the same ``--seed`` share their checkpoints; a GMIC of seed 1 starts from the CAM of seed 1."""
    one = RunConfig(methods=("gmic",), dataset="synthetic", preset="cpu", image_size=(64, 48))
    many = replace(one, seeds=(0, 1, 2))

    def job(config: RunConfig, name: str = "gmic") -> pipeline.TrainingJob:
        return pipeline.training_job(pipeline.create_run_method(name, config).trainee, config)

    assert job(one).key == job(many).key == job(many.for_seed(0)).key
    first, second = job(one), job(many.for_seed(1))
    assert second.key != first.key
    assert second.key_data["train_config"]["seed"] == 1 and first.key_data["train_config"]["seed"] == 0
    assert second.key_data["train_data"] == first.key_data["train_data"]  # the same images
    assert second.donor.key == job(many.for_seed(1), "cam").key != job(one, "cam").key
    # the dataset seed decides the images, whichever the training seed
    other_images = replace(one, seed=3, seeds=(0,))
    assert job(other_images).key_data["train_data"] != first.key_data["train_data"]
    assert job(other_images).key_data["train_config"]["seed"] == 0
    # the method itself is created with the training seed
    assert pipeline.create_run_method("cam", many.for_seed(2)).method.seed == 2


# -- resuming, gaining seeds, refusing others ------------------------------------------------------------------------
@pytest.mark.slow
def test_a_killed_seeds_run_resumes_per_seed_and_a_folder_may_gain_seeds_but_not_lose_them(
    toy_dataset, tmp_path, monkeypatch, capsys
):
    toy_dataset.counts = dict(TOY_COUNTS)
    out = tmp_path / "run"
    pipeline.run(_config(), out, progress=False, write_report=False)
    # as a one-seed run wrote its folder before records had a seed: none in the records or the manifest
    legacy = [{k: v for k, v in r.items() if k != "seed"} for r in _records(out)]
    (out / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in legacy))
    manifest = json.loads((out / "manifest.json").read_text())
    manifest.pop("seeds")
    (out / "manifest.json").write_text(json.dumps(manifest))

    real = pipeline.evaluate_method
    calls: list[tuple[str, int | None, str, int]] = []

    def spy(method, ids, *args, split=None, seed=None, **kwargs):
        calls.append((method.name, seed, split, len(ids)))
        if kill["at"] == (seed, split):
            raise KeyboardInterrupt  # killed while seed 1's validation images are scored
        return real(method, ids, *args, split=split, seed=seed, **kwargs)

    kill = {"at": (1, "val")}
    monkeypatch.setattr(pipeline, "evaluate_method", spy)
    with pytest.raises(KeyboardInterrupt):
        pipeline.run(_config(seeds=(0, 1)), out, progress=False, write_report=False)
    # the one-seed folder gained seed 1; seed 0's records (written without a seed) were kept
    assert calls == [("cam", 1, "test", TOY_COUNTS["test"]), ("cam", 1, "val", TOY_COUNTS["val"])]

    calls.clear()
    kill["at"] = None
    again = pipeline.run(_config(seeds=(0, 1)), out, progress=False, write_report=False)
    assert calls == [("cam", 1, "val", TOY_COUNTS["val"])]  # nothing finished is computed again, for any seed
    assert again.trained == [] and again.reused_checkpoints == ["cam (seed 1)"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["seeds"] == [0, 1] and (out / "done").exists()
    # both seeds' checkpoints are in the manifest, seed 0's from the one-seed run
    assert sorted(seed for method, seed, _ in checkpoint_facts(manifest) if method == "cam") == [0, 1]
    assert manifest["checkpoints_by_seed"]["cam"]["0"] == manifest["checkpoints"]["cam"]
    records = read_records(out / "records.jsonl", default_seed=legacy_seeds(manifest))
    counts = pd.Series([(r["method"], r["seed"]) for r in records]).value_counts()
    assert counts.to_dict() == {("cam", 0): 12, ("cam", 1): 12, ("random", None): 12}

    calls.clear()
    pipeline.run(_config(seeds=(0, 1)), out, progress=False, write_report=False)
    assert calls == []

    # leaving a seed out is refused, like any other run-wide mismatch, naming the folder's seeds
    with pytest.raises(RunConfigMismatch, match="training seeds 0, 1, and this run asks for 0"):
        pipeline.run(_config(), out, progress=False, write_report=False)
    code = _exit_code(["run", "--dataset", "toy", "--preset", "tiny", "--image-size", "64x48", "--methods", "random",
                       "--seeds", "1", "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "training seeds 0, 1" in err[0] and "asks for 1" in err[0]


# -- the command line ------------------------------------------------------------------------------------------------
def test_seeds_flag_and_default_folder_names(capsys):
    parser = cli.build_parser()

    def folder(*argv: str) -> str:
        return str(cli.default_run_folder(parser.parse_args(["run", *argv])))

    assert folder("--seeds", "0,1,2") == "runs/synthetic-cpu-seed0-seeds0-1-2"
    assert folder("--seeds", "0") == folder() == "runs/synthetic-cpu-seed0"  # --seeds 0 is the one-seed run
    assert folder("--seed", "3", "--seeds", "0") == "runs/synthetic-cpu-seed3-seeds0"
    sized = folder("--preset", "tiny", "--image-size", "64x48", "--seeds", "1,2")
    assert sized == "runs/synthetic-tiny-64x48-seed0-seeds1-2"
    assert parser.parse_args(["run", "--seeds", "2, 0,1"]).seeds == (2, 0, 1)
    for bad, says in (("0,0", "named twice"), ("a,b", "must look like 0,1,2"), ("-1", "at least 0"), (",", "0,1,2")):
        with pytest.raises(SystemExit) as exit_info:
            parser.parse_args(["run", "--seeds", bad])
        assert exit_info.value.code == 2 and says in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parser.parse_args(["run", "--help"])
    assert "-seeds0-1-2" in " ".join(capsys.readouterr().out.split())


# -- the report of several seeds, from fabricated records ------------------------------------------------------------
QUALITIES = {0: {"glam": 0.6, "cam": 0.4}, 1: {"glam": 0.5, "cam": 0.45}, 2: {"glam": 0.3, "cam": 0.5}}
"""How well GLAM and CAM localise in each seed's training: GLAM first in seeds 0 and 1, CAM in seed 2."""


def _fake_seed_run(root: Path, qualities: dict[int, dict[str, float]] = QUALITIES) -> Path:
    """A run folder of seeds 0, 1, 2 of GLAM and CAM (each seed's records a fabricated run of the same images
    with that seed's qualities) and the baselines scored once."""
    records, trained = [], ("glam", "cam")
    for seed, quality in qualities.items():
        one = fake_run(root.parent / f"seed{seed}", methods=(*trained, "intensity", "random"), quality=quality,
                       twins={}, figure_images=2)
        for record in _records(one):
            if record["method"] in trained:
                records.append({**record, "seed": seed})
            elif seed == 0:
                records.append({**record, "seed": None})
    run_dir = fake_run(root, methods=(*trained, "intensity", "random"), quality=qualities[0], twins={},
                       figure_images=2)
    (run_dir / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    manifest = json.loads((run_dir / "manifest.json").read_text())
    manifest["seeds"] = list(qualities)
    for method in trained:
        manifest["methods"][method]["identity_data"] = {"training": f"key-{method}"}
    (run_dir / "manifest.json").write_text(json.dumps(manifest))
    return run_dir


def test_each_seed_keeps_its_own_threshold_and_the_means_rank_with_their_stability(tmp_path):
    run_dir = _fake_seed_run(tmp_path / "run")
    data = RunData.load(run_dir)
    assert data.seeds == [0, 1, 2] and data.method_seeds("glam") == [0, 1, 2] and data.method_seeds("random") == []
    results, details = results_tables(data)
    rows = results.set_index(["method", "class"])
    for seed in (0, 1, 2):  # each seed's value is what that seed's run alone reports (its own validation τ)
        alone = results_tables(RunData.load(tmp_path / f"seed{seed}"))[0].set_index(["method", "class"])
        for method in ("glam", "cam"):
            for metric in ("dice_val_tau", "pxap", "auc"):
                assert rows.loc[(method, "benign"), f"{metric}_seed{seed}"] == pytest.approx(
                    alone.loc[(method, "benign"), metric])
    glam = rows.loc[("glam", "benign")]
    values = [glam[f"dice_val_tau_seed{s}"] for s in (0, 1, 2)]
    assert glam["dice_val_tau"] == pytest.approx(np.mean(values))
    assert glam["dice_val_tau_sd"] == pytest.approx(np.std(values, ddof=1)) and glam["n_seeds"] == 3
    assert glam["dice_val_tau_ci_low"] < glam["dice_val_tau"] < glam["dice_val_tau_ci_high"]
    assert rows.loc[("random", "benign"), "n_seeds"] == 1 and np.isnan(rows.loc[("random", "benign"), "pxap_sd"])

    summaries = summary.summarise(results, details, data.manifest)
    benign = next(s for s in summaries if s.cls == "benign")
    assert [e.name for e in benign.ranked] == ["glam", "cam"] and benign.seeds == (0, 1, 2)
    assert summary.seed_ranks(benign) == {"glam": [1, 1, 2], "cam": [2, 2, 1]}
    sentence = summary.stability_sentence(benign)
    assert "`glam` (first by the seed means) ranks first among weakly-supervised methods in 2 of 3 seeds" in sentence
    # GLAM whatever its rank: when CAM leads, GLAM still gets its count
    flipped = summary.ClassSummary("benign", 4, tuple(reversed(benign.ranked)), (), None, seeds=(0, 1, 2))
    assert "`glam` in 2 of 3 (ranks 1, 1, 2)" in summary.stability_sentence(flipped)
    assert summary.stability_sentence(replace(benign, seeds=())) == ""


def test_with_identical_seeds_the_joint_interval_is_the_one_seed_interval():
    rng = np.random.default_rng(3)
    pos, neg = rng.integers(0, 50, (9, 100)), rng.integers(0, 500, (9, 100))
    pos[:, 0] += 1  # every image holds a lesion pixel
    headline = rng.uniform(0, 1, 9)
    one = report_seeds.SeedValues(tuple(f"i{k}" for k in range(9)), headline, headline / 2, pos, neg)
    expected = bootstrap_ci(lambda idx: float(headline[idx].mean()), 9, seed=0)
    assert report_seeds.joint_mean_interval([one], "headline") == pytest.approx(expected)
    assert report_seeds.joint_mean_interval([one, one], "headline") == pytest.approx(expected)
    assert report_seeds.joint_pxap_interval([one, one]) == pytest.approx(bootstrap_pxap_ci(pos, neg, seed=0))
    # a second seed that localises better moves the seed mean's interval up; the images stay paired
    better = replace(one, headline=headline + 0.2)
    low, high = report_seeds.joint_mean_interval([one, better], "headline")
    assert low == pytest.approx(expected[0] + 0.1) and high == pytest.approx(expected[1] + 0.1)


@pytest.mark.slow
def test_a_one_seed_report_reads_as_before(tmp_path):
    run_dir = fake_run(tmp_path / "run", methods=("glam", "cam", "intensity", "random"), twins={}, figure_images=2)
    out = build_report(run_dir)
    markdown = (out / "results.md").read_text()
    assert "±" not in markdown and "Rank stability" not in markdown and "**Seeds.**" not in markdown
    assert ", seed 0, device cpu (test), wsl-bench commit" in markdown  # no CPU facts recorded: the old header
    results = pd.read_csv(out / "results.csv")
    assert (results["n_seeds"] == 1).all() and results["dice_val_tau_sd"].isna().all()
    assert not [c for c in results.columns if "_seed" in c and c != "n_seeds"]
    assert "±" not in (out / "index.html").read_text()


def test_records_without_a_seed_belong_to_the_one_training_seed_of_their_run(tmp_path, caplog):
    manifest = {"config": {"seed": 4}, "methods": {"cam": {"identity_data": {"training": "k"}},
                                                    "random": {"identity_data": {"training": None}}}}
    assert legacy_seeds(manifest) == {"cam": 4}
    path = tmp_path / "records.jsonl"
    base = {"schema": 1, "split": "test", "image_id": "a", "status": "failed", "error": "x"}
    lines = [{**base, "method": "cam"}, {**base, "method": "random"}, {**base, "method": "cam", "seed": 4},
             {**base, "method": "cam", "seed": 5}, {**base, "method": "cam", "image_id": "b", "seed": -1}]
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    records = read_records(path, default_seed=legacy_seeds(manifest))
    # the seed-less cam record is seed 4's, superseded by the later one; a negative seed is not a record
    assert sorted((r["method"], r["seed"]) for r in records) == [("cam", 4), ("cam", 5), ("random", None)]
    assert "seed -1 is not a non-negative integer" in caplog.text
    # a folder that gained seeds: the first seed's checkpoint facts were written before it had company
    gained = {"seeds": [4, 5], "checkpoints": {"cam": {"learning_check": []}, "random": {}},
              "checkpoints_by_seed": {"cam": {"5": {"learning_check": ["benign: ..."]}}}}
    assert [(m, s) for m, s, _ in checkpoint_facts(gained)] == [("cam", 4), ("cam", 5), ("random", None)]
