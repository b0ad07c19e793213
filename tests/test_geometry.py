"""Scale-faithful geometry: derived strides, measured ratios per preset, published networks at full size."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import wsl_bench
from wsl_bench.cli import main
from wsl_bench.methods import backbones as bb
from wsl_bench.methods import geometry
from wsl_bench.methods.cam import CamConfig
from wsl_bench.methods.glam import GlamConfig, GlamMethod, GlamNetwork
from wsl_bench.methods.gmic import GmicConfig, GmicMethod, GmicNetwork
from wsl_bench.presets import get_preset
from wsl_bench.report import describe

TOLERANCE = 1.5
"""The issue's bound: every scale-dependent ratio within a factor 1.5 of the published configuration."""


@pytest.fixture(scope="module")
def table() -> list[describe.GeometryRow]:
    return describe.geometry_table(("tiny", "cpu", "full"))


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["tiny", "cpu", "full"])
@pytest.mark.parametrize("method", ["glam", "gmic", "cam"])
def test_geometry_ratios_stay_within_a_factor_1_5_of_the_published_configuration(table, method, preset):
    """Map cell, patch and window per lesion and receptive field per image height, measured on the
    networks each preset builds, against the same method built at the published 2944×1920."""
    ratios = describe.published_ratios(table)[f"{method}/{preset}"]
    expected = {"cell", "receptive_field"} | ({"patch", "window"} if method != "cam" else set())
    assert set(ratios) == expected
    for name, ratio in ratios.items():
        assert 1 / TOLERANCE <= ratio <= TOLERANCE, f"{method} at {preset}: {name} is {ratio:.2f}× the published"


@pytest.mark.slow
def test_the_published_reference_row_is_the_published_geometry(table):
    """At 2944×1920 the measured geometry is the published one (methods/glam.md and methods/gmic.md, "What
    the model computes"): GLAM's maps 184×120 / 92×60 / 46×30 with a 32×32 window, GMIC's 46×30 with a 4×4
    window, 883-pixel receptive field."""
    full = {r.method: r for r in table if r.preset == "full"}
    assert full["glam"].map_cells == ((184, 120), (92, 60), (46, 30)) and full["glam"].window_cells == (32, 32)
    assert full["gmic"].map_cells == ((46, 30),) and full["gmic"].window_cells == (4, 4)
    assert {r.receptive_field for r in full.values()} == {883}
    # the cpu preset keeps the published cell counts exactly (368 = 2944 / 8)
    cpu = {r.method: r for r in table if r.preset == "cpu"}
    assert cpu["glam"].map_cells == full["glam"].map_cells and cpu["gmic"].map_cells == full["gmic"].map_cells


def test_the_old_pixel_geometry_would_fail_the_bound():
    """The check can fail: the published strides on a 368×240 image give GMIC a 6×4 map and a receptive
    field of 2.4 image heights."""
    net = GmicNetwork(GmicConfig(image_size=(368, 240), geometry="pixels"))
    rf = geometry.receptive_field(net.ds_net) / 368
    assert rf > 0.30 * TOLERANCE
    with torch.no_grad():
        final = net.ds_net.stage_outputs(torch.zeros(1, 1, 368, 240))[-1]
    assert final.shape[-2:] == (6, 4)


@pytest.mark.parametrize(("reductions", "stem", "pool", "stages"), [
    (0, 2, True, (1, 2, 2, 2, 2)),
    (1, 2, True, (1, 2, 1, 2, 2)),
    (2, 2, True, (1, 1, 1, 2, 2)),
    (3, 2, False, (1, 1, 1, 2, 2)),
    (4, 1, False, (1, 1, 1, 2, 2)),
])
def test_global_strides_lose_their_latest_factors_first(reductions, stem, pool, stages):
    assert geometry.global_strides(reductions) == geometry.GlobalStrides(stem, pool, stages)


def test_stride_reductions_per_size_and_bounds():
    assert [geometry.stride_reductions((h, 100)) for h in (2944, 1472, 736, 368, 256, 128)] == [0, 1, 2, 3, 4, 4]
    assert geometry.stride_reductions((368, 240), "pixels") == 0
    with pytest.raises(ValueError, match="geometry"):
        geometry.stride_reductions((368, 240), "other")
    with pytest.raises(ValueError, match="0 to 4"):
        geometry.global_strides(5)


def test_trunk_strides_take_stages_then_pool_then_stem():
    gmic = geometry.GMIC_LOCAL_STRIDES
    assert geometry.trunk_strides(gmic, 3) == geometry.TrunkStrides(2, True, (1, 1, 1, 1))
    assert geometry.trunk_strides(gmic, 5) == geometry.TrunkStrides(1, False, (1, 1, 1, 1))
    glam = geometry.GLAM_LOCAL_STRIDES  # no stage strides: the stem's two go, a third cannot
    assert geometry.trunk_strides(glam, 3) == geometry.TrunkStrides(1, False, (1, 1, 1, 1))


def test_receptive_field_of_a_small_stack_by_hand():
    net = nn.Sequential(nn.Conv2d(1, 1, 7, stride=2, padding=3), nn.MaxPool2d(3, 2), nn.Conv2d(1, 1, 3, padding=1))
    assert geometry.receptive_field(net) == 1 + 6 + 2 * 2 + 2 * 4
    assert geometry.receptive_field(net, upto="0") == 7
    block = bb.PreActBlock(1, 1, 2, projection=True)  # the 1×1 shortcut adds nothing and is not counted twice
    assert geometry.receptive_field(nn.Sequential(block, nn.Conv2d(1, 1, 3, padding=1))) == 1 + 2 + 2 * 2 + 2 * 2


@pytest.mark.parametrize("network", [GlamNetwork, GmicNetwork])
def test_derived_strides_keep_every_parameter_shape(network):
    """A published checkpoint loads into the derived network of any size (at width 1)."""
    config_class = GlamConfig if network is GlamNetwork else GmicConfig
    published = {k: v.shape for k, v in network(config_class()).state_dict().items()}
    derived = network(config_class(image_size=(368, 240))).state_dict()
    assert {k: v.shape for k, v in derived.items()} == published
    assert any(isinstance(m, nn.Identity) for m in network(config_class(image_size=(368, 240))).modules())


@pytest.mark.parametrize("method", ["glam", "gmic", "cam"])
def test_full_preset_builds_the_published_architecture(method):
    """The full preset adds no network option: its GLAM and GMIC are the networks the fidelity tests
    check against the published code's outputs (tests/test_fidelity_*.py), and CAM is the width-1 ResNet-22."""
    full = get_preset("full")
    options = full.method_options.get(method, {})
    if method == "glam":
        config, _ = GlamMethod.split_options(options, full.image_size)
        assert config == GlamConfig() and config.stride_reductions == 0
    elif method == "gmic":
        config, _ = GmicMethod.split_options(options, full.image_size)
        assert config == GmicConfig() and config.stride_reductions == 0
    else:
        built = wsl_bench.create_method("cam", image_size=full.image_size, **options)
        assert built.config == CamConfig()
        assert isinstance(built.network().backbone.first_pool, nn.MaxPool2d)


def test_scaled_glam_runs_and_its_engine_matches_the_plain_network():
    """The fast inference engine handles a stem without max-pool (derived geometry)."""
    tiny = get_preset("tiny")
    method = GlamMethod(image_size=tiny.image_size, **tiny.method_options["glam"])
    x = torch.randn(1, 1, *tiny.image_size, generator=torch.Generator().manual_seed(0))
    fast = method.predict(x)
    method.fast = False
    plain = method.predict(x)
    torch.testing.assert_close(fast.maps, plain.maps, atol=1e-4, rtol=1e-4)
    assert fast.extras["global_map"].shape[-2:] == (256, 160)  # 2^4 × finer than 1/16: the stage-3 map


def test_describe_command_prints_the_table(capsys):
    assert main(["describe", "--presets", "cpu", "--methods", "gmic"]) == 0
    out = capsys.readouterr().out
    assert "| gmic | cpu | 368×240 | 46×30 |" in out and "receptive field / height" in out
    assert main(["describe", "--methods", "vgg"]) == 2


def test_the_training_column_appears_only_with_a_run_that_measured_it(tmp_path, capsys):
    assert main(["describe", "--presets", "tiny,cpu", "--methods", "gmic"]) == 0
    assert "training" not in capsys.readouterr().out  # a fresh checkout: no column of dashes
    manifest = tmp_path / "manifest.json"
    manifest.write_text('{"checkpoints": {"gmic": {"training_seconds": 90}}}')
    assert main(["describe", "--presets", "tiny,cpu", "--methods", "gmic", "--manifest", f"cpu={manifest}"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].endswith("| GFLOP | training (min) |") and lines[1].count("---") == 12
    assert lines[2].startswith("| gmic | tiny |") and lines[2].endswith(" | – |")
    assert lines[3].startswith("| gmic | cpu |") and lines[3].endswith(" | 1.5 |")


def _load_report_script(name: str):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "reports" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"report_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
@pytest.mark.parametrize("script", ["geometry", "evidence"])
def test_committed_tables_are_what_the_code_measures(script):
    """The tables in the method cards and reports/README.md are generated: a changed preset, network or
    reference run must be followed by `python reports/geometry.py` / `python reports/evidence.py`."""
    assert _load_report_script(script).main(["--check"]) == 0


def test_evidence_table_says_which_learned_method_does_not_beat_a_baseline():
    import pandas as pd

    evidence = _load_report_script("evidence")
    rows = []
    for cls in ("benign", "malignant"):
        for method, dice, pxap in [("glam", 0.30, 0.20), ("gmic", 0.10, 0.30), ("cam", 0.25, 0.15),
                                   ("intensity", 0.12, 0.08), ("centre_prior", 0.04, 0.02), ("random", 0.02, 0.01)]:
            rows.append({"method": method, "class": cls, "dice_val_tau": dice, "pxap": pxap})
    text = evidence.evidence_markdown(pd.DataFrame(rows))
    assert "| benign | glam | 0.300 | 0.200 | yes / yes / yes |" in text
    assert "| benign | gmic | 0.100 | 0.300 | **no** / yes / yes |" in text  # Dice below intensity's
    assert "GLAM 0.300 against cam 0.250: +20.0 % (paper: +39.6 %)" in text
