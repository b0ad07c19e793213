"""What GLAM and GMIC share as methods: options, seeded network, published weights, training hooks.

Both wrap a network reproduced from published code. A method instance splits its options into an
architecture config and a training config, builds the network from a fixed seed, loads published or
project weights when given, keeps a cache of fast inference engines, and exposes the training
recipe's learning rate and crop-window jitter to the shared trainer.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar

import torch
from torch import nn

from wsl_bench.methods import inference
from wsl_bench.registry import METHODS
from wsl_bench.saliency import TrainableMethod, TrainingStage
from wsl_bench.training.augment import CropJitter


@dataclass(frozen=True)
class WeightVariant:
    """One published-weight variant of a model: a row of its table, registered as ``name.tag``.

    Args:
        tag: the part after the dot (``"sep"``, ``"m3"``).
        published_file: the file name of the published weights (looked up in ``$WSL_BENCH_WEIGHTS_DIR``).
        description: the one-line description ``wsl-bench list`` shows.
        options: constructor options the variant fixes (its published configuration); options given
            when creating the method override them.
        requires_weights: whether it needs user-supplied weights (then the default benchmark leaves it out).
    """

    tag: str
    published_file: str
    description: str
    options: Mapping[str, Any] = field(default_factory=dict, hash=False)
    requires_weights: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "options", dict(self.options))  # its own copy (read, never changed)


class PublishedModelMethod(TrainableMethod):
    """Base of :class:`~wsl_bench.methods.glam.GlamMethod` and :class:`~wsl_bench.methods.gmic.GmicMethod`.

    Subclasses set :attr:`network_class` (built from the architecture config), :attr:`config_class`
    (architecture dataclass with an ``image_size`` field and ``to_dict()``), :attr:`training_config_class`
    (dataclass with ``learning_rate`` and ``crop_jitter``) and :attr:`model_label` (for messages).

    Args:
        device: where it runs.
        seed: seeds the random initialisation (used when no ``weights`` are given).
        image_size: ``(H, W)``; ``None`` = the published 2944×1920.
        weights: a published checkpoint or one saved by this project (see
            :func:`wsl_bench.weights.resolve_weights`).
        variant: a published-weight variant of this model (see :func:`register_variant`): sets the
            instance's ``name`` (``model.tag``), ``published_file`` and default options.
        **hyperparameters: fields of the two configs, plus ``precision`` (``"fp32"``/``"bf16"``,
            inference only) and ``fast`` (default True: folded, fused inference path).
    """

    published_file: ClassVar[str | None] = None
    published_source: ClassVar[str | None] = None
    config_defaults: ClassVar[dict[str, Any]] = {}
    network_class: ClassVar[type[nn.Module]]
    config_class: ClassVar[type]
    training_config_class: ClassVar[type]
    model_label: ClassVar[str]

    def __init__(
        self,
        device: str | torch.device = "cpu",
        seed: int = 0,
        image_size: tuple[int, int] | None = None,
        weights: str | None = None,
        *,
        variant: WeightVariant | None = None,
        **hyperparameters: Any,
    ) -> None:
        super().__init__(device=device, seed=seed, image_size=image_size)
        self.variant = variant
        if variant is not None:  # a published-weight variant: its name, file and configuration
            self.name = f"{type(self).name}.{variant.tag}"
            self.description = variant.description
            self.published_file = variant.published_file
            self.requires_weights = variant.requires_weights
        options = {**self.config_defaults, **(variant.options if variant else {}), **hyperparameters}
        self.precision = inference.check_precision(options.pop("precision", "fp32"))
        self.fast = bool(options.pop("fast", True))
        self.config, self.training_config = self.split_options(options, self.image_size)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self._network = self.network_class(self.config)
        self._network.to(self.device)
        self._engine = inference.EngineCache()
        self.weights_info = inference.load_method_weights(self, weights)

    @classmethod
    def split_options(cls, options: dict[str, Any], image_size: tuple[int, int]) -> tuple[Any, Any]:
        """``(architecture config at image_size, training config)`` from the constructor options.

        Raises:
            TypeError: an option that is a field of neither, listing the known ones.
        """
        arch_fields = {f.name for f in fields(cls.config_class)} - {"image_size"}
        train_fields = {f.name for f in fields(cls.training_config_class)}
        unknown = set(options) - arch_fields - train_fields
        if unknown:
            known = ", ".join(sorted(arch_fields | train_fields | {"precision", "fast"}))
            names = ", ".join(sorted(unknown))
            raise TypeError(f"unknown {cls.model_label} hyper-parameter(s) {names}; known: {known}")
        config = cls.config_class(image_size=image_size, **{k: v for k, v in options.items() if k in arch_fields})
        training = cls.training_config_class(**{k: v for k, v in options.items() if k in train_fields})
        return config, training

    def network(self) -> nn.Module:
        return self._network

    def config_dict(self) -> dict[str, Any]:
        """Architecture and inference settings, plus the training hyper-parameters under ``"training"``
        (part of the trainer's cache key; ignored when checking whether a checkpoint fits)."""
        return {**self.config.to_dict(), "training": asdict(self.training_config)}

    def checksums(self) -> dict[str, str]:
        return dict(self.weights_info)

    @property
    def train_overrides(self) -> dict[str, Any]:
        """Trainer settings of the recipe: its learning rate."""
        return {"lr": self.training_config.learning_rate}

    def global_backbone(self) -> nn.Module:
        """The global ResNet-22 (:class:`~.backbones.PreActResNet22`) inside the network."""
        raise NotImplementedError

    def final_saliency_head(self) -> nn.Conv2d:
        """The 1×1 convolution (no bias) turning the ResNet-22's final map into class maps."""
        raise NotImplementedError

    @property
    def global_init(self) -> str | None:
        """The trainable method whose trained ResNet-22 training starts from (``None``: random weights)."""
        return self.training_config.global_init

    def initialise_global_backbone(self, donor: TrainableMethod) -> None:
        """Copy ``donor``'s trained ResNet-22 (``donor.network().backbone``) into the global backbone,
        and its class weights (``donor.network().head``, a linear layer on the pooled final map) into the
        saliency head on the final map: the donor's class activation maps become the starting saliency
        (less the head's bias, which the published 1×1 convolution does not have).

        Raises:
            ValueError: the donor has no ResNet-22 of the same architecture (width, strides).
        """
        source = getattr(donor.network(), "backbone", None)
        target = self.global_backbone()
        if source is None or type(source) is not type(target):
            kind = type(target).__name__
            raise ValueError(f"{self.model_label}: global_init={donor.name!r} has no {kind} to start from")
        shapes = {k: tuple(v.shape) for k, v in source.state_dict().items()}
        wanted = {k: tuple(v.shape) for k, v in target.state_dict().items()}
        if shapes != wanted:
            raise ValueError(
                f"{self.model_label}: the ResNet-22 of {donor.name!r} does not fit its global network (give both the "
                "same width option)"
            )
        target.load_state_dict(source.state_dict())
        head, conv = getattr(donor.network(), "head", None), self.final_saliency_head()
        if isinstance(head, nn.Linear) and head.weight.shape == conv.weight.shape[:2]:
            with torch.no_grad():
                conv.weight.copy_(head.weight[:, :, None, None])

    def warmup_modules(self) -> tuple[str, ...]:
        """The submodules a warm-up stage trains: what does not come from ``global_init`` (heads and any
        network besides the global ResNet-22)."""
        raise NotImplementedError

    def warmup_stages(self, loss: str | None, maps: tuple[str, ...] = ()) -> tuple[TrainingStage, ...]:
        """A first stage training only :meth:`warmup_modules` with the global ResNet-22 frozen, for
        ``training_config.warmup_epochs`` of the epochs at ``warmup_lr_factor`` times the learning rate
        (``loss`` and ``maps`` as :class:`~wsl_bench.saliency.TrainingStage`'s); none when ``warmup_epochs`` is 0.

        Why: the saliency head on the final map starts from the donor's class weights without the
        donor's bias (the published 1×1 convolution has none), so the top-pooled probabilities of
        every image start near 1 (measured: GMIC's ``y_global`` 0.998 / 0.986 on validation images,
        loss 9.3), and fine-tuning everything at once spends its first steps changing the backbone to
        bring them down. Training the new parts first, on a frozen backbone, lets them fit to the
        donor's features before the backbone moves.
        """
        tc = self.training_config
        if not tc.warmup_epochs:
            return ()
        return (TrainingStage("warmup", loss=loss, trainable=self.warmup_modules(), epochs_fraction=tc.warmup_epochs,
                              lr_factor=tc.warmup_lr_factor, maps=maps),)

    def training_augmentation(self) -> CropJitter | None:
        """Random crop-window jitter (``crop_jitter`` pixels at 2944 rows, scaled), or ``None`` when 0."""
        if self.training_config.crop_jitter <= 0:
            return None
        return CropJitter.scaled(self.training_config.crop_jitter, self.image_size)


class VariantFactory:
    """What the registry holds for ``name.tag``: builds the base model with the variant's row.

    Not a class: calling it returns an instance of :attr:`base`; attributes it does not set itself
    (``trainable``, ``map_range``, ``split_options``, ``network_class`` ...) are the base class's.
    """

    def __init__(self, base: type[PublishedModelMethod], variant: WeightVariant) -> None:
        self.base = base
        self.variant = variant
        self.name = f"{base.name}.{variant.tag}"
        self.description = variant.description
        self.published_file = variant.published_file
        self.requires_weights = variant.requires_weights
        self.__doc__ = (
            f"{variant.description}. The file is not distributed with wsl-bench: pass ``weights=PATH`` or put it\n"
            f"in ``$WSL_BENCH_WEIGHTS_DIR``; obtain it from {base.published_source}."
        )

    @property
    def config_defaults(self) -> dict[str, Any]:
        """The options the base class defaults to, overridden by the variant's."""
        return {**self.base.config_defaults, **self.variant.options}

    def __call__(self, *args: Any, **options: Any) -> PublishedModelMethod:
        return self.base(*args, variant=self.variant, **options)

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__"):
            raise AttributeError(attr)
        return getattr(self.base, attr)

    def __repr__(self) -> str:
        return f"<{self.name}: {self.base.__name__} with {self.variant!r}>"


def register_variant(base: type[PublishedModelMethod], variant: WeightVariant) -> VariantFactory:
    """Register ``base.name + "." + variant.tag`` as a :class:`VariantFactory` and return it."""
    factory = VariantFactory(base, variant)
    METHODS.register(factory.name, factory)
    return factory
