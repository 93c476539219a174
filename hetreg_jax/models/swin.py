"""Swin transformer building blocks for TransMorph, for 2D and 3D, channels-last.

Follows the Swin encoder of the TransMorph reference (Chen et al. 2022, itself from Liu et al. 2021):

* Feature maps are ``[B, *S, C]`` (``ndim = len(S)`` is 2 or 3); windows and shifts are tuples with
  one entry per spatial axis.
* A block pads its (already layer-normed) map with zeros at the high end of every axis up to a multiple
  of the window. A map smaller than the window is padded up to one window (the window never shrinks).
  Padded tokens take part in the attention like any other token (they are not masked), as in the
  reference.
* Shifted windows: the padded map is rolled by ``-shift`` (``jnp.roll``), partitioned, attended and
  rolled back. Pairs of tokens of one window that come from different regions of the roll (the three
  intervals ``[0, P-w)``, ``[P-w, P-s)``, ``[P-s, P)`` of each padded axis of length ``P``) get −100 added
  to their logit. Odd blocks of a stage use ``shift = window // 2``, even blocks no shift.
* Relative position bias: a learnt table of ``prod(2w - 1)`` rows × heads, laid out row-major over the
  per-axis offsets ``d_k + w_k - 1`` (``d = position_i - position_j`` inside the window).

Initialisation (the reference does not call Swin's ``init_weights``): Dense/Conv kernels use PyTorch's
default ``U(±1/sqrt(fan_in))``; biases are zero (PyTorch draws them from the same uniform law);
the bias table is N(0, 0.02²) (timm's ``trunc_normal_`` truncates at ±2 absolute, i.e. never).
Dropout and attention dropout are absent (rate 0 in every TransMorph configuration); stochastic depth
(DropPath) uses the ``'dropout'`` rng stream.

Precision and memory: every module takes a compute ``dtype`` (e.g. ``jnp.bfloat16``): Dense, Conv and
LayerNorm layers compute in it (LayerNorm statistics in float32), the bias table and the shift mask are
cast to it, and the attention softmax is taken in float32 and cast back; parameters stay float32.
``remat=True`` wraps each Swin block in ``flax.linen.remat`` (recomputed in the backward pass), with
the same parameter names.
"""

from __future__ import annotations

import itertools
import math
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from hetreg_jax.base.errors import InputError

MASK_VALUE = -100.0
LN_EPS = 1e-5
torch_default_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def layer_norm(name: str, dtype: Any = jnp.float32) -> nn.LayerNorm:
    """LayerNorm over channels with PyTorch's eps 1e-5 and a two-pass variance; output in ``dtype``."""
    return nn.LayerNorm(epsilon=LN_EPS, use_fast_variance=False, dtype=dtype, param_dtype=jnp.float32,
                        name=name)


def dense(features: int, name: str, dtype: Any, use_bias: bool = True) -> nn.Dense:
    """Linear layer with PyTorch's default kernel init and zero bias, computing in ``dtype``."""
    return nn.Dense(features, use_bias=use_bias, kernel_init=torch_default_init, dtype=dtype,
                    param_dtype=jnp.float32, name=name)


# Order of the 2**ndim sub-grids concatenated by patch merging (as in the reference, so that
# converted weights line up): 2D Swin order x0..x3, 3D TransMorph order x0..x7.
_MERGE_OFFSETS = {
    2: ((0, 0), (1, 0), (0, 1), (1, 1)),
    3: ((0, 0, 0), (1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 1, 0), (0, 1, 1), (1, 0, 1), (1, 1, 1)),
}


# ----------------------------------------------------------------------------- window geometry
def padded_shape(spatial: Sequence[int], window: Sequence[int]) -> tuple[int, ...]:
    """Smallest multiple of ``window`` on each axis that holds ``spatial`` (at least one window)."""
    return tuple(max(1, math.ceil(s / w)) * w for s, w in zip(spatial, window))


def window_partition(x: jax.Array, window: Sequence[int]) -> jax.Array:
    """``[B, *S, C]`` → ``[B * nW, prod(window), C]`` (works on numpy and jax arrays alike).

    ``S`` must be a multiple of ``window``. Windows are ordered batch-major, then row-major over the
    window grid; tokens inside a window are row-major over the window axes.
    """
    b, *spatial, c = x.shape
    nd = len(spatial)
    grid = [s // w for s, w in zip(spatial, window)]
    if any(g * w != s for g, w, s in zip(grid, window, spatial)):
        raise InputError(f"spatial shape {tuple(spatial)} is not a multiple of window {tuple(window)}")
    split = [d for g, w in zip(grid, window) for d in (g, w)]
    x = x.reshape(b, *split, c)
    perm = (0, *range(1, 2 * nd, 2), *range(2, 2 * nd + 1, 2), 2 * nd + 1)
    return x.transpose(perm).reshape(-1, math.prod(window), c)


def window_reverse(windows: jax.Array, window: Sequence[int], spatial: Sequence[int]) -> jax.Array:
    """Inverse of `window_partition`: ``[B * nW, prod(window), C]`` → ``[B, *spatial, C]``."""
    nd = len(spatial)
    grid = [s // w for s, w in zip(spatial, window)]
    c = windows.shape[-1]
    x = windows.reshape(-1, *grid, *window, c)
    perm = (0, *(i for k in range(nd) for i in (1 + k, 1 + nd + k)), 2 * nd + 1)
    return x.transpose(perm).reshape(-1, *spatial, c)


def relative_position_index(window: Sequence[int]) -> np.ndarray:
    """``[N, N]`` int index into the bias table (``N = prod(window)``), for any ndim.

    Entry ``(i, j)`` is the row-major index of ``(d_k + w_k - 1)_k`` in a grid of shape ``(2w - 1)``,
    with ``d = coord(i) - coord(j)``. Hence ``index + index.T == prod(2w - 1) - 1``.
    """
    coords = np.stack(np.meshgrid(*[np.arange(w) for w in window], indexing="ij")).reshape(len(window), -1)
    rel = coords[:, :, None] - coords[:, None, :] + np.asarray(window)[:, None, None] - 1
    return np.ravel_multi_index(tuple(rel), tuple(2 * w - 1 for w in window)).astype(np.int32)


def shift_region_ids(padded: Sequence[int], window: Sequence[int], shift: Sequence[int]) -> np.ndarray:
    """Region label of every position of the rolled, padded map (shape ``padded``).

    Per axis: 0 on ``[0, P-w)``, 1 on ``[P-w, P-s)``, 2 on ``[P-s, P)``; labels are combined
    base 3 over the axes.
    """
    labels = np.zeros(tuple(padded), np.int32)
    for axis, (p, w, s) in enumerate(zip(padded, window, shift)):
        r = np.arange(p)
        region = (r >= p - w).astype(np.int32) + (r >= p - s).astype(np.int32)  # s = 0: never
        shape = [1] * len(padded)
        shape[axis] = p
        labels = labels + region.reshape(shape) * 3**axis
    return labels


def shifted_window_mask(padded: Sequence[int], window: Sequence[int], shift: Sequence[int]) -> np.ndarray:
    """``[nW, N, N]`` additive mask: 0 within a region, −100 between regions (windows row-major)."""
    ids = shift_region_ids(padded, window, shift)
    ids = window_partition(ids[None, ..., None], window)[..., 0]  # numpy in, numpy out
    return np.where(ids[:, None, :] != ids[:, :, None], MASK_VALUE, 0.0).astype(np.float32)


# ----------------------------------------------------------------------------- layers
class DropPath(nn.Module):
    """Stochastic depth: zero a whole sample's residual branch with probability ``rate``, scale the
    kept ones by ``1 / (1 - rate)``. Identity when ``deterministic`` or ``rate == 0``.
    Draws from the ``'dropout'`` rng."""

    rate: float

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
        if deterministic or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        mask = jax.random.bernoulli(self.make_rng("dropout"), keep, (x.shape[0],) + (1,) * (x.ndim - 1))
        return jnp.where(mask, x / keep, 0.0)


class WindowAttention(nn.Module):
    """Multi-head self-attention inside windows with a relative position bias.

    ``x``: ``[B * nW, N, C]``; ``mask``: ``[nW, N, N]`` additive, or None. Scale ``head_dim**-0.5``.
    """

    dim: int
    num_heads: int
    window: tuple[int, ...]
    qkv_bias: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, mask: Optional[jax.Array] = None) -> jax.Array:
        bw, n, c = x.shape
        hd = c // self.num_heads
        table = self.param("relative_position_bias_table", nn.initializers.normal(0.02),
                           (math.prod(2 * w - 1 for w in self.window), self.num_heads))
        qkv = dense(3 * c, "qkv", self.dtype, use_bias=self.qkv_bias)(x)
        qkv = qkv.reshape(bw, n, 3, self.num_heads, hd).transpose(2, 0, 3, 1, 4)
        q, k, v = qkv[0] * hd**-0.5, qkv[1], qkv[2]
        bias = table[relative_position_index(self.window)].transpose(2, 0, 1).astype(self.dtype)  # [H, N, N]
        logits = jnp.einsum("bhnd,bhmd->bhnm", q, k) + bias[None]
        if mask is not None:
            nw = mask.shape[0]
            mask = mask.astype(self.dtype)
            logits = (logits.reshape(-1, nw, self.num_heads, n, n) + mask[None, :, None]).reshape(logits.shape)
        attn = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(self.dtype)
        out = jnp.einsum("bhnm,bhmd->bnhd", attn, v).reshape(bw, n, c)
        return dense(c, "proj", self.dtype)(out)


class ShiftedWindowMSA(nn.Module):
    """(Shifted-)window attention on a map ``[B, *S, C]`` → same shape: zero-pad to the window grid,
    roll by ``-shift``, attend per window (masking shift regions when any shift > 0), undo, crop."""

    dim: int
    num_heads: int
    window: tuple[int, ...]
    shift: tuple[int, ...]
    qkv_bias: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        spatial = x.shape[1:-1]
        axes = tuple(range(1, len(spatial) + 1))
        padded = padded_shape(spatial, self.window)
        x = jnp.pad(x, [(0, 0)] + [(0, p - s) for p, s in zip(padded, spatial)] + [(0, 0)])
        shifted = any(s > 0 for s in self.shift)
        mask = None
        if shifted:
            x = jnp.roll(x, [-s for s in self.shift], axis=axes)
            mask = jnp.asarray(shifted_window_mask(padded, self.window, self.shift))
        attn = WindowAttention(self.dim, self.num_heads, self.window, self.qkv_bias, self.dtype, name="attn")
        x = window_reverse(attn(window_partition(x, self.window), mask), self.window, padded)
        if shifted:
            x = jnp.roll(x, list(self.shift), axis=axes)
        return x[(slice(None),) + tuple(slice(0, s) for s in spatial)]


class Mlp(nn.Module):
    """Linear(C → ratio·C) → exact GELU → Linear(→ C)."""

    hidden: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        y = dense(self.hidden, "fc1", self.dtype)(x)
        y = jax.nn.gelu(y, approximate=False)
        return dense(x.shape[-1], "fc2", self.dtype)(y)


class SwinBlock(nn.Module):
    """Pre-norm Swin block: ``x + DropPath(MSA(LN(x)))``, then ``x + DropPath(MLP(LN(x)))``."""

    dim: int
    num_heads: int
    window: tuple[int, ...]
    shift: tuple[int, ...]
    mlp_ratio: float = 4.0
    qkv_bias: bool = False
    drop_path: float = 0.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool = True) -> jax.Array:
        drop = DropPath(self.drop_path)
        msa = ShiftedWindowMSA(self.dim, self.num_heads, self.window, self.shift, self.qkv_bias, self.dtype,
                               name="msa")
        x = x + drop(msa(layer_norm("norm1", self.dtype)(x)), deterministic)
        mlp = Mlp(int(self.dim * self.mlp_ratio), self.dtype, name="mlp")
        return x + drop(mlp(layer_norm("norm2", self.dtype)(x)), deterministic)


class PatchMerging(nn.Module):
    """Concatenate the 2**ndim sub-grids (zero-padding odd sizes) → LayerNorm → Linear(→ 2C, no bias).

    2D: 4C → 2C; 3D: 8C → 2C (the reference's ``pat_merg_rf = 4``). Halves every spatial axis.
    """

    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        spatial, c = x.shape[1:-1], x.shape[-1]
        x = jnp.pad(x, [(0, 0)] + [(0, s % 2) for s in spatial] + [(0, 0)])
        parts = [x[(slice(None),) + tuple(slice(o, None, 2) for o in off)] for off in _MERGE_OFFSETS[len(spatial)]]
        x = layer_norm("norm", self.dtype)(jnp.concatenate(parts, axis=-1))
        return dense(2 * c, "reduction", self.dtype, use_bias=False)(x)


class PatchEmbed(nn.Module):
    """Conv with kernel = stride = ``patch_size`` (input zero-padded to a multiple), optional LayerNorm."""

    patch_size: int
    embed_dim: int
    norm: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        spatial = x.shape[1:-1]
        p = self.patch_size
        x = jnp.pad(x, [(0, 0)] + [(0, -s % p) for s in spatial] + [(0, 0)])
        x = nn.Conv(self.embed_dim, (p,) * len(spatial), strides=p, padding="VALID",
                    kernel_init=torch_default_init, dtype=self.dtype, param_dtype=jnp.float32, name="proj")(x)
        return layer_norm("norm", self.dtype)(x) if self.norm else x


class BasicLayer(nn.Module):
    """One Swin stage: ``depth`` blocks alternating shift 0 / ``window // 2``, then optional merging.

    Returns ``(stage_output, downsampled or None)``.
    """

    dim: int
    depth: int
    num_heads: int
    window: tuple[int, ...]
    mlp_ratio: float = 4.0
    qkv_bias: bool = False
    drop_path: tuple[float, ...] = ()
    downsample: bool = False
    dtype: Any = jnp.float32
    remat: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool = True):
        rates = self.drop_path or (0.0,) * self.depth
        # static_argnums counts the module as argument 0: ``deterministic`` (2) is a Python bool.
        block = nn.remat(SwinBlock, static_argnums=(2,)) if self.remat else SwinBlock
        for i in range(self.depth):
            shift = tuple(w // 2 for w in self.window) if i % 2 else (0,) * len(self.window)
            x = block(self.dim, self.num_heads, tuple(self.window), shift, self.mlp_ratio,
                      self.qkv_bias, rates[i], self.dtype, name=f"blocks_{i}")(x, deterministic)
        return x, (PatchMerging(self.dtype, name="downsample")(x) if self.downsample else None)


class SwinEncoder(nn.Module):
    """Patch embedding + ``len(depths)`` stages; returns each stage's output after its own LayerNorm.

    Stage ``i`` has ``embed_dim * 2**i`` channels at ``1 / (patch_size * 2**i)`` resolution.
    Drop-path rates: ``linspace(0, drop_path_rate, sum(depths))`` over all blocks in order.
    """

    patch_size: int
    embed_dim: int
    depths: tuple[int, ...]
    num_heads: tuple[int, ...]
    window: tuple[int, ...]
    mlp_ratio: float = 4.0
    qkv_bias: bool = False
    drop_path_rate: float = 0.0
    patch_norm: bool = True
    dtype: Any = jnp.float32
    remat: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool = True) -> list[jax.Array]:
        x = PatchEmbed(self.patch_size, self.embed_dim, self.patch_norm, self.dtype, name="patch_embed")(x)
        rates = [float(r) for r in np.linspace(0.0, self.drop_path_rate, sum(self.depths))]
        starts = list(itertools.accumulate(self.depths, initial=0))
        outs = []
        for i, depth in enumerate(self.depths):
            out, x = BasicLayer(self.embed_dim * 2**i, depth, self.num_heads[i], tuple(self.window),
                                self.mlp_ratio, self.qkv_bias, tuple(rates[starts[i]:starts[i + 1]]),
                                downsample=i < len(self.depths) - 1, dtype=self.dtype, remat=self.remat,
                                name=f"layers_{i}")(x, deterministic)
            outs.append(layer_norm(f"norm{i}", self.dtype)(out))
        return outs
