"""Shared GLAM/GMIC blocks against straightforward loop implementations of the published semantics."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wsl_bench.methods import backbones as bb


# --------------------------------------------------------------------------------------------
# Naive references: one image, one patch at a time, as the published code does it
# --------------------------------------------------------------------------------------------
def naive_windows(saliency: np.ndarray, window: tuple[int, int], count: int) -> list[tuple[int, int]]:
    """Min-max per class, sum, then repeatedly: box with the largest mean (first in row-major order), zero it."""
    c, h, w = saliency.shape
    norm = np.zeros((h, w), dtype=np.float64)
    for k in range(c):
        lo, hi = saliency[k].min(), saliency[k].max()
        norm += (saliency[k] - lo) / (hi - lo)
    wh, ww = window
    corners = []
    for _ in range(count):
        best, best_rc = -np.inf, None
        for r in range(h - wh + 1):
            for col in range(w - ww + 1):
                mean = norm[r : r + wh, col : col + ww].mean()
                if mean > best + 1e-12:
                    best, best_rc = mean, (r, col)
        corners.append(best_rc)
        norm[best_rc[0] : best_rc[0] + wh, best_rc[1] : best_rc[1] + ww] = 0
    return corners


def naive_crop(image: np.ndarray, corner: tuple[int, int], size: tuple[int, int]) -> np.ndarray:
    """Published ``crop_pytorch(..., method="upper_left")``: background = image minimum, valid part bottom-right."""
    height, width = image.shape
    x0, y0 = (min(max(v, 0), lim) for v, lim in zip(corner, (height, width), strict=True))
    x1 = min(max(corner[0] + size[0], 0), height)
    y1 = min(max(corner[1] + size[1], 0), width)
    out = np.full(size, image.min(), dtype=image.dtype)
    out[size[0] - (x1 - x0) :, size[1] - (y1 - y0) :] = image[x0:x1, y0:y1]
    return out


def naive_paste(maps: np.ndarray, corners: list[tuple[int, int]], image_size: tuple[int, int]) -> np.ndarray:
    """Sequential paste (later patches overwrite), each map on the pixels its crop content came from."""
    k, c, ph, pw = maps.shape
    height, width = image_size
    canvas = np.zeros((c, height, width), dtype=maps.dtype)
    for j, (r, col) in enumerate(corners):
        r0, r1 = min(max(r, 0), height), min(max(r + ph, 0), height)
        c0, c1 = min(max(col, 0), width), min(max(col + pw, 0), width)
        canvas[:, r0:r1, c0:c1] = maps[j, :, ph - (r1 - r0) :, pw - (c1 - c0) :]
    return canvas


# --------------------------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("window,count", [((4, 4), 6), ((3, 2), 3), ((1, 1), 5)])
def test_select_windows_matches_naive_search(window, count):
    gen = torch.Generator().manual_seed(1)
    saliency = torch.rand(3, 2, 12, 9, generator=gen)
    # image 1: plateaus of exactly representable values, so tied windows tie exactly in float32 too
    # and the first in row-major order must win
    saliency[1] = torch.round(saliency[1] * 4) / 4
    saliency[1, :, 0, 0], saliency[1, :, -1, -1] = 0.0, 1.0
    got = bb.select_windows(saliency, window, count)
    assert got.shape == (3, count, 2) and got.dtype == torch.int64
    for n in range(3):
        assert [tuple(rc) for rc in got[n].tolist()] == naive_windows(saliency[n].double().numpy(), window, count)


def test_select_windows_constant_map_stays_finite():
    got = bb.select_windows(torch.ones(1, 2, 6, 5), (2, 2), 2)
    assert got[0, 0].tolist() == [0, 0]  # all windows tie: first one


def test_columns_are_not_collapsed():
    # the published code's true division put every window in column 0; floor division must not
    saliency = torch.zeros(1, 2, 10, 10)
    saliency[0, :, 6:8, 7:9] = 1
    saliency[0, 0, 0, 0] = 0.5  # keep the min-max span non-degenerate in both classes
    assert bb.select_windows(saliency, (2, 2), 1)[0, 0].tolist() == [6, 7]


def test_map_to_image_coords_rounds_like_numpy():
    corners = torch.tensor([[[0, 0], [23, 88], [152, 7], [5, 1]]])
    got = bb.map_to_image_coords(corners, (184, 120), (2944, 1920))
    c = corners.numpy().astype(np.float64)
    want = np.stack([np.around(c[..., 0] / 184 * 2944), np.around(c[..., 1] / 120 * 1920)], axis=-1)
    np.testing.assert_array_equal(got.numpy(), want.astype(np.int64))
    odd = bb.map_to_image_coords(torch.tensor([[[3, 5]]]), (16, 10), (250, 161))
    assert odd.tolist() == [[[int(np.around(3 / 16 * 250)), int(np.around(5 / 10 * 161))]]]


def test_extract_patches_matches_published_crop():
    gen = torch.Generator().manual_seed(2)
    images = torch.randn(2, 1, 40, 30, generator=gen)
    # inside, touching the border, overflowing bottom/right, overflowing both
    corners = torch.tensor([[[0, 0], [30, 20], [35, 27]], [[5, 3], [39, 29], [12, 25]]])
    got = bb.extract_patches(images, corners, (10, 8))
    assert got.shape == (2, 3, 10, 8)
    for n in range(2):
        for k in range(3):
            want = naive_crop(images[n, 0].numpy(), tuple(corners[n, k].tolist()), (10, 8))
            np.testing.assert_array_equal(got[n, k].numpy(), want)


def test_paste_patches_matches_sequential_paste_with_overlaps():
    gen = torch.Generator().manual_seed(3)
    maps = torch.rand(2, 3, 2, 10, 8, generator=gen)
    corners = torch.tensor([[[0, 0], [4, 3], [35, 27]], [[5, 3], [5, 3], [9, 6]]])  # overlaps, duplicates, overflow
    got = bb.paste_patches(maps, corners, (40, 30))
    assert got.shape == (2, 2, 40, 30)
    for n in range(2):
        want = naive_paste(maps[n].numpy(), [tuple(rc) for rc in corners[n].tolist()], (40, 30))
        np.testing.assert_array_equal(got[n].numpy(), want)


def test_paste_is_differentiable():
    maps = torch.rand(1, 2, 2, 4, 4, requires_grad=True)
    corners = torch.tensor([[[0, 0], [2, 2]]])
    bb.paste_patches(maps, corners, (8, 8)).sum().backward()
    # patch 0 loses its lower-right 2×2 quarter to patch 1
    assert maps.grad[0, 0, 0].sum().item() == 12 and maps.grad[0, 1, 0].sum().item() == 16


def test_top_k_mean():
    maps = torch.arange(24.0).view(1, 2, 3, 4)
    assert bb.top_k_mean(maps, 3).tolist() == [[10.0, 22.0]]


@pytest.mark.parametrize(
    "image_size,glam_patch,gmic_patch",
    [((2944, 1920), 512, 256), ((736, 480), 128, 64), ((256, 160), 45, 22)],
)
def test_patch_scaling_rule(image_size, glam_patch, gmic_patch):
    assert bb.scaled_patch_size(512, image_size) == (glam_patch, glam_patch)
    assert bb.scaled_patch_size(256, image_size) == (gmic_patch, gmic_patch)


def test_published_windows_and_counts():
    assert bb.window_in_map((512, 512), (184, 120), (2944, 1920)) == (32, 32)
    assert bb.window_in_map((256, 256), (46, 30), (2944, 1920)) == (4, 4)
    assert bb.window_in_map((22, 22), (4, 3), (256, 160)) == (1, 1)  # never below one cell
    assert bb.top_fraction_count(0.03, (184, 120)) == 662
    assert bb.top_fraction_count(0.02, (46, 30)) == 28


def test_backbone_shapes_at_published_size():
    with torch.device("meta"):
        stages, final = bb.PreActResNet22()(torch.empty(1, 1, 2944, 1920))
        local = bb.resnet34_stride1_trunk()(torch.empty(1, 1, 512, 512))
        gmic_local = bb.resnet18_trunk()(torch.empty(6, 1, 256, 256))
    assert [tuple(s.shape[-2:]) for s in stages] == [(735, 479), (368, 240), (184, 120), (92, 60), (46, 30)]
    assert final.shape == (1, 256, 46, 30)
    assert local.shape == (1, 512, 128, 128)
    assert gmic_local.shape == (6, 512, 8, 8)


def test_published_key_names():
    keys = set(bb.PreActResNet22().state_dict())
    assert "layer_list.0.0.downsample.0.weight" in keys and "layer_list.0.1.downsample.0.weight" not in keys
    assert "final_bn.running_var" in keys
    local = set(bb.resnet34_stride1_trunk().state_dict())
    assert "layer4.2.bn2.weight" in local and "layer2.0.downsample.1.running_mean" in local
    assert "layer1.0.downsample.0.weight" not in local  # width unchanged at stride 1: identity shortcut


@pytest.mark.parametrize("out_size,in_size", [(2944, 184), (256, 16), (160, 10), (250, 17), (45, 12), (7, 7), (5, 9)])
def test_nearest_source_index_reproduces_interpolate(out_size, in_size):
    source = torch.arange(float(in_size)).view(1, 1, in_size, 1)
    want = torch.nn.functional.interpolate(source, size=(out_size, 1), mode="nearest").flatten().long()
    assert torch.equal(bb.nearest_source_index(out_size, in_size), want)


@pytest.mark.parametrize("small", [(9, 7), (5, 3)])  # fractional and whole-number upsampling factors
def test_fuse_half_and_half_equals_canvas_formula(small):
    gen = torch.Generator().manual_seed(4)
    global_map = torch.rand(2, 2, *small, generator=gen)
    maps = torch.rand(2, 3, 2, 10, 8, generator=gen)
    corners = torch.tensor([[[0, 0], [4, 3], [35, 27]], [[5, 3], [5, 3], [9, 6]]])
    want = (bb.paste_patches(maps, corners, (40, 30)) + torch.nn.functional.interpolate(global_map, size=(40, 30))) / 2
    assert torch.equal(bb.fuse_half_and_half(global_map, maps, corners, (40, 30)), want)


@pytest.mark.parametrize("size", [(300, 190), (257, 161)])
def test_striped_stem_equals_whole_stem(monkeypatch, size):
    from wsl_bench.methods import inference

    torch.manual_seed(0)
    engine = inference.PreActResNetEngine(bb.PreActResNet22().eval(), torch.float32)
    x = inference.channels_last(torch.randn(2, 1, *size))
    with torch.inference_mode():
        whole = engine.first_pool(engine.first_conv(x))
        monkeypatch.setattr(inference, "STEM_STRIPE_BYTES", 64 * 1024)  # force many stripes
        striped = inference.striped_conv_pool(engine.first_conv, engine.first_pool, x)
    assert striped.shape == whole.shape
    torch.testing.assert_close(striped, whole, atol=1e-6, rtol=0)
