"""On-disk dataset loaders on files written in the published layouts (hetreg_jax.data.layouts)."""

import json
import os
import shutil
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
from conftest import make_tiny_config
from scipy import ndimage

from hetreg_jax.data import acdc, inspect, layouts, nifti, pipeline, preprocess
from hetreg_jax.data.nifti import DataError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE = (32, 32)


def _config(root, **overrides):
    return make_tiny_config(**{"data.root": str(root), **overrides})


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    base = tmp_path_factory.mktemp("layouts")
    layouts.write_acdc(str(base / "acdc"), 5, size=(40, 36), slices=3, seed=0, testing=2)
    layouts.write_acdc(str(base / "acdc_flat"), 5, size=(40, 36), slices=3, seed=1)
    layouts.write_camus(str(base / "camus"), 5, size=(45, 38), seed=0)
    layouts.write_camus(str(base / "camus_split"), 4, size=(45, 38), seed=2, split_files=True)
    layouts.write_pairs(str(base / "pairs"), 4, size=(20, 18, 22), seed=0, split_column=True)
    return base


def _subjects(pair_set):
    return set(pair_set["subject"])


# ----------------------------------------------------------------------------------------- ACDC
def test_acdc_one_pair_per_slice_and_testing_folder_is_test(roots):
    splits = pipeline.load_splits(_config(roots / "acdc"))
    assert {k: len(_subjects(s)) for k, s in splits.items()} == {"train": 4, "val": 1, "test": 2}
    assert _subjects(splits["test"]) == {"patient006", "patient007"}
    assert _subjects(splits["train"]) | _subjects(splits["val"]) == {f"patient{i:03d}" for i in range(1, 6)}
    for s in splits.values():
        assert pipeline.num_pairs(s) == 3 * len(_subjects(s))  # 3 slices per patient
        assert s["moving"].shape[1:] == (*SIZE, 1) and s["moving_label"].dtype == np.uint8
    ids = sum((s["pair_id"] for s in splits.values()), [])
    assert len(set(ids)) == len(ids) == 21 and "patient001_slice02" in ids


def test_acdc_crop_is_centred_on_the_ed_mid_slice_myocardium(roots):
    splits = pipeline.load_splits(_config(roots / "acdc"))
    padded_somewhere = False
    for s in splits.values():
        for i, pair_id in enumerate(s["pair_id"]):
            patient, z = pair_id.split("_slice")[0], int(pair_id[-2:])
            split_dir = "testing" if patient in ("patient006", "patient007") else "training"
            folder = roots / "acdc" / split_dir / patient
            es = int(acdc.read_info(str(folder / "Info.cfg"))["ES"])
            # the loader reads every stack in its canonical voxel order (nifti.canonical_axes)
            ed_raw = nifti.read_stack(str(folder / f"{patient}_frame01.nii.gz")).data
            es_raw = nifti.read_stack(str(folder / f"{patient}_frame{es:02d}.nii.gz")).data
            ed_gt = nifti.read_stack(str(folder / f"{patient}_frame01_gt.nii.gz"), label=True).data
            centre = ndimage.center_of_mass(ed_gt[:, :, 1] == 2)  # mid slice of 3
            start = [int(np.floor(c + 0.5)) - 16 for c in centre]
            if z == 1:  # the crop's myocardium centroid is the crop centre (to half a voxel)
                local = ndimage.center_of_mass(s["moving_label"][i] == 2)
                assert np.all(np.abs(np.array(local) - 16) <= 0.5)
            for key, raw in (("moving", ed_raw), ("fixed", es_raw)):  # same window in ED and ES
                big = np.pad(raw[:, :, z], 40)
                window = big[start[0] + 40:start[0] + 72, start[1] + 40:start[1] + 72]
                expected = (window - window.min()) / (window.max() - window.min())
                np.testing.assert_allclose(s[key][i, ..., 0], expected, atol=1e-6)
            padded_somewhere |= min(start) < 0 or start[0] + 32 > ed_raw.shape[0] or start[1] + 32 > ed_raw.shape[1]
    assert padded_somewhere  # the layout writer puts hearts off-centre: the zero padding is exercised


def test_acdc_without_testing_splits_patients_60_20_20_seeded(roots):
    def split_of(seed):
        splits = pipeline.load_splits(_config(roots / "acdc_flat", seed=seed))
        return {k: sorted(_subjects(s)) for k, s in splits.items()}
    first = split_of(0)
    assert [len(v) for v in first.values()] == [3, 1, 1]
    assert sorted(sum(first.values(), [])) == [f"patient{i:03d}" for i in range(1, 6)]
    assert split_of(0) == first
    assert any(split_of(seed) != first for seed in (1, 2, 3))


def test_split_names_fractions_and_minimums():
    names = [f"p{i:02d}" for i in range(10)]
    parts = pipeline.split_names(names, 0, (0.6, 0.2, 0.2))
    assert [len(p) for p in parts] == [6, 2, 2] and sorted(sum(parts, [])) == names
    assert [len(p) for p in pipeline.split_names(names, 0, (0.8, 0.2))] == [8, 2]
    assert [len(p) for p in pipeline.split_names(names[:3], 0, (0.6, 0.2, 0.2))] == [1, 1, 1]
    fractions = (0.6, 0.2, 0.2)
    assert pipeline.split_names(names[::-1], 5, fractions) == pipeline.split_names(names, 5, fractions)
    with pytest.raises(ValueError, match="need at least 3"):
        pipeline.split_names(names[:2], 0, (0.6, 0.2, 0.2))


# ---------------------------------------------------------------------------------------- CAMUS
def test_camus_two_views_per_patient_resized_with_nearest_labels(roots):
    splits = pipeline.load_splits(_config(roots / "camus"))
    assert [len(_subjects(s)) for s in splits.values()] == [3, 1, 1]
    for s in splits.values():
        assert pipeline.num_pairs(s) == 2 * len(_subjects(s))
        assert s["moving"].shape[1:] == (*SIZE, 1)
    train = splits["train"]
    i = train["pair_id"].index(f"{train['subject'][0]}_4CH")
    folder = roots / "camus" / "database_nifti" / train["subject"][0]
    raw_gt = np.asarray(nib.load(str(folder / f"{train['subject'][0]}_4CH_ES_gt.nii.gz")).dataobj)
    rows = np.rint(np.arange(32) * 44 / 31).astype(int)  # aligned corners, 45 -> 32
    cols = np.rint(np.arange(32) * 37 / 31).astype(int)  # 38 -> 32
    np.testing.assert_array_equal(train["fixed_label"][i], raw_gt[np.ix_(rows, cols)])
    img = train["fixed"][i, ..., 0]
    assert img.min() == 0.0 and img.max() == 1.0
    spacing = nib.load(str(folder / f"{train['subject'][0]}_4CH_ES.nii.gz")).header.get_zooms()[:2]
    np.testing.assert_allclose(train["spacing"][i], np.array(spacing) * [44 / 31, 37 / 31], rtol=1e-5)


def test_camus_official_split_files_are_used(roots):
    split_dir = roots / "camus_split" / "database_split"
    expected = {k: (split_dir / f"subgroup_{f}.txt").read_text().split()
                for k, f in (("train", "training"), ("val", "validation"), ("test", "testing"))}
    for seed in (0, 3):  # the files decide, not the seed
        splits = pipeline.load_splits(_config(roots / "camus_split", seed=seed))
        assert {k: sorted(_subjects(s)) for k, s in splits.items()} == expected


def test_resize_is_antialiased_and_aligned_at_the_corners():
    checker = np.indices((64, 64)).sum(0) % 2 * 2.0 - 1.0  # Nyquist-frequency pattern
    assert np.abs(preprocess.resize(checker, (16, 16))).max() < 0.05
    assert np.abs(preprocess.resize(checker, (16, 16), order=0)).min() == 1.0  # labels never blurred
    ramp = np.add.outer(np.arange(16.0), 2 * np.arange(12.0))
    up = preprocess.resize(ramp, (31, 23))  # upsampling: exact on a linear image
    np.testing.assert_allclose(up, np.add.outer(np.arange(31) * 15 / 30, 2 * np.arange(23) * 11 / 22), atol=1e-5)
    field = np.ones((16, 12, 2), np.float32)
    np.testing.assert_allclose(preprocess.resize_field(field, (31, 23)), np.broadcast_to([2.0, 2.0], (31, 23, 2)))


# ---------------------------------------------------------------------------------------- pairs
def test_pairs_csv_volumes_resampled_with_split_column(roots):
    root = roots / "pairs"
    config = _config(root, **{"data.image_size": (16, 16, 16)})
    splits = pipeline.load_splits(config)
    rows = (root / "pairs.csv").read_text().splitlines()[1:]
    expected = {s: {f"subject{i:03d}" for i, r in enumerate(rows) if r.endswith("," + s)} for s in pipeline.SPLITS}
    assert {k: _subjects(v) for k, v in splits.items()} == expected
    assert sum(pipeline.num_pairs(s) for s in splits.values()) == 4
    train = splits["train"]
    assert train["moving"].shape[1:] == (16, 16, 16, 1) and set(np.unique(train["moving_label"])) <= {0, 1, 2}
    np.testing.assert_allclose(train["spacing"][0], 0.7 * np.array([19, 17, 21]) / 15, rtol=1e-5)


def test_layout_detection(roots, tmp_path):
    assert pipeline.detect_layout(str(roots / "acdc")) == "acdc"
    assert pipeline.detect_layout(str(roots / "camus")) == "camus"
    assert pipeline.detect_layout(str(roots / "pairs"), "echo3d") == "pairs"
    (tmp_path / "training").mkdir()
    (tmp_path / "pairs.csv").write_text("moving,fixed,moving_label,fixed_label\n")
    assert pipeline.detect_layout(str(tmp_path), "acdc") == "acdc"
    assert pipeline.detect_layout(str(tmp_path), "echo3d") == "pairs"
    with pytest.raises(DataError, match="unknown dataset layout"):
        pipeline.detect_layout(str(tmp_path / "training"))


# --------------------------------------------------------------------------------------- errors
def _bad_patient(roots, tmp_path, break_it):
    """A one-patient copy of ACDC patient001, broken by ``break_it(folder)``; returns the path
    ``break_it`` names as the culprit."""
    folder = tmp_path / "training" / "patient001"
    shutil.copytree(roots / "acdc_flat" / "training" / "patient001", folder)
    return folder, break_it(folder)


def _replace(path, data):
    old = nib.load(str(path))
    nib.save(nib.Nifti1Image(data, old.affine), str(path))
    return path


def _es(folder):
    return int(acdc.read_info(str(folder / "Info.cfg"))["ES"])


BREAKS = {
    "missing Info.cfg field": (lambda f: (f / "Info.cfg").write_text("ED: 1\nNbFrame: 20\n") and f / "Info.cfg",
                               "missing field 'ES'"),
    "absent frame file": (lambda f: (os.remove(f / f"patient001_frame{_es(f):02d}_gt.nii.gz"),
                                     f / f"patient001_frame{_es(f):02d}_gt.nii.gz")[1], "file not found"),
    "label map without myocardium": (
        lambda f: _replace(f / "patient001_frame01_gt.nii.gz", np.ones((40, 36, 3), np.uint8)), "without myocardium"),
    "image/label shape mismatch": (
        lambda f: _replace(f / "patient001_frame01_gt.nii.gz", np.full((40, 30, 3), 2, np.uint8)),
        "differs from the image shape"),
    "non-finite voxels": (lambda f: _replace(f / "patient001_frame01.nii.gz",
                                             np.where(np.eye(40, 36)[..., None] > 0, np.nan, 1.0) * np.ones(3)),
                          "non-finite"),
    "constant image": (lambda f: _replace(f / "patient001_frame01.nii.gz", np.full((40, 36, 3), 7.0)),
                       "constant image"),
    "truncated .nii.gz": (lambda f: (f / "patient001_frame01.nii.gz").write_bytes(
        (f / "patient001_frame01.nii.gz").read_bytes()[:400]) and f / "patient001_frame01.nii.gz", "cannot read NIfTI"),
    "corrupt .nii.gz": (lambda f: (f / "patient001_frame01.nii.gz").write_bytes(b"\x1f\x8bnot really gzip" * 40)
                        and f / "patient001_frame01.nii.gz", "cannot read NIfTI"),
    "4D file where 3D is expected": (
        lambda f: _replace(f / "patient001_frame01.nii.gz", np.random.rand(40, 36, 3, 2)),
        "4D image of shape (40, 36, 3, 2) where a 3D image is expected"),
}


@pytest.mark.parametrize("case", list(BREAKS))
def test_bad_input_gives_one_line_naming_the_file(roots, tmp_path, case):
    break_it, cause = BREAKS[case]
    folder, culprit = _bad_patient(roots, tmp_path, break_it)
    with pytest.raises(DataError) as info:
        acdc.load_patient(str(folder), SIZE)
    message = str(info.value)
    assert message.startswith(str(culprit) + ": ") and cause in message and "\n" not in message


def test_training_refuses_bad_data_and_inspect_lists_it(roots, tmp_path):
    root = tmp_path / "acdc"
    shutil.copytree(roots / "acdc_flat", root)
    cfg = root / "training" / "patient003" / "Info.cfg"
    cfg.write_text("ES: 9\n")
    with pytest.raises(DataError, match="missing field 'ED'"):
        pipeline.load_splits(_config(root))
    summary = inspect.run(_config(root), str(tmp_path / "work"))
    assert summary["skipped"] == [{"subject": "patient003", "reason": f"{cfg}: missing field 'ED' "
                                   "(expected a line 'ED: <frame number>')"}]
    assert sum(s["patients"] for s in summary["splits"].values()) == 4
    assert sum(s["pairs"] for s in summary["splits"].values()) == 12
    on_disk = json.loads((tmp_path / "work" / "data_summary.json").read_text())
    assert on_disk["image_shape"] == [32, 32] and on_disk["label_values"] == [0, 1, 2, 3]
    assert on_disk["intensity_range"] == [0.0, 1.0] and on_disk["raw_intensity_range"][0] == 0.0
    assert os.path.getsize(tmp_path / "work" / "inspect.png") > 10_000


def test_nifti_reader_squeezes_trailing_singletons_and_writer_keeps_geometry(tmp_path):
    affine = np.array([[0, -1.5, 0, 10], [1.2, 0, 0, -4], [0, 0, 3, 7], [0, 0, 0, 1]])
    data = np.random.rand(6, 5, 1).astype(np.float32)
    src = nib.Nifti1Image(data, affine)
    src.set_sform(affine, code=2)
    nib.save(src, tmp_path / "a.nii.gz")
    vol = nifti.read_image(tmp_path / "a.nii.gz", 2)
    # canonical order: file axis 1 (along -x) first, reversed, then file axis 0 (along +y)
    assert vol.data.shape == (5, 6) and vol.file_shape == (6, 5, 1) and vol.spacing == pytest.approx((1.5, 1.2))
    assert vol.axes == (1, 0) and vol.flips == (True, False)
    np.testing.assert_array_equal(vol.data, data[:, ::-1, 0].T)
    np.testing.assert_allclose(vol.affine[:3, :2], [[1.5, 0], [0, 1.2], [0, 0]])
    np.testing.assert_array_equal(vol.to_file(vol.data), data[..., 0])
    nifti.write(tmp_path / "b.nii.gz", vol.to_file(vol.data), vol.file_affine, vol.header, vol.file_shape)
    nifti.write_vector(tmp_path / "c.nii.gz", np.zeros((6, 5, 2)), vol.file_affine, vol.header)
    for name, shape in (("b", (6, 5, 1)), ("c", (6, 5, 1, 1, 2))):
        out = nib.load(tmp_path / f"{name}.nii.gz")
        assert out.shape == shape and np.allclose(out.affine, affine)
        assert int(out.header["sform_code"]) == 2
    assert nib.load(tmp_path / "c.nii.gz").header.get_intent()[0] == "vector"
    with pytest.raises(DataError, match=r"5D image of shape \(6, 5, 1, 1, 2\) where a 2D image"):
        nifti.read_image(tmp_path / "c.nii.gz", 2)  # [6, 5, 1, 1, 2]: trailing 2 is not squeezed


# ------------------------------------------------------------------------------------------ CLI
def test_layout_cli_and_main_inspect(tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-m", "hetreg_jax.data.layouts", "--layout=camus",
                          f"--out={tmp_path / 'camus'}", "--subjects=3", "--size=40,34"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    names = sorted(os.listdir(tmp_path / "camus" / "database_nifti" / "patient0002"))
    assert names == sorted(["Info_2CH.cfg", "Info_4CH.cfg"] + [
        f"patient0002_{v}_{p}{g}.nii.gz" for v in ("2CH", "4CH") for p in ("ED", "ES") for g in ("", "_gt")])
    os.remove(tmp_path / "camus" / "database_nifti" / "patient0003" / "patient0003_4CH_ES.nii.gz")
    cmd = [sys.executable, "main.py", "--config=configs/camus.py", f"--config.data.root={tmp_path / 'camus'}",
           "--config.data.image_size=(32,32)", f"--workdir={tmp_path / 'w'}"]
    out = subprocess.run(cmd + ["--mode=inspect"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "skipped subjects: 1" in out.stdout and "patient0003_4CH_ES.nii.gz: file not found" in out.stdout
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    bad = tmp_path / "camus" / "database_nifti" / "patient0003" / "patient0003_4CH_ES.nii.gz"
    assert out.returncode == 1 and out.stderr.strip().splitlines()[-1] == f"error: {bad}: file not found"
