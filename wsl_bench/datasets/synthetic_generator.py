"""The synthetic mammogram generator behind the ``synthetic`` dataset.

One image is a pure function of ``(seed, split, index, image_size)``. Every random draw comes
from its own ``numpy.random.SeedSequence`` stream keyed by ``(split, index, stream)``, never from
global state, so an image does not depend on which other images were generated before it, nor on
how many images the split has.

Anatomy and lesions are drawn in normalised coordinates (``u = row / H``, ``v = col / W``;
lengths in units of ``L = sqrt(H·W)``) from a stream that never sees the pixel size, and the
coarsest texture frequencies come from a size-independent stream too: the same seed at 256×160
and at 736×480 gives the same breast, the same lesions and the same large-scale tissue pattern,
so a small image looks like a downsampled big one. Only fine texture and pixel noise are drawn
per size.

What is modelled, and why (see ``datasets/synthetic.md``):

* a breast silhouette against a zero background, the chest wall on the left edge of every image
  (the GLAM/GMIC input convention: right breasts are flipped), a darker periphery where the
  compressed breast thins out, and a thin bright skin line;
* CC and MLO views; MLO views show the pectoral muscle as a bright triangle in the upper
  chest-wall corner;
* fibroglandular tissue from power-law (1/f^β, β in [2.5, 3.5]) noise, the measured spectrum of
  mammographic background, passed through a smooth threshold whose level sets the density from
  fatty to extremely dense;
* benign findings (round or oval circumscribed masses, a few coarse calcifications) and malignant
  findings (irregular or spiculated masses with ill-defined margins, clusters of fine pleomorphic
  calcifications), mostly 0.05 %–2 % of the image area;
* 12-bit intensities (0..4095) in a uint16 array.

Lesion contrast is set against the glandular contrast: a mass adds about as much density as
dense tissue does, and the pectoral muscle is brighter than both, so the brightest pixels of an
image are rarely lesion pixels.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any

import numpy as np
import scipy.fft

from wsl_bench.saliency import CLASSES

GENERATOR_VERSION = 4
"""Bumped whenever a change alters generated pixels (part of the dataset's ``describe()``)."""

SPLIT_CODES: dict[str, int] = {"train": 0, "val": 1, "test": 2}
MAX_VALUE = 4095  # 12-bit detector range

# Image-level mix: no finding, benign only, malignant only, both.
CATEGORY_PROBS: tuple[float, float, float, float] = (0.30, 0.25, 0.25, 0.20)
# Number of lesions of a class present in an image: 1, 2 or 3.
LESION_COUNT_PROBS: tuple[float, float, float] = (0.80, 0.17, 0.03)
BENIGN_KINDS: tuple[tuple[str, float], ...] = (("round_mass", 0.3), ("oval_mass", 0.3), ("coarse_calcification", 0.4))
MALIGNANT_KINDS: tuple[tuple[str, float], ...] = (
    ("irregular_mass", 0.3),
    ("spiculated_mass", 0.35),
    ("pleomorphic_cluster", 0.35),
)
KIND_CLASS: dict[str, str] = {k: "benign" for k, _ in BENIGN_KINDS} | {k: "malignant" for k, _ in MALIGNANT_KINDS}
DENSITY_CATEGORIES: tuple[tuple[str, float], ...] = (("A", 0.10), ("B", 0.40), ("C", 0.40), ("D", 0.10))


@dataclass(frozen=True)
class Conspicuity:
    """How conspicuous the lesions are (see ``datasets/synthetic.md``, "Conspicuity").

    Attributes:
        contrast: multiplies what every lesion adds to the image: a mass's added glandular density
            (its core, spicules and texture) and a calcification's brightness. 1 draws the lesions of
            generator version 3, brighter than any tissue around them.
        dense_placement: probability that a lesion's centre is drawn inside dense tissue (glandular
            fraction of the large-scale tissue pattern at least :data:`DENSE_TISSUE`) rather than
            anywhere in the breast; real cancers mostly arise in the fibroglandular tissue, where a mass is
            partly hidden by the tissue around it (the masking effect).
        masking: how much of a mass dense tissue hides: a mass adds ``a·(1 − masking·g)`` to the
            glandular fraction ``g`` of the tissue it sits in (0: as much in dense tissue as in fat;
            1: nothing where the tissue is fully glandular, where only its outline and spicules differ
            from the tissue's texture). Version 3: 0.4.
    """

    contrast: float = 1.0
    dense_placement: float = 0.0
    masking: float = 0.4

    def __post_init__(self) -> None:
        if not (math.isfinite(self.contrast) and 0.0 < self.contrast <= 4.0):
            raise ValueError(f"conspicuity contrast must be in (0, 4], got {self.contrast!r}")
        if not (math.isfinite(self.dense_placement) and 0.0 <= self.dense_placement <= 1.0):
            raise ValueError(f"conspicuity dense_placement must be in [0, 1], got {self.dense_placement!r}")
        if not (math.isfinite(self.masking) and 0.0 <= self.masking <= 1.0):
            raise ValueError(f"conspicuity masking must be in [0, 1], got {self.masking!r}")


DENSE_TISSUE = 0.5
"""Glandular fraction from which tissue counts as dense (for :attr:`Conspicuity.dense_placement`)."""

CONSPICUITY_LEVELS: dict[str, Conspicuity] = {
    "obvious": Conspicuity(contrast=1.0),  # generator version 3: lesions brighter than any tissue around them
    "clear": Conspicuity(contrast=0.6),
    "real": Conspicuity(contrast=0.35),  # calibrated on real annotated mammograms (datasets/synthetic.md)
    "faint": Conspicuity(contrast=0.2),
}
"""Named conspicuity levels, from the most to the least conspicuous (``--dataset-option conspicuity=NAME``)."""

DEFAULT_CONSPICUITY_LEVEL = "real"
DEFAULT_CONSPICUITY = CONSPICUITY_LEVELS[DEFAULT_CONSPICUITY_LEVEL]
"""The conspicuity of :func:`generate` when none is given: lesions as hard to see as on real mammograms."""


def conspicuity_named(level: str, **fields: float | None) -> Conspicuity:
    """The level ``level`` with any of ``contrast``, ``dense_placement`` or ``masking`` replaced (``None`` keeps it).

    Raises:
        ValueError: an unknown level (listing the known ones) or a field out of range.
    """
    try:
        base = CONSPICUITY_LEVELS[level]
    except KeyError:
        known = ", ".join(CONSPICUITY_LEVELS)
        raise ValueError(f"unknown conspicuity level {level!r}; known levels: {known}") from None
    return dataclasses.replace(base, **{k: float(v) for k, v in fields.items() if v is not None})

# Random streams of one image (the third element of the SeedSequence spawn key).
_STREAM_LAYOUT, _STREAM_TEXTURE_LOW, _STREAM_TEXTURE_HIGH, _STREAM_NOISE = 0, 1, 2, 3
# Texture frequencies up to this many cycles per image come from the size-independent stream.
_LOW_FREQ_CYCLES = 24


@dataclass
class SyntheticImage:
    """One generated mammogram before preprocessing.

    Attributes:
        image_u16: ``H×W`` uint16, values 0..4095, background exactly 0.
        masks: class name → ``H×W`` bool (all-false when the image has no lesion of that class).
        labels: class name → 0/1, equal to ``masks[c].any()``.
        meta: ``id``, ``view`` ("CC"/"MLO"), ``laterality`` ("L"/"R"), ``density`` (0 fatty .. 1
            dense), ``density_category`` ("A".."D"), ``lesions`` (list of dicts: ``class``,
            ``kind``, ``area_px``, ``centre`` (row, col) in pixels), ``lesion_areas`` (class →
            list of areas in pixels), ``image_size``, ``generator_version``.
    """

    image_u16: np.ndarray
    masks: dict[str, np.ndarray]
    labels: dict[str, int]
    meta: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------- random streams
def image_rng(seed: int, split: str, index: int, stream: int) -> np.random.Generator:
    """The generator of one random stream of one image, independent of every other image."""
    if split not in SPLIT_CODES:
        raise ValueError(f"unknown split {split!r}; known splits: {', '.join(SPLIT_CODES)}")
    if seed < 0 or index < 0:
        raise ValueError(f"seed and index must be non-negative, got seed={seed}, index={index}")
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(SPLIT_CODES[split], index, stream)))


def _choice(rng: np.random.Generator, options: tuple[tuple[str, float], ...]) -> str:
    names = [o[0] for o in options]
    probs = np.array([o[1] for o in options], dtype=np.float64)
    return names[int(rng.choice(len(names), p=probs / probs.sum()))]


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


# ----------------------------------------------------------------------------- texture
def power_law_noise(
    shape: tuple[int, int],
    beta: float,
    rng_low: np.random.Generator,
    rng_high: np.random.Generator | None,
    low_cycles: int = _LOW_FREQ_CYCLES,
    elongation: float = 1.0,
) -> np.ndarray:
    """Gaussian noise with a power spectrum ∝ 1/f^β, standardised to mean 0, std 1.

    White noise is drawn directly in the Fourier domain (equivalent to FFT-filtering white
    noise, one FFT cheaper) and shaped by the amplitude ``(f² + f0²)^(-β/4)``; frequencies are
    measured in cycles per ``sqrt(H·W)`` so the spectrum is the same function of physical
    frequency at every image size. Coefficients up to ``low_cycles`` cycles per image come from
    ``rng_low`` in a fixed layout, so the large-scale pattern is the same at every size.

    Args:
        shape: ``(H, W)``.
        beta: spectral exponent (≈3 for mammographic background).
        rng_low: stream for the coarse, size-independent frequencies.
        rng_high: stream for all finer frequencies; ``None`` leaves them out (the large-scale pattern,
            the same at every size: :func:`glandular_pattern`).
        low_cycles: highest frequency (cycles per image, each axis) taken from ``rng_low``.
        elongation: ≥1 stretches structures horizontally (chest wall → nipple) by this factor.

    Returns:
        ``H×W`` float32 field.
    """
    h, w = shape
    wf = w // 2 + 1
    if rng_high is None:  # the size-independent large-scale pattern alone
        coeff = np.zeros((h, wf, 2), dtype=np.float32)
    else:
        coeff = rng_high.standard_normal((h, wf, 2), dtype=np.float32)
    # Size-independent low block: rows ky = -K..K, columns kx = 0..K, drawn in one fixed layout.
    k = low_cycles
    low = rng_low.standard_normal((2 * k + 1, k + 1, 2), dtype=np.float32)
    ky = np.arange(-k, k + 1)
    rows_ok = np.abs(ky) <= (h - 1) // 2  # frequencies the grid can hold without aliasing
    kx_max = min(k, wf - 1)
    coeff[ky[rows_ok] % h, : kx_max + 1] = low[rows_ok, : kx_max + 1]
    spectrum = coeff[..., 0] + 1j * coeff[..., 1]

    fy = np.fft.fftfreq(h, d=1.0 / h)[:, None]  # cycles per image height
    fx = np.arange(wf)[None, :]  # cycles per image width
    aspect = w / h
    e2 = elongation * elongation
    f2 = (fy * fy * aspect / e2 + fx * fx * e2 / aspect).astype(np.float32)  # (cycles per sqrt(HW))²
    f0 = 1.0
    amplitude = (f2 + f0 * f0) ** np.float32(-beta / 4.0)
    amplitude[0, 0] = 0.0  # no DC: the mean is set by the caller
    field_ = scipy.fft.irfft2((spectrum * amplitude).astype(np.complex64), s=(h, w))
    field_ = field_.astype(np.float32, copy=False)
    field_ -= field_.mean()
    field_ /= max(float(field_.std()), 1e-12)
    return field_


def radial_power_slope(image: np.ndarray, f_min: float = 4.0, f_max_fraction: float = 0.25) -> float:
    """Fitted β of a power spectrum ∝ 1/f^β (least squares in log–log over radial bins).

    Args:
        image: ``H×W`` array.
        f_min: lowest radial frequency used (cycles per image).
        f_max_fraction: highest frequency used, as a fraction of the sampling rate.

    Returns:
        the estimated β (positive for a decaying spectrum).
    """
    img = np.asarray(image, dtype=np.float64)
    img = img - img.mean()
    h, w = img.shape
    power = np.abs(np.fft.fft2(img)) ** 2
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.fftfreq(w)[None, :]
    f = np.sqrt(fy * fy + fx * fx)  # cycles per pixel
    lo = f_min / min(h, w)
    edges = np.geomspace(lo, f_max_fraction, 16)
    which = np.digitize(f.ravel(), edges)
    xs, ys = [], []
    for b in range(1, len(edges)):
        sel = which == b
        if sel.any():
            xs.append(np.log(f.ravel()[sel].mean()))
            ys.append(np.log(power.ravel()[sel].mean()))
    slope = np.polyfit(xs, ys, 1)[0]
    return float(-slope)


# ----------------------------------------------------------------------------- anatomy
@dataclass(frozen=True)
class Anatomy:
    """Breast shape and tissue parameters in normalised coordinates (``u`` rows, ``v`` columns, both 0..1).

    The breast is ``r(u, v) < 1`` with ``r`` an elliptical radius about ``(uc, 0)`` on the chest
    wall: semi-axis ``a_v`` across, ``a_up``/``a_down`` above/below ``uc`` (different for MLO,
    where the breast runs off the top edge into the axilla), a shear that lets the nipple point
    down and a low-order boundary wiggle.
    """

    view: str
    laterality: str
    density: float
    density_category: str
    beta: float
    texture_elongation: float
    uc: float
    a_v: float
    a_up: float
    a_down: float
    shear: float
    wiggle: tuple[tuple[float, float], ...]  # (amplitude, sign) of Chebyshev terms 2, 3, ... of the boundary
    pect_top: float  # MLO: pectoral edge meets the top edge at v = pect_top (0 on CC)
    pect_left: float  # MLO: ... and the chest wall at u = pect_left
    pect_power: float  # 1 straight edge, >1 convex, <1 concave
    fat_level: float  # 12-bit intensity of fat
    gland_contrast: float  # intensity added by fully glandular tissue
    muscle_contrast: float  # intensity of the pectoral muscle above fat
    skin_contrast: float
    edge_falloff: float  # intensity factor at the skin (thinner compressed breast)
    noise_sigma: float

    def radius(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Normalised breast radius: <1 inside, 1 on the skin line. Broadcasts ``u`` against ``v``."""
        du = u - self.uc - self.shear * v
        inv_a_u = np.where(du < 0, np.float32(1.0 / self.a_up), np.float32(1.0 / self.a_down))
        dun = du * inv_a_u
        vn = v * np.float32(1.0 / self.a_v)
        r = np.sqrt(vn * vn + dun * dun)
        # sin of the elliptical angle (cheaper than atan2) and a low-order Chebyshev series in it
        # for the boundary wiggle: polynomials cost a few multiply-adds per pixel, cosines far more
        t = np.clip(dun / (r + np.float32(1e-6)), -1.0, 1.0)
        coefs = np.zeros(len(self.wiggle) + 2, dtype=np.float64)
        coefs[0] = 1.0
        for k, (amp, sign) in enumerate(self.wiggle, start=2):
            coefs[k] = amp * sign
        wig = np.polynomial.chebyshev.chebval(t, coefs.astype(np.float32))
        return (r / wig).astype(np.float32, copy=False)

    def pectoral(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        """<1 inside the pectoral muscle (MLO); +inf everywhere on CC views."""
        if self.view != "MLO":
            return np.full(np.broadcast_shapes(np.shape(u), np.shape(v)), np.inf, dtype=np.float32)
        p = self.pect_power
        return ((np.maximum(v, 0) / self.pect_top) ** p + (np.maximum(u, 0) / self.pect_left) ** p).astype(np.float32)


def draw_anatomy(rng: np.random.Generator) -> Anatomy:
    """Draw view, laterality, density and breast shape (size-independent)."""
    view = "CC" if rng.random() < 0.5 else "MLO"
    laterality = "L" if rng.random() < 0.5 else "R"
    category = _choice(rng, DENSITY_CATEGORIES)
    lo = "ABCD".index(category) * 0.25
    density = float(lo + 0.25 * rng.random())
    beta = float(rng.uniform(2.5, 3.5))
    texture_elongation = float(rng.uniform(1.1, 1.5))
    a_v = float(rng.uniform(0.62, 0.88))
    wiggle = tuple((float(rng.uniform(0.0, 0.02)), float(rng.choice([-1.0, 1.0]))) for _ in range(4))
    if view == "CC":
        uc = float(rng.uniform(0.46, 0.54))
        a_up = a_down = float(rng.uniform(0.36, 0.45))
        shear = 0.0
        pect_top = pect_left = pect_power = 0.0
    else:
        uc = float(rng.uniform(0.50, 0.60))
        top_ratio = float(rng.uniform(0.55, 0.78))  # breast width at the top edge / maximum width
        a_up = uc / math.sqrt(1.0 - top_ratio**2)
        a_down = float(rng.uniform(0.28, min(0.40, 0.96 - uc)))
        shear = float(rng.uniform(0.0, 0.12))
        pect_top = float(rng.uniform(0.55, 0.85)) * top_ratio * a_v
        pect_left = float(rng.uniform(0.30, 0.52))
        pect_power = float(rng.uniform(0.85, 1.25))
    gland = float(rng.uniform(1100, 1400))
    return Anatomy(
        view=view,
        laterality=laterality,
        density=density,
        density_category=category,
        beta=beta,
        texture_elongation=texture_elongation,
        uc=uc,
        a_v=a_v,
        a_up=a_up,
        a_down=a_down,
        shear=shear,
        wiggle=wiggle,
        pect_top=pect_top,
        pect_left=pect_left,
        pect_power=pect_power,
        fat_level=float(rng.uniform(650, 1000)),
        gland_contrast=gland,
        muscle_contrast=float(rng.uniform(1.25, 1.6)) * gland,
        skin_contrast=float(rng.uniform(0.25, 0.45)) * gland,
        edge_falloff=float(rng.uniform(0.55, 0.75)),
        noise_sigma=float(rng.uniform(8.0, 20.0)),
    )


def glandular_fraction(anatomy: Anatomy, texture: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Fibroglandular fraction in [0, 1]: the standardised tissue field thresholded (logistic, slope 1.5)
    so that ``0.08 + 0.72·density`` of the central breast is glandular, thinning towards the skin
    (subcutaneous fat). ``texture`` and the normalised breast radius ``r`` broadcast against each other."""
    fraction = 0.08 + 0.72 * anatomy.density  # of the central breast covered by glandular tissue
    threshold = float(_normal_quantile(1.0 - fraction))
    prior = 1.0 - _smoothstep((r - 0.5) / 0.42)
    return (1.0 / (1.0 + np.exp(-1.5 * (texture - threshold)))) * prior


_PATTERN_ROWS = 64
"""Rows of the grid :func:`glandular_pattern` is computed on (the size-independent frequencies need 2·24+1)."""


def glandular_pattern(anatomy: Anatomy, rng_low: np.random.Generator, aspect: float) -> np.ndarray:
    """The large-scale glandular fraction of the breast on a coarse grid, the same at every image size.

    Computed from the size-independent texture frequencies alone (``rng_low``, see
    :func:`power_law_noise`), so where a lesion may be placed (:attr:`Conspicuity.dense_placement`) does
    not depend on the pixel size; the rendered tissue adds finer texture on top of this pattern.

    Returns:
        ``rows×cols`` float32 (``rows`` = 64, ``cols`` ≈ 64·aspect), cell ``(i, j)`` at
        ``u = (i + 0.5) / rows``, ``v = (j + 0.5) / cols``.
    """
    rows, cols = _PATTERN_ROWS, max(int(round(_PATTERN_ROWS * aspect)), 2 * _LOW_FREQ_CYCLES)
    field_ = power_law_noise((rows, cols), anatomy.beta, rng_low, None, elongation=anatomy.texture_elongation)
    u = ((np.arange(rows, dtype=np.float32) + 0.5) / rows)[:, None]
    v = ((np.arange(cols, dtype=np.float32) + 0.5) / cols)[None, :]
    return glandular_fraction(anatomy, field_, anatomy.radius(u, v)).astype(np.float32)


def _pattern_at(pattern: np.ndarray, u: float, v: float) -> float:
    """The value of a :func:`glandular_pattern` grid at normalised ``(u, v)`` (nearest cell)."""
    rows, cols = pattern.shape
    return float(pattern[min(int(u * rows), rows - 1), min(int(v * cols), cols - 1)])


# ----------------------------------------------------------------------------- lesions
@dataclass(frozen=True)
class Calcification:
    """One calcification: centre offset from the lesion centre (units of L), size, shape, brightness."""

    dv: float  # offsets in units of L (rows: du, columns: dv)
    du: float
    size: float  # coarse: disc radius; fine: Gaussian sigma (units of L)
    elongation: float  # ≥1: long axis / short axis
    angle: float
    amplitude: float  # peak intensity in units of the glandular contrast
    lobes: int  # coarse "popcorn" calcifications are unions of a few discs


@dataclass(frozen=True)
class Lesion:
    """One lesion in normalised coordinates (centre ``(u, v)``; lengths in units of ``L = sqrt(H·W)``)."""

    kind: str
    u: float
    v: float
    radius: float  # masses: equivalent-disc radius; calcification clusters: extent of the cluster
    amplitude: float  # masses: added glandular fraction at the centre
    axis_ratio: float
    angle: float
    harmonics: tuple[tuple[float, float], ...]  # boundary (amplitude, phase) for k = 2, 3, ...
    margin: float  # edge width as a fraction of the radius (sharp: circumscribed, wide: ill-defined)
    spicules: tuple[tuple[float, float, float, float], ...] = ()  # (angle, length/R, width/R, amplitude)
    calcs: tuple[Calcification, ...] = ()
    mask_margin: float = 0.0  # calcification clusters: hull dilation (units of L)

    @property
    def cls(self) -> str:
        return KIND_CLASS[self.kind]

    @property
    def extent(self) -> float:
        """Radius (units of L) of a disc about the centre that holds everything drawn."""
        if self.calcs:
            reach = max(math.hypot(c.du, c.dv) + 3 * c.size * c.elongation for c in self.calcs)
            return reach + self.mask_margin
        longest = max((s[1] for s in self.spicules), default=1.0)
        return self.radius * max(1.6, longest + 0.2) / math.sqrt(self.axis_ratio)


def _log_normal(rng: np.random.Generator, median: float, sigma: float, lo: float, hi: float) -> float:
    return float(np.clip(median * math.exp(sigma * rng.standard_normal()), lo, hi))


def _draw_mass(rng: np.random.Generator, kind: str, u: float, v: float, area_fraction: float) -> Lesion:
    radius = math.sqrt(area_fraction / math.pi)
    angle = float(rng.uniform(0, math.pi))
    spicules: tuple[tuple[float, float, float, float], ...] = ()
    if kind == "round_mass":
        axis_ratio, harm, margin, amp = rng.uniform(0.85, 1.0), (0.0, 0.02), rng.uniform(0.08, 0.15), (0.5, 0.8)
    elif kind == "oval_mass":
        axis_ratio, harm, margin, amp = rng.uniform(0.5, 0.75), (0.0, 0.02), rng.uniform(0.08, 0.15), (0.5, 0.8)
    elif kind == "irregular_mass":
        axis_ratio, harm, margin, amp = rng.uniform(0.6, 1.0), (0.07, 0.17), rng.uniform(0.18, 0.3), (0.85, 1.15)
    elif kind == "spiculated_mass":
        axis_ratio, harm, margin, amp = rng.uniform(0.75, 1.0), (0.03, 0.10), rng.uniform(0.15, 0.3), (0.85, 1.15)
        n = int(rng.integers(10, 23))
        base = rng.uniform(0, 2 * math.pi)
        spicules = tuple(
            (
                float(base + 2 * math.pi * i / n + rng.normal(0, 0.25)),
                float(rng.uniform(1.6, 3.2)),  # length, in mass radii from the centre
                float(rng.uniform(0.10, 0.18)),  # half-width at the base, in mass radii
                float(rng.uniform(0.6, 1.0)),  # amplitude relative to the mass
            )
            for i in range(n)
        )
    else:
        raise ValueError(f"not a mass kind: {kind}")
    n_harm = 3 if kind in ("round_mass", "oval_mass") else 8
    harmonics = tuple(
        (float(rng.uniform(*harm) / math.sqrt(k - 1)), float(rng.uniform(0, 2 * math.pi))) for k in range(2, 2 + n_harm)
    )
    return Lesion(
        kind=kind,
        u=u,
        v=v,
        radius=radius,
        amplitude=float(rng.uniform(*amp)),
        axis_ratio=float(axis_ratio),
        angle=angle,
        harmonics=harmonics,
        margin=float(margin),
        spicules=spicules,
    )


def _draw_calc_cluster(rng: np.random.Generator, kind: str, u: float, v: float, area_fraction: float) -> Lesion:
    if kind == "coarse_calcification":
        n = int(rng.choice([1, 2, 3, 4, 5], p=[0.15, 0.3, 0.25, 0.2, 0.1]))
        sizes = rng.uniform(0.004, 0.009, n)
        mask_margin = 1.5 * float(sizes.max()) + 0.004
        calc_kw = dict(elongation=(1.0, 1.5), amplitude=(0.6, 0.9), lobes=(1, 4))
    elif kind == "pleomorphic_cluster":
        n = int(rng.integers(8, 29))
        sizes = rng.uniform(0.0007, 0.0015, n)
        mask_margin = 0.006
        calc_kw = dict(elongation=(1.0, 3.5), amplitude=(1.0, 1.5), lobes=(1, 2))
    else:
        raise ValueError(f"not a calcification kind: {kind}")
    # Spread the calcifications so that the hull dilated by the margin has about the target area.
    spread = max(math.sqrt(area_fraction / math.pi) - mask_margin, 0.3 * mask_margin)
    axis_ratio = float(rng.uniform(0.6, 1.0))
    angle = float(rng.uniform(0, math.pi))
    ca, sa = math.cos(angle), math.sin(angle)
    calcs = []
    for size in sizes:
        # uniform in an ellipse of semi-axes spread, spread·axis_ratio
        rho, phi = math.sqrt(rng.random()), rng.uniform(0, 2 * math.pi)
        a, b = spread * rho * math.cos(phi), spread * axis_ratio * rho * math.sin(phi)
        calcs.append(
            Calcification(
                dv=a * ca - b * sa,
                du=a * sa + b * ca,
                size=float(size),
                elongation=float(rng.uniform(*calc_kw["elongation"])),
                angle=float(rng.uniform(0, math.pi)),
                amplitude=float(rng.uniform(*calc_kw["amplitude"])),
                lobes=int(rng.integers(calc_kw["lobes"][0], calc_kw["lobes"][1] + 1)),
            )
        )
    if n == 1:  # a single calcification sits at the lesion centre
        calcs[0] = dataclasses.replace(calcs[0], du=0.0, dv=0.0)
    return Lesion(
        kind=kind,
        u=u,
        v=v,
        radius=spread,
        amplitude=0.0,
        axis_ratio=axis_ratio,
        angle=angle,
        harmonics=(),
        margin=0.0,
        calcs=tuple(calcs),
        mask_margin=mask_margin,
    )


def draw_lesions(
    rng: np.random.Generator,
    anatomy: Anatomy,
    aspect: float,
    conspicuity: Conspicuity | None = None,
    glands: np.ndarray | None = None,
) -> list[Lesion]:
    """Draw the image's findings: category (none/benign/malignant/both), kinds, sizes and places.

    Args:
        rng: the image's layout stream.
        anatomy: where the breast and pectoral muscle are.
        aspect: ``W/H`` (to convert lengths in units of L into normalised ``u``/``v``).
        conspicuity: where lesions may sit (:attr:`Conspicuity.dense_placement`); default: anywhere.
        glands: the :func:`glandular_pattern` of the image (needed when ``dense_placement`` > 0).
    """
    dense_placement = (conspicuity or Conspicuity()).dense_placement
    if dense_placement > 0 and glands is None:
        raise ValueError("dense_placement needs the image's glandular pattern")
    category = int(rng.choice(4, p=np.asarray(CATEGORY_PROBS)))
    classes = {0: (), 1: ("benign",), 2: ("malignant",), 3: ("benign", "malignant")}[category]
    kinds: list[str] = []
    for cls in classes:
        count = 1 + int(rng.choice(3, p=np.asarray(LESION_COUNT_PROBS)))
        kinds += [_choice(rng, BENIGN_KINDS if cls == "benign" else MALIGNANT_KINDS) for _ in range(count)]
    lesions: list[Lesion] = []
    # lengths in units of L: one L is sqrt(W/H) image heights and sqrt(H/W) image widths
    to_u, to_v = math.sqrt(aspect), 1.0 / math.sqrt(aspect)
    for kind in kinds:
        if kind.endswith("_mass"):
            area = _log_normal(rng, 0.009, 0.7, 0.0005, 0.03)
        else:
            area = _log_normal(rng, 0.007, 0.6, 0.0005, 0.02)
        reach = math.sqrt(area / math.pi)
        # (no draw at all without dense placement: the layout stream of version 3 is kept)
        in_dense = dense_placement > 0 and rng.random() < dense_placement
        place = _place(rng, anatomy, lesions, reach, to_u, to_v, glands if in_dense else None)
        if place is None and in_dense:  # no free dense tissue (a fatty breast): anywhere in the breast
            place = _place(rng, anatomy, lesions, reach, to_u, to_v, None)
        if place is None:
            continue  # no room left in this breast; the image gets one lesion fewer
        u, v = place
        if kind.endswith("_mass"):
            lesions.append(_draw_mass(rng, kind, u, v, area))
        else:
            lesions.append(_draw_calc_cluster(rng, kind, u, v, area))
    return lesions


def _place(
    rng: np.random.Generator,
    anatomy: Anatomy,
    lesions: list[Lesion],
    reach: float,
    to_u: float,
    to_v: float,
    glands: np.ndarray | None,
) -> tuple[float, float] | None:
    """A lesion centre ``(u, v)`` by rejection sampling (analytically, so size-independent): inside the
    breast (≤ 0.78 of its radius), outside the pectoral muscle, apart from the ``lesions`` placed
    already and, when ``glands`` is given, in dense tissue; ``None`` after 200 tries."""
    for _ in range(200):
        u, v = float(rng.uniform(0.03, 0.97)), float(rng.uniform(0.02, 0.95))
        r = float(anatomy.radius(np.float32(u), np.float32(v)))
        if r > 0.78 or float(anatomy.pectoral(np.float32(u), np.float32(v))) < 1.25:
            continue
        if any(math.hypot((u - o.u) / to_u, (v - o.v) / to_v) < 1.3 * (reach + o.extent) + 0.02 for o in lesions):
            continue
        if glands is not None and _pattern_at(glands, u, v) < DENSE_TISSUE:
            continue
        return u, v
    return None


# ----------------------------------------------------------------------------- rendering
def _crop(lesion: Lesion, h: int, w: int, reach_px: float) -> tuple[slice, slice, np.ndarray, np.ndarray] | None:
    """Pixel window around a lesion and its pixel-centre offsets (rows ``dy`` H'×1, columns ``dx`` 1×W')."""
    cy, cx = lesion.u * h, lesion.v * w
    r0, r1 = max(int(math.floor(cy - reach_px)), 0), min(int(math.ceil(cy + reach_px)) + 1, h)
    c0, c1 = max(int(math.floor(cx - reach_px)), 0), min(int(math.ceil(cx + reach_px)) + 1, w)
    if r0 >= r1 or c0 >= c1:
        return None
    dy = (np.arange(r0, r1, dtype=np.float32) + 0.5 - cy)[:, None]
    dx = (np.arange(c0, c1, dtype=np.float32) + 0.5 - cx)[None, :]
    return slice(r0, r1), slice(c0, c1), dy, dx


def _render_mass(
    lesion: Lesion,
    density: np.ndarray,
    mask: np.ndarray,
    unit: float,
    texture: np.ndarray,
    contrast: float = 1.0,
    masking: float = 0.4,
) -> None:
    """Add a mass to the glandular-density field and its region to ``mask`` (all ``H×W``; in place).

    ``texture`` (the standardised tissue field) modulates the mass a little, so it has an inner
    structure instead of a flat plateau. ``contrast`` and ``masking`` (:class:`Conspicuity`) scale
    what the mass adds; its outline, margin and spicules keep their form.
    """
    h, w = density.shape
    radius_px = lesion.radius * unit
    window = _crop(lesion, h, w, lesion.extent * unit + 2)
    if window is None:
        return
    rows, cols, dy, dx = window
    ca, sa = math.cos(lesion.angle), math.sin(lesion.angle)
    # oval of the same area as the disc of radius R: semi-axes R/sqrt(q), R·sqrt(q)
    a = radius_px / math.sqrt(lesion.axis_ratio)
    b = radius_px * math.sqrt(lesion.axis_ratio)
    x1 = dx * ca + dy * sa
    y1 = -dx * sa + dy * ca
    rho = np.sqrt((x1 / a) ** 2 + (y1 / b) ** 2)
    theta = np.arctan2(y1 / b, x1 / a)
    bound = np.ones_like(theta)
    for k, (amp, phase) in enumerate(lesion.harmonics, start=2):
        bound += amp * np.cos(k * theta + phase)
    s = rho / np.maximum(bound, 0.35)  # 1 on the lesion boundary
    e = lesion.margin
    profile = _smoothstep((1.0 - s) / e + 0.5) * (0.85 + 0.15 * np.clip(1.0 - s * s, 0.0, 1.0))
    add = contrast * lesion.amplitude * profile
    for angle, length, width, amp in lesion.spicules:
        c, si = math.cos(angle), math.sin(angle)
        t = (dx * c + dy * si) / radius_px  # along the spicule, in radii
        p = (-dx * si + dy * c) / radius_px  # across
        half_width = np.maximum(width * (1.0 - t / length), 0.8 / radius_px)  # ≥ ~1.5 px wide
        along = np.clip(1.0 - t / length, 0.0, 1.0)
        spike = contrast * amp * lesion.amplitude * along * np.exp(-((p / half_width) ** 2))
        add = np.maximum(add, np.where(t > 0, spike, 0.0))
    add *= 1.0 + 0.12 * np.clip(texture[rows, cols], -2.5, 2.5)
    region = density[rows, cols]
    # a mass partly hides in dense tissue (the masking effect), fully shows in fat
    density[rows, cols] = region + add * (1.0 - masking * np.clip(region, 0.0, 1.0))
    mask[rows, cols] |= s < 1.0 - e / 2  # the visible border: half-way down the edge ramp


def _convex_hull(points: np.ndarray) -> np.ndarray:
    """Monotone-chain convex hull of ``K×2`` points, counter-clockwise; 1 or 2 points when degenerate."""
    pts = np.unique(points, axis=0)
    if len(pts) <= 2:
        return pts

    def cross(o, a, b):
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

    lower: list = []
    for p in pts:
        while len(lower) >= 2 and cross(lower[-2], lower[-1], p) <= 0:
            lower.pop()
        lower.append(p)
    upper: list = []
    for p in pts[::-1]:
        while len(upper) >= 2 and cross(upper[-2], upper[-1], p) <= 0:
            upper.pop()
        upper.append(p)
    return np.array(lower[:-1] + upper[:-1])


def _dilated_hull_mask(hull: np.ndarray, margin: float, dy: np.ndarray, dx: np.ndarray) -> np.ndarray:
    """Pixels within ``margin`` of the convex polygon ``hull`` (``K×2`` as (x, y), pixel offsets)."""
    y, x = np.broadcast_arrays(dy, dx)
    inside = np.zeros(y.shape, dtype=bool)
    k = len(hull)
    if k >= 3:
        inside[...] = True
        for i in range(k):
            (x0, y0), (x1, y1) = hull[i], hull[(i + 1) % k]
            inside &= (x1 - x0) * (y - y0) - (y1 - y0) * (x - x0) >= 0  # left of every CCW edge
    near = np.full(y.shape, np.inf, dtype=np.float32)
    for i in range(k):
        p0, p1 = hull[i], hull[(i + 1) % k]
        seg = p1 - p0
        ll = float(seg @ seg)
        t = np.zeros_like(x) if ll == 0 else np.clip(((x - p0[0]) * seg[0] + (y - p0[1]) * seg[1]) / ll, 0.0, 1.0)
        d2 = (x - p0[0] - t * seg[0]) ** 2 + (y - p0[1] - t * seg[1]) ** 2
        near = np.minimum(near, d2)
    return inside | (near <= margin * margin)


def _render_calcs(lesion: Lesion, image: np.ndarray, mask: np.ndarray, unit: float, contrast: float) -> None:
    """Add a calcification cluster's dots to the intensity image and its dilated hull to ``mask`` (in place)."""
    h, w = image.shape
    window = _crop(lesion, h, w, lesion.extent * unit + 2)
    if window is None:
        return
    rows, cols, dy, dx = window
    add = np.zeros((dy.shape[0], dx.shape[1]), dtype=np.float32)
    centres = []
    for calc in lesion.calcs:
        cy, cx = calc.du * unit, calc.dv * unit
        centres.append((cx, cy))
        ca, sa = math.cos(calc.angle), math.sin(calc.angle)
        size_px = calc.size * unit
        if lesion.kind == "coarse_calcification":
            # popcorn: a few overlapping discs with a one-pixel soft edge
            for j in range(calc.lobes):
                off = 0.0 if j == 0 else 0.6 * size_px
                phi = calc.angle + 2.0 * math.pi * j / max(calc.lobes - 1, 1)
                ox, oy = cx + off * math.cos(phi), cy + off * math.sin(phi)
                x1 = (dx - ox) * ca + (dy - oy) * sa
                y1 = -(dx - ox) * sa + (dy - oy) * ca
                rad = size_px * (1.0 if j == 0 else 0.7)
                rho = np.sqrt((x1 / calc.elongation) ** 2 + y1**2)
                disc = np.clip(rad - rho + 0.5, 0.0, 1.0)
                add = np.maximum(add, calc.amplitude * contrast * disc)
        else:
            # fine calcification: an elongated Gaussian; below a pixel, blur and lower the peak so the
            # integrated brightness is what a downsampled bigger image would show
            sx, sy = size_px * calc.elongation, size_px
            sxe, sye = math.hypot(sx, 0.4), math.hypot(sy, 0.4)
            peak = calc.amplitude * contrast * (sx * sy) / (sxe * sye)
            x1 = (dx - cx) * ca + (dy - cy) * sa
            y1 = -(dx - cx) * sa + (dy - cy) * ca
            add = np.maximum(add, peak * np.exp(-0.5 * ((x1 / sxe) ** 2 + (y1 / sye) ** 2)))
    image[rows, cols] += add
    hull = _convex_hull(np.asarray(centres, dtype=np.float64))
    mask[rows, cols] |= _dilated_hull_mask(hull, lesion.mask_margin * unit, dy, dx)


def render(
    anatomy: Anatomy,
    lesions: list[Lesion],
    image_size: tuple[int, int],
    texture: np.ndarray,
    noise_rng: np.random.Generator,
    conspicuity: Conspicuity | None = None,
) -> tuple[np.ndarray, dict[str, np.ndarray], list[np.ndarray]]:
    """Draw the image.

    Args:
        anatomy: breast parameters.
        lesions: findings to draw.
        image_size: ``(H, W)``.
        texture: ``H×W`` standardised power-law field.
        noise_rng: stream for the detector noise.
        conspicuity: how much the lesions add (:attr:`Conspicuity.contrast`); default that of version 3.

    Returns:
        ``(image, masks, lesion_masks)``: ``H×W`` uint16 image, class → ``H×W`` bool, and one
        ``H×W`` bool mask per lesion (clipped to the breast).
    """
    h, w = image_size
    conspicuity = conspicuity or Conspicuity()
    contrast = conspicuity.contrast
    unit = math.sqrt(h * w)  # pixels per unit of L
    u = ((np.arange(h, dtype=np.float32) + 0.5) / h)[:, None]
    v = ((np.arange(w, dtype=np.float32) + 0.5) / w)[None, :]
    r = anatomy.radius(u, v)
    # distance to the skin in pixels, to first order: (1 - r) / |∇r|
    gy, gx = np.gradient(r)
    grad = np.sqrt(gy * gy + gx * gx) + np.float32(1e-6)
    dist = (1.0 - r) / grad
    coverage = np.clip(dist + 0.5, 0.0, 1.0)  # anti-aliased silhouette
    breast = coverage > 0.5

    density = glandular_fraction(anatomy, texture, r)

    masks = {c: np.zeros((h, w), dtype=bool) for c in CLASSES}
    lesion_masks = []
    for lesion in lesions:
        if lesion.calcs:
            continue
        own = np.zeros((h, w), dtype=bool)
        _render_mass(lesion, density, own, unit, texture, contrast, conspicuity.masking)
        lesion_masks.append((lesion, own))

    image = anatomy.fat_level + anatomy.gland_contrast * density
    if anatomy.view == "MLO":
        # pectoral muscle, computed only in its bounding box (top-left corner)
        rows = min(h, int(math.ceil(anatomy.pect_left * 1.15 * h)) + 1)
        cols = min(w, int(math.ceil(anatomy.pect_top * 1.15 * w)) + 1)
        m = anatomy.pectoral(u[:rows], v[:, :cols])
        weight = _smoothstep((1.0 - m) / 0.04)
        # brighter towards the corner, with a faint trace of the tissue texture (muscle fibres)
        muscle = (
            anatomy.fat_level
            + anatomy.muscle_contrast * (1.0 - 0.25 * np.clip(m, 0, 1))
            + 0.12 * anatomy.gland_contrast * texture[:rows, :cols]
        )
        image[:rows, :cols] = (1.0 - weight) * image[:rows, :cols] + weight * muscle
    # thinner breast near the skin → darker periphery; then the skin line itself
    falloff_px = 0.07 * unit
    image *= anatomy.edge_falloff + (1.0 - anatomy.edge_falloff) * _smoothstep(dist / falloff_px)
    skin_px = max(0.6, 0.0025 * unit)
    image += anatomy.skin_contrast * np.exp(-((np.maximum(dist, 0.0) / skin_px) ** 2))

    for lesion in lesions:
        if not lesion.calcs:
            continue
        own = np.zeros((h, w), dtype=bool)
        _render_calcs(lesion, image, own, unit, contrast * anatomy.gland_contrast)
        lesion_masks.append((lesion, own))

    image += noise_rng.standard_normal((h, w), dtype=np.float32) * np.float32(anatomy.noise_sigma)
    image *= coverage
    image_u16 = np.clip(np.rint(image), 0, MAX_VALUE).astype(np.uint16)

    ordered = []
    for lesion in lesions:  # back in drawing order
        own = next(m for les, m in lesion_masks if les is lesion)
        own &= breast
        masks[lesion.cls] |= own
        ordered.append(own)
    return image_u16, masks, ordered


def _normal_quantile(p: float) -> float:
    """Inverse standard normal CDF, clamped away from 0 and 1."""
    return NormalDist().inv_cdf(min(max(p, 1e-6), 1 - 1e-6))


def sample_id(seed: int, split: str, index: int) -> str:
    """The id of synthetic image ``index`` of ``split`` under ``seed``."""
    return f"synth-s{seed}-{split}-{index:05d}"


def generate(
    seed: int, split: str, index: int, image_size: tuple[int, int], conspicuity: Conspicuity | None = None
) -> SyntheticImage:
    """Generate one synthetic mammogram.

    Args:
        seed: dataset seed (≥0).
        split: "train", "val" or "test".
        index: image index in the split (≥0).
        image_size: ``(H, W)``; any size from a few dozen pixels up.
        conspicuity: how conspicuous the lesions are (default :data:`DEFAULT_CONSPICUITY`).

    Returns:
        the image, its masks, labels and meta (see :class:`SyntheticImage`).
    """
    h, w = int(image_size[0]), int(image_size[1])
    if h < 16 or w < 16:
        raise ValueError(f"image_size must be at least 16×16, got {h}×{w}")
    conspicuity = DEFAULT_CONSPICUITY if conspicuity is None else conspicuity
    layout = image_rng(seed, split, index, _STREAM_LAYOUT)
    anatomy = draw_anatomy(layout)
    glands = None
    if conspicuity.dense_placement > 0:
        glands = glandular_pattern(anatomy, image_rng(seed, split, index, _STREAM_TEXTURE_LOW), aspect=w / h)
    lesions = draw_lesions(layout, anatomy, w / h, conspicuity, glands)
    texture = power_law_noise(
        (h, w),
        anatomy.beta,
        image_rng(seed, split, index, _STREAM_TEXTURE_LOW),
        image_rng(seed, split, index, _STREAM_TEXTURE_HIGH),
        elongation=anatomy.texture_elongation,
    )
    image, masks, lesion_masks = render(
        anatomy, lesions, (h, w), texture, image_rng(seed, split, index, _STREAM_NOISE), conspicuity
    )
    records = []
    for lesion, own in zip(lesions, lesion_masks, strict=True):
        area = int(own.sum())
        if area == 0:
            continue  # clipped away entirely (possible only at tiny sizes)
        records.append(
            {
                "class": lesion.cls,
                "kind": lesion.kind,
                "area_px": area,
                "centre": (round(lesion.u * h, 1), round(lesion.v * w, 1)),
            }
        )
    labels = {c: int(masks[c].any()) for c in CLASSES}
    meta = {
        "id": sample_id(seed, split, index),
        "view": anatomy.view,
        "laterality": anatomy.laterality,
        "density": round(anatomy.density, 4),
        "density_category": anatomy.density_category,
        "lesions": records,
        "lesion_areas": {c: [rec["area_px"] for rec in records if rec["class"] == c] for c in CLASSES},
        "image_size": (h, w),
        "generator_version": GENERATOR_VERSION,
    }
    return SyntheticImage(image_u16=image, masks=masks, labels=labels, meta=meta)
