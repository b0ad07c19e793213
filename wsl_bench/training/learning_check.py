"""Did a trained classifier learn? Its chosen checkpoint's validation metrics against chance.

A benchmark that trains its methods must say when one of them did not learn: the maps of an
untrained classifier are then scored as if they were the method's, and a reader would conclude
"this method does not localise" when the run only shows "this training did not converge". Training
from scratch on a small split can stall (measured: CAM at the ``cpu`` preset stayed at training loss
0.69 for 12 epochs when its pooled features were rounded to bfloat16, see ``methods/cam.md``), so
every trained checkpoint is checked, and a failed check is logged as a warning, kept in the
manifest (``checkpoints.<method>.learning_check``) and shown at the top of the report.

Two questions, each per class, on the validation row the trainer stored with the checkpoint
(:meth:`wsl_bench.training.trainer.Trainer.validate`):

- **Classification**: is the validation AUC above chance? One-sided Mann–Whitney test
  (``val_auc_p_<class>`` < :data:`AUC_P_VALUE`).
- **Localisation**: is the validation PxAP above what a map unrelated to the lesions scores (the
  lesion pixel fraction, ``val_pxap_chance_<class>``)? A PxAP below :data:`PXAP_CHANCE_FACTOR` times
  that is reported. (No test statistic: the pixels of one image are not independent samples.)
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
    """Sentences naming each way the checkpoint's validation ``metrics`` are at chance level.

    Args:
        metrics: the validation row stored with the checkpoint (``val_auc_<class>``,
            ``val_auc_p_<class>``, ``val_pxap_<class>``, ``val_pxap_chance_<class>``); keys that are
            missing (a checkpoint from an older version, a split without masks) are not checked.

    Returns:
        an empty list when every checked quantity is above chance.
    """
    if not metrics:
        return []
    problems: list[str] = []
    for name in CLASSES:
        auc, p_value = _finite(metrics.get(f"val_auc_{name}")), _finite(metrics.get(f"val_auc_p_{name}"))
        if auc is not None and p_value is not None and p_value >= AUC_P_VALUE:
            problems.append(f"{name}: validation AUC {auc:.3f} is not above chance (one-sided p = {p_value:.2f})")
    for name in CLASSES:
        pxap, chance = _finite(metrics.get(f"val_pxap_{name}")), _finite(metrics.get(f"val_pxap_chance_{name}"))
        if pxap is not None and chance is not None and pxap < PXAP_CHANCE_FACTOR * chance:
            problems.append(
                f"{name}: validation PxAP {pxap:.4f} is below {PXAP_CHANCE_FACTOR:g}× chance "
                f"({chance:.4f}, the score of a map unrelated to the lesions)"
            )
    return problems


def _finite(value: Any) -> float | None:
    """``value`` as a float when it is a finite number, else ``None``."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


__all__ = ["AUC_P_VALUE", "PXAP_CHANCE_FACTOR", "learning_problems"]
