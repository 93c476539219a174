"""What differs between "ours" and the baselines, as data plus small functions.

A method decides (a) the similarity term of the motion loss and (b) whether a variance estimator is
trained alongside. Everything else (network, regulariser, optimiser, loop) is shared.
"""

from __future__ import annotations

import dataclasses

import jax

from hetreg_jax import losses


@dataclasses.dataclass(frozen=True)
class Method:
    name: str
    similarity: str        # "snr_mse" | "mse" | "ncc" | "mi" | "nll" | "beta_nll"
    uses_variance: bool    # a variance U-Net is trained too
    description: str
    joint: bool = False    # one loss through both networks, one update of each per step
    probabilistic: bool = False  # vxm-diff: sampled velocity, image term / image_sigma², KL instead of λR
    adaptive: str | None = None  # "adareg" | "adaframe": residual-adaptive weights (see adaptive_terms)
    trainable: bool = True  # False: no network (elastix registers each test pair, see elastix.py)


METHODS = {
    m.name: m for m in (
        Method("ours", "snr_mse", True,
               "MSE weighted by sigmoid(minmax(SNR^gamma)) from the variance net; beta-NLL variance net"),
        Method("mse", "mse", False, "VoxelMorph/TransMorph with plain (masked) MSE"),
        Method("ncc", "ncc", False, "local normalised cross-correlation (window loss.ncc_window)"),
        Method("mi", "mi", False, "Parzen-window mutual information (loss.mi_bins bins)"),
        Method("nll", "nll", True, "joint Gaussian NLL of both networks (Kendall & Gal), no stop-gradient",
               joint=True),
        Method("beta_nll", "beta_nll", True, "joint beta-NLL of both networks (Seitzer et al.), "
               "only sigma^(2 beta) stop-gradient'd", joint=True),
        Method("vxm_diff", "vxm_mse", False, "probabilistic diffeomorphic VoxelMorph (Dalca et al. 2018): "
               "sampled velocity, MSE / image_sigma^2 + KL(prior_lambda)", probabilistic=True),
        Method("adareg", "mse", False, "AdaReg (Wong et al. 2019): masked MSE + lambda * R weighted per voxel "
               "by exp(-c * |r(x)| * mean|r|)", adaptive="adareg"),
        Method("adaframe", "mse", False, "AdaFrame (Wong et al. 2021): MSE weighted by alpha = "
               "exp(-|r(x)| / (sigma * mean|r|)), lambda * R weighted by 1 - alpha", adaptive="adaframe"),
        Method("elastix", "none", False, "classical multi-resolution B-spline registration with elastix "
               "(config.elastix), no network", trainable=False),
    )
}


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; known: {', '.join(sorted(METHODS))}")
    return METHODS[name]


def similarity(method: Method, loss_cfg, fixed: jax.Array, warped: jax.Array,
               weight: jax.Array | None, mask: jax.Array | None, log_var: jax.Array | None = None) -> jax.Array:
    """The motion loss's data term for ``method`` (a scalar to minimise); ``log_var`` for joint methods."""
    if method.similarity == "nll":
        return losses.gaussian_nll(fixed, warped, log_var, mask=mask)
    if method.similarity == "beta_nll":
        return losses.joint_beta_nll(fixed, warped, log_var, beta=loss_cfg.beta, mask=mask)
    if method.similarity in ("snr_mse", "mse"):
        if weight is None:
            return losses.mse(fixed, warped, mask)
        return losses.weighted_mse(fixed, warped, weight, mask)
    if method.similarity == "vxm_mse":  # VoxelMorph's MSE(image_sigma): mean(r²) / image_sigma²
        return losses.mse(fixed, warped, mask) / loss_cfg.image_sigma ** 2
    if method.similarity == "ncc":
        return losses.ncc(fixed, warped, window=loss_cfg.ncc_window)
    if method.similarity == "mi":
        return losses.mutual_information(fixed, warped, bins=loss_cfg.mi_bins)
    raise ValueError(f"unknown similarity {method.similarity!r}")


def adaptive_terms(method: Method, loss_cfg, fixed: jax.Array, warped: jax.Array, field: jax.Array,
                   mask: jax.Array | None) -> tuple[jax.Array, jax.Array]:
    """``(data term, regulariser)`` of the residual-adaptive baselines, ``r = I_f − warped``.

    - ``adareg``: ``mse(I_f, warped, m)`` and ``R`` weighted by ``exp(−c·δ(x)·δ̄)`` (c = ``loss.adareg_c``);
    - ``adaframe``: ``mean(α·m·r²)`` and ``R`` weighted by ``1 − α``, ``α = exp(−δ(x)/(σ·δ̄))``
      (σ = ``loss.adaframe_sigma``).
    ``δ = m·|r|``, ``δ̄`` its per-sample foreground mean (``losses.residual_stats``); the weights are
    stop-gradient'd and resampled to ``field``'s grid (``losses.weighted_smoothness``).
    """
    if method.adaptive == "adareg":
        weight = losses.adareg_weight(fixed, warped, loss_cfg.adareg_c, mask)
        return losses.mse(fixed, warped, mask), losses.weighted_smoothness(field, weight)
    if method.adaptive == "adaframe":
        alpha, reg_weight = losses.adaframe_weights(fixed, warped, loss_cfg.adaframe_sigma, mask)
        return losses.weighted_mse(fixed, warped, alpha, mask), losses.weighted_smoothness(field, reg_weight)
    raise ValueError(f"method {method.name!r} has no residual-adaptive weighting")
