"""Tests for hetreg_jax.core.metrics: hand-made shapes and fields with analytically known answers."""

import math
import warnings

import numpy as np
import pytest
from scipy import stats

from hetreg_jax.core import metrics


def square(shape, lo, hi):
    """Filled box, ``lo[k] <= index_k < hi[k]`` along every axis."""
    mask = np.zeros(shape, dtype=bool)
    mask[tuple(slice(l, h) for l, h in zip(lo, hi))] = True
    return mask


# ---------------------------------------------------------------------------------- surface


def test_surface_single_voxel_is_itself():
    mask = np.zeros((7, 7), dtype=bool)
    mask[3, 4] = True
    np.testing.assert_array_equal(metrics.surface(mask), mask)


def test_surface_of_5x5_square_is_its_16_voxel_ring():
    mask = square((9, 9), (2, 2), (7, 7))
    surf = metrics.surface(mask)
    assert surf.sum() == 16
    np.testing.assert_array_equal(surf, mask & ~square((9, 9), (3, 3), (6, 6)))


def test_surface_of_mask_touching_border_includes_border():
    mask = np.ones((4, 5), dtype=bool)
    surf = metrics.surface(mask)
    assert surf.sum() == 4 * 5 - 2 * 3
    assert not surf[1:-1, 1:-1].any()


def test_surface_uses_connectivity_1():
    plus = np.zeros((5, 5), dtype=bool)
    plus[2, 1:4] = True
    plus[1:4, 2] = True
    # The centre keeps its 4 face neighbours, so a connectivity-1 erosion keeps it (a full
    # 8-neighbour erosion would not): the surface is the 4 arm voxels only.
    surf = metrics.surface(plus)
    assert surf.sum() == 4 and not surf[2, 2]


def test_surface_3d_cube():
    cube = square((7, 7, 7), (1, 1, 1), (6, 6, 6))  # 5^3 cube, 3^3 interior
    assert metrics.surface(cube).sum() == 125 - 27


# ---------------------------------------------------------------------------------- Dice


def test_dice_identical_disjoint_and_half_overlap():
    a = square((30, 30), (5, 5), (15, 15))
    assert metrics.dice(a, a) == 1.0
    assert metrics.dice(a, square((30, 30), (20, 20), (25, 25))) == 0.0
    shifted = square((30, 30), (5, 10), (15, 20))  # shifted 5 px along x (axis 1)
    assert metrics.dice(a, shifted) == 0.5  # 2 * 50 / 200


def test_dice_empty_rules():
    empty = np.zeros((8, 8), dtype=bool)
    assert math.isnan(metrics.dice(empty, empty))
    a = square((8, 8), (1, 1), (4, 4))
    assert metrics.dice(a, empty) == 0.0
    assert metrics.dice(empty, a) == 0.0


# ---------------------------------------------------------------------------------- Hausdorff


def test_hausdorff_translated_squares_is_shift():
    k = 3
    a = square((30, 30), (5, 5), (15, 15))
    b = square((30, 30), (5 + k, 5), (15 + k, 15))
    assert metrics.hausdorff(a, b) == pytest.approx(k, abs=1e-12)
    assert metrics.hausdorff(b, a) == pytest.approx(k, abs=1e-12)
    # Voxels twice as long along the shift axis: the distance doubles.
    assert metrics.hausdorff(a, b, spacing=(2, 1)) == pytest.approx(2 * k, abs=1e-12)
    # ... but not when the long axis is the other one.
    assert metrics.hausdorff(a, b, spacing=(1, 2)) == pytest.approx(k, abs=1e-12)
    assert metrics.hausdorff(a, b, percentile=95) <= metrics.hausdorff(a, b)


def test_hd95_ignores_a_single_outlier_voxel():
    a = square((30, 30), (5, 5), (15, 15))
    b = a.copy()
    b[10, 25] = True  # 11 px right of the nearest surface voxel (10, 14)
    assert metrics.hausdorff(a, b) == pytest.approx(11.0, abs=1e-12)
    # d_ab is all zeros; d_ba is 36 zeros and one 11: its 95th percentile is 0.
    assert metrics.hausdorff(a, b, percentile=95) == 0.0


def test_hd95_takes_each_direction_separately():
    a = square((30, 30), (5, 5), (15, 15))
    b = a.copy()
    b[9:12, 25] = True  # 3 voxels, each 11 px from a's surface
    # d_ba = 36 zeros + three 11s: 3/39 > 5 %, so its 95th percentile is 11 (MONAI convention);
    # pooling both directions (72 zeros + three 11s) would give 0.
    assert metrics.hausdorff(a, b, percentile=95) == pytest.approx(11.0, abs=1e-12)


def test_hausdorff_3d_cube():
    k = 2
    a = square((16, 16, 16), (3, 3, 3), (9, 9, 9))
    b = square((16, 16, 16), (3, 3, 3 + k), (9, 9, 9 + k))
    assert metrics.hausdorff(a, b) == pytest.approx(k, abs=1e-12)
    assert metrics.hausdorff(a, b, spacing=(1, 1, 0.5)) == pytest.approx(0.5 * k, abs=1e-12)


def test_surface_distances_empty_is_nan():
    empty = np.zeros((8, 8), dtype=bool)
    a = square((8, 8), (1, 1), (4, 4))
    assert math.isnan(metrics.hausdorff(a, empty))
    assert math.isnan(metrics.hausdorff(empty, empty))
    assert math.isnan(metrics.average_surface_distance(empty, a))
    assert math.isnan(metrics.average_surface_distance(a, empty, symmetric=True))


# ---------------------------------------------------------------------------------- ASD / ASSD


def test_asd_concentric_squares_directed_and_symmetric():
    # a: 8x8 square at [6, 14)^2, b: 16x16 square at [2, 18)^2, a 4-px margin on every side.
    a = square((20, 20), (6, 6), (14, 14))
    b = square((20, 20), (2, 2), (18, 18))
    n_a, n_b = 4 * 8 - 4, 4 * 16 - 4  # 28 and 60 surface voxels
    # Every surface voxel of a is exactly 4 px from b's nearest edge.
    d_ab_mean = 4.0
    # b's surface: voxels facing a's edges are 4 px away; the rest reach a's corner voxel.
    # Top row (2, c): c in 6..13 -> 4; c = 2,3,4,5 (and mirrored) -> sqrt(16 + (6 - c)^2).
    corner_run = math.sqrt(32) + 5.0 + math.sqrt(20) + math.sqrt(17)
    top = 8 * 4.0 + 2 * corner_run
    # Left column (r, 2), r in 3..16: r in 6..13 -> 4; r = 3,4,5 (and mirrored) -> as above.
    side = 8 * 4.0 + 2 * (5.0 + math.sqrt(20) + math.sqrt(17))
    sum_ba = 2 * top + 2 * side
    assert metrics.average_surface_distance(a, b) == pytest.approx(d_ab_mean, abs=1e-12)
    assert metrics.average_surface_distance(b, a) == pytest.approx(sum_ba / n_b, abs=1e-12)
    assert metrics.average_surface_distance(a, b) != pytest.approx(
        metrics.average_surface_distance(b, a))
    assd = (n_a * d_ab_mean + sum_ba) / (n_a + n_b)
    assert metrics.average_surface_distance(a, b, symmetric=True) == pytest.approx(assd, abs=1e-12)
    assert metrics.average_surface_distance(b, a, symmetric=True) == pytest.approx(assd, abs=1e-12)
    # Heimann's pooled mean differs from the average of the two directed means here.
    assert assd != pytest.approx(0.5 * (d_ab_mean + sum_ba / n_b))
    # HD for the same pair: b's corner is sqrt(32) from a's corner.
    assert metrics.hausdorff(a, b) == pytest.approx(math.sqrt(32), abs=1e-12)


def test_asd_spacing_scales_isotropically():
    a = square((20, 20), (6, 6), (14, 14))
    b = square((20, 20), (2, 2), (18, 18))
    assert metrics.average_surface_distance(a, b, spacing=(0.5, 0.5)) == pytest.approx(2.0)
    assert metrics.average_surface_distance(a, b, spacing=0.5) == pytest.approx(2.0)


# ---------------------------------------------------------------------------------- Jacobian


def affine_displacement(matrix, shape):
    """u(x) = (A - I) x on an ij-indexed voxel grid, [*S, ndim]."""
    grid = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float64) for s in shape],
                                indexing="ij"), axis=-1)
    return grid @ (np.asarray(matrix) - np.eye(len(shape))).T


@pytest.mark.parametrize("matrix,shape", [
    ([[1.2, 0.3], [-0.1, 0.9]], (6, 7)),
    ([[-1.0, 0.0], [0.0, 1.0]], (5, 5)),  # a reflection: det = -1, every voxel folds
    ([[1.1, 0.2, 0.0], [0.0, 0.8, -0.3], [0.1, 0.0, 1.3]], (5, 6, 7)),
])
def test_jacobian_of_affine_field_is_det_a_everywhere(matrix, shape):
    u = affine_displacement(matrix, shape)
    det = metrics.jacobian_determinant_np(u)
    assert det.shape == shape
    np.testing.assert_allclose(det, np.linalg.det(matrix), rtol=0, atol=1e-12)
    expected_fold = 100.0 if np.linalg.det(matrix) <= 0 else 0.0
    assert metrics.folding_percent(u) == expected_fold
    assert metrics.sd_log_jacobian(u) == pytest.approx(0.0, abs=1e-12)


def fold_field():
    """u_0 depends on row only: phi_0 = [0,1,2,3,2,1,2,3] -> det J per row = [1,1,1,0,-1,0,1,1]."""
    phi = np.array([0, 1, 2, 3, 2, 1, 2, 3], dtype=np.float64)
    u = np.zeros((8, 5, 2))
    u[..., 0] = (phi - np.arange(8))[:, None]
    return u


def test_folding_percent_of_a_known_fold():
    u = fold_field()
    det = metrics.jacobian_determinant_np(u)
    np.testing.assert_allclose(det, np.array([1, 1, 1, 0, -1, 0, 1, 1.0])[:, None] * np.ones(5))
    assert metrics.folding_percent(u) == pytest.approx(37.5)  # rows 3, 4, 5 of 8
    top = np.zeros((8, 5), dtype=bool)
    top[:4] = True
    assert metrics.folding_percent(u, mask=top) == pytest.approx(25.0)  # row 3 of rows 0-3
    assert math.isnan(metrics.folding_percent(u, mask=np.zeros((8, 5), dtype=bool)))


def test_sd_log_jacobian_clips_folds():
    # Interior (crop=2) of the fold field: rows 2..5 -> det [1, 0, -1, 0], one column.
    # Clipped to [1, 1e-9, 1e-9, 1e-9]; log -> [0, L, L, L] with L = log(1e-9): std = |L| sqrt(3)/4.
    expected = abs(math.log(1e-9)) * math.sqrt(3) / 4
    assert metrics.sd_log_jacobian(fold_field()) == pytest.approx(expected, rel=1e-12)


def test_sd_log_jacobian_quadratic_field_and_learn2reg_option():
    # phi_0 = x + 0.1 x^2: central differences are exact for quadratics, so the interior det is
    # 1 + 0.2 x exactly (the one-sided border values are cropped away).
    n = 12
    x = np.arange(n, dtype=np.float64)
    u = np.zeros((n, 6, 2))
    u[..., 0] = (0.1 * x ** 2)[:, None]
    interior = 1 + 0.2 * x[2:-2]
    assert metrics.sd_log_jacobian(u) == pytest.approx(np.log(interior).std(), rel=1e-10)
    l2r = metrics.sd_log_jacobian(u, learn2reg=True)
    assert l2r == pytest.approx(np.log(interior + 3).std(), rel=1e-10)
    assert l2r < metrics.sd_log_jacobian(u)  # the +3 shrinks the spread
    # crop=0 includes the one-sided border differences: det at x=0 is 1 + 0.1, at x=n-1 1 + 0.1(2n-3).
    full = np.concatenate([[1.1], 1 + 0.2 * x[1:-1], [1 + 0.1 * (2 * n - 3)]])
    assert metrics.sd_log_jacobian(u, crop=0) == pytest.approx(np.log(full).std(), rel=1e-10)


def test_sd_log_jacobian_rejects_crop_larger_than_field():
    with pytest.raises(ValueError):
        metrics.sd_log_jacobian(np.zeros((4, 4, 2)), crop=2)


def test_jacobian_matches_jax_version():
    spatial = pytest.importorskip("hetreg_jax.core.spatial")
    rng = np.random.default_rng(0)
    for shape in [(6, 7), (4, 5, 6)]:
        u = rng.normal(scale=0.5, size=shape + (len(shape),)).astype(np.float32)
        ours = metrics.jacobian_determinant_np(u)
        theirs = np.asarray(spatial.jacobian_determinant(u[None]))[0]
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------- EPE


def test_endpoint_error_constant_offset_and_mask():
    true = np.zeros((6, 7, 2))
    pred = true + np.array([3.0, 4.0])
    assert metrics.endpoint_error(pred, true) == pytest.approx(5.0)
    half = pred.copy()
    half[3:] = 0.0  # rows 3..5 exact, rows 0..2 off by 5
    assert metrics.endpoint_error(half, true) == pytest.approx(2.5)
    top = np.zeros((6, 7), dtype=bool)
    top[:3] = True
    assert metrics.endpoint_error(half, true, mask=top) == pytest.approx(5.0)
    assert math.isnan(metrics.endpoint_error(half, true, mask=np.zeros((6, 7), dtype=bool)))


# ---------------------------------------------------------------------------------- sparsification


def test_sparsification_hand_computed_curves_and_ause():
    err = np.array([0.0, 1.0, 2.0, 3.0])
    # Removing 0, 1, 2, 3 pixels (f = 0, .25, .5, .75).
    fractions, oracle = metrics.oracle_sparsification(err, steps=4)
    np.testing.assert_allclose(fractions, [0, 0.25, 0.5, 0.75])
    np.testing.assert_allclose(oracle, [1.5, 1.0, 0.5, 0.0])
    _, worst = metrics.sparsification(err, -err, steps=4)  # least erroneous removed first
    np.testing.assert_allclose(worst, [1.5, 2.0, 2.5, 3.0])
    # Trapezoid over differences [0, 1, 2, 3] with step 0.25: 0.25 * (0/2 + 1 + 2 + 3/2).
    assert metrics.ause(err, -err, steps=4) == pytest.approx(1.125)
    assert metrics.ause(err, err, steps=4) == 0.0


def test_sparsification_properties_on_random_errors():
    rng = np.random.default_rng(1)
    err = rng.exponential(size=(16, 16))
    unc = err + rng.normal(scale=0.5, size=err.shape)  # an imperfect predictor
    fractions, curve = metrics.sparsification(err, unc)
    assert fractions.shape == curve.shape == (50,)
    assert curve[0] == pytest.approx(err.mean())
    _, oracle = metrics.oracle_sparsification(err)
    assert np.all(np.diff(oracle) <= 1e-12)  # the oracle curve never rises
    assert np.all(curve >= oracle - 1e-12)  # nothing beats the oracle
    assert metrics.ause(err, err) == 0.0
    assert metrics.ause(err, -err) > metrics.ause(err, unc) > 0.0


def test_sparsification_mask_selects_pixels():
    rng = np.random.default_rng(2)
    err, unc = rng.random((10, 10)), rng.random((10, 10))
    mask = rng.random((10, 10)) > 0.4
    fractions, curve = metrics.sparsification(err, unc, steps=20, mask=mask)
    _, direct = metrics.sparsification(err[mask], unc[mask], steps=20)
    np.testing.assert_array_equal(curve, direct)
    assert curve[0] == pytest.approx(err[mask].mean())
    assert metrics.ause(err, unc, steps=20, mask=mask) == pytest.approx(
        metrics.ause(err[mask], unc[mask], steps=20))


def test_sparsification_ties_use_stable_order():
    err = np.array([5.0, 0.0, 1.0])
    _, curve = metrics.sparsification(err, np.zeros(3), steps=3)  # all tied: remove in index order
    np.testing.assert_allclose(curve, [2.0, 0.5, 1.0])


# ---------------------------------------------------------------------------------- statistics


def test_paired_ttest_matches_scipy_and_drops_nan_pairs():
    a = np.array([0.80, 0.75, np.nan, 0.90, 0.85, 0.70, 0.95])
    b = np.array([0.78, 0.70, 0.60, 0.88, np.nan, 0.69, 0.90])
    result = metrics.paired_ttest(a, b)
    keep = [0, 1, 3, 5, 6]
    d = a[keep] - b[keep]
    assert result["n"] == 5
    assert result["mean_diff"] == pytest.approx(d.mean())
    t_hand = d.mean() / (d.std(ddof=1) / math.sqrt(5))
    assert result["t"] == pytest.approx(t_hand)
    ref = stats.ttest_rel(a[keep], b[keep])
    assert result["t"] == pytest.approx(ref.statistic)
    assert result["p"] == pytest.approx(ref.pvalue)
    assert result["p"] == pytest.approx(2 * stats.t.sf(abs(t_hand), df=4))


def test_paired_ttest_too_few_pairs_is_nan():
    result = metrics.paired_ttest([1.0, np.nan, 3.0], [np.nan, 2.0, 2.5])
    assert result["n"] == 1 and result["mean_diff"] == pytest.approx(0.5)
    assert math.isnan(result["t"]) and math.isnan(result["p"])


def test_summarize_ignores_and_counts_nan_silently():
    s = metrics.summarize([1.0, np.nan, 3.0])
    assert s == dict(mean=2.0, std=1.0, n=2, n_nan=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        empty = metrics.summarize([np.nan, np.nan])
    assert math.isnan(empty["mean"]) and math.isnan(empty["std"])
    assert empty["n"] == 0 and empty["n_nan"] == 2
