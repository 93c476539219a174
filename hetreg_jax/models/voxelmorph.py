"""VoxelMorph: the displacement estimator ``g_θ(I_m, I_f) -> z`` (2D or 3D, channels-last).

Conventions: ``moving`` is the ED image, ``fixed`` the ES image, each ``[B, *S, 1]``. The returned
``displacement`` ``[B, *S, ndim]`` is in voxels, channel ``k`` moves along spatial axis ``k``, and
``spatial.warp(moving, displacement)`` carries the moving image onto the fixed grid.

Diffeomorphic mode (``int_steps > 0``, the reference default): the flow head's full-resolution
output is resized by ``1/int_downsize`` (linear, aligned corners, vectors scaled by
``1/int_downsize``) into the stationary ``velocity``; scaling and squaring in ``int_steps`` steps at
that resolution gives a displacement that is resized back by ``int_downsize`` (vectors scaled by
``int_downsize``). ``int_downsize = 1`` integrates at full resolution. With ``int_steps == 0`` the
head output is the displacement and ``velocity`` is that same field (``int_downsize`` is ignored, as
in the reference). The regulariser acts on ``velocity``.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from hetreg_jax import spatial
from hetreg_jax.models.unet import DEC_FEATURES, ENC_FEATURES, UNet, conv_layer

FLOW_INIT_STDDEV = 1e-5


class VoxelMorph(nn.Module):
    """U-Net on ``concat(moving, fixed)`` + a ``3**ndim`` flow head (weights N(0, 1e-5), bias 0).

    Returns a dict with ``displacement`` ``[B, *S, ndim]``, ``velocity`` (``[B, *S/int_downsize,
    ndim]`` when diffeomorphic, else the displacement) and, when ``bidirectional``,
    ``inverse_displacement`` (ES -> ED: the integral of ``-velocity``; ``-displacement`` when
    ``int_steps == 0``, as the reference).
    """

    enc_features: Sequence[int] = ENC_FEATURES
    dec_features: Sequence[int] = DEC_FEATURES
    int_steps: int = 7
    int_downsize: int = 2
    bidirectional: bool = False

    def _flow_head(self, features: jax.Array, ndim: int) -> jax.Array:
        return conv_layer(ndim, ndim, features.shape[-1], name="flow",
                          kernel_init=nn.initializers.normal(FLOW_INIT_STDDEV),
                          bias_init=nn.initializers.zeros)(features)

    def _to_displacement(self, velocity: jax.Array) -> jax.Array:
        """Scaling and squaring at the velocity's resolution, then back to full resolution."""
        field = spatial.integrate_velocity(velocity, self.int_steps)
        return spatial.resize_field(field, float(self.int_downsize))

    @nn.compact
    def __call__(self, moving: jax.Array, fixed: jax.Array) -> dict[str, jax.Array]:
        if moving.shape != fixed.shape:
            raise ValueError(f"moving {moving.shape} and fixed {fixed.shape} must have one shape")
        if self.int_steps < 0:
            raise ValueError(f"int_steps must be >= 0, got {self.int_steps}")
        if self.int_downsize < 1:
            raise ValueError(f"int_downsize must be >= 1, got {self.int_downsize}")
        ndim = moving.ndim - 2
        unet = UNet(self.enc_features, self.dec_features, name="unet")
        features = unet(jnp.concatenate([moving, fixed], axis=-1))
        head = self._flow_head(features, ndim)
        if self.int_steps == 0:
            out = {"displacement": head, "velocity": head}
            if self.bidirectional:
                out["inverse_displacement"] = -head
            return out
        if any(n % self.int_downsize for n in moving.shape[1:-1]):
            raise ValueError(f"spatial shape {moving.shape[1:-1]} must be divisible by "
                             f"int_downsize={self.int_downsize}")
        velocity = spatial.resize_field(head, 1.0 / self.int_downsize)
        out = {"displacement": self._to_displacement(velocity), "velocity": velocity}
        if self.bidirectional:
            out["inverse_displacement"] = self._to_displacement(-velocity)
        return out
