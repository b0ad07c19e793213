"""``wsl-bench bench --harness``: methods through the real harness, stage by stage; and the report's
end-to-end cost column built from the same per-record stage times."""

from __future__ import annotations

import pandas as pd
import pytest

from wsl_bench.cli import main
from wsl_bench.evaluation.bench_harness import STAGES, format_harness_bench
from wsl_bench.evaluation.harness import RunConfig
from wsl_bench.pipeline import harness_bench, run


def test_stage_medians_add_up_to_the_end_to_end_time(toy_dataset, tmp_path):
    toy_dataset.corrupt = {"toy-test-003"}
    results = harness_bench(["intensity", "random"], dataset="toy", images=5, size=(64, 48),
                                loader_workers=0, out_dir=tmp_path / "scratch")
    assert [r["method"] for r in results] == ["intensity", "random"]
    for r in results:
        assert r["images"] == 5 and r["failed"] == 1  # the corrupt image fails, the rest is measured
        medians = r["stage_median_s"]
        assert set(medians) == set(STAGES) and all(v >= 0 for v in medians.values())
        assert r["end_to_end_median_s"] >= medians["predict"] > 0
        assert r["overhead_fraction"] >= 0 and r["images_per_s_steady"] > 0 and r["images_per_s_wall"] > 0
        assert (tmp_path / "scratch" / r["method"] / "records.jsonl").exists()  # the real harness wrote them
    text = format_harness_bench(results)
    assert "intensity" in text and "overhead" in text and "(1 of 5 failed)" in text


def test_the_scratch_folder_is_removed_unless_kept(toy_dataset, isolated_cache, capsys):
    assert main(["bench", "--harness", "--methods", "intensity", "--dataset", "toy", "--images", "2",
                 "--size", "64x48", "--loader-workers", "0"]) == 0
    assert "harness on toy 64×48" in capsys.readouterr().out
    assert not list(isolated_cache.glob("bench-harness-*")), "nothing is left behind in the cache"


def test_a_method_that_scores_nothing_is_a_clear_error(toy_dataset, tmp_path):
    toy_dataset.corrupt = {"toy-test-000", "toy-test-001"}
    with pytest.raises(ValueError, match="intensity: no image was scored"):
        harness_bench(["intensity"], dataset="toy", images=2, size=(64, 48), loader_workers=0,
                          out_dir=tmp_path)


@pytest.mark.slow
def test_the_report_shows_end_to_end_seconds_beside_the_model_s(toy_dataset, tmp_path):
    out = tmp_path / "run"
    run(RunConfig(methods=("intensity",), dataset="toy", preset="tiny"), out, progress=False)
    results = pd.read_csv(out / "report" / "results.csv")
    assert (results["end_to_end_median_s"] >= results["time_median_s"]).all()
    assert "end-to-end s/img" in (out / "report" / "results.md").read_text()
