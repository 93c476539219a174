"""Spatial transforms: identity grid, warping, field resizing, scaling and squaring, Jacobians.

Conventions (the whole project uses them):
- arrays are channels-last: images ``[B, *S, C]``, displacements ``[B, *S, ndim]``;
- displacements are in voxels and channel ``k`` moves along spatial axis ``k``;
- ``warp(m, u)(x) = m(x + u(x))``: the moving image is sampled at the displaced position, so a field
  defined on the fixed grid carries the moving image onto it;
- sampling outside the image contributes zero: each of the ``2**ndim`` interpolation corners that
  falls outside reads 0 (PyTorch ``grid_sample(padding_mode="zeros", align_corners=True)``, as
  VoxelMorph's SpatialTransformer, and ``jax.scipy.ndimage.map_coordinates(order=1, mode="constant")``).

One code path serves 2D and 3D: ``ndim`` is read from the array's shape.
"""

from __future__ import annotations

import itertools
import math
from typing import Sequence

import jax
import jax.numpy as jnp


def identity_grid(shape: Sequence[int], dtype=jnp.float32) -> jax.Array:
    """Voxel coordinates ``[*shape, ndim]``: ``grid[i, j, ..., k]`` is the index along axis ``k``."""
    axes = [jnp.arange(n, dtype=dtype) for n in shape]
    return jnp.stack(jnp.meshgrid(*axes, indexing="ij"), axis=-1)


def _strides(shape: Sequence[int]) -> list[int]:
    """Row-major strides of a spatial shape, in elements."""
    strides, acc = [], 1
    for n in reversed(shape):
        strides.append(acc)
        acc *= n
    return strides[::-1]


def _gather(flat_image: jax.Array, index: jax.Array) -> jax.Array:
    """``flat_image [B, N, C]`` gathered at ``index [B, M]`` -> ``[B, M, C]``."""
    return jax.vmap(lambda im, ix: jnp.take(im, ix, axis=0, mode="clip"))(flat_image, index)


def _check_pair(image: jax.Array, displacement: jax.Array) -> int:
    ndim = displacement.shape[-1]
    if displacement.ndim != ndim + 2:
        raise ValueError(
            f"displacement must be [B, *S, ndim] with ndim = number of spatial axes; got shape "
            f"{displacement.shape}")
    if image.ndim != ndim + 2 or image.shape[:-1] != displacement.shape[:-1]:
        raise ValueError(
            f"image {image.shape} and displacement {displacement.shape} must share [B, *S]")
    return ndim


def warp(image: jax.Array, displacement: jax.Array, order: int = 1) -> jax.Array:
    """Sample ``image`` at ``x + displacement(x)`` on its own grid.

    Args:
      image: ``[B, *S, C]``.
      displacement: ``[B, *S, ndim]`` in voxels; channel ``k`` moves along spatial axis ``k``.
      order: 1 for (bi/tri)linear interpolation, 0 for nearest neighbour (label maps; rounding
        half to even, as ``torch.grid_sample(mode="nearest")``).

    Returns:
      ``[B, *S, C]`` in the image's dtype; points outside the image read zero (per corner for
      ``order=1``). Differentiable in both arguments for ``order=1``.
    """
    ndim = _check_pair(image, displacement)
    batch, spatial, channels = image.shape[0], image.shape[1:-1], image.shape[-1]
    n = math.prod(spatial)
    flat = image.reshape(batch, n, channels)
    coords = (identity_grid(spatial, displacement.dtype) + displacement).reshape(batch, n, ndim)
    sizes = jnp.asarray(spatial, jnp.int32)
    strides = jnp.asarray(_strides(spatial), jnp.int32)

    def read(index: jax.Array) -> jax.Array:
        valid = jnp.all((index >= 0) & (index < sizes), axis=-1, keepdims=True)
        values = _gather(flat, jnp.sum(index * strides, axis=-1))
        return jnp.where(valid, values, jnp.zeros((), image.dtype))

    if order == 0:
        out = read(jnp.round(coords).astype(jnp.int32))
    elif order == 1:
        lower = jnp.floor(coords)
        frac = (coords - lower).astype(image.dtype)
        lower = lower.astype(jnp.int32)
        out = jnp.zeros_like(flat)
        for corner in itertools.product((0, 1), repeat=ndim):
            offset = jnp.asarray(corner, jnp.int32)
            weight = jnp.prod(jnp.where(offset == 1, frac, 1 - frac), axis=-1, keepdims=True)
            out = out + weight * read(lower + offset)
    else:
        raise ValueError(f"warp supports order 0 (nearest) or 1 (linear), got order={order}")
    return out.reshape(image.shape)


def integrate_velocity(velocity: jax.Array, steps: int = 7) -> jax.Array:
    """Scaling and squaring of a stationary velocity field ``[B, *S, ndim]`` (voxels).

    ``v <- v / 2**steps``, then ``steps`` times ``v <- v + warp(v, v)``; returns the displacement of
    the time-1 flow. ``steps=0`` returns the velocity itself.
    """
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    field = velocity / (2.0 ** steps)
    return jax.lax.fori_loop(0, steps, lambda _, u: u + warp(u, u), field)


def _resize_axis(x: jax.Array, axis: int, n_out: int) -> jax.Array:
    """Linear resampling of one axis with aligned corners (first and last samples coincide)."""
    n_in = x.shape[axis]
    if n_out == n_in:
        return x
    if n_in == 1 or n_out == 1:
        return jnp.repeat(jnp.take(x, jnp.array([0]), axis=axis), n_out, axis=axis)
    pos = jnp.arange(n_out, dtype=jnp.float32) * ((n_in - 1) / (n_out - 1))
    lo = jnp.clip(jnp.floor(pos).astype(jnp.int32), 0, n_in - 2)
    frac = (pos - lo).astype(x.dtype)
    shape = [1] * x.ndim
    shape[axis] = n_out
    frac = frac.reshape(shape)
    return jnp.take(x, lo, axis=axis) * (1 - frac) + jnp.take(x, lo + 1, axis=axis) * frac


def resize_field(field: jax.Array, factor: float) -> jax.Array:
    """Resize a displacement/velocity field ``[B, *S, ndim]`` by ``factor`` and rescale its vectors.

    Linear interpolation with aligned corners (as VoxelMorph's ResizeTransform); the output's spatial
    size is ``round(n * factor)`` per axis and every vector is multiplied by ``factor`` so that it
    stays in voxels of the new grid.
    """
    if factor == 1:
        return field
    if factor <= 0:
        raise ValueError(f"factor must be positive, got {factor}")
    out = field
    for axis, n in enumerate(field.shape[1:-1], start=1):
        out = _resize_axis(out, axis, max(1, int(round(n * factor))))
    return out * jnp.asarray(factor, field.dtype)


def resize_to(array: jax.Array, shape: Sequence[int]) -> jax.Array:
    """Linear aligned-corners resize of ``[B, *S, C]`` to spatial ``shape`` (values unchanged)."""
    out = array
    for axis, n in enumerate(shape, start=1):
        out = _resize_axis(out, axis, int(n))
    return out


def spatial_gradients(field: jax.Array) -> jax.Array:
    """``d field_i / d x_j`` as ``[B, *S, C, ndim]``: central differences inside, one-sided at borders."""
    ndim = field.ndim - 2
    return jnp.stack([jnp.gradient(field, axis=1 + j) for j in range(ndim)], axis=-1)


def jacobian_determinant(displacement: jax.Array) -> jax.Array:
    """``det(I + du/dx)`` of a displacement ``[B, *S, ndim]`` -> ``[B, *S]``.

    Derivatives are central differences in the interior and one-sided first differences at the
    borders (``jnp.gradient``), so the determinant of an affine field is exact everywhere.
    """
    ndim = displacement.shape[-1]
    if displacement.ndim != ndim + 2:
        raise ValueError(f"displacement must be [B, *S, ndim], got {displacement.shape}")
    jac = spatial_gradients(displacement) + jnp.eye(ndim, dtype=displacement.dtype)
    if ndim == 2:
        return jac[..., 0, 0] * jac[..., 1, 1] - jac[..., 0, 1] * jac[..., 1, 0]
    if ndim == 3:
        return (jac[..., 0, 0] * (jac[..., 1, 1] * jac[..., 2, 2] - jac[..., 1, 2] * jac[..., 2, 1])
                - jac[..., 0, 1] * (jac[..., 1, 0] * jac[..., 2, 2] - jac[..., 1, 2] * jac[..., 2, 0])
                + jac[..., 0, 2] * (jac[..., 1, 0] * jac[..., 2, 1] - jac[..., 1, 1] * jac[..., 2, 0]))
    return jnp.linalg.det(jac)
