"""Synthetic cardiac phantoms: the embedded default dataset and the project's test data.

Each phantom is an (ED, ES) pair: ``moving`` = end-diastole, ``fixed`` = end-systole, with label masks
and the exact ground-truth displacement ``u`` in the project's warp convention

    warped(x) = ED(x + u(x)),

``u`` defined on the ES (fixed) grid, in voxels, component k along spatial axis k. The anatomy is an
analytic function of continuous coordinates; the ES frame is that function evaluated at
``x + u(x)`` (labels likewise, then thresholded), so the ground truth holds to interpolation error.
Noise is drawn independently per frame after the anatomy is rendered.

Kinds (``KINDS``):

- ``"acdc"``: short-axis cine-MRI-like 2D slices, several per subject from base to apex. Labels
  1 RV cavity, 2 LV myocardium, 3 LV cavity. Rician noise under a coil-like sigma map (sigma grows
  away from 4 coils), a smooth multiplicative bias field and phase-encode ghosts.
- ``"camus"``: apical 2D echo views ``2CH`` and ``4CH`` (the 4CH view adds the right heart) in a fan
  field of view (``sector_mask``). Labels 1 LV cavity, 2 myocardium, 3 left atrium. Spatially
  correlated multiplicative speckle, depth attenuation, dropout (lateral-wall signal loss).
- ``"echo3d"``: one 3D echo-like volume pair per subject, a truncated prolate LV shell (open base) in
  a circular cone. Labels 1 LV cavity, 2 myocardium.

Motion ED -> ES: in LV-frame coordinates scaled so that the endocardium is a sphere/circle of radius
``a``, a radial map ``R(r) = (r^n + c)^(1/n)`` (n = ndim, area/volume preserving: det J = 1 on the
whole wall) blended smoothly to the identity near the centre and far from the heart, preceded by a
small blended translation of the heart and followed by a twist about the centre / long axis (2D:
decaying with distance; 3D: opposite at base and apex). The blends are checked to keep the radial
profile strictly increasing and the translation's gradient below 1/2, so the map never folds. In 3D
and echo the scaled radial map also shortens the long axis.

Images are min-max normalised per image to [0, 1] (float32); ``noise_sigma`` is the true noise std
of the fixed frame in the same normalised units (ACDC: the Gaussian sigma of the Rician model; echo:
the effective std of the speckled intensity, ``clean * SPECKLE_SD``; exactly 0 outside the fan/cone).
``noise_scale`` (``config.data.noise_scale``, default 1) multiplies the noise std of both frames:
ACDC: the Gaussian sigma map of the Rician model; echo: the std of the mean-1 speckle multiplier
``|z|^q / E|z|^q``, by choosing its exponent q (0.5 at scale 1, 0 = no speckle at scale 0, ~2 at
scale 4), so the speckle stays multiplicative, non-negative and 0 outside the fan. The anatomy,
motion, bias, ghosts, attenuation and dropout, and every random draw, are the same at any scale.
Randomness: subject ``i`` draws from ``np.random.default_rng([seed, kind code, i, 0])`` and its pair
``j`` draws its noise from ``[seed, kind code, i, j + 1]``, so a subject never depends on how many
subjects are generated. Generation runs on the host (numpy/scipy only).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np
from scipy import ndimage, optimize, special

from hetreg_jax.base.errors import InputError

KINDS = ("acdc", "camus", "echo3d")
SPLITS = ("train", "val", "test")
_NDIM = {"acdc": 2, "camus": 2, "echo3d": 3}
_MIN_SIZE = 16
_EDGE = 0.5                       # partial-volume edge width of the clean anatomy, voxels
_SECTOR_HALF_ANGLE = np.deg2rad(30.0)
_SPECKLE_POWER = 0.5              # echo envelope compression: intensity = (reflectivity * |z|)^p
# std of the mean-1 speckle multiplier |z|^p / E|z|^p for a Rayleigh envelope |z|.
SPECKLE_SD = float(np.sqrt(special.gamma(1 + _SPECKLE_POWER)
                           / special.gamma(1 + _SPECKLE_POWER / 2) ** 2 - 1))
_ARRAY_KEYS = ("moving", "fixed", "moving_label", "fixed_label", "displacement", "noise_sigma")
_CHANNEL_KEYS = ("moving", "fixed", "noise_sigma")

Anatomy = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
Frame = Callable[[np.ndarray, np.random.Generator], tuple[np.ndarray, np.ndarray, np.ndarray]]


# ------------------------------------------------------------------------------------- geometry
def _grid(shape) -> np.ndarray:
    """Voxel coordinates ``[*shape, ndim]`` (float64)."""
    axes = [np.arange(n, dtype=np.float64) for n in shape]
    return np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)


def _rotation(angles) -> np.ndarray:
    """2D rotation for one angle, 3D ``Rz @ Ry @ Rx`` for three (radians)."""
    c, s = np.cos(angles), np.sin(angles)
    if len(angles) == 1:
        return np.array([[c[0], -s[0]], [s[0], c[0]]])
    rx = np.array([[1, 0, 0], [0, c[0], -s[0]], [0, s[0], c[0]]])
    ry = np.array([[c[1], 0, s[1]], [0, 1, 0], [-s[1], 0, c[1]]])
    rz = np.array([[c[2], -s[2], 0], [s[2], c[2], 0], [0, 0, 1]])
    return rz @ ry @ rx


def _local(points, centre, rot) -> np.ndarray:
    """Coordinates of ``points`` in the frame at ``centre`` whose axes are the columns of ``rot``."""
    return (points - centre) @ rot


def _smootherstep(t):
    t = np.clip(t, 0.0, 1.0)
    return t ** 3 * (t * (6.0 * t - 15.0) + 10.0)


def _norm(v) -> np.ndarray:
    """Euclidean norm over the last axis."""
    return np.sqrt(np.einsum("...i,...i->...", v, v))


def _ellipsoid_sd(local, semi) -> np.ndarray:
    """First-order signed distance (voxels, < 0 inside) to the ellipsoid ``sum (local/semi)^2 = 1``."""
    semi = np.asarray(semi, dtype=np.float64)
    unit = local / semi
    q, g = _norm(unit), _norm(unit / semi)
    return np.where(q > 1e-9, (q - 1.0) * q / np.maximum(g, 1e-12), -semi.min())


def _paint(img, lab, sd, value, label=None):
    """Layer a shape (signed distance ``sd``) over ``img`` with a soft edge; set ``label`` inside."""
    occupancy = 0.5 * (1.0 - np.tanh(sd / _EDGE))
    img = img + occupancy * (value - img)
    if label is not None:
        lab = np.where(sd < 0, np.uint8(label), lab)
    return img, lab


@dataclasses.dataclass(frozen=True)
class _Texture:
    """Smooth random field (unit variance): a sum of random plane waves, exact at any coordinate."""
    freq: np.ndarray   # [M, ndim] cycles per voxel
    phase: np.ndarray  # [M]

    def __call__(self, points):
        # float32 phases: the texture only shades intensities, and float32 cos is several times faster
        waves = np.cos((2 * np.pi * (points @ self.freq.T) + self.phase).astype(np.float32))
        return np.sqrt(2.0 / len(self.phase)) * waves.sum(axis=-1, dtype=np.float64)


def _texture(rng, ndim, wavelengths, modes=12) -> _Texture:
    direction = rng.normal(size=(modes, ndim))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    wavelength = np.exp(rng.uniform(*np.log(wavelengths), size=(modes, 1)))
    return _Texture(direction / wavelength, rng.uniform(0, 2 * np.pi, modes))


# --------------------------------------------------------------------------------------- motion
@dataclasses.dataclass(frozen=True)
class _Motion:
    """ES -> ED point map (see the module docstring); all radii in scaled LV-frame voxels."""
    centre: np.ndarray  # [ndim] voxels
    rot: np.ndarray     # [ndim, ndim] LV frame axes as columns (3D: the last one is the long axis)
    scale: np.ndarray   # [ndim] LV-frame axis scaling to the space where the endocardium is round
    c: float            # radial constant, R(r)^n = r^n + c
    r_in: float         # blend 0 -> 1 over [0, r_in] (regular at the centre)
    r1: float           # blend 1 -> 0 over [r1, r2] (no motion far from the heart)
    r2: float
    twist: float        # radians
    shift: np.ndarray   # [ndim] voxels: heart translation (applied first), blended out like the radial map

    def falloff(self, r):
        return 1.0 - _smootherstep((r - self.r1) / (self.r2 - self.r1))

    def radius(self, r):
        """ED radius of the ES radius ``r`` (strictly increasing)."""
        n = len(self.scale)
        blend = _smootherstep(r / self.r_in) * self.falloff(r)
        return r + blend * ((r ** n + self.c) ** (1.0 / n) - r)

    def ed_points(self, x) -> np.ndarray:
        """ED positions ``x + u(x)`` of the ES points ``x`` ``[..., ndim]`` (voxels)."""
        blend = self.falloff(_norm(_local(x, self.centre, self.rot) / self.scale))
        q = _local(x + self.shift * blend[..., None], self.centre, self.rot) / self.scale
        r = _norm(q)
        rho = self.radius(r)
        q = q * (rho / np.maximum(r, 1e-12))[..., None]
        theta = self.twist * self.falloff(rho)
        if q.shape[-1] == 3:  # base and apex turn in opposite directions
            theta = theta * q[..., 2] / self.r1
        cos, sin = np.cos(theta), np.sin(theta)
        q0, q1 = q[..., 0].copy(), q[..., 1].copy()
        q[..., 0], q[..., 1] = cos * q0 - sin * q1, sin * q0 + cos * q1
        return (q * self.scale) @ self.rot.T + self.centre


def _make_motion(centre, rot, scale, r_endo, contraction, r_epi, twist, shift) -> _Motion:
    """Contract the ED endocardial radius ``r_endo`` to ``contraction * r_endo`` at ES.

    The ES -> ED map is twist o radial map o translation. Each factor is invertible: the radial
    profile is strictly increasing (checked here), the twist is a shear in polar/cylindrical
    coordinates (det 1), and the blended translation has a gradient norm below 1/2 (checked;
    ``scale >= 1`` so the scaled radius is 1-Lipschitz).
    """
    n = len(scale)
    motion = _Motion(np.asarray(centre, float), np.asarray(rot, float), np.asarray(scale, float),
                     c=r_endo ** n * (1 - contraction ** n), r_in=0.8 * contraction * r_endo,
                     r1=1.2 * r_epi, r2=2.7 * r_epi, twist=float(twist), shift=np.asarray(shift, float))
    profile = motion.radius(np.linspace(0.0, 1.2 * motion.r2, 4096))
    shift_gradient = np.linalg.norm(shift) * 1.875 / (motion.r2 - motion.r1)
    if np.any(np.diff(profile) <= 0) or shift_gradient >= 0.5 or np.min(motion.scale) < 1:
        raise RuntimeError(f"phantom motion would fold: {motion}")
    return motion


def _random_shift(rng, ndim, low, high) -> np.ndarray:
    direction = rng.normal(size=ndim)
    return direction / np.linalg.norm(direction) * rng.uniform(low, high)


# ------------------------------------------------------------------------------ ACDC-like MRI
_MRI = dict(blood=0.9, myo=0.3, tissue=0.42, fat=0.8, lung=0.05)


def _coil_sigma(rng, grid, lv, size) -> np.ndarray:
    """Noise std map (clean-intensity units) ~ 1/sqrt(sum of 4 coil sensitivities^2 + eps):
    lowest at the coils, rising smoothly up to ~4-6x far from them."""
    corners = np.array([[-0.5, -0.35], [-0.5, 0.35], [0.55, -0.35], [0.55, 0.35]])
    coils = lv + (corners + rng.normal(0, 0.06, (4, 2))) * size
    width = rng.uniform(0.2, 0.3, 4) * size
    dist2 = np.sum((grid[..., None, :] - coils) ** 2, axis=-1)
    eps = rng.uniform(4.0, 6.0) ** -2
    raw = 1.0 / np.sqrt(np.sum(np.exp(-dist2 / width ** 2), axis=-1) + eps)
    return rng.uniform(0.02, 0.035) * raw / raw.min()


def _mri_frame(rng, grid, lv, size) -> Frame:
    """Bias field, two phase-encode ghosts of random strength, then Rician noise."""
    bias_field = ndimage.gaussian_filter(rng.standard_normal(grid.shape[:-1]), size / 6)
    bias = 1.0 + rng.uniform(0.08, 0.2) * bias_field / np.abs(bias_field).max()
    sigma = _coil_sigma(rng, grid, lv, size)
    axis = int(rng.integers(2))
    shift = int(grid.shape[axis] // rng.choice([3, 4]))

    def frame(anatomy, noise_rng, noise_scale=1.0):
        clean = anatomy * bias
        ghost = np.roll(clean, shift, axis) + np.roll(clean, -shift, axis)
        clean = clean + 0.5 * noise_rng.uniform(0.02, 0.05) * ghost
        scaled = sigma * noise_scale if noise_scale != 1.0 else sigma
        real = clean + scaled * noise_rng.standard_normal(clean.shape)
        return np.hypot(real, scaled * noise_rng.standard_normal(clean.shape)), clean, scaled
    return frame


def _acdc_anatomy(g, tex: _Texture) -> Anatomy:
    """Body, fat, lungs, aorta/spine/liver, RV crescent, LV ring with papillary muscles."""
    def anatomy(x):
        img, lab = np.zeros(x.shape[:-1]), np.zeros(x.shape[:-1], np.uint8)
        t = tex(x)
        body = _ellipsoid_sd(_local(x, g["body_c"], g["body_rot"]), g["body_semi"])
        img, _ = _paint(img, lab, body, _MRI["fat"])
        img, _ = _paint(img, lab, body + g["fat"], _MRI["tissue"] + 0.07 * t)
        for centre, semi, rot, value in g["structures"]:
            img, _ = _paint(img, lab, _ellipsoid_sd(_local(x, centre, rot), semi), value + 0.02 * t)
        d = x - g["lv"]
        r, phi = _norm(d), np.arctan2(d[..., 1], d[..., 0])
        endo_r = g["a"] * (1 + sum(e * np.cos(k * (phi - p)) for k, e, p in g["harmonics"]))
        endo = r - endo_r
        epi = r - endo_r - g["w"] * (1 + g["w_var"] * np.cos(phi - g["w_phase"]))
        rv = _ellipsoid_sd(_local(x, g["rv_c"], g["rv_rot"]), g["rv_semi"])
        img, _ = _paint(img, lab, np.maximum(rv - g["rv_wall"], -epi), _MRI["myo"])
        img, lab = _paint(img, lab, np.maximum(rv, -epi), _MRI["blood"] + 0.03 * t, 1)
        img, lab = _paint(img, lab, epi, _MRI["myo"] + 0.03 * t, 2)
        img, lab = _paint(img, lab, endo, _MRI["blood"] + 0.03 * t, 3)
        for centre, radius in g["papillary"]:
            pap = np.maximum(_norm(x - centre) - radius, endo)
            img, _ = _paint(img, lab, pap, _MRI["myo"])
        return img, lab
    return anatomy


def _acdc_pairs(rng, shape, n_slices):
    size = float(min(shape))
    grid = _grid(shape)
    lv0 = (np.array(shape) - 1) / 2 + rng.normal(0, 0.03, 2) * size
    a0, w0 = rng.uniform(0.085, 0.12) * size, rng.uniform(0.06, 0.08) * size
    contraction = rng.uniform(0.5, 0.65)
    shift = _random_shift(rng, 2, 0.02 * size, 0.045 * size)
    twist, rv_size = rng.uniform(0.05, 0.2) * rng.choice([-1, 1]), rng.uniform(0.7, 1.1)
    rv_angle = -np.pi / 2 - 0.3 + rng.uniform(-0.3, 0.3)   # RV towards the image left, slightly up
    eye = np.eye(2)

    def ellipse(offset, semi, angle, value):  # offset and semi-axes in units of the image size
        return lv0 + np.asarray(offset) * size, np.asarray(semi) * size, _rotation([angle]), value
    structures = [ellipse([0.05, 0.33], [0.25, 0.14], rng.uniform(0.1, 0.4), _MRI["lung"]),
                  ellipse([0.05, -0.36], [0.25, 0.14], -rng.uniform(0.1, 0.4), _MRI["lung"]),
                  ellipse([0.22, -0.3], [0.16, 0.2], 0.0, 0.33),                        # liver
                  ellipse([0.42, 0.02], [0.06, 0.07], 0.0, 0.22),                       # spine
                  ellipse(np.array([0.3, 0.12]) + rng.normal(0, 0.02, 2),
                          np.full(2, rng.uniform(0.035, 0.05)), 0.0, _MRI["blood"])]   # aorta
    g0 = dict(body_c=lv0 + np.array([0.12, 0.0]) * size, body_rot=_rotation([rng.uniform(-0.1, 0.1)]),
              body_semi=np.array([rng.uniform(0.5, 0.56), rng.uniform(0.75, 0.85)]) * size,
              fat=rng.uniform(0.02, 0.035) * size, structures=structures)
    frame = _mri_frame(rng, grid, lv0, size)
    pairs = []
    for j, level in enumerate(np.linspace(0, 1, n_slices) if n_slices > 1 else [0.5]):
        lv = lv0 + rng.normal(0, 0.01, 2) * size
        a, w = a0 * (1 - 0.4 * level), w0 * (1 - 0.1 * level)
        harmonics = [(k, rng.uniform(0, 0.05), rng.uniform(0, 2 * np.pi)) for k in (2, 3)]
        rv = rv_size * (1 - 0.55 * level) * (a + w)
        direction = np.array([np.cos(rv_angle), np.sin(rv_angle)])
        pap_angles = rv_angle + np.pi + np.array([-0.8, 0.8]) + rng.uniform(-0.2, 0.2, 2)
        g = dict(g0, lv=lv, a=a, w=w, harmonics=harmonics, w_var=rng.uniform(0, 0.15),
                 w_phase=rng.uniform(0, 2 * np.pi),
                 rv_c=lv + direction * rng.uniform(0.75, 0.95) * (a + w),
                 rv_rot=_rotation([rv_angle]), rv_semi=np.array([0.85, 1.5]) * rv,
                 rv_wall=0.02 * size, papillary=[
                     (lv + 0.72 * a * np.array([np.cos(t), np.sin(t)]), 0.17 * a) for t in pap_angles])
        a_min = a * (1 - sum(e for _, e, _ in harmonics))
        motion = _make_motion(lv, eye, np.ones(2), a_min, contraction, 1.5 * (a + w),  # RV included
                              twist * (2 * level - 0.8) + rng.normal(0, 0.02),
                              shift + _random_shift(rng, 2, 0.0, 0.005 * size))
        tex = _texture(rng, 2, np.array([4.0, 16.0]) * size / 128)
        pairs.append((f"_slice{j:02d}", _acdc_anatomy(g, tex), motion, frame))
    return pairs


# ------------------------------------------------------------------------------------- echo
_ECHO = dict(tissue=0.22, clutter=0.6, peri=1.0, myo=0.45, wall=0.32, blood=0.015)


def _probe(shape):
    """(depth from the virtual probe in voxels, field-of-view bool) on the grid."""
    x = _grid(shape)
    apex = np.array([-0.04 * shape[0]] + [(n - 1) / 2 for n in shape[1:]])
    d = x - apex
    depth = _norm(d)
    return depth, (d[..., 0] >= depth * np.cos(_SECTOR_HALF_ANGLE)) & (depth <= shape[0])


def sector_mask(image_size) -> np.ndarray:
    """Echo field of view (bool ``image_size``): a fan (2D) or circular cone (3D), 30 deg half-angle,
    apex (probe) 4% of axis 0 above row 0, centred on the other axes, depth up to ``image_size[0]``.
    Axis 0 is depth. Echo phantom images and noise maps are exactly 0 outside it."""
    return _probe(tuple(int(n) for n in image_size))[1]


def speckle_sd(power: float) -> float:
    """Std of the mean-1 multiplier ``|z|^q / E|z|^q`` for a Rayleigh envelope ``|z|``."""
    return float(np.sqrt(special.gamma(1 + power) / special.gamma(1 + power / 2) ** 2 - 1))


def speckle_power(noise_scale: float) -> float:
    """The exponent ``q`` whose multiplier std is ``noise_scale * SPECKLE_SD`` (0.5 at scale 1, 0 at 0)."""
    if noise_scale == 1.0:
        return _SPECKLE_POWER
    if noise_scale == 0.0:
        return 0.0
    target = noise_scale * SPECKLE_SD
    high = 1.0
    while speckle_sd(high) < target:
        high *= 2.0
    return float(optimize.brentq(lambda q: speckle_sd(q) - target, 0.0, high, xtol=1e-14))


def _speckle(rng, shape, sigma, power: float = _SPECKLE_POWER) -> np.ndarray:
    """Mean-1 speckle multiplier ``|z|^p / E|z|^p``; z complex Gaussian, correlated by a blur."""
    energy = 1.0
    for s in sigma:  # variance of blurred unit white noise = sum of squared kernel weights
        delta = np.zeros(2 * int(np.ceil(4 * s)) + 1)
        delta[len(delta) // 2] = 1.0
        energy *= np.sum(ndimage.gaussian_filter1d(delta, s, mode="constant") ** 2)
    z = [ndimage.gaussian_filter(rng.standard_normal(shape), sigma, mode="wrap") for _ in range(2)]
    envelope = np.hypot(*z) / np.sqrt(energy)  # Rayleigh with unit per-component variance
    mean = 2 ** (power / 2) * special.gamma(1 + power / 2)
    return envelope ** power / mean


def _echo_frame(rng, shape, lv_wall_point) -> Frame:
    """Depth attenuation, dropout blobs (one on the lateral wall), compression, speckle, fan/cone."""
    depth, fov = _probe(shape)
    size = float(min(shape))
    attenuation = np.exp(-rng.uniform(0.6, 1.4) * depth / shape[0])
    x = _grid(shape)
    random_point = np.array([rng.uniform(0.3, 0.9) * n for n in shape])
    dropout = np.ones(shape)
    for centre, amount in ((lv_wall_point, rng.uniform(0.6, 0.9)), (random_point, rng.uniform(0.3, 0.7))):
        radius = rng.uniform(0.07, 0.12) * size
        dropout *= 1 - amount * np.exp(-np.sum((x - centre) ** 2, axis=-1) / (2 * radius ** 2))
    reference = 128 if len(shape) == 2 else 64  # speckle cell ~0.8 voxel deep at 128^2 / 64^3
    sigma = np.full(len(shape), max(0.5, 0.8 * size / reference))
    sigma[1:] *= 1.6  # speckle cells are elongated across the beam

    def frame(reflectivity, noise_rng, noise_scale=1.0):
        clean = (reflectivity * attenuation * dropout) ** _SPECKLE_POWER * fov
        power = speckle_power(noise_scale)
        return clean * _speckle(noise_rng, shape, sigma, power), clean, clean * speckle_sd(power)
    return frame


def _echo_anatomy(g, tex: _Texture) -> Anatomy:
    """Textured tissue, near-field clutter, extra chambers, pericardium, LV shell cut at the base."""
    def anatomy(x):
        lab = np.zeros(x.shape[:-1], np.uint8)
        img = _ECHO["tissue"] * (1 + 0.3 * tex(x))
        img, _ = _paint(img, lab, x[..., 0] - g["clutter"], _ECHO["clutter"])
        loc = _local(x, g["centre"], g["rot"])
        base = -loc[..., -1] - g["base"]          # < 0 above the base plane (towards the apex)
        for centre, semi, label, below in g["chambers"]:
            sd = _ellipsoid_sd(loc - centre, semi)
            cut = -base if below else base
            img, _ = _paint(img, lab, np.maximum(sd - g["wall"], cut), _ECHO["wall"])
            img, lab = _paint(img, lab, np.maximum(sd, cut), _ECHO["blood"], label)
        outer = _ellipsoid_sd(loc, g["semi"] + g["w"])
        img, _ = _paint(img, lab, np.maximum(outer - g["wall"], base), _ECHO["peri"])
        img, lab = _paint(img, lab, np.maximum(outer, base), _ECHO["myo"] * (1 + 0.15 * tex(-x)), 2)
        img, lab = _paint(img, lab, np.maximum(_ellipsoid_sd(loc, g["semi"]), base), _ECHO["blood"], 1)
        return np.maximum(img, 0.005), lab  # every voxel in the field of view echoes a little
    return anatomy


def _echo_view(rng, shape, view, contraction, dims):
    """One echo pair: LV (truncated prolate ellipsoid, long axis towards the probe) + chambers."""
    nd, size = len(shape), float(min(shape))
    a, w, length, base_frac = dims
    if view == "2CH":
        a = a * 0.92
    canonical = np.array([[0, -1], [1, 0]]) if nd == 2 else np.array([[0, 0, -1], [1, 0, 0], [0, -1, 0]])
    tilt = rng.uniform(-0.12, 0.12, 1 if nd == 2 else 3)
    rot = _rotation(tilt) @ canonical          # columns: transverse axes, long axis (towards apex)
    lateral = {"2CH": 0.0, "4CH": 0.1, "3D": 0.0}[view]
    centre = np.array([rng.uniform(0.48, 0.53) if nd == 2 else rng.uniform(0.55, 0.6)] + [0.5] * (nd - 1))
    centre = centre * np.array(shape) + np.r_[0.0, lateral * size, [0.0] * (nd - 2)][:nd]
    semi = np.array([a] * (nd - 1) + [length])
    base = base_frac * length
    chambers = []
    if nd == 2:  # left atrium below the base; 4CH adds the right ventricle and atrium
        la = np.array([rng.uniform(0.11, 0.15), rng.uniform(0.12, 0.16)]) * size
        chambers.append((np.array([0.0, -base - 0.85 * la[1]]), la, 3, True))
        if view == "4CH":
            rv = np.array([rng.uniform(0.09, 0.12) * size, 0.75 * length])
            offset = -(a + w + 0.8 * rv[0])
            chambers.append((np.array([offset, 0.1 * length]), rv, 0, False))
            chambers.append((np.array([offset, -base - 0.85 * la[1]]), la * 0.95, 0, True))
    g = dict(centre=centre, rot=rot, semi=semi, w=w, base=base, chambers=chambers,
             wall=max(1.0, 0.015 * size), clutter=0.07 * shape[0])
    twist = rng.uniform(-0.05, 0.05) if nd == 2 else rng.uniform(0.1, 0.25) * rng.choice([-1, 1])
    k = np.sqrt(length / a)  # long-axis scaling: the apex moves less than a round LV's would
    motion = _make_motion(centre, rot, np.array([1.0] * (nd - 1) + [k]), a,
                          contraction * rng.uniform(0.97, 1.03), max(a + w, (length + w) / k), twist,
                          _random_shift(rng, nd, 0.0, 0.02 * size))
    wall_point = centre + rot @ np.r_[a + w / 2, [0.0] * (nd - 2), 0.2 * length]
    tex = _texture(rng, nd, np.array([3.0, 12.0]) * size / (128 if nd == 2 else 64))
    return _echo_anatomy(g, tex), motion, _echo_frame(rng, shape, wall_point)


def _camus_pairs(rng, shape, n_slices):
    size = float(min(shape))
    dims = (rng.uniform(0.11, 0.14) * size, rng.uniform(0.055, 0.07) * size,
            rng.uniform(0.25, 0.3) * size, rng.uniform(0.35, 0.5))
    contraction = rng.uniform(0.7, 0.82)
    return [(f"_{v}", *_echo_view(rng, shape, v, contraction, dims)) for v in ("2CH", "4CH")]


def _echo3d_pairs(rng, shape, n_slices):
    size = float(min(shape))
    dims = (rng.uniform(0.15, 0.19) * size, rng.uniform(0.085, 0.1) * size,
            rng.uniform(0.26, 0.32) * size, rng.uniform(0.3, 0.45))
    return [("", *_echo_view(rng, shape, "3D", rng.uniform(0.62, 0.76), dims))]


_BUILDERS = {"acdc": _acdc_pairs, "camus": _camus_pairs, "echo3d": _echo3d_pairs}


# ----------------------------------------------------------------------------------- public API
def _check_args(kind, image_size, seed, index=0, slices_per_subject=1) -> tuple[int, ...]:
    if kind not in KINDS:
        raise InputError(f"kind={kind!r}; expected one of {KINDS}")
    shape = tuple(int(n) for n in image_size)
    if len(shape) != _NDIM[kind] or min(shape) < _MIN_SIZE:
        raise InputError(f"{kind} needs a {_NDIM[kind]}D image_size with every side >= {_MIN_SIZE}; "
                         f"got {tuple(image_size)}")
    if int(seed) < 0 or int(index) < 0 or int(slices_per_subject) < 1:
        raise InputError("seed and index must be >= 0 and slices_per_subject >= 1")
    return shape


def _normalise(noisy, clean, sigma):
    """Min-max normalise ``noisy`` to [0, 1]; map ``clean`` the same way and rescale the std map."""
    lo, hi = noisy.min(), noisy.max()
    return [((noisy - lo) / (hi - lo)).astype(np.float32),
            ((clean - lo) / (hi - lo)).astype(np.float32), (sigma / (hi - lo)).astype(np.float32)]


def make_subject(kind: str, index: int, image_size, seed: int, slices_per_subject: int = 3,
                 return_clean: bool = False, noise_scale: float = 1.0) -> list[dict]:
    """The (ED, ES) pairs of phantom subject ``index``: acdc gives ``slices_per_subject`` slices
    (``_sliceNN``, 00 = base), camus the ``_2CH`` and ``_4CH`` views, echo3d one volume.

    Each dict: ``moving``/``fixed`` ``[*S]`` float32 in [0, 1] (ED/ES), ``moving_label``/
    ``fixed_label`` ``[*S]`` uint8, ``displacement`` ``[*S, ndim]`` float32 (voxels, ES grid,
    ``ES ~ ED(x + u)``), ``noise_sigma`` ``[*S]`` float32 (true noise std of ``fixed``),
    ``subject`` (``"synth_acdc_007"``) and ``pair_id``. ``return_clean`` adds ``moving_clean`` and
    ``fixed_clean``: the noise-free frames (bias, ghosts, attenuation included) in the same units.
    ``noise_scale`` multiplies the noise std of both frames (see the module docstring); 1 = as built.
    """
    shape = _check_args(kind, image_size, seed, index, slices_per_subject)
    if not (np.isfinite(noise_scale) and noise_scale >= 0):
        raise InputError(f"noise_scale={noise_scale!r}: a finite number >= 0")
    code = KINDS.index(kind)
    subject = f"synth_{kind}_{int(index):03d}"
    grid = _grid(shape)
    pairs = _BUILDERS[kind](np.random.default_rng([int(seed), code, int(index), 0]), shape,
                            int(slices_per_subject))
    out = []
    for j, (suffix, anatomy, motion, frame) in enumerate(pairs):
        noise_rng = np.random.default_rng([int(seed), code, int(index), j + 1])
        x_ed = motion.ed_points(grid)
        ed, ed_label = anatomy(grid)
        es, es_label = anatomy(x_ed)
        moving, moving_clean, _ = _normalise(*frame(ed, noise_rng, noise_scale))
        fixed, fixed_clean, sigma = _normalise(*frame(es, noise_rng, noise_scale))
        pair = dict(moving=moving, fixed=fixed, moving_label=ed_label, fixed_label=es_label,
                    displacement=(x_ed - grid).astype(np.float32), noise_sigma=sigma,
                    subject=subject, pair_id=subject + suffix)
        if return_clean:
            pair.update(moving_clean=moving_clean, fixed_clean=fixed_clean)
        out.append(pair)
    return out


def split_subjects(n_subjects: int, seed: int, split=(0.6, 0.2, 0.2)) -> dict[str, np.ndarray]:
    """Subject indices per split (sorted): a seeded permutation cut by the fractions ``split``
    (rounded; val and test get at least one subject each, train the rest, at least one)."""
    if n_subjects < 3:
        raise InputError(f"n_subjects={n_subjects}: need at least 3 subjects (one per split)")
    split = np.asarray(split, dtype=np.float64)
    if split.shape != (3,) or np.any(split <= 0) or not np.isclose(split.sum(), 1.0):
        raise InputError(f"split={tuple(split)}: three positive fractions summing to 1")
    n_val, n_test = (max(1, int(round(n_subjects * f))) for f in split[1:])
    while n_subjects - n_val - n_test < 1:
        if n_val >= n_test:
            n_val -= 1
        else:
            n_test -= 1
    perm = np.random.default_rng([int(seed), 1000]).permutation(n_subjects)
    parts = np.split(perm, [n_subjects - n_val - n_test, n_subjects - n_test])
    return {name: np.sort(p) for name, p in zip(SPLITS, parts)}


def make_dataset(kind: str, image_size, n_subjects: int, seed: int, split=(0.6, 0.2, 0.2),
                 slices_per_subject: int = 3, noise_scale: float = 1.0) -> dict[str, dict]:
    """``{"train", "val", "test"} -> pair set`` split by subject (``split_subjects``).

    A pair set stacks the pairs of its subjects (in subject order): ``moving``, ``fixed``,
    ``noise_sigma`` ``[N, *S, 1]``, ``moving_label``, ``fixed_label`` ``[N, *S]``, ``displacement``
    ``[N, *S, ndim]``, plus the lists ``subject`` and ``pair_id``.
    """
    _check_args(kind, image_size, seed, 0, slices_per_subject)
    out = {}
    for name, indices in split_subjects(n_subjects, seed, split).items():
        pairs = [p for i in indices
                 for p in make_subject(kind, int(i), image_size, seed, slices_per_subject,
                                       noise_scale=noise_scale)]
        stacked = {k: np.stack([p[k] for p in pairs]) for k in _ARRAY_KEYS}
        for k in _CHANNEL_KEYS:
            stacked[k] = stacked[k][..., None]
        stacked.update(subject=[p["subject"] for p in pairs], pair_id=[p["pair_id"] for p in pairs])
        out[name] = stacked
    return out

