"""What the report's figures share: how they are saved, which methods they draw under which label and
style (:class:`Plan`), and direct labels in columns that never overlap (:func:`label_column`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from wsl_bench.atomic_io import save_figure_atomic
from wsl_bench.plotting import plt
from wsl_bench.report.equivalence import IdenticalGroup
from wsl_bench.report.families import BASELINES, FAMILIES, Family, families, ordered
from wsl_bench.report.labels import spread
from wsl_bench.report.styles import Style, styles

if TYPE_CHECKING:
    from wsl_bench.report.run_data import RunData

LABEL_POINTS = 8.0
"""Font size of direct labels, in points."""


def save(fig: plt.Figure, out: Path, name: str) -> None:
    """Write ``name``.png and ``name``.pdf atomically (a kill or a full disk keeps the old files)."""
    try:
        save_figure_atomic(fig, out / f"{name}.png", dpi=120, bbox_inches="tight")
        save_figure_atomic(fig, out / f"{name}.pdf", bbox_inches="tight")
    finally:
        plt.close(fig)


@dataclass
class Plan:
    """What every figure of a run shares: the methods in report order, their families and styles, and
    which methods are drawn (one per group of identical maps) under which label."""

    methods: list[str]
    family: dict[str, Family]
    style: dict[str, Style]
    groups: Sequence[IdenticalGroup] = field(default_factory=tuple)

    @classmethod
    def of(cls, data: RunData, groups: Sequence[IdenticalGroup] = ()) -> Plan:
        methods = ordered(data.methods, data.manifest)
        family = families(methods, data.manifest)
        twin_of = {m: g.methods[0] for g in groups for m in g.methods[1:]}
        return cls(methods, family, styles(methods, family, twin_of), tuple(groups))

    def hidden(self) -> set[str]:
        """Methods drawn under their group's first method."""
        return {m for g in self.groups for m in g.methods[1:]}

    def shown(self, methods: Sequence[str] | None = None) -> list[str]:
        hidden = self.hidden()
        return [m for m in (self.methods if methods is None else methods) if m not in hidden]

    def label(self, method: str) -> str:
        """``cam ≡ gradcam +3`` for a group's first method, the name otherwise."""
        for group in self.groups:
            if group.methods[0] == method:
                others = group.methods[1:]
                return f"{method} ≡ {others[0]}" + (f" +{len(others) - 1}" if len(others) > 1 else "")
        return method

    def panels(self) -> list[tuple[Family, list[str]]]:
        """(family, methods drawn) for each family other than the floor that has a method drawn."""
        shown = self.shown()
        out = []
        for fam in FAMILIES:
            members = [m for m in shown if self.family[m] is fam]
            if members and fam is not BASELINES:
                out.append((fam, members))
        return out

    def floor(self) -> list[str]:
        return [m for m in self.methods if self.family[m] is BASELINES]


def label_column(ax: plt.Axes, items: Sequence[tuple[str, float, float, Style]], x_label: float,
                 clip: tuple[float, float] | None = None) -> None:
    """Label points ``(text, x, y, style)`` of ``ax`` in a column at ``x_label`` (axes fraction), each
    joined to its point by a thin line in its colour, spread so no two labels overlap.

    ``clip`` is the data range the column may use (default: the axes' y limits).
    """
    if not items:
        return
    fig = ax.figure
    fig.canvas.draw()  # the axes' final size decides how much data one label's height is
    low, high = clip or ax.get_ylim()
    height_px = ax.get_window_extent().height
    gap = (LABEL_POINTS * 1.35 * fig.dpi / 72) / max(height_px, 1.0) * (ax.get_ylim()[1] - ax.get_ylim()[0])
    positions = spread([y for _, _, y, _ in items], gap, low, high)
    for (text, x, y, style), at in zip(items, positions, strict=True):
        ax.annotate(text, xy=(x, y), xycoords="data", xytext=(x_label, at), textcoords=("axes fraction", "data"),
                    fontsize=LABEL_POINTS, fontweight=style.weight, color=style.colour, va="center", ha="left",
                    annotation_clip=False, bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.8, "pad": 0.4},
                    arrowprops={"arrowstyle": "-", "color": style.colour, "linewidth": 0.6, "alpha": 0.7,
                                "shrinkA": 0, "shrinkB": 2})


_BESIDE = ((1, 0, "left", "center"), (-1, 0, "right", "center"), (0, 1, "center", "bottom"),
           (0, -1, "center", "top"), (0.8, 0.8, "left", "bottom"), (0.8, -0.8, "left", "top"),
           (-0.8, 0.8, "right", "bottom"), (-0.8, -0.8, "right", "top"))
"""Where a label may sit beside its point: the direction of its offset (scaled by the marker's size), then
its alignment; right of the point first, as one reads."""


def label_points(ax: plt.Axes, items: Sequence[tuple[str, float, float, Style]], column_x: float = 1.03) -> None:
    """Label scattered points ``(text, x, y, style)``: beside its point where a label fits without
    touching another label, a marker or the axes' edge, else in a column right of the axes
    (:func:`label_column`). Bold (flagship) labels are placed first, so they get the best spots."""
    if not items:
        return
    fig = ax.figure
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    pixels_per_point = fig.dpi / 72
    points = [ax.transData.transform((x, y)) for _, x, y, _ in items]
    # every marker is an obstacle: a square of its size around its centre
    taken = [(px - s.markersize * pixels_per_point / 2, py - s.markersize * pixels_per_point / 2,
              px + s.markersize * pixels_per_point / 2, py + s.markersize * pixels_per_point / 2)
             for (px, py), (_, _, _, s) in zip(points, items, strict=True)]

    def free(box: tuple[float, float, float, float]) -> bool:
        x0, y0, x1, y1 = box
        inside = frame.x0 <= x0 and x1 <= frame.x1 and frame.y0 <= y0 and y1 <= frame.y1
        return inside and all(x1 <= t_x0 or t_x1 <= x0 or y1 <= t_y0 or t_y1 <= y0 for t_x0, t_y0, t_x1, t_y1 in taken)

    leftover = []
    order = sorted(range(len(items)), key=lambda i: items[i][3].weight != "bold")
    for i in order:
        text, x, y, style = items[i]
        probe = ax.text(0, 0, text, fontsize=LABEL_POINTS, fontweight=style.weight)
        extent = probe.get_window_extent(renderer)
        probe.remove()
        width, height = extent.width + 4, extent.height + 2  # the white box around the text
        px, py = points[i]
        reach = style.markersize / 2 + 3  # points from the marker's centre: clear of the marker itself
        for ux, uy, ha, va in _BESIDE:
            dx, dy = ux * reach, uy * reach
            anchor_x, anchor_y = px + dx * pixels_per_point, py + dy * pixels_per_point
            x0 = {"left": anchor_x, "right": anchor_x - width, "center": anchor_x - width / 2}[ha]
            y0 = {"bottom": anchor_y, "top": anchor_y - height, "center": anchor_y - height / 2}[va]
            box = (x0, y0, x0 + width, y0 + height)
            if free(box):
                taken.append(box)
                ax.annotate(text, xy=(x, y), xycoords="data", xytext=(dx, dy), textcoords="offset points",
                            ha=ha, va=va, fontsize=LABEL_POINTS, fontweight=style.weight, color=style.colour,
                            bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.8, "pad": 0.4})
                break
        else:
            leftover.append(items[i])
    label_column(ax, leftover, column_x)
