"""Presets: what the default run contains, and the per-method settings a preset carries."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import wsl_bench
from wsl_bench.evaluation.harness import RunConfig
from wsl_bench.pipeline import create_run_method, default_methods, method_options, parse_methods
from wsl_bench.presets import PRESETS, get_preset
from wsl_bench.training.augment import VerticalFlip
from wsl_bench.training.cache import train_config_for
from wsl_bench.training.trainer import CRITERIA


def test_preset_fields_name_real_methods_and_criteria():
    for preset in PRESETS.values():
        assert preset.best_criterion in CRITERIA, preset.name
        for name in [*preset.method_options, *preset.skip_by_default]:
            assert name in wsl_bench.list_methods("*"), f"preset {preset.name} names unknown method {name!r}"


def test_default_run_of_the_cpu_preset_leaves_out_its_skipped_methods_only():
    cpu = get_preset("cpu")
    assert cpu.skip_by_default, "the cpu preset is expected to leave the costliest explainers out"
    everything = default_methods()
    default_cpu = parse_methods(None, "cpu")
    assert default_cpu == [m for m in everything if m not in cpu.skip_by_default]
    assert {"cam", "glam", "gmic", "random", "centre_prior", "intensity"} <= set(default_cpu)
    # named, a skipped method still runs
    assert parse_methods(",".join(cpu.skip_by_default), "cpu") == sorted(cpu.skip_by_default)


def test_preset_method_options_apply_under_the_users_own():
    config = RunConfig(methods=("glam",), preset="cpu")
    assert method_options(config, "glam") == get_preset("cpu").method_options["glam"]
    mine = RunConfig(methods=("glam",), preset="cpu", method_options=(("glam", (("learning_rate", 0.5),)),))
    assert method_options(mine, "glam")["learning_rate"] == 0.5
    assert method_options(RunConfig(methods=("glam",), preset="full"), "glam") == {}


def test_training_config_takes_the_presets_criterion_and_the_methods_recipe():
    cam = wsl_bench.create_method("cam", image_size=(64, 48))
    assert train_config_for(cam, "cpu", 0).best_criterion == get_preset("cpu").best_criterion
    assert train_config_for(cam, "tiny", 0).best_criterion == "mean_auc"
    assert train_config_for(cam, "tiny", 0).lr == cam.train_overrides["lr"]
    assert train_config_for(cam, "tiny", 0, best_criterion="loss").best_criterion == "loss"


@pytest.mark.parametrize("seed", range(4))
def test_vertical_flip_is_a_pure_function_of_its_generator(seed):
    image = torch.arange(12.0).reshape(1, 4, 3)
    flip = VerticalFlip()
    a = flip(image, np.random.default_rng(seed))
    b = flip(image, np.random.default_rng(seed))
    assert torch.equal(a, b)
    assert torch.equal(a, image) or torch.equal(a, image.flip(-2))
    flipped = sum(not torch.equal(flip(image, np.random.default_rng([seed, i])), image) for i in range(200))
    assert 60 < flipped < 140  # about half


def test_an_explainer_inherits_the_preset_options_of_the_classifier_it_explains():
    cpu = get_preset("cpu").method_options
    config = RunConfig(methods=("gradcam@gmic",), preset="cpu")
    # gradcam@gmic must train (and share the cache key of) the very GMIC the preset gives `gmic`
    assert method_options(config, "gradcam@gmic") == cpu["gmic"]
    assert method_options(config, "integrated_gradients@glam") == {**cpu["glam"], **cpu["integrated_gradients"]}
    chosen = RunConfig(methods=("gradcam",), preset="cpu", method_options=(("gradcam", (("classifier", "glam"),)),))
    assert method_options(chosen, "gradcam") == {**cpu["glam"], "classifier": "glam"}
    # the default classifier (cam) brings its own preset options (its width); non-explainers inherit nothing
    assert method_options(RunConfig(methods=("gradcam",), preset="cpu"), "gradcam") == cpu["cam"] != {}
    assert method_options(RunConfig(methods=("random",), preset="cpu"), "random") == {}
    mine = RunConfig(methods=("gradcam@gmic",), preset="cpu",
                     method_options=(("gradcam@gmic", (("learning_rate", 0.5),)),))
    assert method_options(mine, "gradcam@gmic")["learning_rate"] == 0.5


def test_an_explainer_and_its_classifier_share_one_checkpoint_identity():
    config = RunConfig(methods=("gmic", "gradcam@gmic"), preset="cpu", image_size=(96, 64))
    # what each trains: gmic itself, and the gmic classifier method the explainer is built from
    made = {name: create_run_method(name, config).trainee for name in config.methods}
    assert made["gradcam@gmic"].training_identity() == made["gmic"].training_identity()


def test_preset_settings_are_typed_and_every_option_is_one_the_method_takes():
    from wsl_bench.presets import MethodSettings, Network, Training

    with pytest.raises(TypeError):
        Network(width=0.5, widht=0.25)  # a misspelt setting fails where the preset is written
    assert MethodSettings(network=Network(width=0.5), training=Training(learning_rate=1e-4)).options() == {
        "width": 0.5, "learning_rate": 1e-4}
    assert MethodSettings().options() == {}
    for preset in PRESETS.values():
        for name, options in preset.method_options.items():
            # built at a small size: constructors reject options they do not take (TypeError)
            method = wsl_bench.create_method(name, image_size=(64, 48), **options)
            assert method.name == name, (preset.name, name)
        assert preset.to_dict()["method_options"] == preset.method_options
        assert "methods" not in preset.to_dict()  # the manifest keeps its flat method_options
    with pytest.raises(TypeError):
        wsl_bench.create_method("cam", image_size=(64, 48), widht=0.5)
