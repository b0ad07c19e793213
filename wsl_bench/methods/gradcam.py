"""The Grad-CAM family from pytorch-grad-cam (``grad-cam`` on PyPI), applied to any classifier.

Registered: ``gradcam``, ``gradcam++``, ``xgradcam``, ``hirescam``, ``layercam``, ``eigencam``,
``scorecam``, ``ablationcam``, ``fullgrad`` (card: ``methods/gradcam-family.md``).

The library's per-method mathematics is used as published in the library: the channel weights
(``get_cam_weights``) and weighted sums (``get_cam_image``) of its classes. What the library does
around them is replaced, for three reasons:

- its ``forward`` calls ``loss.backward(retain_graph=True)`` and keeps the outputs, which
  accumulates parameter gradients and keeps the graph alive; here one forward pass feeds one
  ``torch.autograd.grad`` per class, the last one freeing the graph;
- it rectifies, min–max normalises and resizes every map to the input size
  (``scale_cam_image``); here maps are returned raw at the target layer's resolution and the
  harness normalises them like every other method's;
- ScoreCAM, AblationCAM and FullGrad materialise every channel at input resolution at once (about
  6 GB for 256 channels at 2944×1920) and repeat their forward passes once per class; here the
  masked or ablated forward passes are chunked to the memory budget and give the logits of every
  class at once, with the library's formulas for the weights (tests compare both).

The target of class c is the logit of class c for every image (one target per image, checked:
the library pairs targets with images by ``zip`` and leaves surplus images with all-zero maps).
"""

from __future__ import annotations

import functools
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from wsl_bench.methods.explainers import (
    ForwardProfile,
    PosthocExplainer,
    capture_outputs,
    check_targets,
    class_targets,
    fit_chunk,
)
from wsl_bench.registry import METHODS
from wsl_bench.saliency import CLASSES


def _numpy(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().float().cpu().numpy()


def layer_activations_and_gradients(
    model: nn.Module, layer: nn.Module, images: torch.Tensor, with_gradients: bool = True
) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """One forward pass, and one gradient of each class logit with respect to ``layer``'s output.

    Args:
        model: ``N×1×H×W → N×C`` logits, parameters frozen (see ``explainers.explaining``).
        layer: the target layer (its output ``N×K×h×w``).
        images: ``N×1×H×W``.
        with_gradients: ``False`` skips the backward passes (gradient-free methods).

    Returns:
        ``(logits N×C, activations N×K×h×w, [gradients N×K×h×w per class])``, all detached. The
        logit of class c is summed over the batch before differentiating: images do not interact
        in evaluation mode, so each image receives the gradient of its own logit.
    """
    images = images.detach().requires_grad_(with_gradients)
    with capture_outputs([layer], clone=with_gradients) as outputs:
        # a view enters the model, not the leaf: torch's FlopCounterMode cannot handle a leaf module input
        logits = model(images.view_as(images))
    activations = outputs[0]
    gradients: list[torch.Tensor] = []
    if with_gradients:
        for c in range(logits.shape[1]):
            (grad,) = torch.autograd.grad(logits[:, c].sum(), activations, retain_graph=c < logits.shape[1] - 1)
            gradients.append(grad.detach())
    return logits.detach(), activations.detach(), gradients


def _library_cam(cls: type, model: nn.Module, layers: list[nn.Module], **attributes: Any) -> Any:
    """An instance of a pytorch-grad-cam class used only for its formulas: the activation hooks its
    constructor installs are removed at once (activations are recorded by this module instead)."""
    cam = cls(model, layers)
    cam.activations_and_grads.release()
    for key, value in attributes.items():
        setattr(cam, key, value)
    return cam


class GradCamFamilyExplainer(PosthocExplainer):
    """A layer-based pytorch-grad-cam method: a map at the target layer's resolution per class."""

    library_class: ClassVar[str] = ""
    """Name of the pytorch-grad-cam class whose ``get_cam_image`` gives the map."""
    uses_gradients: ClassVar[bool] = True

    def make_library_cam(self) -> Any:
        import pytorch_grad_cam

        return _library_cam(getattr(pytorch_grad_cam, self.library_class), self.model, [self.target_layer])

    def bytes_per_image(self, profile: ForwardProfile) -> int:
        if self.uses_gradients:
            return profile.gradient_bytes + len(CLASSES) * profile.layer_bytes
        return profile.forward_bytes + profile.input_bytes

    def explain(self, images: torch.Tensor, budget_bytes: int, profile: ForwardProfile):
        cam = self.make_library_cam()
        logits, activations, gradients = layer_activations_and_gradients(
            self.model, self.target_layer, images, with_gradients=self.uses_gradients
        )
        if activations.ndim != 4:
            raise ValueError(
                f"{self.name}: the target layer {self.target_layer_name!r} gives shape {tuple(activations.shape)}; "
                "Grad-CAM-style explainers need an N×K×h×w feature map"
            )
        self.prepare(cam, images, activations, logits, budget_bytes, profile)
        acts = _numpy(activations)
        maps = []
        for c in range(len(CLASSES)):
            grads = _numpy(gradients[c]) if self.uses_gradients else None
            raw = cam.get_cam_image(images, self.target_layer, class_targets(c, images.shape[0]), acts, grads, False)
            maps.append(torch.from_numpy(np.ascontiguousarray(raw, dtype=np.float32)))
        return torch.stack(maps, dim=1), logits

    def prepare(
        self, cam: Any, images: torch.Tensor, activations: torch.Tensor, logits: torch.Tensor, budget_bytes: int,
        profile: ForwardProfile,
    ) -> None:
        """Hook for methods that need work shared by all classes before the per-class maps."""


@METHODS.register("gradcam")
class GradCam(GradCamFamilyExplainer):
    """Grad-CAM: channels weighted by their spatially averaged gradient."""

    description: ClassVar[str] = "Grad-CAM (Selvaraju et al. 2017), pytorch-grad-cam, on a chosen classifier"
    library_class: ClassVar[str] = "GradCAM"


@METHODS.register("gradcam++")
class GradCamPlusPlus(GradCamFamilyExplainer):
    """Grad-CAM++: channel weights from positive gradients with higher-order pixel weights."""

    description: ClassVar[str] = "Grad-CAM++ (Chattopadhay et al. 2018), pytorch-grad-cam, on a chosen classifier"
    library_class: ClassVar[str] = "GradCAMPlusPlus"


@METHODS.register("xgradcam")
class XGradCam(GradCamFamilyExplainer):
    """XGrad-CAM: channel weights Σ grad·A / Σ A."""

    description: ClassVar[str] = "XGrad-CAM (Fu et al. 2020), pytorch-grad-cam, on a chosen classifier"
    library_class: ClassVar[str] = "XGradCAM"


@METHODS.register("hirescam")
class HiResCam(GradCamFamilyExplainer):
    """HiResCAM: element-wise gradient × activation summed over channels."""

    description: ClassVar[str] = "HiResCAM (Draelos & Carin 2020), pytorch-grad-cam, on a chosen classifier"
    library_class: ClassVar[str] = "HiResCAM"


@METHODS.register("layercam")
class LayerCam(GradCamFamilyExplainer):
    """LayerCAM: element-wise positive gradient × activation summed over channels."""

    description: ClassVar[str] = "LayerCAM (Jiang et al. 2021), pytorch-grad-cam, on a chosen classifier"
    library_class: ClassVar[str] = "LayerCAM"


def first_component_projection(activations: np.ndarray) -> np.ndarray:
    """EigenCAM's map: each image's activations projected on their first principal component.

    The same computation as pytorch-grad-cam's ``get_2d_projection`` (NaN set to 0, channels
    centred over pixels, projection on the first right-singular vector) with the thin SVD: the
    library's ``full_matrices=True`` builds an (h·w)×(h·w) matrix, 2 GB for a 184×120 map.

    Args:
        activations: ``N×K×h×w``.

    Returns:
        ``N×h×w`` float32; the sign of each map is the SVD's (arbitrary, as in the library).
    """
    projections = []
    for image in np.nan_to_num(activations, nan=0.0):
        flat = image.reshape(image.shape[0], -1).T
        flat = flat - flat.mean(axis=0)
        _, _, vt = np.linalg.svd(flat, full_matrices=False)
        projections.append((flat @ vt[0]).reshape(image.shape[1:]))
    return np.float32(projections)


@METHODS.register("eigencam")
class EigenCam(GradCamFamilyExplainer):
    """EigenCAM: first principal component of the target layer's activations (class-agnostic)."""

    description: ClassVar[str] = "EigenCAM (Muhammad & Yeasin 2020), pytorch-grad-cam, class-agnostic, on a classifier"
    library_class: ClassVar[str] = "EigenCAM"
    uses_gradients: ClassVar[bool] = False

    def explain(self, images: torch.Tensor, budget_bytes: int, profile: ForwardProfile):
        logits, activations, _ = layer_activations_and_gradients(
            self.model, self.target_layer, images, with_gradients=False
        )
        projection = torch.from_numpy(first_component_projection(_numpy(activations)))
        # The map does not depend on the class: the same map is returned for every class.
        return projection[:, None].expand(-1, len(CLASSES), -1, -1).contiguous(), logits


class _ChunkedScoresMixin:
    """For ScoreCAM and AblationCAM: the library's ``get_cam_weights`` repeats its perturbed
    forward passes once per target; here they run once, in budget-sized chunks, giving the logits
    of every class (``scores``: ``N×K×C``), and ``get_cam_weights`` reads the target's column."""

    scores: torch.Tensor

    def target_scores(self, targets: list[Any]) -> torch.Tensor:
        """``N×K``: each image's target applied to its ``K×C`` perturbed logits."""
        check_targets(targets, self.scores.shape[0])
        return torch.stack([target(self.scores[n]) for n, target in enumerate(targets)])


@functools.cache
def _score_cam_class() -> type:
    from pytorch_grad_cam import ScoreCAM

    class ChunkedScoreCAM(_ChunkedScoresMixin, ScoreCAM):
        """pytorch-grad-cam's ScoreCAM with weights from :meth:`ScoreCamExplainer.masked_scores`."""

        def get_cam_weights(self, input_tensor, target_layer, targets, activations, grads):
            # Library: softmax over channels of the target's score of each masked input.
            return torch.softmax(self.target_scores(targets), dim=-1).numpy()

    return ChunkedScoreCAM


@METHODS.register("scorecam")
class ScoreCamExplainer(GradCamFamilyExplainer):
    """Score-CAM: channel weights from the scores of the input masked by each upsampled channel."""

    description: ClassVar[str] = "Score-CAM (Wang et al. 2020), pytorch-grad-cam, chunked to a memory budget"
    uses_gradients: ClassVar[bool] = False
    max_images_per_call: ClassVar[int | None] = 1

    def make_library_cam(self) -> Any:
        return _library_cam(_score_cam_class(), self.model, [self.target_layer])

    def bytes_per_image(self, profile: ForwardProfile) -> int:
        return profile.forward_bytes + profile.input_bytes + self.bytes_per_masked_input(profile)

    @staticmethod
    def bytes_per_masked_input(profile: ForwardProfile) -> int:
        # the upsampled channel, the masked image and the forward pass over it
        pixels = profile.input_shape[1] * profile.input_shape[2]
        return 4 * pixels + profile.input_bytes + profile.forward_bytes

    def masked_scores(
        self, images: torch.Tensor, activations: torch.Tensor, budget_bytes: int, profile: ForwardProfile
    ) -> torch.Tensor:
        """``N×K×C`` logits of each image masked by each of its ``K`` normalised upsampled channels.

        As in the library: bilinear upsampling with aligned corners, each upsampled channel scaled
        to [0, 1] by its min and max (+1e-8), the image multiplied by it.
        """
        n_images, n_channels = activations.shape[:2]
        chunk = fit_chunk(
            budget_bytes, self.bytes_per_masked_input(profile), n_channels,
            f"{self.name}: one masked forward pass at {profile.size_text}",
        )
        size = images.shape[-2:]
        scores = torch.empty(n_images, n_channels, len(CLASSES))
        with torch.no_grad():
            for n in range(n_images):
                for start in range(0, n_channels, chunk):
                    up = F.interpolate(activations[n : n + 1, start : start + chunk], size=size, mode="bilinear",
                                       align_corners=True)[0]
                    flat = up.flatten(1)
                    low, high = flat.min(dim=1).values, flat.max(dim=1).values
                    up = (up - low[:, None, None]) / (high - low + 1e-8)[:, None, None]
                    masked = images[n : n + 1] * up[:, None]
                    scores[n, start : start + chunk] = self.model(masked).float().cpu()
                    del up, masked
        return scores

    def prepare(self, cam, images, activations, logits, budget_bytes, profile) -> None:
        cam.scores = self.masked_scores(images, activations, budget_bytes, profile)


@functools.cache
def _ablation_cam_class() -> type:
    from pytorch_grad_cam import AblationCAM

    class ChunkedAblationCAM(_ChunkedScoresMixin, AblationCAM):
        """pytorch-grad-cam's AblationCAM with scores from :meth:`AblationCamExplainer.ablated_scores`."""

        original: torch.Tensor

        def get_cam_weights(self, input_tensor, target_layer, targets, activations, grads):
            # Library: (original score − score with channel k ablated) / original score.
            check_targets(targets, self.original.shape[0])
            original = torch.stack([target(self.original[n]) for n, target in enumerate(targets)])
            ablated = self.target_scores(targets)
            return ((original[:, None] - ablated) / original[:, None]).float().numpy()

    return ChunkedAblationCAM


@METHODS.register("ablationcam")
class AblationCamExplainer(GradCamFamilyExplainer):
    """Ablation-CAM: channel weights from the relative drop of the logit when a channel is ablated."""

    description: ClassVar[str] = "Ablation-CAM (Desai & Ramaswamy 2020), pytorch-grad-cam, chunked to a memory budget"
    uses_gradients: ClassVar[bool] = False
    max_images_per_call: ClassVar[int | None] = 1

    def make_library_cam(self) -> Any:
        return _library_cam(_ablation_cam_class(), self.model, [self.target_layer])

    def bytes_per_image(self, profile: ForwardProfile) -> int:
        return profile.forward_bytes + profile.input_bytes + self.bytes_per_ablated_copy(profile)

    @staticmethod
    def bytes_per_ablated_copy(profile: ForwardProfile) -> int:
        # a copy of the image, its ablated layer output and its forward pass
        return profile.input_bytes + profile.layer_bytes + profile.forward_bytes

    def ablated_scores(
        self, images: torch.Tensor, activations: torch.Tensor, budget_bytes: int, profile: ForwardProfile
    ) -> torch.Tensor:
        """``N×K×C`` logits with channel k of the target layer's output replaced by the ablation value.

        As in the library: the value is 0 when the image's activations have minimum 0 (after a
        ReLU), else that minimum − 1e7 (computed once per image; the library lets it drift by −1e7
        per position in a chunk, which changes nothing after a ReLU). The network runs on copies of
        the image with the target layer's output replaced, so layers after the target see exactly
        the ablated activations.
        """
        n_images, n_channels = activations.shape[:2]
        chunk = fit_chunk(
            budget_bytes, self.bytes_per_ablated_copy(profile), n_channels,
            f"{self.name}: one ablated forward pass at {profile.size_text}",
        )
        scores = torch.empty(n_images, n_channels, len(CLASSES))
        replacement: list[torch.Tensor] = []

        def replace_output(_module: nn.Module, _inputs: Any, output: torch.Tensor) -> torch.Tensor:
            return replacement[0].to(dtype=output.dtype)

        with torch.no_grad():
            for n in range(n_images):
                low = activations[n].min()
                value = 0.0 if low == 0 else float(low) - 1e7
                for start in range(0, n_channels, chunk):
                    k = min(chunk, n_channels - start)
                    ablated = activations[n : n + 1].repeat(k, 1, 1, 1)
                    ablated[torch.arange(k), torch.arange(start, start + k)] = value
                    replacement[:] = [ablated]
                    handle = self.target_layer.register_forward_hook(replace_output)
                    try:
                        scores[n, start : start + k] = self.model(images[n : n + 1].expand(k, -1, -1, -1)).float().cpu()
                    finally:
                        handle.remove()
                    replacement.clear()
        return scores

    def prepare(self, cam, images, activations, logits, budget_bytes, profile) -> None:
        cam.scores = self.ablated_scores(images, activations, budget_bytes, profile)
        cam.original = logits.float().cpu()


def fullgrad_bias_layers(model: nn.Module) -> tuple[list[nn.Module], list[torch.Tensor]]:
    """FullGrad's layers and their biases, found by pytorch-grad-cam's ``FullGrad``: every
    ``Conv2d`` and ``BatchNorm2d`` with a bias (a batch norm's effective bias
    β − μ·γ/√(σ²+ε) from its running statistics)."""
    from pytorch_grad_cam import FullGrad

    cam = _library_cam(FullGrad, model, [])
    return list(cam.target_layers), [torch.as_tensor(b) for b in cam.bias_data]


def _scale_each(maps: torch.Tensor) -> torch.Tensor:
    """``N×K×h×w`` maps each shifted to minimum 0 and divided by (1e-7 + their maximum), as
    pytorch-grad-cam's ``scale_cam_image`` (FullGrad's post-processing ψ before the resize)."""
    flat = maps.flatten(2)
    flat = flat - flat.min(dim=2, keepdim=True).values
    flat = flat / (1e-7 + flat.max(dim=2, keepdim=True).values)
    return flat.view_as(maps)


@METHODS.register("fullgrad")
class FullGradExplainer(PosthocExplainer):
    """FullGrad: |input × input-gradient| plus |bias × bias-gradient| of every biased layer, each
    rectified, scaled per channel to [0, 1] and upsampled, summed at the input's resolution."""

    description: ClassVar[str] = "FullGrad (Srinivas & Fleuret 2019), pytorch-grad-cam's layers and ψ, input resolution"

    def bytes_per_image(self, profile: ForwardProfile) -> int:
        # the recorded (cloned) layer outputs and their gradients on top of the pass itself,
        # plus the full-resolution accumulator and one upsampled layer map per class
        pixels = profile.input_shape[1] * profile.input_shape[2]
        return profile.gradient_bytes + profile.forward_bytes + 4 * pixels * (2 + len(CLASSES))

    def explain(self, images: torch.Tensor, budget_bytes: int, profile: ForwardProfile):
        layers, biases = fullgrad_bias_layers(self.model)
        size = images.shape[-2:]
        x = images.detach().requires_grad_(True)
        with capture_outputs(layers, clone=True, allow_unused=True) as outputs:
            logits = self.model(x.view_as(x))  # see layer_activations_and_gradients
        # layers the forward pass did not run (unused branches) contribute nothing
        used = [(bias, out) for bias, out in zip(biases, outputs, strict=True) if out is not None]
        biases, outputs = [b for b, _ in used], [o for _, o in used]
        maps = []
        for c in range(logits.shape[1]):
            grads = torch.autograd.grad(logits[:, c].sum(), [x, *outputs], retain_graph=c < logits.shape[1] - 1)
            with torch.no_grad():
                total = _scale_each((grads[0] * x).abs()).sum(dim=1)
                for bias, grad in zip(biases, grads[1:], strict=True):
                    layer_map = _scale_each((bias.to(grad)[None, :, None, None] * grad).abs()).sum(dim=1, keepdim=True)
                    # The library resizes every channel and then sums; bilinear resizing is linear,
                    # so summing first gives the same map with one full-resolution channel per layer.
                    total += F.interpolate(layer_map, size=size, mode="bilinear", align_corners=False)[:, 0]
            maps.append(total)
            del grads
        return torch.stack(maps, dim=1), logits.detach()
