"""Loss functions: similarity terms, the smoothness regulariser, the SNR weight and (β-)NLL.

Every function is a pure `jax.numpy` function returning a float32 scalar (or a map where stated),
safe under `jax.jit`: the only Python branches are on static arguments (`mask is None`, `form`).

Shapes (channels-last): images and log-variances `[B, *S, 1]`, displacement / velocity fields
`[B, *S, ndim]` with `ndim = len(S)`. One code path serves 2D and 3D.

Mean convention: every `mean` runs over ALL elements of the tensor (batch, spatial and channel
axes). A foreground mask multiplies the per-element term, so masked-out elements count as zeros
in the numerator but still count in the denominator, exactly as the authors' code does (it does
not divide by the number of foreground elements). `mask` is a float array broadcastable to the
image shape, with values in {0, 1}; `mask=None` means all ones.

Notation follows METHOD.md: fixed image `I_f`, warped moving image `Î_f`, residual
`r = I_f − Î_f`, predicted log-variance `s = log σ²`.
"""

from __future__ import annotations

import numpy as np
import jax
import jax.numpy as jnp
from hetreg_jax.base.errors import InputError
from hetreg_jax.core import spatial

SNR_FORMS = ("paper", "reference")
MINMAX_SCOPES = ("tensor", "mask")

# σ² is floored at exp(-_LOG_VAR_FLOOR) inside the SNR so that I_f² / σ² never overflows to
# inf (or becomes 0 · inf = nan where I_f = 0). exp(80) ≈ 5.5e34 is below float32's max.
_LOG_VAR_FLOOR = 80.0
_F32_MAX = float(np.finfo(np.float32).max)
# Precision for the convolutions / contractions: TPU and GPU default float32 matmuls and convs
# to bf16 / TF32 passes, which would spoil box sums and histograms.
_HIGHEST = jax.lax.Precision.HIGHEST


# ---------------------------------------------------------------------------------------------
# Masks and means
# ---------------------------------------------------------------------------------------------
def foreground_mask(moving: jax.Array, fixed: jax.Array) -> jax.Array:
    """float32 mask `(moving != 0) | (fixed != 0)`, same shape as the (broadcast) images."""
    return jnp.logical_or(moving != 0, fixed != 0).astype(jnp.float32)


def _masked_mean(values: jax.Array, mask: jax.Array | None) -> jax.Array:
    """`mean(mask * values)` over all elements (masked-out elements count as zeros)."""
    if mask is None:
        return jnp.mean(values)
    return jnp.mean(jnp.broadcast_to(mask, values.shape) * values)


# ---------------------------------------------------------------------------------------------
# Motion-estimation terms
# ---------------------------------------------------------------------------------------------
def mse(fixed: jax.Array, warped: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """Mean squared error `mean(mask · (I_f − Î_f)²)` over all elements."""
    return _masked_mean(jnp.square(fixed - warped), mask)


def weighted_mse(fixed: jax.Array, warped: jax.Array, weight: jax.Array,
                 mask: jax.Array | None = None) -> jax.Array:
    """Weighted MSE of Eq. 4, `mean(w · mask · (I_f − Î_f)²)` over all elements.

    `weight` is used as given (the caller applies any stop-gradient; `snr_weight` already does).
    """
    return _masked_mean(weight * jnp.square(fixed - warped), mask)


def smoothness(field: jax.Array) -> jax.Array:
    """VoxelMorph `Grad('l2')` regulariser R(z) of a field `[B, *S, ndim]`.

    For each spatial axis k: the mean (over all elements, all channels) of the squared forward
    difference `field[.., x_k + 1, ..] − field[.., x_k, ..]`; the result is the average of these
    ndim means. Units: voxels² per voxel². Example: a field whose ndim components all equal
    `a · x_k` gives `a² / ndim`; a single component `a · x_k` gives `a² / ndim²`.
    """
    ndim = field.ndim - 2
    per_axis = [jnp.mean(jnp.square(jnp.diff(field, axis=1 + k))) for k in range(ndim)]
    return sum(per_axis) / ndim


def motion_loss(fixed: jax.Array, warped: jax.Array, field: jax.Array,
                weight: jax.Array | None = None, smooth_weight: float = 0.01,
                mask: jax.Array | None = None, reg_scale: float = 1.0
                ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Motion loss of Eq. 4: `similarity + smooth_weight · reg_scale · smoothness(field)`.

    `weight=None` means w = 1 (plain MSE, the "MSE" baseline and the warm start). `field` is the
    tensor the regulariser acts on (the half-resolution velocity for diffeomorphic VoxelMorph).
    `reg_scale` reproduces the authors' code, which multiplies the regulariser by the integration
    downsize factor (2), also for TransMorph; 1.0 is the paper's plain λ·R(z).
    Returns `(total, {"similarity": ..., "smoothness": R(z) unscaled})`.
    """
    if weight is None:
        similarity = mse(fixed, warped, mask)
    else:
        similarity = weighted_mse(fixed, warped, weight, mask)
    reg = smoothness(field)
    total = similarity + smooth_weight * reg_scale * reg
    return total, {"similarity": similarity, "smoothness": reg}


# ---------------------------------------------------------------------------------------------
# SNR weighting map
# ---------------------------------------------------------------------------------------------
def minmax(x: jax.Array, mask: jax.Array | None = None, eps: float = 1e-8,
           scope: str = "tensor") -> jax.Array:
    """`(x − min) / (max − min + eps)`, min and max taken over the whole batch tensor.

    Without a mask both scopes are the same. With a mask:
    - `scope="tensor"` (the authors' code): `x` is multiplied by the mask first, so masked-out
      elements enter as exactly 0, and min and max run over the whole tensor (the minimum is
      ≤ 0 whenever an element is masked out). Masked-out outputs are `(0 − min) / (max − min +
      eps)`, not zeroed (the caller multiplies by the mask, as `snr_weight` does).
    - `scope="mask"`: min and max run over masked-in elements only; masked-out outputs are 0.
      An all-zero mask gives all zeros.
    A constant tensor gives all zeros.
    """
    if scope not in MINMAX_SCOPES:
        raise InputError(f"unknown minmax scope {scope!r}; allowed values: {MINMAX_SCOPES}")
    if mask is None or scope == "tensor":
        if mask is not None:
            x = jnp.broadcast_to(mask, x.shape) * x
        lo, hi = jnp.min(x), jnp.max(x)
        return (x - lo) / (hi - lo + eps)
    inside = jnp.broadcast_to(mask, x.shape) > 0
    any_inside = jnp.any(inside)
    lo = jnp.where(any_inside, jnp.min(jnp.where(inside, x, jnp.inf)), 0.0)
    hi = jnp.where(any_inside, jnp.max(jnp.where(inside, x, -jnp.inf)), 0.0)
    return jnp.where(inside, (x - lo) / (hi - lo + eps), 0.0)


def snr(fixed: jax.Array, log_var: jax.Array, gamma: float | jax.Array,
        form: str = "paper") -> jax.Array:
    """SNR^γ map of Eq. 4 (before min-max normalisation).

    - `form="paper"`:     `(I_f² / σ²)^γ = (I_f² · exp(−s))^γ`, i.e. (I_f / σ)^(2γ).
    - `form="reference"`: `(|I_f| / σ²)^γ = (|I_f| · exp(−s))^γ`, the authors' code (the I_f
      exponent is halved). The absolute value keeps the base non-negative; images are min-max
      normalised to [0, 1] so it changes nothing on real data.
    The two coincide where |I_f| = 1. Computed with `jnp.power` on a non-negative base, so
    γ = 0 gives exactly 1 everywhere (0⁰ = 1). For finiteness σ² is floored at exp(−80) and the
    result is clipped to float32's largest finite value.
    """
    if form not in SNR_FORMS:
        raise InputError(f"unknown snr form {form!r}; allowed values: {SNR_FORMS}")
    signal = jnp.square(fixed) if form == "paper" else jnp.abs(fixed)
    inv_var = jnp.exp(jnp.minimum(-log_var, _LOG_VAR_FLOOR))
    base = jnp.minimum(signal * inv_var, _F32_MAX)
    return jnp.minimum(_power(base, gamma), _F32_MAX)


def _power(base: jax.Array, exponent: float | jax.Array) -> jax.Array:
    """``base ** exponent``, with the same float32 results whether ``exponent`` is a constant or a
    traced value: XLA rewrites a constant exponent 0.5 to a square root and 2 to a product (both
    within a rounding of ``pow``), so a traced one takes those forms at those values too."""
    if not isinstance(exponent, jax.Array):
        return jnp.power(base, exponent)
    exponent = exponent.astype(base.dtype)
    return jnp.where(exponent == 0.5, jnp.sqrt(base),
                     jnp.where(exponent == 2.0, base * base, jnp.power(base, exponent)))


def snr_weight(fixed: jax.Array, log_var: jax.Array, gamma: float | jax.Array,
               form: str = "paper", mask: jax.Array | None = None,
               scope: str = "tensor") -> jax.Array:
    """Weight map `w = stop_gradient(sigmoid(minmax(SNR^γ, mask, scope))) · mask` of Eq. 4.

    A constant for the motion update: no gradient reaches `fixed`, `log_var` (hence φ) or `mask`.
    Masked-in weights lie in [sigmoid(0), sigmoid(1)] = [0.5, 0.7311]; masked-out elements get 0.
    With `scope="mask"` the lowest-SNR masked-in element gets 0.5 and the highest 0.7311; with
    `scope="tensor"` (the authors' code: `sigmoid(minmax(SNR^γ · mask)) · mask` over the whole
    tensor) the 0.5 goes to SNR 0, the floor whenever any element is masked out. γ = 0 gives a
    constant weight on the mask in both scopes: 0.5 with `"mask"`, and with `"tensor"`
    sigmoid(1) = 0.7311 when some element is masked out (SNR^0 = 1 inside, 0 outside), 0.5 when
    none is.
    """
    fixed, log_var = jax.lax.stop_gradient(fixed), jax.lax.stop_gradient(log_var)
    if mask is not None:
        mask = jax.lax.stop_gradient(mask)
    weight = jax.nn.sigmoid(minmax(snr(fixed, log_var, gamma, form), mask, scope=scope))
    if mask is not None:
        weight = weight * mask
    return jax.lax.stop_gradient(weight)


# ---------------------------------------------------------------------------------------------
# Residual-adaptive weights (the AdaReg and AdaFrame baselines)
# ---------------------------------------------------------------------------------------------
def residual_stats(fixed: jax.Array, warped: jax.Array,
                   mask: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """Local and global residual `(δ, δ̄)` of the AdaReg / AdaFrame weights.

    `δ(x) = Σ_c m(x)·|I_f − Î_f|(x, c)` `[B, *S, 1]` (summed over channels, as the reference
    code); `δ̄` `[B, 1, …, 1]` its mean per sample over the foreground voxels,
    `Σ_x δ(x) / max(Σ_x m(x), 1)` (over all voxels without a mask).
    """
    delta = jnp.abs(fixed - warped)
    axes = tuple(range(1, delta.ndim - 1))
    if mask is None:
        count = float(np.prod(delta.shape[1:-1]))
    else:
        m = jnp.broadcast_to(mask, delta.shape)
        delta = m * delta
        count = jnp.maximum(jnp.sum(m[..., :1], axis=axes, keepdims=True), 1.0)
    delta = jnp.sum(delta, axis=-1, keepdims=True)
    return delta, jnp.sum(delta, axis=axes, keepdims=True) / count


def adareg_weight(fixed: jax.Array, warped: jax.Array, c: float = 5.0,
                  mask: jax.Array | None = None) -> jax.Array:
    """AdaReg regulariser weight `w_R(x) = stop_gradient(exp(−c · δ(x) · δ̄))` `[B, *S, 1]`.

    `δ`, `δ̄` from `residual_stats`. Exactly 1 where δ(x) = 0, decreasing in δ(x) and in δ̄;
    a constant for the update (no gradient reaches the images or the displacement through it).
    """
    delta, mean = residual_stats(jax.lax.stop_gradient(fixed), jax.lax.stop_gradient(warped), mask)
    return jax.lax.stop_gradient(jnp.exp(-c * delta * mean))


def adaframe_weights(fixed: jax.Array, warped: jax.Array, sigma: float = 1.0,
                     mask: jax.Array | None = None, eps: float = 1e-8
                     ) -> tuple[jax.Array, jax.Array]:
    """AdaFrame data and regulariser weights `(α, 1 − α)`, `α(x) = sg(exp(−δ(x) / (σ·δ̄ + eps)))`.

    `δ`, `δ̄` from `residual_stats`. α is 1 where δ(x) = 0 and decreases with δ(x) / δ̄ (a voxel
    at the mean residual gets exp(−1/σ)); the regulariser weight 1 − α is its complement. Both
    are constants for the update (stop-gradient).
    """
    delta, mean = residual_stats(jax.lax.stop_gradient(fixed), jax.lax.stop_gradient(warped), mask)
    alpha = jax.lax.stop_gradient(jnp.exp(-delta / (sigma * mean + eps)))
    return alpha, 1.0 - alpha


def weighted_smoothness(field: jax.Array, weight: jax.Array) -> jax.Array:
    """`smoothness` with a per-voxel weight: for each axis k, `mean(w(x + e_k) · (f(x + e_k) − f(x))²)`.

    The forward difference between voxels x and x + e_k is multiplied by the weight of its far
    end x + e_k (the reference AdaReg code's indexing of its smoothness weights); the mean runs
    over all elements of the difference tensor (channels included) and the ndim axis means are
    averaged, so a weight of 1 gives `smoothness(field)`. `weight` `[B, *S', 1]` on another grid
    than the field (the half-resolution velocity) is first resampled to the field's grid by
    linear interpolation with aligned corners (`spatial.resize_to`, as VoxelMorph resizes the
    velocity).
    """
    ndim = field.ndim - 2
    if tuple(weight.shape[1:-1]) != tuple(field.shape[1:-1]):
        weight = spatial.resize_to(weight, field.shape[1:-1])
    per_axis = [jnp.mean(jax.lax.slice_in_dim(weight, 1, None, axis=1 + k)
                         * jnp.square(jnp.diff(field, axis=1 + k))) for k in range(ndim)]
    return sum(per_axis) / ndim


# ---------------------------------------------------------------------------------------------
# Variance-estimation terms (Gaussian NLL family)
# ---------------------------------------------------------------------------------------------
def _gaussian_nll_terms(residual: jax.Array, log_var: jax.Array) -> jax.Array:
    """Per-element Gaussian NLL without the constant: `½ r² exp(−s) + ½ s`.

    No clamping: finite for s > −88 (float32 `exp` overflow); a zero residual with s < −88 gives
    nan (0 · inf), which a masked-out element does not hide (mask · nan = nan).
    """
    return 0.5 * jnp.square(residual) * jnp.exp(-log_var) + 0.5 * log_var


def _beta_factor(log_var: jax.Array, beta: float) -> jax.Array:
    """`stop_gradient(σ²)^β = exp(β · stop_gradient(s))`."""
    return jnp.exp(beta * jax.lax.stop_gradient(log_var))


def beta_nll(fixed: jax.Array, warped: jax.Array, log_var: jax.Array, beta: float = 0.5,
             mask: jax.Array | None = None) -> jax.Array:
    """Variance loss of Eq. 5 (β-NLL with a stopped residual), mean over all elements.

    `mean(mask · sg(σ²)^β · (½ · sg(r)² / σ² + ½ · s))`, `r = I_f − Î_f`, `σ² = exp(s)`.
    The gradient reaches `log_var` only: `∂/∂s = mask · sg(σ²)^β · ½ (1 − r²/σ²) / N` (N = number
    of elements); it is exactly zero for `fixed` and `warped`. Its stationary point for a
    constant s is `s = log mean(r²)` (the value itself is not minimised there when β > 0).
    """
    residual = jax.lax.stop_gradient(fixed - warped)
    return _masked_mean(_beta_factor(log_var, beta) * _gaussian_nll_terms(residual, log_var), mask)


def gaussian_nll(fixed: jax.Array, warped: jax.Array, log_var: jax.Array,
                 mask: jax.Array | None = None) -> jax.Array:
    """"NLL" baseline (Kendall & Gal): `mean(mask · (½ r² exp(−s) + ½ s))`, trained jointly.

    No stop-gradient: gradients reach `warped` (the motion net), `fixed` and `log_var`.
    """
    return _masked_mean(_gaussian_nll_terms(fixed - warped, log_var), mask)


def joint_beta_nll(fixed: jax.Array, warped: jax.Array, log_var: jax.Array, beta: float = 0.5,
                   mask: jax.Array | None = None) -> jax.Array:
    """"β-NLL" baseline (Seitzer et al.), trained jointly: only `σ²^β` is stop-gradient'd.

    `mean(mask · sg(σ²)^β · (½ r² / σ² + ½ s))`; gradients reach `warped` and `log_var`.
    """
    return _masked_mean(
        _beta_factor(log_var, beta) * _gaussian_nll_terms(fixed - warped, log_var), mask)


# ---------------------------------------------------------------------------------------------
# Alternative similarity baselines (VoxelMorph's NCC and MI)
# ---------------------------------------------------------------------------------------------
def _box_sum(x: jax.Array, window: tuple[int, ...]) -> jax.Array:
    """Per-channel sum over a box `window` around each voxel, 'SAME' zero padding."""
    ndim = x.ndim - 2
    channels = x.shape[-1]
    kernel = jnp.ones((*window, 1, channels), x.dtype)           # spatial..., I, O (depthwise)
    spatial = tuple(range(1, ndim + 1))
    dims = jax.lax.ConvDimensionNumbers(
        lhs_spec=(0, ndim + 1, *spatial),
        rhs_spec=(ndim + 1, ndim, *range(ndim)),
        out_spec=(0, ndim + 1, *spatial))
    return jax.lax.conv_general_dilated(
        x, kernel, window_strides=(1,) * ndim, padding="SAME", dimension_numbers=dims,
        feature_group_count=channels, precision=_HIGHEST)


def ncc_map(fixed: jax.Array, warped: jax.Array, window: int | tuple[int, ...] = 9,
            eps: float = 1e-5) -> jax.Array:
    """Squared local cross-correlation map `cc = cross² / (var_I · var_J + eps)`, same shape.

    Box sums over a `window` (int: the same size on each axis) with 'SAME' zero padding, as
    VoxelMorph's `NCC.loss`: near the border the padded zeros take part in the local statistics,
    so invariance to an intensity offset `a·J + b` is exact only `window // 2` voxels or more
    from the border (invariance to a scale a > 0 holds everywhere up to `eps`). Values in [0, 1).
    """
    ndim = fixed.ndim - 2
    win = (window,) * ndim if isinstance(window, int) else tuple(window)
    n = float(np.prod(win))
    i, j = fixed, warped
    sums = _box_sum(jnp.concatenate([i, j, i * i, j * j, i * j], axis=-1), win)
    i_sum, j_sum, i2_sum, j2_sum, ij_sum = jnp.split(sums, 5, axis=-1)
    u_i, u_j = i_sum / n, j_sum / n
    cross = ij_sum - u_j * i_sum - u_i * j_sum + u_i * u_j * n
    i_var = i2_sum - 2.0 * u_i * i_sum + u_i * u_i * n
    j_var = j2_sum - 2.0 * u_j * j_sum + u_j * u_j * n
    return cross * cross / (i_var * j_var + eps)


def ncc(fixed: jax.Array, warped: jax.Array, window: int | tuple[int, ...] = 9,
        eps: float = 1e-5) -> jax.Array:
    """VoxelMorph local NCC loss: `−mean(ncc_map(...))` over all elements; in [−1, 0], −1 best."""
    return -jnp.mean(ncc_map(fixed, warped, window, eps))


def _soft_bins(x: jax.Array, centres: jax.Array, preterm: float) -> jax.Array:
    """`[B, N] → [B, N, bins]` Gaussian soft assignment, normalised over bins."""
    weights = jnp.exp(-preterm * jnp.square(x[..., None] - centres))
    return weights / jnp.sum(weights, axis=-1, keepdims=True)


def mutual_information(fixed: jax.Array, warped: jax.Array, bins: int = 32,
                       sigma_ratio: float = 1.0, minval: float = 0.0,
                       maxval: float = 1.0) -> jax.Array:
    """VoxelMorph's Parzen-window mutual information, returned as a loss (−mean MI over the batch).

    Intensities are clipped to [minval, maxval] and softly binned with Gaussians centred at
    `linspace(minval, maxval, bins)`, `exp(−(x − c)² / (2σ²))` with σ = mean bin spacing ·
    sigma_ratio, normalised over bins per voxel. Per batch element (all voxels and channels
    flattened, N of them): `p_ab = A^T B / N`, `p_a`, `p_b` the voxel means of the soft bins,
    `MI = Σ p_ab · log(p_ab / (p_a p_b^T + 1e-6) + 1e-6)` in nats. The 1e-6 terms follow the
    reference; they make the MI of an image with a constant ≈ 0 rather than exactly 0.
    """
    centres = jnp.linspace(minval, maxval, bins, dtype=jnp.float32)
    sigma = (maxval - minval) / (bins - 1) * sigma_ratio
    preterm = 1.0 / (2.0 * sigma ** 2)
    batch = fixed.shape[0]
    a = _soft_bins(jnp.clip(fixed, minval, maxval).reshape(batch, -1), centres, preterm)
    b = _soft_bins(jnp.clip(warped, minval, maxval).reshape(batch, -1), centres, preterm)
    n_vox = a.shape[1]
    p_ab = jnp.einsum("bna,bnc->bac", a, b, precision=_HIGHEST) / n_vox
    p_a, p_b = jnp.mean(a, axis=1), jnp.mean(b, axis=1)
    pa_pb = p_a[:, :, None] * p_b[:, None, :] + 1e-6
    mi = jnp.sum(p_ab * jnp.log(p_ab / pa_pb + 1e-6), axis=(1, 2))
    return -jnp.mean(mi)


# ---------------------------------------------------------------------------------------------
# Displacement uncertainty: the sigma_z model (paper, Section 5.3) and vxm-diff (Dalca et al.)
# ---------------------------------------------------------------------------------------------
def reparameterize(mean: jax.Array, log_var: jax.Array, noise: jax.Array) -> jax.Array:
    """`mean + exp(½ log_var) · noise` (the reparameterisation trick; `noise` ~ N(0, I)).

    `log_var` broadcasts against `mean` (one channel for an isotropic σ_z on an `ndim`-channel
    field). Gradients reach `mean` and `log_var`; `noise` is a constant.
    """
    return mean + jnp.exp(0.5 * log_var) * jax.lax.stop_gradient(noise)


def sigma_z_prior(log_var: jax.Array) -> jax.Array:
    """`mean(σ² − log σ²)` over all elements, `σ² = exp(log_var)`: the σ part of the KL divergence
    of N(μ, σ²) from a unit-variance prior, ×2 and without the constant −1. Minimum 1 at σ = 1."""
    return jnp.mean(jnp.exp(log_var) - log_var)


def degree_matrix(shape: tuple[int, ...]) -> np.ndarray:
    """Number of grid neighbours (±1 along each axis, inside the grid) of every voxel of `shape`:
    `2 · ndim` in the interior, one less per touched border (VoxelMorph KL's `D`)."""
    degree = np.zeros(shape, np.float32)
    for axis, n in enumerate(shape):
        index = np.arange(n)
        count = (index > 0).astype(np.float32) + (index < n - 1)
        degree += count.reshape([-1 if a == axis else 1 for a in range(len(shape))])
    return degree


def vxm_diff_kl(mean: jax.Array, log_var: jax.Array, prior_lambda: float) -> jax.Array:
    """VoxelMorph's `KL` loss of the velocity posterior N(μ, diag σ²) against the prior
    N(0, Λ⁻¹), Λ = λ (D − A) (λ = `prior_lambda`, D the degree matrix, A the grid adjacency).

    `mean`, `log_var`: `[B, *S, ndim]` (log_var is log σ²). Per the reference:
    `KL = ½ · ndim · ( mean(λ · D · σ² − log σ²) + λ · ½ · smoothness(μ) )`, with
    `smoothness` the mean squared forward difference averaged over the axes (`μᵀ(D − A)μ`
    summed over edges, as a mean). Constants (−1, log-determinants) are dropped.
    """
    degree = jnp.asarray(degree_matrix(tuple(mean.shape[1:-1])))[None, ..., None]
    ndim = mean.ndim - 2
    sigma_term = jnp.mean(prior_lambda * degree * jnp.exp(log_var) - log_var)
    prec_term = prior_lambda * 0.5 * smoothness(mean)
    return 0.5 * ndim * (sigma_term + prec_term)
