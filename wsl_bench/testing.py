"""Conformance checks any method or dataset plugin can run on itself.

A plugin author calls, in their own test suite::

    from wsl_bench.testing import check_method, check_dataset
    check_method("my-method")                 # or check_method(MyMethod)
    check_dataset("my-dataset", root=...)

Each check raises ``AssertionError`` with a message saying which rule of the contract failed.
The project's own test suite runs them over every registered method and dataset.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from wsl_bench.data import MammogramDataset
from wsl_bench.saliency import CLASSES, MAP_RANGES, SaliencyMethod, SaliencyOutput

CONFORMANCE_IMAGE_SIZE = (256, 160)
"""Small enough for a CPU test, large enough for every built-in architecture (the tiny preset)."""


def conformance_images(n: int = 2, size: tuple[int, int] = CONFORMANCE_IMAGE_SIZE, seed: int = 0) -> torch.Tensor:
    """``n×1×H×W`` standardised test images with structure (a bright blob on smooth background),
    so gradient methods see non-trivial inputs."""
    generator = torch.Generator().manual_seed(seed)
    h, w = size
    rows = torch.linspace(-1, 1, h).view(h, 1)
    cols = torch.linspace(-1, 1, w).view(1, w)
    images = []
    for _ in range(n):
        centre = torch.rand(2, generator=generator) * 1.2 - 0.6
        blob = torch.exp(-(((rows - centre[0]) ** 2 + (cols - centre[1]) ** 2) / 0.02))
        noise = torch.randn(h, w, generator=generator) * 0.3
        image = blob + 0.3 * (cols + 1) + noise
        images.append((image - image.mean()) / image.std())
    return torch.stack(images)[:, None].float()


def _make(method: str | Callable[..., SaliencyMethod], **options: Any) -> SaliencyMethod:
    if isinstance(method, str):
        from wsl_bench.registry import create_method

        instance = create_method(method, **options)
        instance.name = instance.name or method
        return instance
    return method(**options)


def _has_graph(value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        return value.requires_grad or value.grad_fn is not None
    if isinstance(value, dict):
        return any(_has_graph(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(_has_graph(v) for v in value)
    return False


def check_output(output: SaliencyOutput, batch_size: int, declared_range: str | None = None) -> None:
    """Shapes, value ranges, finiteness and detachment of one output."""
    assert isinstance(output, SaliencyOutput), f"predict must return a SaliencyOutput, got {type(output).__name__}"
    assert output.map_range in MAP_RANGES, f"map_range {output.map_range!r} is not one of {MAP_RANGES}"
    if declared_range is not None:
        assert output.map_range == declared_range, (
            f"output map_range {output.map_range!r} differs from the class's declared {declared_range!r}"
        )
    try:
        output.validate(batch_size)
    except ValueError as exc:
        raise AssertionError(f"invalid output: {exc}") from None
    scores = output.scores.detach().float()
    assert (scores >= 0).all() and (scores <= 1).all(), "scores must be probabilities in [0, 1]"
    if output.map_range == "probability":
        maps = output.maps.detach().float()
        assert (maps >= -1e-6).all() and (maps <= 1 + 1e-6).all(), "a 'probability' map must lie in [0, 1]"
    assert output.maps.shape[-2] > 0 and output.maps.shape[-1] > 0, "maps must have a spatial extent"
    assert not _has_graph(output.maps) and not _has_graph(output.scores) and not _has_graph(output.extras), (
        "predict must not return tensors that keep an autograd graph (use torch.inference_mode / detach)"
    )


def check_method(
    method: str | Callable[..., SaliencyMethod],
    image_size: tuple[int, int] = CONFORMANCE_IMAGE_SIZE,
    device: str = "cpu",
    atol: float = 1e-5,
    **options: Any,
) -> None:
    """Run every rule of the saliency contract on ``method`` (a registered name or a class).

    Rules: valid output for a batch of 2; a batch of 2 equals two batches of 1 (maps and scores,
    within ``atol``); two instances with the same seed give the same output; the input is not
    modified; no autograd graph is kept.
    """
    options = {"device": device, "seed": 0, "image_size": image_size, **options}
    first = _make(method, **options)
    images = conformance_images(2, image_size).to(device)
    original = images.clone()
    batch = first.predict(images)
    check_output(batch, 2, type(first).map_range)
    assert torch.equal(images, original), "predict modified its input images"

    for index in range(2):
        single = first.predict(images[index : index + 1])
        check_output(single, 1, type(first).map_range)
        assert single.maps.shape[-2:] == batch.maps.shape[-2:], "map size depends on the batch size"
        assert torch.allclose(single.maps.float(), batch.maps[index : index + 1].float(), atol=atol, rtol=1e-4), (
            f"image {index}: a batch of 2 gives different maps than a batch of 1 "
            f"(max difference {float((single.maps.float() - batch.maps[index:index + 1].float()).abs().max()):.3g})"
        )
        assert torch.allclose(single.scores.float(), batch.scores[index : index + 1].float(), atol=atol, rtol=1e-4), (
            f"image {index}: a batch of 2 gives different scores than a batch of 1"
        )

    second = _make(method, **options)
    again = second.predict(images)
    assert torch.allclose(again.maps.float(), batch.maps.float(), atol=atol, rtol=1e-4), (
        "two instances built with the same seed give different maps (non-deterministic method)"
    )
    assert torch.allclose(again.scores.float(), batch.scores.float(), atol=atol, rtol=1e-4), (
        "two instances built with the same seed give different scores"
    )


def check_dataset(dataset: MammogramDataset, max_samples: int = 8) -> None:
    """Rules for dataset plugins: unique ids, valid samples, labels consistent with masks."""
    ids = dataset.ids()
    assert len(ids) == len(set(ids)), "sample ids must be unique"
    for sample_id in ids[:max_samples]:
        sample = dataset.get(sample_id)
        assert sample.id == sample_id, f"sample {sample_id!r} reports id {sample.id!r}"
        assert sample.image.dtype == np.float32 and sample.image.ndim == 3 and sample.image.shape[0] == 1, (
            f"{sample_id}: image must be float32 1×H×W"
        )
        if dataset.image_size is not None:
            assert sample.size == tuple(dataset.image_size), (
                f"{sample_id}: image is {sample.size}, dataset promises {dataset.image_size}"
            )
        assert abs(float(sample.image.mean())) < 1e-2 and abs(float(sample.image.std()) - 1) < 1e-2, (
            f"{sample_id}: image must be standardised (mean 0, std 1)"
        )
        for cls in CLASSES:
            mask, label = sample.masks.get(cls), sample.labels.get(cls)
            if mask is not None:
                assert mask.dtype == bool, f"{sample_id}: {cls} mask must be bool"
                if mask.any():
                    assert label == 1, f"{sample_id}: a {cls} lesion is drawn but the {cls} label is {label}"
