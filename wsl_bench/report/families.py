"""Which family a method of a run belongs to, and the order the report shows methods in.

The report sets the trivial baselines apart as the floor (DESIGN §5), and beside them the supervised
reference points (``fsl``, ``supervised``: networks trained with masks, never ranked with the
weakly-supervised methods); it draws the flagship methods
(GLAM, GMIC) so they can be found, and groups the ~20 methods of a run by family so no figure or
table has to tell twenty similar colours apart. A method's family comes from the registry (what
its factory is, which classifier a post-hoc explainer explains), so a run's method names are
enough; a name the registry does not know (a plugin not installed where the report is rebuilt)
falls in "other".
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from wsl_bench.registry import METHODS, explained_classifier_name, load_builtins, split_method_name

FLOOR: tuple[str, ...] = ("intensity", "centre_prior", "random")
"""The trivial baselines (DESIGN §5): a learned method that does not beat them learned nothing useful."""

FLAGSHIP: tuple[str, ...] = ("glam", "gmic")
"""The methods the benchmark is about; their variants (``glam.joint``, ``gmic.m1``) count too."""


@dataclass(frozen=True)
class Family:
    """A group of methods shown together: ``key`` names files and CSS classes, ``title`` heads a section,
    ``short`` fills a table cell."""

    key: str
    title: str
    short: str


LEARNED = Family("learned", "learned methods (trained from image-level labels)", "learned")
GRADCAM = Family("gradcam", "Grad-CAM family explainers (pytorch-grad-cam)", "Grad-CAM family")
CAPTUM = Family("captum", "captum attributions", "captum")
OTHER = Family("other", "other methods", "other")
SUPERVISED = Family("supervised", "supervised reference points (trained with masks, not ranked)",
                    "supervised (uses masks)")
BASELINES = Family("floor", "trivial baselines (the floor)", "baseline")
FAMILIES: tuple[Family, ...] = (LEARNED, GRADCAM, CAPTUM, OTHER, SUPERVISED, BASELINES)
"""In the order the report shows them: the supervised reference points and the floor last, set apart."""
UNRANKED: tuple[Family, ...] = (SUPERVISED, BASELINES)
"""Families shown apart and never ranked: no method of theirs is "the best method" of a run."""

_EXPLAINER_MODULES = {"wsl_bench.methods.gradcam": GRADCAM, "wsl_bench.methods.captum_methods": CAPTUM}
"""The built-in explainers' modules: the toolkit an explainer comes from is its family."""


def _factory(method: str) -> Any | None:
    load_builtins()
    base, _ = split_method_name(method)
    return METHODS.get(base) if base in METHODS else None


def classifier_of(method: str, options: Mapping[str, Any] | None = None) -> str | None:
    """The method whose classifier the post-hoc explainer ``method`` explains (``gradcam`` → ``cam``,
    ``gradcam@gmic`` → ``gmic``), ``None`` for a method that is not an explainer or is unknown here."""
    if _factory(method) is None:
        return None
    return explained_classifier_name(method, dict(options or {}))


def family_of(method: str, options: Mapping[str, Any] | None = None) -> Family:
    """The family of ``method`` (a run's method name, ``explainer@classifier`` spellings included)."""
    if method in FLOOR:
        return BASELINES
    factory = _factory(method)
    if factory is None:
        return OTHER
    if classifier_of(method, options) is not None:
        return _EXPLAINER_MODULES.get(getattr(factory, "__module__", ""), OTHER)
    if getattr(factory, "mask_split", None) is not None:  # trained with masks (TrainableMethod.mask_split)
        return SUPERVISED
    if getattr(factory, "trainable", False):
        return LEARNED
    return OTHER


def is_flagship(method: str) -> bool:
    """GLAM, GMIC and their published-weights variants (not an explainer *of* them: ``gradcam@glam``)."""
    return "@" not in method and method.split(".", 1)[0] in FLAGSHIP


def method_options(manifest: Mapping[str, Any], method: str) -> dict[str, Any]:
    """The user's options of ``method`` as the run's manifest records them (``classifier`` among them)."""
    return dict(((manifest.get("methods") or {}).get(method) or {}).get("options") or {})


def families(methods: Iterable[str], manifest: Mapping[str, Any]) -> dict[str, Family]:
    """method → family, for the methods of a run."""
    return {m: family_of(m, method_options(manifest, m)) for m in methods}


def ordered(methods: Iterable[str], manifest: Mapping[str, Any]) -> list[str]:
    """``methods`` by family (:data:`FAMILIES` order), the flagship methods first among the learned, the
    floor in :data:`FLOOR` order; otherwise in the order given (the run's)."""
    methods = list(methods)
    family = families(methods, manifest)

    def key(method: str) -> tuple[int, int, int]:
        fam = family[method]
        within = FLOOR.index(method) if fam is BASELINES else (0 if is_flagship(method) else 1)
        return FAMILIES.index(fam), within, methods.index(method)

    return sorted(methods, key=key)
