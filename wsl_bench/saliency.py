"""The saliency contract every method implements.

A method receives a batch of standardised one-channel images ``N×1×H×W`` and returns a
:class:`SaliencyOutput`: raw maps at whatever resolution the method works at, image-level
probabilities, and the declared value range of the maps. Methods never resize, normalise or
threshold their maps for scoring: the harness does that, identically for all methods
(see ``wsl_bench.evaluation.harness``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol, get_args

import torch

if TYPE_CHECKING:
    import numpy as np

CLASSES: tuple[str, ...] = ("benign", "malignant")
"""The class order of every ``maps``/``scores`` channel, label and mask in the suite."""

MapRange = Literal["probability", "unbounded"]
"""The value range of a method's maps: ``"probability"`` (already in [0, 1], scored as they are) or
``"unbounded"`` (min–max normalised per image and class by the harness)."""
MAP_RANGES: tuple[str, ...] = get_args(MapRange)
"""The values of :data:`MapRange`, for runtime checks."""


_RANGE_TOLERANCE = 1e-4
"""Rounding slack of a value declared in [0, 1] (the same as the scorer's, ``scoring.normalise_maps``)."""


def _check_unit_range(what: str, values: torch.Tensor) -> None:
    low, high = float(values.min()), float(values.max())
    if low < -_RANGE_TOLERANCE or high > 1 + _RANGE_TOLERANCE:
        raise ValueError(f"{what} must lie in [0, 1], found values in [{low:.4g}, {high:.4g}]")


@dataclass
class SaliencyOutput:
    """What a method returns for a batch of N images.

    Attributes:
        maps: ``N×C×h×w`` float tensor, C = ``len(CLASSES)``, any spatial size ``h×w``.
        scores: ``N×C`` image-level probabilities in [0, 1].
        map_range: ``"probability"`` for maps already in [0, 1] (sigmoid outputs), scored as they
            are; ``"unbounded"`` for gradient/attribution maps, min–max normalised per image and
            class by the harness.
        extras: optional method-specific tensors for figures (patch locations, attention weights,
            intermediate maps); the first dimension of each tensor is N.
    """

    maps: torch.Tensor
    scores: torch.Tensor
    map_range: MapRange = "probability"
    extras: dict[str, Any] = field(default_factory=dict)

    def validate(self, batch_size: int) -> None:
        """Check shapes, range declaration and finiteness.

        Raises:
            ValueError: naming the first problem found.
        """
        c = len(CLASSES)
        if self.map_range not in MAP_RANGES:
            raise ValueError(f"map_range must be one of {MAP_RANGES}, got {self.map_range!r}")
        if self.maps.ndim != 4 or self.maps.shape[0] != batch_size or self.maps.shape[1] != c:
            raise ValueError(f"maps must be N×{c}×h×w with N={batch_size}, got {tuple(self.maps.shape)}")
        if self.maps.shape[2] < 1 or self.maps.shape[3] < 1:
            raise ValueError(f"maps must have at least one pixel, got {tuple(self.maps.shape)}")
        if self.scores.shape != (batch_size, c):
            raise ValueError(f"scores must be N×{c} with N={batch_size}, got {tuple(self.scores.shape)}")
        if not torch.isfinite(self.maps).all():
            raise ValueError("maps contain NaN or infinite values")
        if not torch.isfinite(self.scores).all():
            raise ValueError("scores contain NaN or infinite values")
        _check_unit_range("scores", self.scores)
        if self.map_range == "probability":
            _check_unit_range("'probability' maps", self.maps)

    def detach_to(self, device: str | torch.device = "cpu") -> SaliencyOutput:
        """A copy with every tensor detached and moved to ``device`` (for storage and figures)."""

        def move(value: Any) -> Any:
            if isinstance(value, torch.Tensor):
                return value.detach().to(device)
            if isinstance(value, dict):
                return {k: move(v) for k, v in value.items()}
            if isinstance(value, (list, tuple)):
                return type(value)(move(v) for v in value)
            return value

        return SaliencyOutput(move(self.maps), move(self.scores), self.map_range, move(self.extras))


CRITERION_NAMES: tuple[str, ...] = ("mean_auc", "loss", "mean_dice", "mean_pxap")
"""Validation quantities a training stage may select its best checkpoint by (the trainer's
``CRITERIA`` maps each to its validation column)."""


@dataclass(frozen=True)
class TrainingStage:
    """One stage of a method's training recipe.

    Attributes:
        name: the stage's folder is ``stage-<name>`` (a one-stage recipe trains in the folder itself).
        loss: passed to the method's ``training_loss(..., stage=loss)``; ``None`` passes nothing.
        trainable: names of the network's submodules this stage trains (``network.get_submodule``);
            the rest is frozen and kept in eval mode (its BatchNorm statistics do not move). Empty:
            the whole network.
        epochs_fraction: the stage trains ``max(1, round(fraction · TrainConfig.epochs))`` epochs.
        lr_factor: the stage's learning rate is ``factor · TrainConfig.lr``.
        criterion: best-checkpoint criterion of this stage (``None``: ``TrainConfig.best_criterion``),
            e.g. ``"loss"`` where the image-level scores do not depend on what the stage trains.
        maps: the maps this stage trains, names of :meth:`TrainableMethod.training_maps` (empty: the
            method's output map). The trainer scores every training map on the validation split before
            the first epoch and after each one; a selected checkpoint whose trained map localises worse
            than it did at the stage's start is flagged (``wsl_bench.training.learning_check``).
    """

    name: str = "main"
    loss: str | None = None
    trainable: tuple[str, ...] = ()
    epochs_fraction: float = 1.0
    lr_factor: float = 1.0
    criterion: str | None = None
    maps: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "trainable", tuple(self.trainable))
        object.__setattr__(self, "maps", tuple(self.maps))
        if not self.name or not self.name.replace("_", "").replace("-", "").isalnum():
            raise ValueError(f"a stage name must be letters, digits, '-' or '_', got {self.name!r}")
        if self.epochs_fraction <= 0 or self.lr_factor <= 0:
            raise ValueError(f"stage {self.name!r}: epochs_fraction and lr_factor must be positive")
        if self.criterion is not None and self.criterion not in CRITERION_NAMES:
            raise ValueError(f"stage {self.name!r}: criterion must be one of {CRITERION_NAMES}")

    def epochs(self, config: Any) -> int:
        """Epochs of this stage under ``config`` (a ``TrainConfig``: only its ``epochs`` is read)."""
        return max(1, round(config.epochs * self.epochs_fraction))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["trainable"] = list(self.trainable)
        d["maps"] = list(self.maps)
        return d


OUTPUT_MAP = "map"
"""The name under which the trainer follows a method's output map (``SaliencyOutput.maps``)."""


@dataclass
class TrainingMap:
    """One map a method's training shapes, scored on validation images after every epoch.

    Attributes:
        maps: ``N×C×h×w`` maps of whole images, or ``(N·K)×C×h×w`` maps of patches when
            ``patch_locations`` is given (patch ``k`` of image ``n`` at row ``n·K + k``).
        map_range: as :attr:`SaliencyOutput.map_range`.
        patch_locations: ``N×K×2`` upper-left corners (row, column) in image pixels of patches of
            ``patch_size``: only the pixels inside its patches are scored for an image (e.g. GLAM's local
            map, whose localisation inside the patch is what its local stage learns).
        patch_size: ``(ph, pw)`` of the patches.
    """

    maps: torch.Tensor
    map_range: MapRange = "probability"
    patch_locations: torch.Tensor | None = None
    patch_size: tuple[int, int] | None = None


class ImageAugmentation(Protocol):
    """A training-time augmentation: ``augment(image 1×H×W, rng) -> 1×H×W``, randomness from ``rng`` only.

    The same protocol as ``wsl_bench.training.augment.Augmentation`` (``CropJitter``, ``VerticalFlip``),
    declared here because the contract must not import the training layer.
    """

    def __call__(self, image: torch.Tensor, rng: np.random.Generator) -> torch.Tensor: ...


class SaliencyMethod(ABC):
    """Base class of every method: turns images into saliency maps and image-level scores.

    Subclasses set the class attributes and implement :meth:`predict`. Trainable methods derive
    from :class:`TrainableMethod` instead.

    Class attributes:
        name: the registered name (set by the registry decorator's caller, used in records).
        description: one line for ``wsl-bench list``.
        map_range: the range of the maps it returns (see :class:`SaliencyOutput`).
        trainable: whether ``wsl-bench run`` must train (or load) it before evaluation.
        requires_weights: whether it needs user-supplied weights (then the default benchmark leaves it out).
        default_classifier: ``None``, except for post-hoc explainers (see :class:`ExplainedClassifier`).
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    map_range: ClassVar[MapRange] = "probability"
    trainable: ClassVar[bool] = False
    requires_weights: ClassVar[bool] = False
    """True for variants that only make sense with user-supplied weights (published checkpoints);
    the default benchmark leaves them out."""
    default_classifier: ClassVar[str | None] = None
    """Set only by post-hoc explainers, methods that explain the classifier of another method: the
    registered name of the method whose classifier they explain when none is named (``classifier``
    option, ``explainer@classifier``). Their constructor takes ``classifier``, an
    :class:`ExplainedClassifier`; the front doors (``wsl_bench.registry.create_method``, the pipeline)
    create that method by name and hand its classifier over."""

    def __init__(
        self, device: str | torch.device = "cpu", seed: int = 0, image_size: tuple[int, int] | None = None
    ) -> None:
        """Every subclass calls this with exactly these three keywords and keeps its own options: there
        is no ``**options`` here, so an option no constructor names fails with a ``TypeError``
        (``wsl-bench`` reports it as a usage error naming the flag). See ``methods/README.md``.

        Args:
            device: where ``predict`` runs; inputs arrive on this device.
            seed: seeds any randomness of the method (random baselines, initialisation).
            image_size: ``(H, W)`` of the images it will see, for methods whose architecture scales
                with the input (patch sizes, windows); ``None`` means the published 2944×1920.
        """
        self.device = torch.device(device)
        self.seed = seed
        self.image_size = tuple(image_size) if image_size is not None else (2944, 1920)

    @abstractmethod
    def predict(self, images: torch.Tensor) -> SaliencyOutput:
        """Saliency maps and image-level probabilities for a batch.

        Args:
            images: ``N×1×H×W`` float32, each image standardised (mean 0, std 1), on ``self.device``.

        Returns:
            A :class:`SaliencyOutput` with ``maps`` ``N×C×h×w`` and ``scores`` ``N×C``; no tensor in
            it may keep an autograd graph.
        """

    def to(self, device: str | torch.device) -> SaliencyMethod:
        """Move the method (and any model it holds) to ``device``; returns ``self``."""
        self.device = torch.device(device)
        for module in self.modules().values():
            module.to(self.device)
        return self

    def modules(self) -> dict[str, torch.nn.Module]:
        """The ``torch.nn.Module`` objects the method runs (for parameter counts, device moves)."""
        return {}

    def num_parameters(self) -> int:
        """Parameters of all modules of the method (0 for model-free baselines)."""
        return sum(p.numel() for m in self.modules().values() for p in m.parameters())

    def checksums(self) -> dict[str, str]:
        """Identifiers of the weights in use (file checksums), recorded in the run manifest."""
        return {}

    @property
    def weights_loaded(self) -> bool:
        """Whether weights were loaded from a file at construction (then nothing is trained)."""
        return bool(self.checksums())


class TrainableMethod(SaliencyMethod):
    """A method with a network trained from image-level labels by ``wsl_bench.training.trainer``.

    Subclasses build their network in ``__init__`` (deterministically from ``seed``), return it from
    :meth:`network`, and define the weakly-supervised loss in :meth:`training_loss`. The shared
    trainer does everything else (optimiser, epochs, checkpoints, validation).

    Every hook the trainer and the pipeline call is declared here with its default, so a subclass
    overrides only what its recipe changes: :attr:`train_overrides`, :meth:`training_stages`,
    :meth:`training_augmentation`, :attr:`global_init` with :meth:`initialise_global_backbone`,
    :meth:`config_dict`, :meth:`training_identity`, :meth:`classifier`, and :attr:`mask_split` for the
    supervised reference points that train with masks.
    """

    trainable: ClassVar[bool] = True

    train_overrides: ClassVar[dict[str, Any]] = {}
    """``TrainConfig`` fields of the method's recipe (e.g. ``{"lr": 1e-3}``), applied over the
    preset's budget and under explicit command-line options; may be a property."""

    global_init: str | None = None
    """Registered name of a trainable method whose trained weights this one starts from (trained
    first, or loaded from the cache, then passed to :meth:`initialise_global_backbone`); ``None``:
    start from the network built in ``__init__``. May be a property."""

    mask_split: ClassVar[str | None] = None
    """``None`` for every weakly-supervised method: only image-level labels reach its loss. A method
    trained with masks (a supervised reference point, never ranked with the weakly-supervised ones)
    names the one split whose masks it trains on (``"train"`` or ``"val"``): the pipeline's training job
    opens that split as its training data, the trainer hands its loss the masks of that split alone
    (``training_loss(..., masks=N×C×H×W)``) and runs no validation during its training (validation
    reads the validation split's masks), so it trains a fixed budget and keeps its final checkpoint."""

    @abstractmethod
    def network(self) -> torch.nn.Module:
        """The one module holding every trained parameter (its ``state_dict`` is the checkpoint)."""

    @abstractmethod
    def training_loss(
        self, images: torch.Tensor, labels: torch.Tensor, pos_weight: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Scalar loss for a batch, computed in training mode with autograd.

        Args:
            images: ``N×1×H×W`` standardised images.
            labels: ``N×C`` float {0, 1} image-level labels in ``CLASSES`` order.
            pos_weight: optional ``C`` weights of positive examples in every binary cross-entropy
                term (``torch.nn.functional.binary_cross_entropy_with_logits`` semantics), set by the
                trainer to counter class imbalance.

        A method whose :meth:`training_stages` give a stage a ``loss`` also accepts the keyword
        ``stage`` (that ``loss`` string). A method with a :attr:`mask_split` also receives ``masks``:
        ``N×C×H×W`` float, 1 on the lesions of each class, 0 elsewhere, NaN where the image has no
        annotation of that class; no other method ever receives masks.
        """

    def classifier(self) -> tuple[torch.nn.Module, torch.nn.Module]:
        """The image classifier inside the method, for post-hoc explainers
        (:meth:`ExplainedClassifier.of` wraps it).

        Returns:
            ``(module, target_layer)``: ``module(images N×1×H×W) -> N×C`` class logits (before any
            sigmoid) and the layer Grad-CAM-style explainers use by default. ``module`` shares its
            parameters with :meth:`network` (a view, not a copy), so training the method or loading
            its checkpoint changes the classifier an explainer holds.
        """
        raise NotImplementedError(f"method {self.name!r} exposes no classifier for post-hoc explainers")

    def config_dict(self) -> dict[str, Any]:
        """Everything that determines the architecture, stored in checkpoints and cache keys."""
        return {"image_size": list(self.image_size)}

    def training_stages(self) -> tuple[TrainingStage, ...]:
        """The training recipe, in order; each stage is resumable on its own.

        Default: one stage training the whole network with ``training_loss(images, labels,
        pos_weight)`` for ``TrainConfig.epochs`` epochs. A stage's ``loss`` is passed as
        ``training_loss(..., stage=loss)``; its ``trainable`` names submodules of :meth:`network`.
        Stage names must be unique.
        """
        return (TrainingStage(),)

    def training_maps(self, output: SaliencyOutput) -> dict[str, TrainingMap]:
        """The maps besides the output map whose localisation the trainer follows on the validation
        split, by name (:attr:`TrainingStage.maps` names those a stage trains), from ``predict``'s output.

        Default: none (the output map is always followed, as :data:`OUTPUT_MAP`). GLAM returns its
        global map, its local map inside its patch and its fused map.
        """
        return {}

    def training_augmentation(self) -> ImageAugmentation | None:
        """The training-time augmentation applied to each ``1×H×W`` training image, or ``None``.

        Default: none. Return an object with the ``wsl_bench.training.augment.Augmentation``
        protocol (``CropJitter``, ``VerticalFlip``): ``augment(image 1×H×W, rng) -> 1×H×W``, its
        randomness drawn from ``rng`` only (the trainer seeds it per epoch and image).
        """
        return None

    def initialise_global_backbone(self, donor: TrainableMethod) -> None:
        """Start this method's network from ``donor``'s trained weights (called before training when
        :attr:`global_init` names ``donor``; ``donor`` has its trained weights loaded).

        Raises:
            NotImplementedError: the default; a method that sets ``global_init`` must override it.
        """
        raise NotImplementedError(
            f"method {self.name!r} sets global_init={self.global_init!r} but does not implement "
            "initialise_global_backbone(donor) to copy the donor's weights"
        )

    def training_identity(self) -> dict[str, Any]:
        """What identifies the trained weights: the method and its architecture (checkpoint metadata)."""
        return {"method": self.name, "config": self.config_dict()}

    def modules(self) -> dict[str, torch.nn.Module]:
        return {"network": self.network()}


@dataclass(frozen=True)
class ExplainedClassifier:
    """The classifier a post-hoc explainer explains: what its constructor receives as ``classifier``.

    Attributes:
        module: ``module(images N×1×H×W) -> N×C`` class logits before any sigmoid, images
            standardised as for :meth:`SaliencyMethod.predict`, ``C = len(CLASSES)``.
        default_layer: a submodule of ``module`` (its output ``N×K×h×w``): the layer Grad-CAM-style
            explainers use unless given another.
        name: registered name of the method the classifier belongs to (``"cam"``), for messages.
        checksums: identifiers of the weights files loaded into ``module`` (``SaliencyMethod.checksums``
            of that method: empty when the suite trains the weights), recorded as the explainer's own.
    """

    module: torch.nn.Module
    default_layer: torch.nn.Module
    name: str = ""
    checksums: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, method: SaliencyMethod) -> ExplainedClassifier:
        """The classifier ``method`` exposes through :meth:`TrainableMethod.classifier`.

        Raises:
            ValueError: ``method`` is not a trainable method (a baseline, another explainer).
            NotImplementedError: ``method`` exposes no classifier (a run skips the explainer).
        """
        if not isinstance(method, TrainableMethod):
            raise ValueError(f"classifier {method.name!r} is not a trainable method with a classifier to explain")
        module, layer = method.classifier()
        return cls(module, layer, method.name, dict(method.checksums()))
