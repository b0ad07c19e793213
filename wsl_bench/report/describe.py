"""The scale geometry of GLAM, GMIC and CAM at each preset, measured on the built networks.

``wsl-bench describe`` prints it; the tables in ``methods/glam.md``, ``methods/gmic.md``,
``methods/cam.md`` and ``reports/README.md`` are its output (``reports/geometry.py`` writes them).
Each row states, for one method at one preset, the quantities that must scale with the input for a
smaller image to ask the published question (issue: "scale-faithful CPU presets"):

* saliency-map cells, and the cell side over the median lesion diameter;
* the patch side over the median lesion diameter and the window (patch) in map cells;
* the theoretical receptive field of the network's last map over the image height (0.30 published);
* GLAM's local-map cell over the median lesion diameter;
* the channel-width multipliers, GFLOP per image (forward, batch 1), and, when a run's manifest is
  given, the training time of that run.

Every number comes from the networks a preset builds (on PyTorch's meta device: no weights are
allocated) and from the synthetic generator's lesions, never from restated constants.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from wsl_bench.presets import PRESETS, get_preset

GEOMETRY_METHODS: tuple[str, ...] = ("glam", "gmic", "cam")
"""The methods whose networks take derived strides (``methods/geometry.py``)."""

LESION_REFERENCE = {"split": "val", "n": 100, "seed": 0, "image_size": (736, 480)}
"""Where the median lesion diameter is measured: the synthetic generator's lesions are defined
relative to the image, so one size stands for all (its median area is 0.47 % of the image)."""


@dataclass(frozen=True)
class GeometryRow:
    """One method at one preset (see the module docstring for each quantity)."""

    preset: str
    method: str
    image_size: tuple[int, int]
    map_cells: tuple[tuple[int, int], ...]
    cell_over_lesion: float
    patch_side: int | None
    patch_over_lesion: float | None
    window_cells: tuple[int, int] | None
    receptive_field: int
    receptive_field_over_height: float
    local_cell_over_lesion: float | None
    width: str
    gflops: float
    training_minutes: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def median_lesion_diameter_fraction() -> float:
    """Median equivalent-circle diameter ``2·sqrt(area/π)`` of the synthetic lesions over the image height."""
    from wsl_bench.registry import create_dataset

    ref = LESION_REFERENCE
    dataset = create_dataset(
        "synthetic", split=ref["split"], n=ref["n"], seed=ref["seed"], image_size=ref["image_size"]
    )
    diameters = [
        2 * math.sqrt(lesion["area_px"] / math.pi)
        for sample_id in dataset.ids()
        for lesion in dataset.get(sample_id).meta["lesions"]
    ]
    return float(np.median(diameters)) / ref["image_size"][0]


def _build(method: str, image_size: tuple[int, int], options: dict[str, Any]) -> Any:
    """The method as a preset builds it (weights initialised on the CPU; measured on the meta device)."""
    from wsl_bench.registry import create_method

    return create_method(method, image_size=image_size, **options)


def _global_backbone(method: Any) -> nn.Module:
    """The ResNet-22: GLAM's and GMIC's global network, CAM's backbone."""
    return method.global_backbone() if hasattr(method, "global_backbone") else method.network().backbone


def _map_shapes(method: Any, image_size: tuple[int, int]) -> tuple[tuple[int, int], ...]:
    """Spatial sizes of the saliency maps: GLAM's three (stage 3, stage 4, final), GMIC's and CAM's one."""
    backbone = _global_backbone(method)
    with torch.no_grad():
        stages = backbone.to("meta").stage_outputs(torch.empty(1, 1, *image_size, device="meta"))
    picked = stages[2:] if method.name == "glam" else stages[-1:]
    return tuple((int(t.shape[-2]), int(t.shape[-1])) for t in picked)


def _gflops(method: Any, image_size: tuple[int, int]) -> float:
    """Forward GFLOP of the plain network for one image (GLAM without the fused full-size map)."""
    from torch.utils.flop_counter import FlopCounterMode

    net = method.network().to("meta").eval()
    x = torch.empty(1, 1, *image_size, device="meta")
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        net(x, fuse=False) if method.name == "glam" else net(x)
    return counter.get_total_flops() / 1e9


def geometry_row(preset: str, method_name: str, lesion_fraction: float) -> GeometryRow:
    """Measure ``method_name`` as preset ``preset`` builds it."""
    from wsl_bench.methods import geometry

    p = get_preset(preset)
    size = tuple(p.image_size)
    options = dict(p.method_options.get(method_name, {}))
    method = _build(method_name, size, options)
    lesion = lesion_fraction * size[0]
    backbone = _global_backbone(method)
    rf = geometry.receptive_field(backbone)
    cells = _map_shapes(method, size)
    patch = window = local_cell = None
    if method_name in ("glam", "gmic"):
        from wsl_bench.methods import backbones as bb

        patch = method.config.patch_size[0]
        window = bb.window_in_map(method.config.patch_size, cells[0], size)
    if method_name == "glam":
        local_cell = geometry.output_stride(method.network().detection_network.dn_resnet) / lesion
    width = str(options.get("width", 1.0))
    if "local_width" in options:
        width += f" / {options['local_width']}"
    return GeometryRow(
        preset=preset,
        method=method_name,
        image_size=size,
        map_cells=cells,
        cell_over_lesion=size[0] / cells[0][0] / lesion,
        patch_side=patch,
        patch_over_lesion=patch / lesion if patch else None,
        window_cells=window,
        receptive_field=rf,
        receptive_field_over_height=rf / size[0],
        local_cell_over_lesion=local_cell,
        width=width,
        gflops=_gflops(method, size),
    )


def training_minutes(manifest_path: str | Path, method: str) -> float | None:
    """Total training time of ``method`` in a run (``checkpoints[method].training_seconds`` of its manifest)."""
    import json

    path = Path(manifest_path)
    if not path.exists():
        return None
    seconds = json.loads(path.read_text()).get("checkpoints", {}).get(method, {}).get("training_seconds")
    return None if seconds is None else seconds / 60


def geometry_table(
    presets: tuple[str, ...] = tuple(PRESETS), methods: tuple[str, ...] = GEOMETRY_METHODS,
    manifests: dict[str, str | Path] | None = None,
) -> list[GeometryRow]:
    """Rows for every preset and method; ``manifests`` maps a preset to a run manifest giving training times."""
    from dataclasses import replace

    fraction = median_lesion_diameter_fraction()
    rows = []
    for method in methods:
        for preset in presets:
            row = geometry_row(preset, method, fraction)
            if manifests and preset in manifests:
                row = replace(row, training_minutes=training_minutes(manifests[preset], method))
            rows.append(row)
    return rows


def _size(size: tuple[int, int] | None) -> str:
    return "–" if size is None else f"{size[0]}×{size[1]}"


def _num(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def to_markdown(rows: list[GeometryRow]) -> str:
    """A Markdown table, one row per method and preset (the published configuration is ``full``).

    The ``training (min)`` column is there only when some row has a training time (a run's manifest
    was given): a column of dashes would only say that nothing was measured."""
    timed = any(r.training_minutes is not None for r in rows)
    lines = [
        "| method | preset | image | map cells | cell / lesion | patch / lesion | window (cells) "
        "| receptive field / height | local cell / lesion | width × | GFLOP |" + (" training (min) |" if timed else ""),
        "|---|---|---|---|---|---|---|---|---|---|---|" + ("---|" if timed else ""),
    ]
    for r in rows:
        lines.append(
            f"| {r.method} | {r.preset} | {_size(r.image_size)} | {' / '.join(_size(c) for c in r.map_cells)} "
            f"| {_num(r.cell_over_lesion)} | {_num(r.patch_over_lesion)} | {_size(r.window_cells)} "
            f"| {r.receptive_field} px = {_num(r.receptive_field_over_height)} | {_num(r.local_cell_over_lesion)} "
            f"| {r.width} | {_num(r.gflops, 1)} |" + (f" {_num(r.training_minutes, 1)} |" if timed else "")
        )
    return "\n".join(lines) + "\n"


def published_ratios(rows: list[GeometryRow]) -> dict[str, dict[str, float]]:
    """Each row's scale-dependent quantities divided by the same method's at the published ``full``
    preset (1.0 = the published proportion); keyed ``"method/preset"``."""
    reference = {r.method: r for r in rows if r.preset == "full"}
    out = {}
    for r in rows:
        ref = reference.get(r.method)
        if ref is None:
            continue
        ratios = {
            "cell": r.cell_over_lesion / ref.cell_over_lesion,
            "receptive_field": r.receptive_field_over_height / ref.receptive_field_over_height,
        }
        if r.patch_over_lesion is not None:
            ratios["patch"] = r.patch_over_lesion / ref.patch_over_lesion
            ratios["window"] = (r.window_cells[0] / ref.window_cells[0]) if r.window_cells else float("nan")
        out[f"{r.method}/{r.preset}"] = ratios
    return out
