"""``wsl-bench verify glam|gmic --published PATH``: this suite's GLAM or GMIC against the user's own
checkout of the published code, on the same random weights and the same random input.

The reference files of the fidelity tests (``tests/test_fidelity_*.py``) are not distributed, so a
reviewer cannot rerun those tests. This check needs only a clone of the published repository
(``git clone https://github.com/nyukat/GMIC``), which it imports from where it lies, never copying it:

1. the checkout's top folder goes first on ``sys.path`` while its ``src`` package is imported, and
   every ``src`` module is dropped from ``sys.modules`` again afterwards (:func:`published_checkout`);
2. the published model is built with the published inference parameters (those of the repository's
   ``src/scripts/run_model.py``), ours with the same configuration (published strides; at another
   ``--size`` or ``--crop`` both run the published code's pixel geometry on that input);
3. our network gets random weights from ``seed`` (BatchNorm statistics and affine parameters
   randomised too, so no layer is an identity) and its state dict is loaded into the published model
   by name, strictly: the parameter names are part of what is checked;
4. the published window search is corrected in memory: its ``get_max_window`` computes the row of the
   best window as ``index / width``, true division since PyTorch 1.2, which makes every column 0; it
   is replaced, in the imported module only, by :func:`floor_division_window_search` (the behaviour
   the authors ran, see ``methods/glam.md``). The user's files are never written;
5. both forward passes run on one standardised random image, float32 on the CPU, and every output the
   published model keeps is compared: the largest absolute difference per output and engine (ours
   fast and plain), and the patch locations exactly.
"""

from __future__ import annotations

import contextlib
import importlib
import sys
import types
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from wsl_bench.methods.geometry import PUBLISHED_IMAGE_SIZE
from wsl_bench.methods.glam import GLAM_REPOSITORY, GlamMethod, GlamOutputs
from wsl_bench.methods.gmic import GMIC_REPOSITORY, GmicMethod, GmicOutputs

DEFAULT_TOLERANCE = 1e-4
"""Largest absolute difference a faithful float32 CPU implementation shows (patch locations: none)."""

ENGINES: tuple[str, ...] = ("fast", "plain")
"""Our two inference paths: the fused engine every benchmark runs, and the plain modules."""

PUBLISHED_PACKAGE = "src"
"""The top-level package of both published repositories (``src/modeling/...``)."""

STAND_INS: Mapping[str, str] = {
    "cv2": "GLAM's src/modeling/common_functions.py imports it to resize numpy images, which the forward pass "
           "never does",
}
"""Modules the published code imports but its forward pass never uses: a placeholder stands in for them
where they are not installed (using one raises), so a reviewer need not install OpenCV to run a check."""


class VerifyError(Exception):
    """The published code could not be imported, built or run as laid out; the message says why."""


class VerifyUsageError(VerifyError):
    """Arguments that cannot work: a path that is not a checkout, a crop that does not fit the image."""


class NotACheckout(VerifyUsageError):
    """The path given is not a checkout of the published repository."""


# ---------------------------------------------------------------------------------------------------------------
# The published models: where they are, how they are built, what they keep
# ---------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PublishedModel:
    """How one published model is found in its repository and what its forward pass keeps.

    Attributes:
        name: ``"glam"`` or ``"gmic"``.
        repository: where the published code lives.
        module: the module defining the model class (imported from the checkout).
        class_name: the model class; built as ``class_name(parameters)``.
        window_module: the module whose ``get_max_window`` has the window-search defect.
        parameters: the published inference parameters (``src/scripts/run_model.py``) at 2944×1920.
        crop_parameter: the parameter holding the crop shape.
        method: our method class.
        outputs: ``(ours, published model, returned value) -> {output name: (ours, published)}``.
        searched_map: our map the windows are searched on (its size is the published ``cam_size``).
    """

    name: str
    repository: str
    module: str
    class_name: str
    window_module: str
    parameters: Mapping[str, Any]
    crop_parameter: str
    method: type
    outputs: Callable[[Any, nn.Module, Any], dict[str, tuple[Any, Any]]]
    searched_map: Callable[[Any], torch.Tensor]

    @property
    def published_crop(self) -> int:
        return int(self.parameters[self.crop_parameter][0])

    @property
    def source_file(self) -> Path:
        """The model's file relative to the checkout (``src/modeling/gmic.py``)."""
        return Path(*self.module.split(".")).with_suffix(".py")


def _glam_outputs(ours: GlamOutputs, model: nn.Module, returned: Any) -> dict[str, tuple[Any, Any]]:
    """GLAM's outputs, named as the published code names them (and the reference outputs of
    ``docs/published_reference.md``)."""
    glob = ours.glob
    return {
        "y_global": (glob.y_global, returned),
        "y_cam_logits": (glob.y_cam_logits, torch.stack(list(model.y_cam_logits))),  # 4×N×2
        "cam_level1": (glob.cam_level1, model.x_layer1),
        "cam_level2": (glob.cam_level2, model.x_layer2),
        "cam_level3": (glob.cam_level3, model.x_layer3),
        "cam_mean": (glob.cam_mean, model.downsampled_map),
        "saliency_map_global": (glob.saliency_map_global, model.saliency_map_global),
        "patches": (ours.patches, model.patches),
        "raw_local_cam": (ours.local_maps.flatten(0, 1), model.raw_local_CAM),  # (N·K)×2×hl×wl
        "saliency_map": (ours.saliency_map, model.saliency_map),
    }


def _gmic_outputs(ours: GmicOutputs, model: nn.Module, returned: Any) -> dict[str, tuple[Any, Any]]:
    return {
        "y_fusion": (ours.y_fusion, returned),
        "y_global": (ours.y_global, model.y_global),
        "y_local": (ours.y_local, model.y_local),
        "saliency_map": (ours.saliency_map, model.saliency_map),
        "patch_attention": (ours.patch_attention, model.patch_attns),
        "patches": (ours.patches, model.patches),
    }


# Published parameters: nyukat/GLAM and nyukat/GMIC, src/scripts/run_model.py (main and start_experiment).
# Keys the forward pass does not read (paths, crop noise) are left out; GMIC's later code versions also
# read post_processing_dim and num_classes.
PUBLISHED_MODELS: dict[str, PublishedModel] = {
    "glam": PublishedModel(
        name="glam",
        repository=GLAM_REPOSITORY,
        module="src.modeling.glam",
        class_name="MILSingleImageModel",
        window_module="src.modeling.common_functions",
        parameters={"device_type": "cpu", "gpu_number": 0, "cam_size": (184, 120), "top_k_per_class": 1,
                    "crop_shape": (512, 512), "percent_k": 0.03, "detection_pooling_percent_k": 0.3},
        crop_parameter="crop_shape",
        method=GlamMethod,
        outputs=_glam_outputs,
        searched_map=lambda outputs: outputs.glob.saliency_map_global,
    ),
    "gmic": PublishedModel(
        name="gmic",
        repository=GMIC_REPOSITORY,
        module="src.modeling.gmic",
        class_name="GMIC",
        window_module="src.utilities.tools",
        parameters={"device_type": "cpu", "gpu_number": 0, "cam_size": (46, 30), "K": 6, "crop_shape": (256, 256),
                    "percent_t": 0.02, "post_processing_dim": 256, "num_classes": 2, "use_v1_global": False},
        crop_parameter="crop_shape",
        method=GmicMethod,
        outputs=_gmic_outputs,
        searched_map=lambda outputs: outputs.saliency_map,
    ),
}


# ---------------------------------------------------------------------------------------------------------------
# Importing the user's checkout
# ---------------------------------------------------------------------------------------------------------------
def checkout_root(path: str | Path, model: PublishedModel) -> Path:
    """The checkout's top folder (the one holding ``src/``); its ``src`` folder is accepted too.

    Raises:
        NotACheckout: no ``src/modeling/<model>.py`` there.
    """
    path = Path(path).expanduser().resolve()
    for root in (path, path.parent):
        if (root / model.source_file).is_file():
            return root
    raise NotACheckout(f"{path} is not a checkout of {model.repository}: it has no {model.source_file.as_posix()} "
                      f"(clone it with `git clone {model.repository}` and pass the clone's folder)")


def _package_modules(package: str) -> dict[str, types.ModuleType]:
    return {k: v for k, v in sys.modules.items() if k == package or k.startswith(package + ".")}


class _Placeholder(types.ModuleType):
    """Stands in for a module the published forward pass imports but never uses (see :data:`STAND_INS`)."""

    def __getattr__(self, attr: str) -> Any:
        raise AttributeError(f"{self.__name__} is not installed; wsl-bench verify stands in for it because "
                             f"{STAND_INS[self.__name__]}: install it to use {self.__name__}.{attr}")


@contextlib.contextmanager
def published_checkout(root: Path, package: str = PUBLISHED_PACKAGE) -> Iterator[list[str]]:
    """Import ``package`` from ``root`` only, for the duration of the block.

    ``root`` goes first on ``sys.path``; modules of ``package`` imported before (another project's
    ``src``) are set aside and put back after, and the checkout's are dropped, so nothing of it stays
    importable. No bytecode is written: the checkout is left exactly as it was. Yields the list of
    placeholder modules used (:data:`STAND_INS`), filled as imports need them (:func:`import_published`).
    """
    saved = _package_modules(package)
    for name in saved:
        del sys.modules[name]
    blocked = {name: sys.modules[name] for name in STAND_INS if name in sys.modules}  # e.g. None: refused
    placeholders: list[str] = []
    write_bytecode = sys.dont_write_bytecode
    sys.dont_write_bytecode = True  # no __pycache__ folders in the user's checkout
    sys.path.insert(0, str(root))
    importlib.invalidate_caches()
    try:
        yield placeholders
    finally:
        sys.dont_write_bytecode = write_bytecode
        sys.path.remove(str(root))
        for name in _package_modules(package):
            del sys.modules[name]
        for name in placeholders:
            sys.modules.pop(name, None)
        sys.modules.update(saved)
        sys.modules.update(blocked)
        importlib.invalidate_caches()


def import_published(root: Path, name: str, placeholders: list[str]) -> types.ModuleType:
    """Import module ``name`` of the checkout at ``root`` (inside :func:`published_checkout`).

    Raises:
        VerifyError: it does not import, or it was found somewhere other than ``root``.
    """
    while True:
        try:
            module = importlib.import_module(name)
            break
        except ModuleNotFoundError as exc:
            missing = (exc.name or "").split(".")[0]
            if missing in STAND_INS and sys.modules.get(missing) is None:
                sys.modules[missing] = _Placeholder(missing)
                placeholders.append(missing)
                for partial in _package_modules(name.split(".")[0]):  # half-imported modules: import again
                    del sys.modules[partial]
                continue
            raise VerifyError(f"the published code ({name}) imports {exc.name!r}, which is not installed here; "
                              "install it and run the check again") from exc
        except Exception as exc:  # the user's checkout may fail in any way: say where
            raise VerifyError(f"importing {name} from {root} failed: {type(exc).__name__}: {exc}") from exc
    origin = Path(getattr(module, "__file__", "") or "").resolve()
    if not origin.is_relative_to(root):
        raise VerifyError(f"{name} was imported from {origin}, not from the checkout {root}")
    return module


def floor_division_window_search(
    input_image: torch.Tensor, window_shape: Sequence[int], pooling_logic: str = "avg"
) -> torch.Tensor:
    """The published ``get_max_window`` with its row computed by floor division.

    Args:
        input_image: ``N×C×h×w`` map.
        window_shape: ``(wh, ww)`` window in map cells.
        pooling_logic: ``"avg"``, the only one the published models use.

    Returns:
        ``N×C×2`` int64 upper-left corners (row, column) of the window with the largest mean, the first
        in row-major order on ties (``torch.max``, as published).
    """
    if pooling_logic != "avg":
        raise ValueError(f"the published models search windows by 'avg' pooling, got {pooling_logic!r}")
    pooled = F.avg_pool2d(input_image, tuple(window_shape), stride=1)
    n, c, _, width = pooled.shape
    index = pooled.reshape(n, c, -1).max(dim=-1).indices
    # the defect: `index / width` is true division since PyTorch 1.2 (row fractional, column 0)
    return torch.stack([torch.div(index, width, rounding_mode="floor"), index % width], dim=-1)


@contextlib.contextmanager
def corrected_window_search(module: types.ModuleType) -> Iterator[None]:
    """Replace ``module.get_max_window`` by :func:`floor_division_window_search` in memory, for the block."""
    original = getattr(module, "get_max_window", None)
    if original is None:
        raise VerifyError(f"{module.__name__} has no get_max_window: is this the published code?")
    module.get_max_window = floor_division_window_search
    try:
        yield
    finally:
        module.get_max_window = original


# ---------------------------------------------------------------------------------------------------------------
# Same weights, same input
# ---------------------------------------------------------------------------------------------------------------
def randomise_batchnorm(network: nn.Module, generator: torch.Generator) -> None:
    """Give every BatchNorm random affine parameters and running statistics (scale and variance in
    [0.5, 1.5], shift and mean ~ N(0, 0.1²)), so a mix-up of BatchNorm layers changes the outputs."""
    with torch.no_grad():
        for module in network.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.affine and module.track_running_stats:
                module.weight.copy_(torch.rand(module.weight.shape, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(module.bias.shape, generator=generator) * 0.1)
                module.running_mean.copy_(torch.randn(module.running_mean.shape, generator=generator) * 0.1)
                module.running_var.copy_(torch.rand(module.running_var.shape, generator=generator) + 0.5)


def copy_weights(state: Mapping[str, torch.Tensor], model: nn.Module) -> int:
    """Load our state dict into the published model by name, strictly; returns the tensor count.

    Raises:
        VerifyError: names or shapes differ (listing the first few).
    """
    theirs = model.state_dict()
    only_ours, only_theirs = sorted(set(state) - set(theirs)), sorted(set(theirs) - set(state))
    if only_ours or only_theirs:
        raise VerifyError("the parameter names differ: only in ours " + (", ".join(only_ours[:5]) or "none")
                          + "; only in the published model " + (", ".join(only_theirs[:5]) or "none"))
    shapes = [f"{k} (ours {tuple(v.shape)}, published {tuple(theirs[k].shape)})"
              for k, v in state.items() if tuple(v.shape) != tuple(theirs[k].shape)]
    if shapes:
        raise VerifyError("parameter shapes differ: " + ", ".join(shapes[:5]))
    model.load_state_dict(state, strict=True)
    return len(state)


def random_image(size: tuple[int, int], seed: int) -> torch.Tensor:
    """``1×1×H×W`` float32 noise from ``seed``, standardised (mean 0, std 1) as every input is."""
    image = torch.randn(1, 1, *size, generator=torch.Generator().manual_seed(seed))
    return (image - image.mean()) / image.std()


# ---------------------------------------------------------------------------------------------------------------
# Comparing
# ---------------------------------------------------------------------------------------------------------------
def _as_tensor(value: Any) -> torch.Tensor:
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value)
    if isinstance(value, (list, tuple)):
        return torch.stack([_as_tensor(v) for v in value])
    return value.detach().cpu()


def largest_difference(ours: Any, published: Any) -> float:
    """Largest absolute difference of two arrays of one shape (``inf`` when the shapes differ)."""
    a, b = _as_tensor(ours).double(), _as_tensor(published).double()
    if a.shape != b.shape:
        return float("inf")
    return float((a - b).abs().max()) if a.numel() else 0.0


def patch_locations(value: Any) -> list[list[list[int]]]:
    """``N×K×2`` corners as nested lists of ints (the published code keeps rounded floats)."""
    return np.rint(_as_tensor(value).double().numpy()).astype(np.int64).tolist()


@dataclass
class VerifyResult:
    """What :func:`verify` found.

    Attributes:
        model: ``"glam"`` or ``"gmic"``.
        differences: ``{output: {engine: largest absolute difference}}``.
        locations: ``{"published" | engine: N×K×2 patch corners (row, column) in pixels}``.
        notes: what was done to run the published code (parameters, weights, window search, stand-ins).
        tolerance: the largest difference allowed.
    """

    model: str
    differences: dict[str, dict[str, float]] = field(default_factory=dict)
    locations: dict[str, list] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    tolerance: float = DEFAULT_TOLERANCE

    @property
    def locations_equal(self) -> bool:
        return all(v == self.locations["published"] for v in self.locations.values())

    @property
    def failures(self) -> list[str]:
        """The outputs above the tolerance (and ``patch_locations`` when they differ)."""
        bad = [name for name, by_engine in self.differences.items()
               if any(not d <= self.tolerance for d in by_engine.values())]  # `not <=` also catches NaN
        return bad + ([] if self.locations_equal else ["patch_locations"])

    @property
    def ok(self) -> bool:
        return not self.failures

    def format(self) -> str:
        """The report ``wsl-bench verify`` prints."""
        engines = list(next(iter(self.differences.values()), {}))
        width = max(len(n) for n in [*self.differences, "output"]) + 2
        lines = [f"verify {self.model}:", *(f"  {note}" for note in self.notes),
                 f"largest absolute difference per output (tolerance {self.tolerance:g}):",
                 "  " + "output".ljust(width) + "".join(e.ljust(12) for e in engines)]
        for name, by_engine in self.differences.items():
            cells = "".join(f"{by_engine[e]:<12.3g}" for e in engines)
            lines.append(f"  {name.ljust(width)}{cells}" + ("" if name not in self.failures else "  above tolerance"))
        lines.append("patch locations (upper-left row, column in pixels):")
        published = self.locations["published"]
        for key, value in self.locations.items():
            shown = value if key == "published" or value != published else "the same"
            lines.append(f"  {key.ljust(width)}{shown}")
        if self.ok:
            lines.append(f"result: faithful: every output within {self.tolerance:g}, patch locations equal")
        else:
            lines.append(f"result: NOT faithful: {', '.join(self.failures)}")
        return "\n".join(lines)


def verify(
    model: str,
    published: str | Path,
    size: tuple[int, int] | None = None,
    crop: int | None = None,
    seed: int = 0,
    tolerance: float = DEFAULT_TOLERANCE,
    engines: Sequence[str] = ENGINES,
) -> VerifyResult:
    """Run our ``model`` and the published one from the checkout ``published`` on the same random
    weights and input, and compare every output the published model keeps.

    Args:
        model: ``"glam"`` or ``"gmic"``.
        published: the user's checkout of the published repository (its top folder or its ``src``).
        size: ``(H, W)`` of the input; ``None`` = the published 2944×1920.
        crop: patch side in pixels; ``None`` = the published one (512 GLAM, 256 GMIC).
        seed: seeds the weights and the input.
        tolerance: the largest absolute difference allowed per output.
        engines: which of our inference paths to compare (:data:`ENGINES`).

    Raises:
        VerifyError: the checkout cannot be imported, built or run, or its parameter names differ.
    """
    spec = PUBLISHED_MODELS[model]
    unknown = sorted(set(engines) - set(ENGINES))
    if unknown or not engines:
        raise ValueError(f"engines must be among {ENGINES}, got {list(engines)}")
    root = checkout_root(published, spec)
    size = tuple(int(v) for v in (size or PUBLISHED_IMAGE_SIZE))
    crop = int(crop or spec.published_crop)
    result = VerifyResult(model, tolerance=tolerance)

    # ours: the published configuration (published strides, crop in pixels), random weights from seed
    ours = spec.method(seed=seed, image_size=size, geometry="pixels", patch_side=crop)
    randomise_batchnorm(ours.network(), torch.Generator().manual_seed(seed + 1))
    image = random_image(size, seed)
    our_outputs = {}
    for engine in engines:
        ours.fast = engine == "fast"
        our_outputs[engine] = ours.forward(image.clone())

    parameters = dict(spec.parameters)
    parameters[spec.crop_parameter] = (crop, crop)
    map_size = tuple(int(v) for v in spec.searched_map(our_outputs[engines[0]]).shape[-2:])
    if size != PUBLISHED_IMAGE_SIZE:  # the published code asserts that the map it searches has this size
        parameters["cam_size"] = map_size
    # the window in map cells, as the published search sizes it
    window = [int(np.round(crop * m / s)) for m, s in zip(map_size, size, strict=True)]
    if not all(1 <= w <= m for w, m in zip(window, map_size, strict=True)):
        raise VerifyUsageError(f"a {crop}-pixel crop is a {window[0]}×{window[1]} window on the {map_size[0]}×"
                               f"{map_size[1]} map of a {size[0]}×{size[1]} image: the published window search "
                               "needs at least one cell that fits in the map; choose another --crop or --size")

    with published_checkout(root) as placeholders:
        module = import_published(root, spec.module, placeholders)
        window_module = import_published(root, spec.window_module, placeholders)
        try:
            network = getattr(module, spec.class_name)(parameters)
        except Exception as exc:
            raise VerifyError(f"building {spec.module}.{spec.class_name}(parameters) failed: "
                              f"{type(exc).__name__}: {exc}") from exc
        count = copy_weights(ours.network().state_dict(), network)
        network.eval()
        with corrected_window_search(window_module), torch.no_grad():
            try:
                returned = network(image.clone())
            except Exception as exc:
                raise VerifyError(f"the published forward pass failed: {type(exc).__name__}: {exc}") from exc

    result.notes += [
        f"published code: {spec.module}.{spec.class_name} imported from {root} ({spec.repository})",
        f"input: 1×1×{size[0]}×{size[1]}, random (seed {seed}), standardised; float32 on the CPU",
        "published parameters: " + ", ".join(f"{k}={v}" for k, v in parameters.items()
                                             if k not in ("device_type", "gpu_number")),
        f"weights: {count} tensors, random (seed {seed}; BatchNorm statistics randomised), copied by name into "
        "both models",
        f"window search: {spec.window_module}.get_max_window replaced in memory by its floor-division form "
        f"(the published defect, methods/{model}.md); no file of the checkout is changed",
        *(f"{name}: not installed, a placeholder stood in ({STAND_INS[name]})" for name in placeholders),
    ]
    result.locations["published"] = patch_locations(network.patch_locations)
    for engine, outputs in our_outputs.items():
        for name, (mine, theirs) in spec.outputs(outputs, network, returned).items():
            result.differences.setdefault(name, {})[engine] = largest_difference(mine, theirs)
        result.locations[engine] = patch_locations(outputs.patch_locations)
    return result
