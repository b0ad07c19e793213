"""Registry behaviour, the built-in registrations, and plugins through real entry points."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

import wsl_bench
from wsl_bench.registry import DuplicateNameError, Registry, UnknownNameError


def test_register_get_and_wildcards():
    registry: Registry = Registry("widget")

    @registry.register("gmic")
    class A:
        """First widget."""

    registry.register("gmic.m1", A)
    registry.register("glam", object)
    assert registry.get("gmic") is A
    assert registry.list("gmic*") == ["gmic", "gmic.m1"]
    assert registry.list(["glam", "gmic*"]) == ["glam", "gmic", "gmic.m1"]
    assert registry.describe("gmic") == "First widget."


def test_duplicate_name_is_an_error():
    registry: Registry = Registry("widget")
    registry.register("a", int)
    with pytest.raises(DuplicateNameError, match="already registered"):
        registry.register("a", float)


def test_unknown_name_lists_known_names():
    registry: Registry = Registry("widget")
    registry.register("alpha", int)
    registry.register("beta", int)
    with pytest.raises(UnknownNameError, match="unknown widget 'gamma'; known widgets: alpha, beta"):
        registry.get("gamma")
    with pytest.raises(UnknownNameError, match="no widget matches 'z\\*'"):
        registry.list("z*")


@pytest.mark.parametrize(
    "kind, argv, suggestion",
    [
        ("method", ["--methods", "glma", "--preset", "tiny"], "unknown method 'glma' (did you mean glam?); known "),
        ("method", ["--methods", "GMIC", "--preset", "tiny"], "unknown method 'GMIC' (did you mean gmic"),
        ("method", ["--methods", "gradcam@glma", "--preset", "tiny"], "unknown method 'glma' (did you mean glam?)"),
        ("dataset", ["--dataset", "synthtic", "--preset", "tiny"], "unknown dataset 'synthtic' (did you mean synth"),
        ("preset", ["--preset", "tniy"], "unknown preset 'tniy' (did you mean tiny?); known presets: tiny, cpu"),
    ],
)
def test_a_misspelt_name_suggests_the_closest_names_then_lists_every_known_one(kind, argv, suggestion, tmp_path,
                                                                                capsys):
    from wsl_bench.cli import main

    assert main(["run", *argv, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"wsl-bench: error: {suggestion}" in err and f"known {kind}s: " in err
    assert not (tmp_path / "out").exists()


def test_suggestions_are_the_closest_names_first_and_none_for_a_name_like_no_other():
    registry: Registry = Registry("widget")
    for name in ("gradcam", "gradcam++", "xgradcam", "scorecam", "intensity"):
        registry.register(name, int)
    with pytest.raises(UnknownNameError) as info:
        registry.get("gradcan")
    # by similarity (xgradcam shares more of it than gradcam++ does), not in alphabetical order
    assert "(did you mean gradcam or xgradcam or gradcam++?)" in str(info.value)
    with pytest.raises(UnknownNameError) as info:
        registry.get("qqq")
    assert "did you mean" not in str(info.value) and "known widgets: gradcam, gradcam++" in str(info.value)


def test_invalid_names_are_refused():
    registry: Registry = Registry("widget")
    for bad in ("", "a*b", "a,b", "a b"):
        with pytest.raises(ValueError):
            registry.register(bad, int)


def test_builtins_are_registered():
    methods = wsl_bench.list_methods()
    for name in ("random", "centre_prior", "intensity", "cam"):
        assert name in methods
    assert "synthetic" in wsl_bench.list_datasets()


def test_weight_variants_are_rows_of_a_table_not_generated_classes():
    from wsl_bench.methods.glam import GLAM_VARIANTS, GlamMethod
    from wsl_bench.methods.gmic import GMIC_VARIANTS, PUBLISHED_GMIC_MODELS, GmicMethod
    from wsl_bench.methods.published import VariantFactory
    from wsl_bench.pipeline import default_methods

    tables = {"glam": (GlamMethod, GLAM_VARIANTS), "gmic": (GmicMethod, GMIC_VARIANTS)}
    variant_names = {f"{family}.{v.tag}" for family, (_, table) in tables.items() for v in table}
    assert {"glam.sep", "glam.joint", *(f"gmic.m{i}" for i in range(1, 6))} == variant_names
    assert set(wsl_bench.list_methods(["glam.*", "gmic.*"])) == variant_names
    for family, (base, table) in tables.items():
        for variant in table:
            name = f"{family}.{variant.tag}"
            factory = wsl_bench.METHODS.get(name)
            assert isinstance(factory, VariantFactory) and not isinstance(factory, type), name
            assert factory.base is base and factory.variant is variant
            assert factory.requires_weights and factory.published_file == variant.published_file
            assert wsl_bench.METHODS.describe(name) == variant.description
            assert factory.trainable == base.trainable
            assert name not in default_methods()
    # no registered name is a class made for a variant of either family
    for name in wsl_bench.list_methods():
        obj = wsl_bench.METHODS.get(name)
        families = (GlamMethod, GmicMethod)
        assert obj in families or not (isinstance(obj, type) and issubclass(obj, families)), name
    m3 = next(v for v in GMIC_VARIANTS if v.tag == "m3")
    beta, top_t, lr = PUBLISHED_GMIC_MODELS["m3"]
    assert m3.published_file == "sample_model_3.p"
    assert dict(m3.options) == {"percent_t": top_t, "beta": beta, "learning_rate": lr}
    assert wsl_bench.METHODS.get("gmic.m3").config_defaults == dict(m3.options)


def test_variant_instance_is_its_base_class_named_with_the_tag(tmp_path):
    from wsl_bench.methods.gmic import GmicConfig, GmicMethod, GmicNetwork

    size = (96, 64)
    path = tmp_path / "sample_model_3.p"
    factory = wsl_bench.METHODS.get("gmic.m3")
    config, _ = factory.split_options(dict(factory.config_defaults), size)
    assert isinstance(config, GmicConfig)
    torch = pytest.importorskip("torch")
    torch.save(GmicNetwork(config).state_dict(), path)
    for method in (
        wsl_bench.create_method("gmic.m3", image_size=size, weights=str(path)),
        factory(image_size=size, weights=str(path)),
    ):
        assert type(method) is GmicMethod
        assert method.name == "gmic.m3" and method.published_file == "sample_model_3.p"
        assert method.requires_weights and method.config.percent_t == 0.03
    # options given when creating it override the variant's row
    method = factory(image_size=size, weights=str(path), learning_rate=1e-3)
    assert method.training_config.learning_rate == 1e-3 and method.config.percent_t == 0.03
    # the family itself keeps its own defaults and needs no file
    plain = GmicMethod(image_size=size)
    assert plain.name == "gmic" and plain.published_file is None and not plain.requires_weights


@pytest.mark.slow
def test_plugin_found_through_a_real_entry_point(tmp_path):
    """Install a throw-away distribution with entry points in a temporary site folder and find it
    by name in a fresh interpreter, exactly as a third-party plugin would be found."""
    site = tmp_path / "site"
    package = site / "toy_plugin"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(textwrap.dedent('''
        import torch
        from wsl_bench.saliency import SaliencyMethod, SaliencyOutput
        from wsl_bench.data import MammogramDataset

        class FlatMethod(SaliencyMethod):
            """A plugin method: flat maps."""
            description = "flat plugin map"
            map_range = "probability"

            def predict(self, images):
                n = images.shape[0]
                return SaliencyOutput(torch.full((n, 2, 4, 4), 0.5), torch.full((n, 2), 0.5))

        class EmptyDataset(MammogramDataset):
            """A plugin dataset."""
            needs_root = False

            def ids(self):
                return []

            def load(self, sample_id):
                raise KeyError(sample_id)
    '''))
    dist_info = site / "toy_plugin-1.0.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-plugin\nVersion: 1.0\n")
    (dist_info / "entry_points.txt").write_text(
        "[wsl_bench.methods]\nflat-plugin = toy_plugin:FlatMethod\n\n"
        "[wsl_bench.datasets]\nempty-plugin = toy_plugin:EmptyDataset\n"
    )
    code = textwrap.dedent('''
        import json, wsl_bench
        m = wsl_bench.create_method("flat-plugin")
        out = m.predict(__import__("torch").zeros(3, 1, 8, 8))
        print(json.dumps({"methods": wsl_bench.list_methods("flat*"), "datasets": wsl_bench.list_datasets("empty*"),
                          "shape": list(out.maps.shape)}))
    ''')
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"}, timeout=120)
    assert result.returncode == 0, result.stderr
    assert '"methods": ["flat-plugin"]' in result.stdout
    assert '"datasets": ["empty-plugin"]' in result.stdout
    assert '"shape": [3, 2, 4, 4]' in result.stdout


def test_card_folders_are_not_python_packages():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    for folder in ("methods", "datasets"):
        assert (root / folder).is_dir(), f"top-level {folder}/ (cards) is missing"
        assert not (root / folder / "__init__.py").exists(), f"top-level {folder}/ must not be a Python package"
