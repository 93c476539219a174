"""Any image size: the networks zero-pad their inputs at the high end of each axis up to the size
they need and crop every output back (hetreg_jax/models/padding.py), so odd sizes train, evaluate
and register; sizes that already are multiples run exactly as before (no padding op)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import make_tiny_config

from hetreg_jax.models import VarianceUNet, VoxelMorph, init_params, padding
from hetreg_jax.models.transmorph import TransMorph

KEY = jax.random.key(0)
SMALL = dict(enc_features=(8, 16), dec_features=(16, 16, 8))  # pools twice: multiples of 4
TINY_TM = dict(embed_dim=8, depths=(2, 2), num_heads=(2, 2), window_size=4, patch_size=4, mlp_ratio=2.0,
               drop_path_rate=0.0, qkv_bias=False, reg_head_chan=4)  # multiples of 8


def _images(shape, seed=0, batch=2):
    k1, k2 = jax.random.split(jax.random.key(seed))
    return jax.random.uniform(k1, (batch, *shape, 1)), jax.random.uniform(k2, (batch, *shape, 1))


def _padded(x, multiple):
    """``x`` with zeros appended by hand up to the next multiple (what the networks must do)."""
    size = x.shape[1:-1]
    target = [-(-n // multiple) * multiple for n in size]
    out = np.zeros((x.shape[0], *target, x.shape[-1]), np.float32)
    out[(slice(None), *(slice(0, n) for n in size))] = np.asarray(x)
    return jnp.asarray(out)


def _crop(x, size):
    return x[(slice(None), *(slice(0, n) for n in size))]


def test_padding_amounts_and_no_op_for_multiples():
    assert padding.padding((100, 90), 16) == (12, 6)
    assert padding.padding((13, 16, 3), 8) == (3, 0, 5)
    assert padding.padding((32, 64), 32) == (0, 0)
    x = jnp.ones((1, 32, 64, 1))
    assert padding.pad_end(x, (0, 0)) is x and padding.crop(x, (32, 64)) is x  # nothing inserted
    y = padding.pad_end(jnp.ones((1, 3, 2, 1)), (1, 2))
    np.testing.assert_array_equal(y[0, ..., 0], [[1, 1, 0, 0], [1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0]])
    np.testing.assert_array_equal(padding.crop(y, (3, 2)), jnp.ones((1, 3, 2, 1)))


@pytest.mark.parametrize("size, kwargs", [
    ((37, 29), dict(int_steps=7, int_downsize=2, bidirectional=True, predict_sigma=True)),
    ((13, 10, 7), dict(int_steps=3, int_downsize=2, predict_sigma=True)),
    ((21, 18), dict(int_steps=0, bidirectional=True)),
])
def test_voxelmorph_at_odd_sizes_is_the_cropped_padded_run(size, kwargs):
    model = VoxelMorph(**SMALL, **kwargs)
    multiple = model.size_multiple()
    assert multiple == 4
    moving, fixed = _images(size)
    params = init_params(model, KEY, size)
    # a flow head large enough to move things (its init is N(0, 1e-5)) and a random sigma head
    params["flow"]["kernel"] = jax.random.normal(jax.random.key(1), params["flow"]["kernel"].shape) * 0.3
    apply = jax.jit(model.apply)
    out = apply({"params": params}, moving, fixed)
    ref = apply({"params": params}, _padded(moving, multiple), _padded(fixed, multiple))
    keys = {"displacement", "inverse_displacement", "log_var_z"} & set(out)
    assert keys == {"displacement"} | ({"inverse_displacement"} if kwargs.get("bidirectional") else set()) | \
        ({"log_var_z"} if kwargs.get("predict_sigma") else set())
    for key in keys:
        assert out[key].shape == (2, *size, len(size) if key != "log_var_z" else 1)
        np.testing.assert_allclose(out[key], _crop(ref[key], size), atol=1e-6, rtol=1e-6)
    assert float(jnp.abs(out["displacement"]).max()) > 0.05  # a real motion, not a zero field
    if kwargs["int_steps"] == 0:  # velocity = displacement: cropped too
        np.testing.assert_array_equal(out["velocity"], out["displacement"])
    else:  # the diffeomorphic velocity lives on the padded grid / int_downsize
        assert out["velocity"].shape[1:-1] == tuple(-(-n // multiple) * multiple // 2 for n in size)


def test_constant_head_gives_a_constant_field_at_an_odd_size():
    """The zero padding leaks nothing into a field that does not depend on the features."""
    model = VoxelMorph(**SMALL, int_steps=0)
    params = init_params(model, KEY, (23, 17))
    params["flow"] = {"kernel": jnp.zeros_like(params["flow"]["kernel"]), "bias": jnp.array([0.4, -1.5])}
    out = model.apply({"params": params}, *_images((23, 17)))
    np.testing.assert_array_equal(out["displacement"], jnp.broadcast_to(jnp.array([0.4, -1.5]), (2, 23, 17, 2)))


def test_multiples_get_no_padding_op():
    for model in (VoxelMorph(**SMALL), VarianceUNet(**SMALL)):
        params = init_params(model, KEY, (32, 24))
        moving, fixed = _images((32, 24))
        plain = str(jax.make_jaxpr(lambda p: model.apply({"params": p}, moving, fixed))(params))
        assert " pad[" not in plain
        odd = str(jax.make_jaxpr(lambda p: model.apply({"params": p}, *_images((31, 24))))(params))
        assert " pad[" in odd


@pytest.mark.parametrize("size", [(19, 26), (9, 11, 6)])
def test_variance_net_at_odd_sizes(size):
    model = VarianceUNet(**SMALL)
    warped, fixed = _images(size, seed=2)
    params = init_params(model, KEY, size)
    apply = jax.jit(model.apply)
    out = apply({"params": params}, warped, fixed)
    assert out.shape == (2, *size, 1)
    ref = apply({"params": params}, _padded(warped, 4), _padded(fixed, 4))
    np.testing.assert_allclose(out, _crop(ref, size), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("size", [(21, 30), (11, 9, 13)])
def test_transmorph_at_odd_sizes(size):
    model = TransMorph(**TINY_TM, predict_sigma=True)
    moving, fixed = _images(size, seed=3, batch=1)
    x = jnp.zeros((1, *size, 1))
    params = jax.jit(model.init)(jax.random.key(0, impl="rbg"), x, x)
    params = jax.tree_util.tree_map(lambda p: p, params)
    params["params"]["reg_head"]["kernel"] = jax.random.normal(
        jax.random.key(1), params["params"]["reg_head"]["kernel"].shape) * 0.1
    out = jax.jit(model.apply)(params, moving, fixed)
    ref = jax.jit(model.apply)(params, _padded(moving, 8), _padded(fixed, 8))
    assert out["displacement"].shape == (1, *size, len(size)) and out["log_var_z"].shape == (1, *size, 1)
    assert float(jnp.abs(out["displacement"]).max()) > 0.05
    for key in ("displacement", "log_var_z"):
        np.testing.assert_allclose(out[key], _crop(ref[key], size), atol=1e-5, rtol=1e-5)


def test_vxm_diff_refuses_sizes_that_need_padding_in_one_line():
    from hetreg_jax.config.check import validate_config

    config = make_tiny_config(**{"method": "vxm_diff", "data.image_size": (30, 32)})
    with pytest.raises(ValueError) as info:
        validate_config(config)
    message = str(info.value)
    assert "\n" not in message and message.startswith("config.data.image_size=(30, 32) is not allowed")
    assert "multiples of 4 with method='vxm_diff'" in message
    validate_config(make_tiny_config(**{"method": "vxm_diff", "data.image_size": (28, 32)}))
    validate_config(make_tiny_config(**{"data.image_size": (30, 31)}))  # any other method: any size
    with pytest.raises(ValueError, match="divisible by 4 for the probabilistic"):
        init_params(VoxelMorph(**SMALL, probabilistic=True), KEY, (30, 32))


def test_train_evaluate_register_and_api_at_an_odd_2d_size(tmp_path):
    """--config.data.image_size=(36,30) (not a multiple of 4): training, the test evaluation, the
    Python API and NIfTI registration all run on the odd grid."""
    import nibabel as nib

    import hetreg_jax
    from hetreg_jax.train import loop as train
    from hetreg_jax.data import layouts

    layouts.write_acdc(str(tmp_path / "acdc"), 4, size=(40, 38), slices=2, seed=0)
    config = make_tiny_config(**{"data.root": str(tmp_path / "acdc"), "data.image_size": (36, 30),
                                 "num_steps": 2, "checkpoint_every": 2, "log_every": 1})
    summary = train.train_and_evaluate(config, str(tmp_path / "work"))
    assert np.isfinite(summary["dice"]["mean"]) and summary["dice"]["mean"] > 0
    model = hetreg_jax.load(str(tmp_path / "work"), config)
    moving, fixed = np.random.default_rng(0).random((2, 3, 36, 30)).astype(np.float32)
    out = model.register(moving, fixed)
    assert out["displacement"].shape == (3, 36, 30, 2) and out["log_var"].shape == (3, 36, 30)
    assert np.all(np.isfinite(out["displacement"])) and np.all(np.isfinite(out["log_var"]))
    image = tmp_path / "acdc" / "training" / "patient001" / "patient001_frame01.nii.gz"
    paths = model.register_nifti(str(image), str(image), str(tmp_path / "out"))
    assert nib.load(paths["displacement"]).shape == (40, 38, 2, 1, 3)
    log_var = nib.load(paths["log_var"]).get_fdata()
    assert np.isfinite(log_var).sum() == 36 * 30 * 2  # the 36 x 30 crop of each slice, NaN elsewhere


# Training and evaluation at an odd 3D size: tests/test_train.py::test_train_and_evaluate_in_3d.
