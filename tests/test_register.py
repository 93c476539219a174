"""--mode=register: preprocessing like training, mapping back to the fixed grid, NIfTI outputs."""

import os

import nibabel as nib
import numpy as np
import pytest
from conftest import make_tiny_config

from hetreg_jax import register
from hetreg_jax.train import loop as train
from hetreg_jax.data import layouts, nifti, preprocess

EDGE = 2  # crop windows of 32 in 40x36 slices


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """ACDC and CAMUS layouts, and a workdir trained for 2 steps on the ACDC one."""
    base = tmp_path_factory.mktemp("register")
    layouts.write_acdc(str(base / "acdc"), 4, size=(40, 36), slices=3, seed=0)
    layouts.write_camus(str(base / "camus"), 3, size=(45, 38), seed=0)
    config = make_tiny_config(**{"data.root": str(base / "acdc"), "num_steps": 2, "checkpoint_every": 2})
    train.train_and_evaluate(config, str(base / "work"))
    return base


def _config(root):
    return make_tiny_config(**{"data.root": str(root)})


def _outputs(out):
    return {name: nib.load(os.path.join(out, f"{name}.nii.gz")) for name in
            ("warped", "displacement", "log_variance", "weight", "warped_label")}


def test_acdc_stack_registered_to_itself(trained, tmp_path):
    folder = trained / "acdc" / "training" / "patient002"
    image, label = folder / "patient002_frame01.nii.gz", folder / "patient002_frame01_gt.nii.gz"
    register.register(_config(trained / "acdc"), str(trained / "work"), str(image), str(image),
                      str(tmp_path), moving_label=str(label))
    src = nib.load(str(image))
    raw = src.get_fdata()
    out = _outputs(tmp_path)
    for img in out.values():  # the fixed image's geometry survives the round trip
        np.testing.assert_allclose(img.affine, src.affine, atol=1e-6)
        assert int(img.header["sform_code"]) == int(src.header["sform_code"]) == 1
    u = out["displacement"].get_fdata()
    assert u.shape == (40, 36, 3, 1, 3) and out["displacement"].header.get_intent()[0] == "vector"
    assert np.abs(u).max() < 0.05 and np.all(u[..., 2] == 0)
    warped = out["warped"].get_fdata()
    assert warped.shape == raw.shape
    assert np.abs(warped - raw).max() < 0.05 * np.abs(np.gradient(raw, axis=(0, 1))).max()
    outside = np.all(u == 0, axis=(-1, -2))
    assert outside.any() and np.array_equal(warped[outside], raw[outside])  # exactly the input
    assert np.mean(np.asarray(out["warped_label"].dataobj) == np.asarray(nib.load(str(label)).dataobj)) > 0.99
    log_var = out["log_variance"].get_fdata()
    assert np.array_equal(np.isnan(log_var), outside)  # not predicted outside the crop
    weight = out["weight"].get_fdata()[~outside]
    foreground = weight > 0  # the SNR weight is 0 outside the foreground mask (zero padding)
    assert foreground.mean() > 0.5
    assert weight[foreground].min() >= 0.5 - 1e-6 and weight.max() <= 1 / (1 + np.exp(-1)) + 1e-6
    assert os.path.getsize(tmp_path / "overview.png") > 10_000


def test_camus_view_registered_to_itself_via_resize(trained, tmp_path):
    image = trained / "camus" / "database_nifti" / "patient0001" / "patient0001_2CH_ES.nii.gz"
    paths = register.register(_config(trained / "camus"), str(trained / "work"), str(image), str(image),
                              str(tmp_path))
    assert "warped_label" not in paths
    src = nib.load(str(image))
    u = nib.load(paths["displacement"])
    assert u.shape == (45, 38, 1, 1, 2) and np.allclose(u.affine, src.affine)
    assert np.abs(u.get_fdata()).max() < 0.05
    warped = nib.load(paths["warped"])
    assert warped.shape == (45, 38) and np.allclose(warped.affine, src.affine)
    raw = src.get_fdata()
    assert np.abs(warped.get_fdata() - raw).max() < 0.05 * np.abs(np.gradient(raw)).max()


def _inputs(fixed_shape, crop_start=None):
    fixed = nifti.Volume("f", np.zeros(fixed_shape, np.float32), np.eye(4), nib.Nifti1Header(),
                         (1.0,) * len(fixed_shape), fixed_shape)
    return register.Inputs(fixed, fixed, None, {}, crop_start)


def test_resized_prediction_is_mapped_back_in_fixed_grid_voxels():
    pred = {"displacement": np.broadcast_to(np.float32([1.0, -2.0]), (1, 32, 32, 2)),
            "log_var": np.full((1, 32, 32, 1), -3.0, np.float32)}
    full = register.to_fixed_grid(_inputs((45, 38)), pred)
    expected = np.array([1.0 * 44 / 31, -2.0 * 37 / 31])  # vectors scaled by (n_fixed - 1) / (n_net - 1)
    np.testing.assert_allclose(full["displacement"], np.broadcast_to(expected, (45, 38, 2)), rtol=1e-6)
    np.testing.assert_allclose(full["log_var"], -3.0)
    # a field that moves every point of the network grid by one network voxel along axis 0 moves
    # the resized image by the same physical amount: warping the full-res ramp shifts it by 44/31
    ramp = np.repeat(np.arange(45, dtype=np.float32)[:, None], 38, axis=1)
    one = {"displacement": np.broadcast_to(np.float32([1.0, 0.0]), (1, 32, 32, 2))}
    warped = register.warp_full(ramp, register.to_fixed_grid(_inputs((45, 38)), one)["displacement"], False)
    np.testing.assert_allclose(warped[:40], ramp[:40] + 44 / 31, atol=1e-4)


def test_cropped_prediction_is_placed_back_in_the_slice():
    start = (-3, 6)  # the window leaves the 40x36 slice at the top
    disp = np.zeros((2, 32, 32, 2), np.float32)
    disp[..., 0] = 1.0
    pred = {"displacement": disp, "weight": np.full((2, 32, 32, 1), 0.6, np.float32)}
    full = register.to_fixed_grid(_inputs((40, 36, 2), start), pred)
    inside = np.zeros((40, 36), bool)
    inside[0:29, 6:36] = True
    assert full["displacement"].shape == (40, 36, 2, 3)
    np.testing.assert_array_equal(full["displacement"][..., 0], np.stack([np.where(inside, 1.0, 0.0)] * 2, -1))
    assert np.all(full["displacement"][..., 1:] == 0)
    np.testing.assert_array_equal(np.isnan(full["weight"]), ~inside[..., None].repeat(2, -1))
    image = np.random.default_rng(0).random((40, 36, 2)).astype(np.float32)
    warped = register.warp_full(image, full["displacement"], slicewise=True)
    np.testing.assert_allclose(warped[0:28, 6:36], image[1:29, 6:36], atol=1e-6)  # moved one row inside
    np.testing.assert_array_equal(warped[~inside], image[~inside])                # untouched outside


def test_labels_are_warped_by_the_most_likely_value():
    label = np.zeros((12, 10), np.uint8)
    label[3:7, 2:6], label[7:9, 2:6] = 2, 3
    shift = np.zeros((12, 10, 2), np.float32)
    shift[..., 1] = 2.0  # warped(x) = label(x + 2 along axis 1)
    np.testing.assert_array_equal(register.warp_labels(label, shift, False),
                                  np.concatenate([label[:, 2:], np.zeros((12, 2), np.uint8)], axis=1))


def test_preprocessing_follows_the_layout(trained):
    assert register.preprocessing(_config(trained / "acdc")) == "crop"
    assert register.preprocessing(_config(trained / "camus")) == "resize"
    assert register.preprocessing(make_tiny_config(**{"data.dataset": "echo3d"})) == "resize"
    assert register.preprocessing(make_tiny_config()) == "crop"


def test_missing_checkpoint_is_one_line_naming_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        register.restore(make_tiny_config(), str(tmp_path / "nowhere"))
    assert str(info.value).startswith(f"no checkpoint in {tmp_path / 'nowhere' / 'checkpoints'}")
    assert not (tmp_path / "nowhere").exists()


def test_preprocess_crop_and_uncrop_are_inverse():
    image = np.arange(40 * 36, dtype=np.float32).reshape(40, 36)
    start = preprocess.crop_start((3.4, 30.6), (32, 32))
    assert start == (3 - 16, 31 - 16)
    window = preprocess.crop(image, start, (32, 32))
    assert window[16, 16] == image[3, 31] and window[0, 0] == 0
    back = preprocess.uncrop(window, start, (40, 36), fill=-1)
    inside = back != -1
    np.testing.assert_array_equal(back[inside], image[inside])
    assert inside.sum() == (3 + 16) * (36 - 15)


def test_moving_of_another_shape_is_refused_or_resampled_onto_the_fixed_grid(tmp_path):
    ramp = np.add.outer(np.arange(30.0), np.zeros(20)).astype(np.float32)
    nib.save(nib.Nifti1Image(ramp, np.diag([2.0, 2.0, 1.0, 1.0])), tmp_path / "m.nii.gz")
    fixed = np.random.default_rng(0).random((45, 38)).astype(np.float32)
    nib.save(nib.Nifti1Image(fixed, np.eye(4)), tmp_path / "f.nii.gz")
    with pytest.raises(nifti.DataError, match="m.nii.gz: grid of shape .*f.nii.gz.*--resample_moving"):
        register.prepare("resize", tmp_path / "m.nii.gz", tmp_path / "f.nii.gz", None, (32, 32))
    inputs = register.prepare("resize", tmp_path / "m.nii.gz", tmp_path / "f.nii.gz", None, (32, 32),
                              resample_moving=True)
    assert inputs.pairs["moving"].shape == (1, 32, 32, 1) and inputs.crop_start is None
    # through the affines: fixed voxel (i, j) is moving voxel (i / 2, j / 2), whose ramp value is i / 2
    np.testing.assert_allclose(inputs.moving.data, np.add.outer(np.arange(45) / 2, np.zeros(38)), atol=1e-5)
    np.testing.assert_allclose(inputs.pairs["moving"][0, :, 0, 0], np.arange(32) / 31, atol=1e-6)


def test_a_2d_slice_pair_registers_on_its_own_grid_and_reports_label_metrics(trained, tmp_path):
    """A true 2D [X, Y] NIfTI pair (many cardiac datasets ship slices) in the ACDC path: outputs
    stay 2D on the slice's grid, and --fixed_label scores the warped label (here against itself)."""
    folder = trained / "acdc" / "training" / "patient002"
    src = nib.load(str(folder / "patient002_frame01.nii.gz"))
    paths = {}
    for name, suffix in (("image", ""), ("label", "_gt")):
        stack = nib.load(str(folder / f"patient002_frame01{suffix}.nii.gz"))
        paths[name] = str(tmp_path / f"slice{suffix}.nii.gz")
        nib.save(nib.Nifti1Image(np.asarray(stack.dataobj)[:, :, 1], src.affine, stack.header), paths[name])
    out_dir = tmp_path / "out"
    written = register.register(_config(trained / "acdc"), str(trained / "work"), paths["image"], paths["image"],
                                str(out_dir), moving_label=paths["label"], fixed_label=paths["label"])
    out = _outputs(out_dir)
    assert out["warped"].shape == out["weight"].shape == out["warped_label"].shape == (40, 36)
    assert out["displacement"].shape == (40, 36, 1, 1, 2)  # D = the fixed image's 2 axes
    import json
    with open(written["label_metrics"]) as f:
        scores = json.load(f)["labels"]
    label = np.asarray(nib.load(paths["label"]).dataobj)
    assert set(scores) == {str(v) for v in np.unique(label) if v}
    warped = np.asarray(out["warped_label"].dataobj)
    for value, entry in scores.items():  # the numbers are those of the written warped label
        a, b = label == int(value), warped == int(value)
        assert entry["dice"] == pytest.approx(200.0 * (a & b).sum() / (a.sum() + b.sum()))
        assert entry["dice"] > 90 and entry["hd_px"] <= 2.0


def test_label_metrics_on_a_shifted_square():
    reference = np.zeros((20, 20), np.uint8)
    reference[5:11, 5:11] = 2
    warped = np.roll(reference, 2, axis=0)  # 6x6 square moved by 2 rows: overlap 4x6
    (value, e), = register.label_metrics(warped, reference, (1.5, 1.0)).items()
    assert value == "2" and e["dice"] == pytest.approx(100.0 * 2 * 24 / 72)
    assert e["hd_px"] == pytest.approx(2.0) and e["hd_mm"] == pytest.approx(3.0)  # 2 rows of 1.5 mm


def test_acdc_frames_given_as_2d_slices_load_as_one_slice_stacks(trained, tmp_path):
    from hetreg_jax.data import acdc

    source = trained / "acdc" / "training" / "patient002"
    folder = tmp_path / "patient002"
    folder.mkdir()
    for path in source.iterdir():
        if path.name.endswith(".cfg"):
            (folder / path.name).write_text(path.read_text())
        elif "_frame" in path.name:
            img = nib.load(str(path))
            nib.save(nib.Nifti1Image(np.asarray(img.dataobj)[:, :, 1], img.affine, img.header), str(folder / path.name))
    frames = acdc.read_frames(str(folder))
    assert frames["ed"].data.shape == frames["es_gt"].data.shape == (40, 36, 1)
    assert frames["ed"].file_shape == (40, 36)
