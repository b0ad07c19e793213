"""Named run sizes: image size, split sizes and training budget, from seconds (tiny) to the paper (full)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from .registry import UnknownNameError


@dataclass(frozen=True)
class Preset:
    """One run size.

    Attributes:
        name: preset name (``--preset``).
        image_size: ``(H, W)`` every image is produced or resized to.
        n_train, n_val, n_test: images per split of the synthetic dataset.
        epochs: training epochs of trainable methods.
        batch_size: training batch size.
        description: one line for help texts.
    """

    name: str
    image_size: tuple[int, int]
    n_train: int
    n_val: int
    n_test: int
    epochs: int
    batch_size: int
    description: str

    def to_dict(self) -> dict:
        return asdict(self)


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset("tiny", (256, 160), 48, 8, 8, 2, 8, "seconds; for tests and smoke runs"),
        Preset("cpu", (736, 480), 400, 40, 60, 8, 8, "the default benchmark, sized for a 2-core CPU"),
        Preset("full", (2944, 1920), 2000, 200, 400, 30, 4, "the published 2944×1920 resolution; needs a GPU"),
    )
}

DEFAULT_PRESET = "cpu"


def get_preset(name: str) -> Preset:
    """The preset called ``name``.

    Raises:
        UnknownNameError: listing the known presets.
    """
    try:
        return PRESETS[name]
    except KeyError:
        raise UnknownNameError(f"unknown preset {name!r}; known presets: {', '.join(PRESETS)}") from None
