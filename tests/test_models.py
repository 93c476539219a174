"""Tests for hetreg_jax.models: shapes, parameter counts, initialisation, integration, registry."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hetreg_jax.core import spatial
from hetreg_jax.models import (MODEL_NAMES, UNet, VarianceUNet, VoxelMorph, count_params,
                               get_model, init_params)
from hetreg_jax.models.unet import upsample_nearest

KEY = jax.random.key(0)
# Conv parameters do not depend on the spatial size: initialise on small images, apply on large.
SMALL_2D, SMALL_3D = (16, 16), (16, 16, 16)


def _images(key, batch, shape):
    k1, k2 = jax.random.split(key)
    return (jax.random.uniform(k1, (batch, *shape, 1)), jax.random.uniform(k2, (batch, *shape, 1)))


@pytest.fixture(scope="module")
def vxm_params_2d():
    return init_params(VoxelMorph(), KEY, SMALL_2D)


@pytest.fixture(scope="module")
def var_params_2d():
    return init_params(VarianceUNet(), KEY, SMALL_2D)


def _constant_head(params, c):
    """Flow head set to output the constant vector ``c`` everywhere (kernel 0, bias c)."""
    flow = {"kernel": jnp.zeros_like(params["flow"]["kernel"]), "bias": jnp.asarray(c, jnp.float32)}
    return {**params, "flow": flow}


@pytest.mark.parametrize("name, shape, expected", [
    ("voxelmorph", (128, 128), 109_170),
    ("voxelmorph", (64, 64, 64), 327_331),
    ("variance_unet", (128, 128), 109_025),
    ("variance_unet", (64, 64, 64), 326_465),
])
def test_parameter_counts(name, shape, expected):
    model = get_model(name)
    params = jax.eval_shape(lambda: init_params(model, KEY, shape))
    assert count_params(params) == expected


def test_voxelmorph_2d_shapes_and_near_zero_init(vxm_params_2d):
    moving, fixed = _images(KEY, 2, (128, 128))
    out = jax.jit(VoxelMorph().apply)({"params": vxm_params_2d}, moving, fixed)
    assert set(out) == {"displacement", "velocity"}
    assert out["displacement"].shape == (2, 128, 128, 2)
    assert out["velocity"].shape == (2, 64, 64, 2)
    assert out["displacement"].dtype == jnp.float32
    max_u = float(jnp.max(jnp.abs(out["displacement"])))
    assert 0 < max_u < 1e-2


def test_voxelmorph_non_diffeomorphic_and_bidirectional_shapes(vxm_params_2d):
    moving, fixed = _images(KEY, 2, (128, 128))
    model = VoxelMorph(int_steps=0, bidirectional=True)
    out = model.apply({"params": vxm_params_2d}, moving, fixed)
    assert out["displacement"].shape == (2, 128, 128, 2)
    np.testing.assert_array_equal(out["velocity"], out["displacement"])
    np.testing.assert_array_equal(out["inverse_displacement"], -out["displacement"])


def test_bidirectional_diffeomorphic_shapes():
    model = VoxelMorph(bidirectional=True)
    moving, fixed = _images(KEY, 2, (128, 128))
    out = jax.eval_shape(lambda: model.apply({"params": init_params(model, KEY, SMALL_2D)},
                                             moving, fixed))
    assert out["inverse_displacement"].shape == (2, 128, 128, 2)
    assert out["velocity"].shape == (2, 64, 64, 2)


def test_voxelmorph_3d_forward_one_real_run():
    moving, fixed = _images(KEY, 1, (64, 64, 64))
    # init_with_output: one compilation and one forward pass give both parameters and output.
    out, _ = jax.jit(VoxelMorph().init_with_output)(KEY, moving, fixed)
    assert out["displacement"].shape == (1, 64, 64, 64, 3)
    assert out["velocity"].shape == (1, 32, 32, 32, 3)
    assert float(jnp.max(jnp.abs(out["displacement"]))) < 1e-2


def test_3d_shapes_without_computing():
    moving, fixed = _images(KEY, 1, (64, 64, 64))
    flat = VoxelMorph(int_steps=0)
    out = jax.eval_shape(lambda: flat.apply({"params": init_params(flat, KEY, SMALL_3D)},
                                            moving, fixed))
    assert out["displacement"].shape == out["velocity"].shape == (1, 64, 64, 64, 3)
    var = VarianceUNet()
    log_var = jax.eval_shape(lambda: var.apply({"params": init_params(var, KEY, SMALL_3D)},
                                               moving, fixed))
    assert log_var.shape == (1, 64, 64, 64, 1)


def test_variance_unet_2d_shape_and_finite(var_params_2d):
    warped, fixed = _images(KEY, 2, (128, 128))
    log_var = jax.jit(VarianceUNet().apply)({"params": var_params_2d}, warped, fixed)
    assert log_var.shape == (2, 128, 128, 1)
    assert bool(jnp.all(jnp.isfinite(log_var)))
    # PyTorch-default head init: not collapsed to zero, but O(1) at most.
    assert 1e-4 < float(jnp.std(log_var)) and float(jnp.max(jnp.abs(log_var))) < 5


def test_variance_input_order_matters(var_params_2d):
    a, b = _images(KEY, 1, (32, 32))
    model = VarianceUNet()
    assert not np.allclose(model.apply({"params": var_params_2d}, a, b),
                           model.apply({"params": var_params_2d}, b, a))


def test_torch_default_init_bounds(vxm_params_2d):
    conv = vxm_params_2d["unet"]["extra_0"]          # 48 input channels, 3x3
    bound = 1 / math.sqrt(48 * 9)
    for leaf in (conv["kernel"], conv["bias"]):
        assert float(jnp.max(jnp.abs(leaf))) <= bound
    # uniform(±b) has standard deviation b / sqrt(3); 48*9*32 samples pin it to ~2%.
    assert abs(float(jnp.std(conv["kernel"])) - bound / math.sqrt(3)) < 0.05 * bound / math.sqrt(3)
    head = vxm_params_2d["flow"]
    assert head["kernel"].shape == (3, 3, 16, 2)
    assert 0.5e-5 < float(jnp.std(head["kernel"])) < 2e-5
    np.testing.assert_array_equal(head["bias"], 0.0)


@pytest.mark.parametrize("bidirectional", [False, True])
def test_constant_velocity_is_a_translation(vxm_params_2d, bidirectional):
    c = jnp.array([1.5, -2.0])
    model = VoxelMorph(bidirectional=bidirectional)
    moving, fixed = _images(KEY, 1, (64, 64))
    out = model.apply({"params": _constant_head(vxm_params_2d, c)}, moving, fixed)
    # Half-resolution velocity: resizing a constant field keeps it constant, vectors halved.
    np.testing.assert_allclose(out["velocity"], jnp.broadcast_to(c / 2, (1, 32, 32, 2)), atol=1e-6)
    # Integration of a constant velocity is the same translation, up to zero padding at the border.
    interior = (slice(None), slice(12, -12), slice(12, -12))
    np.testing.assert_allclose(out["displacement"][interior],
                               jnp.broadcast_to(c, (1, 40, 40, 2)), atol=1e-5)
    if bidirectional:
        np.testing.assert_allclose(out["inverse_displacement"][interior],
                                   jnp.broadcast_to(-c, (1, 40, 40, 2)), atol=1e-5)
    # The border is affected (zero padding during squaring): the field is not exactly constant.
    assert float(jnp.max(jnp.abs(out["displacement"] - c))) > 1e-2


def test_full_resolution_integration(vxm_params_2d):
    c = jnp.array([-1.0, 0.75])
    model = VoxelMorph(int_downsize=1)
    moving, fixed = _images(KEY, 1, (32, 32))
    out = model.apply({"params": _constant_head(vxm_params_2d, c)}, moving, fixed)
    np.testing.assert_allclose(out["velocity"], jnp.broadcast_to(c, (1, 32, 32, 2)), atol=1e-6)
    np.testing.assert_allclose(out["displacement"][:, 4:-4, 4:-4],
                               jnp.broadcast_to(c, (1, 24, 24, 2)), atol=1e-5)


def test_non_diffeomorphic_head_is_the_displacement(vxm_params_2d):
    c = jnp.array([0.3, -0.7])
    out = VoxelMorph(int_steps=0).apply({"params": _constant_head(vxm_params_2d, c)},
                                        *_images(KEY, 1, (32, 32)))
    np.testing.assert_allclose(out["displacement"], jnp.broadcast_to(c, (1, 32, 32, 2)), atol=1e-7)


def test_indivisible_size_is_padded_by_the_networks_not_the_unet():
    """The bare U-Net still needs multiples of 16; VoxelMorph and the variance net pad to them
    (tests/test_any_size.py)."""
    moving, fixed = _images(KEY, 1, (100, 100))
    with pytest.raises(ValueError, match="divisible by 16"):
        jax.eval_shape(lambda: UNet().init(KEY, moving))
    for model in (VoxelMorph(), VarianceUNet()):
        out = jax.eval_shape(lambda m=model: m.init_with_output(KEY, moving, fixed))[0]
        out = out["displacement"] if isinstance(out, dict) else out
        assert out.shape[1:3] == (100, 100)


def test_decoder_shorter_than_encoder_raises():
    with pytest.raises(ValueError, match="at least 4"):
        jax.eval_shape(lambda: UNet(dec_features=(32, 32)).init(KEY, jnp.zeros((1, 16, 16, 1))))


def test_upsample_nearest_repeats_every_spatial_axis():
    x = jnp.arange(8.0).reshape(1, 2, 2, 2)                     # [B, 2, 2, C=2]
    up = upsample_nearest(x)
    assert up.shape == (1, 4, 4, 2)
    np.testing.assert_array_equal(up[0, :, :, 1], [[1, 1, 3, 3], [1, 1, 3, 3],
                                                   [5, 5, 7, 7], [5, 5, 7, 7]])


def test_unet_output_features():
    out = jax.eval_shape(lambda: UNet().init_with_output(KEY, jnp.zeros((2, 32, 16, 1)))[0])
    assert out.shape == (2, 32, 16, 16)


def test_gradients_through_voxelmorph_and_warp_are_finite(vxm_params_2d):
    model = VoxelMorph()
    moving, fixed = _images(KEY, 2, (32, 32))

    @jax.jit
    def loss_and_grad(params):
        def loss(p):
            u = model.apply({"params": p}, moving, fixed)["displacement"]
            return jnp.mean((spatial.warp(moving, u) - fixed) ** 2)
        return jax.value_and_grad(loss)(params)

    value, grads = loss_and_grad(vxm_params_2d)
    assert np.isfinite(float(value))
    leaves = jax.tree_util.tree_leaves(grads)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in leaves)
    # The loss reaches the head's bias directly: its gradient is non-zero.
    assert float(jnp.max(jnp.abs(grads["flow"]["bias"]))) > 0


def test_registry():
    assert MODEL_NAMES == ("voxelmorph", "variance_unet", "transmorph")
    model = get_model("voxelmorph", int_steps=0, bidirectional=True)
    assert isinstance(model, VoxelMorph) and model.int_steps == 0 and model.bidirectional
    assert isinstance(get_model("variance_unet"), VarianceUNet)
    with pytest.raises(ValueError, match="voxelmorph, variance_unet, transmorph"):
        get_model("resnet")


@pytest.mark.parametrize("shape_low, c_skip", [((2, 4, 5, 3), 2), ((1, 3, 4, 2, 2), 3)])
def test_upsample_concat_conv_equals_the_plain_form(shape_low, c_skip):
    from hetreg_jax.models.unet import _conv, upsample_concat_conv
    rng = np.random.default_rng(0)
    ndim = len(shape_low) - 2
    low = jnp.asarray(rng.normal(size=shape_low), jnp.float32)
    skip = jnp.asarray(rng.normal(size=(shape_low[0], *(2 * n for n in shape_low[1:-1]), c_skip)), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=(3,) * ndim + (shape_low[-1] + c_skip, 4)), jnp.float32)
    plain = _conv(jnp.concatenate([upsample_nearest(low), skip], axis=-1), kernel, "SAME")
    np.testing.assert_allclose(upsample_concat_conv(low, skip, kernel), plain, rtol=1e-5, atol=1e-5)
    # ...and so are the gradients with respect to every input.
    g_fast = jax.grad(lambda *a: jnp.sum(upsample_concat_conv(*a) ** 2), argnums=(0, 1, 2))(low, skip, kernel)
    g_plain = jax.grad(lambda lo, sk, k: jnp.sum(_conv(jnp.concatenate([upsample_nearest(lo), sk], -1), k,
                                                       "SAME") ** 2), argnums=(0, 1, 2))(low, skip, kernel)
    for a, b in zip(g_fast, g_plain):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name, shape", [("voxelmorph", (16, 16)), ("variance_unet", (8, 8, 8))])
def test_unet_upsample_forms_share_parameters_and_agree(name, shape):
    """``unet_upsample="plain"`` builds the upsampled concatenation and convolves it; the default
    sub-pixel form computes the same convolution: one parameter tree, outputs and gradients equal
    to float rounding (VoxelMorph 2D, the variance U-Net 3D)."""
    from hetreg_jax.models import get_model, init_params

    kw = dict(enc_features=(4, 8), dec_features=(8, 8, 4))
    if name == "voxelmorph":
        kw.update(int_steps=0, int_downsize=1)     # the U-Net is what differs: no integration to compile
    fast, plain = get_model(name, **kw), get_model(name, upsample="plain", **kw)
    params = init_params(fast, jax.random.key(0), shape)
    assert jax.tree.structure(init_params(plain, jax.random.key(0), shape)) == jax.tree.structure(params)
    rng = np.random.default_rng(0)
    a, b = (jnp.asarray(rng.random((2, *shape, 1)), jnp.float32) for _ in range(2))

    @functools.partial(jax.jit, static_argnums=0)
    def out_and_grad(model, p):
        def out(p):
            y = model.apply({"params": p}, a, b)
            return y["displacement"] if isinstance(y, dict) else y
        return out(p), jax.grad(lambda p: jnp.sum(out(p) ** 2))(p)

    (y_plain, g_plain), (y_fast, g_fast) = out_and_grad(plain, params), out_and_grad(fast, params)
    np.testing.assert_allclose(y_plain, y_fast, rtol=1e-5, atol=1e-6)
    for x, y in zip(jax.tree.leaves(g_plain), jax.tree.leaves(g_fast)):
        np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="upsample='transposed'"):
        init_params(get_model(name, upsample="transposed", **kw), jax.random.key(0), shape)
