"""The method contract (issue 13): ``TrainableMethod`` declares every hook the trainer and the
pipeline call, nothing discovers them with ``getattr``, and the complete examples of
``methods/README.md`` pass the conformance checks, the trainable one trains through
``wsl_bench.pipeline.run`` and the post-hoc explainer runs there on a classifier the run trains."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from wsl_bench.evaluation.harness import RunConfig
from wsl_bench.methods.explainers import PosthocExplainer
from wsl_bench.pipeline import run
from wsl_bench.registry import METHODS
from wsl_bench.saliency import SaliencyMethod, TrainableMethod
from wsl_bench.testing import check_method

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "methods" / "README.md"

HOOKS = ("training_stages", "training_augmentation", "train_overrides", "global_init", "initialise_global_backbone")
"""Hooks of a trainable method that the trainer or the pipeline call."""

ATTRIBUTES = ("name", "description", "map_range", "trainable", "requires_weights", "weights_loaded")
"""Attributes of every method that the harness, the pipeline or the trainer read."""

EXAMPLE_NAME = "contract-example"
EXPLAINER_NAME = "contract-explainer"


def _example_source(kind: str) -> str:
    match = re.search(rf"<!-- example: {kind} -->\s*```python\n(.*?)```", README.read_text(), re.S)
    assert match, f"methods/README.md has no ```python block after <!-- example: {kind} -->"
    return match.group(1)


def _example_namespace(kind: str) -> dict:
    namespace: dict = {"__name__": f"contract_example_{kind}"}
    exec(compile(_example_source(kind), str(README), "exec"), namespace)
    return namespace


def _example_class(kind: str = "trainable", base: type[SaliencyMethod] = TrainableMethod) -> type:
    namespace = _example_namespace(kind)
    defined = [v for v in namespace.values()
               if isinstance(v, type) and issubclass(v, base) and v.__module__ == namespace["__name__"]]
    assert len(defined) == 1, f"the {kind} example should define one {base.__name__}, found {defined}"
    return defined[0]


@pytest.fixture
def example_method():
    cls = _example_class()
    METHODS.register(EXAMPLE_NAME, cls)
    try:
        yield cls
    finally:
        METHODS.unregister(EXAMPLE_NAME)


@pytest.mark.parametrize("hook", HOOKS)
def test_trainable_method_declares_every_hook(hook):
    assert hasattr(TrainableMethod, hook), f"TrainableMethod does not declare {hook}"


@pytest.mark.parametrize("attribute", ATTRIBUTES)
def test_saliency_method_declares_every_attribute(attribute):
    assert hasattr(SaliencyMethod, attribute), f"SaliencyMethod does not declare {attribute}"


def test_hook_defaults():
    class Minimal(TrainableMethod):
        def network(self):
            return None

        def training_loss(self, images, labels, pos_weight=None):
            return None

        def predict(self, images):
            return None

    method = Minimal()
    (stage,) = method.training_stages()
    assert stage.name == "main" and stage.trainable == () and stage.epochs_fraction == 1.0
    assert method.training_augmentation() is None
    assert method.train_overrides == {} and method.global_init is None
    with pytest.raises(NotImplementedError, match="initialise_global_backbone"):
        method.initialise_global_backbone(method)


def test_no_getattr_discovery_of_hooks():
    pattern = re.compile(r"getattr\([^)]*[\"'](" + "|".join(HOOKS) + r")[\"']")
    found = [f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
             for path in sorted((ROOT / "wsl_bench").rglob("*.py"))
             for number, line in enumerate(path.read_text().splitlines(), 1)
             if pattern.search(line)]
    assert not found, "hooks declared on the base classes are called directly, not discovered:\n" + "\n".join(found)


def test_readme_example_conforms(example_method):
    check_method(EXAMPLE_NAME)


def test_readme_inference_example_conforms():
    cls = _example_class("inference", SaliencyMethod)
    assert not cls.trainable
    check_method(cls)


def test_readme_example_trains_one_epoch_through_the_pipeline(toy_dataset, example_method, tmp_path, monkeypatch):
    monkeypatch.setenv("WSL_BENCH_CACHE", str(tmp_path / "cache"))

    class OneEpoch(example_method):
        train_overrides = {**example_method.train_overrides, "epochs": 1}

    METHODS.unregister(EXAMPLE_NAME)
    METHODS.register(EXAMPLE_NAME, OneEpoch)
    config = RunConfig(methods=(EXAMPLE_NAME,), dataset="toy", preset="tiny")
    summary = run(config, tmp_path / "run", progress=False, write_report=False)

    statuses = summary.statuses[EXAMPLE_NAME]
    assert statuses["ok"] > 0 and not statuses.get("failed") and not statuses.get("oom"), statuses
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    checkpoint = manifest["checkpoints"][EXAMPLE_NAME]
    assert checkpoint["epochs_completed"] == 1
    assert Path(checkpoint["path"]).is_relative_to(tmp_path / "cache")


def test_readme_explainer_example_conforms_on_its_own_classifier():
    namespace = _example_namespace("explainer")
    cls = _example_class("explainer", PosthocExplainer)
    assert not cls.trainable and namespace["output"].maps.shape == (2, 2, 64, 48)
    check_method(lambda **options: cls(namespace["tiny_classifier"](), **options), image_size=(64, 48))


@pytest.mark.slow
def test_readme_explainer_example_runs_through_the_pipeline_on_a_trained_classifier(toy_dataset, tmp_path,
                                                                                    monkeypatch):
    monkeypatch.setenv("WSL_BENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(toy_dataset, "counts", {"train": 8, "val": 4, "test": 2})
    METHODS.register(EXPLAINER_NAME, _example_class("explainer", PosthocExplainer))
    try:
        config = RunConfig(methods=("cam", EXPLAINER_NAME), dataset="toy", preset="tiny")
        summary = run(config, tmp_path / "run", progress=False, write_report=False)
    finally:
        METHODS.unregister(EXPLAINER_NAME)
    statuses = summary.statuses[EXPLAINER_NAME]
    assert statuses["ok"] > 0 and not statuses.get("failed") and not statuses.get("oom"), statuses
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    # the explainer runs on the cam classifier the run trained for cam: one checkpoint, one key
    assert manifest["checkpoints"][EXPLAINER_NAME] == manifest["checkpoints"]["cam"]
    identity = manifest["methods"][EXPLAINER_NAME]["identity_data"]
    assert identity["training"] == manifest["checkpoints"]["cam"]["cache_key"]


# -- issue 16, item 10: what a constructor receives, and every attribute read from a method class ------------
CONTRACT_ATTRIBUTE_READS = re.compile(
    r"(?:METHODS\.get\([^)]*\)|\bfactory|\bcls|type\(\w+\))\.(\w+)\b(?!\()"  # METHODS.get(n).x, factory.x, type(m).x
    r"|getattr\((?:METHODS\.get\([^)]*\)|factory|cls|obj), [\"'](\w+)[\"']"   # getattr(factory, "x", ...)
)
"""Attribute reads on a registered method class outside the methods themselves."""
NOT_CONTRACT = {"__name__", "__mro__", "__module__", "__doc__", "split_options", "config_defaults", "published_file",
                "network_class", "base", "variant"}
"""Reads of Python's own attributes, and of the published-weight variants' own factories."""


def _documented_attributes() -> set[str]:
    text = README.read_text()
    table = text[text.index("| class attribute |"):text.index("**Constructor")]
    return set(re.findall(r"^\| `(\w+)`", table, re.M))


def test_the_contract_documents_every_attribute_read_from_a_method_class():
    read: set[str] = set()
    for path in (ROOT / "wsl_bench").rglob("*.py"):
        if path.relative_to(ROOT / "wsl_bench").parts[0] in ("methods", "datasets"):
            continue  # the built-in methods read their own attributes; datasets are another contract
        for match in CONTRACT_ATTRIBUTE_READS.finditer(path.read_text()):
            read.add(match.group(1) or match.group(2))
    read = (read - NOT_CONTRACT) | set(ATTRIBUTES)
    assert {"requires_weights", "trainable", "default_classifier", "description"} <= read  # the scan finds them
    undocumented = sorted(read - _documented_attributes())
    assert not undocumented, f"read from method classes, undocumented in methods/README.md: {undocumented}"


@pytest.fixture
def recording_example():
    """The README's inference example, registered, recording the keywords its constructor receives."""
    base = _example_class("inference", SaliencyMethod)
    received: list[dict] = []

    class Recording(base):
        def __init__(self, *args, **kwargs):
            assert not args, f"the constructor received positional arguments {args}"
            received.append(dict(kwargs))
            super().__init__(**kwargs)

    METHODS.register(EXAMPLE_NAME, Recording)
    try:
        yield received
    finally:
        METHODS.unregister(EXAMPLE_NAME)


def test_a_run_constructs_the_method_with_exactly_the_documented_keywords(recording_example):
    from wsl_bench.pipeline import create_run_method

    config = RunConfig(methods=(EXAMPLE_NAME,), preset="tiny", image_size=(64, 48), seed=3,
                       method_options=((EXAMPLE_NAME, (("kernel", 5),)),))
    method = create_run_method(EXAMPLE_NAME, config).method
    (received,) = recording_example
    assert received == {"device": "cpu", "seed": 3, "image_size": (64, 48), "kernel": 5}
    assert type(received["image_size"]) is tuple and all(type(v) is int for v in received["image_size"])
    # what super().__init__ sets, as the contract says
    assert method.device == torch.device("cpu") and method.seed == 3 and method.image_size == (64, 48)
    assert method.kernel == 5 and method.name == EXAMPLE_NAME


def test_create_method_passes_only_what_it_is_given(recording_example):
    from wsl_bench.registry import create_method

    method = create_method(EXAMPLE_NAME)
    assert recording_example == [{}]
    assert method.image_size == (2944, 1920) and method.device == torch.device("cpu")  # the defaults


def test_an_option_the_constructor_does_not_name_is_one_usage_error(recording_example, tmp_path, capsys):
    from wsl_bench.cli import main
    from wsl_bench.registry import create_method

    with pytest.raises(TypeError, match="unexpected keyword argument 'nonsense'"):
        create_method(EXAMPLE_NAME, nonsense=1)
    code = main(["run", "--methods", EXAMPLE_NAME, "--option", "nonsense=1", "--preset", "tiny",
                 "--out", str(tmp_path / "run"), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--option nonsense" in err[0], err
