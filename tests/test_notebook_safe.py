"""Figures never switch a notebook's backend: every figure writer draws on its own Agg canvas
(hetreg_jax/base/plotting.py), never calls matplotlib.use and never imports pyplot; Model.register
refuses images that are not normalised as in training."""

import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest

from hetreg_jax import api

ROOT = pathlib.Path(__file__).resolve().parents[1]

# Run in a fresh interpreter: the backend is set to a non-Agg one first and matplotlib.use made to
# fail; then every figure writer draws (register's overview through the whole --mode=register /
# register_nifti path with a known displacement in place of the network).
SCRIPT = r'''
import sys, matplotlib
matplotlib.use("pdf")  # a notebook's backend stands in: anything but Agg
def refuse(*args, **kwargs):
    raise AssertionError(f"matplotlib.use{args} was called")
matplotlib.use = refuse
import json, os
import nibabel as nib
import numpy as np
from hetreg_jax import register
from hetreg_jax.evaluate import evaluation
from hetreg_jax.evaluate import figures
from hetreg_jax.base import writers
from hetreg_jax.data import inspect as data_inspect
from conftest import make_tiny_config

out = sys.argv[1]
rng = np.random.default_rng(0)
n, size = 3, (24, 20)
label = np.zeros((n, *size), np.uint8)
label[:, 6:16, 5:14], label[:, 9:13, 8:11] = 2, 1
pairs = {"pair_id": [f"p{i}" for i in range(n)], "moving": rng.random((n, *size, 1)).astype(np.float32),
         "fixed": rng.random((n, *size, 1)).astype(np.float32), "moving_label": label, "fixed_label": label,
         "noise_sigma": np.full((n, *size, 1), 0.05, np.float32), "displacement": np.zeros((n, *size, 2), np.float32)}
pred = {"warped": pairs["moving"], "warped_myo": (label == 2)[..., None].astype(np.float32),
        "displacement": rng.normal(size=(n, *size, 2)).astype(np.float32),
        "log_var": np.full((n, *size, 1), -4.0, np.float32), "weight": np.full((n, *size, 1), 0.6, np.float32),
        "sigma_z": np.full((n, *size, 1), 0.3, np.float32)}
with open(os.path.join(out, "metrics.jsonl"), "w") as f:
    for step in range(5):
        f.write(json.dumps({"step": step, "motion_loss": 1.0 / (step + 1), "similarity": 0.5}) + "\n")
written = [figures.training_curves(os.path.join(out, "metrics.jsonl"), os.path.join(out, "curves.png")),
           figures.examples(pairs, pred, os.path.join(out, "examples.png")),
           figures.uncertainty_maps(pairs, pred, os.path.join(out, "uncertainty.png")),
           figures.sigma_z_curves({"sigma_z_sparsification": {"fraction_removed": [0, 0.5, 0.9],
                                   "residual": {"curve": [3, 2, 1], "oracle": [3, 1, 0]}}},
                                  os.path.join(out, "sigma.png"))]
splits = {name: {k: (v[:1] if k != "pair_id" else v[:1]) for k, v in pairs.items()} for name in ("train", "val", "test")}
assert data_inspect.montage(splits, os.path.join(out, "montage.png"))
written.append(os.path.join(out, "montage.png"))
writer = writers.MetricWriter(os.path.join(out, "run"))
writer.figure(3, "examples", figures.example_figure(pairs, pred))
writer.close()

def known(trainer, state, stacked, batch_size):  # the network's place: a constant displacement
    m = stacked["moving"].shape[0]
    return {"displacement": np.full((m, 32, 32, 2), 0.5, np.float32), "log_var": np.full((m, 32, 32, 1), -3.0, np.float32)}
evaluation.predict_pairs = known
image = os.path.join(out, "image.nii.gz")
nib.save(nib.Nifti1Image(rng.random((40, 36, 2)).astype(np.float32), np.eye(4)), image)
paths = register.register(make_tiny_config(), "unused", image, image, os.path.join(out, "reg"), restored=(None, None))
written.append(paths["overview"])
for path in written:
    assert path and os.path.getsize(path) > 5000, path
assert any(name.startswith("events") for name in os.listdir(os.path.join(out, "run", "tensorboard")))
print("backend", matplotlib.get_backend(), "pyplot imported", "matplotlib.pyplot" in sys.modules)
'''


def test_figure_writers_leave_the_backend_and_pyplot_alone(tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "tests")]))
    env.pop("MPLBACKEND", None)
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], cwd=str(tmp_path), env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "backend pdf pyplot imported False"


def test_no_module_calls_matplotlib_use_or_imports_pyplot():
    offenders = []
    for path in sorted((ROOT / "hetreg_jax").rglob("*.py")):
        code = "\n".join(line.split("#")[0] for line in path.read_text(encoding="utf-8").splitlines())
        code = re.sub(r'"""[\s\S]*?"""', "", code)  # docstrings may name them
        if re.search(r"matplotlib\.use\(|import matplotlib\.pyplot|from matplotlib import pyplot", code):
            offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []


@pytest.mark.parametrize("moving, message", [
    (np.full((8, 6), 255.0), r"moving has intensities in \[255, 255\]; this model takes images normalised as in "
                             r"training: each image min-max scaled to \[0, 1\] \(hetreg_jax.data.preprocess.normalise\)"),
    (np.linspace(-0.5, 0.5, 48).reshape(8, 6), r"moving has intensities in \[-0.5, 0.5\]"),
    (np.where(np.eye(8, 6) > 0, np.nan, 0.5), "moving has 6 non-finite values"),
])
def test_register_refuses_images_outside_0_1_in_one_line(moving, message):
    model = api.Model.__new__(api.Model)  # no network needed: the check comes first
    model.image_size = (8, 6)
    with pytest.raises(ValueError, match=message) as info:
        model.register(moving, np.zeros((8, 6)))
    assert "\n" not in str(info.value)
    api.Model._check_range("fixed", np.linspace(0, 1, 10))  # [0, 1] itself passes
