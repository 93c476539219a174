"""data.noise_scale: the phantoms' noise std scales by it (ACDC Rician sigma, echo speckle std)."""

import numpy as np
import pytest

from hetreg_jax.data import synthetic

SIZE = {"acdc": (48, 48), "camus": (48, 48)}


def _pair(kind, scale):
    return synthetic.make_subject(kind, 0, SIZE[kind], seed=0, return_clean=True, noise_scale=scale)[0]


def test_scale_one_is_the_default_bit_for_bit():
    for kind in ("acdc", "camus"):
        default, one = synthetic.make_subject(kind, 1, SIZE[kind], 0)[0], _pair(kind, 1.0)
        default1 = synthetic.make_subject(kind, 1, SIZE[kind], 0, noise_scale=1.0)[0]
        for key in ("moving", "fixed", "noise_sigma", "displacement"):
            np.testing.assert_array_equal(default[key], default1[key])
        assert one["pair_id"] == synthetic.make_subject(kind, 0, SIZE[kind], 0)[0]["pair_id"]


@pytest.mark.parametrize("kind", ["acdc", "camus"])
def test_scale_two_doubles_the_noise_std_and_zero_removes_it(kind):
    one, two, zero = _pair(kind, 1.0), _pair(kind, 2.0), _pair(kind, 0.0)
    # noise_sigma / the clean image's range is independent of the min-max normalisation
    ratio = [p["noise_sigma"] / np.ptp(p["fixed_clean"]) for p in (one, two)]
    np.testing.assert_allclose(ratio[1], 2.0 * ratio[0], rtol=1e-4, atol=1e-7)
    np.testing.assert_array_equal(one["fixed_label"], two["fixed_label"])  # same anatomy and motion
    np.testing.assert_array_equal(one["displacement"], two["displacement"])
    # noise_sigma stays the true std of the fixed frame at scale 2
    clean, sigma = two["fixed_clean"].astype(np.float64), two["noise_sigma"].astype(np.float64)
    region = (clean > 4 * sigma) & (sigma > 0) if kind == "acdc" else sigma > 0
    z = (two["fixed"] - clean)[region] / sigma[region]
    assert region.sum() > 200 and 0.85 < z.std() < 1.15 and abs(z.mean()) < 0.3, (z.mean(), z.std())
    # scale 0: noise-free frames, zero noise_sigma
    np.testing.assert_allclose(zero["fixed"], zero["fixed_clean"], atol=1e-6)
    np.testing.assert_allclose(zero["moving"], zero["moving_clean"], atol=1e-6)
    assert np.all(zero["noise_sigma"] == 0)


def test_speckle_power_matches_the_requested_std():
    for scale in (0.5, 2.0, 4.0):
        q = synthetic.speckle_power(scale)
        assert abs(synthetic.speckle_sd(q) - scale * synthetic.SPECKLE_SD) < 1e-9
    assert synthetic.speckle_power(1.0) == 0.5 and synthetic.speckle_power(0.0) == 0.0


def test_bad_scale_is_refused_and_the_config_reaches_the_phantoms():
    from conftest import make_tiny_config
    from hetreg_jax.data import pipeline

    with pytest.raises(ValueError, match="noise_scale"):
        synthetic.make_subject("acdc", 0, (32, 32), 0, noise_scale=-1.0)
    clean = pipeline.load_splits(make_tiny_config(**{"data.noise_scale": 0.0}))
    assert np.all(clean["test"]["noise_sigma"] == 0)
