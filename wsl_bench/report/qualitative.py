"""The qualitative figures: saliency maps as scored, split by class and by method family.

One figure per family (``qualitative.png``: the learned methods and the trivial baselines;
``qualitative_gradcam.png``, ``qualitative_captum.png``, ...: the explainers, each beside the
classifier it explains), at most :data:`MAX_METHODS` map columns each so a map stays large enough to
see. Inside a figure, one block of rows per class: each row an image holding a lesion of that class,
its outline on the image and on every method's map *of that class* (a malignant map for a benign
lesion says nothing about the benign map), all on the same colour scale [0, 1].

The images and maps are the small copies a run keeps (``maps/``, :mod:`wsl_bench.evaluation.figure_maps`).
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from wsl_bench.evaluation.figure_maps import stored_figure_images
from wsl_bench.plotting import CLASS_COLOURS, plt
from wsl_bench.report.drawing import Plan, save
from wsl_bench.report.families import BASELINES, FAMILIES, LEARNED, classifier_of, method_options
from wsl_bench.report.page import FigureEntry
from wsl_bench.saliency import CLASSES

if TYPE_CHECKING:
    from wsl_bench.report.run_data import RunData

MAX_METHODS = 7
"""Map columns per figure: at 1.6 in each, a figure of 8 columns is 1500 px wide at 120 dpi."""

IMAGES_PER_CLASS = 2
"""Rows per class block (images holding a lesion of the class, first by id)."""

PANEL_WIDTH_IN = 1.6


def _load_npz(path: Path) -> dict[str, Any] | None:
    """The arrays of a figure-map file, or ``None`` when it is missing or unreadable."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {k: archive[k] for k in archive.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):
        return None


def _chunks(items: list[str], size: int) -> list[list[str]]:
    """``items`` in consecutive chunks of at most ``size``, as even as possible (9 by 6: 5 and 4, not 6 and 3)."""
    if not items:
        return [[]]
    count = -(-len(items) // size)
    bounds = np.linspace(0, len(items), count + 1).round().astype(int)
    return [items[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def pages(data: RunData, plan: Plan) -> list[tuple[str, str, list[str], list[str]]]:
    """``(file name, title, methods, reference methods)`` of each qualitative figure.

    The first holds the learned methods and the floor; each explainer family gets its own, with the
    classifiers its explainers explain as reference columns. A family wider than
    :data:`MAX_METHODS` is split over numbered figures.
    """
    with_maps = [m for m in plan.methods if (data.run_dir / "maps" / m).is_dir()]
    learned = [m for m in with_maps if plan.family[m] is LEARNED]
    floor = [m for m in with_maps if plan.family[m] is BASELINES]
    out = []
    for i, chunk in enumerate(_chunks(learned, MAX_METHODS - len(floor))):
        name = "qualitative" if i == 0 else f"qualitative_learned_{i + 1}"
        title = "learned methods and the floor" if i == 0 else f"learned methods ({i + 1})"
        if chunk or (i == 0 and floor):
            out.append((name, title, chunk + (floor if i == 0 else []), []))
    for fam in FAMILIES:
        if fam in (LEARNED, BASELINES):
            continue
        members = [m for m in with_maps if plan.family[m] is fam]
        if not members:
            continue
        explained = {classifier_of(m, method_options(data.manifest, m)) for m in members}
        references = [m for m in with_maps if m in explained]
        chunks = _chunks(members, max(MAX_METHODS - len(references), 1))
        for i, chunk in enumerate(chunks):
            suffix = f"_{i + 1}" if len(chunks) > 1 else ""
            numbered = f" ({i + 1} of {len(chunks)})" if len(chunks) > 1 else ""
            out.append((f"qualitative_{fam.key}{suffix}", f"{fam.title}{numbered}", chunk, references))
    return out


Row = tuple[str, str, dict[str, Any], str]
"""(class, image id, the stored image and masks, the figure-map file name shared by every method)."""


def _rows(images: dict[str, Path]) -> list[Row]:
    """Per class, the first images holding a lesion of it."""
    stored = {image_id: _load_npz(path) for image_id, path in images.items()}
    rows = []
    for cls in CLASSES:
        holding = [i for i, s in stored.items() if s is not None and s.get(f"mask_{cls}") is not None
                   and s[f"mask_{cls}"].any()]
        rows += [(cls, image_id, stored[image_id], images[image_id].name) for image_id in holding[:IMAGES_PER_CLASS]]
    return rows


def _title(method: str, plan: Plan, references: list[str]) -> str:
    twin = next((g.methods[0] for g in plan.groups if method in g.methods[1:]), None)
    if method in references:
        return f"{method}\n(explained classifier)"
    return f"{method}\n(≡ {twin})" if twin else method


def grid(data: RunData, out: Path, plan: Plan, name: str, title: str, methods: list[str],
         references: list[str], rows: list[Row]) -> bool:
    """One qualitative figure: class blocks of rows, the image column then ``references + methods``."""
    columns = [*references, *methods]
    if not rows or not columns:
        return False
    height, width = rows[0][2]["image"].shape
    panel_h = PANEL_WIDTH_IN * height / width
    ncols = 1 + len(columns)
    headed = len({row[0] for row in rows})  # rows that carry column titles: the first of each class
    fig, axes = plt.subplots(len(rows), ncols, squeeze=False, layout="constrained",
                             figsize=(PANEL_WIDTH_IN * ncols + 0.6, (panel_h + 0.1) * len(rows) + 0.45 * headed + 1.1))
    mappable = None
    for r, (cls, image_id, stored, file_name) in enumerate(rows):
        first_of_class = r == 0 or rows[r - 1][0] != cls
        mask = stored.get(f"mask_{cls}")
        ax = axes[r, 0]
        ax.imshow(stored["image"].astype(np.float32), cmap="gray")
        ax.contour(mask.astype(np.float32), levels=[0.5], colors=CLASS_COLOURS[cls], linewidths=1.2)
        ax.set_ylabel(f"{cls}\n{image_id}", fontsize=8, color=CLASS_COLOURS[cls], fontweight="bold")
        if first_of_class:
            ax.set_title(f"image, {cls}\nlesion outlined", fontsize=9)
        for c, method in enumerate(columns, start=1):
            ax = axes[r, c]
            maps = _load_npz(data.run_dir / "maps" / method / file_name)
            if maps is None:
                ax.text(0.5, 0.5, "no map", ha="center", va="center", transform=ax.transAxes)
            else:
                mappable = ax.imshow(maps["maps"][CLASSES.index(cls)].astype(np.float32), cmap="inferno",
                                     vmin=0, vmax=1)
                ax.contour(mask.astype(np.float32), levels=[0.5], colors="cyan", linewidths=0.8)
            if first_of_class:
                style = plan.style.get(method)
                ax.set_title(_title(method, plan, references), fontsize=9,
                             fontweight=style.weight if style else "normal",
                             color=style.colour if style and style.weight == "bold" else "black")
            if method in references:
                for spine in ax.spines.values():
                    spine.set_edgecolor("#888")
                    spine.set_linestyle((0, (3, 2)))
        for ax in axes[r]:
            ax.set_xticks([])
            ax.set_yticks([])
    if mappable is not None:
        bar = fig.colorbar(mappable, ax=axes, orientation="horizontal", fraction=0.03, pad=0.01, aspect=60)
        bar.set_label("normalised saliency of the row's class (as scored); cyan: the lesion of that class",
                      fontsize=9)
    fig.suptitle(f"Saliency maps as scored: {title}", fontsize=11)
    save(fig, out, name)
    return True


def draw(data: RunData, out: Path, plan: Plan) -> list[FigureEntry]:
    """Every qualitative figure of the run (none when it kept no figure image)."""
    rows = _rows(stored_figure_images(data.run_dir))
    drawn = []
    for name, title, methods, references in pages(data, plan):
        if grid(data, out, plan, name, title, methods, references, rows):
            classes = sorted({row[0] for row in rows}, key=CLASSES.index)
            caption = (f"{title[0].upper()}{title[1:]}: one block of rows per class ({', '.join(classes)}), each "
                       "row an image holding a lesion of that class, outlined on the image and (cyan) on every map of "
                       "that class; colour scale [0, 1] as scored.")
            if references:
                caption += f" Dashed frame: {', '.join(references)}, the classifier the explainers explain."
            drawn.append(FigureEntry(name, f"Qualitative maps: {title}", caption))
    return drawn
