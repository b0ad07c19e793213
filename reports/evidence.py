"""Write the evidence table of reports/README.md from a run's results: do GLAM, GMIC and CAM beat the
trivial baselines, and how does GLAM compare with the best other learned method (the paper's claim)?

    python reports/evidence.py                       # from reports/default/report/results.csv
    python reports/evidence.py --results R.csv --check

The table sits between ``<!-- evidence-table -->`` and ``<!-- /evidence-table -->`` in reports/README.md.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
LEARNED = ("glam", "gmic", "cam")
BASELINES = ("intensity", "centre_prior", "random")
SUPERVISED = ("fsl", "supervised")
"""The supervised reference points (trained with masks): beside the table, never "the best other learned method"."""
HEADLINE = ("dice_val_tau", "pxap")
PAPER_GAIN = {"benign": 39.6, "malignant": 20.0}
"""GLAM's Dice over the best earlier method on the NYU test set, in % (Liu et al., MIDL 2021)."""
BLOCK = re.compile(r"(<!-- evidence-table -->\n)(.*?)(<!-- /evidence-table -->)", re.S)


def _value(results: pd.DataFrame, method: str, cls: str, column: str) -> float:
    row = results[(results["method"] == method) & (results["class"] == cls)]
    return float(row.iloc[0][column]) if len(row) else float("nan")


def evidence_markdown(results: pd.DataFrame) -> str:
    """The table (learned methods against the floor of the baselines, per class) and GLAM's relative Dice."""
    lines = [
        "| class | method | Dice (val τ) | PxAP | beats intensity / centre_prior / random on both |",
        "|---|---|---|---|---|",
    ]
    for cls in ("benign", "malignant"):
        for method in (*LEARNED, *BASELINES):
            dice, pxap = (_value(results, method, cls, c) for c in HEADLINE)
            verdict = ""
            if method in LEARNED:
                beaten = [
                    all(_value(results, method, cls, c) > _value(results, b, cls, c) for c in HEADLINE)
                    for b in BASELINES
                ]
                verdict = " / ".join("yes" if b else "**no**" for b in beaten)
            lines.append(f"| {cls} | {method} | {dice:.3f} | {pxap:.3f} | {verdict} |")
    lines += ["", "GLAM's Dice (val τ) against the best other learned method of this run, beside the paper's gain:", ""]
    others = sorted(set(results["method"]) - {"glam", *BASELINES, *SUPERVISED})
    for cls in ("benign", "malignant"):
        glam = _value(results, "glam", cls, "dice_val_tau")
        best = max(others, key=lambda m: _value(results, m, cls, "dice_val_tau"))
        ref = _value(results, best, cls, "dice_val_tau")
        gain = 100 * (glam / ref - 1) if ref > 0 else float("nan")
        lines.append(
            f"- {cls}: GLAM {glam:.3f} against {best} {ref:.3f}: {gain:+.1f} % (paper: +{PAPER_GAIN[cls]} %)"
        )
    references = [m for m in SUPERVISED if m in set(results["method"])]
    if references:
        lines += ["", "Where the supervised reference points (trained with masks, not ranked) stand, Dice (val τ) / "
                  "PxAP, beside the best weakly-supervised method:", ""]
        for cls in ("benign", "malignant"):
            best = max([*others, "glam"], key=lambda m: _value(results, m, cls, "dice_val_tau"))
            ref = _value(results, best, cls, "dice_val_tau")
            parts = []
            for m in references:
                dice, pxap = (_value(results, m, cls, c) for c in HEADLINE)
                parts.append(f"{m} {dice:.3f} / {pxap:.3f} (the best weakly-supervised at {100 * ref / dice:.0f} %)")
            lines.append(f"- {cls}: {'; '.join(parts)}; best weakly-supervised: {best} {ref:.3f}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default=str(ROOT / "reports" / "default" / "report" / "results.csv"))
    parser.add_argument("--readme", default=str(ROOT / "reports" / "README.md"))
    parser.add_argument("--check", action="store_true", help="exit 1 if the block is out of date, write nothing")
    args = parser.parse_args(argv)
    readme = Path(args.readme)
    text = readme.read_text(encoding="utf-8")
    if not BLOCK.search(text):
        raise SystemExit(f"{readme}: no <!-- evidence-table --> block")
    table = evidence_markdown(pd.read_csv(args.results))
    updated = BLOCK.sub(lambda m: m.group(1) + table + m.group(3), text)
    if updated == text:
        return 0
    if args.check:
        print(f"out of date: {readme}")
        return 1
    readme.write_text(updated, encoding="utf-8")
    print(f"updated: {readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
