"""The VoxelMorph U-Net backbone (channels-last, 2D or 3D) and PyTorch-style convolution init.

Architecture (the current VoxelMorph PyTorch ``Unet`` with ``nb_levels = len(enc) + 1`` and one
convolution per level):

- encoder: for each ``enc_features[i]``: conv + LeakyReLU(0.2) -> keep as skip -> 2x max-pool;
- decoder: for each of the first ``len(enc)`` entries of ``dec_features``: conv + LeakyReLU(0.2) ->
  nearest 2x upsample -> concatenate the matching encoder skip (deepest first);
- the remaining ``dec_features`` entries: conv + LeakyReLU(0.2) at full resolution.

The raw input is not concatenated to anything. Every convolution is ``3**ndim``, stride 1, 'SAME'
(zero) padding, with a bias. The spatial size must be divisible by ``2 ** len(enc_features)``.

Initialisation follows PyTorch's ``Conv`` default (``kaiming_uniform(a=sqrt(5))``): weights and
biases uniform in ``±1/sqrt(fan_in)``, ``fan_in = in_channels * 3**ndim``, so that the training
dynamics match the reference implementation.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

ENC_FEATURES = (16, 32, 32, 32)
DEC_FEATURES = (32, 32, 32, 32, 32, 16, 16)
KERNEL = 3
LEAKY_SLOPE = 0.2

# uniform(±sqrt(3 * scale / fan_in)) with scale 1/3 is uniform(±1/sqrt(fan_in)): PyTorch's default.
torch_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def torch_bias_init(fan_in: int) -> Callable:
    """Bias initialiser uniform in ``±1/sqrt(fan_in)`` (PyTorch ``Conv``/``Linear`` default)."""
    bound = 1.0 / math.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, minval=-bound, maxval=bound)

    return init


def conv_layer(features: int, ndim: int, in_channels: int, *, name: str,
               kernel_init: Callable | None = None, bias_init: Callable | None = None) -> nn.Conv:
    """A ``3**ndim`` 'SAME' convolution with bias; PyTorch default init unless inits are given.

    Must be called inside a compact method (the layer becomes a submodule named ``name``).
    """
    fan_in = in_channels * KERNEL ** ndim
    return nn.Conv(features, kernel_size=(KERNEL,) * ndim, padding="SAME", use_bias=True,
                   kernel_init=kernel_init if kernel_init is not None else torch_kernel_init,
                   bias_init=bias_init if bias_init is not None else torch_bias_init(fan_in),
                   name=name)


def check_spatial_shape(shape: Sequence[int], divisor: int) -> None:
    """Raise a ``ValueError`` naming ``shape`` and ``divisor`` unless every size is a multiple."""
    if any(n % divisor for n in shape):
        raise ValueError(
            f"spatial shape {tuple(shape)} must be divisible by {divisor} in every axis "
            f"(the U-Net pools {int(math.log2(divisor))} times); pad or crop the images")


def upsample_nearest(x: jax.Array, factor: int = 2) -> jax.Array:
    """Nearest-neighbour ``factor``x upsampling of every spatial axis of ``[B, *S, C]``."""
    for axis in range(1, x.ndim - 1):
        x = jnp.repeat(x, factor, axis=axis)
    return x


class UNet(nn.Module):
    """VoxelMorph U-Net: ``[B, *S, C_in] -> [B, *S, dec_features[-1]]`` (``ndim`` from the rank).

    ``len(dec_features)`` must be at least ``len(enc_features)``; the first ``len(enc_features)``
    decoder convolutions run before each upsampling, the rest at full resolution.
    """

    enc_features: Sequence[int] = ENC_FEATURES
    dec_features: Sequence[int] = DEC_FEATURES

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        n_levels = len(self.enc_features)
        if len(self.dec_features) < n_levels:
            raise ValueError(
                f"dec_features {tuple(self.dec_features)} needs at least {n_levels} entries "
                f"(one per encoder level of {tuple(self.enc_features)})")
        if x.ndim < 3:
            raise ValueError(f"input must be [B, *spatial, C] (>= 1 spatial axis), got {x.shape}")
        ndim = x.ndim - 2
        check_spatial_shape(x.shape[1:-1], 2 ** n_levels)
        window = (2,) * ndim

        def conv_act(h, features, name):
            h = conv_layer(features, ndim, h.shape[-1], name=name)(h)
            return nn.leaky_relu(h, LEAKY_SLOPE)

        skips = []
        for i, features in enumerate(self.enc_features):
            x = conv_act(x, features, f"enc_{i}")
            skips.append(x)
            x = nn.max_pool(x, window, strides=window, padding="VALID")
        for i, features in enumerate(self.dec_features[:n_levels]):
            x = conv_act(x, features, f"dec_{i}")
            x = jnp.concatenate([upsample_nearest(x), skips.pop()], axis=-1)
        for i, features in enumerate(self.dec_features[n_levels:]):
            x = conv_act(x, features, f"extra_{i}")
        return x
