"""What differs between "ours" and the baselines, as data plus small functions.

A method decides (a) the data term of the motion loss, (b) whether and how a variance estimator is
trained alongside (and so the phases of training), and (c) the options that change the motion loss
(a sampled velocity, residual-adaptive weights). Everything else (network, regulariser, optimiser,
loop) is shared. Adding a baseline is adding one `Method` to `METHODS`.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax

from hetreg_jax.base.errors import InputError
from hetreg_jax.core import losses


# A data term: (loss settings, fixed, warped, weight, mask, log_var) -> the scalar to minimise.
# ``loss`` holds the structural loss keys and the traced hyper-parameters (``train.step.hparams``).
DataTerm = Callable[..., jax.Array]


def _mse(loss, fixed, warped, weight, mask, log_var):
    """Masked MSE; with a weight map (ours), the SNR-weighted MSE."""
    if weight is None:
        return losses.mse(fixed, warped, mask)
    return losses.weighted_mse(fixed, warped, weight, mask)


def _ncc(loss, fixed, warped, weight, mask, log_var):
    return losses.ncc(fixed, warped, window=loss.ncc_window)


def _mi(loss, fixed, warped, weight, mask, log_var):
    return losses.mutual_information(fixed, warped, bins=loss.mi_bins)


def _nll(loss, fixed, warped, weight, mask, log_var):
    return losses.gaussian_nll(fixed, warped, log_var, mask=mask)


def _joint_beta_nll(loss, fixed, warped, weight, mask, log_var):
    return losses.joint_beta_nll(fixed, warped, log_var, beta=loss.beta, mask=mask)


def _vxm_mse(loss, fixed, warped, weight, mask, log_var):
    """VoxelMorph's MSE(image_sigma): mean(r²) / image_sigma²."""
    return losses.mse(fixed, warped, mask) / loss.image_sigma ** 2


def _adareg(loss, fixed, warped, field, mask):
    """AdaReg: ``mse(I_f, warped, m)`` and ``R`` weighted by ``exp(−c·δ(x)·δ̄)`` (c = ``loss.adareg_c``)."""
    weight = losses.adareg_weight(fixed, warped, loss.adareg_c, mask)
    return losses.mse(fixed, warped, mask), losses.weighted_smoothness(field, weight)


def _adaframe(loss, fixed, warped, field, mask):
    """AdaFrame: ``mean(α·m·r²)`` and ``R`` weighted by ``1 − α``, ``α = exp(−δ(x)/(σ·δ̄))``
    (σ = ``loss.adaframe_sigma``)."""
    alpha, reg_weight = losses.adaframe_weights(fixed, warped, loss.adaframe_sigma, mask)
    return losses.weighted_mse(fixed, warped, alpha, mask), losses.weighted_smoothness(field, reg_weight)


@dataclasses.dataclass(frozen=True)
class Method:
    """One registration method, all of it: its motion loss's data term, how a variance net is trained
    (none, its own β-NLL step alternating with the motion step, or jointly through the data term),
    and the options that change the motion loss. The training steps (``train/step.py``) read nothing else."""
    name: str
    description: str
    data_term: DataTerm | None     # the motion loss's similarity term (None: elastix, no network)
    variance: str | None = None    # None | "alternating" (ours: β-NLL step, SNR weight) | "joint"
    probabilistic: bool = False    # vxm-diff: sampled velocity, image term / image_sigma², KL instead of λR
    adaptive: Callable | None = None  # (loss, fixed, warped, field, mask) -> (data term, regulariser)

    @property
    def uses_variance(self) -> bool:
        """A variance U-Net is trained too."""
        return self.variance is not None

    @property
    def joint(self) -> bool:
        """One loss through both networks, one update of each per step."""
        return self.variance == "joint"

    @property
    def trainable(self) -> bool:
        """False: no network (elastix registers each test pair, see elastix.py)."""
        return self.data_term is not None

    def phase(self, config, step: int) -> str:
        """Which update runs at training ``step`` (0-based): ``motion`` for single-network methods,
        ``joint``, or for ours ``alternating`` after the optional warm start (``motion_warmup``
        with w = 1, then ``variance`` only, ``warm_start_epochs`` epochs each)."""
        if self.variance is None:
            return "motion"
        if self.variance == "joint":
            return "joint"
        if config.warm_start:
            warm = config.warm_start_epochs * config.steps_per_epoch
            if step < warm:
                return "motion_warmup"
            if step < 2 * warm:
                return "variance"
        return "alternating"


METHODS = {
    m.name: m for m in (
        Method("ours", "MSE weighted by sigmoid(minmax(SNR^gamma)) from the variance net; beta-NLL variance net",
               _mse, variance="alternating"),
        Method("mse", "VoxelMorph/TransMorph with plain (masked) MSE", _mse),
        Method("ncc", "local normalised cross-correlation (window loss.ncc_window)", _ncc),
        Method("mi", "Parzen-window mutual information (loss.mi_bins bins)", _mi),
        Method("nll", "joint Gaussian NLL of both networks (Kendall & Gal), no stop-gradient", _nll,
               variance="joint"),
        Method("beta_nll", "joint beta-NLL of both networks (Seitzer et al.), only sigma^(2 beta) "
               "stop-gradient'd", _joint_beta_nll, variance="joint"),
        Method("vxm_diff", "probabilistic diffeomorphic VoxelMorph (Dalca et al. 2018): sampled velocity, "
               "MSE / image_sigma^2 + KL(prior_lambda)", _vxm_mse, probabilistic=True),
        Method("adareg", "AdaReg (Wong et al. 2019): masked MSE + lambda * R weighted per voxel "
               "by exp(-c * |r(x)| * mean|r|)", _mse, adaptive=_adareg),
        Method("adaframe", "AdaFrame (Wong et al. 2021): MSE weighted by alpha = "
               "exp(-|r(x)| / (sigma * mean|r|)), lambda * R weighted by 1 - alpha", _mse, adaptive=_adaframe),
        Method("elastix", "classical multi-resolution B-spline registration with elastix "
               "(config.elastix), no network", None),
    )
}


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise InputError(f"unknown method {name!r}; known: {', '.join(sorted(METHODS))}")
    return METHODS[name]


def similarity(method: Method, loss_cfg, fixed: jax.Array, warped: jax.Array,
               weight: jax.Array | None, mask: jax.Array | None, log_var: jax.Array | None = None) -> jax.Array:
    """The motion loss's data term for ``method`` (a scalar to minimise); ``log_var`` for joint methods."""
    if method.data_term is None:
        raise ValueError(f"method {method.name!r} trains no network")
    return method.data_term(loss_cfg, fixed, warped, weight, mask, log_var)


def adaptive_terms(method: Method, loss_cfg, fixed: jax.Array, warped: jax.Array, field: jax.Array,
                   mask: jax.Array | None) -> tuple[jax.Array, jax.Array]:
    """``(data term, regulariser)`` of the residual-adaptive baselines, ``r = I_f − warped``.

    - ``adareg``: ``mse(I_f, warped, m)`` and ``R`` weighted by ``exp(−c·δ(x)·δ̄)`` (c = ``loss.adareg_c``);
    - ``adaframe``: ``mean(α·m·r²)`` and ``R`` weighted by ``1 − α``, ``α = exp(−δ(x)/(σ·δ̄))``
      (σ = ``loss.adaframe_sigma``).
    ``δ = m·|r|``, ``δ̄`` its per-sample foreground mean (``losses.residual_stats``); the weights are
    stop-gradient'd and resampled to ``field``'s grid (``losses.weighted_smoothness``).
    """
    if method.adaptive is None:
        raise ValueError(f"method {method.name!r} has no residual-adaptive weighting")
    return method.adaptive(loss_cfg, fixed, warped, field, mask)
