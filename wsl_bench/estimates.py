"""Rough time estimates for a run's plan: how long training a method, and scoring one image, take.

They only size the plan ``wsl-bench run`` prints and its overall progress bar; nothing is decided by
them. Two sources, the first that applies:

* **measured here**: every training run records its wall time and its amount of work (epochs ×
  training images × pixels per image, and the device) in its cache folder's ``timing.json``
  (:func:`timing_facts`); the latest such record of the same method on the same kind of device,
  scaled by the work, estimates the next one;
* **reference**: the default run of the reference report (``reports/default``: ``cpu`` preset,
  368×240, 320 training images, 12 epochs, a 2-core Intel Xeon), scaled by the work. It knows
  nothing of other machines, GPUs or network widths, so on them it can be off several-fold.

The progress bar counts estimated seconds, so its rate, and the time left it shows, correct
themselves as the run goes.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REFERENCE_PIXELS = 368 * 240
"""Pixels per image of the reference run."""
REFERENCE_TRAINING_S: dict[str, tuple[float, float]] = {
    "cam": (271.7, 12 * 320),
    "glam": (279.0, 12 * 320),
    "gmic": (380.7, 12 * 320),
}
"""method → (training seconds, epochs × training images) of the reference run (its manifest's
``checkpoints.<method>.training_seconds``)."""
FALLBACK_TRAINING_S_PER_IMAGE_EPOCH = 380.7 / (12 * 320)
"""A trained method the reference run does not hold (a plugin): assumed as slow as its slowest one."""
TRAINING_OVERHEAD_S = 10.0
"""Seconds a training takes whatever its size (loading the images, validation passes, checkpoints),
added to the reference's scaled estimate: a rough figure, so that tiny runs are not planned at 1 s
(training ``cam`` at the tiny preset took 25 s on a busy 2-core machine)."""

REFERENCE_PREDICT_S: dict[str, float] = {
    "cam": 0.057, "captum_gradcam": 0.101, "centre_prior": 0.001, "eigencam": 0.191, "glam": 0.083, "gmic": 0.070,
    "gradcam": 0.061, "gradcam++": 0.069, "hirescam": 0.066, "intensity": 0.0002, "layercam": 0.062, "random": 0.0005,
    "xgradcam": 0.061,
    # measured on the same machine for the cpu preset's skip_by_default (wsl_bench/presets.py)
    "integrated_gradients": 1.34, "guided_gradcam": 0.25, "input_x_gradient": 0.17, "fullgrad": 0.17,
    "saliency": 0.16, "scorecam": 2.4, "ablationcam": 2.4, "occlusion": 2.4,
}
"""method → median seconds of ``predict`` per image in the reference run (its report's
``time_median_s``; the perturbation explainers, 1.3-3.4 s there, at the middle)."""
HARNESS_S_PER_IMAGE = 0.01
"""What the harness adds per image at the reference size (loading, scoring, records)."""
METHOD_OVERHEAD_S = 2.0
"""Seconds a method costs before its first image (creating it, loading its checkpoint, the untimed
warm-up call). With :data:`HARNESS_S_PER_IMAGE` it accounts for the cached reference run: 96 s for 13
methods and 1040 images, whose ``predict`` medians average 0.063 s (13 × 2 + 1040 × 0.073 = 102 s)."""
FALLBACK_PREDICT_S = 0.1
"""``predict`` seconds per image at the reference size for a method not in the table."""


@dataclass(frozen=True)
class Estimate:
    """Estimated seconds and where the figure comes from (``"measured here"``, ``"reference"``)."""

    seconds: float
    source: str


def work_units(epochs: float, train_images: int, image_size: tuple[int, int]) -> float:
    """Training work: epochs × training images × pixels per image, in reference-image epochs."""
    return epochs * train_images * image_size[0] * image_size[1] / REFERENCE_PIXELS


def timing_facts(seconds: float, device: str, epochs: float, train_images: int,
                 image_size: tuple[int, int]) -> dict[str, Any]:
    """What a finished training keeps in ``timing.json``: its wall time and enough about its work
    (and device) for :func:`training_estimate` to scale it."""
    return {"training_seconds": round(seconds, 1), "device": device.split(":")[0], "epochs": epochs,
            "train_images": train_images, "image_size": list(image_size)}


def _measured_rates(method_folder: Path, device: str) -> list[tuple[float, float]]:
    """(modification time, seconds per work unit) of every timing record of one method on ``device``."""
    rates = []
    for timing in method_folder.glob("*/timing.json"):
        try:
            facts = json.loads(timing.read_text())
            units = work_units(facts["epochs"], facts["train_images"], tuple(facts["image_size"]))
            if facts["device"] == device and units > 0:
                rates.append((os.stat(timing).st_mtime, facts["training_seconds"] / units))
        except (OSError, ValueError, KeyError, TypeError):
            continue  # an older timing.json (seconds only) or a damaged one: no estimate from it
    return rates


def training_estimate(method: str, device: str, epochs: float, train_images: int, image_size: tuple[int, int],
                      checkpoints: Path | None = None) -> Estimate:
    """Seconds training ``method`` (its cache name, e.g. ``"cam"``) is likely to take.

    Args:
        checkpoints: the cache's ``checkpoints`` folder, searched for earlier trainings of it.
    """
    units = work_units(epochs, train_images, image_size)
    device = device.split(":")[0]
    if checkpoints is not None:
        rates = _measured_rates(checkpoints / method, device)
        if rates:
            return Estimate(max(rates)[1] * units, "measured here")
    seconds, reference_units = REFERENCE_TRAINING_S.get(method, (None, None))
    rate = seconds / reference_units if seconds else FALLBACK_TRAINING_S_PER_IMAGE_EPOCH
    return Estimate(TRAINING_OVERHEAD_S + rate * units, "reference")


def seconds_per_image(method: str, image_size: tuple[int, int]) -> float:
    """Seconds per image that scoring ``method`` (a run name: ``gradcam@gmic`` counts as ``gradcam``)
    is likely to take, from the reference run, scaled by pixels."""
    base = method.split("@")[0]
    predict = REFERENCE_PREDICT_S.get(base, FALLBACK_PREDICT_S)
    return (predict + HARNESS_S_PER_IMAGE) * image_size[0] * image_size[1] / REFERENCE_PIXELS


def evaluation_estimate(method: str, image_size: tuple[int, int], images: int) -> float:
    """Seconds scoring ``images`` images with ``method`` is likely to take (none: 0)."""
    return METHOD_OVERHEAD_S + images * seconds_per_image(method, image_size) if images else 0.0


def format_duration(seconds: float) -> str:
    """``"40 s"``, ``"4.5 min"``, ``"1.2 h"``."""
    if seconds < 90:
        return f"{max(seconds, 1):.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"
