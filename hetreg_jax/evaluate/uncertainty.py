"""Scoring the two uncertainties of a run against the phantoms' ground truth (or the residual).

Called by ``evaluation.py`` for every evaluated pair and once for the test split.

* σ_I (the variance net's ``log_var``, methods with a variance net) against the phantoms' true noise
  std of the fixed frame (``noise_sigma``, a per-pixel map): Pearson and Spearman correlations of
  predicted and true log σ², and the median ratio σ_pred / σ_true, over the foreground
  (``fixed ≠ 0 or moving ≠ 0``) where the true σ > 0.
* σ_z (``sigma_z`` of the prediction: the σ_z head's std, or vxm-diff's velocity std mapped to the
  displacement by ``train.step.velocity_sigma_to_displacement``), in voxels:
  - sparsification of the squared TRUE endpoint error ``‖u_pred − u_true‖²`` ranked by σ_z, its
    oracle and AUSE (phantoms), beside the AUSE of an uninformative ranking (the flat line at the
    mean error, ``sigma_z_ause_uninformed``): a σ_z that ranks errors at all must beat it;
  - calibration (``metrics.sigma_calibration``, 10 equal-count bins of σ_z): the observed RMS
    endpoint error per bin against ``√ndim ·`` the bin's RMS σ_z, and the expected calibration
    error ``ece`` (voxels), per pair and pooled over the test split's voxels;
  - on every dataset, the sparsification of the squared intensity residual ``(I_f − Î_f)²`` ranked
    by σ_z (the paper's protocol where there is no ground truth).
All over the foreground mask.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from hetreg_jax.core import metrics

CALIBRATION_BINS = 10
PAIR_KEYS = ("sigma_i_pearson", "sigma_i_spearman", "sigma_i_median_ratio", "sigma_z_mean",
             "sigma_z_ause", "sigma_z_ause_uninformed", "sigma_z_sq_epe0", "sigma_z_ece", "sigma_z_ause_residual")
UNITS = {
    "sigma_i_pearson": "Pearson r of predicted vs true log sigma_I^2 (foreground, phantoms)",
    "sigma_i_spearman": "Spearman rho of predicted vs true log sigma_I^2 (foreground, phantoms)",
    "sigma_i_median_ratio": "median sigma_pred / sigma_true (1 = calibrated)",
    "sigma_z_mean": "px (mean predicted displacement std over the foreground)",
    "sigma_z_ause": "px^2 (squared true endpoint error ranked by sigma_z: area between curve and oracle)",
    "sigma_z_ause_uninformed": "px^2 (the same area for an uninformative ranking: the flat line at the mean)",
    "sigma_z_sq_epe0": "px^2 (mean squared true endpoint error over the foreground)",
    "sigma_z_ece": "px (bin-count-weighted |RMS endpoint error - sqrt(ndim) * RMS sigma_z|, 10 bins)",
    "sigma_z_ause_residual": "squared normalised intensity (residual^2 ranked by sigma_z)",
}


def _foreground(pairs: Mapping, i: int) -> np.ndarray:
    return (pairs["fixed"][i, ..., 0] != 0) | (pairs["moving"][i, ..., 0] != 0)


def _sq_epe(pairs: Mapping, pred: Mapping, i: int) -> np.ndarray | None:
    if "displacement" not in pairs:
        return None
    diff = np.asarray(pred["displacement"][i], np.float64) - pairs["displacement"][i]
    return np.sum(diff ** 2, axis=-1)


def pair_metrics(pairs: Mapping, pred: Mapping, i: int, steps: int) -> dict:
    """The uncertainty columns of pair ``i`` (only those its data and prediction allow)."""
    fg = _foreground(pairs, i)
    row: dict = {}
    if not fg.any():
        return row
    if "log_var" in pred and "noise_sigma" in pairs:
        cal = metrics.variance_calibration(pred["log_var"][i, ..., 0], pairs["noise_sigma"][i, ..., 0], fg)
        row.update({f"sigma_i_{k}": v for k, v in cal.items()})
    if "sigma_z" not in pred:
        return row
    sigma = np.asarray(pred["sigma_z"][i, ..., 0], np.float64)
    row["sigma_z_mean"] = float(sigma[fg].mean())
    sq = _sq_epe(pairs, pred, i)
    if sq is not None:
        fractions, curve, oracle, row["sigma_z_ause"] = metrics.sparsification_curves(sq, sigma, steps, mask=fg)
        row["sigma_z_ause_uninformed"] = float(np.trapezoid(curve[0] - oracle, fractions))
        row["sigma_z_sq_epe0"] = float(curve[0])
        ndim = pred["displacement"].shape[-1]
        row["sigma_z_ece"] = metrics.sigma_calibration(sq, sigma, ndim, CALIBRATION_BINS, mask=fg)["ece"]
    residual = (pairs["fixed"][i, ..., 0] - pred["warped"][i, ..., 0]).astype(np.float64) ** 2
    row["sigma_z_ause_residual"] = metrics.sparsification_curves(residual, sigma, steps, mask=fg)[3]
    return row


def split_summary(pairs: Mapping, pred: Mapping, pair_ids, steps: int) -> dict:
    """Test-split entries for the pairs ``pair_ids`` (the evaluated ones): ``sigma_z_sparsification``
    (mean curves of the true squared EPE and of the squared residual ranked by σ_z, with their
    oracles) and ``sigma_z_calibration`` (the bins and ECE pooled over all their foreground voxels).
    Empty when the prediction has no σ_z."""
    if "sigma_z" not in pred:
        return {}
    index = {p: i for i, p in enumerate(pairs["pair_id"])}
    chosen = [index[p] for p in pair_ids if _foreground(pairs, index[p]).any()]
    if not chosen:
        return {}
    epe_curves, res_curves, sq_all, sigma_all = [], [], [], []
    for i in chosen:
        fg = _foreground(pairs, i)
        sigma = np.asarray(pred["sigma_z"][i, ..., 0], np.float64)
        residual = (pairs["fixed"][i, ..., 0] - pred["warped"][i, ..., 0]).astype(np.float64) ** 2
        res_curves.append(metrics.sparsification_curves(residual, sigma, steps, mask=fg)[1:3])
        sq = _sq_epe(pairs, pred, i)
        if sq is not None:
            epe_curves.append(metrics.sparsification_curves(sq, sigma, steps, mask=fg)[1:3])
            sq_all.append(sq[fg])
            sigma_all.append(sigma[fg])

    def mean_curves(curves):
        return {"curve": list(np.mean([c for c, _ in curves], axis=0)),
                "oracle": list(np.mean([o for _, o in curves], axis=0)), "n_pairs": len(curves)}

    out = {"sigma_z_sparsification": {"fraction_removed": list(np.arange(steps) / steps),
                                      "residual": mean_curves(res_curves)}}
    if epe_curves:
        out["sigma_z_sparsification"]["true_epe"] = mean_curves(epe_curves)
        ndim = pred["displacement"].shape[-1]
        calibration = metrics.sigma_calibration(np.concatenate(sq_all), np.concatenate(sigma_all), ndim,
                                                CALIBRATION_BINS)
        calibration["convention"] = ("voxels of the evaluated pairs' foregrounds pooled, 10 equal-count bins of "
                                     "sigma_z; predicted = sqrt(ndim) * RMS sigma_z, observed = RMS endpoint error "
                                     "(px); ece = count-weighted mean |observed - predicted|")
        out["sigma_z_calibration"] = calibration
    return out
