"""The Python API on a trained workdir: load, register numpy pairs and batches, NIfTI files."""

import os
import subprocess
import sys

import numpy as np
import pytest

import hetreg_jax
from cli_support import ROOT
from hetreg_jax.core import spatial
from hetreg_jax.data import pipeline


@pytest.fixture(scope="module")
def model(trained):
    return hetreg_jax.load(trained)


@pytest.fixture(scope="module")
def test_pairs(model):
    return pipeline.load_splits(model.config)["train"]  # the largest split: a batch of 3 needs 3 pairs


def test_load_uses_the_recorded_config_and_the_latest_checkpoint(model, trained):
    assert model.step == 40 and model.config.method == "ours" and model.image_size == (32, 32)
    assert repr(model) == f"Model({trained!r}: voxelmorph / ours, 32x32, step 40)"


def test_register_one_pair_and_a_batch_agree_and_warp_as_documented(model, test_pairs):
    moving, fixed = test_pairs["moving"][:3, ..., 0], test_pairs["fixed"][:3, ..., 0]
    one = model.register(moving[1], fixed[1])
    batch = model.register(moving, fixed[..., None])  # a channel axis of 1 is accepted too
    assert one["displacement"].shape == (32, 32, 2) and one["warped"].shape == (32, 32)
    assert batch["displacement"].shape == (3, 32, 32, 2) and batch["log_var"].shape == (3, 32, 32)
    np.testing.assert_allclose(one["displacement"], batch["displacement"][1], atol=1e-5)
    warped = spatial.warp(moving[1][None, ..., None], one["displacement"][None])
    np.testing.assert_allclose(one["warped"], np.asarray(warped)[0, ..., 0], atol=1e-5)
    foreground = (fixed[1] != 0) | (moving[1] != 0)
    assert np.all((one["weight"][foreground] >= 0.5) & (one["weight"][foreground] <= 0.7311))
    with pytest.raises(ValueError, match=r"moving has shape \(64, 64\); this model takes \(32, 32\) images"):
        model.register(np.zeros((64, 64)), np.zeros((64, 64)))


def test_register_nifti_writes_the_cli_outputs(model, test_pairs, tmp_path):
    import nibabel as nib

    paths = {}
    for name, image in (("moving", test_pairs["moving"][0, ..., 0]), ("fixed", test_pairs["fixed"][0, ..., 0])):
        paths[name] = str(tmp_path / f"{name}.nii.gz")
        nib.save(nib.Nifti1Image(image[..., None].astype(np.float32), np.eye(4)), paths[name])
    written = model.register_nifti(paths["moving"], paths["fixed"], str(tmp_path / "out"))
    assert {"displacement", "warped", "log_var", "weight", "overview"} <= set(written)
    assert all(os.path.isfile(p) for p in written.values())


def test_import_and_load_from_outside_the_repository(trained, tmp_path):
    code = ("import numpy as np, hetreg_jax\n"
            f"m = hetreg_jax.load({trained!r})\n"
            "print(m.register(np.zeros((32, 32)), np.zeros((32, 32)))['displacement'].shape)")
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)  # as after pip install -e .
    proc = subprocess.run([sys.executable, "-c", code], cwd=str(tmp_path), env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "(32, 32, 2)"


@pytest.mark.parametrize("config_flag", [None, "config.json"])
def test_eval_with_the_recorded_config(cli, trained, tmp_path, config_flag):
    """``--mode=eval`` with no --config uses WORKDIR/config.json; --config takes that file too."""
    extra = [] if config_flag is None else [f"--config={os.path.join(trained, config_flag)}"]
    args = [sys.executable, "main.py", f"--workdir={trained}", "--mode=eval", f"--out={tmp_path}", *extra]
    proc = subprocess.run(args, cwd=ROOT, env=cli.env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    with open(tmp_path / "test_metrics.json") as f, open(os.path.join(trained, "eval", "test_metrics.json")) as g:
        assert f.read() == g.read()
