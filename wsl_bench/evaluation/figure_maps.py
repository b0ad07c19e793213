"""The small copies of a few images' maps that a run keeps for the qualitative figure.

Layout inside a run folder::

    maps/_images/<name>.npz     the image (``image``, float16) and its masks (``mask_<class>``)
    maps/<method>/<name>.npz    the method's normalised maps (``maps``, C×h×w float16)

``<name>`` is a hash of the image id (:func:`figure_map_name`), never the id itself: ids come from
data and may hold ``/``, ``..`` or an absolute path. Each file stores its ``image_id``. Files are
written atomically (``wsl_bench.atomic_io``); a run that finds one missing or unreadable recomputes it.
"""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from wsl_bench.atomic_io import savez_atomic
from wsl_bench.data import Sample
from wsl_bench.saliency import CLASSES

FIGURE_MAP_HEIGHT = 256
"""Height of the maps kept for the qualitative figure (small: the figure needs no more)."""


def figure_map_name(image_id: str) -> str:
    """The file name of an image's figure maps: a hash of its id, never the id itself (ids come from
    data and may hold ``/``, ``..`` or an absolute path; the id is stored inside the file)."""
    return hashlib.sha256(image_id.encode("utf-8", "surrogatepass")).hexdigest()[:24] + ".npz"


def figure_map_paths(out_dir: Path, method: str, image_id: str) -> tuple[Path, Path]:
    """``(maps of method, image and masks)`` files of one figure image in a run folder."""
    name = figure_map_name(image_id)
    return out_dir / "maps" / method / name, out_dir / "maps" / "_images" / name


def _readable_npz(path: Path) -> bool:
    try:
        with np.load(path, allow_pickle=False) as data:
            return all(data[key] is not None for key in data.files)
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile):
        return False


def figure_maps_present(out_dir: Path, method: str, image_id: str) -> bool:
    """Whether both figure files of ``image_id`` exist and can be read (a kill or a full disk may
    have left one missing; a resumed run recomputes that image)."""
    return all(_readable_npz(path) for path in figure_map_paths(out_dir, method, image_id))


def save_figure_maps(out_dir: Path, method: str, sample: Sample, maps: torch.Tensor) -> None:
    """Keep a small copy of one image's normalised maps (and, once, the image and masks), atomically."""
    h, w = sample.size
    size = (FIGURE_MAP_HEIGHT, max(1, round(w * FIGURE_MAP_HEIGHT / h)))
    small = F.interpolate(maps[None].float(), size=size, mode="area")[0].numpy().astype(np.float16)
    map_file, image_file = figure_map_paths(out_dir, method, sample.id)
    map_file.parent.mkdir(parents=True, exist_ok=True)
    savez_atomic(map_file, maps=small, image_id=np.array(sample.id))
    if not _readable_npz(image_file):
        image_file.parent.mkdir(parents=True, exist_ok=True)
        image = F.interpolate(torch.from_numpy(sample.image)[None].float(), size=size, mode="area")[0, 0].numpy()
        masks = {}
        for name in CLASSES:
            mask = sample.masks.get(name)
            if mask is not None:
                masks[name] = F.interpolate(torch.from_numpy(mask)[None, None].float(), size=size, mode="nearest")[
                    0, 0
                ].numpy() > 0.5
        savez_atomic(image_file, image=image.astype(np.float16), image_id=np.array(sample.id),
                     **{f"mask_{k}": v for k, v in masks.items()})


def stored_figure_images(run_dir: Path) -> dict[str, Path]:
    """image id → its ``maps/_images`` file, for every readable one (sorted by id)."""
    found: dict[str, Path] = {}
    for path in (Path(run_dir) / "maps" / "_images").glob("*.npz"):
        try:
            with np.load(path, allow_pickle=False) as data:
                found[str(data["image_id"])] = path
        except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile):
            continue  # unreadable or from before ids were stored: the figure leaves it out
    return dict(sorted(found.items()))
