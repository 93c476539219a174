"""Host-side evaluation metrics (numpy + scipy only; no JAX).

Conventions shared by every function here:

* Masks are single masks shaped ``[*spatial]`` (2D or 3D, no batch or channel axis) and are read
  as booleans (any non-zero value is foreground).
* Displacements are single fields shaped ``[*spatial, ndim]`` in voxel units; component ``k``
  moves along spatial axis ``k`` (the project-wide convention, batch axis removed).
* Distances are in voxels (pixels) unless ``spacing`` (one voxel size per spatial axis, or a
  scalar for all) is given, in which case they are in the units of ``spacing``.
* Undefined results are ``NaN``: they are returned, never silently dropped, so callers can count
  them (see `summarize`).
* Surfaces are ``mask XOR erosion(mask)`` with a connectivity-1 structuring element and the
  region outside the image treated as background, so a mask that touches the border has surface
  voxels on the border.
* Everything is computed in float64 and returned as Python ``float`` where the result is a scalar.
"""

from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np
from scipy import ndimage, stats

from hetreg_jax.base.errors import InputError

Spacing = float | Sequence[float] | None


# ----------------------------------------------------------------------------------------------
# Overlap and surface distances
# ----------------------------------------------------------------------------------------------


def _as_mask(mask) -> np.ndarray:
    mask = np.asarray(mask).astype(bool)
    if mask.ndim < 1:
        raise InputError("a mask needs at least one spatial axis")
    return mask


def _mask_pair(a, b) -> tuple[np.ndarray, np.ndarray]:
    a, b = _as_mask(a), _as_mask(b)
    if a.shape != b.shape:
        raise InputError(f"mask shapes differ: {a.shape} vs {b.shape}")
    return a, b


def _spacing(spacing: Spacing, ndim: int) -> tuple[float, ...]:
    """Per-axis voxel sizes as a tuple of ``ndim`` floats (``None`` -> all ones)."""
    if spacing is None:
        return (1.0,) * ndim
    values = np.broadcast_to(np.asarray(spacing, dtype=np.float64), (ndim,))
    if np.any(values <= 0):
        raise InputError(f"spacing must be positive, got {spacing}")
    return tuple(float(v) for v in values)


def surface(mask) -> np.ndarray:
    """Boolean surface of a mask: ``mask XOR binary_erosion(mask)``.

    The erosion uses the connectivity-1 structure (``generate_binary_structure(ndim, 1)``) and
    ``border_value=0``, so foreground voxels on the image border belong to the surface. A single
    voxel is its own surface; a filled ``5 x 5`` square has a 16-voxel surface.
    """
    mask = _as_mask(mask)
    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    eroded = ndimage.binary_erosion(mask, structure=structure, border_value=0)
    return mask ^ eroded


def dice(a, b) -> float:
    """Dice overlap ``2 |a & b| / (|a| + |b|)`` as a fraction in ``[0, 1]`` (not percent).

    Empty-mask rule: both empty -> ``NaN`` (undefined; report it, do not drop it);
    exactly one empty -> ``0.0``.
    """
    a, b = _mask_pair(a, b)
    total = int(a.sum()) + int(b.sum())
    if total == 0:
        return float("nan")
    return 2.0 * float(np.logical_and(a, b).sum()) / total


def _surface_distances(a, b, spacing: Spacing) -> tuple[np.ndarray, np.ndarray] | None:
    """Directed surface distances ``(d_ab, d_ba)``, or ``None`` when either mask is empty.

    ``d_ab[i]`` is the Euclidean distance from the i-th surface voxel of ``a`` to the nearest
    surface voxel of ``b`` (``distance_transform_edt`` of b's surface complement, sampled with
    ``spacing``), and vice versa.
    """
    a, b = _mask_pair(a, b)
    if not a.any() or not b.any():
        return None
    sampling = _spacing(spacing, a.ndim)
    surf_a, surf_b = surface(a), surface(b)
    to_b = ndimage.distance_transform_edt(~surf_b, sampling=sampling)
    to_a = ndimage.distance_transform_edt(~surf_a, sampling=sampling)
    return to_b[surf_a], to_a[surf_b]


def hausdorff(a, b, percentile: float = 100, spacing: Spacing = None) -> float:
    """Symmetric (percentile) Hausdorff distance between the surfaces of two masks.

    ``max(percentile(d_ab), percentile(d_ba))`` over the two directed surface-distance sets (the
    MONAI convention; each direction is taken separately, not pooled). ``percentile=100`` is the
    classic Hausdorff distance (the maximum); ``95`` gives HD95. Percentiles use numpy's default
    linear interpolation. Units: voxels, or those of ``spacing``. Either mask empty -> ``NaN``.
    """
    distances = _surface_distances(a, b, spacing)
    if distances is None:
        return float("nan")
    d_ab, d_ba = distances
    return float(max(np.percentile(d_ab, percentile), np.percentile(d_ba, percentile)))


def average_surface_distance(a, b, symmetric: bool = False, spacing: Spacing = None) -> float:
    """Average surface distance, directed from ``a`` to ``b`` by default.

    ``symmetric=False``: mean over a's surface voxels of the distance to b's surface (ASD). The
    evaluation calls it as ``(ground_truth, prediction)``: the distance from the ground-truth
    surface to the predicted one, as in the paper.
    ``symmetric=True``: ASSD ``= (sum d_ab + sum d_ba) / (|surface a| + |surface b|)``, i.e. the
    mean over the union of both surfaces' voxels (Heimann et al. 2009), *not* the average of the
    two directed means (the two differ when the surfaces have different sizes).
    Units: voxels, or those of ``spacing``. Either mask empty -> ``NaN``.
    """
    distances = _surface_distances(a, b, spacing)
    if distances is None:
        return float("nan")
    d_ab, d_ba = distances
    if symmetric:
        return float((d_ab.sum() + d_ba.sum()) / (d_ab.size + d_ba.size))
    return float(d_ab.mean())


# ----------------------------------------------------------------------------------------------
# Deformation quality
# ----------------------------------------------------------------------------------------------


def _as_field(displacement) -> np.ndarray:
    field = np.asarray(displacement, dtype=np.float64)
    ndim = field.shape[-1] if field.ndim else 0
    if field.ndim != ndim + 1 or ndim < 1:
        raise InputError(f"displacement must be [*S, ndim] with ndim = len(S), got {field.shape}")
    return field


def jacobian_determinant_np(displacement) -> np.ndarray:
    """``det(I + du/dx)`` of one displacement ``[*S, ndim]`` -> ``[*S]`` (float64).

    ``J[..., i, j] = delta_ij + d u_i / d x_j`` with ``np.gradient`` along each spatial axis
    (unit spacing): central differences in the interior, one-sided first differences on the
    borders. Matches ``hetreg_jax.core.spatial.jacobian_determinant`` (``jnp.gradient``); the
    determinant of an affine field ``u(x) = (A - I) x`` is ``det(A)`` everywhere.
    """
    field = _as_field(displacement)
    ndim = field.shape[-1]
    spatial_axes = tuple(range(ndim))
    # grads[i][j] = d u_i / d x_j
    grads = [np.gradient(field[..., i], axis=spatial_axes) for i in range(ndim)]
    grads = [g if isinstance(g, (list, tuple)) else [g] for g in grads]  # ndim == 1 case
    jac = np.stack([np.stack(row, axis=-1) for row in grads], axis=-2) + np.eye(ndim)
    return np.linalg.det(jac)


def folding_percent(displacement, mask=None) -> float:
    """Percentage (0-100) of voxels with ``det J <= 0`` (over ``mask`` if given; empty -> NaN)."""
    det = _select(jacobian_determinant_np(displacement), mask)
    if det.size == 0:
        return float("nan")
    return 100.0 * float(np.count_nonzero(det <= 0)) / det.size


def sd_log_jacobian(displacement, crop: int = 2, learn2reg: bool = False) -> float:
    """Standard deviation (ddof=0) of ``log(det J)`` over the interior of the field.

    ``crop`` voxels are removed from both ends of every spatial axis before the statistic;
    ``det J`` (see `jacobian_determinant_np`) is clipped to ``[1e-9, 1e9]`` before the log,
    so folded voxels contribute ``log(1e-9)`` rather than ``NaN``.
    ``learn2reg=True`` reproduces the Learn2Reg evaluation quirk: ``det J + 3`` is clipped and
    logged instead (kept only for comparability with published Learn2Reg numbers).
    """
    det = jacobian_determinant_np(displacement)
    if crop < 0:
        raise InputError(f"crop must be >= 0, got {crop}")
    if crop:
        if min(det.shape) <= 2 * crop:
            raise InputError(f"crop={crop} leaves nothing of a field shaped {det.shape}")
        det = det[tuple(slice(crop, -crop) for _ in range(det.ndim))]
    if learn2reg:
        det = det + 3.0
    return float(np.log(np.clip(det, 1e-9, 1e9)).std())


def endpoint_error(pred, true, mask=None) -> float:
    """Mean Euclidean norm of ``pred - true`` (both ``[*S, ndim]``), in voxels.

    Restricted to the voxels of the boolean ``mask`` (``[*S]``) if given; empty mask -> ``NaN``.
    """
    pred, true = _as_field(pred), _as_field(true)
    if pred.shape != true.shape:
        raise InputError(f"field shapes differ: {pred.shape} vs {true.shape}")
    norm = _select(np.linalg.norm(pred - true, axis=-1), mask)
    if norm.size == 0:
        return float("nan")
    return float(norm.mean())


# ----------------------------------------------------------------------------------------------
# Uncertainty: sparsification curves and AUSE
# ----------------------------------------------------------------------------------------------


def _select(values, mask) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    if mask is None:
        return values.ravel()
    mask = _as_mask(mask)
    if mask.shape != values.shape:
        raise InputError(f"mask shape {mask.shape} != values shape {values.shape}")
    return values[mask]


def _curve_from_ranking(sq_error: np.ndarray, ranking: np.ndarray,
                        steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Sparsification curve of ``sq_error`` removing pixels in descending order of ``ranking``."""
    n = sq_error.size
    if n == 0:
        raise InputError("sparsification needs at least one pixel")
    if steps < 1:
        raise InputError(f"steps must be >= 1, got {steps}")
    order = np.argsort(-ranking, kind="stable")  # most uncertain first; ties keep index order
    ordered = sq_error[order]
    # suffix[r] = sum of the errors left after removing the r most uncertain pixels.
    suffix = np.concatenate([np.cumsum(ordered[::-1])[::-1], [0.0]])
    k = np.arange(steps)
    removed = (2 * k * n + steps) // (2 * steps)  # round(k * n / steps), half up, exact
    removed = np.minimum(removed, n - 1)  # always keep at least one pixel
    return k / steps, suffix[removed] / (n - removed)


def sparsification(sq_error, uncertainty, steps: int = 50,
                   mask=None) -> tuple[np.ndarray, np.ndarray]:
    """Sparsification curve: mean squared error left after removing the most uncertain pixels.

    ``sq_error`` and ``uncertainty`` have the same shape (``[*S]`` or flat); ``mask`` (optional,
    boolean, same shape) selects the ``n`` pixels considered. Pixels are ranked by ``uncertainty``
    descending (stable sort: ties are removed in index order). For ``f_k = k / steps``,
    ``k = 0 .. steps - 1``, the ``round(f_k * n)`` most uncertain pixels (round half up, capped at
    ``n - 1`` so one pixel always remains) are removed and the mean ``sq_error`` of the rest is
    recorded. Raw MSE, not normalised by its value at ``f = 0``.
    Returns ``(fractions, curve)``, both ``[steps]``; ``curve[0]`` is the mean error.
    """
    err = _select(sq_error, mask)
    unc = _select(uncertainty, mask)
    if err.shape != unc.shape:
        raise InputError(f"sq_error and uncertainty differ in shape: {err.shape} vs {unc.shape}")
    return _curve_from_ranking(err, unc, steps)


def oracle_sparsification(sq_error, steps: int = 50, mask=None) -> tuple[np.ndarray, np.ndarray]:
    """Oracle sparsification curve: pixels ranked by ``sq_error`` itself (see `sparsification`)."""
    err = _select(sq_error, mask)
    return _curve_from_ranking(err, err, steps)


def ause(sq_error, uncertainty, steps: int = 50, mask=None) -> float:
    """Area under the sparsification error: ``integral (curve - oracle) df``.

    Trapezoid rule over the fractions ``0, 1/steps, ..., (steps-1)/steps`` (so the integral runs
    over ``[0, 1 - 1/steps]``), on raw (unnormalised) MSE curves. ``0`` for a perfect ranking,
    positive for a worse one.
    """
    return sparsification_curves(sq_error, uncertainty, steps, mask)[3]


def sparsification_curves(sq_error, uncertainty, steps: int = 50, mask=None):
    """``(fractions, curve, oracle_curve, ause)`` in one pass (see `sparsification`, `ause`)."""
    fractions, curve = sparsification(sq_error, uncertainty, steps, mask=mask)
    _, oracle = oracle_sparsification(sq_error, steps, mask=mask)
    return fractions, curve, oracle, float(np.trapezoid(curve - oracle, fractions))


# ----------------------------------------------------------------------------------------------
# Uncertainty against a ground truth: variance calibration, displacement-sigma calibration
# ----------------------------------------------------------------------------------------------


def variance_calibration(pred_log_var, true_sigma, mask=None) -> dict:
    """Predicted image log-variance ``log σ_pred²`` against the true noise std ``σ_true`` (same shape).

    Over the voxels of ``mask`` (all if None) where ``σ_true > 0``: ``pearson`` and ``spearman``
    correlations of ``log σ_pred²`` with ``log σ_true²``, and ``median_ratio`` = the median of
    ``σ_pred / σ_true`` (1 = calibrated; > 1 over-estimates the noise). Fewer than two voxels, or a
    constant input, gives ``NaN`` for the correlations (``median_ratio`` needs one voxel).
    """
    pred = np.asarray(pred_log_var, dtype=np.float64)
    true = np.asarray(true_sigma, dtype=np.float64)
    if pred.shape != true.shape:
        raise InputError(f"pred_log_var {pred.shape} and true_sigma {true.shape} differ in shape")
    keep = true > 0
    if mask is not None:
        keep &= _as_mask(mask)
    x, sigma = pred[keep], true[keep]
    out = dict(pearson=float("nan"), spearman=float("nan"), median_ratio=float("nan"))
    if x.size:
        out["median_ratio"] = float(np.median(np.exp(0.5 * x) / sigma))
    y = 2.0 * np.log(sigma)
    if x.size >= 2 and np.ptp(x) > 0 and np.ptp(y) > 0:
        out["pearson"] = float(stats.pearsonr(x, y)[0])
        out["spearman"] = float(stats.spearmanr(x, y)[0])
    return out


def sigma_calibration(sq_error, sigma, ndim: int, bins: int = 10, mask=None) -> dict:
    """Calibration of a predicted isotropic displacement std ``sigma`` (voxels, one per voxel)
    against the squared endpoint error ``sq_error`` = ``‖u_pred − u_true‖²`` (voxels²).

    The voxels (of ``mask``; all if None) are sorted by ``sigma`` (stable) and cut into ``bins``
    groups of equal count (``np.array_split``; fewer voxels than bins gives one voxel per group).
    Per group: ``predicted`` = ``√ndim · sqrt(mean σ²)``, the RMS endpoint error an isotropic
    N(0, σ² I) error of ``ndim`` components would have, and ``observed`` = ``sqrt(mean sq_error)``,
    both in voxels, with ``count`` voxels and ``sigma`` = the group's mean σ. ``ece`` (expected
    calibration error, voxels) = ``Σ count/N · |observed − predicted|``; 0 for a calibrated σ.
    No voxel -> ``ece`` NaN and empty lists.
    """
    err = _select(sq_error, mask)
    sig = _select(sigma, mask)
    if err.shape != sig.shape:
        raise InputError(f"sq_error and sigma differ in shape: {err.shape} vs {sig.shape}")
    if bins < 1:
        raise InputError(f"bins must be >= 1, got {bins}")
    out = dict(sigma=[], predicted=[], observed=[], count=[], ece=float("nan"))
    if err.size == 0:
        return out
    order = np.argsort(sig, kind="stable")
    for group in np.array_split(order, min(bins, err.size)):
        out["sigma"].append(float(sig[group].mean()))
        out["predicted"].append(float(np.sqrt(ndim * np.mean(sig[group] ** 2))))
        out["observed"].append(float(np.sqrt(np.mean(err[group]))))
        out["count"].append(int(group.size))
    counts = np.asarray(out["count"], np.float64)
    gaps = np.abs(np.asarray(out["observed"]) - np.asarray(out["predicted"]))
    out["ece"] = float(np.sum(counts * gaps) / counts.sum())
    return out


# ----------------------------------------------------------------------------------------------
# Statistics over pairs
# ----------------------------------------------------------------------------------------------


def paired_ttest(a, b) -> dict:
    """Paired t-test (``scipy.stats.ttest_rel``) of per-pair values ``a`` vs ``b``.

    Pairs where either value is ``NaN`` are dropped first. Returns ``dict(t, p, n, mean_diff)``
    with ``n`` the number of pairs kept and ``mean_diff = mean(a - b)`` over them; fewer than two
    pairs -> ``t = p = NaN`` (``mean_diff`` is ``NaN`` only when no pair is left).
    """
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise InputError(f"paired values differ in length: {a.size} vs {b.size}")
    keep = ~(np.isnan(a) | np.isnan(b))
    a, b = a[keep], b[keep]
    n = int(a.size)
    mean_diff = float(np.mean(a - b)) if n else float("nan")
    if n < 2:
        return dict(t=float("nan"), p=float("nan"), n=n, mean_diff=mean_diff)
    result = stats.ttest_rel(a, b)
    return dict(t=float(result.statistic), p=float(result.pvalue), n=n, mean_diff=mean_diff)


def unit_means(units, values) -> tuple[list, np.ndarray]:
    """``(sorted unit keys, mean of values per unit)``, NaN values ignored (a unit with only NaN gets NaN)."""
    values = np.asarray(values, dtype=np.float64).ravel()
    keys = sorted(set(units), key=str)
    index = {k: i for i, k in enumerate(keys)}
    sums, counts = np.zeros(len(keys)), np.zeros(len(keys))
    for unit, value in zip(units, values):
        if not np.isnan(value):
            sums[index[unit]] += value
            counts[index[unit]] += 1
    with np.errstate(invalid="ignore", divide="ignore"):
        return keys, np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def unit_ttest(units, a, b) -> dict:
    """Paired t-test with the unit (e.g. the patient) as the unit of analysis.

    ``units[i]`` names the unit of the i-th paired observation ``(a[i], b[i])`` (e.g. the patient
    of a slice, over every seed that tested it). Observations where either value is NaN are dropped;
    the rest are averaged per unit, on each side, and ``scipy.stats.ttest_rel`` runs over the units.
    Returns ``dict(t, p, n, mean_diff, n_obs, a_better, p_obs)``: ``n`` units, ``mean_diff`` the mean
    over units of ``mean(a) - mean(b)``, ``n_obs`` observations kept, ``a_better`` the number of
    units whose mean ``a`` exceeds their mean ``b``, and ``p_obs`` the observation-level test's p
    (pooling correlated observations as independent: it overstates the evidence; reported only
    for comparison with papers that use it).
    """
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    units = list(units)
    if not (a.size == b.size == len(units)):
        raise InputError(f"units, a and b differ in length: {len(units)}, {a.size}, {b.size}")
    keep = ~(np.isnan(a) | np.isnan(b))
    kept_units = [u for u, k in zip(units, keep) if k]
    _, mean_a = unit_means(kept_units, a[keep])
    _, mean_b = unit_means(kept_units, b[keep])
    test = paired_ttest(mean_a, mean_b)
    return dict(t=test["t"], p=test["p"], n=test["n"], mean_diff=test["mean_diff"], n_obs=int(keep.sum()),
                a_better=int(np.sum(mean_a > mean_b)), p_obs=paired_ttest(a, b)["p"])


def replicate_summary(replicates, values) -> dict:
    """Seeds as replicate trainings: ``dict(mean, sd, n, means)`` of the per-replicate means of
    ``values`` (``replicates[i]`` names the seed of value i; NaN ignored); ``sd`` with ddof=1
    (NaN for one replicate)."""
    keys, means = unit_means(replicates, values)
    means = means[~np.isnan(means)]
    sd = float(np.std(means, ddof=1)) if means.size > 1 else float("nan")
    return dict(mean=float(means.mean()) if means.size else float("nan"), sd=sd, n=int(means.size),
                means=[float(m) for m in means])


def summarize(values) -> dict:
    """``dict(mean, std, n, n_nan)`` of per-pair values, ignoring ``NaN``.

    ``n`` counts the non-NaN values and ``n_nan`` the NaN ones (so ``n + n_nan`` is the total);
    ``std`` is the population standard deviation (ddof=0). All-NaN or empty input gives
    ``NaN`` mean and std without printing a warning. Plain Python types (JSON-serialisable).
    """
    values = np.asarray(values, dtype=np.float64).ravel()
    n_nan = int(np.count_nonzero(np.isnan(values)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = float(np.nanmean(values)) if values.size else float("nan")
        std = float(np.nanstd(values)) if values.size else float("nan")
    return dict(mean=mean, std=std, n=int(values.size) - n_nan, n_nan=n_nan)
