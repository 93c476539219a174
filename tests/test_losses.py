"""Tests for hetreg_jax.core.losses: analytic values, stop-gradients, the SNR weight, NCC and MI."""

import numpy as np
import pytest
import jax
import jax.numpy as jnp

from hetreg_jax.core import losses

SIG0 = float(jax.nn.sigmoid(jnp.float32(0.0)))  # 0.5
SIG1 = float(jax.nn.sigmoid(jnp.float32(1.0)))  # 0.7310586


def _images(seed, shape=(2, 8, 8, 1)):
    rng = np.random.default_rng(seed)
    fixed = rng.uniform(0.05, 1.0, shape).astype(np.float32)
    warped = rng.uniform(0.0, 1.0, shape).astype(np.float32)
    log_var = rng.uniform(-4.0, 1.0, shape).astype(np.float32)
    return jnp.asarray(fixed), jnp.asarray(warped), jnp.asarray(log_var)


# ------------------------------------------------------------------------------------ masks, MSE
def test_foreground_mask_known_arrays():
    moving = jnp.array([[0.0, 0.3, 0.0, -1.0]])
    fixed = jnp.array([[0.0, 0.0, 0.7, 0.0]])
    mask = losses.foreground_mask(moving, fixed)
    assert mask.dtype == jnp.float32
    np.testing.assert_array_equal(mask, [[0.0, 1.0, 1.0, 1.0]])


def test_mse_masked_mean_runs_over_all_elements():
    fixed = jnp.array([[1.0, 2.0, 3.0, 4.0]])
    warped = jnp.array([[0.0, 0.0, 0.0, 0.0]])
    mask = jnp.array([[1.0, 0.0, 1.0, 0.0]])
    np.testing.assert_allclose(losses.mse(fixed, warped), 30.0 / 4)
    # Masked-out elements count as zeros in the mean: (1 + 9) / 4, not / 2.
    np.testing.assert_allclose(losses.mse(fixed, warped, mask), 10.0 / 4)
    weight = jnp.array([[2.0, 1.0, 0.5, 1.0]])
    np.testing.assert_allclose(losses.weighted_mse(fixed, warped, weight, mask),
                               (2.0 * 1 + 0.5 * 9) / 4)


# ------------------------------------------------------------------------------------ smoothness
@pytest.mark.parametrize("shape", [(2, 6, 5), (1, 4, 5, 6)])
def test_smoothness_of_ramp_and_constant(shape):
    ndim = len(shape) - 1
    a = 0.7
    axis = ndim - 1  # ramp along the last spatial axis
    coords = jnp.arange(shape[1 + axis], dtype=jnp.float32)
    ramp = a * coords.reshape([-1 if d == 1 + axis else 1 for d in range(len(shape))])
    # Every component equals a * x_axis: the forward difference is a on that axis only.
    field = jnp.broadcast_to(ramp[..., None], (*shape, ndim))
    np.testing.assert_allclose(losses.smoothness(field), a ** 2 / ndim, rtol=1e-6)
    # A single component a * x_axis: channel mean adds a factor 1/ndim.
    one = jnp.zeros((*shape, ndim)).at[..., 0].set(jnp.broadcast_to(ramp, shape))
    np.testing.assert_allclose(losses.smoothness(one), a ** 2 / ndim ** 2, rtol=1e-6)
    assert float(losses.smoothness(jnp.full((*shape, ndim), 3.2))) == 0.0


def test_motion_loss_total_and_terms():
    fixed, warped, log_var = _images(0)
    field = jax.random.normal(jax.random.key(1), (2, 8, 8, 2))
    weight = losses.snr_weight(fixed, log_var, 0.5)
    total, terms = losses.motion_loss(fixed, warped, field, weight, smooth_weight=0.01,
                                      reg_scale=2.0)
    sim = losses.weighted_mse(fixed, warped, weight)
    reg = losses.smoothness(field)
    np.testing.assert_allclose(terms["similarity"], sim, rtol=1e-6)
    np.testing.assert_allclose(terms["smoothness"], reg, rtol=1e-6)
    np.testing.assert_allclose(total, sim + 0.01 * 2.0 * reg, rtol=1e-6)
    assert float(reg) > 0.1  # the regulariser term really contributes
    total_plain, terms_plain = losses.motion_loss(fixed, warped, field)  # weight None -> MSE
    np.testing.assert_allclose(terms_plain["similarity"], losses.mse(fixed, warped), rtol=1e-6)
    np.testing.assert_allclose(total_plain, losses.mse(fixed, warped) + 0.01 * reg, rtol=1e-6)


# ------------------------------------------------------------------------------------ SNR weight
def test_snr_forms_match_numpy():
    f = np.array([0.2, 0.5, 1.0, 0.9, 1.0, 0.0], np.float32).reshape(1, 6, 1)
    s = np.array([-2.0, 0.3, -1.0, 1.5, 0.7, -3.0], np.float32).reshape(1, 6, 1)
    g = 0.5
    s2 = np.exp(s.astype(np.float64))
    paper_np = (f.astype(np.float64) ** 2 / s2) ** g
    ref_np = (f.astype(np.float64) / s2) ** g
    paper = np.asarray(losses.snr(jnp.asarray(f), jnp.asarray(s), g, "paper"))
    ref = np.asarray(losses.snr(jnp.asarray(f), jnp.asarray(s), g, "reference"))
    np.testing.assert_allclose(paper, paper_np, rtol=1e-5)
    np.testing.assert_allclose(ref, ref_np, rtol=1e-5)
    ones = f == 1.0
    differs = (f != 1.0) & (f != 0.0)
    np.testing.assert_allclose(paper[ones], ref[ones], rtol=1e-6)
    assert np.all(np.abs(paper[differs] - ref[differs]) > 1e-3)


def test_snr_finite_and_gamma_zero_is_one():
    f = jnp.array([0.0, 0.0, 1.0, 1e3, 0.5]).reshape(1, 5, 1)
    s = jnp.array([-200.0, 200.0, -200.0, -100.0, 0.0]).reshape(1, 5, 1)
    for form in losses.SNR_FORMS:
        for g in (0.5, 1.0, 3.0):
            assert np.all(np.isfinite(losses.snr(f, s, g, form)))
        np.testing.assert_array_equal(losses.snr(f, s, 0.0, form), np.ones((1, 5, 1)))
    with pytest.raises(ValueError, match="paper.*reference"):
        losses.snr(f, s, 0.5, "papr")


@pytest.mark.parametrize("form", losses.SNR_FORMS)
def test_snr_weight_has_zero_gradient(form):
    fixed, _, log_var = _images(1)
    mask = (fixed > 0.2).astype(jnp.float32)

    def total(f, s):
        return jnp.sum(losses.snr_weight(f, s, 0.5, form, mask) * (1.0 + f + s))

    def weight_sum(f, s):
        return jnp.sum(losses.snr_weight(f, s, 0.5, form, mask))

    for fn in (jax.grad(weight_sum, argnums=(0, 1)), jax.jit(jax.grad(weight_sum, argnums=(0, 1)))):
        g_f, g_s = fn(fixed, log_var)
        np.testing.assert_array_equal(g_f, np.zeros(fixed.shape))
        np.testing.assert_array_equal(g_s, np.zeros(log_var.shape))
    # The weight is a constant factor: only the explicit (1 + f + s) dependence is differentiated.
    g_f, g_s = jax.jit(jax.grad(total, argnums=(0, 1)))(fixed, log_var)
    w = losses.snr_weight(fixed, log_var, 0.5, form, mask)
    np.testing.assert_allclose(g_f, w, rtol=1e-6)
    np.testing.assert_allclose(g_s, w, rtol=1e-6)


@pytest.mark.parametrize("form", losses.SNR_FORMS)
def test_gamma_zero_gives_constant_half(form):
    fixed, warped, log_var = _images(2)
    w = losses.snr_weight(fixed, log_var, 0.0, form)
    np.testing.assert_array_equal(w, np.full(fixed.shape, 0.5, np.float32))
    np.testing.assert_allclose(losses.weighted_mse(fixed, warped, w),
                               0.5 * losses.mse(fixed, warped), rtol=1e-6)
    mask = (warped > 0.5).astype(jnp.float32)
    w_masked = losses.snr_weight(fixed, log_var, 0.0, form, mask, scope="mask")
    np.testing.assert_array_equal(w_masked, 0.5 * np.asarray(mask))
    np.testing.assert_allclose(losses.weighted_mse(fixed, warped, w_masked, mask),
                               0.5 * losses.mse(fixed, warped, mask), rtol=1e-6)


@pytest.mark.parametrize("form", losses.SNR_FORMS)
def test_weight_range_and_extremes(form):
    fixed, _, log_var = _images(3)
    w = np.asarray(losses.snr_weight(fixed, log_var, 0.5, form))
    snr = np.asarray(losses.snr(fixed, log_var, 0.5, form))
    assert w.min() >= 0.5 and w.max() <= 0.7311
    np.testing.assert_allclose(w.flat[np.argmax(snr)], SIG1, rtol=1e-7)
    np.testing.assert_allclose(w.flat[np.argmin(snr)], SIG0, rtol=1e-7)
    # Monotone in SNR: same ordering.
    assert np.all(np.diff(w.ravel()[np.argsort(snr.ravel())]) >= 0)
    # With a mask hiding the global max and min, min/max come from the masked-in elements.
    mask = np.ones(fixed.shape, np.float32)
    mask.flat[np.argmax(snr)] = 0.0
    mask.flat[np.argmin(snr)] = 0.0
    wm = np.asarray(losses.snr_weight(fixed, log_var, 0.5, form, jnp.asarray(mask), scope="mask"))
    inside = np.where(mask.ravel() > 0)[0]
    snr_in = snr.ravel()[inside]
    np.testing.assert_allclose(wm.ravel()[inside[np.argmax(snr_in)]], SIG1, rtol=1e-7)
    np.testing.assert_allclose(wm.ravel()[inside[np.argmin(snr_in)]], SIG0, rtol=1e-7)
    assert np.all(wm.ravel()[mask.ravel() == 0] == 0.0)
    assert wm.ravel()[inside].min() >= 0.5 and wm.max() <= 0.7311


def test_minmax_whole_batch_and_empty_mask():
    x = jnp.array([[1.0, 3.0], [5.0, 2.0]])
    np.testing.assert_allclose(losses.minmax(x), [[0.0, 0.5], [1.0, 0.25]], rtol=1e-6)
    mask = jnp.array([[1.0, 1.0], [0.0, 1.0]])
    np.testing.assert_allclose(losses.minmax(x, mask, scope="mask"), [[0.0, 1.0], [0.0, 0.5]], rtol=1e-6)
    np.testing.assert_array_equal(losses.minmax(x, jnp.zeros_like(x), scope="mask"), np.zeros((2, 2)))


# ------------------------------------------------------------------------------------ NLL family
def test_beta_nll_gradients():
    fixed, warped, log_var = _images(4)
    mask = (fixed > 0.3).astype(jnp.float32)
    beta = 0.5
    grads = jax.jit(jax.grad(lambda f, w, s: losses.beta_nll(f, w, s, beta, mask),
                             argnums=(0, 1, 2)))(fixed, warped, log_var)
    np.testing.assert_array_equal(grads[0], np.zeros(fixed.shape))
    np.testing.assert_array_equal(grads[1], np.zeros(warped.shape))
    r2 = np.square(np.asarray(fixed, np.float64) - np.asarray(warped, np.float64))
    s = np.asarray(log_var, np.float64)
    s2 = np.exp(s)
    expected = np.asarray(mask) * s2 ** beta * 0.5 * (1.0 - r2 / s2) / fixed.size
    np.testing.assert_allclose(grads[2], expected, rtol=1e-5, atol=1e-9)
    assert np.count_nonzero(np.asarray(grads[2])) > 0
    # Value: the stop-gradients do not change the forward value.
    value = np.mean(np.asarray(mask) * s2 ** beta * (0.5 * r2 / s2 + 0.5 * s))
    np.testing.assert_allclose(losses.beta_nll(fixed, warped, log_var, beta, mask), value,
                               rtol=1e-5)


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
def test_beta_nll_constant_log_var_converges_to_log_mean_r2(beta):
    fixed, warped, _ = _images(5)
    target = float(np.log(np.mean(np.square(np.asarray(fixed) - np.asarray(warped)))))

    @jax.jit
    def descend(s0):
        grad = jax.grad(lambda s: losses.beta_nll(fixed, warped, jnp.full(fixed.shape, s), beta))
        return jax.lax.fori_loop(0, 300, lambda _, s: s - 2.0 * grad(s), s0)

    s_star = float(descend(jnp.float32(0.0)))
    np.testing.assert_allclose(s_star, target, atol=1e-4)
    if beta == 0.0:  # plain NLL: the value itself is minimised there (grid check)
        grid = jnp.linspace(target - 1.0, target + 1.0, 201)
        values = jax.vmap(
            lambda g: losses.beta_nll(fixed, warped, jnp.full(fixed.shape, g), 0.0))(grid)
        assert abs(float(grid[jnp.argmin(values)]) - target) <= 0.01


def test_gaussian_and_joint_beta_nll_pass_gradient_to_warped():
    fixed, warped, log_var = _images(6)
    r = np.asarray(fixed, np.float64) - np.asarray(warped, np.float64)
    s = np.asarray(log_var, np.float64)
    n = fixed.size
    g_w, g_s = jax.grad(losses.gaussian_nll, argnums=(1, 2))(fixed, warped, log_var)
    np.testing.assert_allclose(g_w, -r * np.exp(-s) / n, rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(g_s, 0.5 * (1 - r ** 2 * np.exp(-s)) / n, rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(losses.gaussian_nll(fixed, warped, log_var),
                               np.mean(0.5 * r ** 2 * np.exp(-s) + 0.5 * s), rtol=1e-5)
    g_w, g_s = jax.grad(losses.joint_beta_nll, argnums=(1, 2))(fixed, warped, log_var, 0.5)
    np.testing.assert_allclose(g_w, -np.exp(0.5 * s) * r * np.exp(-s) / n, rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(g_s, np.exp(0.5 * s) * 0.5 * (1 - r ** 2 * np.exp(-s)) / n,
                               rtol=1e-5, atol=1e-9)
    # Same forward value as the stopped variant.
    np.testing.assert_allclose(losses.joint_beta_nll(fixed, warped, log_var),
                               losses.beta_nll(fixed, warped, log_var), rtol=1e-6)


# ------------------------------------------------------------------------------------ NCC and MI
def _texture(seed, shape=(1, 24, 24, 1)):
    return jax.random.uniform(jax.random.key(seed), shape)


def test_ncc_self_and_shift_2d_3d():
    img = _texture(7)
    self_loss = float(losses.ncc(img, img))
    assert self_loss < -0.999
    shifted = jnp.roll(img, 2, axis=1)
    assert float(losses.ncc(img, shifted)) > self_loss + 0.5
    vol = _texture(8, (1, 10, 10, 10, 1))
    assert float(losses.ncc(vol, vol, window=5)) < -0.999
    assert float(losses.ncc(vol, jnp.roll(vol, 1, axis=2), window=5)) > -0.5


def test_ncc_box_sums_match_numpy_local_correlation():
    fixed, warped = _texture(9, (1, 12, 12, 1)), _texture(10, (1, 12, 12, 1))
    cc = np.asarray(losses.ncc_map(fixed, warped, window=5, eps=0.0))
    f = np.pad(np.asarray(fixed, np.float64)[0, ..., 0], 2)
    w = np.pad(np.asarray(warped, np.float64)[0, ..., 0], 2)
    for (y, x) in [(0, 0), (5, 7), (11, 3)]:  # includes the zero-padded corner
        a, b = f[y:y + 5, x:x + 5].ravel(), w[y:y + 5, x:x + 5].ravel()
        expected = np.corrcoef(a, b)[0, 1] ** 2
        np.testing.assert_allclose(cc[0, y, x, 0], expected, rtol=1e-4, atol=1e-6)


def test_ncc_affine_intensity_invariance():
    fixed, warped = _texture(11), 0.5 * _texture(11) + 0.5 * _texture(12)
    base = float(losses.ncc(fixed, warped))
    # Scale: exact everywhere (zero padding scales too) up to eps.
    np.testing.assert_allclose(float(losses.ncc(fixed, 2.5 * warped)), base, rtol=1e-4)
    np.testing.assert_allclose(float(losses.ncc(0.3 * fixed, warped)), base, rtol=1e-4)
    # Offset: exact on the interior, >= window // 2 voxels from the border.
    cc = losses.ncc_map(fixed, warped)
    cc_affine = losses.ncc_map(fixed, 1.7 * warped + 0.4)
    np.testing.assert_allclose(cc_affine[:, 4:-4, 4:-4], cc[:, 4:-4, 4:-4], rtol=1e-3, atol=1e-5)
    assert float(jnp.mean(cc[:, 4:-4, 4:-4])) > 0.3


def test_mutual_information_orders_and_constant():
    img = _texture(13, (2, 16, 16, 1))
    noise = _texture(14, (2, 16, 16, 1))
    self_loss = float(losses.mutual_information(img, img))
    noise_loss = float(losses.mutual_information(img, noise))
    assert self_loss < noise_loss - 0.5
    # Symmetric, and ~0 MI against a constant image (up to the reference's 1e-6 terms).
    np.testing.assert_allclose(float(losses.mutual_information(noise, img)), noise_loss, rtol=1e-5)
    const = jnp.full_like(img, 0.4)
    assert abs(float(losses.mutual_information(img, const))) < 1e-3
    # Under jit, and with a 3D volume.
    vol = _texture(15, (1, 6, 6, 6, 1))
    assert float(jax.jit(losses.mutual_information)(vol, vol)) < float(
        losses.mutual_information(vol, _texture(16, (1, 6, 6, 6, 1))))
