"""Did a trained classifier learn? Its chosen checkpoint's validation metrics against chance.

A benchmark that trains its methods must say when one of them did not learn: the maps of an
untrained classifier are then scored as if they were the method's, and a reader would conclude
"this method does not localise" when the run only shows "this training did not converge". Training
from scratch on a small split can stall (measured: CAM at the ``cpu`` preset stayed at training loss
0.69 for 12 epochs when its pooled features were rounded to bfloat16, see ``methods/cam.md``), so
every trained checkpoint is checked, and a failed check is logged as a warning, kept in the
manifest (``checkpoints.<method>.learning_check``) and shown at the top of the report.

A class counts as *not learned* when neither of two signals is above chance on the validation row
the trainer stored with the checkpoint (:meth:`wsl_bench.training.trainer.Trainer.validate`):

- **classification**: the validation AUC is not above chance by a one-sided Mann–Whitney test
  (``val_auc_p_<class>`` ≥ :data:`AUC_P_VALUE`);
- **localisation**: the validation PxAP is below :data:`PXAP_CHANCE_FACTOR` times what a map
  unrelated to the lesions scores (the lesion pixel fraction, ``val_pxap_chance_<class>``). No test
  statistic here: the pixels of one image are not independent samples.

Either signal alone shows that training moved the network off its random start: a checkpoint chosen
for its localisation (the ``cpu`` preset selects by validation PxAP) may well have an AUC that 40
validation images cannot tell from chance, and a classifier may classify without localising (which
is the method's result, not a failed training). When a split gives only one of the two (no masks,
or one label only), that one decides.

A class also counts as not learned, whatever its localisation, when its classifier is **below
chance**: the same one-sided test in the other direction, ``P(AUC ≤ observed)`` for scores unrelated
to the labels, is below :data:`AUC_P_VALUE`. A network that ranks the held-out images with a lesion
below those without has learned something, but not the task: measured, GMIC's checkpoint kept by
validation PxAP at epoch 1 of 12 had validation AUC 0.309 (benign, 23 positive and 17 negative
images: one-sided p = 0.02 below chance) and a PxAP just above twice chance, and scored a test AUC of
0.363; its maps were scored as GMIC's. The stored p-value is the normal approximation of the
Mann–Whitney U (:func:`wsl_bench.evaluation.metrics.auc_chance_p_value`), symmetric about AUC 0.5, so
the lower tail is ``1 − val_auc_p_<class>``: no other count needs storing.
"""

from __future__ import annotations

import math
from typing import Any

from wsl_bench.saliency import CLASSES

AUC_P_VALUE = 0.05
"""Significance level of the one-sided AUC test (with 20 positive and 20 negative validation images
the AUC must exceed about 0.63)."""

PXAP_CHANCE_FACTOR = 2.0
"""A validation PxAP below this multiple of the chance level counts as "did not learn to localise"."""


def learning_problems(metrics: dict[str, Any] | None) -> list[str]:
    """One sentence per class that the checkpoint's validation ``metrics`` show as not learned (no
    signal above chance, or a classifier below chance: see the module docstring).

    Args:
        metrics: the validation row stored with the checkpoint (``val_auc_<class>``,
            ``val_auc_p_<class>``, ``val_pxap_<class>``, ``val_pxap_chance_<class>``); a class whose
            keys are missing or not finite (a checkpoint from an older version, a split without
            masks) is judged on what remains, and not at all when nothing remains.

    Returns:
        an empty list when every class learned something.
    """
    if not metrics:
        return []
    problems: list[str] = []
    for name in CLASSES:
        auc, p_value = _finite(metrics.get(f"val_auc_{name}")), _finite(metrics.get(f"val_auc_p_{name}"))
        pxap, chance = _finite(metrics.get(f"val_pxap_{name}")), _finite(metrics.get(f"val_pxap_chance_{name}"))
        classifies = None if auc is None or p_value is None else p_value < AUC_P_VALUE
        localises = None if pxap is None or chance is None else pxap >= PXAP_CHANCE_FACTOR * chance
        # below chance, whatever the maps do: the classifier they come from learned the task backwards
        if auc is not None and p_value is not None and 1.0 - p_value < AUC_P_VALUE:
            problems.append(f"{name}: validation AUC {auc:.3f}, below chance (one-sided p = {1.0 - p_value:.3f}: "
                            "it ranks held-out images with a lesion below those without)")
            continue
        if classifies is None and localises is None or classifies or localises:
            continue
        evidence = []
        if classifies is False:
            evidence.append(f"validation AUC {auc:.3f}, not above chance (one-sided p = {p_value:.2f})")
        if localises is False:
            evidence.append(f"validation PxAP {pxap:.4f}, below {PXAP_CHANCE_FACTOR:g}× chance ({chance:.4f}, "
                            "the score of a map unrelated to the lesions)")
        problems.append(f"{name}: " + " and ".join(evidence))
    return problems


def localisation_regressions(
    stage: str, maps: tuple[str, ...] | list[str], metrics: dict[str, Any] | None, start: dict[str, Any] | None
) -> list[str]:
    """One sentence per map and class that the selected checkpoint of ``stage`` localises worse than the
    network the stage started from did, on the validation split.

    A stage that starts from trained weights (GMIC and GLAM from CAM's network, GLAM's later stages from
    the earlier ones) should keep or improve what it starts with; a selected checkpoint whose trained
    map lost localisation says the stage destroyed its start (for example a learning rate that erases
    the initialisation within an epoch). Only a start that localised counts (validation PxAP at least
    :data:`PXAP_CHANCE_FACTOR` times chance): below that, a random start's PxAP is noise.

    Args:
        stage: the stage's name, for the sentence.
        maps: the maps the stage trains (``TrainingStage.maps``; empty: the output map).
        metrics: the validation row stored with the selected checkpoint.
        start: the stage's epoch-0 row (the validation of its starting network).
    """
    if not metrics or not start:
        return []
    problems = []
    for name in maps or ("",):
        for cls in CLASSES:
            key = f"val_pxap_{name}_{cls}" if name else f"val_pxap_{cls}"
            chosen, begun = _finite(metrics.get(key)), _finite(start.get(key))
            chance = _finite(start.get(f"val_pxap_chance_{cls}"))
            if chosen is None or begun is None or chance is None or begun < PXAP_CHANCE_FACTOR * chance:
                continue
            if chosen < begun:
                what = f"{name} map" if name else "map"
                problems.append(f"stage {stage}: {what} {cls} validation PxAP {chosen:.4f} at the selected checkpoint "
                                f"(epoch {metrics.get('epoch', '?')}), below {begun:.4f} at the stage's start")
    return problems


def _finite(value: Any) -> float | None:
    """``value`` as a float when it is a finite number, else ``None``."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


__all__ = ["AUC_P_VALUE", "PXAP_CHANCE_FACTOR", "learning_problems", "localisation_regressions"]
