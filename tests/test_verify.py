"""``wsl-bench verify glam|gmic --published PATH`` (issue 16, item 13) on stand-in checkouts.

A stand-in is a small package laid out like the published repository (``src/modeling/gmic.py`` with
``GMIC(parameters)``, ``src/modeling/modules.py``, ``src/utilities/tools.py``; for GLAM
``src/modeling/glam.py`` with ``MILSingleImageModel``, ``modules.py``, ``common_functions.py``), with
the published attribute and parameter names and the published window-search defect (``/`` on the
flat index). Its model delegates the networks to this suite's own modules, so a correct ``verify``
finds it faithful; a perturbed copy, a renamed parameter and an uncorrected window search must fail.
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest
import torch

from wsl_bench.cli import main
from wsl_bench.methods import verify as verify_module
from wsl_bench.methods.verify import floor_division_window_search

# Small inputs and crops: both models keep the published strides (GLAM: 16×10 map, GMIC: 6×4 map).
RUNS = {
    "glam": ["--size", "256x160", "--crop", "32"],
    "gmic": ["--size", "368x240", "--crop", "64"],
}

TOOLS = '''
import torch
import torch.nn.functional as F
{extra_import}

def get_max_window(input_image, window_shape, pooling_logic="avg"):
    pool_map = F.avg_pool2d(input_image, window_shape, stride=1)
    n, c, _, width = pool_map.shape
    _, index = torch.max(pool_map.view(n, c, -1), -1)
    row = index / width          # true division on current PyTorch: the published defect
    column = index - row * width  # hence 0
    return torch.cat([row.unsqueeze(-1), column.unsqueeze(-1)], dim=-1)
'''

MODULES = '''
import numpy as np
import torch
import {window_import} as windows


def greedy_windows(saliency, cam_size, crop_shape, image_size, count):
    """The published greedy search; corners in input pixels as rounded floats (N×K×2 numpy)."""
    h, w = cam_size
    H, W = image_size
    n, c, hh, ww = saliency.shape
    assert (hh, ww) == (h, w), "h_h!=h"
    window = (int(np.round(crop_shape[0] * h / H)), int(np.round(crop_shape[1] * w / W)))
    flat = saliency.reshape(n, c, -1)
    low = flat.min(dim=2, keepdim=True)[0].unsqueeze(-1)
    high = flat.max(dim=2, keepdim=True)[0].unsqueeze(-1)
    current = ((saliency - low) / (high - low)).sum(dim=1, keepdim=True)
    corners = []
    for _ in range(count):
        corner = windows.get_max_window(current, window, "avg")  # N×1×2, looked up at call time
        corners.append(corner)
        mask = torch.ones_like(current)
        for i in range(n):
            r, q = (int(v) for v in corner[i, 0])
            mask[i, :, r:r + window[0], q:q + window[1]] = 0
        current = current * mask
    corners = torch.cat(corners, dim=1).double().numpy()
    return np.around(corners / np.array([h, w]) * np.array([H, W]))
'''

GMIC = '''
import torch
from torch import nn

import src.modeling.modules as m
from wsl_bench.methods import backbones as bb
from wsl_bench.methods.gmic import GmicConfig, GmicNetwork, gmic_heads

PERTURBATION = {perturbation}


class GMIC(nn.Module):
    def __init__(self, parameters):
        super().__init__()
        self.experiment_parameters = parameters
        self.cam_size = parameters["cam_size"]
        config = GmicConfig(geometry="pixels", patch_side=parameters["crop_shape"][0], num_patches=parameters["K"],
                            percent_t=parameters["percent_t"])
        ours = GmicNetwork(config)
        self.__dict__["ours"] = ours  # not a submodule: its children are this model's, by their names
        for name, child in ours.named_children():
            self.add_module({rename}, child)

    def forward(self, x_original):
        ours, crop = self.__dict__["ours"], self.experiment_parameters["crop_shape"]
        h_g, self.saliency_map, self.y_global = ours.run_global(x_original)
        self.patch_locations = m.greedy_windows(self.saliency_map, self.cam_size, crop, x_original.shape[-2:],
                                                self.experiment_parameters["K"])
        locations = torch.from_numpy(self.patch_locations).long()
        crops = bb.extract_patches(x_original, locations, tuple(crop))
        self.patches = crops.data.cpu().numpy()
        n, k, ph, pw = crops.shape
        h_crops = ours.dn_resnet(crops.reshape(n * k, 1, ph, pw)).mean(dim=(2, 3)).view(n, k, -1)
        out = gmic_heads(ours, h_g, self.saliency_map, self.y_global, locations, crops, h_crops)
        self.patch_attns, self.y_local = out.patch_attention, out.y_local
        self.y_fusion = out.y_fusion + PERTURBATION
        return self.y_fusion
'''

GLAM = '''
import torch
from torch import nn

import src.modeling.common_functions as common_functions
import src.modeling.modules as m
from wsl_bench.methods import backbones as bb
from wsl_bench.methods.glam import GlamConfig, GlamNetwork, fuse_maps

PERTURBATION = {perturbation}


class MILSingleImageModel(nn.Module):
    def __init__(self, parameters):
        super().__init__()
        self.cam_size = parameters["cam_size"]
        self.experiment_parameters = parameters
        config = GlamConfig(geometry="pixels", patch_side=parameters["crop_shape"][0],
                            num_patches=parameters["top_k_per_class"], percent_k=parameters["percent_k"],
                            local_percent_k=parameters["detection_pooling_percent_k"])
        ours = GlamNetwork(config)
        self.__dict__["ours"] = ours
        for name, child in ours.named_children():
            self.add_module({rename}, child)

    def forward(self, x_original):
        ours, crop = self.__dict__["ours"], tuple(self.experiment_parameters["crop_shape"])
        glob = ours.run_global(x_original)
        self.x_layer1, self.x_layer2, self.x_layer3 = glob.cam_level1, glob.cam_level2, glob.cam_level3
        self.downsampled_map = glob.cam_mean
        self.saliency_map_global = glob.saliency_map_global
        self.y_cam_logits = tuple(glob.y_cam_logits)
        self.y_global = glob.y_global + PERTURBATION
        self.patch_locations = m.greedy_windows(glob.saliency_map_global, self.cam_size, crop, x_original.shape[-2:],
                                                self.experiment_parameters["top_k_per_class"])
        locations = torch.from_numpy(self.patch_locations).long()
        crops = bb.extract_patches(x_original, locations, crop)
        self.patches = crops.data.cpu().numpy()
        n, k, ph, pw = crops.shape
        self.raw_local_CAM = ours.detection_network(crops.reshape(n * k, 1, ph, pw))
        self.saliency_map = fuse_maps(glob.saliency_map_global, self.raw_local_CAM, locations, crop,
                                      tuple(x_original.shape[-2:]))
        return self.y_global
'''


def write_checkout(root: Path, model: str, perturbation: float = 0.0, rename: str = "name") -> Path:
    """A stand-in checkout of nyukat/GLAM or nyukat/GMIC at ``root``; ``rename`` is the expression
    naming each adopted submodule (``name``: the published names)."""
    files = {
        "gmic": {"src/modeling/gmic.py": GMIC, "src/modeling/modules.py": MODULES,
                 "src/utilities/tools.py": TOOLS, "README.md": "stand-in of nyukat/GMIC\n"},
        "glam": {"src/modeling/glam.py": GLAM, "src/modeling/modules.py": MODULES,
                 "src/modeling/common_functions.py": TOOLS, "README.md": "stand-in of nyukat/GLAM\n"},
    }[model]
    values = {"perturbation": repr(perturbation), "rename": rename,
              "extra_import": "import cv2" if model == "glam" else "",
              "window_import": "src.modeling.common_functions" if model == "glam" else "src.utilities.tools"}
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).format(**values) if relative.endswith(".py") else text)
    return root


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("model", ["gmic", "glam"])
def test_a_faithful_checkout_passes_and_is_left_untouched(model, tmp_path, capsys):
    root = write_checkout(tmp_path / model, model)
    before, path_before = snapshot(root), list(sys.path)
    code = main(["verify", model, "--published", str(root), *RUNS[model]])
    out = capsys.readouterr().out
    assert code == 0, out
    outputs = {"gmic": ["y_fusion", "y_global", "y_local", "saliency_map", "patch_attention", "patches"],
               "glam": ["y_global", "y_cam_logits", "cam_level1", "cam_level2", "cam_level3", "cam_mean",
                        "saliency_map_global", "patches", "raw_local_cam", "saliency_map"]}[model]
    for name in outputs:  # one line per output, a difference per engine
        (line,) = [line for line in out.splitlines() if line.split()[:1] == [name]]
        assert len(line.split()) == 3, line
    assert "patch locations" in out and "fast" in out and "plain" in out
    assert "get_max_window replaced in memory" in out
    assert out.strip().endswith("patch locations equal")
    # the user's files are not changed, nothing is written there (no __pycache__), nothing stays imported
    assert snapshot(root) == before
    assert sys.path == path_before and not any(k == "src" or k.startswith("src.") for k in sys.modules)


def test_patch_locations_are_printed_and_compared_exactly(tmp_path):
    root = write_checkout(tmp_path / "gmic", "gmic")
    result = verify_module.verify("gmic", root, size=(368, 240), crop=64, engines=("plain",))
    published = result.locations["published"]
    assert len(published) == 1 and len(published[0]) == 6  # N×K×2, K = 6 published
    assert any(column != 0 for _, column in published[0])  # the corrected search: columns are not all 0
    assert result.locations["plain"] == published and result.ok
    assert "[[[" in result.format()


@pytest.mark.parametrize("model, output", [("gmic", "y_fusion"), ("glam", "y_global")])
def test_a_perturbed_checkout_fails_naming_the_output(model, output, tmp_path, capsys):
    root = write_checkout(tmp_path / model, model, perturbation=1e-3)
    code = main(["verify", model, "--published", str(root), *RUNS[model], "--engine", "plain"])
    out = capsys.readouterr().out
    assert code == 1
    (line,) = [line for line in out.splitlines() if line.split()[:1] == [output]]
    assert "above tolerance" in line and float(line.split()[1]) == pytest.approx(1e-3, rel=1e-3)
    assert out.strip().endswith(f"NOT faithful: {output}")
    # the tolerance is the user's to set
    assert main(["verify", model, "--published", str(root), *RUNS[model], "--engine", "plain",
                 "--tolerance", "2e-3"]) == 0


def test_without_the_window_search_correction_the_patch_locations_differ(tmp_path, monkeypatch):
    """The stand-in keeps the published defect, so only the in-memory correction makes it pass."""
    import contextlib

    root = write_checkout(tmp_path / "gmic", "gmic")
    monkeypatch.setattr(verify_module, "corrected_window_search", lambda module: contextlib.nullcontext())
    result = verify_module.verify("gmic", root, size=(368, 240), crop=64, engines=("plain",))
    assert "patch_locations" in result.failures
    assert all(column == 0 for _, column in result.locations["published"][0])  # the defect: every column 0


def test_floor_division_window_search_finds_the_window_the_defect_loses():
    scores = torch.zeros(1, 1, 5, 7)
    scores[0, 0, 3, 5] = 1.0  # the best 2×2 window starts at (2, 4) or later: the first in row-major order
    corner = floor_division_window_search(scores, (2, 2))
    assert corner.dtype == torch.int64 and corner.tolist() == [[[2, 4]]]


def test_renamed_parameters_are_reported(tmp_path, capsys):
    root = write_checkout(tmp_path / "gmic", "gmic", rename="'fusion_network' if name == 'fusion_dnn' else name")
    code = main(["verify", "gmic", "--published", str(root), *RUNS["gmic"], "--engine", "plain"])
    err = capsys.readouterr().err
    assert code == 1
    assert "only in ours fusion_dnn.bias, fusion_dnn.weight" in err
    assert "only in the published model fusion_network.bias, fusion_network.weight" in err


def test_a_folder_that_is_not_a_checkout_is_a_usage_error(tmp_path, capsys):
    (tmp_path / "elsewhere").mkdir()
    assert main(["verify", "glam", "--published", str(tmp_path / "elsewhere")]) == 2
    err = capsys.readouterr().err
    assert "src/modeling/glam.py" in err and "git clone https://github.com/nyukat/GLAM" in err


def test_a_missing_module_the_forward_pass_never_uses_is_stood_in_for(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "cv2", None)  # as if OpenCV were not installed
    root = write_checkout(tmp_path / "glam", "glam")  # its common_functions imports cv2, as published
    assert main(["verify", "glam", "--published", str(root), *RUNS["glam"], "--engine", "plain"]) == 0
    assert "cv2: not installed, a placeholder stood in" in capsys.readouterr().out
    assert sys.modules["cv2"] is None  # put back as it was


@pytest.mark.slow
def test_a_crop_the_published_window_search_cannot_take_is_a_usage_error(tmp_path, capsys):
    root = write_checkout(tmp_path / "glam", "glam")
    assert main(["verify", "glam", "--published", str(root), "--size", "256x160", "--crop", "512",
                 "--engine", "plain"]) == 2
    err = capsys.readouterr().err
    assert "--crop" in err and "16×10 map" in err
