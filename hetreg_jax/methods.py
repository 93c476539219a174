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
    if method.similarity == "ncc":
        return losses.ncc(fixed, warped, window=loss_cfg.ncc_window)
    if method.similarity == "mi":
        return losses.mutual_information(fixed, warped, bins=loss_cfg.mi_bins)
    raise ValueError(f"unknown similarity {method.similarity!r}")
