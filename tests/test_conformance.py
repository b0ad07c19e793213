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
    factory = METHODS.get(name)  # a class, or a factory object (published-weight variants)
    return isinstance(factory, type) and issubclass(factory, PosthocExplainer)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny tensors: a second intra-op thread only adds synchronisation."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


VARIANT_SIZE = (96, 64)
"""Published-weight variants (``glam.sep``, ``gmic.m1`` ...) run small: their families run at full size."""


def random_published_weights(name: str, image_size: tuple[int, int], folder) -> str:
    """A published-format weights file (flat state dict) of randomly initialised weights for the
    published-weight variant ``name``: its network, built from its own configuration, saved as is."""
    cls = METHODS.get(name)
    config, _ = cls.split_options(dict(cls.config_defaults), image_size)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        network = cls.network_class(config)
    path = folder / f"random-{cls.published_file}"
    torch.save(network.state_dict(), path)
    return str(path)


# the quick loop (-m "not slow") keeps every method but the three full networks, 2.5-7.5 s each on 2 cores
# (their published-weight variants, at a smaller size, stay in it)
SLOW_TO_CONFORM = {"cam", "glam", "gmic"}


@pytest.mark.parametrize("name", [pytest.param(name, marks=pytest.mark.slow) if name in SLOW_TO_CONFORM else name
                                  for name in wsl_bench.list_methods("*")])
def test_method_conforms(name, tmp_path):
    """Every registered method; a published-weight variant on a file of random weights in its format."""
    cls = METHODS.get(name)
    assert cls.description, f"{name} has no one-line description"
    if _is_explainer(name):
        check_method(name, image_size=EXPLAINER_SIZE, config=EXPLAINER_OPTIONS["config"],
                     **EXPLAINER_OPTIONS.get(name, {}))
    elif cls.requires_weights:  # its architecture is checked at full conformance size under the family's name
        weights = random_published_weights(name, VARIANT_SIZE, tmp_path)
        check_method(name, image_size=VARIANT_SIZE, weights=weights)
    else:
        check_method(name, image_size=CONFORMANCE_IMAGE_SIZE)


def test_every_registered_method_is_in_the_default_run_or_needs_user_weights():
    for name in wsl_bench.list_methods("*"):
        assert name in default_methods() or METHODS.get(name).requires_weights, name


@pytest.mark.parametrize("name", ["glam.joint", "gmic.m1"])
def test_published_weight_variants_say_where_to_get_the_file(name, monkeypatch, tmp_path):
    monkeypatch.setenv("WSL_BENCH_WEIGHTS_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="github.com/nyukat"):
        wsl_bench.create_method(name, image_size=CONFORMANCE_IMAGE_SIZE)


# -- datasets: every registered one, on the in-format files the dataset tests write ---------------
DATASET_SIZE = (96, 64)


def _first_split_with_samples(name, root, **options):
    from wsl_bench.data import SPLITS, DatasetError

    for split in SPLITS:
        try:
            dataset = wsl_bench.create_dataset(name, root=str(root), split=split, image_size=DATASET_SIZE, **options)
            if dataset.ids():
                return dataset
        except DatasetError:
            continue
    raise AssertionError(f"the {name} test files hold no samples in any split")


def _synthetic(root):
    return wsl_bench.create_dataset("synthetic", split="val", image_size=DATASET_SIZE, n=6)


def _folder(root):
    import numpy as np

    from wsl_bench.datasets.folder import FolderWriter

    rng = np.random.default_rng(0)
    blob = np.zeros((40, 30), dtype=bool)
    blob[5:12, 4:9] = True
    writer = FolderWriter(root)
    writer.write("lesion", "test", rng.integers(0, 4096, (40, 30), dtype=np.uint16),
                 {"benign": blob, "malignant": np.zeros((40, 30), bool)}, {"benign": 1, "malignant": 0})
    writer.write("clear", "test", rng.integers(0, 4096, (40, 30), dtype=np.uint16),
                 {"benign": np.zeros((40, 30), bool), "malignant": None}, {"benign": 0, "malignant": 0})
    writer.write("unannotated", "test", rng.integers(0, 4096, (40, 30), dtype=np.uint16),
                 {"benign": None, "malignant": None}, {"benign": 0, "malignant": 1})
    return _first_split_with_samples("folder", root)


def _nyu(root):
    from fixtures_real import make_nyu

    make_nyu(root, frame=DATASET_SIZE)
    return wsl_bench.create_dataset("nyu", root=str(root), frame=DATASET_SIZE, image_size=DATASET_SIZE)


def _cbis(root):
    pytest.importorskip("pydicom")
    from fixtures_real import CbisCase, CbisWriter

    writer = CbisWriter(root)
    for case in (
        CbisCase("mass", "test", "P_00001", "LEFT", "CC", "MALIGNANT", lesion=(0.35, 0.3, 0.07)),
        CbisCase("calc", "test", "P_00001", "LEFT", "CC", "BENIGN_WITHOUT_CALLBACK", lesion=(0.7, 0.3, 0.05)),
        CbisCase("mass", "test", "P_00002", "RIGHT", "MLO", "BENIGN"),
    ):
        writer.add(case)
    writer.finish()
    return _first_split_with_samples("cbis-ddsm", root)


def _inbreast(root):
    pytest.importorskip("pydicom")
    from test_dataset_inbreast import make_inbreast

    make_inbreast(root)
    return _first_split_with_samples("inbreast", root)


def _vindr(root):
    pytest.importorskip("pydicom")
    from test_dataset_vindr import make_vindr

    make_vindr(root)
    return _first_split_with_samples("vindr", root)


DATASET_BUILDERS = {
    "synthetic": _synthetic,
    "folder": _folder,
    "nyu": _nyu,
    "cbis-ddsm": _cbis,
    "inbreast": _inbreast,
    "vindr": _vindr,
}


@pytest.mark.parametrize("name", wsl_bench.list_datasets("*"))
def test_dataset_conforms(name, tmp_path):
    """Every registered dataset, opened on files in its own format (a new built-in needs a builder here)."""
    assert name in DATASET_BUILDERS, f"dataset {name!r} has no conformance files: add a builder to DATASET_BUILDERS"
    dataset = DATASET_BUILDERS[name](tmp_path)
    assert dataset.ids(), f"{name}: no samples to check"
    check_dataset(dataset)
