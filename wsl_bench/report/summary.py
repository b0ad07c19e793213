"""The report's lead: per class, the methods ranked on the headline metrics, set against the floor.

For each class, every method other than the trivial baselines is ranked by the headline Dice
(at the validation-selected τ) with PxAP beside it; methods whose maps are identical on every
image (:mod:`wsl_bench.report.equivalence`) share one row. The supervised reference points
(``fsl``, ``supervised``: trained with masks, :data:`SUPERVISED_DEFINITION`) follow, set apart and never
ranked, with a sentence saying where they stand against the best weakly-supervised method; then the
baselines, set apart, as the floor. :data:`FLOOR_DEFINITION` states what "beats the floor" means; each
method gets a verdict, and every ranked one that does not clearly beat the floor gets a sentence saying
by how much.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import pandas as pd

from wsl_bench.evaluation.seeds import checkpoint_facts
from wsl_bench.report import formatting as fmt
from wsl_bench.report.equivalence import IDENTICAL_DEFINITION, IdenticalGroup
from wsl_bench.report.families import (
    FLOOR,
    SUPERVISED,
    Family,
    classifier_of,
    family_of,
    is_flagship,
    method_options,
)
from wsl_bench.saliency import CLASSES

ABOVE = "above the floor"
UNCLEAR = "not distinguishable from the floor"
BELOW = "does not beat the floor"
UNJUDGED = "not judged"
FLOOR_ROW = "floor"
REFERENCE_ROW = "uses masks"
NOT_MARKED: dict[str, float] = {"dice": float("nan"), "pxap": float("nan"), "auc": float("nan")}
"""The "best value" of each column for the supervised reference points' rows: none, they are never marked best."""

FLOOR_DEFINITION = (
    "The *floor* of a class is, for each headline metric, the best value any trivial baseline "
    "(`intensity`, `centre_prior`, `random`) reaches on it. A method *beats the floor* for a class when its "
    "Dice (val τ) and its PxAP are both above the floor's; it is *above the floor* when, besides, both of its "
    "95% bootstrap intervals lie above the floor's values, and *not distinguishable from the floor* when a "
    "value is above but its interval reaches the floor's value. A method without a headline Dice is not judged."
)

SUPERVISED_DEFINITION = (
    "The *supervised reference points* are U-Nets trained with lesion masks, not weakly supervised: `fsl` on "
    "the validation split's masks only (the annotations every weakly-supervised method here already uses to choose "
    "its checkpoint and its threshold τ; Choe et al., CVPR 2020, found such a few-shot learner above every "
    "weakly-supervised method they tested) and `supervised` on the training split's masks (the ceiling). They are "
    "shown apart and never ranked; `fsl`'s τ is chosen on the very validation images it was trained on."
)

SEEDS_SENTENCE = (
    " With several training seeds, each value is the mean over the seeds ± their standard deviation (the "
    "training variation), the interval a bootstrap over test images of that mean, and methods are ranked by the "
    "means; the line under each table says how often the leaders rank first in a single seed."
)

WHY_POINTER = (
    "Why a method falls below the floor is not measured here: the figures show where its maps go "
    "(qualitative maps per class and family, Dice against lesion size), a method whose training failed its "
    "learning check is flagged above, and `reports/README.md` of the wsl-bench repository diagnoses the "
    "reference runs (\"Why GLAM and GMIC do not beat `intensity`\": which part of each map localises, where "
    "the patches and peak cells fall)."
)


@dataclass(frozen=True)
class Entry:
    """One row of a class's ranking: a method, or methods with identical maps (the first names the row)."""

    methods: tuple[str, ...]
    family: Family
    flagship: bool
    dice: float
    dice_low: float
    dice_high: float
    pxap: float
    pxap_low: float
    pxap_high: float
    auc: float
    verdict: str = ""
    note: str = ""
    dice_sd: float = float("nan")
    pxap_sd: float = float("nan")
    auc_sd: float = float("nan")
    seed_dice: tuple[float, ...] = ()
    seed_pxap: tuple[float, ...] = ()

    @property
    def name(self) -> str:
        return self.methods[0]

    @property
    def label(self) -> str:
        """``cam ≡ gradcam, hirescam`` for a group, the method's name otherwise."""
        return self.name if len(self.methods) == 1 else f"{self.name} ≡ {', '.join(self.methods[1:])}"


@dataclass(frozen=True)
class Floor:
    """The best baseline value of each headline metric for a class, and the baseline that reaches it."""

    dice: float
    dice_by: str
    pxap: float
    pxap_by: str


@dataclass(frozen=True)
class ClassSummary:
    """A class's ranking (best headline Dice first, missing last), its floor rows and the floor, the
    rows of the supervised reference points (never ranked), and ``seeds``: the run's training seeds when it
    has several (each entry's ``seed_dice`` follows them)."""

    cls: str
    n_images: int
    ranked: tuple[Entry, ...]
    floor_entries: tuple[Entry, ...]
    floor: Floor | None
    references: tuple[Entry, ...] = ()
    seeds: tuple[int, ...] = ()

    def best(self, column: str) -> float:
        """The highest value of ``column`` ("dice", "pxap", "auc") over the ranked and the floor rows (the
        supervised reference points left out: they are no competitor), NaN when none."""
        values = [getattr(e, column) for e in (*self.ranked, *self.floor_entries)
                  if not fmt.is_missing(getattr(e, column))]
        return max(values) if values else float("nan")

    def shortfalls(self) -> list[Entry]:
        """The ranked rows that do not clearly beat the floor."""
        return [e for e in self.ranked if e.verdict in (BELOW, UNCLEAR, UNJUDGED)]


def _value(row: Mapping[str, Any], key: str) -> float:
    value = row.get(key) if row is not None else None
    return float("nan") if fmt.is_missing(value) else float(value)


def _floor(entries: Sequence[Entry]) -> Floor | None:
    def best(column: str) -> tuple[float, str]:
        scored = [(getattr(e, column), e.name) for e in entries if not fmt.is_missing(getattr(e, column))]
        return max(scored, key=lambda pair: pair[0]) if scored else (float("nan"), "")

    (dice, dice_by), (pxap, pxap_by) = best("dice"), best("pxap")
    if not dice_by and not pxap_by:
        return None
    return Floor(dice, dice_by, pxap, pxap_by)


def verdict(entry: Entry, floor: Floor | None) -> str:
    """:data:`ABOVE`, :data:`UNCLEAR`, :data:`BELOW` or :data:`UNJUDGED` (see :data:`FLOOR_DEFINITION`)."""
    if floor is None or any(fmt.is_missing(v) for v in (entry.dice, entry.pxap, floor.dice, floor.pxap)):
        return UNJUDGED
    if not (entry.dice > floor.dice and entry.pxap > floor.pxap):
        return BELOW
    # a missing interval (too few images to resample) cannot show the difference
    clear = entry.dice_low > floor.dice and entry.pxap_low > floor.pxap
    return ABOVE if clear else UNCLEAR


def _not_converged(manifest: Mapping[str, Any]) -> dict[str, list[int | None]]:
    """method → the training seeds whose checkpoint failed its learning check (``[None]``: no seed recorded)."""
    failed: dict[str, list[int | None]] = {}
    for method, seed, facts in checkpoint_facts(manifest):
        if facts.get("learning_check"):
            failed.setdefault(method, []).append(seed)
    return failed


def _seeds_of(results: pd.DataFrame) -> tuple[int, ...]:
    """The training seeds of ``results``' per-seed columns (``dice_val_tau_seed<s>``), in order."""
    prefix = "dice_val_tau_seed"
    return tuple(int(c[len(prefix):]) for c in results.columns if c.startswith(prefix) and c[len(prefix):].isdigit())


def summarise(
    results: pd.DataFrame,
    details: pd.DataFrame,
    manifest: Mapping[str, Any],
    groups: Sequence[IdenticalGroup] = (),
) -> list[ClassSummary]:
    """One :class:`ClassSummary` per class present in ``results`` (the rows of ``results.csv``)."""
    if results.empty:
        return []
    pxap_ci = {}
    if {"pxap_ci_low", "pxap_ci_high"} <= set(details.columns):
        pxap_ci = {(d["method"], d["class"]): (d["pxap_ci_low"], d["pxap_ci_high"]) for _, d in details.iterrows()}
    grouped = {m: g.methods for g in groups for m in g.methods}
    not_converged = _not_converged(manifest)
    seeds = _seeds_of(results)
    summaries = []
    for cls in [c for c in CLASSES if (results["class"] == c).any()]:
        rows = {r["method"]: r for _, r in results[results["class"] == cls].iterrows()}
        entries: list[Entry] = []
        for method, row in rows.items():
            members = grouped.get(method, (method,))
            if members[0] != method:
                continue  # shown in its group's row
            low, high = pxap_ci.get((method, cls), (float("nan"), float("nan")))
            options = method_options(manifest, method)
            classifier = classifier_of(method, options)
            # an explainer's checkpoint is its classifier's: name the network whose training failed
            trained = classifier if classifier in not_converged else method if method in not_converged else ""
            failed_seeds = [s for s in not_converged.get(trained, []) if s is not None] if len(seeds) > 1 else []
            in_seeds = f" in seed{'s' if len(failed_seeds) > 1 else ''} {', '.join(map(str, failed_seeds))}" \
                if failed_seeds else ""
            entries.append(Entry(
                methods=tuple(m for m in members if m in rows), family=family_of(method, options),
                flagship=is_flagship(method), dice=_value(row, "dice_val_tau"),
                dice_low=_value(row, "dice_val_tau_ci_low"), dice_high=_value(row, "dice_val_tau_ci_high"),
                pxap=_value(row, "pxap"), pxap_low=_value({"v": low}, "v"), pxap_high=_value({"v": high}, "v"),
                auc=_value(row, "auc"),
                note=f"training of {trained} did not converge{in_seeds}" if trained else "",
                dice_sd=_value(row, "dice_val_tau_sd"), pxap_sd=_value(row, "pxap_sd"), auc_sd=_value(row, "auc_sd"),
                seed_dice=tuple(_value(row, f"dice_val_tau_seed{s}") for s in seeds),
                seed_pxap=tuple(_value(row, f"pxap_seed{s}") for s in seeds),
            ))
        floor_entries = sorted((e for e in entries if e.name in FLOOR), key=lambda e: FLOOR.index(e.name))
        floor = _floor(floor_entries)
        references = tuple(replace(e, verdict=verdict(e, floor)) for e in entries if e.family is SUPERVISED)
        ranked = [e for e in entries if e.name not in FLOOR and e.family is not SUPERVISED]
        ranked = [replace(e, verdict=verdict(e, floor)) for e in ranked]
        # best headline Dice first; a missing one last; ties by PxAP, then the run's order (stable sort)
        ranked.sort(key=lambda e: (fmt.is_missing(e.dice), -(0 if fmt.is_missing(e.dice) else e.dice),
                                   -(0 if fmt.is_missing(e.pxap) else e.pxap)))
        n_images = int(results.loc[results["class"] == cls, "n_images"].max())
        summaries.append(ClassSummary(cls, n_images, tuple(ranked), tuple(floor_entries), floor, references,
                                      seeds if len(seeds) > 1 else ()))
    return summaries


def seed_ranks(summary: ClassSummary) -> dict[str, list[int]]:
    """Entry name → its rank among the ranked (weakly-supervised) methods in each seed of the run, by
    that seed's headline Dice (ties by its PxAP; a missing value last), as the summary ranks the means."""
    ranks: dict[str, list[int]] = {e.name: [] for e in summary.ranked}
    for k in range(len(summary.seeds)):
        def key(e: Entry, k: int = k) -> tuple[bool, float, float]:
            dice = e.seed_dice[k] if k < len(e.seed_dice) else float("nan")
            pxap = e.seed_pxap[k] if k < len(e.seed_pxap) else float("nan")
            return fmt.is_missing(dice), -(0 if fmt.is_missing(dice) else dice), -(0 if fmt.is_missing(pxap) else pxap)

        for rank, entry in enumerate(sorted(summary.ranked, key=key), start=1):
            ranks[entry.name].append(rank)
    return ranks


def stability_sentence(summary: ClassSummary) -> str:
    """Rank stability over seeds (Markdown), e.g. "`cam` ranks first among weakly-supervised methods in 2
    of 3 seeds; `glam` in 0 of 3 (ranks 4, 3, 5)": for the first method by the seed means, and for GLAM
    whatever its rank. Empty with fewer than two seeds or nothing ranked."""
    if len(summary.seeds) < 2 or not summary.ranked:
        return ""
    ranks = seed_ranks(summary)
    n = len(summary.seeds)
    top = summary.ranked[0]
    parts = [f"`{top.label}` (first by the seed means) ranks first among weakly-supervised methods in "
             f"{ranks[top.name].count(1)} of {n} seeds (ranks {', '.join(map(str, ranks[top.name]))})"]
    glam = next((e for e in summary.ranked if "glam" in e.methods), None)
    if glam is not None and glam is not top:
        parts.append(f"`glam` in {ranks[glam.name].count(1)} of {n} (ranks {', '.join(map(str, ranks[glam.name]))})")
    return f"Rank stability ({summary.cls}, seeds {', '.join(map(str, summary.seeds))}): " + "; ".join(parts) + "."


def shortfall_sentence(entry: Entry, summary: ClassSummary) -> str:
    """Why ``entry`` does not clearly beat the floor of its class, with the numbers (Markdown)."""
    floor = summary.floor
    names = " ≡ ".join(f"`{m}`" for m in entry.methods)
    if floor is None:
        text = f"{names}: this run has no trivial baseline to compare with"
    elif fmt.is_missing(entry.dice) or fmt.is_missing(entry.pxap):
        text = f"{names}: no headline Dice or PxAP for this class (see the notes below the table)"
    else:
        against = (f"the floor's Dice {fmt.score(floor.dice)} (`{floor.dice_by}`) and PxAP {fmt.score(floor.pxap)} "
                   f"(`{floor.pxap_by}`)")
        mine = (f"Dice {fmt.score_sd(entry.dice, entry.dice_sd)} {fmt.interval(entry.dice_low, entry.dice_high)} and "
                f"PxAP {fmt.score_sd(entry.pxap, entry.pxap_sd)} {fmt.interval(entry.pxap_low, entry.pxap_high)}"
                ).replace("  ", " ")
        if entry.verdict == BELOW:
            lower = [name for name, mine_v, floor_v in (("Dice", entry.dice, floor.dice),
                                                          ("PxAP", entry.pxap, floor.pxap)) if mine_v <= floor_v]
            text = f"{names}: {mine}; {' and '.join(lower)} not above {against}"
        else:
            text = f"{names}: {mine}, above {against}, but an interval reaches the floor: not distinguishable"
    if entry.note:
        text += f" ({entry.note}: see above)"
    return text + "."


def reference_sentence(summary: ClassSummary) -> str:
    """Where the supervised reference points stand for the class, against the best ranked
    (weakly-supervised) method's headline Dice (Markdown); empty when the run has none."""
    if not summary.references:
        return ""
    shown = "; ".join(f"`{e.name}` Dice {fmt.score(e.dice)} {fmt.interval(e.dice_low, e.dice_high)}, PxAP "
                      f"{fmt.score(e.pxap)}".replace("  ", " ") for e in summary.references)
    text = f"Supervised reference points ({summary.cls}; trained with masks, not ranked): {shown}"
    best = next((e for e in summary.ranked if not fmt.is_missing(e.dice)), None)
    if best is not None:
        shares = [f"{100 * best.dice / e.dice:.0f} % of `{e.name}`'s" for e in summary.references
                  if not fmt.is_missing(e.dice) and e.dice > 0]
        text += (f". The best weakly-supervised method, `{best.name}`, reaches Dice {fmt.score(best.dice)}"
                 + (f": {' and '.join(shares)}" if shares else ""))
    return text + "."


def _bold_if(text: str, value: float, best: float) -> str:
    return f"**{text}**" if not fmt.is_missing(value) and value == best else text


def _markdown_row(rank: str, e: Entry, best: dict[str, float]) -> str:
    dice = _bold_if(fmt.score_sd(e.dice, e.dice_sd), e.dice, best["dice"])
    pxap = _bold_if(fmt.score_sd(e.pxap, e.pxap_sd), e.pxap, best["pxap"])
    auc = _bold_if(fmt.score_sd(e.auc, e.auc_sd), e.auc, best["auc"])
    return (f"| {rank} | {e.label} | {e.family.short} | {dice} {fmt.interval(e.dice_low, e.dice_high)} "
            f"| {pxap} {fmt.interval(e.pxap_low, e.pxap_high)} | {auc} | {e.verdict} |")


def to_markdown(summaries: Sequence[ClassSummary], groups: Sequence[IdenticalGroup] = ()) -> str:
    """The summary section of ``results.md`` (empty when there is nothing to rank)."""
    if not summaries:
        return ""
    lines = [
        "## Summary: ranked on the headline metrics",
        "",
        "Per class, every method other than the trivial baselines and the supervised reference points ranked by "
        "Dice (val τ), the headline, with PxAP beside it (test images; 95% bootstrap intervals in brackets); "
        "**bold**: the best value of each column, baselines included. Methods with identical maps share a row "
        "(`≡`). The supervised reference points (rank `uses masks`) and the baselines follow, set apart; the "
        "baselines are the floor. " + FLOOR_DEFINITION + SEEDS_SENTENCE * bool(summaries[0].seeds),
        "",
    ]
    for summary in summaries:
        best = {c: summary.best(c) for c in ("dice", "pxap", "auc")}
        lines += [
            f"### {summary.cls} lesions ({summary.n_images} test images)",
            "",
            "| rank | method | family | Dice (val τ) [95% CI] | PxAP [95% CI] | AUC | against the floor |",
            "|---|---|---|---|---|---|---|",
        ]

        lines += [_markdown_row(str(i), e, best) for i, e in enumerate(summary.ranked, start=1)]
        lines += [_markdown_row(REFERENCE_ROW, e, NOT_MARKED) for e in summary.references]
        lines += [_markdown_row(FLOOR_ROW, e, best) for e in summary.floor_entries]
        shortfalls = summary.shortfalls()
        lines += [""]
        if summary.references:
            lines += [reference_sentence(summary), ""]
        if shortfalls:
            lines += [f"Not clearly above the floor ({summary.cls}):", ""]
            lines += [f"- {shortfall_sentence(e, summary)}" for e in shortfalls]
        elif summary.ranked:
            lines += [f"Every ranked method is above the floor for {summary.cls} lesions."]
        stability = stability_sentence(summary)
        lines += ["", stability] if stability else []
        lines += [""]
    if any(s.references for s in summaries):
        lines += [SUPERVISED_DEFINITION, ""]
    if groups:
        lines += [f"**Identical maps** ({IDENTICAL_DEFINITION}; one row each above):", ""]
        lines += [f"- {' ≡ '.join(f'`{m}`' for m in g.methods)}: {g.reason}" for g in groups]
        lines += [""]
    lines += [WHY_POINTER, ""]
    return "\n".join(lines)
