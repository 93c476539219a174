"""Displacement uncertainty (sigma_z head, vxm-diff) and the uncertainty metrics against the truth.

The Table 5 rows are `mse` (Vxm), `vxm_diff`, `mse` + motion.predict_sigma (ours, sigma_z only),
`ours` (sigma_I only; test_train.py) and `ours` + motion.predict_sigma (both). The resume test runs
the sigma_z row end to end; one iteration of vxm_diff and of ours + sigma_z is checked here too.
"""

import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hetreg_jax.config import check as config_check
from hetreg_jax.core import losses
from hetreg_jax.core import metrics
from hetreg_jax.base import sharding
from hetreg_jax.train import step as steps
from hetreg_jax.train import loop as train
from hetreg_jax.data import pipeline
from conftest import make_tiny_config


def _batch(trainer, config):
    splits = pipeline.load_splits(config)
    local = pipeline.training_batch(splits["train"], config.seed, 0, config.batch_size,
                                    sharding.process_slice(config.batch_size))
    return sharding.global_batch(local, trainer.mesh)


# ------------------------------------------------------------------------------------------ losses
def test_reparameterized_sample_has_the_predicted_mean_and_variance():
    n = 200_000
    mean = jnp.full((1, n, 1, 2), 1.5)
    log_var = jnp.full((1, n, 1, 1), 2.0 * math.log(0.3))   # isotropic: one channel for two components
    noise = jax.random.normal(jax.random.key(0), mean.shape)
    z = np.asarray(losses.reparameterize(mean, log_var, noise), np.float64).reshape(-1)
    count = z.size
    # 5 standard errors: of the mean (sigma / sqrt(n)) and of the variance (sigma^2 sqrt(2 / n)).
    assert abs(z.mean() - 1.5) < 5 * 0.3 / math.sqrt(count)
    assert abs(z.var() - 0.09) < 5 * 0.09 * math.sqrt(2 / count)
    grads = jax.grad(lambda m, s: jnp.sum(losses.reparameterize(m, s, noise)), argnums=(0, 1))(mean, log_var)
    np.testing.assert_allclose(grads[0], 1.0)  # d z / d mu = 1


def test_sigma_z_prior_is_minimal_at_unit_sigma():
    s = jnp.array([-2.0, 0.0, 2.0])
    values = [float(losses.sigma_z_prior(v[None])) for v in s]
    assert values[1] == 1.0 and values[0] > 1.0 and values[2] > 1.0
    np.testing.assert_allclose(values[0], math.exp(-2.0) + 2.0, rtol=1e-6)


def test_degree_matrix_counts_grid_neighbours():
    np.testing.assert_array_equal(losses.degree_matrix((3, 4)),
                                  [[2, 3, 3, 2], [3, 4, 4, 3], [2, 3, 3, 2]])


def test_vxm_diff_kl_matches_a_hand_computation_with_the_graph_laplacian():
    rng = np.random.default_rng(0)
    n, ndim, lam = 4, 2, 10.0
    mean = rng.normal(size=(1, n, n, ndim))
    log_var = rng.normal(size=(1, n, n, ndim)) - 3.0
    # Explicit Laplacian L = D - A of the 4-neighbour n x n grid.
    index = np.arange(n * n).reshape(n, n)
    adj = np.zeros((n * n, n * n))
    for a, b in [(index[i, j], index[i + 1, j]) for i in range(n - 1) for j in range(n)] + \
                [(index[i, j], index[i, j + 1]) for i in range(n) for j in range(n - 1)]:
        adj[a, b] = adj[b, a] = 1.0
    lap = np.diag(adj.sum(1)) - adj
    quad = sum(mean[0, ..., c].ravel() @ lap @ mean[0, ..., c].ravel() for c in range(ndim))  # sum over edges
    edges_per_axis = n * (n - 1)
    sigma_term = np.mean(lam * np.diag(lap).reshape(1, n, n, 1) * np.exp(log_var) - log_var)
    prec_term = lam * 0.5 * quad / (edges_per_axis * ndim) / ndim  # the reference: per-axis means, averaged
    expected = 0.5 * ndim * (sigma_term + prec_term)
    got = float(losses.vxm_diff_kl(jnp.asarray(mean, jnp.float32), jnp.asarray(log_var, jnp.float32), lam))
    np.testing.assert_allclose(got, expected, rtol=1e-5)


# ------------------------------------------------------------------------------------------ metrics
def test_variance_calibration_is_exact_when_the_prediction_is_the_truth():
    rng = np.random.default_rng(1)
    sigma = rng.uniform(0.01, 0.2, size=(16, 16))
    sigma[0] = 0.0  # no noise there (e.g. outside an echo cone): excluded
    mask = np.ones_like(sigma, bool)
    mask[:, :2] = False
    cal = metrics.variance_calibration(2 * np.log(np.maximum(sigma, 1e-12)), sigma, mask)
    assert cal["pearson"] == pytest.approx(1.0, abs=1e-12)
    assert cal["spearman"] == pytest.approx(1.0, abs=1e-12)
    assert cal["median_ratio"] == pytest.approx(1.0, abs=1e-12)
    doubled = metrics.variance_calibration(2 * np.log(np.maximum(2 * sigma, 1e-12)), sigma, mask)
    assert doubled["median_ratio"] == pytest.approx(2.0, abs=1e-12)
    assert doubled["pearson"] == pytest.approx(1.0, abs=1e-12)
    reversed_ = metrics.variance_calibration(-2 * np.log(np.maximum(sigma, 1e-12)), sigma, mask)
    assert reversed_["spearman"] == pytest.approx(-1.0, abs=1e-12)


def test_sigma_z_sparsification_and_calibration_on_analytic_cases():
    rng = np.random.default_rng(2)
    sigma = rng.uniform(0.1, 2.0, size=(20, 20))
    ndim = 2
    sq_error = ndim * sigma ** 2  # each voxel's squared error is exactly its expected value
    assert metrics.ause(sq_error, sigma, steps=20) == 0.0  # oracle ranking
    assert metrics.ause(sq_error, -sigma, steps=20) > 0.0  # the reversed ranking
    cal = metrics.sigma_calibration(sq_error, sigma, ndim, bins=10)
    assert cal["ece"] == pytest.approx(0.0, abs=1e-12) and sum(cal["count"]) == sigma.size
    # sigma twice too large: every bin predicts twice its observed error, ECE = mean observed
    over = metrics.sigma_calibration(sq_error, 2 * sigma, ndim, bins=10)
    np.testing.assert_allclose(over["predicted"], 2 * np.asarray(over["observed"]))
    assert over["ece"] == pytest.approx(np.average(over["observed"], weights=over["count"]))


# ------------------------------------------------------------------------------------------ training
def test_sigma_z_model_data_term_equals_the_deterministic_one_as_sigma_goes_to_zero():
    config = make_tiny_config(method="mse", **{"motion.predict_sigma": True})
    trainer = steps.Trainer(config)
    plain = steps.Trainer(make_tiny_config(method="mse"))
    batch = _batch(trainer, config)
    params = jax.device_get(trainer.init_state().motion_params)
    plain_params = {k: v for k, v in params.items() if k != "log_sigma_z"}
    assert jax.tree.structure(plain_params) == jax.tree.structure(jax.device_get(plain.init_state().motion_params))
    rng = jax.random.key(3)

    sampled = jax.jit(lambda p: trainer._motion_loss(p, {}, batch, rng, False)[1]["similarity"])

    def similarity(t, p):
        return float(sampled(p)) if t is trainer else float(t._motion_loss(p, {}, batch, rng, False)[1]["similarity"])

    reference = similarity(plain, plain_params)
    at_init = similarity(trainer, params)  # sigma_z = 0.1 voxel: the sampled warp differs
    tiny = jax.tree.map(lambda x: x, params)
    tiny["log_sigma_z"] = {"kernel": np.zeros_like(params["log_sigma_z"]["kernel"]),
                           "bias": np.full_like(params["log_sigma_z"]["bias"], -15.0)}  # sigma_z = 5.5e-4
    # Linear interpolation has kinks at the grid nodes, so the sampled term departs from the
    # deterministic one to first order in sigma_z: 5e-4 relative at sigma_z = 5.5e-4 voxel.
    gap = abs(similarity(trainer, jax.tree.map(np.asarray, tiny)) - reference)
    assert gap < 2e-3 * reference
    assert abs(at_init - reference) > 20 * gap


def test_one_iteration_of_vxm_diff_and_of_ours_with_both_uncertainties_is_finite():
    for method, predict_sigma in (("vxm_diff", False), ("ours", True)):
        config = make_tiny_config(method=method, **{"motion.predict_sigma": predict_sigma})
        config_check.validate_config(config)
        trainer = steps.Trainer(config)
        batch = _batch(trainer, config)
        state, measures = trainer.train_step(trainer.phase(0))(trainer.init_state(), batch)
        measures = {k: float(v) for k, v in measures.items()}
        assert measures["all_finite"] == 1.0, measures
        assert ("kl" in measures) == (method == "vxm_diff")
        assert ("sigma_z_prior" in measures) == predict_sigma
        pred = jax.device_get(trainer.predict(state, batch))
        assert pred["sigma_z"].shape == (*batch["fixed"].shape[:-1], 1)
        assert np.all(np.isfinite(pred["sigma_z"])) and np.all(pred["sigma_z"] > 0)
        if method == "vxm_diff":  # reference init (bias -10): sigma_v = e^-5, x int_downsize 2
            np.testing.assert_allclose(pred["sigma_z"], 2 * math.exp(-5.0), rtol=5e-3)  # after one Adam step


def test_config_refuses_vxm_diff_without_a_velocity():
    config = make_tiny_config(method="vxm_diff", **{"motion.int_steps": 0})
    with pytest.raises(ValueError, match="config.method='vxm_diff'"):
        config_check.validate_config(config)
    for key, value in (("loss.sigma_z_weight", 0.0), ("loss.image_sigma", 0.0), ("loss.prior_lambda", -1.0)):
        with pytest.raises(ValueError, match=f"config.{key}={value!r} is not allowed"):
            config_check.validate_config(make_tiny_config(**{key: value}))
    with pytest.raises(ValueError, match="config.motion.predict_sigma=True is not allowed"):
        config_check.validate_config(make_tiny_config(method="vxm_diff", **{"motion.predict_sigma": True}))
    with pytest.raises(ValueError, match="config.motion.predict_sigma=True is not allowed"):
        config_check.validate_config(make_tiny_config(**{"motion.predict_sigma": True, "motion.bidirectional": True}))


def test_sampled_run_resumes_to_the_uninterrupted_result_and_reports_sigma_z(tmp_path):
    config = make_tiny_config(method="mse", num_steps=4, checkpoint_every=2, log_every=2,
                              **{"motion.predict_sigma": True})
    full, split = str(tmp_path / "full"), str(tmp_path / "split")
    summary = train.train_and_evaluate(config, full)
    train.train_and_evaluate(make_tiny_config(method="mse", num_steps=2, checkpoint_every=2, log_every=2,
                                              **{"motion.predict_sigma": True}), split)
    resumed = train.train_and_evaluate(config, split)
    for key in ("dice", "epe", "sigma_z_ause", "sigma_z_ece", "sigma_z_ause_residual"):
        assert resumed[key]["mean"] == summary[key]["mean"], key
    with open(os.path.join(full, "eval", "test_metrics.json")) as f:
        report = json.load(f)
    assert report["sigma_z_ause"]["n"] == report["n_evaluated"]
    assert report["sigma_z_ause"]["mean"] >= 0.0
    assert report["sigma_z_ause_uninformed"]["n"] == report["n_evaluated"]
    calibration = report["sigma_z_calibration"]
    assert sum(calibration["count"]) > 0 and len(calibration["predicted"]) == 10
    curves = report["sigma_z_sparsification"]["true_epe"]
    assert all(o <= c + 1e-12 for c, o in zip(curves["curve"], curves["oracle"]))
    for figure in ("uncertainty.png", "sigma_z_calibration.png"):
        assert os.path.getsize(os.path.join(full, "eval", figure)) > 10_000, figure
    # the runner's fig4 draws this run's sigma_z and endpoint error (Table 5's "ours, sigma_z only")
    from hetreg_jax.experiments import figures as experiment_figures
    from hetreg_jax.experiments import runs as experiment_runs
    run = experiment_runs.Run("acdc", "voxelmorph", "mse", 0, predict_sigma=True)
    root = str(tmp_path / "table5")
    os.makedirs(os.path.dirname(run.path(root)))
    os.symlink(full, run.path(root))
    path = experiment_figures.fig4([run], config, root, "paper")
    assert path == os.path.join(root, "fig4.png") and os.path.getsize(path) > 10_000


def test_register_maps_sigma_z_onto_the_fixed_grid(tmp_path):
    import nibabel as nib
    from hetreg_jax import register
    from hetreg_jax.data import nifti

    def inputs(shape, crop_start=None):
        fixed = nifti.Volume("f", np.zeros(shape, np.float32), np.eye(4), nib.Nifti1Header(), (1.0,) * len(shape), shape)
        return register.Inputs(fixed, fixed, None, {}, crop_start)

    pred = {"displacement": np.zeros((1, 32, 32, 2), np.float32), "sigma_z": np.full((1, 32, 32, 1), 0.5, np.float32)}
    full = register.to_fixed_grid(inputs((45, 38)), pred)  # resized: sigma times the RMS axis scale
    np.testing.assert_allclose(full["sigma_z"], 0.5 * math.sqrt(((44 / 31) ** 2 + (37 / 31) ** 2) / 2), rtol=1e-6)
    pred = {"displacement": np.zeros((2, 32, 32, 2), np.float32), "sigma_z": np.full((2, 32, 32, 1), 0.5, np.float32)}
    full = register.to_fixed_grid(inputs((40, 36, 2), (-3, 6)), pred)  # cropped: NaN outside the crop
    assert full["sigma_z"].shape == (40, 36, 2)
    assert np.all(full["sigma_z"][0:29, 6:36] == 0.5) and np.all(np.isnan(full["sigma_z"][30:]))
    fixed = inputs((45, 38)).fixed
    full = {"displacement": np.zeros((45, 38, 2), np.float32), "warped": np.zeros((45, 38), np.float32),
            "sigma_z": np.full((45, 38), 0.7, np.float32)}
    paths = register.write_outputs(str(tmp_path), fixed, full, np.zeros((45, 38), np.float32))
    written = nib.load(paths["sigma_z"])
    assert os.path.basename(paths["sigma_z"]) == "displacement_sigma.nii.gz"
    np.testing.assert_allclose(np.asarray(written.dataobj).squeeze(), 0.7)


def test_table5_plan_and_report_on_known_numbers(tmp_path):
    import csv
    from hetreg_jax.experiments import report as experiment_report
    from hetreg_jax.experiments import runs as experiment_runs

    runs, skipped = experiment_runs.plan("5", [0], ["voxelmorph"], [], ["acdc"])
    assert [(r.method, r.predict_sigma) for r in runs] == list(experiment_runs.TABLE5_ROWS) and not skipped
    assert runs[2].path("W") == os.path.join("W", "acdc", "voxelmorph", "mse_sigma_z", "seed0")
    config = make_tiny_config(num_steps=2)
    assert experiment_runs.run_config(config, runs[4], "paper").motion.predict_sigma
    root = str(tmp_path)
    for k, run in enumerate(runs):
        out = os.path.join(run.path(root), "eval")
        os.makedirs(out)
        with open(os.path.join(out, "test_per_pair.csv"), "w", newline="") as f:
            writer = csv.DictWriter(f, ["pair_id", "dice", "hd", "asd", "epe", "sigma_z_ause"])
            writer.writeheader()
            for i in range(2):
                writer.writerow(dict(pair_id=f"p{i}", dice=80 + k + i, hd=5, asd=1, epe=0.5,
                                     sigma_z_ause="" if not (run.predict_sigma or run.method == "vxm_diff") else 0.1 * i))
        with open(os.path.join(out, "test_metrics.json"), "w") as f:
            json.dump({"checkpoint_step": 2}, f)
    path, = experiment_report.report_table5(runs, config, root, "paper", [], {"figures": False})
    lines = [line for line in open(path).read().splitlines() if line.startswith("| ACDC")]
    assert len(lines) == 5
    cells = [c.strip() for c in lines[2].split("|")[1:-1]]  # ours, sigma_z only
    assert cells[1:4] == ["ours", "✓", "✗"] and cells[4] == "82.50 ± 0.50" and cells[8] == "0.050 ± 0.050"
    assert cells[-1] == "79.8 / 4.74 / 1.22"
    assert [c.strip() for c in lines[0].split("|")[1:-1]][8] == "not measured"  # Vxm has no sigma_z
    header = [c.strip() for c in open(path).read().split("| data |")[1].splitlines()[0].split("|")[:-1]]
    assert header[3:6] == ["Dice %", "HD px", "ASD px"] and header[6:8] == ["EPE px", "σ_z AUSE px²"]
    assert "σ_z ECE px" not in header and "σ_I Spearman" not in header  # measured by no row: left out

    # Real data (no true motion): no EPE column; the residual-ranked scores are measured.
    for k, run in enumerate(runs):
        with open(os.path.join(run.path(root), "eval", "test_per_pair.csv"), "w", newline="") as f:
            writer = csv.DictWriter(f, ["pair_id", "dice", "hd", "asd", "sigma_z_ause_residual"])
            writer.writeheader()
            writer.writerow(dict(pair_id="p0", dice=80, hd=5, asd=1,
                                 sigma_z_ause_residual=0.002 if run.predict_sigma else ""))
    path, = experiment_report.report_table5(runs, config, root, "paper", [], {"figures": False})
    text = open(path).read()
    header = [c.strip() for c in text.split("| data |")[1].splitlines()[0].split("|")[:-1]]
    assert header[3:] == ["Dice %", "HD px", "ASD px", "σ_z AUSE residual²", "paper Dice / HD / ASD"]
    assert "ranked by σ_z, which needs no ground truth" in text and "EPE" not in text
    last = [c.strip() for c in text.splitlines() if c.startswith("| ACDC")][-1].split("|")[1:-1]
    assert last[7].strip() == "0.0020 ± 0.0000"
