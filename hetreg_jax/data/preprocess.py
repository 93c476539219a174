"""Host-side (numpy/scipy) preprocessing shared by the dataset loaders and ``--mode=register``.

Conventions:
- ``normalise``: per-image min-max to [0, 1] (float32); a constant image maps to all zeros.
- ``crop``/``uncrop`` (ACDC): a window of ``size`` whose centre voxel is ``round(centre)`` (the
  window starts at ``round(centre) - size // 2``), zero outside the source; no resampling.
  ``uncrop`` puts a window back into an array of the source shape (``fill`` elsewhere).
- ``resize`` (CAMUS, paired volumes, and undoing them): aligned corners, i.e. output index ``i``
  samples input coordinate ``i * (n_in - 1) / (n_out - 1)`` (the first and last voxels coincide).
  Images: linear, with an anti-aliasing Gaussian prefilter of sigma ``(s - 1) / 2`` input voxels
  along each axis downsampled by ``s = (n_in - 1) / (n_out - 1) > 1``, mirrored at the borders
  (scikit-image's rule);
  labels: nearest (``order=0``), never blurred. ``resize_field`` resizes a displacement field
  ``[*S, D]`` the same way and multiplies component ``k`` by ``scale_factors(...)[k]`` so that it
  stays in voxels of the new grid.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage

from hetreg_jax.base.errors import InputError


def normalise(image: np.ndarray) -> np.ndarray:
    """Min-max normalise to [0, 1] (float32); a constant image gives zeros."""
    image = np.asarray(image, np.float32)
    lo, hi = float(image.min()), float(image.max())
    if hi <= lo:
        return np.zeros_like(image)
    return ((image - lo) / (hi - lo)).astype(np.float32)


MOTION_SMOOTHING_MM = 10.0  # std of the Gaussian that smooths the ED-ES difference (about a third of an LV)


def motion_centre(ed: np.ndarray, es: np.ndarray, spacing: Sequence[float] = (1.0, 1.0),
                  sigma_mm: float = MOTION_SMOOTHING_MM) -> tuple[float, float]:
    """The heart's in-plane position (voxels, axes 0 and 1) found from the images alone: where ED
    and ES differ most. Both ``[X, Y, Z]`` (or ``[X, Y]``) stacks are min-max normalised over the
    stack, the absolute difference is averaged over the slices, smoothed with a Gaussian of
    ``sigma_mm`` mm (``spacing``: the in-plane voxel size in mm), and its maximum is the centre (the
    first one in index order on a tie); identical frames (no difference anywhere) give the image
    centre. The beating ventricles move most between ED and ES; other
    motion (breathing, a moving bowel) can win on some scans: the crop then misses the heart,
    which ``--mode=inspect`` shows."""
    ed = normalise(np.asarray(ed, np.float32))
    es = normalise(np.asarray(es, np.float32))
    if ed.shape != es.shape:
        raise InputError(f"ED shape {ed.shape} differs from ES shape {es.shape}")
    diff = np.abs(ed - es)
    diff = diff.reshape(*diff.shape[:2], -1).mean(axis=-1)
    sigma = [sigma_mm / float(s) for s in tuple(spacing)[:2]]
    smooth = ndimage.gaussian_filter(diff, sigma, mode="constant")
    if not smooth.max() > 0:
        return tuple((n - 1) / 2 for n in smooth.shape)
    return tuple(float(i) for i in np.unravel_index(int(np.argmax(smooth)), smooth.shape))


def crop_start(centre: Sequence[float], size: Sequence[int]) -> tuple[int, ...]:
    """First source index of the window of ``size`` centred (to the voxel) on ``centre``."""
    return tuple(int(np.floor(c + 0.5)) - int(n) // 2 for c, n in zip(centre, size))


def _overlap(start, size, shape):
    """Slices (source, window) of the part of the window that lies inside the source."""
    src, win = [], []
    for s, n, m in zip(start, size, shape):
        lo, hi = max(s, 0), min(s + n, m)
        if hi <= lo:
            lo = hi = max(min(s, m), 0)
        src.append(slice(lo, hi))
        win.append(slice(lo - s, lo - s + (hi - lo)))
    return tuple(src), tuple(win)


def crop(array: np.ndarray, start: Sequence[int], size: Sequence[int]) -> np.ndarray:
    """Window ``[start, start + size)`` of the leading axes of ``array``, zero-padded outside."""
    size = tuple(int(n) for n in size)
    out = np.zeros(size + array.shape[len(size):], array.dtype)
    src, win = _overlap(start, size, array.shape[:len(size)])
    out[win] = array[src]
    return out


def uncrop(window: np.ndarray, start: Sequence[int], shape: Sequence[int], fill=0) -> np.ndarray:
    """Inverse of ``crop``: ``window`` placed at ``start`` in an array of spatial ``shape``."""
    size = window.shape[:len(shape)]
    out = np.full(tuple(shape) + window.shape[len(shape):], fill, window.dtype)
    src, win = _overlap(start, size, shape)
    out[src] = window[win]
    return out


def scale_factors(shape_from: Sequence[int], shape_to: Sequence[int]) -> np.ndarray:
    """Voxels of ``shape_to`` per voxel of ``shape_from`` along each axis (aligned corners)."""
    return np.array([(b - 1) / (a - 1) if a > 1 else 1.0 for a, b in zip(shape_from, shape_to)])


def _coordinates(shape_in, shape_out) -> list[np.ndarray]:
    step = scale_factors(shape_out, shape_in)
    return [np.arange(n, dtype=np.float64) * s for n, s in zip(shape_out, step)]


def resize(array: np.ndarray, shape: Sequence[int], order: int = 1) -> np.ndarray:
    """Resize the leading ``len(shape)`` axes of ``array`` (aligned corners).

    ``order=1``: anti-aliased linear (images and fields); ``order=0``: nearest (labels). Trailing
    axes (channels) are resized independently. Returns ``array``'s dtype for ``order=0``, float32
    otherwise.
    """
    shape = tuple(int(n) for n in shape)
    nd = len(shape)
    if array.shape[:nd] == shape:
        return array if order == 0 else np.asarray(array, np.float32)
    if array.ndim > nd:
        channels = [resize(array[(..., c)], shape, order) for c in range(array.shape[-1])]
        return np.stack(channels, axis=-1)
    src = np.asarray(array, np.float64 if order else array.dtype)
    if order:
        step = scale_factors(shape, array.shape)
        sigma = np.where(step > 1, (step - 1) / 2, 0.0)
        if np.any(sigma > 0):
            src = ndimage.gaussian_filter(src, sigma, mode="mirror")
    axes = _coordinates(array.shape, shape)
    coords = np.stack(np.meshgrid(*axes, indexing="ij"))
    out = ndimage.map_coordinates(src, coords, order=order, mode="nearest")
    return out if order == 0 else out.astype(np.float32)


def resized_pair(moving, fixed, moving_label, fixed_label, shape) -> dict:
    """A pair resized to ``shape``: images anti-aliased linear then min-max normalised, labels
    nearest (None -> zeros). ``moving``/``fixed`` are ``nifti.Volume``s (``data``, ``spacing``).
    Keys: moving, fixed, moving_label, fixed_label, spacing (mm per voxel of the fixed image on
    the new grid), raw_range."""
    pair = {"raw_range": np.array([min(moving.data.min(), fixed.data.min()),
                                   max(moving.data.max(), fixed.data.max())], np.float32)}
    for key, image, label in (("moving", moving, moving_label), ("fixed", fixed, fixed_label)):
        pair[key] = normalise(resize(image.data, shape, order=1))
        pair[key + "_label"] = (np.zeros(tuple(shape), np.uint8) if label is None
                                else resize(label, shape, order=0))
    step = scale_factors(shape, fixed.data.shape)
    pair["spacing"] = (np.asarray(fixed.spacing) * step).astype(np.float32)
    return pair


def resize_field(field: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """A displacement ``[*S, D]`` (voxels of its grid, component k along axis k) resampled
    linearly to spatial ``shape`` (no anti-aliasing) with component k scaled to voxels of the new
    grid."""
    field = np.asarray(field, np.float32)
    src_shape = field.shape[:-1]
    factors = scale_factors(src_shape, shape)
    axes = _coordinates(src_shape, shape)
    coords = np.stack(np.meshgrid(*axes, indexing="ij"))
    out = [ndimage.map_coordinates(field[..., k].astype(np.float64), coords, order=1, mode="nearest")
           * factors[k] for k in range(field.shape[-1])]
    return np.stack(out, axis=-1).astype(np.float32)
