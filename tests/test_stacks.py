"""Short-axis stacks in any naming (pairs.csv with slices=yes): slice-by-slice pairs with the ACDC
crop, label maps without the myocardium, training, evaluation, inspect and register on them; the
canonical voxel order (a re-stored, flipped and transposed copy gives the same registration in world
space); and the real Sunnybrook studies when they are beside the repository."""

import csv
import json
import os

import nibabel as nib
import numpy as np
import pytest
from conftest import make_tiny_config
from scipy import ndimage
from scipy.spatial.transform import Rotation

from hetreg_jax import register
from hetreg_jax.evaluate import evaluation
from hetreg_jax.train import loop as train
from hetreg_jax.data import inspect, nifti, pipeline
from hetreg_jax.data.nifti import DataError

SUNNYBROOK = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "sunnybrook")
SHAPE = (40, 36, 4)


def _affine(angles=(20, -10, 35), spacing=(1.3, 1.3, 6.5), origin=(-20, 14, 40)) -> np.ndarray:
    a = np.eye(4)
    a[:3, :3] = Rotation.from_euler("xyz", angles, degrees=True).as_matrix() @ np.diag(spacing)
    a[:3, 3] = origin
    return a


def _heart(centre, lv_radius, myo_width, with_myo, seed):
    """An ``[X, Y, Z]`` stack: a bright LV disc (label 1) in a darker ring (label 2, ED only)."""
    x, y = np.meshgrid(np.arange(SHAPE[0]), np.arange(SHAPE[1]), indexing="ij")
    r = np.hypot(x - centre[0], y - centre[1])
    image = np.zeros(SHAPE, np.float32)
    label = np.zeros(SHAPE, np.uint8)
    rng = np.random.default_rng(seed)
    for z in range(SHAPE[2]):
        lv = r < lv_radius - 0.4 * z
        ring = (r >= lv_radius - 0.4 * z) & (r < lv_radius - 0.4 * z + myo_width)
        image[..., z] = 80 + 900 * lv + 300 * ring + 40 * rng.random(SHAPE[:2])
        label[..., z] = np.where(lv, 1, np.where(ring & with_myo, 2, 0))
    return image, label


def _save(path, data, affine):
    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    nib.save(img, str(path))


def write_stacks(root, subjects=3, slices="yes", affine=None):
    """``root/SCDnnn/{sa_ED, sa_ES, label_sa_ED, label_sa_ES}.nii.gz`` (Sunnybrook's naming) and a
    ``pairs.csv`` with a ``slices`` column and no ``subject`` column; ES labels lack the myocardium."""
    affine = _affine() if affine is None else affine
    rows = []
    for i in range(subjects):
        folder = os.path.join(root, f"SCD{i:03d}")
        os.makedirs(folder, exist_ok=True)
        centre = (14 + 3 * i, 20 - 2 * i)  # off-centre: the crop follows the ED myocardium
        for phase, radius, with_myo in (("ED", 7.0, True), ("ES", 5.5, False)):
            image, label = _heart(centre, radius, 3.0, with_myo, seed=10 * i + len(phase))
            _save(os.path.join(folder, f"sa_{phase}.nii.gz"), image, affine)
            _save(os.path.join(folder, f"label_sa_{phase}.nii.gz"), label, affine)
        rows.append({"moving": f"SCD{i:03d}/sa_ED.nii.gz", "fixed": f"SCD{i:03d}/sa_ES.nii.gz",
                     "moving_label": f"SCD{i:03d}/label_sa_ED.nii.gz",
                     "fixed_label": f"SCD{i:03d}/label_sa_ES.nii.gz", "slices": slices})
    with open(os.path.join(root, "pairs.csv"), "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return affine


def _config(root, **overrides):
    return make_tiny_config(**{"data.root": str(root), "data.structures": "lv=1,myo=2", **overrides})


def test_stacks_load_slice_by_slice_with_the_acdc_crop(tmp_path):
    write_stacks(tmp_path)
    splits = pipeline.load_splits(_config(tmp_path))
    every = pipeline.concat([splits[s] for s in pipeline.SPLITS])
    assert sorted(set(every["subject"])) == ["SCD000", "SCD001", "SCD002"]  # the folders, not "sa"
    assert len(every["pair_id"]) == 3 * SHAPE[2] and "SCD001_slice02" in every["pair_id"]
    assert every["moving"].shape == (12, 32, 32, 1) and every["moving"].min() == 0.0 and every["moving"].max() == 1.0
    np.testing.assert_allclose(every["spacing"], 1.3, rtol=1e-5)  # in-plane mm of the stack
    assert set(np.unique(every["moving_label"])) == {0, 1, 2} and set(np.unique(every["fixed_label"])) == {0, 1}
    for i, pair_id in enumerate(every["pair_id"]):
        subject, z = pair_id.split("_slice")[0], int(pair_id[-2:])
        folder = tmp_path / subject
        ed = nifti.read_stack(str(folder / "sa_ED.nii.gz"))
        label = nifti.read_stack(str(folder / "label_sa_ED.nii.gz"), label=True, like=ed).data
        # the crop is centred on the ED myocardium centroid of the mid slice (to half a voxel)
        centre = ndimage.center_of_mass(label[:, :, SHAPE[2] // 2] == 2)
        start = [int(np.floor(c + 0.5)) - 16 for c in centre]
        window = np.pad(ed.data[:, :, z], 40)[start[0] + 40:start[0] + 72, start[1] + 40:start[1] + 72]
        expected = (window - window.min()) / (window.max() - window.min())
        np.testing.assert_allclose(every["moving"][i, ..., 0], expected, atol=1e-6)


def test_an_ed_label_without_any_configured_structure_is_refused_in_one_line(tmp_path):
    write_stacks(tmp_path)
    bad = tmp_path / "SCD001" / "label_sa_ED.nii.gz"
    _save(bad, np.where(nib.load(str(bad)).get_fdata() > 0, 3, 0).astype(np.uint8), _affine())
    with pytest.raises(DataError) as err:
        pipeline.load_splits(_config(tmp_path))
    assert str(err.value).startswith(str(bad)) and "\n" not in str(err.value)
    assert "'myo=2,lv=1'" in str(err.value) and "[0, 3]" in str(err.value)
    # "auto" on a pairs.csv scores the myocardium: an LV-only ED label map is refused, naming the key
    write_stacks(tmp_path)
    _save(bad, (nib.load(str(bad)).get_fdata() == 1).astype(np.uint8), _affine())
    with pytest.raises(DataError, match=r"label_sa_ED.nii.gz: no configured structure .*'myo=2'.*data.structures"):
        pipeline.load_splits(make_tiny_config(**{"data.root": str(tmp_path)}))
    assert len(pipeline.load_splits(_config(tmp_path, **{"data.structures": "lv=1"}))["train"]["pair_id"]) > 0


def test_bad_slices_cells_and_mismatched_stacks_are_refused(tmp_path):
    write_stacks(tmp_path, slices="maybe")
    with pytest.raises(DataError, match=r"pairs.csv: line 2: slices 'maybe' is not 'yes' or 'no'"):
        pipeline.load_splits(_config(tmp_path))
    write_stacks(tmp_path)
    with pytest.raises(ValueError, match="image_size must have 2 entries"):
        pipeline.load_splits(_config(tmp_path, **{"data.image_size": (16, 16, 16)}))
    es = tmp_path / "SCD002" / "sa_ES.nii.gz"
    _save(es, nib.load(str(es)).get_fdata().astype(np.float32), _affine(origin=(-20, 14, 47)))
    with pytest.raises(DataError) as err:
        pipeline.load_splits(_config(tmp_path))
    message = str(err.value)
    assert "SCD002/sa_ED.nii.gz" in message and "SCD002/sa_ES.nii.gz" in message and "\n" not in message


def test_stacks_train_evaluate_inspect_and_register(tmp_path):
    root = tmp_path / "data"
    write_stacks(root, subjects=4)
    config = _config(root, num_steps=2, checkpoint_every=2)
    train.train_and_evaluate(config, str(tmp_path / "work"))
    metrics = json.load(open(tmp_path / "work" / "eval" / "test_metrics.json"))
    lv, myo = metrics["structures"]["lv"], metrics["structures"]["myo"]
    assert lv["n_pairs"] == 4 and 0.0 < lv["dice"]["mean"] <= 100.0  # the LV cavity on every test pair,
    assert myo["n_pairs"] == 0 and myo["n_absent"] == 4               # the myocardium on none (no ES label 2)
    with open(tmp_path / "work" / "eval" / "test_per_pair.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows and all(0.0 <= float(r["dice_lv"]) <= 100.0 for r in rows)
    assert all(r["status_myo"] == "absent" for r in rows) and all(r["status_lv"] in ("ok", "empty_prediction") for r in rows)
    inspect.run(config, str(tmp_path / "inspect"))
    summary = json.load(open(tmp_path / "inspect" / "data_summary.json"))
    assert summary["layout"] == "pairs" and sum(s["pairs"] for s in summary["splits"].values()) == 4 * SHAPE[2]
    folder = root / "SCD000"
    assert register.preprocessing(config) == "crop"
    paths = register.register(config, str(tmp_path / "work"), str(folder / "sa_ED.nii.gz"), str(folder / "sa_ES.nii.gz"),
                              str(tmp_path / "reg"), moving_label=str(folder / "label_sa_ED.nii.gz"),
                              fixed_label=str(folder / "label_sa_ES.nii.gz"))
    warped = nib.load(paths["warped"])
    assert warped.shape == SHAPE and np.allclose(warped.affine, nib.load(str(folder / "sa_ES.nii.gz")).affine)
    scores = json.load(open(paths["label_metrics"]))["labels"]
    assert 0.0 < scores["1"]["dice"] <= 100.0 and "2" not in scores  # no ES myocardium: not scored


def _restore_copy(data, affine):
    """The stack stored with its slice axis first, in-plane axes swapped and two axes reversed,
    with the affine that keeps every voxel at its world position (and the map back)."""
    stored = np.transpose(data, (2, 1, 0))[::-1, :, ::-1]
    n = data.shape
    # stored index (a, b, c) is original index (n0 - 1 - c, b, n2 - 1 - a)
    to_orig = np.array([[0, 0, -1, n[0] - 1], [0, 1, 0, 0], [-1, 0, 0, n[2] - 1], [0, 0, 0, 1]], float)
    return np.ascontiguousarray(stored), affine @ to_orig


def test_a_flipped_transposed_copy_registers_the_same_in_world_space(tmp_path, monkeypatch):
    """The network's field depends on the image it sees, so a copy read in another voxel order
    would give another field; the canonical order makes every output the same in world space."""
    def predict(trainer, state, pairs, batch_size):
        smooth = ndimage.gaussian_filter(pairs["moving"][..., 0] - pairs["fixed"][..., 0], (0, 2, 2))
        gx, gy = np.gradient(smooth, axis=1), np.gradient(smooth, axis=2)
        return {"displacement": (8.0 * np.stack([gx, gy + 0.3 * smooth], -1)).astype(np.float32)}

    monkeypatch.setattr(evaluation, "predict_pairs", predict)
    affine = _affine()
    ed, ed_label = _heart((16, 19), 7.0, 3.0, True, seed=1)
    es, _ = _heart((17, 18), 5.5, 3.0, False, seed=2)
    outputs = {}
    for name, transform in (("orig", lambda d, a: (d, a)), ("copy", _restore_copy)):
        for stem, data in (("ed", ed), ("es", es), ("ed_gt", ed_label)):
            stored, stored_affine = transform(data, affine)
            _save(tmp_path / f"{name}_{stem}.nii.gz", stored, stored_affine)
        outputs[name] = register.register(make_tiny_config(), "unused", str(tmp_path / f"{name}_ed.nii.gz"),
                                          str(tmp_path / f"{name}_es.nii.gz"), str(tmp_path / name),
                                          moving_label=str(tmp_path / f"{name}_ed_gt.nii.gz"), restored=(None, None))
    copy_affine = _restore_copy(es, affine)[1]
    def back(a):  # stored order -> original order (trailing vector axes kept)
        return np.transpose(a[::-1, :, ::-1], (2, 1, 0, *range(3, a.ndim)))
    for key in ("warped", "warped_label"):
        orig, copy = (nib.load(outputs[n][key]) for n in ("orig", "copy"))
        np.testing.assert_allclose(copy.affine, copy_affine, atol=1e-5)  # written in the copy's own order
        assert np.abs(orig.get_fdata()).max() == (2 if key == "warped_label" else pytest.approx(orig.get_fdata().max()))
        assert key == "warped_label" or orig.get_fdata().max() > 500
        np.testing.assert_allclose(back(copy.get_fdata()), orig.get_fdata(), atol=1e-3)
    u = {n: nib.load(outputs[n]["displacement"]).get_fdata()[..., 0, :] for n in ("orig", "copy")}
    assert np.abs(u["orig"]).max() > 0.5 and np.all(u["orig"][..., 2] == 0)
    world = {"orig": u["orig"] @ affine[:3, :3].T, "copy": back(u["copy"] @ copy_affine[:3, :3].T)}
    np.testing.assert_allclose(world["copy"], world["orig"], atol=1e-4)  # the same motion in mm
    itk = {n: nib.load(outputs[n]["itk_warp"]).get_fdata()[..., 0, :] for n in ("orig", "copy")}
    np.testing.assert_allclose(back(itk["copy"]), itk["orig"], atol=1e-4)


@pytest.mark.skipif(not os.path.isdir(SUNNYBROOK), reason="no Sunnybrook copy beside the repo (../shared/data)")
def test_real_sunnybrook_studies_load_and_train(tmp_path):
    """The five Sunnybrook studies (Radau et al., MIDAS Journal 2009, CC0) through a pairs.csv of
    slices: 9-11 slices each, the myocardium labelled at ED only; 2 training steps."""
    root = tmp_path / "sb"
    root.mkdir()
    studies = sorted(d for d in os.listdir(SUNNYBROOK) if d.startswith("SCD"))
    with open(root / "pairs.csv", "w", newline="", encoding="utf-8") as f:
        f.write("moving,fixed,moving_label,fixed_label,slices\n")
        for s in studies:
            path = os.path.abspath(os.path.join(SUNNYBROOK, s))
            f.write(f"{path}/sa_ED.nii.gz,{path}/sa_ES.nii.gz,{path}/label_sa_ED.nii.gz,{path}/label_sa_ES.nii.gz,yes\n")
    config = _config(root, num_steps=2, checkpoint_every=2, **{"data.image_size": (64, 64)})
    splits = pipeline.load_splits(config)
    every = pipeline.concat([splits[s] for s in pipeline.SPLITS])
    assert sorted(set(every["subject"])) == studies and 45 <= len(every["pair_id"]) <= 55
    assert every["spacing"].min() > 1.2 and every["spacing"].max() < 1.4
    assert not (every["fixed_label"] == 2).any() and (every["moving_label"] == 2).any()
    lv_ed = (every["moving_label"] == 1).reshape(len(every["pair_id"]), -1).sum(1)
    lv_es = (every["fixed_label"] == 1).reshape(len(every["pair_id"]), -1).sum(1)
    assert lv_ed.sum() > lv_es.sum() > 0  # ED was assigned by the larger LV cavity
    train.train_and_evaluate(config, str(tmp_path / "work"))
    with open(tmp_path / "work" / "eval" / "test_per_pair.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    scored = [float(r["dice_lv"]) for r in rows if r["status_lv"] in ("ok", "empty_prediction")]
    assert scored and all(0.0 <= d <= 100.0 for d in scored)
