"""Shared machinery of the post-hoc explainers (Grad-CAM family, captum attributions).

A post-hoc explainer explains the image-level decision of a classifier it is given: an
:class:`~wsl_bench.saliency.ExplainedClassifier` (a module mapping N×1×H×W images to N×C class
logits, its default target layer, the name of the method it comes from and the checksums of its
weights), usually the one another registered method exposes through ``TrainableMethod.classifier()``.
The explainer is a plain :class:`~wsl_bench.SaliencyMethod`: it trains nothing and creates nothing.
Whoever builds it supplies the classifier: ``wsl_bench.create_method("gradcam", classifier="cam")``
creates the ``cam`` method and hands its classifier over, and a run (``wsl_bench.pipeline``) trains
that classifier method, or loads its cached checkpoint, under the classifier's own training job, so
``cam`` and every explainer of it share one training.

Conventions every explainer follows:

- **Targets** are the class logits, before the sigmoid (explaining probabilities multiplies every
  gradient by p(1−p), which flattens the maps of confident predictions). Each image gets one target
  per class, and a batch always gets exactly one target per image (:func:`class_targets`).
- **Maps are raw** (``map_range = "unbounded"``): no ReLU, no normalisation, no resizing beyond what
  the explainer's published definition contains; the harness normalises every method alike.
- **Scores** are the sigmoid of the classifier's logits.
- **No autograd graph survives** ``predict``: parameters are frozen while explaining (so nothing
  accumulates in their ``.grad``), hooks are removed in ``finally`` blocks, outputs are detached.
- **Memory budget**: every explainer takes ``memory_budget_mb`` (default :func:`default_memory_budget_bytes`)
  and splits its work (images of the batch, masked inputs, integration steps, occlusion windows,
  ablated copies) into chunks whose estimated size fits. The estimate comes from a
  :class:`ForwardProfile` measured once per input size. Work that does not fit even one item at a
  time raises :class:`ExplainerOutOfMemory` (a ``MemoryError``: the harness records ``"oom"``).
"""

from __future__ import annotations

import contextlib
import math
from abc import abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from wsl_bench.saliency import CLASSES, ExplainedClassifier, SaliencyMethod, SaliencyOutput

CPU_DEFAULT_BUDGET_BYTES = 4 * 2**30
"""Default memory budget on CPU: 4 GiB, enough for one forward and backward pass of a 2944×1920
image through the built-in classifiers, small enough for a shared workstation."""

CUDA_BUDGET_FRACTION = 0.5
"""Default memory budget on CUDA: this fraction of the GPU memory free when ``predict`` starts
(the rest absorbs allocator fragmentation, cuDNN workspaces and what the estimate misses)."""

BACKWARD_FACTOR = 2
"""A forward and backward pass holds about twice the bytes the forward allocates: the saved
activations plus their gradients."""


class ExplainerOutOfMemory(MemoryError):
    """The smallest unit of an explainer's work does not fit its memory budget.

    Attributes:
        needed_bytes: estimated bytes of that smallest unit.
        budget_bytes: the budget it had to fit in.
    """

    def __init__(self, what: str, needed_bytes: int, budget_bytes: int) -> None:
        self.needed_bytes = int(needed_bytes)
        self.budget_bytes = int(budget_bytes)
        super().__init__(
            f"{what} needs about {needed_bytes / 2**20:.1f} MiB, more than the memory budget of "
            f"{budget_bytes / 2**20:.1f} MiB (raise it with the explainer option memory_budget_mb, "
            f"e.g. --option memory_budget_mb={math.ceil(needed_bytes * 1.25 / 2**20)})"
        )


def default_memory_budget_bytes(device: torch.device) -> int:
    """The budget used when none is given: a fraction of the free GPU memory on CUDA
    (``torch.cuda.mem_get_info``, read now), :data:`CPU_DEFAULT_BUDGET_BYTES` elsewhere."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free * CUDA_BUDGET_FRACTION)
    return CPU_DEFAULT_BUDGET_BYTES


def fit_chunk(budget_bytes: int, per_item_bytes: int, n_items: int, what: str, fixed_bytes: int = 0) -> int:
    """The largest number of items (at most ``n_items``) whose estimated memory fits the budget.

    Args:
        budget_bytes: the memory budget.
        per_item_bytes: estimated bytes each item of a chunk adds.
        n_items: how many items there are to process.
        what: the item, for the error message ("one masked forward pass at 2944×1920").
        fixed_bytes: bytes held whatever the chunk size (the result being accumulated, ...).

    Raises:
        ExplainerOutOfMemory: not even one item fits.
    """
    if fixed_bytes + per_item_bytes > budget_bytes:
        raise ExplainerOutOfMemory(what, fixed_bytes + per_item_bytes, budget_bytes)
    return max(1, min(n_items, (budget_bytes - fixed_bytes) // max(per_item_bytes, 1)))


# -- measuring a forward pass ----------------------------------------------------------------------
class _AllocationCounter(TorchDispatchMode):
    """Sums the bytes of every tensor an operator creates (outputs that alias an input, from views
    and in-place operators, allocate nothing and are not counted)."""

    def __init__(self) -> None:
        super().__init__()
        self.bytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        inputs = {t.untyped_storage().data_ptr() for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        out = func(*args, **kwargs)
        for tensor in tree_leaves(out):
            if isinstance(tensor, torch.Tensor) and tensor.untyped_storage().data_ptr() not in inputs:
                self.bytes += tensor.untyped_storage().nbytes()
        return out


@dataclass(frozen=True)
class ForwardProfile:
    """Memory facts of one classifier forward pass for ONE image of a given size.

    Attributes:
        input_shape: ``(C, H, W)`` of the image.
        input_bytes: bytes of the image.
        forward_bytes: bytes of every tensor the forward pass allocates (an upper bound of what
            autograd keeps for the backward pass; the no-grad peak is lower).
        layer_shape: ``(K, h, w)`` of the target layer's output.
        layer_bytes: bytes of the target layer's output.
    """

    input_shape: tuple[int, ...]
    input_bytes: int
    forward_bytes: int
    layer_shape: tuple[int, ...]
    layer_bytes: int

    @property
    def gradient_bytes(self) -> int:
        """One image's forward and backward pass: saved activations, their gradients, the input's."""
        return BACKWARD_FACTOR * self.forward_bytes + 2 * self.input_bytes

    @property
    def size_text(self) -> str:
        return "×".join(str(v) for v in self.input_shape[1:])


def measure_forward_profile(model: nn.Module, layer: nn.Module, input_shape: Sequence[int], device: torch.device):
    """Run ``model`` once on a zero image of ``input_shape`` (``C×H×W``) and record its memory facts.

    Returns:
        a :class:`ForwardProfile`.
    """
    captured: list[torch.Tensor] = []
    handle = layer.register_forward_hook(lambda _m, _i, out: captured.append(out) if not captured else None)
    image = torch.zeros((1, *input_shape), device=device)
    counter = _AllocationCounter()
    try:
        with torch.no_grad(), counter:
            model(image)
    finally:
        handle.remove()
    if not captured or not isinstance(captured[0], torch.Tensor):
        raise ValueError(f"target layer {type(layer).__name__} gave no tensor in the classifier's forward pass")
    out = captured[0]
    return ForwardProfile(
        tuple(int(v) for v in input_shape),
        image.numel() * image.element_size(),
        counter.bytes,
        tuple(int(v) for v in out.shape[1:]),
        out[0].numel() * out.element_size(),
    )


# -- targets -----------------------------------------------------------------------------------------
def check_targets(targets: Sequence[Any], batch_size: int) -> None:
    """Refuse a target list whose length differs from the batch.

    pytorch-grad-cam pairs targets and images with ``zip``, so a short list silently leaves the
    surplus images without a target and returns all-zero maps for them.

    Raises:
        ValueError: naming both lengths.
    """
    if len(targets) != batch_size:
        raise ValueError(f"{len(targets)} targets for a batch of {batch_size} images: every image needs exactly one")


def class_targets(class_index: int, batch_size: int) -> list[Any]:
    """One pytorch-grad-cam target per image, all selecting the logit of class ``class_index``."""
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    if not 0 <= class_index < len(CLASSES):
        raise ValueError(f"class index {class_index} is not one of 0..{len(CLASSES) - 1}")
    targets = [ClassifierOutputTarget(class_index) for _ in range(batch_size)]
    check_targets(targets, batch_size)
    return targets


# -- model state while explaining --------------------------------------------------------------------
@contextlib.contextmanager
def explaining(model: nn.Module) -> Iterator[None]:
    """Evaluation mode, frozen parameters and autograd on (even inside ``no_grad``/``inference_mode``).

    Freezing the parameters means no explainer can accumulate gradients in their ``.grad`` and
    autograd saves nothing for weight gradients; flags and mode are restored afterwards.
    """
    was_training = model.training
    flags = [(p, p.requires_grad) for p in model.parameters()]
    model.eval()
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        with torch.inference_mode(False), torch.enable_grad():
            yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        model.train(was_training)


@contextlib.contextmanager
def capture_outputs(
    layers: Sequence[nn.Module], clone: bool = True, allow_unused: bool = False
) -> Iterator[list[torch.Tensor]]:
    """Record the output of each of ``layers`` during a forward pass run inside the block.

    Args:
        layers: modules whose outputs are wanted (each must run exactly once per forward pass).
        clone: hand a copy of the output to the rest of the network, so a later in-place operator
            (``ReLU(inplace=True)``) cannot change the recorded tensor; differentiating with respect
            to the recorded tensor then gives the gradient at the layer's true output (captum does
            the same). Not needed when no gradient is taken.
        allow_unused: leave ``None`` for layers the forward pass did not run instead of raising.

    Yields:
        a list filled, after the forward pass, with one tensor per layer.
    """
    outputs: list[torch.Tensor | None] = [None] * len(layers)

    def make_hook(index: int):
        def hook(module: nn.Module, _inputs: Any, output: Any) -> Any:
            if not isinstance(output, torch.Tensor):
                raise TypeError(f"layer {type(module).__name__} returns {type(output).__name__}, not a tensor")
            if outputs[index] is not None:
                raise RuntimeError(
                    f"layer {type(module).__name__} ran twice in one forward pass; choose a layer the classifier "
                    "uses once (target_layer option)"
                )
            outputs[index] = output
            return output.clone() if clone else None

        return hook

    handles = [layer.register_forward_hook(make_hook(i)) for i, layer in enumerate(layers)]
    try:
        yield outputs  # type: ignore[misc]
        missing = [type(layers[i]).__name__ for i, out in enumerate(outputs) if out is None]
        if missing and not allow_unused:
            raise RuntimeError(f"layer(s) {', '.join(missing)} did not run in the classifier's forward pass")
    finally:
        for handle in handles:
            handle.remove()


def resolve_layer(model: nn.Module, layer: str | nn.Module | None, default: nn.Module) -> nn.Module:
    """The target layer: ``default`` for ``None``, a module of ``model`` given by dotted name
    (``"stages.2"``) or the module itself.

    Raises:
        ValueError: the name is not a submodule of the classifier (listing some that are).
    """
    if layer is None:
        return default
    if isinstance(layer, nn.Module):
        if not any(m is layer for m in model.modules()):
            raise ValueError(f"target layer {type(layer).__name__} is not part of the classifier")
        return layer
    try:
        return model.get_submodule(layer)
    except AttributeError:
        names = [name for name, _ in model.named_modules() if name]
        shown = ", ".join(names[:30]) + (", ..." if len(names) > 30 else "")
        raise ValueError(f"target_layer {layer!r} is not a submodule of the classifier; it has: {shown}") from None


# -- the base class ------------------------------------------------------------------------------------
class PosthocExplainer(SaliencyMethod):
    """Base class of explainers of an image classifier.

    Args:
        classifier: the classifier explained (:class:`~wsl_bench.saliency.ExplainedClassifier`):
            ``classifier.module`` maps ``N×1×H×W`` standardised images to ``N×C`` logits; it is moved
            to ``device`` and held, not copied, so weights loaded into it later are the ones explained.
        target_layer: layer of layer-based explainers: ``None`` for ``classifier.default_layer``, or
            a dotted submodule name of ``classifier.module`` (``"stages.2"``).
        memory_budget_mb: memory the explainer may use for its internal batches, in MiB;
            ``None``: :func:`default_memory_budget_bytes`.
        device, seed, image_size: as for every method.

    The constructor runs the classifier once on a zero image of ``image_size`` to measure its
    :class:`ForwardProfile` (outside any timing or FLOP count of ``predict``); other sizes are
    measured on first use.

    Subclasses implement :meth:`explain` (one sub-batch of images → raw maps and logits) and may
    override :meth:`bytes_per_image` (memory one image adds to a sub-batch) and
    ``max_images_per_call``; their own options are constructor keywords passed on with ``**kwargs``
    (the front doors give an explainer the options its constructors name and the classifier's
    method the rest).
    """

    map_range: ClassVar[str] = "unbounded"
    default_classifier: ClassVar[str] = "cam"
    """The method whose classifier is explained when none is named (``--classifier``, ``explainer@classifier``)."""
    max_images_per_call: ClassVar[int | None] = None
    """Cap on images explained together (``1`` for explainers that chunk their own internal work)."""

    def __init__(
        self,
        classifier: ExplainedClassifier,
        target_layer: str | nn.Module | None = None,
        memory_budget_mb: float | None = None,
        device: str | torch.device = "cpu",
        seed: int = 0,
        image_size: tuple[int, int] | None = None,
    ) -> None:
        super().__init__(device=device, seed=seed, image_size=image_size)
        if not isinstance(classifier, ExplainedClassifier):
            raise TypeError(
                f"{type(self).__name__}: classifier must be an ExplainedClassifier (ExplainedClassifier.of(method)), "
                f"got {type(classifier).__name__}; to name the classifier's method instead, create the explainer "
                "with wsl_bench.create_method(name, classifier='cam')"
            )
        if memory_budget_mb is not None and not memory_budget_mb > 0:
            raise ValueError(f"memory_budget_mb must be positive, got {memory_budget_mb!r}")
        self.explained = classifier
        self.classifier_name = classifier.name
        self.memory_budget_mb = memory_budget_mb
        self.model = classifier.module.to(self.device)
        self.target_layer = resolve_layer(self.model, target_layer, classifier.default_layer)
        self.target_layer_name = next((n for n, m in self.model.named_modules() if m is self.target_layer), "?")
        self._profiles: dict[tuple[int, ...], ForwardProfile] = {}
        # Measured now, outside any timing or FLOP counting of predict, for the size it will see.
        self.forward_profile((1, *self.image_size))

    def modules(self) -> dict[str, nn.Module]:
        return {"classifier": self.model}

    def checksums(self) -> dict[str, str]:
        """The checksums of the classifier's weights files (empty for weights a run trains)."""
        return dict(self.explained.checksums)

    # -- memory ------------------------------------------------------------------------------------------
    def memory_budget_bytes(self) -> int:
        """The budget in bytes: the ``memory_budget_mb`` option or the device default."""
        if self.memory_budget_mb is not None:
            return int(self.memory_budget_mb * 2**20)
        return default_memory_budget_bytes(self.device)

    def forward_profile(self, image_shape: Sequence[int]) -> ForwardProfile:
        """The :class:`ForwardProfile` for images of ``image_shape`` (``N×C×H×W`` or ``C×H×W``),
        measured on first use per size."""
        key = tuple(int(v) for v in image_shape[-3:])
        if key not in self._profiles:
            with explaining(self.model):
                self._profiles[key] = measure_forward_profile(self.model, self.target_layer, key, self.device)
        return self._profiles[key]

    def bytes_per_image(self, profile: ForwardProfile) -> int:
        """Memory one image adds to a sub-batch of :meth:`explain` (default: a forward and backward pass)."""
        return profile.gradient_bytes

    # -- the contract ------------------------------------------------------------------------------------
    def predict(self, images: torch.Tensor) -> SaliencyOutput:
        """Raw maps (``N×C×h×w``, resolution per explainer) and sigmoid scores (``N×C``) for a batch."""
        if images.ndim != 4:
            raise ValueError(f"{self.name}: images must be N×C×H×W, got shape {tuple(images.shape)}")
        profile = self.forward_profile(images.shape)
        budget = self.memory_budget_bytes()
        n = images.shape[0]
        per_call = fit_chunk(
            budget, self.bytes_per_image(profile), n, f"{self.name}: explaining one {profile.size_text} image"
        )
        if self.max_images_per_call is not None:
            per_call = min(per_call, self.max_images_per_call)
        maps, logits = [], []
        with explaining(self.model):
            for start in range(0, n, per_call):
                chunk = images[start : start + per_call].detach().clone()
                chunk_maps, chunk_logits = self.explain(chunk, budget, profile)
                if chunk_maps.shape[:2] != (chunk.shape[0], len(CLASSES)) or chunk_logits.shape != (
                    chunk.shape[0],
                    len(CLASSES),
                ):
                    raise RuntimeError(
                        f"{self.name}: explain returned maps {tuple(chunk_maps.shape)} and logits "
                        f"{tuple(chunk_logits.shape)} for {chunk.shape[0]} images"
                    )
                maps.append(chunk_maps.detach().float())
                logits.append(chunk_logits.detach().float())
        return SaliencyOutput(torch.cat(maps), torch.sigmoid(torch.cat(logits)), "unbounded")

    @abstractmethod
    def explain(
        self, images: torch.Tensor, budget_bytes: int, profile: ForwardProfile
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Explain a sub-batch; runs inside :func:`explaining` (eval mode, frozen parameters, grad on).

        Args:
            images: ``n×C×H×W`` copy of the standardised images.
            budget_bytes: the memory budget for internal chunking.
            profile: memory facts of one image's forward pass.

        Returns:
            ``(maps n×C×h×w, logits n×C)``, both free of autograd graphs.
        """

    def classifier_logits(self, images: torch.Tensor, budget_bytes: int, profile: ForwardProfile) -> torch.Tensor:
        """``n×C`` logits of the classifier, without autograd, in chunks that fit the budget."""
        per_chunk = fit_chunk(
            budget_bytes, profile.forward_bytes + profile.input_bytes, images.shape[0],
            f"{self.name}: one forward pass of a {profile.size_text} image",
        )
        with torch.no_grad():
            return torch.cat([self.model(images[i : i + per_chunk]) for i in range(0, images.shape[0], per_chunk)])
