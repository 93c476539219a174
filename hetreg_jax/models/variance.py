"""Variance estimator ``h_φ(Î_f, I_f) -> s = log σ²`` (2D or 3D, channels-last).

The VoxelMorph U-Net (same encoder/decoder widths) on ``concat(warped, fixed)`` (input order:
warped moving image first, fixed image second; each ``[B, *S, 1]``) followed by a ``3**ndim`` conv
to one channel. The output ``[B, *S, 1]`` is an unconstrained log-variance (no activation).

Head initialisation: PyTorch's ``Conv`` default, like every U-Net conv (weights and bias uniform in
``±1/sqrt(fan_in)``), as in the reference code, which leaves this layer at its default init. At
initialisation the output is therefore O(0.1), i.e. σ² ≈ 1, not exactly zero.

``dtype`` / ``remat`` are passed to the U-Net (compute dtype, per-level rematerialisation); the
``log_var`` head always runs in float32 on the U-Net features cast to float32, so log σ² is float32.

Any size: the inputs are zero-padded at the high end of each axis up to a multiple of
``2**len(enc_features)`` and log σ² is cropped back to ``S`` (`hetreg_jax.models.padding`;
no padding op for sizes that already are multiples).
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from hetreg_jax.models import padding
from hetreg_jax.models.unet import DEC_FEATURES, ENC_FEATURES, UNet, conv_layer


class VarianceUNet(nn.Module):
    """``(warped [B, *S, 1], fixed [B, *S, 1]) -> log σ² [B, *S, 1]``."""

    enc_features: Sequence[int] = ENC_FEATURES
    dec_features: Sequence[int] = DEC_FEATURES
    dtype: Any = jnp.float32
    remat: bool = False
    upsample: str = "subpixel"    # the U-Net's convolution after an upsampling (unet.py)

    @nn.compact
    def __call__(self, warped: jax.Array, fixed: jax.Array) -> jax.Array:
        if warped.shape != fixed.shape:
            raise ValueError(f"warped {warped.shape} and fixed {fixed.shape} must have one shape")
        ndim = warped.ndim - 2
        size = warped.shape[1:-1]
        pad = padding.padding(size, 2 ** len(self.enc_features))
        features = UNet(self.enc_features, self.dec_features, self.dtype, self.remat, self.upsample, name="unet")(
            padding.pad_end(jnp.concatenate([warped, fixed], axis=-1), pad)).astype(jnp.float32)
        return padding.crop(conv_layer(1, ndim, features.shape[-1], name="log_var")(features), size)
