"""Installed plugins (issue 16, item 11): they never join a run they are not asked into, they are
selected by name, by ``plugin:PATTERN`` or with ``--with-plugins``, and every run's manifest names
each installed plugin's package and version.

The plugin is a real distribution (``dist-info`` with ``entry_points.txt``) in a temporary folder put
on ``sys.path``, found by ``importlib.metadata`` exactly as a ``pip install``-ed package would be.
"""

from __future__ import annotations

import json
import sys
import textwrap

import pytest

from wsl_bench.cli import main
from wsl_bench.evaluation.harness import RunConfig, open_manifest
from wsl_bench.pipeline import default_methods, parse_methods
from wsl_bench.registry import DATASETS, METHODS, UnknownNameError, load_builtins

PACKAGE, VERSION, MODULE = "toy-wsl-plugin", "2.3.1", "toy_wsl_plugin"

PLUGIN_SOURCE = '''
import torch
from wsl_bench.saliency import SaliencyMethod, SaliencyOutput


class FlatMethod(SaliencyMethod):
    """A plugin method: flat maps."""

    description = "flat plugin map"

    def predict(self, images):
        n = images.shape[0]
        return SaliencyOutput(torch.full((n, 2, 4, 4), 0.5), torch.full((n, 2), 0.5))


class NeedsWeights(FlatMethod):
    """A plugin method that only makes sense with the user's weights."""

    description = "plugin needing weights"
    requires_weights = True


class Impostor(FlatMethod):
    """Would replace the built-in ``intensity``."""
'''


@pytest.fixture
def installed_plugin(tmp_path, monkeypatch):
    """Install ``toy-wsl-plugin 2.3.1`` (three method entry points, one of them a built-in's name) for
    one test; the registries forget it afterwards."""
    site = tmp_path / "site"
    (site / MODULE).mkdir(parents=True)
    (site / MODULE / "__init__.py").write_text(textwrap.dedent(PLUGIN_SOURCE))
    dist_info = site / f"{MODULE}-{VERSION}.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {PACKAGE}\nVersion: {VERSION}\n")
    (dist_info / "entry_points.txt").write_text(
        "[wsl_bench.methods]\n"
        f"flat-plugin = {MODULE}:FlatMethod\n"
        f"weights-plugin = {MODULE}:NeedsWeights\n"
        f"intensity = {MODULE}:Impostor\n"
    )
    load_builtins()  # built-in names are taken before the entry points are read
    monkeypatch.syspath_prepend(str(site))
    for registry in (METHODS, DATASETS):  # read the entry points again, restore every table after the test
        monkeypatch.setattr(registry, "_entry_points_loaded", False)
        monkeypatch.setattr(registry, "_entries", dict(registry._entries))
        monkeypatch.setattr(registry, "_plugins", {})
    yield
    sys.modules.pop(MODULE, None)


def test_the_default_benchmark_leaves_installed_plugins_out(installed_plugin):
    names = default_methods("tiny")
    assert "flat-plugin" not in names and "weights-plugin" not in names
    assert "intensity" in names and METHODS.get("intensity").__module__ == "wsl_bench.methods.baselines"
    assert parse_methods(None, "tiny") == names


def test_wildcards_select_built_in_methods_and_plugin_patterns_select_plugins(installed_plugin):
    assert "flat-plugin" not in parse_methods("*")
    assert parse_methods("plugin:*") == ["flat-plugin", "weights-plugin"]
    assert parse_methods("plugin:flat*,intensity") == ["flat-plugin", "intensity"]
    with pytest.raises(UnknownNameError, match="plugin:flat"):  # only plugins match: say how to ask for them
        parse_methods("flat*")
    with pytest.raises(UnknownNameError, match="flat-plugin, weights-plugin"):
        parse_methods("plugin:nothing*")


def test_a_plugin_runs_by_name_or_with_the_opt_in_flag(installed_plugin):
    assert parse_methods("flat-plugin,random") == ["flat-plugin", "random"]
    assert parse_methods("weights-plugin") == ["weights-plugin"]  # named: runs even though it needs weights
    with_plugins = parse_methods(None, "tiny", with_plugins=True)
    assert with_plugins == default_methods("tiny") + ["flat-plugin"]  # not the one needing user weights
    assert parse_methods("random", with_plugins=True) == ["random", "flat-plugin"]


def test_the_manifest_records_every_installed_plugin(installed_plugin, tmp_path):
    manifest = open_manifest(RunConfig(methods=("intensity",), preset="tiny"), tmp_path)
    plugins = manifest["plugins"]["methods"]
    assert set(plugins) == {"flat-plugin", "weights-plugin", "intensity"}
    for name in ("flat-plugin", "weights-plugin"):
        assert plugins[name] == {"package": PACKAGE, "version": VERSION,
                                 "entry_point": plugins[name]["entry_point"], "status": "loaded"}
    assert plugins["flat-plugin"]["entry_point"] == f"{MODULE}:FlatMethod"
    assert plugins["intensity"]["status"].startswith("ignored")  # the built-in kept its name
    assert manifest["plugins"]["datasets"] == {}
    json.dumps(manifest)  # written as JSON


def test_list_marks_plugins_with_their_package(installed_plugin, capsys):
    assert main(["list", "--json"]) == 0
    methods = {m["name"]: m for m in json.loads(capsys.readouterr().out)["methods"]}
    assert methods["flat-plugin"]["plugin"] == {"package": PACKAGE, "version": VERSION}
    assert "plugin" not in methods["intensity"]
    assert main(["list"]) == 0
    assert f"flat plugin map  [plugin {PACKAGE} {VERSION}]" in capsys.readouterr().out


def test_run_with_plugins_flag_reaches_the_run_configuration(installed_plugin, tmp_path):
    from wsl_bench.cli import _run_config, build_parser

    base = ["run", "--preset", "tiny", "--out", str(tmp_path / "run")]
    plain = _run_config(build_parser().parse_args(base))
    opted = _run_config(build_parser().parse_args([*base, "--with-plugins"]))
    assert "flat-plugin" not in plain.methods
    assert opted.methods == (*plain.methods, "flat-plugin")
