"""One compiled training step per structure: traced hyper-parameters, shared programs, seeds vmapped."""

import json
import logging
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import make_tiny_config

from hetreg_jax.experiments import runner as experiments

from hetreg_jax.experiments import runs as experiment_runs
from hetreg_jax.core import losses
from hetreg_jax.train import step as steps
from hetreg_jax.train import loop as train
from hetreg_jax.train.checkpoint import Checkpointer
from hetreg_jax.data import pipeline
from hetreg_jax.train.feed import Feed


def _config(**overrides):
    base = dict(num_steps=6, checkpoint_every=3, log_every=3, steps_per_call=3)
    base.update(overrides)
    return make_tiny_config(**base)


def _final_params(trainer, workdir):
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), create=False)
    try:
        state, _ = ckpt.restore(trainer.abstract_state())
    finally:
        ckpt.close()
    return jax.tree.map(np.asarray, jax.device_get((state.motion_params, state.variance_params)))


def test_runs_that_differ_in_hyperparameters_share_one_compiled_step():
    one = dict(steps_per_call=1, **{"data.on_device": "device"})  # a one-step chunk: the cheapest to compile
    a = steps.Trainer(_config(**one))
    b = steps.Trainer(_config(seed=1, **one, **{"loss.gamma": 0.25, "loss.beta": 1.0, "optim.motion_lr": 3e-4,
                                                 "data.root": None, "log_every": 2}))
    other = steps.Trainer(_config(method="mse", **one))
    assert a.programs is b.programs and other.programs is not a.programs
    splits = pipeline.load_splits(_config())
    program = a.programs.chunk["alternating"]
    before = program._cache_size()
    states = []
    for trainer in (a, b):
        state, _ = Feed(trainer, splits["train"], trainer.config).run(trainer.init_state(), 0, 1, "alternating")
        states.append(jax.tree.map(np.asarray, jax.device_get(state.motion_params)))
    assert program._cache_size() - before <= 1  # both runs, one compilation (none if cached before)
    assert program._cache_size() >= 1
    # ...and the traced values are used: other seed, gamma and lr give other parameters.
    assert max(float(np.abs(x - y).max()) for x, y in zip(jax.tree.leaves(states[0]), jax.tree.leaves(states[1]))) > 0


def test_the_programs_see_only_the_structure():
    structure = steps.structure(_config())
    assert "seed" not in structure and "gamma" not in structure.loss and "motion_lr" not in structure.optim
    with pytest.raises(AttributeError):
        _ = structure.loss.gamma  # a program reading a traced value from the config would fail here
    assert steps.hparams(_config(seed=7))["seed"] == 7 and steps.hparams(_config())["gamma"].dtype == np.float32


@pytest.mark.parametrize("gamma", [0.0, 0.25, 0.5, 0.75, 1.0, 2.0])
def test_a_traced_gamma_gives_the_bits_of_a_constant_one(gamma):
    fixed = jax.random.uniform(jax.random.key(0), (2, 16, 16, 1))
    log_var = jax.random.normal(jax.random.key(1), (2, 16, 16, 1))
    constant = jax.jit(lambda f, lv: losses.snr(f, lv, gamma))(fixed, log_var)
    traced = jax.jit(lambda f, lv, g: losses.snr(f, lv, g))(fixed, log_var, jnp.float32(gamma))
    np.testing.assert_array_equal(np.asarray(constant), np.asarray(traced))


def test_seeds_trained_together_match_separate_runs_and_resume(tmp_path):
    configs = [_config(seed=s, steps_per_call=1, **{"data.on_device": "device"}) for s in (0, 1)]
    alone = [str(tmp_path / f"alone{s}") for s in (0, 1)]
    together = [str(tmp_path / f"together{s}") for s in (0, 1)]
    for config, workdir in zip(configs, alone):
        train.train_and_evaluate(config, workdir)
    summaries = train.train_and_evaluate_together(configs, together)
    trainer = steps.Trainer(configs[0])
    for a, b, summary in zip(alone, together, summaries):
        # The same files as a run trained alone.
        for name in ("config.json", "metrics.jsonl", "eval/test_metrics.json", "eval/test_per_pair.csv",
                     "checkpoints/3", "checkpoints/6"):
            assert os.path.exists(os.path.join(b, name)), name
        assert json.load(open(os.path.join(a, "config.json"))) == json.load(open(os.path.join(b, "config.json")))
        pa, pb = _final_params(trainer, a), _final_params(trainer, b)
        for x, y in zip(jax.tree.leaves(pa), jax.tree.leaves(pb), strict=True):
            np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5)
        expected = json.load(open(os.path.join(a, "eval", "test_metrics.json")))
        assert summary["dice"]["mean"] == pytest.approx(expected["dice"]["mean"], abs=0.05)
    seeds = [_final_params(trainer, w) for w in together]
    assert max(float(np.abs(x - y).max()) for x, y in zip(jax.tree.leaves(seeds[0]), jax.tree.leaves(seeds[1]))) > 1e-3

    # Interrupted together after step 3: resumes together, to the same parameters.
    final = [_final_params(trainer, w) for w in together]
    for workdir in together:
        shutil.rmtree(os.path.join(workdir, "checkpoints", "6"))
        shutil.rmtree(os.path.join(workdir, "eval"))
    train.train_and_evaluate_together(configs, together)
    for workdir, expected in zip(together, final):
        for x, y in zip(jax.tree.leaves(_final_params(trainer, workdir)), jax.tree.leaves(expected), strict=True):
            np.testing.assert_array_equal(x, y)

    # Runs at different steps, or that differ in more than the traced values, are refused untouched.
    shutil.rmtree(os.path.join(together[1], "checkpoints", "6"))
    with pytest.raises(ValueError, match="checkpoints are at steps 3, 6"):
        train.train_and_evaluate_together(configs, together)
    assert sorted(os.listdir(os.path.join(together[1], "checkpoints"))) == ["3"]
    with pytest.raises(ValueError, match="differ in batch_size"):
        train.train_and_evaluate_together([configs[0], _config(seed=1, batch_size=8, steps_per_call=1,
                                                               **{"data.on_device": "device"})], together)


def test_the_runner_compiles_the_training_step_once_for_all_seeds(tmp_path, caplog):
    """JAX_LOG_COMPILES: the chunk of steps (``jit(run)``) is compiled once for seeds 0 and 1, and the
    vmapped chunk of the pair once."""
    config = _config(num_steps=3, checkpoint_every=3, steps_per_call=1,  # one-step chunks on the devices
                     **{"loss.gamma": 0.3, "data.on_device": "device"})  # and a structure no other test built
    config.motion.enc_features = (8, 12)
    runs = experiment_runs.plan("1", [0, 1], ["voxelmorph"], ["ours"], ["acdc"])[0]

    def compiled(root, **kwargs):
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            jax.config.update("jax_log_compiles", True)
            try:
                experiments.execute(runs, config, str(tmp_path / root), "paper", say=lambda *a: None, **kwargs)
            finally:
                jax.config.update("jax_log_compiles", False)
        return [r.getMessage() for r in caplog.records if r.getMessage().startswith("Compiling jit(run) ")]

    separate = compiled("separate")
    assert len(separate) == 1, separate
    for seed in (0, 1):
        assert os.path.isfile(tmp_path / "separate" / "acdc" / "voxelmorph" / "ours" / f"seed{seed}" / "eval"
                              / "test_metrics.json")
    vmapped = compiled("vmapped", vmap_seeds=True)
    assert len(vmapped) == 1, vmapped
    for seed in (0, 1):
        a = json.load(open(tmp_path / "separate" / "acdc" / "voxelmorph" / "ours" / f"seed{seed}" / "eval"
                           / "test_metrics.json"))
        b = json.load(open(tmp_path / "vmapped" / "acdc" / "voxelmorph" / "ours" / f"seed{seed}" / "eval"
                           / "test_metrics.json"))
        assert b["dice"]["mean"] == pytest.approx(a["dice"]["mean"], abs=0.05)


def test_the_seed_throughput_benchmark_reports_every_count():
    from hetreg_jax.cli import bench

    rows = bench.seeds_together(_config(steps_per_call=2), [1, 2], steps=2)
    assert [r["seeds"] for r in rows] == [1, 2] and rows[0]["vs_one_seed"] == 1.0
    assert all(r["train_pairs_per_s"] > 0 and r["compile_s"] > 0 for r in rows)


def test_runtime_settings_follow_the_environment(monkeypatch, tmp_path):
    from hetreg_jax.base import runtime

    monkeypatch.setenv(runtime.CACHE_ENV, "off")
    assert runtime.cache_dir() is None
    monkeypatch.setenv(runtime.CACHE_ENV, str(tmp_path / "cache"))
    assert runtime.cache_dir() == str(tmp_path / "cache")
    monkeypatch.delenv(runtime.CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert runtime.cache_dir() == str(tmp_path / "hetreg_jax" / "jax")
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_foo=1")
    monkeypatch.setenv(runtime.DETERMINISTIC_ENV, "0")
    runtime.set_deterministic_gpu_ops()
    assert os.environ["XLA_FLAGS"] == "--xla_cpu_foo=1"
    monkeypatch.setenv(runtime.DETERMINISTIC_ENV, "1")
    runtime.set_deterministic_gpu_ops()
    runtime.set_deterministic_gpu_ops()  # once only
    assert os.environ["XLA_FLAGS"] == "--xla_cpu_foo=1 --xla_gpu_deterministic_ops=true"
