"""Tests for hetreg_jax.models.swin and hetreg_jax.models.transmorph (tiny sizes, CPU)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.scipy.ndimage import map_coordinates

from hetreg_jax.models import swin
from hetreg_jax.models.transmorph import (TransMorph, avg_pool_3s2, transmorph_config, upsample2x,
                                          validate_input)

TINY = dict(embed_dim=8, depths=(2, 2), num_heads=(2, 2), window_size=4, patch_size=4, mlp_ratio=2.0,
            drop_path_rate=0.5, qkv_bias=False, reg_head_chan=4)


def rbg_key(seed):
    """Keys whose random bits compile fast on CPU (threefry init of many tensors compiles slowly)."""
    return jax.random.key(seed, impl="rbg")


def init_params(model, shape, seed=0):
    x = jnp.zeros(shape, jnp.float32)
    return jax.jit(model.init)(rbg_key(seed), x, x)


# ----------------------------------------------------------------------------- window geometry
@pytest.mark.parametrize("shape,window", [((2, 8, 9, 3), (4, 3)), ((2, 4, 6, 6, 2), (2, 3, 2))])
def test_window_partition_layout_and_reverse(shape, window):
    x = jax.random.normal(jax.random.key(0), shape)
    spatial = shape[1:-1]
    w = swin.window_partition(x, window)
    grid = [s // k for s, k in zip(spatial, window)]
    assert w.shape == (shape[0] * math.prod(grid), math.prod(window), shape[-1])
    # Window 1 is the second along the last axis of batch 0; the first window of batch 1 follows all of batch 0.
    second = (0,) + tuple(slice(0, k) for k in window[:-1]) + (slice(window[-1], 2 * window[-1]),)
    np.testing.assert_array_equal(w[1], x[second].reshape(-1, shape[-1]))
    first_b1 = (1,) + tuple(slice(0, k) for k in window)
    np.testing.assert_array_equal(w[math.prod(grid)], x[first_b1].reshape(-1, shape[-1]))
    np.testing.assert_array_equal(swin.window_reverse(w, window, spatial), x)


@pytest.mark.parametrize("window", [(2, 3, 4), (8, 8), (5, 6, 7)])
def test_relative_position_index_symmetry(window):
    idx = swin.relative_position_index(window)
    n, size = math.prod(window), math.prod(2 * w - 1 for w in window)
    assert idx.shape == (n, n)
    np.testing.assert_array_equal(idx + idx.T, size - 1)  # offset d and -d mirror around the centre
    np.testing.assert_array_equal(np.diag(idx), (size - 1) // 2)  # d = 0 is the centre row
    assert len(np.unique(idx)) == size  # every offset occurs
    assert idx[0, n - 1] == 0 and idx[n - 1, 0] == size - 1  # d = -(w-1) → row 0, d = w-1 → last row


def test_mask_of_a_single_padded_window():
    # The 4×4 last stage of the 2D model: padded to one 8×8 window, rolled by 4 → four 4×4 regions.
    mask = swin.shifted_window_mask((8, 8), (8, 8), (4, 4))
    assert mask.shape == (1, 64, 64)
    assert set(np.unique(mask)) == {0.0, -100.0}
    np.testing.assert_array_equal((mask[0] == 0).sum(axis=1), 16)
    ids = swin.shift_region_ids((8, 8), (8, 8), (4, 4))
    real = np.roll(np.pad(np.ones((4, 4)), ((0, 4), (0, 4))), (-4, -4), axis=(0, 1)).astype(bool)
    assert len(np.unique(ids[real])) == 1 and not np.isin(ids[~real], ids[real]).any()


# ----------------------------------------------------------------------------- brute-force attention
def brute_force_msa(params, x, window, shift, num_heads):
    """Global attention over the zero-padded map; a pair (i, j) is allowed iff both positions fall in
    the same window of the non-cyclic shifted partition [0, s), [s, s+w), …, [P-w+s, P) on every axis."""
    b, *spatial, c = x.shape
    padded = [max(1, math.ceil(s / w)) * w for s, w in zip(spatial, window)]
    xp = jnp.pad(x, [(0, 0)] + [(0, p - s) for p, s in zip(padded, spatial)] + [(0, 0)])
    coords = np.stack(np.meshgrid(*[np.arange(p) for p in padded], indexing="ij"), -1).reshape(-1, len(padded))
    group = (coords + np.asarray(window) - np.asarray(shift)) // np.asarray(window)
    allowed = (group[:, None, :] == group[None, :, :]).all(-1)
    offsets = np.clip(coords[:, None, :] - coords[None, :, :] + np.asarray(window) - 1, 0, None)
    offsets = np.minimum(offsets, 2 * np.asarray(window) - 2)
    p = params["params"]["attn"]
    table = p["relative_position_bias_table"].reshape(*(2 * w - 1 for w in window), num_heads)
    bias = table[tuple(offsets[..., k] for k in range(len(window)))]  # [M, M, H]
    tokens = xp.reshape(b, -1, c)
    qkv = (tokens @ p["qkv"]["kernel"]).reshape(b, tokens.shape[1], 3, num_heads, c // num_heads)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    logits = jnp.einsum("bnhd,bmhd->bhnm", q, k) * (c // num_heads) ** -0.5 + bias.transpose(2, 0, 1)
    attn = jax.nn.softmax(jnp.where(allowed, logits, -jnp.inf), axis=-1)
    out = jnp.einsum("bhnm,bmhd->bnhd", attn, v).reshape(tokens.shape)
    out = out @ p["proj"]["kernel"] + p["proj"]["bias"]
    return out.reshape(b, *padded, c)[(slice(None),) + tuple(slice(0, s) for s in spatial)]


@pytest.mark.parametrize("spatial,window,shift", [
    ((8, 9), (4, 3), (0, 0)), ((8, 9), (4, 3), (2, 1)),      # tiles exactly
    ((6, 7), (4, 4), (2, 2)),                                # zero padding to 8×8
    ((4, 4), (8, 8), (4, 4)),                                # smaller than one window
    ((4, 6, 4), (2, 3, 4), (0, 0, 0)), ((4, 6, 4), (2, 3, 4), (1, 1, 2)),
    ((3, 5, 4), (2, 4, 2), (1, 2, 1)),                       # 3D with padding
])
def test_shifted_window_attention_equals_masked_global_attention(spatial, window, shift):
    dim, heads = 8, 2
    module = swin.ShiftedWindowMSA(dim, heads, window, shift)
    unshifted = swin.ShiftedWindowMSA(dim, heads, window, (0,) * len(window))
    x = jax.random.normal(jax.random.key(1), (2, *spatial, dim))

    @jax.jit
    def compare(x):
        params = module.init(jax.random.key(2), x)
        table = params["params"]["attn"]["relative_position_bias_table"]
        params["params"]["attn"]["relative_position_bias_table"] = jax.random.normal(jax.random.key(3), table.shape)
        return module.apply(params, x), brute_force_msa(params, x, window, shift, heads), unshifted.apply(params, x)

    got, want, other = compare(x)
    np.testing.assert_allclose(got, want, atol=2e-5, rtol=1e-5)
    if any(shift):  # the shift matters: unshifted windows give another answer
        assert np.abs(other - got).max() > 1e-2


# ----------------------------------------------------------------------------- small layers
def test_drop_path_statistics():
    x = jnp.ones((4000, 3))
    layer = swin.DropPath(0.25)
    np.testing.assert_array_equal(layer.apply({}, x, deterministic=True), x)
    y = np.asarray(layer.apply({}, x, deterministic=False, rngs={"dropout": jax.random.key(0)}))
    dropped = (y == 0).all(axis=1)
    assert abs(dropped.mean() - 0.25) < 0.03  # whole samples are dropped
    np.testing.assert_allclose(y[~dropped], 1 / 0.75, rtol=1e-6)  # survivors rescaled


def test_patch_merging_shapes():
    merge = swin.PatchMerging()
    for shape, kernel, out in [((2, 4, 4, 3), (12, 6), (2, 2, 2, 6)),        # 2D: 4C → 2C
                               ((1, 4, 6, 2, 5), (40, 10), (1, 2, 3, 1, 10)),  # 3D: 8C → 2C
                               ((1, 5, 3, 4), (16, 8), (1, 3, 2, 8))]:        # odd sizes zero-padded
        x = jax.ShapeDtypeStruct(shape, jnp.float32)
        params = jax.eval_shape(merge.init, jax.random.key(0), x)
        assert params["params"]["reduction"]["kernel"].shape == kernel
        assert "bias" not in params["params"]["reduction"]
        assert jax.eval_shape(merge.apply, params, x).shape == out


def test_upsample_matches_align_corners_false_and_avgpool_counts_padding():
    x = np.random.default_rng(0).normal(size=(1, 3, 5, 1)).astype(np.float32)

    def torch_linear_x2(a, axis):  # PyTorch's align_corners=False source index, clamped at 0
        n = a.shape[axis]
        src = np.maximum((np.arange(2 * n) + 0.5) / 2 - 0.5, 0)
        i0 = np.floor(src).astype(int)
        i1, lam = np.minimum(i0 + 1, n - 1), src - i0
        shape = [1] * a.ndim
        shape[axis] = 2 * n
        return np.take(a, i0, axis) * (1 - lam).reshape(shape) + np.take(a, i1, axis) * lam.reshape(shape)

    np.testing.assert_allclose(upsample2x(jnp.asarray(x)), torch_linear_x2(torch_linear_x2(x, 1), 2), atol=1e-6)
    pooled = np.asarray(avg_pool_3s2(jnp.asarray(x)))
    assert pooled.shape == (1, 2, 3, 1)
    xp = np.pad(x[0, :, :, 0], 1)
    want = np.array([[xp[2 * i:2 * i + 3, 2 * j:2 * j + 3].sum() / 9 for j in range(3)] for i in range(2)])
    np.testing.assert_allclose(pooled[0, :, :, 0], want, atol=1e-6)


# ----------------------------------------------------------------------------- full model
def expected_param_count(ndim, embed, depths, heads, window, mlp_ratio=4, reg=16, in_ch=2):
    """Parameter count from the architecture, written out by hand."""
    table = math.prod(2 * w - 1 for w in window)
    conv = lambda cin, cout: 3**ndim * cin * cout  # noqa: E731  (no bias)
    n = 4**ndim * in_ch * embed + embed + 2 * embed  # patch embed conv + bias + LayerNorm
    for i, (d, h) in enumerate(zip(depths, heads)):
        c = embed * 2**i
        block = 4 * c + 3 * c * c + c * c + c + table * h + 2 * mlp_ratio * c * c + mlp_ratio * c + c
        n += d * block + 2 * c  # blocks + stage output LayerNorm
        if i < len(depths) - 1:
            n += 2 * 2**ndim * c + 2**ndim * c * 2 * c  # merging LayerNorm + reduction
    n += conv(in_ch, embed // 2) + conv(in_ch, reg)  # conv skips
    widths = [embed * 2**i for i in reversed(range(len(depths) - 1))] + [embed // 2, reg]
    prev = embed * 2 ** (len(depths) - 1)
    for w in widths:  # each skip has as many channels as its block's output
        n += conv(prev + w, w) + conv(w, w)
        prev = w
    return n + conv(reg, ndim) + ndim  # flow head with bias


def count_and_shape(model, shape):
    x = jax.ShapeDtypeStruct(shape, jnp.float32)
    params = jax.eval_shape(model.init, jax.random.key(0), x, x)
    out = jax.eval_shape(model.apply, params, x, x)
    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(params)), out.shape


@pytest.mark.parametrize("ndim,size,window,expected_millions", [
    (2, (128, 128), None, 31.0),           # paper's 2D configuration
    (3, (64, 64, 64), None, 46.7),         # our 3D configuration, window (4, 4, 4)
    (3, (160, 192, 224), (5, 6, 7), 46.8),  # published 3D TransMorph
])
def test_full_configurations_shapes_and_parameter_counts(ndim, size, window, expected_millions):
    config = transmorph_config(ndim, (64,) * 3 if ndim == 3 else size)
    if window is not None:
        config["window_size"] = window
    n, out_shape = count_and_shape(TransMorph(**config), (1, *size, 1))
    assert out_shape == (1, *size, ndim)
    assert n == expected_param_count(ndim, 96, (2, 2, 4, 2), (4, 4, 8, 8), config["window_size"])
    assert abs(n / 1e6 - expected_millions) < 0.05


def test_tiny_3d_forward_is_near_zero_at_init():
    model = TransMorph(**TINY)
    x = jax.random.uniform(jax.random.key(0), (2, 1, 16, 16, 16, 1))
    out, params = jax.jit(model.init_with_output)(rbg_key(0), x[0], x[1])
    assert out.shape == (1, 16, 16, 16, 3)
    assert 0 < float(jnp.abs(out).max()) < 1e-2
    head = params["params"]["reg_head"]
    assert abs(float(jnp.std(head["kernel"])) - 1e-5) < 3e-6 and not jnp.any(head["bias"])


@pytest.fixture(scope="module")
def tiny_2d():
    model = TransMorph(**TINY)
    return model, init_params(model, (2, 32, 32, 1), seed=1)


def test_eval_deterministic_train_stochastic(tiny_2d):
    model, params = tiny_2d
    x = jax.random.uniform(jax.random.key(0), (2, 2, 32, 32, 1))
    apply = jax.jit(model.apply, static_argnames="train")
    a, b = apply(params, x[0], x[1]), apply(params, x[0], x[1])
    np.testing.assert_array_equal(a, b)
    assert a.shape == (2, 32, 32, 2) and 0 < float(jnp.abs(a).max()) < 1e-2  # flow head starts near zero
    t1 = apply(params, x[0], x[1], train=True, rngs={"dropout": jax.random.key(1)})
    t1b = apply(params, x[0], x[1], train=True, rngs={"dropout": jax.random.key(1)})
    t2 = apply(params, x[0], x[1], train=True, rngs={"dropout": jax.random.key(2)})
    np.testing.assert_array_equal(t1, t1b)
    assert float(jnp.abs(t1 - t2).max()) > 1e-3 * float(jnp.abs(a).max())
    assert float(jnp.abs(t1 - a).max()) > 1e-3 * float(jnp.abs(a).max())


def warp(image, disp):
    """moving(x + u(x)), linear, zero outside; image [B, *S, 1], disp [B, *S, ndim]."""
    grid = jnp.stack(jnp.meshgrid(*[jnp.arange(s, dtype=jnp.float32) for s in image.shape[1:-1]],
                                  indexing="ij"), -1)
    sample = lambda img, u: map_coordinates(img[..., 0], list(jnp.moveaxis(grid + u, -1, 0)),  # noqa: E731
                                            order=1, mode="constant", cval=0.0)[..., None]
    return jax.vmap(sample)(image, disp)


def test_jitted_gradients_are_finite_for_every_parameter(tiny_2d):
    model, params = tiny_2d
    yy, xx = np.mgrid[:32, :32]
    blob = lambda cy, cx: np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 30.0)  # noqa: E731
    moving = jnp.asarray(np.stack([blob(15, 16), blob(16, 14)])[..., None], jnp.float32)
    fixed = jnp.asarray(np.stack([blob(17, 15), blob(15, 16)])[..., None], jnp.float32)

    def loss_fn(p, rng):
        disp = model.apply(p, moving, fixed, train=True, rngs={"dropout": rng})
        return jnp.mean((warp(moving, disp) - fixed) ** 2)

    loss, grads = jax.jit(jax.value_and_grad(loss_fn))(params, jax.random.key(3))
    assert np.isfinite(float(loss)) and float(loss) > 0
    leaves = jax.tree_util.tree_leaves_with_path(grads)
    assert len(leaves) == len(jax.tree.leaves(params))
    for path, g in leaves:
        assert bool(jnp.all(jnp.isfinite(g))), jax.tree_util.keystr(path)
    head = grads["params"]["reg_head"]
    assert float(jnp.abs(head["kernel"]).max()) > 0 and float(jnp.abs(head["bias"]).max()) > 0


# ----------------------------------------------------------------------------- validation
@pytest.mark.parametrize("size,config,match", [
    ((0, 128), transmorph_config(2, (128, 128)), "must be positive"),
    ((64, 64, 64), transmorph_config(2, (128, 128)), "window_size"),
    ((128, 128), {**transmorph_config(2, (128, 128)), "patch_size": 2}, "patch_size must be 4"),
    ((128, 128), {**transmorph_config(2, (128, 128)), "num_heads": (4, 4, 7, 8)}, "heads"),
])
def test_validate_input_raises(size, config, match):
    with pytest.raises(ValueError, match=match):
        validate_input(size, config)


def test_module_and_config_take_any_size():
    """Sizes that are not multiples of 32 are padded inside the network (tests/test_any_size.py)."""
    with pytest.raises(ValueError, match="match image_size"):
        transmorph_config(3, (64, 64))
    validate_input((100, 128), transmorph_config(2, (128, 128)))
    validate_input((16, 16), transmorph_config(2, (128, 128)))  # smaller than one 1/32 token: padded to 32
    x = jax.ShapeDtypeStruct((1, 96, 100, 1), jnp.float32)
    out = jax.eval_shape(TransMorph().init_with_output, jax.random.key(0), x, x)[0]
    assert out.shape == (1, 96, 100, 2)
