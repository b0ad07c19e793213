"""The difficulty sweep's report: where each method stops beating the floor as lesions get harder to see.

A sweep (``wsl-bench sweep``, :mod:`wsl_bench.sweep`) holds one ordinary run folder per conspicuity
level of the synthetic set. From their records alone (and each level's measured conspicuity) this
module writes, in the sweep folder:

* ``sweep.csv``: one row per level, method and class (columns :data:`SWEEP_COLUMNS`): the headline
  Dice (validation τ) and PxAP with their 95% bootstrap intervals, the class's floor and the method's
  verdict against it, exactly as the level's own report computes them (:mod:`wsl_bench.report.tables`,
  :mod:`wsl_bench.report.summary`);
* ``sweep.md``: the levels and their measured conspicuity, the figure, per class the first level at
  which each method no longer beats the floor, and every value;
* ``sweep.png``/``.pdf`` (:mod:`wsl_bench.report.sweep_figure`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from wsl_bench.atomic_io import atomic_write, write_text_atomic
from wsl_bench.datasets.synthetic_generator import CONSPICUITY_LEVELS
from wsl_bench.report import formatting as fmt
from wsl_bench.report import summary
from wsl_bench.report.families import FLOOR, family_of, method_options, ordered
from wsl_bench.report.tables import RunData, learning_warnings, results_tables, run_line
from wsl_bench.saliency import CLASSES

SWEEP_COLUMNS = [
    "level", "level_index", "lesion_contrast", "contrast_median", "percentile_median", "n_lesions",
    "method", "family", "class",
    "dice_val_tau", "dice_val_tau_ci_low", "dice_val_tau_ci_high", "pxap", "pxap_ci_low", "pxap_ci_high", "auc",
    "n_images", "floor_dice", "floor_dice_by", "floor_pxap", "floor_pxap_by", "verdict",
]
"""Columns of ``sweep.csv``: the level (its index, most conspicuous first, and the generator's contrast
factor), the class's measured conspicuity on the level's evaluated images (median lesion contrast in
breast sd, median percentile, lesions measured), the method's headline values, the class's floor and
the verdict against it (empty for the baselines, which are the floor)."""

BEATS = (summary.ABOVE, summary.UNCLEAR)
"""Verdicts that beat the floor (:data:`~wsl_bench.report.summary.FLOOR_DEFINITION`: both headline values above
the floor's, whether or not the intervals separate them)."""

MARKS = {summary.ABOVE: "✓", summary.UNCLEAR: "≈", summary.BELOW: "✗", summary.UNJUDGED: "–"}
"""How the breakdown table writes a verdict."""

CONTRAST_DEFINITION = (
    "*Measured conspicuity*: per lesion of the level's evaluated (test) images, the lesion's mean intensity minus "
    "the mean of a ring 1–4 px outside its mask, in units of the breast's intensity standard deviation "
    "(`wsl_bench.datasets.conspicuity`); the median over the lesions of the class. On the two annotated views of "
    "the published NYU sample it is 0.46 and 0.25 (`datasets/synthetic.md`)."
)


@dataclass(frozen=True)
class LevelRun:
    """One level of a sweep: its name, its run folder and its measured conspicuity.

    Attributes:
        level: a named level of :data:`~wsl_bench.datasets.synthetic_generator.CONSPICUITY_LEVELS`.
        folder: the level's run folder.
        conspicuity: what :func:`wsl_bench.sweep.measure_level` measured on its evaluated images.
    """

    level: str
    folder: Path
    conspicuity: Mapping[str, Any]


def _measured(run: LevelRun, cls: str) -> dict[str, Any]:
    return dict((run.conspicuity.get("classes") or {}).get(cls) or {})


def _contrast_factor(run: LevelRun) -> float:
    described = (run.conspicuity.get("dataset") or {}).get("conspicuity") or {}
    factor = described.get("contrast")
    return float(factor) if factor is not None else CONSPICUITY_LEVELS[run.level].contrast


def level_rows(run: LevelRun) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The ``sweep.csv`` rows of one level (every method and class its records hold) and its manifest."""
    data = RunData.load(run.folder)
    results, details = results_tables(data)
    summaries = {s.cls: s for s in summary.summarise(results, details, data.manifest)}  # no groups: a row per method
    rows = []
    for cls in CLASSES:
        class_summary = summaries.get(cls)
        if class_summary is None:
            continue
        floor = class_summary.floor
        measured = _measured(run, cls)
        for entry in (*class_summary.ranked, *class_summary.floor_entries):
            rows.append({
                "level": run.level, "level_index": list(CONSPICUITY_LEVELS).index(run.level),
                "lesion_contrast": _contrast_factor(run), "contrast_median": measured.get("contrast_median"),
                "percentile_median": measured.get("percentile_median"), "n_lesions": measured.get("lesions"),
                "method": entry.name, "family": entry.family.key, "class": cls,
                "dice_val_tau": entry.dice, "dice_val_tau_ci_low": entry.dice_low,
                "dice_val_tau_ci_high": entry.dice_high, "pxap": entry.pxap, "pxap_ci_low": entry.pxap_low,
                "pxap_ci_high": entry.pxap_high, "auc": entry.auc, "n_images": class_summary.n_images,
                "floor_dice": floor.dice if floor else None, "floor_dice_by": floor.dice_by if floor else "",
                "floor_pxap": floor.pxap if floor else None, "floor_pxap_by": floor.pxap_by if floor else "",
                "verdict": entry.verdict,
            })
    return rows, data.manifest


def sweep_table(runs: Sequence[LevelRun]) -> tuple[pd.DataFrame, list[str], dict[str, dict[str, Any]]]:
    """``(table, methods, manifests)``: the ``sweep.csv`` rows of every level (levels most conspicuous first,
    then classes, then methods in the report's order), the methods in that order, each level's manifest."""
    rows: list[dict[str, Any]] = []
    manifests: dict[str, dict[str, Any]] = {}
    for run in runs:
        level_table, manifests[run.level] = level_rows(run)
        rows += level_table
    table = pd.DataFrame(rows, columns=SWEEP_COLUMNS)
    if table.empty:
        return table, [], manifests
    seen = list(dict.fromkeys(table["method"]))
    manifest = next(iter(manifests.values()))
    methods = ordered(seen, manifest)
    table["_m"] = table["method"].map({m: i for i, m in enumerate(methods)})
    table["_c"] = table["class"].map({c: i for i, c in enumerate(CLASSES)})
    table = table.sort_values(["level_index", "_c", "_m"], kind="stable").drop(columns=["_m", "_c"])
    return table.reset_index(drop=True), methods, manifests


@dataclass(frozen=True)
class Breakdown:
    """One method's verdicts for one class, level by level (most conspicuous first), and where it breaks."""

    method: str
    verdicts: tuple[tuple[str, str], ...]

    @property
    def breaks_at(self) -> str | None:
        """The first level at which the method does not beat the floor (``None``: none)."""
        return next((level for level, v in self.verdicts if v == summary.BELOW), None)

    def cell(self) -> str:
        """The breakdown table's last cell: the level it breaks at, ``never beats it``, ``none`` or ``–``."""
        beats_somewhere = any(v in BEATS for _, v in self.verdicts)
        if self.breaks_at:
            return f"`{self.breaks_at}`" if beats_somewhere else "never beats it"
        return "none" if beats_somewhere else fmt.MISSING

    def sentence(self) -> str:
        """Where the method breaks, in words (Markdown)."""
        name = f"`{self.method}`"
        judged = [(level, v) for level, v in self.verdicts if v != summary.UNJUDGED]
        if not judged:
            return f"{name}: not judged at any level (no headline Dice, or no baseline in the runs)."
        at = self.breaks_at
        if at is None:
            unclear = [level for level, v in judged if v == summary.UNCLEAR]
            tail = f" (not distinguishable from it at {_levels(unclear)})" if unclear else ""
            return f"{name} beats the floor at every level judged{tail}."
        levels = [level for level, _ in self.verdicts]
        beats_before = [level for level, v in self.verdicts[: levels.index(at)] if v in BEATS]
        again = [level for level, v in self.verdicts[levels.index(at) + 1:] if v in BEATS]
        if not beats_before and not again:
            text = f"{name} does not beat the floor at any level judged, not even `{at}`"
        elif not beats_before:
            text = f"{name} does not beat the floor at `{at}`, the most conspicuous level judged, but beats it at " \
                   f"{_levels(again)}"
        else:
            text = f"{name} beats the floor down to `{beats_before[-1]}` and first fails at `{at}`"
            if again:
                text += f" (it beats it again at {_levels(again)})"
        return text + "."


def _levels(levels: Sequence[str]) -> str:
    return ", ".join(f"`{level}`" for level in levels)


def breakdowns(table: pd.DataFrame, cls: str, methods: Sequence[str]) -> list[Breakdown]:
    """Per method other than the baselines, its verdicts for ``cls`` at each level of ``table``."""
    rows = table[table["class"] == cls]
    levels = list(dict.fromkeys(table.sort_values("level_index")["level"]))
    out = []
    for method in methods:
        if method in FLOOR:
            continue
        mine = rows[rows["method"] == method]
        if mine.empty:
            continue
        verdicts = {r["level"]: r["verdict"] for _, r in mine.iterrows()}
        out.append(Breakdown(method, tuple((level, verdicts[level]) for level in levels if level in verdicts)))
    return out


def _median_text(measured: Mapping[str, Any], key: str) -> str:
    value = measured.get(key)
    return fmt.MISSING if value is None else f"{float(value):.2f}"


def _levels_markdown(runs: Sequence[LevelRun]) -> list[str]:
    lines = [
        "| level | lesion contrast × | measured contrast, benign (lesions) | measured contrast, malignant (lesions) "
        "| percentile, benign | percentile, malignant | run folder |",
        "|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        b, m = _measured(run, "benign"), _measured(run, "malignant")
        lines.append(
            f"| {run.level} | {_contrast_factor(run):g} | {_median_text(b, 'contrast_median')} ({b.get('lesions', 0)}) "
            f"| {_median_text(m, 'contrast_median')} ({m.get('lesions', 0)}) | {_median_text(b, 'percentile_median')} "
            f"| {_median_text(m, 'percentile_median')} | [{run.level}/]({run.level}/report/results.md) |")
    return lines


def _breakdown_markdown(table: pd.DataFrame, methods: Sequence[str]) -> list[str]:
    levels = list(dict.fromkeys(table.sort_values("level_index")["level"]))
    if not any(m not in FLOOR for m in methods):
        return ["The sweep ran no method other than the baselines: nothing to set against the floor.", ""]
    lines: list[str] = []
    for cls in CLASSES:
        found = breakdowns(table, cls, methods)
        if not found:
            continue
        rows = table[table["class"] == cls]
        floors = [f"`{level}` Dice {fmt.score(r['floor_dice'])} (`{r['floor_dice_by']}`), PxAP "
                  f"{fmt.score(r['floor_pxap'])} (`{r['floor_pxap_by']}`)"
                  for level in levels for _, r in rows[rows["level"] == level].head(1).iterrows()
                  if not fmt.is_missing(r["floor_dice"])]
        lines += [f"### {cls} lesions", "",
                  "| method | family | " + " | ".join(levels) + " | first level not beating the floor |",
                  "|---|---|" + "---|" * len(levels) + "---|"]
        for item in found:
            marks = dict(item.verdicts)
            family = rows.loc[rows["method"] == item.method, "family"].iloc[0]
            cells = " | ".join(MARKS.get(marks.get(level, summary.UNJUDGED), "–") for level in levels)
            lines.append(f"| {item.method} | {family} | {cells} | {item.cell()} |")
        lines += ["", *(f"- {item.sentence()}" for item in found), ""]
        if floors:
            lines += [f"The floor ({cls}): " + "; ".join(floors) + ".", ""]
    return lines


def _values_markdown(table: pd.DataFrame) -> list[str]:
    lines: list[str] = []
    for cls in CLASSES:
        rows = table[table["class"] == cls]
        if rows.empty:
            continue
        lines += [f"### {cls}", "",
                  "| level | method | Dice (val τ) [95% CI] | PxAP [95% CI] | AUC | against the floor |",
                  "|---|---|---|---|---|---|"]
        for _, r in rows.iterrows():
            lines.append(
                f"| {r['level']} | {r['method']} | {fmt.score(r['dice_val_tau'])} "
                f"{fmt.interval(r['dice_val_tau_ci_low'], r['dice_val_tau_ci_high'])} | {fmt.score(r['pxap'])} "
                f"{fmt.interval(r['pxap_ci_low'], r['pxap_ci_high'])} | {fmt.score(r['auc'])} "
                f"| {r['verdict'] or summary.FLOOR_ROW} |")
        lines += [""]
    return lines


def to_markdown(table: pd.DataFrame, methods: Sequence[str], runs: Sequence[LevelRun],
                manifests: Mapping[str, Mapping[str, Any]], figure: str | None) -> str:
    """``sweep.md``: what was run, the levels, the figure, where each method breaks, every value."""
    first = manifests[runs[0].level] if runs else {}
    lines = [
        "# Difficulty sweep: where each method stops beating the floor",
        "",
        (run_line(dict(first)) if first else "")
        + f" Conspicuity levels, most conspicuous first: {_levels([r.level for r in runs])}, one ordinary run "
        "folder each (`--dataset-option conspicuity=LEVEL`, with its own report). Every number below is that "
        "level's report's, computed from its records.",
        "",
        "## Levels",
        "",
        *_levels_markdown(runs),
        "",
        CONTRAST_DEFINITION + " *Percentile*: the fraction of the breast's pixels darker than the lesion's mean "
        "(0.73 and 0.72 on the real views).",
        "",
    ]
    if figure:
        lines += [f"![Headline Dice and PxAP against measured conspicuity]({figure}.png)", "",
                  "Headline Dice (validation τ) and PxAP of each method (test images, 95% bootstrap intervals as "
                  "bars) against the level's measured lesion contrast, easiest level on the left; one panel per class "
                  "and metric. Filled marks beat the floor, hollow ones do not; the baselines (grey, dashed) are the "
                  "floor; GLAM and GMIC are drawn heavy.", ""]
    lines += ["## Where each method breaks", "",
              summary.FLOOR_DEFINITION + " Per class, each method's verdict at each level (✓ above the floor, "
              "≈ beats it but not distinguishable from it, ✗ does not beat it, – not judged) and the first level, "
              "most conspicuous first, at which it no longer beats the floor.", "",
              *_breakdown_markdown(table, methods)]
    warnings = [f"`{level}`: {note}" for level, manifest in manifests.items()
                for note in learning_warnings(dict(manifest))]
    if warnings:
        lines += ["## Training warnings", "", "Each level's report says the same (its scores measure that training "
                  "run, not the method):", "", *(f"- {w}" for w in warnings), ""]
    lines += ["## Every value", "", "Test images; baselines' rows are the floor.", "", *_values_markdown(table)]
    return "\n".join(lines).rstrip() + "\n"


def build_sweep_report(runs: Sequence[LevelRun], out: Path) -> Path:
    """Write ``sweep.csv``, ``sweep.md`` and ``sweep.png``/``.pdf`` of ``runs`` to ``out``; return ``out``."""
    from wsl_bench.report.sweep_figure import draw

    out.mkdir(parents=True, exist_ok=True)
    table, methods, manifests = sweep_table(runs)
    with atomic_write(out / "sweep.csv", "w", encoding="utf-8", newline="") as handle:
        table.to_csv(handle, index=False, float_format="%.6g")
    first = next(iter(manifests.values()), {})
    family = {m: family_of(m, method_options(first, m)) for m in methods}
    figure = draw(table, methods, family, out, "sweep") if not table.empty else None
    write_text_atomic(out / "sweep.md", to_markdown(table, methods, runs, manifests, figure))
    return out
