"""TransMorph (Chen et al. 2022) in Flax Linen, 2D and 3D, channels-last.

Input: ``moving`` and ``fixed`` images ``[B, *S, C]`` (``ndim = len(S)``), concatenated as
``(moving, fixed)`` on the channel axis (the reference's order: source first). Output: the displacement
``[B, *S, ndim]`` in voxels, channel ``k`` along spatial axis ``k`` (a warped image is
``moving(x + u(x))``). Not diffeomorphic: the head output is the displacement itself.

Structure (the reference's, with ``E = embed_dim`` and ``L = len(depths)`` stages):

* Swin encoder (`hetreg_jax.models.swin.SwinEncoder`): patch embedding (conv, stride
  ``patch_size`` = 4, LayerNorm), stage ``i`` at ``1/(4·2**i)`` with ``E·2**i`` channels, each stage
  output LayerNorm-ed.
* Convolutional skips from the input: ``f4 = ConvINAct(E/2)(AvgPool(3, stride 2, pad 1, padding
  counted)(x))`` at 1/2, ``f5 = ConvINAct(16)(x)`` at full resolution.
* Decoder: ``L + 1`` blocks (5 for L = 4) of [linear ×2 upsampling (half-pixel, PyTorch
  ``align_corners=False``), concatenate skip, 2 × (3×3 conv, no bias → InstanceNorm, no affine,
  eps 1e-5 → LeakyReLU 0.01)], widths ``E·2**(L-2), …, E, E/2, 16`` (384, 192, 96, 48, 16) with skips
  stage ``L-2``, …, stage 0, ``f4``, ``f5``.
* Flow head: 3×3 conv to ``ndim`` channels, weights N(0, 1e-5²), bias 0.

Sizes: any. The network runs on a grid whose sizes are multiples of ``patch_size · 2**(L-1)`` (32
for the paper's configuration, `size_multiple`): the images are zero-padded at the high end of
each axis up to it and the displacement (and ``log_var_z``) cropped back to ``S``
(`hetreg_jax.models.padding`; no padding op for sizes that already are multiples).

Precision and memory: ``dtype`` (e.g. ``jnp.bfloat16``) is the compute dtype of the encoder, the skips
and the decoder (convolutions, Dense layers, attention, norms); the heads run in float32 on the
decoder output cast to float32, so the displacement is float32; parameters are float32. ``remat``
rematerialises each Swin block (see ``swin.py``) and each decoder block.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence, Union

import flax.linen as nn
import jax
import jax.numpy as jnp

from hetreg_jax.base.errors import InputError
from hetreg_jax.models import padding
from hetreg_jax.models.swin import SwinEncoder, torch_default_init
from hetreg_jax.models.voxelmorph import SIGMA_Z_INIT_LOG_VAR

IN_EPS = 1e-5
LEAKY_SLOPE = 0.01
FLOW_INIT_STD = 1e-5

# Window of the 3D configuration for 64³ volumes. The reference's (5, 6, 7) makes the 1/32 stage of a
# 160×192×224 volume (5×6×7) exactly one window and tiles every earlier stage. For 64³ the stages are
# 16³, 8³, 4³, 2³: a window of 4 tiles the first three exactly (the 1/16 stage is one window) and pads
# the 2³ stage to one 4³ window; (5, 6, 7) would pad 16³ to 20×18×21 and the last stage to 5×6×7.
WINDOW_3D_64 = (4, 4, 4)
WINDOW_2D = (8, 8)


def transmorph_config(ndim: int, image_size: Sequence[int]) -> dict[str, Any]:
    """Keyword arguments of `TransMorph` for ``ndim`` 2 (the paper's 2D TransMorph, window 8,
    for 128²) or 3 (the same widths and depths with window (4, 4, 4), for 64³ volumes).

    ``image_size`` is checked with `validate_input` (raises ``ValueError``).
    """
    if ndim not in (2, 3) or len(image_size) != ndim:
        raise InputError(f"ndim must be 2 or 3 and match image_size; got ndim={ndim}, image_size={tuple(image_size)}")
    config = dict(embed_dim=96, depths=(2, 2, 4, 2), num_heads=(4, 4, 8, 8),
                  window_size=WINDOW_2D if ndim == 2 else WINDOW_3D_64, patch_size=4, mlp_ratio=4.0,
                  drop_path_rate=0.3, qkv_bias=False)
    validate_input(image_size, config)
    return config


def validate_input(image_size: Sequence[int], config: Mapping[str, Any]) -> None:
    """Raise ``InputError`` unless ``image_size`` (spatial shape, 2 or 3 entries) suits ``config``.

    ``config`` needs ``patch_size`` and ``depths``; ``window_size``, ``embed_dim`` and ``num_heads`` are
    checked when present. Any positive size is taken (the network pads to `size_multiple`);
    ``patch_size`` must be 4 (the two convolutional skips sit at 1/2 and full resolution).
    """
    size = tuple(int(s) for s in image_size)
    patch, depths = int(config["patch_size"]), tuple(config["depths"])
    if len(size) not in (2, 3):
        raise InputError(f"image_size must have 2 or 3 spatial axes, got {size}")
    if patch != 4:
        raise InputError(f"patch_size must be 4 (conv skips at 1/2 and 1/1), got patch_size={patch}")
    window = config.get("window_size")
    if window is not None and not isinstance(window, int) and len(window) != len(size):
        raise InputError(f"window_size {tuple(window)} has {len(window)} entries, image_size {size} has {len(size)}")
    heads = config.get("num_heads")
    if heads is not None and len(heads) != len(depths):
        raise InputError(f"num_heads {tuple(heads)} and depths {depths} differ in length")
    if heads is not None and "embed_dim" in config:
        for i, h in enumerate(heads):
            if (config["embed_dim"] * 2**i) % h:
                raise InputError(f"stage {i}: {config['embed_dim'] * 2**i} channels not divisible by {h} heads")
    if any(s < 1 for s in size):
        raise InputError(f"image_size {size} must be positive on every axis")


def size_multiple(patch_size: int, depths: Sequence[int]) -> int:
    """``patch_size · 2**(len(depths)-1)``: the padded grid's sizes are multiples of it (so the last
    stage has at least one token and the decoder's ×2 upsamplings land on the skips)."""
    return int(patch_size) * 2 ** (len(depths) - 1)


def avg_pool_3s2(x: jax.Array) -> jax.Array:
    """AvgPool(kernel 3, stride 2, zero padding 1, padding counted in the mean): ``S`` → ``ceil(S/2)``."""
    nd = x.ndim - 2
    return nn.avg_pool(x, (3,) * nd, strides=(2,) * nd, padding=((1, 1),) * nd, count_include_pad=True)


def upsample2x(x: jax.Array) -> jax.Array:
    """Linear ×2 upsampling with half-pixel centres (PyTorch ``align_corners=False``, edge-clamped)."""
    b, *spatial, c = x.shape
    return jax.image.resize(x, (b, *(2 * s for s in spatial), c), method="linear")


class ConvNormAct(nn.Module):
    """3×3 conv (no bias, zero padding 1) → InstanceNorm (no affine, eps 1e-5) → LeakyReLU(0.01)."""

    features: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        nd = x.ndim - 2
        x = nn.Conv(self.features, (3,) * nd, padding=1, use_bias=False, kernel_init=torch_default_init,
                    dtype=self.dtype, param_dtype=jnp.float32, name="conv")(x)
        x = nn.InstanceNorm(epsilon=IN_EPS, use_bias=False, use_scale=False, use_fast_variance=False,
                            dtype=self.dtype, name="norm")(x)
        return nn.leaky_relu(x, LEAKY_SLOPE)


class DecoderBlock(nn.Module):
    """Upsample ×2 → concatenate ``[x, skip]`` → two `ConvNormAct` of ``features`` channels."""

    features: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, skip: jax.Array) -> jax.Array:
        x = jnp.concatenate([upsample2x(x).astype(self.dtype), skip.astype(self.dtype)], axis=-1)
        x = ConvNormAct(self.features, self.dtype, name="conv1")(x)
        return ConvNormAct(self.features, self.dtype, name="conv2")(x)


class TransMorph(nn.Module):
    """TransMorph displacement network; defaults are the paper's 2D configuration.

    ``__call__(moving, fixed, train=False)`` → displacement ``[B, *S, ndim]`` (voxels). ``train=True``
    enables stochastic depth and needs a ``'dropout'`` rng. ``window_size`` is an int (same on every
    axis) or one entry per spatial axis.
    """

    embed_dim: int = 96
    depths: tuple[int, ...] = (2, 2, 4, 2)
    num_heads: tuple[int, ...] = (4, 4, 8, 8)
    window_size: Union[int, tuple[int, ...]] = 8
    patch_size: int = 4
    mlp_ratio: float = 4.0
    drop_path_rate: float = 0.3
    qkv_bias: bool = False
    reg_head_chan: int = 16
    dtype: Any = jnp.float32   # compute dtype of encoder and decoder (bfloat16: mixed precision)
    remat: bool = False        # rematerialise each Swin block and decoder block in the backward pass
    predict_sigma: bool = False  # also return {"displacement", "velocity", "log_var_z"} (a dict)

    @nn.compact
    def __call__(self, moving: jax.Array, fixed: jax.Array, train: bool = False) -> jax.Array:
        if moving.shape[:-1] != fixed.shape[:-1]:
            raise InputError(f"moving {moving.shape} and fixed {fixed.shape} differ in batch/spatial shape")
        size = moving.shape[1:-1]
        validate_input(size, dict(patch_size=self.patch_size, depths=self.depths, window_size=self.window_size,
                                  num_heads=self.num_heads, embed_dim=self.embed_dim))
        x = padding.pad_end(jnp.concatenate([moving, fixed], axis=-1),
                            padding.padding(size, size_multiple(self.patch_size, self.depths)))
        nd = len(size)
        window = (self.window_size,) * nd if isinstance(self.window_size, int) else tuple(self.window_size)
        feats = SwinEncoder(self.patch_size, self.embed_dim, tuple(self.depths), tuple(self.num_heads), window,
                            self.mlp_ratio, self.qkv_bias, self.drop_path_rate, dtype=self.dtype,
                            remat=self.remat, name="transformer")(x, deterministic=not train)
        f4 = ConvNormAct(self.embed_dim // 2, self.dtype, name="c1")(avg_pool_3s2(x))
        f5 = ConvNormAct(self.reg_head_chan, self.dtype, name="c2")(x)
        skips = feats[-2::-1] + [f4, f5]
        widths = [self.embed_dim * 2**i for i in reversed(range(len(self.depths) - 1))]
        widths += [self.embed_dim // 2, self.reg_head_chan]
        y = feats[-1]
        decoder_block = nn.remat(DecoderBlock) if self.remat else DecoderBlock
        for j, (width, skip) in enumerate(zip(widths, skips)):
            y = decoder_block(width, self.dtype, name=f"up{j}")(y, skip)
        y = y.astype(jnp.float32)  # the heads and the displacement are float32
        flow = nn.Conv(nd, (3,) * nd, padding=1, kernel_init=nn.initializers.normal(FLOW_INIT_STD),
                       bias_init=nn.initializers.zeros, name="reg_head")(y)
        if not self.predict_sigma:
            return padding.crop(flow, size)
        # log σ_z² of an isotropic Gaussian on the displacement (paper, Section 5.3): σ_z starts at 0.1 voxel
        log_var_z = nn.Conv(1, (3,) * nd, padding=1, kernel_init=nn.initializers.normal(FLOW_INIT_STD),
                            bias_init=nn.initializers.constant(SIGMA_Z_INIT_LOG_VAR), name="log_sigma_z")(y)
        flow = padding.crop(flow, size)
        return {"displacement": flow, "velocity": flow, "log_var_z": padding.crop(log_var_z, size)}
