"""The SNR weight's min-max scope (the authors' whole-tensor rule) and the AdaReg / AdaFrame baselines."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hetreg_jax.config import check as config_check
from hetreg_jax.core import losses
from hetreg_jax.core import methods
from hetreg_jax.base import sharding
from hetreg_jax.core import spatial
from hetreg_jax.train import step as steps
from hetreg_jax.data import pipeline
from conftest import make_tiny_config


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


# ----------------------------------------------------------------------------------- minmax scope
def test_both_scopes_on_a_hand_computed_case_with_a_masked_out_voxel():
    # SNR^0.5 of the paper form with sigma^2 = 1 is |I_f|: [0.5, 1, 0.25, 0.8]; the last voxel is masked out.
    fixed = jnp.array([0.5, 1.0, 0.25, 0.8], jnp.float32).reshape(1, 2, 2, 1)
    log_var = jnp.zeros_like(fixed)
    mask = jnp.array([1.0, 1.0, 1.0, 0.0], jnp.float32).reshape(1, 2, 2, 1)
    tensor = losses.snr_weight(fixed, log_var, 0.5, "paper", mask, scope="tensor")
    # Whole tensor, masked-out SNR = 0: min 0, max 1, so minmax = [0.5, 1, 0.25, 0].
    np.testing.assert_allclose(np.ravel(tensor), [_sigmoid(0.5), _sigmoid(1.0), _sigmoid(0.25), 0.0], atol=1e-7)
    inside = losses.snr_weight(fixed, log_var, 0.5, "paper", mask, scope="mask")
    # Masked-in only: min 0.25, max 1, so minmax = [1/3, 1, 0, -] and the masked-out voxel gets 0.
    np.testing.assert_allclose(np.ravel(inside), [_sigmoid(1 / 3), _sigmoid(1.0), 0.5, 0.0], atol=1e-7)
    # Without a mask the two scopes are the same function.
    np.testing.assert_array_equal(losses.minmax(fixed, scope="tensor"), losses.minmax(fixed, scope="mask"))
    with pytest.raises(ValueError, match="unknown minmax scope 'all'"):
        losses.minmax(fixed, mask, scope="all")


def _authors_weight(fixed, moving, log_var, gamma, form, eps=1e-8):
    """The authors' pipeline in numpy (float32): snr * mask -> minmax over the tensor -> sigmoid -> * mask."""
    mask = ((moving != 0) | (fixed != 0)).astype(np.float32)
    signal = fixed * fixed if form == "paper" else np.abs(fixed)
    snr = np.power(signal * np.exp(-log_var), np.float32(gamma)) * mask
    scaled = (snr - snr.min()) / (snr.max() - snr.min() + np.float32(eps))
    return (np.float32(1) / (np.float32(1) + np.exp(-scaled))) * mask


@pytest.mark.parametrize("form", losses.SNR_FORMS)
def test_tensor_scope_reproduces_the_authors_pipeline(form):
    rng = np.random.default_rng(3)
    fixed = rng.uniform(0.05, 1.0, (2, 6, 6, 1)).astype(np.float32)
    moving = rng.uniform(0.05, 1.0, (2, 6, 6, 1)).astype(np.float32)
    fixed[:, :2] = 0.0                       # background rows in both images: masked out
    moving[:, :2] = 0.0
    log_var = rng.normal(-3.0, 1.0, fixed.shape).astype(np.float32)
    expected = _authors_weight(fixed, moving, log_var, 0.5, form)
    mask = losses.foreground_mask(jnp.asarray(moving), jnp.asarray(fixed))
    ours = losses.snr_weight(jnp.asarray(fixed), jnp.asarray(log_var), 0.5, form, mask, scope="tensor")
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-7)
    # The masked-in-only scope is a different weight on the same tensors.
    inside = losses.snr_weight(jnp.asarray(fixed), jnp.asarray(log_var), 0.5, form, mask, scope="mask")
    assert float(jnp.max(jnp.abs(inside - expected))) > 1e-3
    # With a masked-in voxel of SNR 0 (I_f = 0 where I_m != 0) both minima are 0: the scopes agree.
    fixed[0, 2, 0] = 0.0
    expected = _authors_weight(fixed, moving, log_var, 0.5, form)
    mask = losses.foreground_mask(jnp.asarray(moving), jnp.asarray(fixed))
    inside = losses.snr_weight(jnp.asarray(fixed), jnp.asarray(log_var), 0.5, form, mask, scope="mask")
    np.testing.assert_allclose(inside, expected, rtol=0, atol=1e-7)


@pytest.mark.parametrize("scope, constant", [("tensor", _sigmoid(1.0)), ("mask", 0.5)])
def test_gamma_zero_gives_a_constant_weight_on_the_mask_in_both_scopes(scope, constant):
    rng = np.random.default_rng(0)
    fixed = jnp.asarray(rng.uniform(0.1, 1.0, (2, 4, 4, 1)), jnp.float32)
    warped = jnp.asarray(rng.uniform(0.1, 1.0, (2, 4, 4, 1)), jnp.float32)
    log_var = jnp.asarray(rng.normal(0.0, 2.0, (2, 4, 4, 1)), jnp.float32)
    mask = jnp.ones_like(fixed).at[:, 0].set(0.0)
    w = losses.snr_weight(fixed, log_var, 0.0, "paper", mask, scope=scope)
    np.testing.assert_allclose(w, constant * np.asarray(mask), rtol=1e-7)
    np.testing.assert_allclose(losses.weighted_mse(fixed, warped, w, mask),
                               constant * losses.mse(fixed, warped, mask), rtol=1e-6)
    # Nothing masked out: every element of the tensor has SNR^0 = 1, minmax gives 0, weight 0.5.
    np.testing.assert_array_equal(losses.snr_weight(fixed, log_var, 0.0, "paper", jnp.ones_like(fixed), scope=scope),
                                  np.full(fixed.shape, 0.5, np.float32))


@pytest.mark.parametrize("scope", losses.MINMAX_SCOPES)
def test_no_gradient_through_the_weight_in_either_scope(scope):
    rng = np.random.default_rng(1)
    fixed = jnp.asarray(rng.uniform(0.0, 1.0, (1, 5, 5, 1)), jnp.float32)
    log_var = jnp.asarray(rng.normal(0.0, 1.0, (1, 5, 5, 1)), jnp.float32)
    mask = (fixed > 0.3).astype(jnp.float32)

    def total(f, s):
        return jnp.sum(losses.snr_weight(f, s, 0.5, "paper", mask, scope=scope) * (1.0 + f + s))

    g_f, g_s = jax.jit(jax.grad(total, argnums=(0, 1)))(fixed, log_var)
    w = losses.snr_weight(fixed, log_var, 0.5, "paper", mask, scope=scope)
    np.testing.assert_array_equal(g_f, w)   # only the explicit (1 + f + s) factor is differentiated
    np.testing.assert_array_equal(g_s, w)


# ----------------------------------------------------------------------------------- AdaReg / AdaFrame
def _ramp():
    """Residual |I_f - warped| = 0, 0.1, ..., 0.7 along one row; mean 0.35 (no mask)."""
    fixed = jnp.arange(8, dtype=jnp.float32).reshape(1, 1, 8, 1) / 10.0
    return fixed, jnp.zeros_like(fixed)


def test_adareg_weight_is_one_at_zero_residual_and_decreases_with_it():
    fixed, warped = _ramp()
    w = np.ravel(losses.adareg_weight(fixed, warped, c=5.0))
    assert w[0] == 1.0
    assert np.all(np.diff(w) < 0)
    np.testing.assert_allclose(w, np.exp(-5.0 * np.arange(8) / 10.0 * 0.35), rtol=1e-6)
    # The global residual is the foreground mean: masking out the last voxel changes it to 0.21.
    mask = jnp.ones_like(fixed).at[0, 0, 7, 0].set(0.0)
    wm = np.ravel(losses.adareg_weight(fixed, warped, c=5.0, mask=mask))
    np.testing.assert_allclose(wm[:7], np.exp(-5.0 * np.arange(7) / 10.0 * 0.3), rtol=1e-6)
    assert wm[7] == 1.0


def test_adaframe_weights_are_complementary_and_exp_minus_one_over_sigma_at_the_mean():
    fixed, warped = _ramp()
    alpha, reg = losses.adaframe_weights(fixed, warped, sigma=2.0)
    alpha, reg = np.ravel(alpha), np.ravel(reg)
    assert alpha[0] == 1.0 and reg[0] == 0.0
    assert np.all(np.diff(alpha) < 0)
    np.testing.assert_allclose(alpha, np.exp(-(np.arange(8) / 10.0) / (2.0 * 0.35)), rtol=1e-6)
    np.testing.assert_allclose(alpha + reg, 1.0, rtol=1e-7)
    # A voxel at the mean residual gets exp(-1/sigma): residuals 0.3 and 0.4 around the mean 0.35.
    np.testing.assert_allclose(np.exp(-1 / 2.0), np.sqrt(alpha[3] * alpha[4]), rtol=1e-6)


def test_weighted_smoothness_uses_the_far_end_weight_and_resamples_to_the_field_grid():
    row = jnp.array([1.0, 3.0, 1.0, 1.0], jnp.float32).reshape(1, 1, 4, 1)
    field = jnp.concatenate([row, row], axis=1)
    field = jnp.concatenate([field, jnp.zeros_like(field)], axis=-1)      # [1, 2, 4, 2], rows equal
    weight = jnp.concatenate([jnp.array([9.0, 0.5, 2.0, 4.0], jnp.float32).reshape(1, 1, 4, 1)] * 2, axis=1)
    # Axis 1: all differences 0. Axis 2: diffs 2, -2, 0 times w at the far end 0.5, 2, 4, over
    # 2 rows x 3 differences x 2 channels = 12 elements.
    expected = (0.0 + 2 * (0.5 * 4 + 2.0 * 4 + 4.0 * 0) / 12) / 2
    np.testing.assert_allclose(losses.weighted_smoothness(field, weight), expected, rtol=1e-7)
    rng = np.random.default_rng(2)
    velocity = jnp.asarray(rng.normal(size=(2, 4, 4, 2)), jnp.float32)
    np.testing.assert_array_equal(losses.weighted_smoothness(velocity, jnp.ones((2, 4, 4, 1))),
                                  losses.smoothness(velocity))
    full = jnp.asarray(rng.uniform(size=(2, 8, 8, 1)), jnp.float32)
    np.testing.assert_allclose(losses.weighted_smoothness(velocity, full),
                               losses.weighted_smoothness(velocity, spatial.resize_to(full, (4, 4))), rtol=1e-7)
    np.testing.assert_allclose(losses.weighted_smoothness(velocity, jnp.ones((2, 8, 8, 1))),
                               losses.smoothness(velocity), rtol=1e-6)


def _pair(seed=4):
    rng = np.random.default_rng(seed)
    fixed = jnp.asarray(rng.uniform(0.0, 1.0, (2, 8, 8, 1)), jnp.float32)
    warped = jnp.asarray(rng.uniform(0.0, 1.0, (2, 8, 8, 1)), jnp.float32)
    velocity = jnp.asarray(rng.normal(size=(2, 4, 4, 2)), jnp.float32)
    return fixed, warped, velocity, losses.foreground_mask(warped, fixed)


def test_zero_residual_gives_plain_mse_and_r_for_adareg_and_no_regulariser_for_adaframe():
    fixed, _, velocity, mask = _pair()
    cfg = make_tiny_config().loss
    sim, reg = methods.adaptive_terms(methods.get_method("adareg"), cfg, fixed, fixed, velocity, mask)
    assert float(sim) == 0.0
    np.testing.assert_allclose(reg, losses.smoothness(velocity), rtol=1e-6)
    sim, reg = methods.adaptive_terms(methods.get_method("adaframe"), cfg, fixed, fixed, velocity, mask)
    assert float(sim) == 0.0 and float(reg) == 0.0
    # c = 0 makes AdaReg plain MSE + R for any residual.
    _, warped, _, _ = _pair(5)
    cfg.adareg_c = 0.0
    sim, reg = methods.adaptive_terms(methods.get_method("adareg"), cfg, fixed, warped, velocity, mask)
    np.testing.assert_allclose(sim, losses.mse(fixed, warped, mask), rtol=1e-7)
    np.testing.assert_allclose(reg, losses.smoothness(velocity), rtol=1e-6)


@pytest.mark.parametrize("name", ["adareg", "adaframe"])
def test_no_gradient_through_the_adaptive_weights(name):
    fixed, warped, velocity, mask = _pair()
    cfg = make_tiny_config().loss
    method = methods.get_method(name)

    def regulariser(f, w):
        return methods.adaptive_terms(method, cfg, f, w, velocity, mask)[1]

    g_f, g_w = jax.jit(jax.grad(regulariser, argnums=(0, 1)))(fixed, warped)
    np.testing.assert_array_equal(g_f, np.zeros(fixed.shape))     # R reaches the images only via the weight
    np.testing.assert_array_equal(g_w, np.zeros(warped.shape))

    def data(w):
        return methods.adaptive_terms(method, cfg, fixed, w, velocity, mask)[0]

    # The data term's gradient is that of mean(a * m * r^2) with a constant a (1 for adareg, alpha for adaframe).
    a = 1.0 if name == "adareg" else losses.adaframe_weights(fixed, warped, cfg.adaframe_sigma, mask)[0]
    expected = -2.0 * a * mask * (fixed - warped) / fixed.size
    np.testing.assert_allclose(jax.grad(data)(warped), expected, rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("name", ["adareg", "adaframe"])
def test_one_training_iteration_of_each_adaptive_method_is_finite(name):
    config = make_tiny_config(method=name)
    trainer = steps.Trainer(config)
    assert trainer.phase(0) == "motion" and trainer.variance_model is None
    splits = pipeline.load_splits(config)
    local = pipeline.training_batch(splits["train"], config.seed, 0, config.batch_size,
                                    sharding.process_slice(config.batch_size))
    state = trainer.init_state()
    before = jax.tree.map(np.asarray, jax.device_get(state.motion_params))
    state, measures = trainer.train_step("motion")(state, sharding.global_batch(local, trainer.mesh))
    assert float(measures["all_finite"]) == 1.0 and float(measures["motion_grad_norm"]) > 0
    after = jax.device_get(state.motion_params)
    assert max(float(np.max(np.abs(x - y))) for x, y in zip(jax.tree.leaves(before), jax.tree.leaves(after))) > 0


# ----------------------------------------------------------------------------------- config keys
@pytest.mark.parametrize("overrides, key, allowed", [
    ({"loss.minmax_scope": "all"}, "loss.minmax_scope", "one of 'tensor', 'mask'"),
    ({"loss.adareg_c": -1.0}, "loss.adareg_c", "a finite number >= 0"),
    ({"loss.adaframe_sigma": 0.0}, "loss.adaframe_sigma", "a finite number > 0"),
    ({"method": "adaframe", "motion.bidirectional": True}, "motion.bidirectional", "False with method='adaframe'"),
])
def test_new_keys_are_validated(overrides, key, allowed):
    config = make_tiny_config(**overrides)
    with pytest.raises(ValueError) as info:
        config_check.validate_config(config)
    message = str(info.value)
    assert message.startswith(f"config.{key}=") and allowed in message and "\n" not in message, message
    for name in ("adareg", "adaframe"):
        config_check.validate_config(make_tiny_config(method=name))
