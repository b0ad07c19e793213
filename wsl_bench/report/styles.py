"""How each method is drawn in the report's figures, so twenty methods stay apart.

A figure never asks a reader to tell twenty colours apart: methods are drawn in panels per family
(at most about ten per panel) and labelled directly. Within a family, colours come from one
qualitative palette in the report's order. The flagship methods (GLAM, GMIC) keep one strong colour
and a thick line or a large marker in every figure, so they can be found at a glance; the trivial
baselines are grey and dashed (the floor, not competitors), the supervised reference points dark and
dash-dotted (trained with masks, not competitors either); each family has its own marker, so the
single cost panel that shows every method still separates them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from wsl_bench.report.families import BASELINES, CAPTUM, GRADCAM, LEARNED, OTHER, SUPERVISED, Family, is_flagship

FLAGSHIP_COLOURS = {"glam": "#1f4e9c", "gmic": "#e07b00"}
"""GLAM dark blue, GMIC orange, in every figure (their published-weights variants too)."""

PALETTE = ("#9467bd", "#17becf", "#8c564b", "#e377c2", "#2ca02c", "#bcbd22", "#d62728", "#393b79", "#637939",
           "#ad494a", "#6b6ecf", "#8c6d31")
"""Distinct colours for the other methods of a family (blue and orange are the flagship's)."""

FLOOR_STYLES = {"intensity": ("#4d4d4d", (0, (5, 2))), "centre_prior": ("#7f7f7f", (0, (5, 1, 1, 1))),
                "random": ("#a6a6a6", (0, (1, 1.5)))}
"""The baselines: greys, dashed lines (colour, matplotlib dash pattern)."""

SUPERVISED_STYLES = {"fsl": "#1b7837", "supervised": "#40004b"}
"""The supervised reference points: dark green (``fsl``) and dark purple (``supervised``), dash-dotted."""

FAMILY_MARKERS = {LEARNED.key: "o", GRADCAM.key: "s", CAPTUM.key: "^", OTHER.key: "v", SUPERVISED.key: "P",
                  BASELINES.key: "X"}


@dataclass(frozen=True)
class Style:
    """Matplotlib keywords of one method: colour, line width and dashes, marker and its size, label weight."""

    colour: str
    linewidth: float
    linestyle: object
    marker: str
    markersize: float
    weight: str
    zorder: int


def styles(methods: Sequence[str], family: Mapping[str, Family],
           twin_of: Mapping[str, str] | None = None) -> dict[str, Style]:
    """A :class:`Style` per method; ``methods`` in the order the report shows them (colours follow it).

    A method in ``twin_of`` (identical maps, drawn as its twin) takes its twin's style and no colour of
    its own, so the palette's colours go to the methods actually drawn.
    """
    twin_of = twin_of or {}
    out: dict[str, Style] = {}
    used = 0  # one palette across families: within any panel (a family, or all) colours differ up to 12
    for method in methods:
        if method in twin_of:
            continue
        fam = family[method]
        marker = FAMILY_MARKERS.get(fam.key, "o")
        if is_flagship(method):
            colour = FLAGSHIP_COLOURS[method.split(".", 1)[0]]
            dashes = "-" if "." not in method else (0, (6, 2))  # a published-weights variant: same colour, dashed
            out[method] = Style(colour, 3.0, dashes, "*" if method.startswith("glam") else "D", 13.0, "bold", 5)
        elif fam is BASELINES:
            colour, dashes = FLOOR_STYLES.get(method, ("#8c8c8c", (0, (3, 2))))
            out[method] = Style(colour, 1.6, dashes, marker, 8.0, "normal", 3)
        elif fam is SUPERVISED:
            colour = SUPERVISED_STYLES.get(method, "#2d4d2d")
            out[method] = Style(colour, 1.8, (0, (6, 2, 1, 2)), marker, 9.0, "normal", 3)
        else:
            out[method] = Style(PALETTE[used % len(PALETTE)], 1.6, "-", marker, 8.0, "normal", 4)
            used += 1
    for method, twin in twin_of.items():
        if method in family:
            out[method] = out.get(twin) or styles([twin], family)[twin]
    return out
