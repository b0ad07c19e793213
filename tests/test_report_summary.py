"""The report's lead: the ranked summary per class, the floor, and identical maps verified from the records."""

from __future__ import annotations

import math

import pandas as pd
import pytest
from report_fixtures import CAM_TWINS, TWENTY, fake_run, twenty_report

from wsl_bench.report import summary
from wsl_bench.report.equivalence import NEUTRAL_REASON, identical_groups
from wsl_bench.report.families import BASELINES, CAPTUM, GRADCAM, LEARNED, OTHER, family_of, ordered
from wsl_bench.report.tables import RESULT_COLUMNS, RunData


@pytest.fixture(scope="module")
def twenty(tmp_path_factory):
    """A run folder of twenty methods and its report (built once per session)."""
    return twenty_report(tmp_path_factory)


# -- families ---------------------------------------------------------------------------------------------
def test_families_come_from_the_registry_and_the_floor_goes_last():
    assert family_of("glam") is LEARNED and family_of("gmic.m1") is LEARNED and family_of("cam") is LEARNED
    assert family_of("gradcam") is GRADCAM and family_of("gradcam@gmic") is GRADCAM and family_of("fullgrad") is GRADCAM
    assert family_of("captum_gradcam") is CAPTUM and family_of("occlusion") is CAPTUM
    assert family_of("intensity") is BASELINES and family_of("not-installed-plugin") is OTHER
    order = ordered(["random", "saliency", "cam", "intensity", "gradcam", "gmic", "glam", "centre_prior"], {})
    assert order == ["gmic", "glam", "cam", "gradcam", "saliency", "intensity", "centre_prior", "random"]


# -- identical maps -----------------------------------------------------------------------------------------
def test_cam_equivalents_are_grouped_from_their_records_with_the_reason(twenty):
    run_dir, _ = twenty
    groups = identical_groups(RunData.load(run_dir))
    assert [g.methods for g in groups] == [("cam", "gradcam", "xgradcam", "hirescam", "captum_gradcam")]
    assert groups[0].by_construction and "global average pooling and a linear head" in groups[0].reason
    # captum_gradcam's map differs from cam's by float rounding (1e-7) and is still grouped
    assert CAM_TWINS["captum_gradcam"][1] > 0


def test_grouping_is_verified_not_assumed(tmp_path):
    """hirescam's records differ from cam's: it is not grouped, although it is CAM by construction; two
    methods that match without a known reason are grouped with the neutral sentence only."""
    twins = {"gradcam": ("cam", 0.0), "hirescam": ("cam", 0.05), "layercam": ("gradcam++", 0.0)}
    methods = ("cam", "gradcam", "hirescam", "gradcam++", "layercam", "intensity")
    data = RunData.load(fake_run(tmp_path / "run", methods=methods, n_images=6, twins=twins, figure_images=0))
    groups = {g.methods: g for g in identical_groups(data)}
    assert set(groups) == {("cam", "gradcam"), ("gradcam++", "layercam")}
    assert groups[("cam", "gradcam")].by_construction
    assert not groups[("gradcam++", "layercam")].by_construction
    assert groups[("gradcam++", "layercam")].reason == NEUTRAL_REASON


def test_an_explainer_of_a_classifier_without_global_average_pooling_is_not_the_known_case(tmp_path):
    twins = {"gradcam@gmic": ("gmic", 0.0)}
    data = RunData.load(fake_run(tmp_path / "run", methods=("gmic", "gradcam@gmic"), n_images=4, twins=twins,
                                 figure_images=0))
    (group,) = identical_groups(data)
    assert group.methods == ("gmic", "gradcam@gmic") and not group.by_construction


# -- the floor and the verdicts -------------------------------------------------------------------------------
def _results(rows: list[tuple[str, float, float, float, float]]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(method, Dice, Dice CI low, PxAP, PxAP CI low) per row, benign class; CI highs above the values."""
    results = pd.DataFrame([{c: math.nan for c in RESULT_COLUMNS} | {
        "method": m, "class": "benign", "dice_val_tau": d, "dice_val_tau_ci_low": dl, "dice_val_tau_ci_high": d + .1,
        "pxap": p, "auc": 0.7, "n_images": 10} for m, d, dl, p, _ in rows])
    details = pd.DataFrame([{"method": m, "class": "benign", "pxap_ci_low": pl, "pxap_ci_high": p + .1}
                            for m, _, _, p, pl in rows])
    return results, details


def test_the_floor_is_the_best_baseline_per_metric_and_each_method_gets_a_verdict():
    results, details = _results([
        ("glam", 0.50, 0.40, 0.30, 0.25),          # both intervals above the floor: above
        ("gmic", 0.40, 0.25, 0.35, 0.30),          # Dice above, its interval reaches the floor: unclear
        ("cam", 0.60, 0.55, 0.15, 0.10),           # PxAP below the floor: below
        ("gradcam", math.nan, math.nan, 0.4, 0.3),  # no headline: not judged, ranked last
        ("intensity", 0.30, 0.20, 0.10, 0.05),     # the floor's Dice ...
        ("centre_prior", 0.20, 0.10, 0.20, 0.15),  # ... and the floor's PxAP come from two baselines
        ("random", 0.01, 0.0, 0.01, 0.0),
    ])
    (benign,) = summary.summarise(results, details, {})
    assert benign.floor == summary.Floor(0.30, "intensity", 0.20, "centre_prior")
    assert [e.name for e in benign.ranked] == ["cam", "glam", "gmic", "gradcam"]
    assert [e.name for e in benign.floor_entries] == ["intensity", "centre_prior", "random"]
    verdicts = {e.name: e.verdict for e in benign.ranked}
    assert verdicts == {"glam": summary.ABOVE, "gmic": summary.UNCLEAR, "cam": summary.BELOW,
                        "gradcam": summary.UNJUDGED}
    assert [e.name for e in benign.shortfalls()] == ["cam", "gmic", "gradcam"]
    assert benign.best("dice") == 0.60 and benign.best("pxap") == 0.4
    cam = next(e for e in benign.ranked if e.name == "cam")
    sentence = summary.shortfall_sentence(cam, benign)
    assert "PxAP not above the floor's Dice 0.300 (`intensity`) and PxAP 0.200 (`centre_prior`)" in sentence


def test_a_method_whose_classifier_did_not_learn_says_so_in_its_line():
    results, details = _results([("gradcam", 0.1, 0.0, 0.1, 0.0), ("intensity", 0.3, 0.2, 0.3, 0.2)])
    manifest = {"checkpoints": {"cam": {"learning_check": ["benign: AUC at chance"]}}}
    (benign,) = summary.summarise(results, details, manifest)
    assert "training of cam did not converge" in summary.shortfall_sentence(benign.ranked[0], benign)


# -- results.md -------------------------------------------------------------------------------------------------
def _table(markdown: str, heading: str) -> list[list[str]]:
    lines = markdown[markdown.index(heading):].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| rank"))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split("|")])
    return rows


def test_results_md_leads_with_the_ranked_summary_and_the_floor_set_apart(twenty):
    run_dir, out = twenty
    markdown = (out / "results.md").read_text()
    assert markdown.index("## Summary: ranked on the headline metrics") < markdown.index("## All results")
    assert "beats the floor" in markdown  # the definition is written into the report
    results = pd.read_csv(out / "results.csv")
    assert list(results.columns) == RESULT_COLUMNS
    assert list(dict.fromkeys(results["method"])) == list(TWENTY)  # results.csv keeps the run's order
    for cls in ("benign", "malignant"):
        rows = _table(markdown, f"### {cls} lesions")
        ranked = [r for r in rows if r[0] != "floor"]
        floor = [r for r in rows if r[0] == "floor"]
        assert [r[1] for r in floor] == ["intensity", "centre_prior", "random"] and rows[-3:] == floor
        assert [r[0] for r in ranked] == [str(i) for i in range(1, len(ranked) + 1)]
        dice = [float(r[3].strip("*").split()[0].strip("*")) for r in ranked]
        assert dice == sorted(dice, reverse=True)
        # the five CAM-equal methods share one row, so 20 methods give 13 ranked rows and 3 floor rows
        names = [r[1] for r in ranked]
        assert "cam ≡ gradcam, xgradcam, hirescam, captum_gradcam" in names and "gradcam" not in names
        assert len(ranked) == 13
        # the best value of each column is bold, and only that one
        table = results[results["class"] == cls]
        for index, column in ((3, "dice_val_tau"), (4, "pxap"), (5, "auc")):
            bold = [r for r in rows if r[index].startswith("**")]
            assert bold and all(f"{table[column].max():.3f}" in r[index] for r in bold)
        # a line for every ranked method that does not clearly beat the floor, and none for the others
        section = markdown[markdown.index(f"### {cls} lesions"):]
        section = section[:section.index("\n### ")] if "\n### " in section else section[:section.index("**Identical")]
        for row in ranked:
            line = f"- `{row[1].split(' ≡ ')[0]}`"
            assert (line in section) == (row[6] != summary.ABOVE), row
    assert "by construction" in markdown and "reports/README.md" in markdown
