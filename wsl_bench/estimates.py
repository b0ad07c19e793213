"""Rough time estimates for a run's plan: how long training a method, and scoring one image, take.

They only size the plan ``wsl-bench run`` prints and its overall progress bar; nothing is decided by
them. A training's time is modelled as a fixed part (building, loading the images, writing
checkpoints and curves per epoch) plus a rate times its work (:class:`TrainingWork`): every epoch of
every stage of the method's recipe (GLAM trains three) trains on each training image and scores each
validation image, at a cost that grows with the pixels. The rate comes from the first source that
applies:

* **measured here**: every training run records its wall time and its work (and the device and a
  fingerprint of the network) in its cache folder's ``timing.json`` (:func:`timing_facts`); the
  latest such record of the same network on the same kind of device gives the rate;
* **reference**: a reference training of the same preset's network (:data:`REFERENCE_TRAININGS`:
  the ``cpu`` preset's from the committed reference run, the ``tiny`` preset's from a smoke run, both
  on 2-core CPUs), scaled by the work. A preset without one (``full``, ``gpu``) borrows the ``cpu``
  preset's rate scaled by pixels, which knows nothing of wider networks or GPUs, so it can be off
  several-fold.

The progress bar counts estimated seconds, so its rate, and the time left it shows, correct
themselves as the run goes.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REFERENCE_PIXELS = 368 * 240
"""Pixels per image of the ``cpu`` preset, the unit of :meth:`TrainingWork.units`."""
VALIDATION_SHARE = 0.3
"""Cost of scoring a validation image (``predict`` and the Dice/PxAP histograms) relative to a
training step's forward and backward pass on one image (measured at the tiny preset: 0.2-0.4)."""
TRAINING_OVERHEAD_S = 3.0
"""Seconds a training takes whatever its size: building the method and its data, the first batches."""
EPOCH_OVERHEAD_S = 0.5
"""Seconds each epoch of each stage adds whatever its size: ``last.pt``, ``best.pt``, ``log.csv`` and
``curves.png``."""


@dataclass(frozen=True)
class TrainingWork:
    """What a training does, as far as its time goes.

    Attributes:
        stage_epochs: epochs summed over the recipe's stages (GLAM at the ``cpu`` preset: 3 + 4 + 2).
        train_images, val_images: images each epoch trains on (``TrainConfig.epoch_images`` where the
            preset sets it, else the training split) and scores.
        image_size: ``(H, W)``.
        preset: the preset whose networks are trained (its reference rate applies).
        network: :func:`network_fingerprint` of the trained network; measured rates apply to the same one.
        start_validations: validation passes before training, one per stage (the trainer scores each
            stage's starting network as its epoch 0); 0 in trainings from before it did.
    """

    stage_epochs: int
    train_images: int
    val_images: int
    image_size: tuple[int, int]
    preset: str = ""
    network: str = ""
    start_validations: int = 0

    def units(self) -> float:
        """The work in training-image epochs at 368×240 (validation images count :data:`VALIDATION_SHARE`)."""
        pixels = self.image_size[0] * self.image_size[1] / REFERENCE_PIXELS
        validations = self.stage_epochs + self.start_validations
        return (self.stage_epochs * self.train_images + validations * VALIDATION_SHARE * self.val_images) * pixels

    def overhead(self) -> float:
        """Seconds of the training that do not grow with images or pixels."""
        return TRAINING_OVERHEAD_S + EPOCH_OVERHEAD_S * self.stage_epochs


REFERENCE_TRAININGS: dict[str, dict[str, tuple[float, TrainingWork]]] = {
    # the committed reference run (reports/default/manifest.json, checkpoints.<method>.training_seconds),
    # a 2-core Intel Xeon with AMX; GLAM's stages train 3, 4 and 2 of the 12 epochs
    "cpu": {
        "cam": (271.7, TrainingWork(12, 320, 40, (368, 240), "cpu")),
        "glam": (279.0, TrainingWork(9, 320, 40, (368, 240), "cpu")),
        "gmic": (380.7, TrainingWork(12, 320, 40, (368, 240), "cpu")),
    },
    # the smoke run (`wsl-bench run --methods glam,gmic,cam --preset tiny`, benchmarks/smoke_run.py) on a
    # fresh cache, a 2-core AMD EPYC (AVX-512, no AMX), idle; the mean of two runs (2026-12-08: 42.9 s and
    # 36.1 s wall); GLAM's three stages train one epoch each, every
    # stage validates its starting network first
    "tiny": {
        "cam": (4.1, TrainingWork(1, 24, 8, (256, 160), "tiny", start_validations=1)),
        "glam": (18.2, TrainingWork(3, 24, 8, (256, 160), "tiny", start_validations=3)),
        "gmic": (4.9, TrainingWork(1, 24, 8, (256, 160), "tiny", start_validations=1)),
    },
}
"""preset → method → (training seconds, its work) of a reference training on a 2-core CPU."""


@dataclass(frozen=True)
class Estimate:
    """Estimated seconds and where the figure comes from (``"measured here"``, ``"reference"``)."""

    seconds: float
    source: str


def network_fingerprint(key_data: dict[str, Any]) -> str:
    """A short hash of what decides a training step's cost apart from the image size: the method, its
    network configuration and whether it trains under mixed precision (not its data, seed or code)."""
    config = {k: v for k, v in (key_data.get("method_config") or {}).items() if k not in ("image_size", "training")}
    train = key_data.get("train_config") or {}
    facts = {"method": key_data.get("method"), "config": config, "amp": [train.get("amp"), train.get("cpu_amp")],
             "batch_size": train.get("batch_size")}
    return hashlib.sha256(json.dumps(facts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def timing_facts(seconds: float, device: str, work: TrainingWork) -> dict[str, Any]:
    """What a finished training keeps in ``timing.json``: its wall time, device and work, for
    :func:`training_estimate` to take its rate from."""
    return {"training_seconds": round(seconds, 1), "device": device.split(":")[0], "stage_epochs": work.stage_epochs,
            "train_images": work.train_images, "val_images": work.val_images,
            "image_size": list(work.image_size), "preset": work.preset, "network": work.network,
            "start_validations": work.start_validations}


def _rate(seconds: float, work: TrainingWork) -> float:
    """Seconds per unit of work of a training that took ``seconds`` (its fixed part taken off)."""
    return max(seconds - work.overhead(), 0.0) / work.units()


def _measured_rates(method_folder: Path, device: str, network: str) -> list[tuple[float, float]]:
    """(modification time, rate) of every timing record of ``network`` on ``device`` in one method's folder."""
    rates = []
    for timing in method_folder.glob("*/timing.json"):
        try:
            facts = json.loads(timing.read_text())
            work = TrainingWork(int(facts["stage_epochs"]), int(facts["train_images"]), int(facts["val_images"]),
                                tuple(facts["image_size"]), facts["preset"], facts["network"],
                                int(facts.get("start_validations", 0)))
            if facts["device"] == device and work.network == network and work.units() > 0:
                rates.append((os.stat(timing).st_mtime, _rate(float(facts["training_seconds"]), work)))
        except (OSError, ValueError, KeyError, TypeError):
            continue  # an older timing.json (without the work) or a damaged one: no estimate from it
    return rates


def reference_rate(method: str, preset: str) -> float:
    """Seconds per unit of work of training ``method`` at ``preset`` on the reference 2-core CPUs (a
    preset without a reference training uses the ``cpu`` preset's; a method without one is assumed as
    slow as the slowest of that preset)."""
    table = REFERENCE_TRAININGS.get(preset, REFERENCE_TRAININGS["cpu"])
    rates = {name: _rate(seconds, work) for name, (seconds, work) in table.items()}
    return rates.get(method, max(rates.values()))


def training_estimate(method: str, device: str, work: TrainingWork, checkpoints: Path | None = None) -> Estimate:
    """Seconds training ``method`` (its cache name, e.g. ``"cam"``) is likely to take.

    Args:
        checkpoints: the cache's ``checkpoints`` folder, searched for earlier trainings of the same network.
    """
    device = device.split(":")[0]
    if checkpoints is not None and work.network:
        rates = _measured_rates(checkpoints / method, device, work.network)
        if rates:
            return Estimate(work.overhead() + max(rates)[1] * work.units(), "measured here")
    return Estimate(work.overhead() + reference_rate(method, work.preset) * work.units(), "reference")


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
