"""Tests of the synthetic cardiac phantoms (hetreg_jax.data.synthetic)."""

import functools

import numpy as np
import pytest
from scipy import ndimage

from hetreg_jax.data import synthetic

SMALL = {"acdc": (64, 64), "camus": (64, 64), "echo3d": (32, 32, 32)}
LABELS = {"acdc": {0, 1, 2, 3}, "camus": {0, 1, 2, 3}, "echo3d": {0, 1, 2}}
CAVITY = {"acdc": 3, "camus": 1, "echo3d": 1}
N_PAIRS = {"acdc": 3, "camus": 2, "echo3d": 1}


@functools.lru_cache(maxsize=None)
def _pairs(kind, size, seed=0, subjects=3):
    """Pairs of subjects 0..subjects-1 (with the clean frames), generated once per session."""
    return tuple(p for i in range(subjects)
                 for p in synthetic.make_subject(kind, i, size, seed, return_clean=True))


def _warp(image, u):
    """image(x + u(x)), linear, zeros outside: the project's warp convention."""
    grid = np.indices(image.shape, dtype=np.float64)
    coords = grid + np.moveaxis(u.astype(np.float64), -1, 0)
    return ndimage.map_coordinates(image.astype(np.float64), coords, order=1, mode="constant")


def _dice(a, b):
    return 2.0 * np.sum(a & b) / (np.sum(a) + np.sum(b))


def _det_jacobian(u):
    """det of the Jacobian of x -> x + u(x), central differences (np.gradient)."""
    ndim = u.shape[-1]
    jac = np.stack([np.stack(np.gradient(u[..., k]), axis=-1) for k in range(ndim)], axis=-2)
    return np.linalg.det(jac + np.eye(ndim))


@pytest.mark.parametrize("kind", synthetic.KINDS)
def test_pair_shapes_dtypes_ranges_and_ids(kind):
    size = SMALL[kind]
    pairs = synthetic.make_subject(kind, 7, size, seed=0)
    assert len(pairs) == N_PAIRS[kind]
    suffixes = {"acdc": ["_slice00", "_slice01", "_slice02"], "camus": ["_2CH", "_4CH"], "echo3d": [""]}
    assert [p["pair_id"] for p in pairs] == [f"synth_{kind}_007{s}" for s in suffixes[kind]]
    for p in pairs:
        assert p["subject"] == f"synth_{kind}_007"
        for key in ("moving", "fixed", "noise_sigma"):
            assert p[key].shape == size and p[key].dtype == np.float32
        for key in ("moving", "fixed"):
            assert p[key].min() == 0.0 and p[key].max() == 1.0
        for key in ("moving_label", "fixed_label"):
            assert p[key].shape == size and p[key].dtype == np.uint8
            assert set(np.unique(p[key])) <= LABELS[kind]
            assert np.sum(p[key] == 2) > 20  # the myocardium is there
    # every label appears (ACDC's RV may vanish towards the apex: look at the basal slice)
    assert set(np.unique(pairs[0]["moving_label"])) == LABELS[kind]
    for p in pairs:
        assert p["displacement"].shape == (*size, len(size)) and p["displacement"].dtype == np.float32
        assert np.all(np.isfinite(p["noise_sigma"])) and p["noise_sigma"].min() >= 0
        assert "moving_clean" not in p


@pytest.mark.parametrize("kind", synthetic.KINDS)
def test_same_seed_same_bits_other_seed_other_data(kind):
    size = SMALL[kind]
    a = synthetic.make_subject(kind, 2, size, seed=5)
    b = synthetic.make_subject(kind, 2, size, seed=5)
    c = synthetic.make_subject(kind, 2, size, seed=6)
    for pa, pb, pc in zip(a, b, c):
        for key in ("moving", "fixed", "moving_label", "fixed_label", "displacement", "noise_sigma"):
            np.testing.assert_array_equal(pa[key], pb[key])
        for key in ("moving", "fixed", "displacement"):
            assert not np.array_equal(pa[key], pc[key])


def test_a_subject_does_not_depend_on_the_number_of_subjects():
    def by_pair(dataset):
        return {pid: {k: split[k][i] for k in ("moving", "fixed", "fixed_label", "displacement")}
                for split in dataset.values() for i, pid in enumerate(split["pair_id"])}
    small = by_pair(synthetic.make_dataset("acdc", (32, 32), 3, seed=1, slices_per_subject=2))
    large = by_pair(synthetic.make_dataset("acdc", (32, 32), 5, seed=1, slices_per_subject=2))
    assert len(small) == 6 and len(large) == 10 and set(small) <= set(large)
    for pid, arrays in small.items():
        for key, value in arrays.items():
            np.testing.assert_array_equal(value, large[pid][key])


@pytest.mark.parametrize("kind", synthetic.KINDS)
def test_ground_truth_displacement_carries_ed_onto_es(kind):
    undeformed = []
    for p in _pairs(kind, SMALL[kind]):
        ed_myo, es_myo = p["moving_label"] == 2, p["fixed_label"] == 2
        warped = _warp(ed_myo, p["displacement"]) > 0.5
        assert _dice(warped, es_myo) > 0.9, p["pair_id"]
        undeformed.append(_dice(ed_myo, es_myo))
    assert max(undeformed) < 0.85 and np.mean(undeformed) < 0.8  # the pairs need registration


@pytest.mark.parametrize("kind", synthetic.KINDS)
def test_motion_never_folds_and_preserves_the_wall_volume(kind):
    for p in _pairs(kind, SMALL[kind]):
        det = _det_jacobian(p["displacement"])
        assert det.min() > 0, p["pair_id"]
        es_myo = p["fixed_label"] == 2
        # the radial map is area/volume preserving on the whole wall: det J = 1 there
        assert abs(det[es_myo].mean() - 1.0) < 0.02, p["pair_id"]
        assert np.abs(p["displacement"][es_myo]).max() > 1.0  # the wall does move
        # systole: the LV cavity shrinks (ejection), the myocardium keeps its area/volume
        cavity = np.sum(p["fixed_label"] == CAVITY[kind]) / np.sum(p["moving_label"] == CAVITY[kind])
        assert cavity < 0.75, p["pair_id"]
        assert 0.9 < es_myo.sum() / np.sum(p["moving_label"] == 2) < 1.1, p["pair_id"]


def test_acdc_rician_noise_is_heteroscedastic_and_calibrated():
    for p in _pairs("acdc", SMALL["acdc"]):
        sigma, clean = p["noise_sigma"].astype(np.float64), p["fixed_clean"].astype(np.float64)
        residual = p["fixed"] - clean
        bright = clean > 3 * sigma  # high SNR: Rician ~ Gaussian(clean, sigma), bias < sigma / 6
        low = bright & (sigma <= np.quantile(sigma, 0.25))
        high = bright & (sigma >= np.quantile(sigma, 0.75))
        assert low.sum() > 50 and high.sum() > 50
        assert residual[high].std() > 2 * residual[low].std(), p["pair_id"]
        for region in (low, high):  # noise_sigma is the true std
            z = residual[region] / sigma[region]
            assert 0.85 < z.std() < 1.15 and abs(z.mean()) < 0.3, (p["pair_id"], z.mean(), z.std())


@pytest.mark.parametrize("kind", ["camus", "echo3d"])
def test_echo_is_zero_outside_the_sector_with_calibrated_speckle(kind):
    size = SMALL[kind]
    fov = synthetic.sector_mask(size)
    assert 0.2 < fov.mean() < 0.8 and not fov[0, 0].any()
    for p in _pairs(kind, size):
        for key in ("moving", "fixed", "noise_sigma", "fixed_clean"):
            assert np.all(p[key][~fov] == 0), (p["pair_id"], key)
        for key in ("moving", "fixed"):
            assert np.mean(p[key][fov] > 0) > 0.99
        sigma = p["noise_sigma"][fov].astype(np.float64)
        residual = (p["fixed"] - p["fixed_clean"])[fov].astype(np.float64)
        z = residual / sigma  # multiplicative speckle: sigma = clean * SPECKLE_SD
        assert abs(z.mean()) < 0.05 and 0.9 < z.std() < 1.1, (p["pair_id"], z.mean(), z.std())
        np.testing.assert_allclose(sigma, p["fixed_clean"][fov] * synthetic.SPECKLE_SD, rtol=1e-5)
        dark, bright = sigma <= np.quantile(sigma, 0.25), sigma >= np.quantile(sigma, 0.75)
        assert residual[bright].std() > 2 * residual[dark].std()


def test_acdc_128_slices_shrink_from_base_to_apex():
    pairs = synthetic.make_subject("acdc", 4, (128, 128), seed=0, slices_per_subject=4)
    assert [p["pair_id"][-7:] for p in pairs] == ["slice00", "slice01", "slice02", "slice03"]
    cavity = [np.sum(p["moving_label"] == 3) for p in pairs]
    assert all(b < a for a, b in zip(cavity, cavity[1:])), cavity
    for p in pairs:
        ed_myo, es_myo = p["moving_label"] == 2, p["fixed_label"] == 2
        assert _dice(_warp(ed_myo, p["displacement"]) > 0.5, es_myo) > 0.95
        assert _dice(ed_myo, es_myo) < 0.85
        assert abs(es_myo.sum() / ed_myo.sum() - 1) < 0.03  # area-preserving wall motion
        assert np.sum(p["moving_label"] == 1) > 0  # the RV crescent


def test_make_dataset_splits_by_subject():
    data = synthetic.make_dataset("camus", (32, 32), 7, seed=3)
    assert set(data) == set(synthetic.SPLITS)
    seen = []
    for name, split in data.items():
        n = len(split["pair_id"])
        subjects = sorted(set(split["subject"]))
        assert len(subjects) >= 1 and n == 2 * len(subjects)
        assert split["moving"].shape == split["fixed"].shape == split["noise_sigma"].shape == (n, 32, 32, 1)
        assert split["moving_label"].shape == split["fixed_label"].shape == (n, 32, 32)
        assert split["displacement"].shape == (n, 32, 32, 2)
        assert split["moving"].dtype == np.float32 and split["fixed_label"].dtype == np.uint8
        assert [pid.rsplit("_", 1)[0] for pid in split["pair_id"]] == split["subject"]
        seen += subjects
    assert sorted(seen) == [f"synth_camus_{i:03d}" for i in range(7)]  # disjoint and complete
    assert [len(v) for v in synthetic.split_subjects(3, 0).values()] == [1, 1, 1]
    assert [len(v) for v in synthetic.split_subjects(10, 0).values()] == [6, 2, 2]
    with pytest.raises(ValueError, match="at least 3"):
        synthetic.make_dataset("acdc", (32, 32), 2, seed=0)


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="kind"):
        synthetic.make_subject("mri", 0, (32, 32), 0)
    with pytest.raises(ValueError, match="2D image_size"):
        synthetic.make_subject("acdc", 0, (32, 32, 32), 0)
    with pytest.raises(ValueError, match=">= 16"):
        synthetic.make_subject("echo3d", 0, (8, 32, 32), 0)
    with pytest.raises(ValueError, match="split"):
        synthetic.make_dataset("acdc", (32, 32), 5, seed=0, split=(0.5, 0.5, 0.0))
