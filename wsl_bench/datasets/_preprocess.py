"""The one mammogram preprocessing pipeline every dataset loader uses.

Steps (the GMIC/GLAM line of work): breast segmentation (foreground above the background level →
largest connected component → morphological clean-up), crop to the breast with a margin,
orientation so that every view has the chest wall on the LEFT (nipple pointing right), resize
(aspect ratio kept, then padded) or stretch to the target size, per-image standardisation.

The spatial part is one explicit, invertible :class:`Geometry` (flip → crop → scale → pad) that
is applied identically to the image (bilinear, antialiased), to lesion masks (nearest) and to
boxes, and is returned in ``Sample.meta["geometry"]`` so maps can be taken back to the source
frame. A crop never cuts away an annotated lesion: the crop box is grown to contain every mask
and box it is given.

Coordinates: arrays are indexed ``[row, column]``; boxes are ``N×4`` float ``(x0, y0, x1, y1)`` in
pixel-edge coordinates (pixel ``(r, c)`` covers ``[c, c+1) × [r, r+1)``), so a box and the mask
that fills it transform identically. Resampling uses the pixel-centre convention throughout.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
from PIL import Image
from scipy import ndimage

from wsl_bench.data import SampleError, standardise

DEFAULT_IMAGE_SIZE: tuple[int, int] = (2944, 1920)

__all__ = [
    "DEFAULT_IMAGE_SIZE",
    "Geometry",
    "PreprocessConfig",
    "Preprocessed",
    "apply_geometry",
    "breast_bbox",
    "boxes_to_mask",
    "chest_wall_on_right",
    "fit_size",
    "lesion_areas",
    "plan_geometry",
    "preprocess",
    "segment_breast",
]


@dataclass(frozen=True)
class PreprocessConfig:
    """Parameters of the pipeline (recorded in preparation manifests).

    Attributes:
        image_size: ``(H, W)`` of the output.
        crop_to_breast: crop to the segmented breast (else keep the whole image).
        margin: crop margin around the breast, as a fraction of the source image's height/width.
        threshold: foreground level as a fraction of the robust intensity range above the
            background (0.5th percentile … 99.5th percentile).
        orientation: ``"auto"`` flips images whose chest wall is on the right (decided from the
            breast mask); ``"keep"`` never flips unless the caller says so.
        resize: ``"fit"`` scales to fit inside ``image_size`` keeping the aspect ratio and pads
            (content anchored at the left, the chest wall, and centred vertically); ``"stretch"``
            scales each axis to fill ``image_size`` exactly.
        work_size: the breast is segmented on a copy downsampled to at most this many pixels on its
            longer side (speed; the crop box is then mapped back to full resolution).
        opening: radius in work-size pixels of the opening that detaches labels and thin artefacts.
    """

    image_size: tuple[int, int] = DEFAULT_IMAGE_SIZE
    crop_to_breast: bool = True
    margin: float = 0.02
    threshold: float = 0.05
    orientation: Literal["auto", "keep"] = "auto"
    resize: Literal["fit", "stretch"] = "fit"
    work_size: int = 512
    opening: int = 2

    def __post_init__(self) -> None:
        h, w = self.image_size
        if h < 1 or w < 1:
            raise ValueError(f"image_size must be positive, got {self.image_size}")
        if self.orientation not in ("auto", "keep"):
            raise ValueError(f"orientation must be 'auto' or 'keep', got {self.orientation!r}")
        if self.resize not in ("fit", "stretch"):
            raise ValueError(f"resize must be 'fit' or 'stretch', got {self.resize!r}")
        if not 0.0 <= self.threshold < 1.0 or not 0.0 <= self.margin < 0.5:
            raise ValueError("threshold must be in [0, 1) and margin in [0, 0.5)")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["image_size"] = list(self.image_size)
        return d


@dataclass(frozen=True)
class Geometry:
    """source ``H0×W0`` → horizontal flip → crop box → scale to ``resized`` → paste at ``offset`` in ``target``.

    Attributes:
        source_shape: ``(H0, W0)`` of the source image.
        flip: mirror left↔right first (so the chest wall ends up on the left).
        crop: ``(top, left, bottom, right)`` in the flipped source frame, half-open; may extend
            beyond the image, the outside being filled with the background value.
        resized: ``(h, w)`` the crop is scaled to.
        offset: ``(top, left)`` where the resized crop is pasted in the target canvas.
        target: ``(H, W)`` of the output.
    """

    source_shape: tuple[int, int]
    flip: bool
    crop: tuple[int, int, int, int]
    resized: tuple[int, int]
    offset: tuple[int, int]
    target: tuple[int, int]

    def __post_init__(self) -> None:
        top, left, bottom, right = self.crop
        if bottom <= top or right <= left:
            raise ValueError(f"empty crop box {self.crop}")
        rh, rw = self.resized
        oy, ox = self.offset
        if rh < 1 or rw < 1 or oy < 0 or ox < 0 or oy + rh > self.target[0] or ox + rw > self.target[1]:
            raise ValueError(f"resized {self.resized} at {self.offset} does not fit in target {self.target}")

    # -- derived quantities ---------------------------------------------------------------------
    @property
    def crop_shape(self) -> tuple[int, int]:
        top, left, bottom, right = self.crop
        return bottom - top, right - left

    @property
    def scale(self) -> tuple[float, float]:
        """``(sy, sx)``: target pixels per source pixel along each axis."""
        ch, cw = self.crop_shape
        return self.resized[0] / ch, self.resized[1] / cw

    @classmethod
    def identity(cls, shape: tuple[int, int]) -> Geometry:
        h, w = int(shape[0]), int(shape[1])
        return cls((h, w), False, (0, 0, h, w), (h, w), (0, 0), (h, w))

    def in_crop_frame(self) -> Geometry:
        """The geometry for data already in this crop's frame (flip and crop done), e.g. NYU masks."""
        ch, cw = self.crop_shape
        return Geometry((ch, cw), False, (0, 0, ch, cw), self.resized, self.offset, self.target)

    def to_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Geometry:
        return cls(
            tuple(d["source_shape"]),
            bool(d["flip"]),
            tuple(d["crop"]),
            tuple(d["resized"]),
            tuple(d["offset"]),
            tuple(d["target"]),
        )

    # -- arrays ---------------------------------------------------------------------------------
    def _cropped(self, array: np.ndarray, fill: Any) -> np.ndarray:
        """Flip and crop ``array`` (source frame), filling outside the image with ``fill``."""
        if tuple(array.shape[:2]) != tuple(self.source_shape):
            raise ValueError(f"array is {array.shape[:2]} but the geometry's source is {self.source_shape}")
        if self.flip:
            array = array[:, ::-1]
        h0, w0 = self.source_shape
        top, left, bottom, right = self.crop
        out = np.full((bottom - top, right - left), fill, dtype=array.dtype)
        y0, y1, x0, x1 = max(top, 0), min(bottom, h0), max(left, 0), min(right, w0)
        if y1 > y0 and x1 > x0:
            out[y0 - top : y1 - top, x0 - left : x1 - left] = array[y0:y1, x0:x1]
        return out

    def apply_image(self, image: np.ndarray, fill: float | None = None) -> np.ndarray:
        """``H0×W0`` image → ``H×W`` float32 (bilinear, antialiased when shrinking).

        Args:
            fill: value outside the source and in the padding; the image minimum when None.
        """
        image = np.asarray(image, dtype=np.float32)
        fill = float(image.min()) if fill is None else float(fill)
        crop = self._cropped(image, fill)
        rh, rw = self.resized
        if crop.shape != (rh, rw):
            # Pillow's BILINEAR widens its kernel when downscaling (antialiasing) and uses pixel
            # centres, the same convention as the nearest-neighbour mapping of masks below.
            crop = np.asarray(Image.fromarray(crop, mode="F").resize((rw, rh), Image.BILINEAR), dtype=np.float32)
        out = np.full(self.target, fill, dtype=np.float32)
        oy, ox = self.offset
        out[oy : oy + rh, ox : ox + rw] = crop
        return out

    def apply_mask(self, mask: np.ndarray) -> np.ndarray:
        """``H0×W0`` mask → ``H×W`` bool (nearest neighbour, pixel centres)."""
        crop = self._cropped(np.asarray(mask) != 0, False)
        rh, rw = self.resized
        sy, sx = self.scale
        rows = np.minimum(((np.arange(rh) + 0.5) / sy).astype(np.int64), crop.shape[0] - 1)
        cols = np.minimum(((np.arange(rw) + 0.5) / sx).astype(np.int64), crop.shape[1] - 1)
        out = np.zeros(self.target, dtype=bool)
        oy, ox = self.offset
        out[oy : oy + rh, ox : ox + rw] = crop[rows[:, None], cols[None, :]]
        return out

    def to_source(self, array: np.ndarray, fill: Any = 0) -> np.ndarray:
        """Map a target-frame ``H×W`` array back to the source frame ``H0×W0`` (nearest neighbour).

        Source pixels outside the crop receive ``fill``. Used to show maps on the original image.
        """
        array = np.asarray(array)
        if tuple(array.shape[:2]) != tuple(self.target):
            raise ValueError(f"array is {array.shape[:2]} but the geometry's target is {self.target}")
        h0, w0 = self.source_shape
        top, left, _, _ = self.crop
        sy, sx = self.scale
        oy, ox = self.offset
        rows = np.floor((np.arange(h0) + 0.5 - top) * sy).astype(np.int64) + oy
        fcols = np.arange(w0)[::-1] if self.flip else np.arange(w0)  # flipped column of each source column
        cols = np.floor((fcols + 0.5 - left) * sx).astype(np.int64) + ox
        rh, rw = self.resized
        row_ok = (rows >= oy) & (rows < oy + rh)
        col_ok = (cols >= ox) & (cols < ox + rw)
        out = np.full((h0, w0), fill, dtype=array.dtype)
        sub = array[np.clip(rows, 0, self.target[0] - 1)[:, None], np.clip(cols, 0, self.target[1] - 1)[None, :]]
        keep = row_ok[:, None] & col_ok[None, :]
        out[keep] = sub[keep]
        return out

    # -- boxes ----------------------------------------------------------------------------------
    def apply_boxes(self, boxes: np.ndarray, clip: bool = True) -> np.ndarray:
        """``N×4`` source boxes ``(x0, y0, x1, y1)`` → target boxes (clipped to the resized region)."""
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        x0, y0, x1, y1 = boxes.T
        if self.flip:
            w0 = self.source_shape[1]
            x0, x1 = w0 - x1, w0 - x0
        top, left, _, _ = self.crop
        sy, sx = self.scale
        oy, ox = self.offset
        out = np.stack([(x0 - left) * sx + ox, (y0 - top) * sy + oy, (x1 - left) * sx + ox, (y1 - top) * sy + oy], 1)
        if clip:
            rh, rw = self.resized
            out[:, [0, 2]] = np.clip(out[:, [0, 2]], ox, ox + rw)
            out[:, [1, 3]] = np.clip(out[:, [1, 3]], oy, oy + rh)
        return out

    def invert_boxes(self, boxes: np.ndarray) -> np.ndarray:
        """Target boxes → source boxes (the exact inverse of :meth:`apply_boxes` without clipping)."""
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        x0, y0, x1, y1 = boxes.T
        top, left, _, _ = self.crop
        sy, sx = self.scale
        oy, ox = self.offset
        fx0, fx1 = (x0 - ox) / sx + left, (x1 - ox) / sx + left
        sy0, sy1 = (y0 - oy) / sy + top, (y1 - oy) / sy + top
        if self.flip:
            w0 = self.source_shape[1]
            fx0, fx1 = w0 - fx1, w0 - fx0
        return np.stack([fx0, sy0, fx1, sy1], 1)


@dataclass
class Preprocessed:
    """Output of :func:`preprocess`.

    Attributes:
        image: ``1×H×W`` float32, standardised unless the caller asked otherwise.
        masks: class → ``H×W`` bool (or None, passed through).
        boxes: class → ``N×4`` target-frame boxes.
        geometry: the transform applied.
        info: how decisions were made (``orientation`` reason, ``breast_bbox`` in the source frame).
    """

    image: np.ndarray
    masks: dict[str, np.ndarray | None]
    boxes: dict[str, np.ndarray]
    geometry: Geometry
    info: dict[str, Any] = field(default_factory=dict)


# -- breast segmentation ------------------------------------------------------------------------
def _downsample(image: np.ndarray, work_size: int) -> tuple[np.ndarray, int]:
    """Block-mean downsampling by an integer factor so the longer side is ≤ ``work_size``."""
    h, w = image.shape
    k = max(1, int(np.ceil(max(h, w) / max(work_size, 1))))
    if k == 1:
        return image.astype(np.float32, copy=False), 1
    hh, ww = (h // k) * k, (w // k) * k
    if hh == 0 or ww == 0:
        return image.astype(np.float32, copy=False), 1
    small = image[:hh, :ww].astype(np.float32).reshape(hh // k, k, ww // k, k).mean(axis=(1, 3))
    return small, k


def _segment_small(small: np.ndarray, config: PreprocessConfig) -> np.ndarray:
    lo, hi = np.percentile(small, [0.5, 99.5])
    if hi <= lo:
        lo, hi = float(small.min()), float(small.max())
    if hi <= lo:
        return np.zeros(small.shape, dtype=bool)
    fg = small > lo + config.threshold * (hi - lo)
    if config.opening > 0:
        structure = ndimage.generate_binary_structure(2, 1)
        opened = ndimage.binary_opening(fg, structure, iterations=config.opening)
        fg = opened if opened.any() else fg  # a tiny breast must not vanish
    labels, n = ndimage.label(fg)
    if n == 0:
        return fg
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    breast = labels == int(np.argmax(sizes))
    breast = ndimage.binary_closing(breast, iterations=2)
    return ndimage.binary_fill_holes(breast)


def segment_breast(image: np.ndarray, config: PreprocessConfig = PreprocessConfig()) -> np.ndarray:
    """Breast mask of a mammogram.

    Args:
        image: ``H×W`` any numeric dtype, tissue brighter than background.

    Returns:
        ``H×W`` bool: the largest connected foreground component, opened, closed and hole-filled.
    """
    image = np.asarray(image)
    small, k = _downsample(image, config.work_size)
    mask = _segment_small(small, config)
    if k == 1:
        return mask
    full = np.zeros(image.shape, dtype=bool)
    up = np.repeat(np.repeat(mask, k, axis=0), k, axis=1)
    full[: up.shape[0], : up.shape[1]] = up
    return full


def _bbox(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    return int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1


def breast_bbox(
    image: np.ndarray, config: PreprocessConfig = PreprocessConfig()
) -> tuple[tuple[int, int, int, int], bool]:
    """Bounding box of the breast and whether its chest wall is on the right.

    Args:
        image: ``H×W``, tissue brighter than background.

    Returns:
        ``((top, left, bottom, right), chest_wall_right)`` in the image's frame (unflipped).

    Raises:
        ValueError: the image is blank (constant) or has no foreground.
    """
    image = np.asarray(image)
    small, k = _downsample(image, config.work_size)
    if float(small.max()) <= float(small.min()):
        raise ValueError("the image is blank (constant value): no breast to find")
    mask = _segment_small(small, config)
    box = _bbox(mask)
    if box is None:
        raise ValueError("no foreground above the background level: no breast to find")
    top, left, bottom, right = box
    h, w = image.shape
    full_box = (top * k, left * k, min(bottom * k, h), min(right * k, w))
    if right >= mask.shape[1]:  # the block grid drops the last partial block: reach the image edge
        full_box = (full_box[0], full_box[1], full_box[2], w)
    if bottom >= mask.shape[0]:
        full_box = (full_box[0], full_box[1], h, full_box[3])
    return full_box, chest_wall_on_right(mask[top:bottom, left:right])


def chest_wall_on_right(breast: np.ndarray) -> bool:
    """Whether the chest wall of a breast mask (cropped to its bounding box) is on the right.

    The breast is widest at the chest wall and tapers towards the nipple (the pectoral muscle of
    MLO views adds to the chest-wall side), so the half holding more breast is the chest-wall side.
    """
    w = breast.shape[1]
    left = int(breast[:, : w // 2].sum())
    right = int(breast[:, w - w // 2 :].sum())
    return right > left


# -- planning and applying ----------------------------------------------------------------------
def fit_size(crop_shape: tuple[int, int], config: PreprocessConfig) -> tuple[tuple[int, int], tuple[int, int]]:
    """``(resized, offset)`` of a crop of ``crop_shape`` in the target canvas, per ``config.resize``."""
    th, tw = config.image_size
    ch, cw = crop_shape
    if config.resize == "stretch":
        return (th, tw), (0, 0)
    s = min(th / ch, tw / cw)
    rh, rw = min(th, max(1, round(ch * s))), min(tw, max(1, round(cw * s)))
    # Chest wall on the left: anchor the content there; centre it vertically.
    return (rh, rw), ((th - rh) // 2, 0)


def _union(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    return min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3])


def plan_geometry(
    image: np.ndarray,
    config: PreprocessConfig = PreprocessConfig(),
    flip: bool | None = None,
    crop: tuple[int, int, int, int] | None = None,
    keep: Mapping[str, np.ndarray | None] | None = None,
    keep_boxes: Mapping[str, np.ndarray] | None = None,
) -> tuple[Geometry, dict[str, Any]]:
    """Decide the geometry for one image.

    Args:
        image: ``H0×W0`` source image, tissue brighter than background.
        flip: force (True/False) the horizontal flip; None decides by ``config.orientation``.
        crop: force the crop box ``(top, left, bottom, right)`` in the flipped frame (may extend
            beyond the image); None crops to the breast (or keeps the whole image).
        keep: masks (source frame) the breast crop must contain in full.
        keep_boxes: source-frame ``N×4`` boxes the breast crop must contain in full.

    Returns:
        ``(geometry, info)``; info records the orientation decision and the breast box.

    Raises:
        ValueError: blank image (no breast to find) when cropping or orienting needs the breast.
    """
    image = np.asarray(image)
    if image.ndim != 2:
        raise ValueError(f"expected an H×W image, got shape {image.shape}")
    h0, w0 = image.shape
    info: dict[str, Any] = {}
    need_breast = (crop is None and config.crop_to_breast) or (flip is None and config.orientation == "auto")
    box, wall_right = ((0, 0, h0, w0), False)
    if need_breast:
        box, wall_right = breast_bbox(image, config)
        info["breast_bbox"] = list(box)
    if flip is None:
        flip = wall_right if config.orientation == "auto" else False
        info["orientation"] = "auto: chest wall found on the right" if flip else f"{config.orientation}: not flipped"
    else:
        info["orientation"] = "given: flipped" if flip else "given: not flipped"
    if crop is None:
        if config.crop_to_breast:
            top, left, bottom, right = box
            my, mx = round(config.margin * h0), round(config.margin * w0)
            box = (max(0, top - my), max(0, left - mx), min(h0, bottom + my), min(w0, right + mx))
            # Never crop away an annotation, whatever the segmentation found.
            for mask in (keep or {}).values():
                if mask is not None:
                    mb = _bbox(np.asarray(mask) != 0)
                    if mb is not None:
                        box = _union(box, mb)
            for bxs in (keep_boxes or {}).values():
                for x0, y0, x1, y1 in np.asarray(bxs, dtype=np.float64).reshape(-1, 4):
                    bb = (int(np.floor(y0)), int(np.floor(x0)), int(np.ceil(y1)), int(np.ceil(x1)))
                    box = _union(box, (max(0, bb[0]), max(0, bb[1]), min(h0, bb[2]), min(w0, bb[3])))
        else:
            box = (0, 0, h0, w0)
        top, left, bottom, right = box
        if flip:  # the box was found in the unflipped frame
            left, right = w0 - right, w0 - left
        crop = (top, left, bottom, right)
    resized, offset = fit_size((crop[2] - crop[0], crop[3] - crop[1]), config)
    geometry = Geometry((h0, w0), bool(flip), tuple(int(v) for v in crop), resized, offset, tuple(config.image_size))
    return geometry, info


def apply_geometry(
    geometry: Geometry,
    image: np.ndarray,
    masks: Mapping[str, np.ndarray | None] | None = None,
    boxes: Mapping[str, np.ndarray] | None = None,
    standardise_image: bool = True,
    fill: float | None = None,
) -> tuple[np.ndarray, dict[str, np.ndarray | None], dict[str, np.ndarray]]:
    """Apply ``geometry`` to an image, its masks and boxes.

    Returns:
        ``(image 1×H×W float32, masks class→H×W bool or None, boxes class→N×4)``.
    """
    out = geometry.apply_image(image, fill=fill)
    if standardise_image:
        out = standardise(out)
    out_masks = {c: (None if m is None else geometry.apply_mask(m)) for c, m in (masks or {}).items()}
    out_boxes = {c: geometry.apply_boxes(b) for c, b in (boxes or {}).items()}
    return out[None], out_masks, out_boxes


def preprocess(
    image: np.ndarray,
    masks: Mapping[str, np.ndarray | None] | None = None,
    boxes: Mapping[str, np.ndarray] | None = None,
    config: PreprocessConfig = PreprocessConfig(),
    flip: bool | None = None,
    crop: tuple[int, int, int, int] | None = None,
    source: str = "",
) -> Preprocessed:
    """Segment, crop, orient, resize and standardise one mammogram with its annotations.

    Args:
        image: ``H0×W0`` source image (any numeric dtype), tissue brighter than background.
        masks: class → ``H0×W0`` mask (or None = not annotated), same frame as ``image``.
        boxes: class → ``N×4`` source boxes ``(x0, y0, x1, y1)``.
        config: pipeline parameters.
        flip, crop: override the orientation decision / the crop box (see :func:`plan_geometry`).
        source: file name for error messages.

    Returns:
        :class:`Preprocessed` with a ``1×H×W`` standardised image and transformed annotations.

    Raises:
        SampleError: blank image, or a mask whose size differs from the image (naming ``source``).
    """
    image = np.asarray(image)
    where = source or "image"
    for cls, mask in (masks or {}).items():
        if mask is not None and tuple(mask.shape) != tuple(image.shape):
            raise SampleError(
                f"{where}: {cls} mask is {mask.shape[0]}×{mask.shape[1]} but the image is "
                f"{image.shape[0]}×{image.shape[1]}",
                path=source or None,
            )
    try:
        geometry, info = plan_geometry(image, config, flip=flip, crop=crop, keep=masks, keep_boxes=boxes)
    except ValueError as exc:
        raise SampleError(f"{where}: {exc}", path=source or None) from exc
    out, out_masks, out_boxes = apply_geometry(geometry, image, masks, boxes)
    return Preprocessed(out, out_masks, out_boxes, geometry, info)


# -- helpers for loaders --------------------------------------------------------------------------
def boxes_to_mask(boxes: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Fill ``N×4`` boxes ``(x0, y0, x1, y1)`` (pixel edges) into an ``H×W`` bool mask.

    A pixel is inside when its centre is inside the box, the convention of the mask resampling;
    a box narrower than one pixel still marks the pixel holding its centre.
    """
    mask = np.zeros(shape, dtype=bool)
    h, w = shape
    for x0, y0, x1, y1 in np.asarray(boxes, dtype=np.float64).reshape(-1, 4):
        c0, c1 = int(np.ceil(x0 - 0.5)), int(np.ceil(x1 - 0.5))
        r0, r1 = int(np.ceil(y0 - 0.5)), int(np.ceil(y1 - 0.5))
        if c1 <= c0:
            c0 = c1 = int(np.floor((x0 + x1) / 2))
            c1 += 1
        if r1 <= r0:
            r0 = r1 = int(np.floor((y0 + y1) / 2))
            r1 += 1
        mask[max(0, r0) : min(h, r1), max(0, c0) : min(w, c1)] = True
    return mask


def lesion_areas(mask: np.ndarray | None) -> list[int]:
    """Pixel areas of the connected lesions of a mask (8-connectivity), largest first; [] for None."""
    if mask is None or not mask.any():
        return []
    labels, n = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    return sorted((int(a) for a in np.bincount(labels.ravel())[1:]), reverse=True)
