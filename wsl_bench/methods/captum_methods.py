"""Attribution methods from captum, applied to any classifier.

Registered: ``integrated_gradients``, ``occlusion``, ``captum_gradcam`` (LayerGradCam),
``guided_gradcam``, ``saliency``, ``input_x_gradient`` (card: ``methods/captum.md``).

Each attribution is computed per class with the class logit as target and returned raw: signed
where the method is signed, at the input's resolution except ``captum_gradcam`` (target layer's
resolution). Work is chunked to the memory budget with captum's own knobs:
IntegratedGradients' ``internal_batch_size`` (integration steps per pass) and Occlusion's
``perturbations_per_eval`` (windows per pass); the gradient methods explain as many images
together as fit.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, ClassVar

import torch
from torch import nn

from wsl_bench.methods.explainers import ForwardProfile, PosthocExplainer, fit_chunk
from wsl_bench.registry import METHODS
from wsl_bench.saliency import CLASSES


class LogitTap:
    """The classifier as a forward function for captum, keeping the logits of the explained images.

    Captum evaluates the unperturbed input at some point (gradient methods, Occlusion's reference
    pass); those logits are kept so the scores need no extra forward pass.
    """

    def __init__(self, model: nn.Module, images: torch.Tensor) -> None:
        self.model = model
        self.images = images
        self.logits: torch.Tensor | None = None

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        # A view, not the leaf itself, enters the model: torch's FlopCounterMode (the harness's FLOP
        # count) hooks module inputs and cannot run autograd.grad with a leaf among them.
        logits = self.model(inputs.view_as(inputs))
        if self.logits is None and inputs.shape == self.images.shape and torch.equal(inputs, self.images):
            self.logits = logits.detach()
        return logits


class ReplayForward(LogitTap):
    """A forward function that records its outputs on a first pass and replays them on the next.

    Occlusion evaluates the same perturbed inputs, in the same order, for every target; the logits
    of all classes come out of each forward pass, so the second class needs no forward pass at all.
    Each replayed input is checked against a fingerprint of the recorded one (its sum and a strided
    sample of its values); a mismatch runs the classifier instead, so replay can never change a result.
    """

    def __init__(self, model: nn.Module, images: torch.Tensor) -> None:
        super().__init__(model, images)
        self.recorded: list[tuple[tuple[Any, ...], torch.Tensor]] = []
        self.position = 0
        self.replaying = False
        self.forward_passes = 0

    @staticmethod
    def fingerprint(inputs: torch.Tensor) -> tuple[Any, ...]:
        flat = inputs.detach().reshape(-1)
        step = max(1, flat.numel() // 4096)
        return (tuple(inputs.shape), float(flat.sum(dtype=torch.float64)), flat[::step].clone())

    def replay(self) -> None:
        """Start replaying from the first recorded pass."""
        self.replaying, self.position = True, 0

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        key = self.fingerprint(inputs)
        if self.replaying and self.position < len(self.recorded):
            recorded_key, logits = self.recorded[self.position]
            self.position += 1
            if recorded_key[:2] == key[:2] and torch.equal(recorded_key[2], key[2]):
                return logits
        self.forward_passes += 1
        logits = super().__call__(inputs)
        if not self.replaying:
            self.recorded.append((key, logits.detach()))
        return logits


class CaptumExplainer(PosthocExplainer):
    """A captum attribution computed per class; subclasses implement :meth:`attribute`."""

    def explain(self, images: torch.Tensor, budget_bytes: int, profile: ForwardProfile):
        forward = self.make_forward(images)
        maps = []
        with warnings.catch_warnings():
            # captum warns on every call that it sets ReLU hooks / that inputs gain requires_grad
            warnings.filterwarnings("ignore", module="captum")
            for c in range(len(CLASSES)):
                attribution = self.attribute(forward, images, c, budget_bytes, profile)
                if attribution.ndim != 4 or attribution.shape[0] != images.shape[0]:
                    raise RuntimeError(f"{self.name}: captum returned attributions of shape {tuple(attribution.shape)}")
                # one map per class: the (single) channel dimension is summed, as captum's visualisers do
                maps.append(attribution.detach().sum(dim=1).float())
        logits = forward.logits if forward.logits is not None else self.classifier_logits(images, budget_bytes, profile)
        return torch.stack(maps, dim=1), logits

    def make_forward(self, images: torch.Tensor) -> LogitTap:
        return LogitTap(self.model, images)

    def attribute(
        self, forward: LogitTap, images: torch.Tensor, class_index: int, budget_bytes: int, profile: ForwardProfile
    ) -> torch.Tensor:
        """``n×C_in×h×w`` attribution of class ``class_index`` for the images."""
        raise NotImplementedError


@METHODS.register("saliency")
class SaliencyExplainer(CaptumExplainer):
    """Gradient magnitude |∂logit/∂x| (captum ``Saliency``; ``absolute=False`` keeps the sign)."""

    description: ClassVar[str] = "gradient saliency (Simonyan et al. 2014), captum, input resolution"

    def __init__(self, absolute: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.absolute = bool(absolute)

    def attribute(self, forward, images, class_index, budget_bytes, profile):
        from captum.attr import Saliency

        return Saliency(forward).attribute(images, target=class_index, abs=self.absolute)


@METHODS.register("input_x_gradient")
class InputXGradientExplainer(CaptumExplainer):
    """Input × gradient (captum ``InputXGradient``), signed."""

    description: ClassVar[str] = "input × gradient (Shrikumar et al. 2016), captum, signed, input resolution"

    def attribute(self, forward, images, class_index, budget_bytes, profile):
        from captum.attr import InputXGradient

        return InputXGradient(forward).attribute(images, target=class_index)


@METHODS.register("captum_gradcam")
class CaptumGradCamExplainer(CaptumExplainer):
    """Grad-CAM by captum's ``LayerGradCam``, before its optional ReLU, at the layer's resolution."""

    description: ClassVar[str] = "Grad-CAM by captum's LayerGradCam (no ReLU), target layer resolution"

    def bytes_per_image(self, profile: ForwardProfile) -> int:
        return profile.gradient_bytes + profile.forward_bytes  # captum clones the layer output

    def attribute(self, forward, images, class_index, budget_bytes, profile):
        from captum.attr import LayerGradCam

        return LayerGradCam(forward, self.target_layer).attribute(images, target=class_index, relu_attributions=False)


@METHODS.register("guided_gradcam")
class GuidedGradCamExplainer(CaptumExplainer):
    """Guided Grad-CAM (captum ``GuidedGradCam``): guided backpropagation × ReLU(Grad-CAM) upsampled
    to the input (nearest neighbour, captum's default). Guided backpropagation changes the backward
    pass of ``nn.ReLU`` modules only; ReLUs called as functions keep their plain gradient."""

    description: ClassVar[str] = "Guided Grad-CAM (Selvaraju et al. 2017), captum, input resolution"

    def bytes_per_image(self, profile: ForwardProfile) -> int:
        return profile.gradient_bytes + profile.forward_bytes

    def attribute(self, forward, images, class_index, budget_bytes, profile):
        from captum.attr import GuidedGradCam

        guided = GuidedGradCam(self.model, self.target_layer)  # the module itself: its ReLU modules get hooks
        # Both halves evaluate the classifier through the tap (logits kept, leaf-free module input).
        for part in (guided.grad_cam, guided.guided_backprop):
            if not hasattr(part, "forward_func"):
                raise RuntimeError(f"{self.name}: captum's {type(part).__name__} has no forward_func to route")
            part.forward_func = forward
        attribution = guided.attribute(images, target=class_index)
        if attribution.shape != images.shape:  # captum returns an empty tensor when upsampling fails
            raise RuntimeError(f"{self.name}: captum could not upsample Grad-CAM to the input ({attribution.shape})")
        return attribution


@METHODS.register("integrated_gradients")
class IntegratedGradientsExplainer(CaptumExplainer):
    """Integrated gradients along the straight path from a constant baseline image to the input.

    Args:
        n_steps: integration steps (captum's default 50, Gauss–Legendre).
        baseline: ``0.0`` (the standardised image mean, captum's default), another constant, or
            ``"min"`` (each image's minimum: black, the background of a mammogram).
    """

    description: ClassVar[str] = "integrated gradients (Sundararajan et al. 2017), captum, chunked steps, input res."
    max_images_per_call: ClassVar[int | None] = 1

    def __init__(self, n_steps: int = 50, baseline: float | str = 0.0, method: str = "gausslegendre", **kwargs: Any):
        super().__init__(**kwargs)
        if int(n_steps) < 1:
            raise ValueError(f"n_steps must be at least 1, got {n_steps!r}")
        if not (isinstance(baseline, (int, float)) or baseline == "min"):
            raise ValueError(f"baseline must be a number or 'min', got {baseline!r}")
        self.n_steps = int(n_steps)
        self.baseline = baseline
        self.method = method

    @staticmethod
    def bytes_per_step(profile: ForwardProfile) -> int:
        # the scaled input, its gradient and the accumulated attribution, plus the pass itself
        return profile.gradient_bytes + 3 * profile.input_bytes

    def bytes_per_image(self, profile: ForwardProfile) -> int:
        return self.bytes_per_step(profile) + 2 * profile.input_bytes

    def internal_batch_size(self, budget_bytes: int, profile: ForwardProfile, n_images: int) -> int:
        """Integration steps per forward/backward pass (captum counts steps × images) that fit the budget."""
        steps = fit_chunk(
            budget_bytes, self.bytes_per_step(profile) * n_images, self.n_steps,
            f"{self.name}: one integration step at {profile.size_text}", fixed_bytes=2 * profile.input_bytes * n_images,
        )
        return steps * n_images

    def attribute(self, forward, images, class_index, budget_bytes, profile):
        from captum.attr import IntegratedGradients

        if self.baseline == "min":
            baselines = images.amin(dim=(1, 2, 3), keepdim=True).expand_as(images).contiguous()
        else:
            baselines = torch.full_like(images, float(self.baseline))
        return IntegratedGradients(forward).attribute(
            images, baselines=baselines, target=class_index, n_steps=self.n_steps, method=self.method,
            internal_batch_size=self.internal_batch_size(budget_bytes, profile, images.shape[0]),
        )


@METHODS.register("occlusion")
class OcclusionExplainer(CaptumExplainer):
    """Occlusion: the drop of the logit when a window of the image is replaced by a baseline value.

    Args:
        window: ``(h, w)`` of the occluding window in pixels; default an eighth of the image's
            height and width (368×240 at 2944×1920, 32×20 at 256×160).
        stride: ``(h, w)`` step between windows; default half the window.
        baseline: value written into the window (0: the standardised image mean).
    """

    description: ClassVar[str] = "occlusion (Zeiler & Fergus 2014), captum, chunked windows, input resolution"
    max_images_per_call: ClassVar[int | None] = 1

    def __init__(
        self,
        window: tuple[int, int] | None = None,
        stride: tuple[int, int] | None = None,
        baseline: float = 0.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        for name, value in (("window", window), ("stride", stride)):
            if value is not None and (len(value) != 2 or min(int(v) for v in value) < 1):
                raise ValueError(f"{name} must be two positive integers (h, w), got {value!r}")
        self.window = tuple(int(v) for v in window) if window is not None else None
        self.stride = tuple(int(v) for v in stride) if stride is not None else None
        self.baseline = float(baseline)

    def geometry(self, size: tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int]]:
        """``(window, stride)`` in pixels for images of ``size``."""
        h, w = size
        window = self.window or (max(1, math.ceil(h / 8)), max(1, math.ceil(w / 8)))
        window = (min(window[0], h), min(window[1], w))
        stride = self.stride or (max(1, window[0] // 2), max(1, window[1] // 2))
        return window, stride

    @staticmethod
    def bytes_per_perturbation(profile: ForwardProfile) -> int:
        # captum's expanded input, the occluded input, its mask and the weighted difference, plus the pass
        return profile.forward_bytes + 4 * profile.input_bytes

    def bytes_per_image(self, profile: ForwardProfile) -> int:
        return self.bytes_per_perturbation(profile) + 2 * profile.input_bytes

    def make_forward(self, images: torch.Tensor) -> LogitTap:
        return ReplayForward(self.model, images)

    def attribute(self, forward, images, class_index, budget_bytes, profile):
        from captum.attr import Occlusion

        (wh, ww), (sh, sw) = self.geometry(tuple(images.shape[-2:]))
        windows = ((images.shape[-2] - wh) // sh + 1) * ((images.shape[-1] - ww) // sw + 1)
        per_eval = fit_chunk(
            budget_bytes, self.bytes_per_perturbation(profile) * images.shape[0], windows,
            f"{self.name}: one occluded forward pass at {profile.size_text}",
            fixed_bytes=2 * profile.input_bytes * images.shape[0],
        )
        if class_index > 0:
            forward.replay()  # same windows, same order: the logits of every class were recorded
        channels = images.shape[1]
        return Occlusion(forward).attribute(
            images, sliding_window_shapes=(channels, wh, ww), strides=(channels, sh, sw), baselines=self.baseline,
            target=class_index, perturbations_per_eval=per_eval,
        )
