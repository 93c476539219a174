"""Any input size: zero padding up to the networks' size divisor, and cropping back.

The U-Nets pool ``len(enc_features)`` times (VoxelMorph: every size a multiple of 16 with the
paper's 4 levels, and of ``int_downsize`` for the diffeomorphic integration); TransMorph needs
multiples of ``patch_size * 2**(stages - 1)`` (32). The networks therefore pad their inputs with
zeros **at the high end of every spatial axis** (after the last voxel) up to the next multiple,
run on the padded grid, and crop every per-voxel output back to ``[0, n)`` on each axis.

Why the high end: voxel ``i`` of the input stays voxel ``i`` of the padded grid, so displacements
(in voxels, component k along axis k) need no shift and cropping is a plain slice; the Swin
blocks pad their windows the same way. Zeros are the normalised images' background. A size that
already is a multiple gets no padding op at all, so its results are bit-identical to a network
without this step.
"""

from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp


def padding(spatial: Sequence[int], multiple: int) -> tuple[int, ...]:
    """Voxels to append on each axis so that every size becomes a positive multiple of ``multiple``."""
    return tuple(max(1, math.ceil(n / multiple)) * multiple - n for n in spatial)


def pad_end(x: jax.Array, amounts: Sequence[int]) -> jax.Array:
    """``[B, *S, C]`` with ``amounts[k]`` zeros appended on spatial axis ``k`` (no op if all are 0)."""
    if not any(amounts):
        return x
    return jnp.pad(x, [(0, 0)] + [(0, int(a)) for a in amounts] + [(0, 0)])


def crop(x: jax.Array, spatial: Sequence[int]) -> jax.Array:
    """The first ``spatial[k]`` voxels of each spatial axis of ``[B, *S', C]`` (no op if equal)."""
    if tuple(x.shape[1:-1]) == tuple(spatial):
        return x
    return x[(slice(None), *(slice(0, int(n)) for n in spatial), slice(None))]
