"""itk_warp.nii.gz: SimpleITK resampling of the moving file through the written ITK/ANTs
displacement field reproduces warped.nii.gz, on oblique, anisotropic grids (slice stacks, 3D
volumes, 2D images), and sigma_z_mm.nii.gz is σ_z in mm where the network's voxels are isotropic.

The network is replaced by a known smooth displacement on the network grid (``predict_pairs`` is
patched), so the whole ``--mode=register`` path (reading, crop/resize, mapping back, warping,
writing) is exercised with numbers known in advance; one test runs a freshly initialised model.
"""

import os

import nibabel as nib
import numpy as np
import pytest
from conftest import make_tiny_config
from scipy import ndimage
from scipy.spatial.transform import Rotation

from hetreg_jax import register
from hetreg_jax.evaluate import evaluation
from hetreg_jax.data import nifti

sitk = pytest.importorskip("SimpleITK")


def _affine(angles_deg, spacing, origin) -> np.ndarray:
    """An oblique, anisotropic RAS affine: rotation(angles) @ diag(spacing), then origin."""
    a = np.eye(4)
    a[:3, :3] = Rotation.from_euler("xyz", angles_deg, degrees=True).as_matrix() @ np.diag(spacing)
    a[:3, 3] = origin
    return a


def _image(shape, seed) -> np.ndarray:
    """Smooth positive intensities in [10, 110] (linear interpolation of it is well conditioned)."""
    noise = np.random.default_rng(seed).random(shape)
    smooth = ndimage.gaussian_filter(noise, 2.0)
    return (10 + 100 * (smooth - smooth.min()) / np.ptp(smooth)).astype(np.float32)


def _save(path, data, affine) -> str:
    img = nib.Nifti1Image(data, affine)
    img.header.set_xyzt_units("mm")
    nib.save(img, str(path))
    return str(path)


def _smooth_field(shape, amplitude, seed) -> np.ndarray:
    """A smooth displacement ``[*shape, len(shape)]`` in voxels: an affine part plus a sine."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*(np.arange(n, dtype=np.float64) for n in shape), indexing="ij"), -1)
    centre = (np.array(shape) - 1) / 2
    linear = (grid - centre) @ (0.04 * rng.standard_normal((len(shape), len(shape))))
    wave = np.sin(grid.sum(-1, keepdims=True) / 3.0) * rng.standard_normal(len(shape))
    return (amplitude * (linear + 0.5 * wave + rng.standard_normal(len(shape)))).astype(np.float32)


@pytest.fixture
def known_network(monkeypatch):
    """``predict_pairs`` returns ``_smooth_field`` on the network grid for every pair (and, when
    ``sigma`` is set, a constant σ_z), whatever the model."""
    setting = {"amplitude": 1.0, "sigma": None}

    def predict(trainer, state, pairs, batch_size):
        n, *size = pairs["moving"].shape[:-1]
        pred = {"displacement": np.stack([_smooth_field(size, setting["amplitude"], seed=i) for i in range(n)])}
        if setting["sigma"] is not None:
            pred["sigma_z"] = np.full((n, *size, 1), setting["sigma"], np.float32)
        return pred

    monkeypatch.setattr(evaluation, "predict_pairs", predict)
    return setting


def _itk_resample(moving_path: str, warp_path: str) -> np.ndarray:
    """The moving file resampled through the ITK displacement field onto the field's grid
    (linear, 0 outside), as an array in NIfTI axis order."""
    field = sitk.ReadImage(warp_path, sitk.sitkVectorFloat64)
    reference = sitk.Image(field.GetSize(), sitk.sitkFloat32)
    reference.CopyInformation(field)
    transform = sitk.DisplacementFieldTransform(field)
    moving = sitk.ReadImage(moving_path, sitk.sitkFloat32)
    out = sitk.Resample(moving, reference, transform, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    return np.transpose(sitk.GetArrayFromImage(out))


def _interior(displacement: np.ndarray, margin: float = 1.5) -> np.ndarray:
    """Voxels at least ``margin`` voxels from the in-plane border whose sample ``x + u(x)`` also is
    (ITK and spatial.warp treat the last half voxel at the border differently: ITK clamps, the
    network's warp blends with 0). Through-plane: every slice of a stack (component 2 is 0)."""
    spatial = displacement.shape[:-1]
    grid = np.stack(np.meshgrid(*(np.arange(n) for n in spatial), indexing="ij"), -1)
    ok = np.ones(spatial, bool)
    for k in range(displacement.shape[-1]):
        if spatial[k] == 1 or not np.any(displacement[..., k]):
            continue
        for p in (grid[..., k], grid[..., k] + displacement[..., k]):
            ok &= (p >= margin) & (p <= spatial[k] - 1 - margin)
    return ok


def _check_reproduces_warped(paths, moving_path, atol=1e-3):
    warped = nib.load(paths["warped"]).get_fdata()
    itk = _itk_resample(moving_path, paths["itk_warp"]).reshape(warped.shape)
    u = nib.load(paths["displacement"]).get_fdata()
    u = u.reshape(*warped.shape, u.shape[-1])
    inside = _interior(u)
    assert inside.mean() > 0.4
    np.testing.assert_allclose(itk[inside], warped[inside], atol=atol)  # intensities span [10, 110]
    return warped, itk, inside


def _restored(data, affine, axes=(1, 0, 2), flip=0):
    """The same image stored in another voxel order: axes transposed, then axis ``flip`` reversed,
    with the affine that keeps every voxel at its world position."""
    stored = np.flip(np.transpose(data, axes), flip)
    to_old = np.zeros((4, 4))
    to_old[3, 3] = 1.0
    for k, j in enumerate(axes):  # stored index s -> original index: o[axes[k]] = s_k (reversed on flip)
        to_old[j, k] = -1.0 if k == flip else 1.0
        to_old[j, 3] = stored.shape[k] - 1 if k == flip else 0.0
    return np.ascontiguousarray(stored), affine @ to_old


def test_slice_stack_on_an_oblique_anisotropic_grid(known_network, tmp_path):
    """The moving file is stored in another voxel order (transposed, flipped) with the matching
    header: the same grid in world space, so it is accepted and the field is ITK-exact for it."""
    fixed_affine = _affine([25, -10, 40], [1.4, 0.9, 7.0], [-30, 12, 55])
    shape = (40, 36, 4)
    moving = _save(tmp_path / "m.nii.gz", *_restored(_image(shape, 1), fixed_affine))
    fixed = _save(tmp_path / "f.nii.gz", _image(shape, 2), fixed_affine)
    known_network["amplitude"] = 1.5
    paths = register.register(make_tiny_config(), "unused", moving, fixed, str(tmp_path / "out"),
                              restored=(None, None))
    img = nib.load(paths["itk_warp"])
    assert img.shape == (40, 36, 4, 1, 3) and img.get_data_dtype() == np.float32
    assert int(img.header["intent_code"]) == 1007
    np.testing.assert_allclose(img.affine, fixed_affine, atol=1e-5)
    assert int(img.header["qform_code"]) == int(img.header["sform_code"]) > 0
    field = sitk.ReadImage(paths["itk_warp"])
    assert field.GetDimension() == 3 and field.GetNumberOfComponentsPerPixel() == 3
    np.testing.assert_allclose(field.GetSpacing(), [1.4, 0.9, 7.0], rtol=1e-5)
    warped, itk, inside = _check_reproduces_warped(paths, moving)
    u = nib.load(paths["displacement"]).get_fdata()[..., 0, :]
    assert np.abs(u[..., :2]).max() > 1.0 and np.all(u[..., 2] == 0)  # a real, in-plane motion
    # the vectors are the LPS-mm difference of the moving and fixed points of every voxel
    index = np.stack(np.meshgrid(*(np.arange(n, dtype=float) for n in shape), indexing="ij"), -1)
    ras = (index + u) @ fixed_affine[:3, :3].T - index @ fixed_affine[:3, :3].T
    np.testing.assert_allclose(img.get_fdata()[..., 0, :], ras * [-1, -1, 1], atol=1e-4)


def test_a_moving_stack_on_another_grid_is_refused_or_resampled(known_network, tmp_path):
    """A moving header that puts the stack elsewhere is refused in one line naming both files;
    with resample_moving it is resampled onto the fixed grid, and the field (moving point = the
    fixed grid's point x + u) still carries ITK's resampling of the moving file onto warped.nii.gz,
    up to the second interpolation."""
    fixed_affine = _affine([25, -10, 40], [1.4, 0.9, 7.0], [-30, 12, 55])
    moving_affine = fixed_affine.copy()
    moving_affine[:3, 3] += fixed_affine[:3, :2] @ [2.0, -1.5]  # shifted in-plane by (2, -1.5) voxels
    shape = (40, 36, 4)
    moving = _save(tmp_path / "m.nii.gz", _image(shape, 1), moving_affine)
    fixed = _save(tmp_path / "f.nii.gz", _image(shape, 2), fixed_affine)
    with pytest.raises(nifti.DataError) as err:
        register.register(make_tiny_config(), "unused", moving, fixed, str(tmp_path / "out"), restored=(None, None))
    message = str(err.value)
    assert "\n" not in message and moving in message and fixed in message and "--resample_moving" in message
    known_network["amplitude"] = 0.0
    paths = register.register(make_tiny_config(), "unused", moving, fixed, str(tmp_path / "out"),
                              restored=(None, None), resample_moving=True)
    warped = nib.load(paths["warped"]).get_fdata()
    source = nib.load(moving).get_fdata()
    # zero displacement: warped(x) = moving at the fixed voxel's world point = moving voxel x - (2, -1.5)
    np.testing.assert_allclose(warped[10:30, 10:26], 0.5 * (source[8:28, 11:27] + source[8:28, 12:28]), atol=1e-3)
    itk = _itk_resample(moving, paths["itk_warp"])
    np.testing.assert_allclose(itk[10:30, 10:26], warped[10:30, 10:26], atol=1e-3)


def test_3d_volume_resized_on_an_oblique_anisotropic_grid(known_network, tmp_path):
    fixed_affine = _affine([10, 30, -20], [1.2, 0.8, 1.7], [5, 6, -7])
    shape = (22, 20, 18)
    moving = _save(tmp_path / "m.nii.gz", _image(shape, 3), fixed_affine)
    fixed = _save(tmp_path / "f.nii.gz", _image(shape, 4), fixed_affine)
    config = make_tiny_config(**{"data.dataset": "echo3d", "data.image_size": (16, 16, 16)})
    known_network["amplitude"] = 0.6
    assert register.preprocessing(config) == "resize"
    paths = register.register(config, "unused", moving, fixed, str(tmp_path / "out"), restored=(None, None))
    assert nib.load(paths["itk_warp"]).shape == (22, 20, 18, 1, 3)
    _check_reproduces_warped(paths, moving)


def test_2d_image_gets_a_2d_field(known_network, tmp_path):
    angle = np.deg2rad(35)
    affine = np.eye(4)
    affine[:2, :2] = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]) @ np.diag([0.7, 1.1])
    affine[:3, 3] = [-12, 30, 4]
    moving = _save(tmp_path / "m.nii.gz", _image((45, 38), 5), affine)
    fixed = _save(tmp_path / "f.nii.gz", _image((45, 38), 6), affine)
    config = make_tiny_config(**{"data.dataset": "camus"})
    paths = register.register(config, "unused", moving, fixed, str(tmp_path / "out"), restored=(None, None))
    img = nib.load(paths["itk_warp"])
    assert img.shape == (45, 38, 1, 1, 2)
    field = sitk.ReadImage(paths["itk_warp"])
    assert field.GetDimension() == 2 and field.GetNumberOfComponentsPerPixel() == 2
    _check_reproduces_warped(paths, moving)


def test_2d_slice_outside_the_scanner_xy_plane_gets_no_itk_field(known_network, tmp_path, capsys):
    affine = _affine([30, 0, 0], [1.0, 1.0, 1.0], [0, 0, 0])  # tilted about x: the slice leaves the x-y plane
    moving = _save(tmp_path / "m.nii.gz", _image((40, 36), 7), affine)
    paths = register.register(make_tiny_config(), "unused", moving, moving, str(tmp_path / "out"),
                              restored=(None, None))
    assert "itk_warp" not in paths and "warped" in paths
    assert "itk_warp.nii.gz not written: the fixed image's slice is not in the scanner's x-y plane" \
        in capsys.readouterr().out


def test_moving_of_another_shape_maps_to_its_own_voxels():
    """A moving image resized onto the fixed shape: the field's moving point is the moving file's
    own voxel ``s * (x + u)`` (aligned corners) in its own physical space."""
    fixed_affine, moving_affine = _affine([5, 0, 30], [1.0, 1.5, 2.0], [1, 2, 3]), _affine([0, 10, 0], [2, 2, 2], [0, 0, 0])
    fixed = nifti.Volume("f", np.zeros((9, 8, 7), np.float32), fixed_affine, nib.Nifti1Header(), (1, 1, 1), (9, 8, 7))
    moving = nifti.Volume("m", np.zeros((9, 8, 7), np.float32), moving_affine, nib.Nifti1Header(), (1, 1, 1), (5, 15, 7))
    inputs = register.Inputs(moving, fixed, None, {}, moving_shape=(5, 15, 7))
    u = _smooth_field((9, 8, 7), 0.8, seed=0)
    vectors, why = register.itk_warp(inputs, fixed, u)
    assert why == "" and vectors.shape == (9, 8, 7, 3)
    x = np.array([4, 3, 2])
    fixed_point = (fixed_affine @ [*x, 1])[:3] * [-1, -1, 1]
    moving_index = (x + u[tuple(x)]) * [4 / 8, 14 / 7, 6 / 6]
    moving_point = (moving_affine @ [*moving_index, 1])[:3] * [-1, -1, 1]
    np.testing.assert_allclose(fixed_point + vectors[tuple(x)], moving_point, atol=1e-9)


def test_units_of_metres_are_converted_to_mm():
    header = nib.Nifti1Header()
    header.set_xyzt_units("meter")
    volume = nifti.Volume("f", np.zeros((3, 3)), np.diag([0.002, 0.003, 1.0, 1.0]), header, (1, 1), (3, 3))
    np.testing.assert_allclose(nifti.mm_affine(volume), np.diag([2.0, 3.0, 1000.0, 1.0]))


def test_sigma_z_in_mm_where_the_network_voxels_are_isotropic(known_network, tmp_path, capsys):
    known_network["sigma"] = 0.5  # network voxels
    shape = (40, 36, 3)
    stack = _affine([0, 0, 20], [1.25, 1.25, 8.0], [0, 0, 0])  # isotropic in-plane
    moving = _save(tmp_path / "m.nii.gz", _image(shape, 8), stack)
    paths = register.register(make_tiny_config(), "unused", moving, moving, str(tmp_path / "a"), restored=(None, None))
    sigma_mm = nib.load(paths["sigma_z_mm"]).get_fdata()
    sigma_vox = nib.load(paths["sigma_z"]).get_fdata()
    crop = ~np.isnan(sigma_vox)
    np.testing.assert_allclose(sigma_vox[crop], 0.5, rtol=1e-6)
    np.testing.assert_allclose(sigma_mm[crop], 0.5 * 1.25, rtol=1e-5)
    # resize: 2D 45x38 image of 0.7 x 0.8 mm voxels on a 32x32 network grid: network voxels of
    # 0.7 * 44/31 = 0.994 and 0.8 * 37/31 = 0.955 mm differ by 4%: no mm map, and a line says why
    image = _save(tmp_path / "c.nii.gz", _image((45, 38), 9), np.diag([0.7, 0.8, 1.0, 1.0]))
    config = make_tiny_config(**{"data.dataset": "camus"})
    paths = register.register(config, "unused", image, image, str(tmp_path / "b"), restored=(None, None))
    assert "sigma_z_mm" not in paths and "sigma_z" in paths
    assert "sigma_z_mm.nii.gz not written: the network grid's voxels are anisotropic" in capsys.readouterr().out
    # ... whereas 0.7 x (0.7 * 44/31 * 31/37) mm voxels are isotropic on the network grid
    image = _save(tmp_path / "d.nii.gz", _image((45, 38), 9), np.diag([0.7, 0.7 * 44 / 37, 1.0, 1.0]))
    paths = register.register(config, "unused", image, image, str(tmp_path / "d"), restored=(None, None))
    np.testing.assert_allclose(nib.load(paths["sigma_z_mm"]).get_fdata(), 0.5 * 0.7 * 44 / 31, rtol=1e-4)
    rms = np.sqrt(np.mean(np.square([44 / 31, 37 / 31])))
    np.testing.assert_allclose(nib.load(paths["sigma_z"]).get_fdata(), 0.5 * rms, rtol=1e-4)


def test_an_initialised_model_writes_a_field_that_itk_applies(tmp_path):
    """End to end with a real (freshly initialised) tiny network on an oblique slice stack."""
    from hetreg_jax.train import step as steps

    config = make_tiny_config()
    trainer = steps.Trainer(config)
    affine = _affine([15, 5, -30], [1.1, 0.9, 6.0], [3, 2, 1])
    moving = _save(tmp_path / "m.nii.gz", _image((40, 36, 2), 10), affine)
    fixed = _save(tmp_path / "f.nii.gz", _image((40, 36, 2), 11), affine)
    paths = register.register(config, "unused", moving, fixed, str(tmp_path / "out"),
                              restored=(trainer, trainer.init_state()))
    assert os.path.isfile(paths["itk_warp"]) and nib.load(paths["itk_warp"]).shape == (40, 36, 2, 1, 3)
    _check_reproduces_warped(paths, moving)
