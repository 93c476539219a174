"""VoxelMorph: the displacement estimator ``g_θ(I_m, I_f) -> z`` (2D or 3D, channels-last).

Conventions: ``moving`` is the ED image, ``fixed`` the ES image, each ``[B, *S, 1]``. The returned
``displacement`` ``[B, *S, ndim]`` is in voxels, channel ``k`` moves along spatial axis ``k``, and
``spatial.warp(moving, displacement)`` carries the moving image onto the fixed grid.

Any size (`hetreg_jax.models.padding`): the images are zero-padded at the high end of each
axis up to a multiple of ``size_multiple()`` (``2**len(enc_features)``, and ``int_downsize`` when
diffeomorphic); ``displacement``, ``inverse_displacement`` and ``log_var_z`` are cropped back to
``S``, and so is ``velocity`` when it is the displacement (``int_steps == 0``). The diffeomorphic
``velocity`` (``/int_downsize``) stays on the padded grid: the regulariser sees the padded margin too. The probabilistic model (vxm-diff) refuses sizes that need
padding: its velocity noise is drawn by the caller on the unpadded velocity grid.

Diffeomorphic mode (``int_steps > 0``, the reference default): the flow head's full-resolution
output is resized by ``1/int_downsize`` (linear, aligned corners, vectors scaled by
``1/int_downsize``) into the stationary ``velocity``; scaling and squaring in ``int_steps`` steps at
that resolution gives a displacement that is resized back by ``int_downsize`` (vectors scaled by
``int_downsize``). ``int_downsize = 1`` integrates at full resolution. With ``int_steps == 0`` the
head output is the displacement and ``velocity`` is that same field (``int_downsize`` is ignored, as
in the reference). The regulariser acts on ``velocity``.

Uncertainty heads (optional, each a ``3**ndim`` conv on the U-Net features beside the flow head):

* ``predict_sigma``: one channel ``log_var_z = log σ_z²`` ``[B, *S, 1]`` of an isotropic Gaussian
  on the full-resolution *displacement* (Section 5.3 of the paper; the training step samples
  ``z = displacement + σ_z ε``). Weights N(0, 1e-5), bias ``SIGMA_Z_INIT_LOG_VAR`` = 2 log 0.1, so
  σ_z starts at 0.1 voxel.
* ``probabilistic`` (vxm-diff, Dalca et al. 2018): ``ndim`` channels ``velocity_log_var`` = log σ_v²
  per component of the *velocity*, resized with the mean to the velocity's resolution (values not
  rescaled: the network learns them there). Weights N(0, 1e-10), bias −10, as the reference's
  ``flow_logsigma``. Given ``velocity_noise`` (standard normal, the velocity's shape) the sampled
  ``velocity + exp(½ log σ_v²) · velocity_noise`` is integrated instead of the mean.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from hetreg_jax.base.errors import InputError
from hetreg_jax.core import spatial
from hetreg_jax.models import padding
from hetreg_jax.models.unet import DEC_FEATURES, ENC_FEATURES, UNet, conv_layer

FLOW_INIT_STDDEV = 1e-5
SIGMA_Z_INIT_LOG_VAR = 2.0 * -2.302585092994046  # log(0.1²): σ_z starts at 0.1 voxel
VXM_DIFF_LOG_VAR_INIT = (1e-10, -10.0)  # the reference's flow_logsigma init: weights N(0, 1e-10), bias -10


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
    dtype: Any = jnp.float32      # U-Net compute dtype (bfloat16: mixed precision); heads stay float32
    remat: bool = False           # rematerialise each U-Net level in the backward pass
    upsample: str = "subpixel"    # the U-Net's convolution after an upsampling: "subpixel" or "plain" (unet.py)
    predict_sigma: bool = False   # + log σ_z² head on the displacement (one channel)
    probabilistic: bool = False   # vxm-diff: + log σ_v² head on the velocity (ndim channels)

    def size_multiple(self) -> int:
        """Every padded spatial size is a multiple of this (see the module docstring)."""
        pools = 2 ** len(self.enc_features)
        return math.lcm(pools, self.int_downsize) if self.int_steps > 0 and self.int_downsize >= 1 else pools

    def _flow_head(self, features: jax.Array, ndim: int) -> jax.Array:
        return conv_layer(ndim, ndim, features.shape[-1], name="flow",
                          kernel_init=nn.initializers.normal(FLOW_INIT_STDDEV),
                          bias_init=nn.initializers.zeros)(features)

    def _to_displacement(self, velocity: jax.Array) -> jax.Array:
        """Scaling and squaring at the velocity's resolution, then back to full resolution."""
        field = spatial.integrate_velocity(velocity, self.int_steps)
        return spatial.resize_field(field, float(self.int_downsize))

    def _log_var_head(self, features, channels, stddev, bias, name):
        return conv_layer(channels, features.ndim - 2, features.shape[-1], name=name,
                          kernel_init=nn.initializers.normal(stddev),
                          bias_init=nn.initializers.constant(bias))(features)

    @nn.compact
    def __call__(self, moving: jax.Array, fixed: jax.Array,
                 velocity_noise: jax.Array | None = None) -> dict[str, jax.Array]:
        if moving.shape != fixed.shape:
            raise InputError(f"moving {moving.shape} and fixed {fixed.shape} must have one shape")
        if self.int_steps < 0:
            raise InputError(f"int_steps must be >= 0, got {self.int_steps}")
        if self.int_downsize < 1:
            raise InputError(f"int_downsize must be >= 1, got {self.int_downsize}")
        ndim = moving.ndim - 2
        size = moving.shape[1:-1]
        pad = padding.padding(size, self.size_multiple())
        if any(pad) and self.probabilistic:
            raise InputError(f"spatial shape {tuple(size)} must be divisible by {self.size_multiple()} for the "
                             "probabilistic (vxm-diff) model (its velocity noise is drawn on the unpadded grid)")
        out = self._padded_call(padding.pad_end(moving, pad), padding.pad_end(fixed, pad), ndim, velocity_noise)
        cropped = ("displacement", "inverse_displacement", "log_var_z") + (("velocity",) if self.int_steps == 0 else ())
        for key in cropped:
            if key in out:
                out[key] = padding.crop(out[key], size)
        return out

    def _padded_call(self, moving, fixed, ndim, velocity_noise):
        unet = UNet(self.enc_features, self.dec_features, self.dtype, self.remat, self.upsample, name="unet")
        # The heads, the integration and everything downstream run in float32 (see ``dtype``).
        features = unet(jnp.concatenate([moving, fixed], axis=-1)).astype(jnp.float32)
        head = self._flow_head(features, ndim)
        extra = {}
        if self.predict_sigma:
            extra["log_var_z"] = self._log_var_head(features, 1, FLOW_INIT_STDDEV, SIGMA_Z_INIT_LOG_VAR,
                                                    "log_sigma_z")
        if self.probabilistic:
            if self.int_steps == 0:
                raise InputError("the probabilistic (vxm-diff) model needs int_steps > 0")
            log_var_v = self._log_var_head(features, ndim, *VXM_DIFF_LOG_VAR_INIT, "log_sigma")
        if self.int_steps == 0:
            out = {"displacement": head, "velocity": head, **extra}
            if self.bidirectional:
                out["inverse_displacement"] = -head
            return out
        if any(n % self.int_downsize for n in moving.shape[1:-1]):
            raise InputError(f"spatial shape {moving.shape[1:-1]} must be divisible by "
                             f"int_downsize={self.int_downsize}")
        velocity = spatial.resize_field(head, 1.0 / self.int_downsize)
        flow = velocity
        if self.probabilistic:
            log_var_v = spatial.resize_to(log_var_v, velocity.shape[1:-1])
            extra["velocity_log_var"] = log_var_v
            if velocity_noise is not None:
                flow = velocity + jnp.exp(0.5 * log_var_v) * velocity_noise
        out = {"displacement": self._to_displacement(flow), "velocity": velocity, **extra}
        if self.bidirectional:
            out["inverse_displacement"] = self._to_displacement(-flow)
        return out
