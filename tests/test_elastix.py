"""method="elastix": the classical B-spline baseline (hetreg_jax/baselines/elastix.py).

elastix's result must come back in the project's convention (u in voxels, component k along array
axis k, warp(m, u)(x) = m(x + u(x))); a known translation checks sign and order in 2D and 3D. The
end-to-end run writes the networks' reports, and --mode=eval reproduces them exactly.
"""

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest

from conftest import make_tiny_config
from hetreg_jax.cli import checks as cli
from hetreg_jax.config import check as config_check
from hetreg_jax.baselines import elastix
from hetreg_jax.core import spatial
from hetreg_jax.train import loop as train

# itk's SWIG types warn on import ("builtin type SwigPyPacked has no __module__ attribute").
pytestmark = pytest.mark.filterwarnings("ignore:builtin type .* has no __module__:DeprecationWarning")


@pytest.fixture(scope="module")
def itk_loaded():
    """``import itk`` and its lazily loaded elastix module: 15-30 s, paid once for this module."""
    return elastix._itk()


def _blob(shape, centre):
    """Two anisotropic Gaussians (no symmetry that could hide an axis swap), values in [0, 1]."""
    grid = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape], indexing="ij"), -1)
    widths = np.array([6.0, 4.0, 5.0][:len(shape)])
    offset = np.array([6.0, -5.0, 3.0][:len(shape)])
    main = np.exp(-np.sum(((grid - centre) / widths) ** 2, -1))
    side = 0.6 * np.exp(-np.sum(((grid - centre - offset) / (widths / 2)) ** 2, -1))
    return (main + side).astype(np.float32) / 1.6


def _translation_case(shape, shift):
    """moving has the blob at the centre; fixed(x) = moving(x + shift), so the true u is ``shift``."""
    centre = np.array(shape, np.float64) / 2 - 2
    return _blob(shape, centre), _blob(shape, centre - np.array(shift))


@pytest.mark.parametrize("shape,shift,iterations", [((48, 48), (2.0, -3.0), 250),
                                                    ((24, 24, 24), (1.5, -1.0, 2.0), 60)])
def test_a_known_translation_comes_back_in_our_convention(itk_loaded, shape, shift, iterations):
    moving, fixed = _translation_case(shape, shift)
    u = elastix.register_pair(moving, fixed, make_tiny_config(**{"elastix.iterations": iterations}))
    assert u.shape == (*shape, len(shape)) and u.dtype == np.float32
    inside = fixed > 0.3
    np.testing.assert_allclose(u[inside].mean(0), shift, atol=0.3)
    warped = np.asarray(spatial.warp(jnp.asarray(moving)[None, ..., None], jnp.asarray(u)[None]))[0, ..., 0]
    before, after = np.mean((moving - fixed) ** 2), np.mean((warped - fixed) ** 2)
    assert after < 0.1 * before, (before, after)


def test_register_pair_refuses_what_it_cannot_register_in_one_line(itk_loaded):
    config, rng = make_tiny_config(), np.random.default_rng(0)
    with pytest.raises(ValueError, match=r"one 2D or 3D shape .* moving \(8, 8\) and fixed \(8, 9\)"):
        elastix.register_pair(np.zeros((8, 8)), np.zeros((8, 9)), config)
    with pytest.raises(ValueError, match="the moving image is constant; nothing to register"):
        elastix.register_pair(np.zeros((16, 16)), rng.random((16, 16)), config)  # elastix's MI would crash
    with pytest.raises(ValueError) as info:  # elastix's own error, read from its log
        elastix.register_pair(rng.random((8, 8)), rng.random((8, 8)), config)
    assert str(info.value).startswith("elastix failed on images of shape (8, 8): Too many samples map outside")
    assert "\n" not in str(info.value)


def test_the_parameter_map_follows_the_config():
    config = make_tiny_config(**{"elastix.resolutions": 2, "elastix.grid_spacing": 12.0,
                                 "elastix.metric": "mutual_information", "seed": 3})
    pm = elastix.parameter_map(config.elastix, 3, config.seed)
    assert pm["Metric"] == ["AdvancedMattesMutualInformation"] and pm["RandomSeed"] == ["3"]
    assert pm["FinalGridSpacingInPhysicalUnits"] == ["12"] and pm["GridSpacingSchedule"] == ["2", "1"]
    assert pm["FixedImagePyramidSchedule"] == ["2", "2", "2", "1", "1", "1"]


def test_method_elastix_evaluates_without_training_and_eval_reproduces_it(itk_loaded, tmp_path):
    config = make_tiny_config(method="elastix", **{"elastix.iterations": 30})
    workdir = str(tmp_path / "run")
    summary = train.train_and_evaluate(config, workdir)
    with open(os.path.join(workdir, "eval", "test_metrics.json")) as f:
        written = json.load(f)
    assert written["n_evaluated"] == 2 and "ause" not in written and "checkpoint_step" not in written
    assert written["dice"]["mean"] > written["undeformed"]["dice"]["mean"]
    for key in ("seconds_per_pair", "cpu_seconds_per_pair"):
        assert written[key]["n"] == 2 and written[key]["mean"] > 0, key
    assert summary["dice"] == written["dice"]
    assert sorted(os.listdir(workdir)) == [".lock", "config.json", "eval"]
    assert {"test_per_pair.csv", "test_examples.png"} <= set(os.listdir(os.path.join(workdir, "eval")))
    again = train.evaluate_checkpoint(config, workdir, out=str(tmp_path / "again"))  # --mode=eval
    for key in ("dice", "hd", "asd", "epe", "folding_percent"):
        assert again[key] == written[key], key  # fixed RandomSeed and thread count: identical


ELASTIX_BAD_VALUES = {
    "elastix.metric": ("cc", "one of 'mean_squares', 'mutual_information', 'ncc'"),
    "elastix.iterations": (0, "a whole number >= 1"),
    "elastix.resolutions": (0, "a whole number >= 1"),
    "elastix.samples": (-4, "a whole number >= 1"),
    "elastix.threads": (0, "a whole number >= 1"),
    "elastix.grid_spacing": (0.0, "a finite number > 0"),
}


@pytest.mark.parametrize("key", list(ELASTIX_BAD_VALUES))
def test_bad_elastix_settings_are_refused_in_one_line(key):
    value, allowed = ELASTIX_BAD_VALUES[key]
    with pytest.raises(ValueError) as info:
        config_check.validate_config(make_tiny_config(method="elastix", **{key: value}))
    message = str(info.value)
    assert message.startswith(f"config.{key}={value!r} is not allowed: ") and allowed in message, message
    assert "\n" not in message


def test_register_mode_is_refused_for_elastix(tmp_path):
    with pytest.raises(ValueError, match="--mode=register registers with a trained network; method='elastix'"):
        cli.check_inputs(make_tiny_config(method="elastix"), "register", str(tmp_path), str(tmp_path / "out"),
                         "m.nii.gz", "f.nii.gz")
