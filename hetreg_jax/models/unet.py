"""The VoxelMorph U-Net backbone (channels-last, 2D or 3D) and PyTorch-style convolution init.

Architecture (the current VoxelMorph PyTorch ``Unet`` with ``nb_levels = len(enc) + 1`` and one
convolution per level):

- encoder: for each ``enc_features[i]``: conv + LeakyReLU(0.2) -> keep as skip -> 2x max-pool;
- decoder: for each of the first ``len(enc)`` entries of ``dec_features``: conv + LeakyReLU(0.2) ->
  nearest 2x upsample -> concatenate the matching encoder skip (deepest first); the convolution
  that follows each upsampling is computed in the exact sub-pixel form (``upsample_concat_conv``)
  with ``upsample="subpixel"`` (the default, faster on XLA:CPU), or on the upsampled
  concatenation itself with ``upsample="plain"`` (one ``3**ndim`` convolution, the form cuDNN and
  TPUs are built for); both forms use the same parameters and agree to float rounding;
- the remaining ``dec_features`` entries: conv + LeakyReLU(0.2) at full resolution.

The raw input is not concatenated to anything. Every convolution is ``3**ndim``, stride 1, 'SAME'
(zero) padding, with a bias. The spatial size must be divisible by ``2 ** len(enc_features)``.

Precision and memory: ``dtype`` is the compute dtype of every convolution and activation (e.g.
``jnp.bfloat16``; the input is cast to it, and so is the output); parameters are always float32.
``remat=True`` wraps each level (encoder: conv, activation, pooling; decoder: upsample-concat-conv,
activation) in ``flax.linen.remat``: its intermediates are recomputed in the backward pass instead of
stored. Neither changes the parameter tree (the level modules keep the names ``enc_i``, ``dec_i``,
``extra_i`` and hold ``kernel``/``bias`` directly, as a plain ``nn.Conv`` would).

Initialisation follows PyTorch's ``Conv`` default (``kaiming_uniform(a=sqrt(5))``): weights and
biases uniform in ``±1/sqrt(fan_in)``, ``fan_in = in_channels * 3**ndim``, so that the training
dynamics match the reference implementation.
"""

from __future__ import annotations

import itertools
import math
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from hetreg_jax.base.errors import InputError

ENC_FEATURES = (16, 32, 32, 32)
DEC_FEATURES = (32, 32, 32, 32, 32, 16, 16)
KERNEL = 3
UPSAMPLE_FORMS = ("subpixel", "plain")   # how the convolution after each upsampling is computed
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
               kernel_init: Callable | None = None, bias_init: Callable | None = None,
               dtype: Any = jnp.float32) -> nn.Conv:
    """A ``3**ndim`` 'SAME' convolution with bias; PyTorch default init unless inits are given.

    Computes in ``dtype`` (float32 parameters). Must be called inside a compact method (the layer
    becomes a submodule named ``name``).
    """
    fan_in = in_channels * KERNEL ** ndim
    return nn.Conv(features, kernel_size=(KERNEL,) * ndim, padding="SAME", use_bias=True,
                   kernel_init=kernel_init if kernel_init is not None else torch_kernel_init,
                   bias_init=bias_init if bias_init is not None else torch_bias_init(fan_in),
                   dtype=dtype, param_dtype=jnp.float32, name=name)


def check_spatial_shape(shape: Sequence[int], divisor: int) -> None:
    """Raise an ``InputError`` naming ``shape`` and ``divisor`` unless every size is a multiple."""
    if any(n % divisor for n in shape):
        raise InputError(
            f"spatial shape {tuple(shape)} must be divisible by {divisor} in every axis "
            f"(the U-Net pools {int(math.log2(divisor))} times); pad or crop the images")


def upsample_nearest(x: jax.Array, factor: int = 2) -> jax.Array:
    """Nearest-neighbour ``factor``x upsampling of every spatial axis of ``[B, *S, C]``."""
    for axis in range(1, x.ndim - 1):
        x = jnp.repeat(x, factor, axis=axis)
    return x


def _fold_taps(kernel: jax.Array, axis: int, phase: int) -> jax.Array:
    """Fold a 3-tap kernel axis to the 2 taps that one output phase of a nearest-2x-upsampled input sees.

    Output ``2i + 0`` reads upsampled rows ``2i-1, 2i, 2i+1`` = input rows ``i-1, i, i`` (taps
    ``w0, w1 + w2``); output ``2i + 1`` reads input rows ``i, i, i+1`` (taps ``w0 + w1, w2``).
    """
    w0, w1, w2 = (jnp.take(kernel, t, axis=axis) for t in range(3))
    taps = (w0, w1 + w2) if phase == 0 else (w0 + w1, w2)
    return jnp.stack(taps, axis=axis)


def _conv(x: jax.Array, kernel: jax.Array, padding) -> jax.Array:
    ndim = x.ndim - 2
    spatial = "DHW"[-ndim:] if ndim <= 3 else None
    if spatial is None:
        raise InputError(f"only 1D to 3D convolutions are supported, got ndim={ndim}")
    dims = (f"N{spatial}C", f"{spatial}IO", f"N{spatial}C")
    return jax.lax.conv_general_dilated(x, kernel, (1,) * ndim, padding, dimension_numbers=dims)


def upsample_concat_conv(low: jax.Array, skip: jax.Array, kernel: jax.Array) -> jax.Array:
    """``conv(concat(upsample_nearest(low), skip), kernel)`` ('SAME' zero padding, no bias), exactly,
    without building the upsampled tensor.

    A nearest 2x upsampling followed by a ``3**ndim`` convolution is, for each of the ``2**ndim``
    output phases, a ``2**ndim``-tap convolution of ``low`` with summed ("folded") weights: 2.25x
    (2D) or 3.4x (3D) fewer multiply-adds for the upsampled channels, and no upsampled copy in
    memory. The skip channels are convolved at full resolution as usual. ``kernel`` is
    ``[3]*ndim + [C_low + C_skip, C_out]``, the layout of a plain convolution over the concatenation.
    """
    ndim = low.ndim - 2
    c_low = low.shape[-1]
    out = _conv(skip, kernel[..., c_low:, :], "SAME")
    phases = []
    for phase in itertools.product((0, 1), repeat=ndim):
        k = kernel[..., :c_low, :]
        for axis, p in enumerate(phase):
            k = _fold_taps(k, axis, p)
        phases.append(_conv(low, k, [(1, 0) if p == 0 else (0, 1) for p in phase]))
    b, *spatial, c = phases[0].shape
    stacked = jnp.stack(phases, axis=-2).reshape(b, *spatial, *(2,) * ndim, c)
    interleave = [0] + [a for i in range(ndim) for a in (1 + i, 1 + ndim + i)] + [1 + 2 * ndim]
    return stacked.transpose(interleave).reshape(out.shape) + out


class Level(nn.Module):
    """One U-Net level: a ``3**ndim`` convolution with bias, LeakyReLU(0.2) and, for an encoder level,
    2x max-pooling; returns ``(activation, pooled)`` (``pooled`` is None unless ``pool``).

    With ``skip`` (a decoder level after an upsampling) the convolution runs over
    ``concat(upsample_nearest(x), skip)`` in the sub-pixel form of `upsample_concat_conv`.
    Parameters (``kernel`` ``[3]*ndim + [C_in, C_out]``, ``bias``) and their init are those of
    `conv_layer` (over the concatenation), so parameter trees, counts and checkpoints are the
    same as a plain ``nn.Conv``'s. Computes in ``dtype``; parameters stay float32.
    """

    features: int
    pool: bool = False
    dtype: Any = jnp.float32
    upsample: str = "subpixel"     # "plain": build the upsampled concatenation and convolve it

    @nn.compact
    def __call__(self, x: jax.Array, skip: jax.Array | None = None):
        ndim = x.ndim - 2
        c_in = x.shape[-1] + (0 if skip is None else skip.shape[-1])
        kernel = self.param("kernel", torch_kernel_init, (KERNEL,) * ndim + (c_in, self.features), jnp.float32)
        bias = self.param("bias", torch_bias_init(c_in * KERNEL ** ndim), (self.features,), jnp.float32)
        x, kernel, bias = (a.astype(self.dtype) for a in (x, kernel, bias))
        if skip is None:
            h = _conv(x, kernel, "SAME")
        elif self.upsample == "plain":
            h = _conv(jnp.concatenate([upsample_nearest(x), skip.astype(self.dtype)], axis=-1), kernel, "SAME")
        else:
            h = upsample_concat_conv(x, skip.astype(self.dtype), kernel)
        h = nn.leaky_relu(h + bias, LEAKY_SLOPE)
        if not self.pool:
            return h, None
        window = (2,) * ndim
        return h, nn.max_pool(h, window, strides=window, padding="VALID")


class UNet(nn.Module):
    """VoxelMorph U-Net: ``[B, *S, C_in] -> [B, *S, dec_features[-1]]`` (``ndim`` from the rank).

    ``len(dec_features)`` must be at least ``len(enc_features)``; the first ``len(enc_features)``
    decoder convolutions run before each upsampling, the rest at full resolution. ``dtype``: compute
    dtype (the output has it); ``remat``: recompute each level in the backward pass.
    """

    enc_features: Sequence[int] = ENC_FEATURES
    dec_features: Sequence[int] = DEC_FEATURES
    dtype: Any = jnp.float32
    remat: bool = False
    upsample: str = "subpixel"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if self.upsample not in UPSAMPLE_FORMS:
            raise InputError(f"upsample={self.upsample!r}; one of {', '.join(UPSAMPLE_FORMS)}")
        n_levels = len(self.enc_features)
        if len(self.dec_features) < n_levels:
            raise InputError(
                f"dec_features {tuple(self.dec_features)} needs at least {n_levels} entries "
                f"(one per encoder level of {tuple(self.enc_features)})")
        if x.ndim < 3:
            raise InputError(f"input must be [B, *spatial, C] (>= 1 spatial axis), got {x.shape}")
        check_spatial_shape(x.shape[1:-1], 2 ** n_levels)
        level = nn.remat(Level) if self.remat else Level

        skips = []
        for i, features in enumerate(self.enc_features):
            skip, x = level(features, pool=True, dtype=self.dtype, upsample=self.upsample, name=f"enc_{i}")(x)
            skips.append(skip)
        # Each decoder level ends with "upsample, concatenate the skip"; the next convolution
        # consumes that pair directly (sub-pixel form), so the upsampled tensor is never built.
        skip = None
        for i, features in enumerate(self.dec_features[:n_levels]):
            x = level(features, dtype=self.dtype, upsample=self.upsample, name=f"dec_{i}")(x, skip)[0]
            skip = skips.pop()
        for i, features in enumerate(self.dec_features[n_levels:]):
            x = level(features, dtype=self.dtype, upsample=self.upsample, name=f"extra_{i}")(x, skip)[0]
            skip = None
        if skip is not None:  # no full-resolution convolution follows: return the concatenation
            x = jnp.concatenate([upsample_nearest(x), skip], axis=-1)
        return x
