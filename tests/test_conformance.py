"""The saliency contract (wsl_bench.testing) over every registered method and built-in dataset."""

from __future__ import annotations

import pytest
import torch

import wsl_bench
from wsl_bench.methods.cam import CamConfig
from wsl_bench.methods.explainers import PosthocExplainer
from wsl_bench.pipeline import default_methods
from wsl_bench.registry import METHODS
from wsl_bench.testing import CONFORMANCE_IMAGE_SIZE, check_dataset, check_method

# Post-hoc explainers run on a small classifier at a small size: ScoreCAM/AblationCAM cost one
# forward pass per channel, IntegratedGradients one per step, Occlusion one per window.
EXPLAINER_SIZE = (128, 80)
EXPLAINER_OPTIONS = {
    "config": CamConfig(width=1 / 16),
    "integrated_gradients": {"n_steps": 4},
    "occlusion": {"window": (32, 32), "stride": (32, 32)},
}


def _is_explainer(name: str) -> bool:
    return issubclass(METHODS.get(name), PosthocExplainer)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny tensors: a second intra-op thread only adds synchronisation."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("name", default_methods())
def test_method_conforms(name):
    if _is_explainer(name):
        check_method(name, image_size=EXPLAINER_SIZE, config=EXPLAINER_OPTIONS["config"],
                     **EXPLAINER_OPTIONS.get(name, {}))
    else:
        check_method(name, image_size=CONFORMANCE_IMAGE_SIZE)


def test_every_registered_method_is_checked_or_needs_user_weights():
    for name in wsl_bench.list_methods():
        cls = METHODS.get(name)
        assert name in default_methods() or cls.requires_weights, name
        assert cls.description, f"{name} has no one-line description"


@pytest.mark.parametrize("name", ["glam.joint", "gmic.m1"])
def test_published_weight_variants_say_where_to_get_the_file(name, monkeypatch, tmp_path):
    monkeypatch.setenv("WSL_BENCH_WEIGHTS_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="github.com/nyukat"):
        wsl_bench.create_method(name, image_size=CONFORMANCE_IMAGE_SIZE)


def test_synthetic_dataset_conforms():
    check_dataset(wsl_bench.create_dataset("synthetic", split="val", image_size=CONFORMANCE_IMAGE_SIZE, n=6))
