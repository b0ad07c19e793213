"""Post-hoc explainers (Grad-CAM family, captum) on the ``cam`` classifier: contract, cross-checks
against the libraries and between them, memory budget and chunking, targets, graph hygiene, and
the harness (one training shared by a classifier and its explainers, "oom" records)."""

from __future__ import annotations

import gc
import json
import warnings
import weakref

import numpy as np
import pytest
import torch

import wsl_bench
from wsl_bench.evaluation.harness import RunConfig
from wsl_bench.evaluation.records import read_records
from wsl_bench.methods.cam import CamConfig
from wsl_bench.methods.explainers import (
    ExplainerOutOfMemory,
    PosthocExplainer,
    check_targets,
    class_targets,
    fit_chunk,
)
from wsl_bench.pipeline import run
from wsl_bench.registry import UnknownNameError, create_method_with_classifier
from wsl_bench.saliency import ExplainedClassifier
from wsl_bench.testing import check_method, conformance_images

GRADCAM_FAMILY = ["gradcam", "gradcam++", "xgradcam", "hirescam", "layercam", "eigencam", "scorecam", "ablationcam",
                  "fullgrad"]
CAPTUM = ["integrated_gradients", "occlusion", "captum_gradcam", "guided_gradcam", "saliency", "input_x_gradient"]
EXPLAINERS = GRADCAM_FAMILY + CAPTUM

SIZE = (128, 80)
TINY = CamConfig(width=1 / 16)
"""A 16-channel classifier (ResNet-22 at 1/16 width) keeps ScoreCAM/AblationCAM (a pass per channel) fast."""

FAST_OPTIONS = {"integrated_gradients": {"n_steps": 4}, "occlusion": {"window": (32, 32), "stride": (32, 32)}}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These tensors are tiny: a second intra-op thread only adds spin-waiting, which on a shared
    2-core machine made this file about 8 times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make(name: str, **options) -> PosthocExplainer:
    return make_with_classifier(name, **options)[0]


def make_with_classifier(name: str, **options) -> tuple[PosthocExplainer, wsl_bench.TrainableMethod]:
    """The explainer and the classifier method the front door created for it."""
    options = {"image_size": SIZE, "config": TINY, **FAST_OPTIONS.get(name, {}), **options}
    return create_method_with_classifier(name, **options)


def randomise_statistics(model: torch.nn.Module, seed: int = 1) -> None:
    """Non-trivial batch-norm statistics and head bias, so identities are not helped by an identity-like init."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.copy_(torch.randn(module.num_features, generator=generator) * 0.1)
                module.running_var.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
                module.weight.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(module.num_features, generator=generator) * 0.1)
        model.head.bias.copy_(torch.randn(model.head.bias.shape, generator=generator))


def scale(maps: torch.Tensor) -> torch.Tensor:
    """pytorch-grad-cam's ``scale_cam_image`` on ``N×1×h×w`` maps: (x − min) / (1e-7 + max of x − min)."""
    flat = maps.flatten(1)
    flat = flat - flat.min(dim=1, keepdim=True).values
    return (flat / (1e-7 + flat.max(dim=1, keepdim=True).values)).view_as(maps)


def graph_tensors() -> int:
    """Live tensors that hold an autograd graph."""
    gc.collect()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # isinstance on some deprecated torch objects warns
        return sum(1 for o in gc.get_objects() if isinstance(o, torch.Tensor) and o.grad_fn is not None)


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


# -- registry and construction ---------------------------------------------------------------------------
def test_every_explainer_is_registered_with_a_description():
    for name in EXPLAINERS:
        assert name in wsl_bench.list_methods("*")
        assert wsl_bench.METHODS.describe(name)
    assert wsl_bench.list_methods("gradcam*") == ["gradcam", "gradcam++"]


def test_classifier_option_and_at_spelling_choose_the_classifier():
    by_name, inner = make_with_classifier("gradcam@cam")
    by_option, other = make_with_classifier("gradcam", classifier="cam")
    assert by_name.name == "gradcam@cam" and by_name.classifier_name == by_option.classifier_name == "cam"
    assert inner.training_identity() == other.training_identity() == wsl_bench.create_method(
        "cam", image_size=SIZE, config=TINY).training_identity()
    assert inner.training_identity()["method"] == "cam"
    assert by_name.model is inner.classifier()[0] and by_name.target_layer is inner.classifier()[1]
    with pytest.raises(UnknownNameError, match="no-such-classifier"):
        make("gradcam", classifier="no-such-classifier")
    with pytest.raises(ValueError, match="not a trainable method"):
        wsl_bench.create_method("gradcam", classifier="intensity", image_size=SIZE)


def test_target_layer_option_by_name_and_bad_name():
    default = make("gradcam").predict(conformance_images(1, SIZE))
    earlier = make("gradcam", target_layer="backbone.layer_list.3").predict(conformance_images(1, SIZE))
    # at 128 rows the derived strides leave the ResNet-22 an output stride of 4 (its last two stages' 2 × 2)
    assert default.maps.shape[-2:] == (SIZE[0] // 4, SIZE[1] // 4)
    assert earlier.maps.shape[-2:] == (SIZE[0] // 2, SIZE[1] // 2)  # stage 4 runs before the last stride
    with pytest.raises(ValueError, match="not a submodule.*layer_list"):
        make("gradcam", target_layer="backbone.layer_list.9")


def test_an_explainer_is_built_from_a_classifier_it_holds_not_a_method_it_trains():
    cam = wsl_bench.create_method("cam", image_size=SIZE, config=TINY)
    classifier = ExplainedClassifier.of(cam)
    assert classifier.module is cam.classifier()[0] and classifier.name == "cam" and classifier.checksums == {}
    explainer = wsl_bench.create_method("gradcam", classifier=classifier, image_size=SIZE)
    assert isinstance(explainer, wsl_bench.SaliencyMethod) and not isinstance(explainer, wsl_bench.TrainableMethod)
    assert not explainer.trainable and explainer.model is classifier.module
    assert explainer.modules() == {"classifier": classifier.module}
    assert explainer.num_parameters() == cam.num_parameters()
    # weights loaded into the classifier's method later are the ones explained (the run trains it after building)
    images = conformance_images(1, SIZE)
    before = explainer.predict(images).maps
    randomise_statistics(cam.classifier()[0])
    assert not torch.allclose(explainer.predict(images).maps, before)
    with pytest.raises(TypeError, match="ExplainedClassifier"):
        type(explainer)(classifier="cam", image_size=SIZE)


def test_options_divide_between_the_explainer_and_its_classifier_method():
    explainer, classifier = make_with_classifier("integrated_gradients", n_steps=3, memory_budget_mb=64)
    assert explainer.n_steps == 3 and explainer.memory_budget_mb == 64
    assert classifier.config_dict() == wsl_bench.create_method("cam", image_size=SIZE, config=TINY).config_dict()
    with pytest.raises(TypeError, match="no_such_option"):
        make("gradcam", no_such_option=1)  # neither the explainer's nor the classifier's


# -- the contract -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", EXPLAINERS)
def test_explainer_conforms_and_leaves_no_graph_hooks_or_gradients(name):
    check_method(name, image_size=SIZE, config=TINY, **FAST_OPTIONS.get(name, {}))

    explainer = make(name)
    model = explainer.model
    outputs: list[weakref.ref] = []  # every classifier output: a surviving one would keep its graph alive
    probe = model.register_forward_hook(lambda _m, _i, out: outputs.append(weakref.ref(out)))
    try:
        output = explainer.predict(conformance_images(1, SIZE))
    finally:
        probe.remove()
    gc.collect()
    assert outputs and all(ref() is None for ref in outputs), "a classifier output (and its graph) survived predict"
    assert not output.maps.requires_grad and not output.scores.requires_grad
    assert all(p.grad is None for p in model.parameters()), "an explainer accumulated parameter gradients"
    assert all(p.requires_grad for p in model.parameters()), "parameter flags were not restored"
    for module in model.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks and not module._backward_hooks, (
            f"a hook was left on {type(module).__name__}"
        )


@pytest.mark.slow
def test_no_tensor_with_a_graph_survives_any_explainer():
    explainers = [make(name) for name in EXPLAINERS]
    images = conformance_images(1, SIZE)
    explainers[0].predict(images)  # first use: lazy imports and caches
    before = graph_tensors()
    for explainer in explainers:
        explainer.predict(images)
    after = graph_tensors()
    assert after <= before, f"{after - before} tensors with an autograd graph survived predict"


def test_explainers_work_inside_no_grad_and_inference_mode():
    images = conformance_images(1, SIZE)
    explainer = make("gradcam")
    reference = explainer.predict(images).maps
    with torch.no_grad():
        assert torch.allclose(explainer.predict(images).maps, reference)
    with torch.inference_mode():
        assert torch.allclose(explainer.predict(images).maps, reference)


# -- identities and cross-checks -------------------------------------------------------------------------------
def test_cam_equals_gradcam_times_map_area():
    """For GAP + linear head: ∂y_c/∂F_k(i,j) = W_ck/(h·w), so Grad-CAM (before ReLU) = CAM/(h·w), where
    CAM = Σ_k W_ck F_k (the cam method's maps, without the bias). HiResCAM and XGrad-CAM reduce to the same."""
    cam = wsl_bench.create_method("cam", image_size=SIZE, config=TINY)
    randomise_statistics(cam.network())
    images = conformance_images(2, SIZE)
    cam_maps = cam.predict(images).maps
    h, w = cam_maps.shape[-2:]
    for name in ("gradcam", "hirescam", "xgradcam"):
        explainer = make(name)
        explainer.model.load_state_dict(cam.network().state_dict())
        out = explainer.predict(images)
        assert out.maps.shape == cam_maps.shape
        assert relative_error(out.maps * (h * w), cam_maps) < 1e-5, name
        assert torch.allclose(out.scores, cam.predict(images).scores)


def test_captum_layergradcam_agrees_with_pytorch_grad_cam():
    from captum.attr import LayerAttribution, LayerGradCam
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    torch.manual_seed(0)
    cam = wsl_bench.create_method("cam", image_size=SIZE, config=TINY)
    model = cam.network().eval()
    randomise_statistics(model)
    layer = model.target_layer
    images = conformance_images(3, SIZE)
    with torch.no_grad():
        # Project each class's head weights off the mean feature vector, so every class map has zero
        # mean over these images: positive and negative cells, and the ReLU of Grad-CAM has work to do
        # (with few channels a random head can make one class's map negative everywhere: all-zero maps).
        mean = model.features(images).mean(dim=(0, 2, 3))
        model.head.weight -= (model.head.weight @ mean)[:, None] * mean / mean.dot(mean)
    for c in range(2):
        # captum's ReLU'd Grad-CAM, upsampled bilinearly, with the library's scaling of each image to
        # [0, 1] (x − min) / (1e-7 + max) before and after the resize (the 1e-7 is not negligible for raw maps)
        attr = LayerGradCam(model, layer).attribute(images, target=c, relu_attributions=True).detach()
        up = LayerAttribution.interpolate(scale(attr), SIZE, interpolate_mode="bilinear")
        ours = scale(up)[:, 0]
        with GradCAM(model, [layer]) as library:
            theirs = library(images, targets=[ClassifierOutputTarget(c) for _ in range(3)])
        assert ours.abs().max() > 0
        assert np.abs(ours.detach().numpy() - theirs).max() < 1e-5, c
    model.zero_grad(set_to_none=True)

    # and the two registered explainers agree on the raw maps
    a, b = make("captum_gradcam"), make("gradcam")
    for explainer in (a, b):
        explainer.model.load_state_dict(model.state_dict())
    maps_a, maps_b = a.predict(images).maps, b.predict(images).maps
    assert relative_error(maps_a, maps_b) < 1e-5


def test_scorecam_and_ablationcam_weights_match_the_library():
    """The chunked all-classes implementations give the library's own get_cam_weights."""
    from pytorch_grad_cam import AblationCAM, ScoreCAM

    from wsl_bench.methods.gradcam import layer_activations_and_gradients

    images = conformance_images(2, SIZE)
    for name, library_class in (("scorecam", ScoreCAM), ("ablationcam", AblationCAM)):
        explainer = make(name, memory_budget_mb=16)  # small chunks: about two masked images each
        randomise_statistics(explainer.model)
        model, layer = explainer.model.eval(), explainer.target_layer
        with torch.no_grad():
            logits, activations, _ = layer_activations_and_gradients(model, layer, images, with_gradients=False)
        ours = explainer.make_library_cam()
        explainer.prepare(ours, images, activations, logits, explainer.memory_budget_bytes(),
                          explainer.forward_profile(images.shape))
        with library_class(model, [layer]) as library:
            library.batch_size = 5
            for c in range(2):
                targets = class_targets(c, 2)
                expected = library.get_cam_weights(images, layer, targets, activations.numpy(), None)
                got = ours.get_cam_weights(images, layer, targets, activations.numpy(), None)
                assert np.allclose(got, expected, rtol=1e-4, atol=1e-6), (name, c)


def test_eigencam_is_the_library_projection_with_a_thin_svd():
    from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection

    from wsl_bench.methods.gradcam import first_component_projection

    activations = torch.relu(torch.randn(2, 16, 8, 5, generator=torch.Generator().manual_seed(0))).numpy()
    ours, theirs = first_component_projection(activations), get_2d_projection(activations)
    for a, b in zip(ours, theirs, strict=True):
        assert min(np.abs(a - b).max(), np.abs(a + b).max()) < 1e-4  # equal up to the SVD's arbitrary sign


def test_fullgrad_matches_the_library_up_to_its_final_scaling():
    from pytorch_grad_cam import FullGrad
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    explainer = make("fullgrad")
    randomise_statistics(explainer.model)
    images = conformance_images(2, SIZE)
    maps = explainer.predict(images).maps
    assert maps.shape[-2:] == SIZE
    for c in range(2):
        library = FullGrad(explainer.model, [])
        theirs = library(images, targets=[ClassifierOutputTarget(c) for _ in range(2)])
        library.activations_and_grads.release()
        ours = scale(maps[:, c : c + 1])[:, 0].numpy()
        assert np.abs(ours - theirs).max() < 1e-4, c
    explainer.model.zero_grad(set_to_none=True)


def test_integrated_gradients_is_input_times_gradient_for_a_homogeneous_network():
    """Without biases (batch norm at its initial statistics), the cam classifier is positively homogeneous
    up to the head bias, so its gradient is constant along the path from 0: IG = input × gradient."""
    images = conformance_images(1, SIZE)
    ig = make("integrated_gradients").predict(images).maps
    ixg = make("input_x_gradient").predict(images).maps
    assert relative_error(ig, ixg) < 1e-4
    # and the completeness axiom: attributions sum to logit(x) − logit(0)
    explainer = make("integrated_gradients", n_steps=16)
    randomise_statistics(explainer.model)
    out = explainer.predict(images)
    with torch.no_grad():
        difference = explainer.model(images) - explainer.model(torch.zeros_like(images))
    assert torch.allclose(out.maps.sum(dim=(2, 3)), difference, rtol=0.05, atol=1e-3)


# -- targets ------------------------------------------------------------------------------------------------------
def test_short_target_list_is_refused_and_every_image_gets_its_map():
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    explainer = make("gradcam")
    images = conformance_images(3, SIZE)
    # The hazard: the library zips targets with images, so one target for three images leaves two empty maps.
    with GradCAM(explainer.model, [explainer.target_layer]) as library:
        short = library(images, targets=[ClassifierOutputTarget(1)])
    assert short[0].max() > 0 and np.all(short[1:] == 0)
    explainer.model.zero_grad(set_to_none=True)

    with pytest.raises(ValueError, match="1 targets for a batch of 3"):
        check_targets([ClassifierOutputTarget(1)], 3)
    assert len(class_targets(1, 3)) == 3
    batch = explainer.predict(images).maps
    for n in range(3):
        single = explainer.predict(images[n : n + 1]).maps
        assert batch[n].abs().amax(dim=(1, 2)).min() > 0, f"image {n} got an all-zero map"
        assert relative_error(batch[n : n + 1], single) < 1e-5

    scorecam = make("scorecam")
    library_cam = scorecam.make_library_cam()
    library_cam.scores = torch.zeros(3, 16, 2)
    with pytest.raises(ValueError, match="targets for a batch of 3"):
        library_cam.get_cam_weights(images, scorecam.target_layer, class_targets(0, 2), None, None)


# -- memory budget and chunking -------------------------------------------------------------------------------------
def _batch_sizes_seen(explainer: PosthocExplainer, images: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
    sizes: list[int] = []
    handle = explainer.model.register_forward_pre_hook(lambda _m, args: sizes.append(args[0].shape[0]))
    try:
        maps = explainer.predict(images).maps
    finally:
        handle.remove()
    return maps, sizes


@pytest.mark.parametrize("name", ["scorecam", "ablationcam", "integrated_gradients", "occlusion"])
def test_chunked_explainer_equals_unchunked(name):
    images = conformance_images(1, SIZE)
    # occlusion: windows of a quarter of the image, so the logit differences it maps stand well above
    # float32 rounding of the logits (smaller windows of an untrained classifier move them by 1e-4)
    options = {"integrated_gradients": {"n_steps": 6}, "occlusion": {"window": (64, 40), "stride": (32, 20)}}.get(
        name, {}
    )
    probe = make(name, **options)
    profile = probe.forward_profile(images.shape)
    tight_mb = probe.bytes_per_image(profile) / 2**20  # exactly one internal item fits
    chunked, chunked_sizes = _batch_sizes_seen(make(name, memory_budget_mb=tight_mb, **options), images)
    whole, whole_sizes = _batch_sizes_seen(make(name, memory_budget_mb=1e5, **options), images)
    assert max(chunked_sizes) == 1 and max(whole_sizes) > 1, (chunked_sizes, whole_sizes)
    assert len(chunked_sizes) > len(whole_sizes)
    assert relative_error(chunked, whole) < 1e-5


def test_fit_chunk():
    assert fit_chunk(100, 30, 10, "x") == 3
    assert fit_chunk(100, 30, 2, "x") == 2
    assert fit_chunk(100, 30, 10, "x", fixed_bytes=40) == 2
    with pytest.raises(ExplainerOutOfMemory, match="x needs about"):
        fit_chunk(100, 70, 10, "x", fixed_bytes=40)


def test_batch_is_split_into_images_that_fit():
    explainer = make("gradcam")
    images = conformance_images(3, SIZE)
    one_image_mb = explainer.bytes_per_image(explainer.forward_profile(images.shape)) / 2**20
    tight = make("gradcam", memory_budget_mb=one_image_mb * 1.5)
    maps, sizes = _batch_sizes_seen(tight, images)
    assert sizes == [1, 1, 1]
    assert relative_error(maps, explainer.predict(images).maps) < 1e-5


@pytest.mark.parametrize("name", ["gradcam", "scorecam", "integrated_gradients", "occlusion", "fullgrad"])
def test_impossible_budget_raises_out_of_memory_with_the_size_needed(name):
    explainer = make(name, memory_budget_mb=0.001)
    with pytest.raises(ExplainerOutOfMemory) as info:
        explainer.predict(conformance_images(1, SIZE))
    assert isinstance(info.value, MemoryError)
    assert info.value.needed_bytes > info.value.budget_bytes == int(0.001 * 2**20)
    assert "needs about" in str(info.value) and "memory_budget_mb" in str(info.value)


def test_default_budget_on_cpu():
    from wsl_bench.methods.explainers import CPU_DEFAULT_BUDGET_BYTES

    assert make("gradcam").memory_budget_bytes() == CPU_DEFAULT_BUDGET_BYTES
    assert make("gradcam", memory_budget_mb=10).memory_budget_bytes() == 10 * 2**20
    with pytest.raises(ValueError, match="memory_budget_mb"):
        make("gradcam", memory_budget_mb=0)


def test_forward_profile_counts_the_forward_allocations():
    explainer = make("gradcam")
    small = explainer.forward_profile((1, 64, 48))
    large = explainer.forward_profile((1, 128, 96))
    # the classifier's strides were derived for 128×80 (output stride 4, no stem downsampling)
    assert small.input_bytes == 64 * 48 * 4 and small.layer_shape == (16, 16, 12)
    assert small.layer_bytes == 16 * 16 * 12 * 4
    # every convolution output is allocated once: at least the stem's output, 1 channel at full resolution,
    # and the first stage's two blocks (2 channels, four convolutions)
    assert small.forward_bytes > (1 + 4 * 2) * 64 * 48 * 4
    assert 3.5 < large.forward_bytes / small.forward_bytes < 4.5  # scales with the pixel count


# -- through the harness -------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_harness_trains_the_classifier_once_and_records_out_of_memory(toy_dataset, tmp_path, monkeypatch):
    """cam, gradcam and gradcam++@cam share one training of the cam classifier; an explainer whose budget
    cannot fit one image is recorded as "oom" with the size it needed, and the methods after it still run."""
    import wsl_bench.training.cache as trained

    trainees = []

    class CountingTrainer(trained.Trainer):
        def __init__(self, method, *args, **kwargs):
            trainees.append(type(method).__name__)
            super().__init__(method, *args, **kwargs)

    monkeypatch.setattr(trained, "Trainer", CountingTrainer)
    monkeypatch.setattr(toy_dataset, "counts", {"train": 12, "val": 4, "test": 3})
    out = tmp_path / "run"
    methods = ("layercam", "gradcam", "cam", "gradcam++@cam")
    config = RunConfig(methods=methods, dataset="toy", preset="tiny",
                       method_options=(("layercam", (("memory_budget_mb", 0.001),)),))
    summary = run(config, out, progress=False, write_report=False)
    assert trainees == ["CAM"], "the classifier must be trained once, as itself"
    manifest = json.loads((out / "manifest.json").read_text())
    assert len({manifest["checkpoints"][m]["sha256"] for m in methods}) == 1
    records = read_records(out / "records.jsonl")
    oom = [r for r in records if r["method"] == "layercam"]
    assert oom and all(r["status"] == "oom" for r in oom)
    assert all("needs about" in r["error"] and "MiB" in r["error"] for r in oom)
    assert summary.statuses["layercam"]["oom"] == len(oom)
    assert {r["status"] for r in records if r["method"] != "layercam"} == {"ok"}
    assert {r["method"] for r in records} == set(methods)


def test_scores_are_the_sigmoid_of_the_classifier_logits():
    images = conformance_images(2, SIZE)
    for name in ("gradcam", "occlusion", "integrated_gradients"):  # own forward, captum's tapped, an extra one
        explainer = make(name)
        with torch.no_grad():
            expected = torch.sigmoid(explainer.model(images))
        assert torch.allclose(explainer.predict(images).scores, expected, atol=1e-6), name


def test_maps_are_raw_not_rectified_or_normalised():
    images = conformance_images(2, SIZE)
    for name in ("gradcam", "input_x_gradient", "captum_gradcam"):
        maps = make(name).predict(images).maps
        assert maps.min() < 0 < maps.max(), name  # signed: no ReLU
        assert maps.abs().max() < 0.5, name  # not min-max scaled to [0, 1]
