"""Methods whose scored maps are identical, found from the records and explained where it is by construction.

For a classifier with global average pooling and a linear head (``cam``), Grad-CAM, HiResCAM,
XGrad-CAM and captum's Grad-CAM compute CAM's map up to a positive factor, so a run holds the same
scores several times under different names. The report lists such methods once, as a group, and
says why; but it says so only when the records show it: two methods are grouped when, on every
image and class of the evaluated split, their maps as scored have the same distribution of values
on the lesion and off it (the records' histograms, which is all a record keeps of a map), within
float rounding. Only a group that matches the known case gets the reason; any other group is
reported as "identical maps on every image", neutrally.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from wsl_bench.evaluation.records import decode_counts
from wsl_bench.report.families import classifier_of, method_options, ordered

if TYPE_CHECKING:
    from wsl_bench.report.run_data import RunData

TOLERANCE = 1e-3
"""Two maps count as identical on an image when, at every threshold, the number of pixels at or
above it differs by at most this share of the image's pixels, on the lesion and off it: float
rounding moves a few pixels to a neighbouring bin; a different method moves many."""

GAP_LINEAR_CLASSIFIERS: frozenset[str] = frozenset({"cam"})
"""Classifier methods whose logits are a linear head over globally average-pooled features."""

CAM_EQUAL_EXPLAINERS: frozenset[str] = frozenset({"gradcam", "hirescam", "xgradcam", "captum_gradcam"})
"""Explainers whose raw map of such a classifier is its class activation map divided by h·w
(``methods/gradcam-family.md``, "the identity with cam"; ``methods/captum.md``)."""

CAM_REASON = (
    "For a classifier with global average pooling and a linear head (here `{classifier}`), the gradient of a "
    "class logit with respect to feature map k is the head's weight w_ck/(h·w) at every position, so Grad-CAM, "
    "HiResCAM, XGrad-CAM and captum's Grad-CAM all compute CAM's map Σ_k w_ck A^k divided by h·w, a factor the "
    "harness's per-image min–max scaling removes: their maps are CAM's by construction."
)
IDENTICAL_DEFINITION = (
    f"verified from the records: on every evaluated image and class, at every threshold, the numbers of pixels at or "
    f"above it differ by at most {TOLERANCE:.1%} of the image's pixels, on the lesion and off it"
)
"""What "identical maps" means in the report (float rounding passes, a different map does not)."""
NEUTRAL_REASON = "Identical maps on every image (not a case the report knows to be identical by construction)."


@dataclass(frozen=True)
class IdenticalGroup:
    """Methods (two or more, in the run's order) whose scored maps are identical on every image.

    ``reason`` is the by-construction sentence where the group is the known case, else the neutral one;
    ``by_construction`` says which.
    """

    methods: tuple[str, ...]
    reason: str
    by_construction: bool

    @property
    def label(self) -> str:
        """``cam ≡ gradcam, hirescam``: the first method named, the others after ≡."""
        return f"{self.methods[0]} ≡ {', '.join(self.methods[1:])}"


def _cumulative(counts: np.ndarray) -> np.ndarray:
    """Pixels at or above each bin: C[k] = Σ_{j ≥ k} counts[j]."""
    return np.cumsum(counts[::-1])[::-1]


def _map_signatures(records: list[dict[str, Any]]) -> dict[str, dict[tuple[str, str], np.ndarray]]:
    """method → {(image, class): 2×B cumulative counts (lesion, background) divided by the image's pixels}."""
    signatures: dict[str, dict[tuple[str, str], np.ndarray]] = {}
    for record in records:
        if record["status"] != "ok":
            continue
        mine = signatures.setdefault(record["method"], {})
        for cls, hist in (record.get("hist") or {}).items():
            if not hist:
                continue
            both = np.stack([_cumulative(decode_counts(hist["pos"])), _cumulative(decode_counts(hist["neg"]))])
            mine[(record["image_id"], cls)] = both / max(int(both[:, 0].sum()), 1)
    return signatures


def _identical(a: dict[tuple[str, str], np.ndarray], b: dict[tuple[str, str], np.ndarray], tolerance: float) -> bool:
    if not a or a.keys() != b.keys():
        return False
    return all(a[key].shape == b[key].shape and float(np.abs(a[key] - b[key]).max()) <= tolerance for key in a)


def by_construction(methods: tuple[str, ...], manifest: Mapping[str, Any]) -> str | None:
    """The classifier that makes ``methods`` identical by construction (all of them the GAP + linear
    classifier itself or a CAM-equal explainer of it), ``None`` when they are not that case."""
    classifiers = set()
    for method in methods:
        explained = classifier_of(method, method_options(manifest, method))
        if explained is None:
            classifiers.add(method)  # the classifier method itself (CAM's own map)
        elif method.split("@", 1)[0] in CAM_EQUAL_EXPLAINERS:
            classifiers.add(explained)
        else:
            return None
    if len(classifiers) == 1 and classifiers <= GAP_LINEAR_CLASSIFIERS:
        return classifiers.pop()
    return None


def identical_groups(data: RunData, tolerance: float = TOLERANCE) -> list[IdenticalGroup]:
    """Groups of methods whose scored maps are identical on every image and class of the evaluated split.

    Methods without an ok record with histograms are never grouped. Grouping is greedy in the run's
    method order (a method joins the first group whose first method it matches), so a group is named
    by its first method (``cam`` before its explainers when the run lists it first).
    """
    signatures = _map_signatures(data.records)
    groups: list[list[str]] = []
    for method in data.methods:
        if not signatures.get(method):
            continue
        for group in groups:
            if _identical(signatures[group[0]], signatures[method], tolerance):
                group.append(method)
                break
        else:
            groups.append([method])
    found = []
    for group in groups:
        if len(group) < 2:
            continue
        members = tuple(ordered(group, data.manifest))  # the classifier itself before its explainers
        classifier = by_construction(members, data.manifest)
        reason = CAM_REASON.format(classifier=classifier) if classifier else NEUTRAL_REASON
        found.append(IdenticalGroup(members, reason, classifier is not None))
    return found
