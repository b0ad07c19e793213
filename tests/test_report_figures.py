"""The report's figures stay readable at twenty methods: panels by family, direct labels that do not
overlap, ticks that do not collide, the flagship findable, the qualitative maps split by class and family."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import to_hex
from matplotlib.lines import Line2D
from matplotlib.text import Annotation
from report_fixtures import TWENTY, twenty_report

from wsl_bench.plotting import plt
from wsl_bench.report import drawing, figures, qualitative
from wsl_bench.report.equivalence import identical_groups
from wsl_bench.report.families import BASELINES, families, ordered
from wsl_bench.report.labels import spread
from wsl_bench.report.styles import FLAGSHIP_COLOURS, styles
from wsl_bench.report.tables import RunData


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    run_dir, report = twenty_report(tmp_path_factory)
    data = RunData.load(run_dir)
    return data, drawing.Plan.of(data, identical_groups(data)), pd.read_csv(report / "results.csv"), report


@pytest.fixture
def drawn(monkeypatch):
    """name → the matplotlib figure a drawing function saved under that name."""
    saved: dict[str, plt.Figure] = {}
    real = drawing.save_figure_atomic

    def keep(fig, path, **kwargs):
        saved[path.stem] = fig
        real(fig, path, **kwargs)

    monkeypatch.setattr(drawing, "save_figure_atomic", keep)
    return saved


def _overlaps(texts) -> list[tuple[str, str]]:
    """Pairs of texts whose drawn boxes overlap (by more than a pixel each way)."""
    boxes = [(t.get_text(), t.get_window_extent()) for t in texts if t.get_visible() and t.get_text().strip()]
    return [(a, b) for (a, box_a), (b, box_b) in itertools.combinations(boxes, 2)
            if box_a.x0 < box_b.x1 - 1 and box_b.x0 < box_a.x1 - 1 and box_a.y0 < box_b.y1 - 1
            and box_b.y0 < box_a.y1 - 1]


def _tick_labels(ax) -> list:
    """The x tick labels actually drawn (inside the view limits)."""
    low, high = sorted(ax.get_xlim())
    ticks = [*ax.xaxis.get_major_ticks(), *ax.xaxis.get_minor_ticks()]
    return [t.label1 for t in ticks if t.label1.get_visible() and t.label1.get_text() and low <= t.get_loc() <= high]


# -- direct labels ------------------------------------------------------------------------------------------------
def test_spread_keeps_order_and_gap_and_moves_labels_as_little_as_it_can():
    positions = spread([0.2, 0.2, 0.21, 0.5, 0.95], gap=0.05, low=0, high=1)
    assert np.allclose(positions[3], 0.5)  # a label with room stays where it is
    assert np.all(np.diff(positions[[0, 1, 2, 3]]) >= 0.05 - 1e-12)
    assert np.isclose(positions[:3].mean(), np.mean([0.2, 0.2, 0.21]))  # a cluster moves as a block around its mean
    assert np.allclose(spread([1, 1, 1], 0.1, 0, 1), [0.8, 0.9, 1.0])  # kept inside the range
    rng = np.random.default_rng(0)
    for _ in range(200):
        targets, gap = rng.uniform(-0.2, 1.2, rng.integers(1, 25)), rng.uniform(0, 0.04)
        placed = spread(targets, gap, 0, 1)
        order = np.argsort(targets, kind="stable")
        assert np.all(np.diff(placed[order]) >= gap - 1e-9)
        assert placed.min() >= -1e-9 and placed.max() <= 1 + 1e-9


def test_styles_make_the_flagship_findable_and_keep_colours_apart():
    methods = ordered(TWENTY, {})
    family = families(methods, {})
    style = styles(methods, family)
    assert style["glam"].colour == FLAGSHIP_COLOURS["glam"] and style["gmic"].colour == FLAGSHIP_COLOURS["gmic"]
    others = [m for m in methods if m not in ("glam", "gmic")]
    assert all(style[m].linewidth < style["glam"].linewidth and style[m].markersize < style["gmic"].markersize
               for m in others)
    drawn = [m for m in methods if family[m] is not BASELINES]
    assert len({style[m].colour for m in drawn}) >= min(len(drawn), 12)  # one palette across families
    assert all(style[m].linestyle != "-" for m in methods if family[m] is BASELINES)


# -- the figures at twenty methods --------------------------------------------------------------------------------
@pytest.mark.slow
def test_dice_vs_lesion_size_has_a_panel_per_family_with_distinct_labelled_lines(run, drawn, tmp_path):
    data, plan, results, _ = run
    assert figures.dice_vs_lesion_size(data, tmp_path, results, plan)
    fig = drawn["dice_vs_lesion_size"]
    fig.canvas.draw()
    axes = [ax for ax in fig.axes if ax.lines]
    assert len(axes) == 3 * 2  # learned, Grad-CAM family, captum × benign, malignant
    for ax in axes:
        lines = [line for line in ax.lines if isinstance(line, Line2D)]
        assert len(lines) <= 10, ax.get_title()
        colours = [to_hex(line.get_color()) for line in lines]
        assert len(set(colours)) == len(colours), ax.get_title()  # no two lines of a panel share a colour
        labels = [t for t in ax.texts if isinstance(t, Annotation)]
        assert len(labels) == len(lines)  # every line labelled directly
        assert _overlaps(labels) == [], ax.get_title()
        assert _overlaps(_tick_labels(ax)) == [], ax.get_title()
        assert any(t.get_text().startswith("floor: ") for t in labels)
    learned = [ax for ax in axes if "learned" in ax.get_title()]
    for ax in learned:
        widths = {to_hex(line.get_color()): line.get_linewidth() for line in ax.lines}
        assert widths[FLAGSHIP_COLOURS["glam"]] == widths[FLAGSHIP_COLOURS["gmic"]] == max(widths.values())
        assert any(t.get_text() == "cam ≡ gradcam +3" for t in ax.texts)  # identical methods drawn once


@pytest.mark.slow
def test_cost_vs_dice_labels_every_method_once_per_class_without_overlap(run, drawn, tmp_path):
    data, plan, results, _ = run
    assert figures.cost_vs_dice(results, tmp_path, plan)
    fig = drawn["cost_vs_dice"]
    fig.canvas.draw()
    axes = [ax for ax in fig.axes if ax.collections]
    assert len(axes) == 2
    expected = sorted(plan.label(m) for m in plan.shown())
    for ax in axes:
        labels = [t for t in ax.texts if isinstance(t, Annotation)]
        assert sorted(t.get_text() for t in labels) == expected
        assert _overlaps(labels) == []
        assert _overlaps(_tick_labels(ax)) == []
        bold = {t.get_text() for t in labels if t.get_fontweight() == "bold"}
        assert bold == {"glam", "gmic"}


@pytest.mark.slow
def test_the_qualitative_maps_are_split_by_family_and_by_class(run, drawn, tmp_path):
    data, plan, _, report = run
    pages = qualitative.pages(data, plan)
    shown = [m for _, _, methods, _ in pages for m in methods]
    assert sorted(shown) == sorted(TWENTY)  # every method once, somewhere
    assert pages[0][0] == "qualitative" and {"glam", "gmic", "intensity"} <= set(pages[0][2])
    assert all(len(methods) + len(refs) <= qualitative.MAX_METHODS for _, _, methods, refs in pages)
    assert all(refs == ["cam"] for name, _, _, refs in pages if name != "qualitative")  # beside what they explain
    entries = qualitative.draw(data, tmp_path, plan)
    assert [e.name for e in entries] == [name for name, *_ in pages]
    for entry in entries:
        fig = drawn[entry.name]
        width_px = plt.imread(tmp_path / f"{entry.name}.png").shape[1]
        assert width_px <= 1700, (entry.name, width_px)  # the old single grid was 19 columns, 2223 px
        rows = [ax.get_ylabel() for ax in fig.axes if ax.get_ylabel()]
        assert any(r.startswith("benign") for r in rows) and any(r.startswith("malignant") for r in rows)
        titles = [ax.title for ax in fig.axes if ax.get_title()]
        assert titles and min(t.get_fontsize() for t in titles) >= 9
    # the report's page shows each of them
    page = (report / "index.html").read_text(encoding="utf-8")
    assert all(f"data-file='{e.name}.png'" in page for e in entries)  # embedded (test_report_page.py)
