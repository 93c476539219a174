"""The training pipeline on tiny configs: alternating steps, resume, devices, end to end."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hetreg_jax.base import sharding
from hetreg_jax.train import step as steps
from hetreg_jax.train import loop as train
from hetreg_jax.data import pipeline
from conftest import make_tiny_config


def _host(tree):
    return jax.tree.map(lambda x: np.array(jax.device_get(x)), tree)


def _batch(trainer, config, step=0):
    splits = pipeline.load_splits(config)
    local = pipeline.training_batch(splits["train"], config.seed, step, config.batch_size,
                                    sharding.process_slice(config.batch_size))
    return sharding.global_batch(local, trainer.mesh)


def _assert_trees_equal(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)


def _max_tree_diff(a, b):
    return max(float(np.max(np.abs(x - y))) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.fixture(scope="module")
def trainer_and_batch():
    config = make_tiny_config()
    trainer = steps.Trainer(config)
    return config, trainer, _batch(trainer, config)


@pytest.mark.parametrize("step, frozen, updated, loss", [
    ("motion_step", "variance", "motion", "motion_loss"),
    ("variance_step", "motion", "variance", "variance_loss"),
])
def test_each_step_leaves_the_other_network_bit_identical(trainer_and_batch, step, frozen, updated, loss):
    _, trainer, batch = trainer_and_batch
    state = trainer.init_state()
    before = _host(state)
    new, measures = getattr(trainer, step)(state, batch)
    after = _host(new)
    _assert_trees_equal(getattr(before, f"{frozen}_params"), getattr(after, f"{frozen}_params"))
    _assert_trees_equal(getattr(before, f"{frozen}_opt_state"), getattr(after, f"{frozen}_opt_state"))
    assert _max_tree_diff(getattr(before, f"{updated}_params"), getattr(after, f"{updated}_params")) > 0
    assert np.isfinite(float(measures[loss]))


def test_no_gradient_flows_through_the_weight_map(trainer_and_batch):
    _, trainer, batch = trainer_and_batch
    state = trainer.init_state()
    grad_fn = jax.jit(jax.grad(lambda vp, mp: trainer._motion_loss(mp, vp, batch, None, True)[0], argnums=(0, 1)))
    g_var, g_motion = grad_fn(state.variance_params, state.motion_params)
    assert all(np.all(np.asarray(g) == 0) for g in jax.tree.leaves(g_var))
    assert sum(float(jnp.abs(g).sum()) for g in jax.tree.leaves(g_motion)) > 0
    # ...while the weight itself does depend on the variance net (it is not a constant by accident).
    moving, fixed = batch["moving"], batch["fixed"]
    lv = trainer._log_var(state.variance_params, moving, fixed)
    w = steps.losses.snr_weight(fixed, lv, 0.5, mask=trainer._mask(moving, fixed))
    assert float(jnp.std(w)) > 0


def test_step_on_four_devices_matches_one_device(tiny_config):
    assert len(jax.devices()) == 4
    config = tiny_config()
    results = []
    for devices in (jax.devices()[:1], jax.devices()):
        trainer = steps.Trainer(config, sharding.make_mesh(devices))
        state = trainer.init_state()
        batch = _batch(trainer, config)
        assert batch["moving"].sharding.num_devices == len(devices)
        state, measures = trainer.train_step("alternating")(state, batch)
        results.append((_host(state), float(measures["motion_loss"])))
    (s1, l1), (s4, l4) = results
    assert abs(l1 - l4) < 1e-5 * max(1.0, abs(l1))
    assert _max_tree_diff(s1.motion_params, s4.motion_params) < 1e-6
    assert _max_tree_diff(s1.variance_params, s4.variance_params) < 1e-6


def test_batch_order_depends_only_on_seed_and_step():
    a = pipeline.batch_indices(0, 7, 100, 8)
    np.testing.assert_array_equal(a, pipeline.batch_indices(0, 7, 100, 8))
    assert not np.array_equal(a, pipeline.batch_indices(0, 8, 100, 8))
    assert not np.array_equal(a, pipeline.batch_indices(1, 7, 100, 8))


def test_warm_start_phases_and_mse_method(tiny_config):
    config = tiny_config(warm_start=True, warm_start_epochs=2, steps_per_epoch=3)
    trainer = steps.Trainer(config)
    phases = [trainer.phase(s) for s in range(14)]
    assert phases == ["motion_warmup"] * 6 + ["variance"] * 6 + ["alternating"] * 2
    mse = steps.Trainer(tiny_config(method="mse"))
    assert mse.phase(0) == "motion" and mse.variance_model is None


def test_poly_schedule_decays_by_epoch(tiny_config):
    config = tiny_config(num_steps=400, steps_per_epoch=100)
    config.optim.motion_schedule = "poly"
    schedule = steps.motion_schedule(config)
    lr = config.optim.motion_lr
    np.testing.assert_allclose(float(schedule(0)), lr)
    assert steps.motion_schedule(tiny_config()) == lr  # "auto" = constant for VoxelMorph
    np.testing.assert_allclose(float(schedule(99)), lr)
    np.testing.assert_allclose(float(schedule(250)), lr * (1 - 2 / 4) ** 0.9, rtol=1e-6)


def test_poly_decay_reads_the_training_step_and_matches_adam_where_the_counts_coincide(tiny_config):
    import optax

    # No warm start: one motion update per step, so the step-driven decay with a traced lr gives the
    # updates of optax.adam(schedule) (Adam's own update count) bit for bit, epochs with different
    # lrs included, from the same state layout (old checkpoints resume).
    config = tiny_config(num_steps=8, steps_per_epoch=2, **{"optim.motion_schedule": "poly"})
    new, old = steps.motion_optimizer(config), optax.adam(steps.motion_schedule(config))
    params = {"w": jnp.linspace(-1.0, 1.0, 12, dtype=jnp.float32).reshape(3, 4)}
    states = [new.init(params), old.init(params)]
    assert jax.tree.structure(states[0]) == jax.tree.structure(states[1])
    lr = jnp.float32(config.optim.motion_lr)
    update_new = jax.jit(lambda g, s, t: new.update(g, s, params, lr=lr, step=t))
    update_old = jax.jit(lambda g, s: old.update(g, s, params))
    for t in range(8):
        grads = {"w": jax.random.normal(jax.random.key(t), (3, 4))}
        (u_new, states[0]), (u_old, states[1]) = update_new(grads, states[0], t), update_old(grads, states[1])
        _assert_trees_equal(_host(u_new), _host(u_old))
    _assert_trees_equal(_host(states[0]), _host(states[1]))


def test_with_warm_start_the_poly_lr_is_zero_at_num_steps(tiny_config):
    # 7 steps, 2 per epoch: 3 epochs; motion-only 0-1, variance-only 2-3, alternating 4-6. Step 6 is
    # in epoch 3 = epochs: lr 0, the motion parameters stay as they are (Adam's count, 4 motion
    # updates, would still be in epoch 2).
    config = tiny_config(warm_start=True, warm_start_epochs=1, steps_per_epoch=2, num_steps=7,
                         **{"optim.motion_schedule": "poly"})
    lr_at = jax.jit(steps.motion_schedule(config))
    assert float(lr_at(6)) == 0.0 and float(lr_at(100)) == 0.0  # 0, not NaN: 1 - 3 * (1/3) < 0 under jit
    trainer = steps.Trainer(config)
    state = trainer.init_state()
    motion = []
    for t in range(config.num_steps):
        state, measures = trainer.train_step(trainer.phase(t))(state, _batch(trainer, config, t))
        assert float(measures["all_finite"]) == 1.0
        motion.append(_host(state.motion_params))
    assert [trainer.phase(t) for t in range(7)] == ["motion_warmup"] * 2 + ["variance"] * 2 + ["alternating"] * 3
    assert _max_tree_diff(motion[4], motion[5]) > 0  # step 5: epoch 2, lr (1/3)^0.9 of the lr
    _assert_trees_equal(motion[5], motion[6])        # step 6: lr 0
    assert int(state.motion_opt_state[1].count) == 5  # motion updates counted: 2 warm-up + 3 alternating


def test_train_and_evaluate_then_resume_matches_uninterrupted(tmp_path, tiny_config):
    config = tiny_config()
    full_dir, split_dir = str(tmp_path / "full"), str(tmp_path / "split")
    summary = train.train_and_evaluate(config, full_dir)

    # Outputs of a run.
    with open(os.path.join(full_dir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    assert [r["step"] for r in records] == [2, 3, 4, 6]
    assert {"motion_loss", "variance_loss", "similarity", "smoothness"} <= set(records[-1])
    assert os.path.isdir(os.path.join(full_dir, "tensorboard"))
    with open(os.path.join(full_dir, "eval", "test_metrics.json")) as f:
        report = json.load(f)
    for key in ("dice", "hd", "hd95", "asd", "assd", "folding_percent", "sd_log_jacobian", "epe"):
        assert key in report and key in report["undeformed"], key
    assert report["n_pairs"] == report["n_evaluated"] + report["n_excluded"] > 0
    assert report["checkpoint_step"] == 6
    assert {k for k in report if isinstance(report[k], dict) and "mean" in report[k]} <= set(report["units"])
    assert report["dice"]["n"] == report["n_evaluated"]
    assert "ause" in report
    sparse = report["sparsification"]  # mean curves over the pairs (the paper's Fig. 3)
    assert len(sparse["curve"]) == len(sparse["oracle"]) == config.eval.sparsification_steps
    assert all(o <= c + 1e-12 for c, o in zip(sparse["curve"], sparse["oracle"]))
    assert np.all(np.diff(sparse["oracle"]) <= 1e-12)
    with open(os.path.join(full_dir, "eval", "test_per_pair.csv")) as f:
        assert len(f.read().strip().splitlines()) == report["n_evaluated"] + 1
    assert summary["dice"]["mean"] == report["dice"]["mean"]
    for figure in ("curves.png", "test_examples.png"):  # loss curves, example registrations
        assert os.path.getsize(os.path.join(full_dir, "eval", figure)) > 10_000, figure

    # Interrupted after step 3 (a checkpoint), then resumed: identical final parameters. This run
    # writes its checkpoints in the background (checkpoint_async="on"), which changes nothing saved.
    train.train_and_evaluate(tiny_config(num_steps=3, checkpoint_async="on"), split_dir)
    resumed = train.train_and_evaluate(tiny_config(checkpoint_async="on"), split_dir)
    trainer = steps.Trainer(config)
    from hetreg_jax.train.checkpoint import Checkpointer
    states = []
    for d in (full_dir, split_dir):
        ckpt = Checkpointer(os.path.join(d, "checkpoints"))
        assert ckpt.latest_step() == 6
        states.append(_host(ckpt.restore(trainer.abstract_state())[0]))
        ckpt.close()
    _assert_trees_equal(states[0], states[1])
    assert resumed["dice"]["mean"] == summary["dice"]["mean"]


def test_transmorph_alternating_step_and_deterministic_eval(tiny_config):
    config = tiny_config(model="transmorph")
    config.transmorph.embed_dim = 12
    config.transmorph.num_heads = (1, 1, 2, 2)
    config.transmorph.depths = (1, 1, 1, 1)
    config.transmorph.window_size = (2, 2)
    assert steps.motion_schedule(config)(0) == config.optim.motion_lr  # "auto" = poly for TransMorph
    trainer = steps.Trainer(config)
    state = trainer.init_state()
    batch = _batch(trainer, config)
    before = _host(state)
    state, measures = trainer.train_step("alternating")(state, batch)
    assert all(np.isfinite(float(v)) for v in measures.values())
    assert float(measures["motion_grad_norm"]) > 0
    assert _max_tree_diff(before.motion_params, _host(state.motion_params)) > 0
    first = np.asarray(trainer.predict(state, batch)["displacement"])
    np.testing.assert_array_equal(first, np.asarray(trainer.predict(state, batch)["displacement"]))
    # Any size: 48x48 is not a multiple of TransMorph's 32; the network pads and crops back.
    odd = steps.motion_model_kwargs(tiny_config(model="transmorph", **{"data.image_size": (48, 48)}))
    assert odd["window_size"] == steps.motion_model_kwargs(tiny_config(model="transmorph"))["window_size"]


def test_cpu_device_count_is_one_per_core_dividing_every_batch():
    assert sharding.cpu_device_count([8, 8], cores=2) == 2
    assert sharding.cpu_device_count([8, 8], cores=3) == 2   # 3 does not divide 8
    assert sharding.cpu_device_count([8, 6], cores=16) == 2  # the largest common divisor up to 16
    assert sharding.cpu_device_count([2, 2], cores=16) == 2
    assert sharding.cpu_device_count([1], cores=4) == 1


@pytest.mark.parametrize("method", ["nll", "beta_nll"])
def test_joint_baselines_update_both_networks_with_gradient_through_the_variance_input(tiny_config, method):
    config = tiny_config(method=method)
    trainer = steps.Trainer(config)
    assert trainer.phase(0) == "joint" and trainer.method.joint
    state = trainer.init_state()
    batch = _batch(trainer, config)
    # One joint loss: both parameter trees receive gradient from it (the naive approach the paper analyses).
    grads = jax.grad(lambda mp, vp: trainer._motion_loss(mp, vp, batch, None, False)[0], argnums=(0, 1))(
        state.motion_params, state.variance_params)
    assert all(sum(float(jnp.abs(g).sum()) for g in jax.tree.leaves(t)) > 0 for t in grads)
    before = _host(state)
    state, measures = trainer.train_step("joint")(state, batch)
    after = _host(state)
    assert _max_tree_diff(before.motion_params, after.motion_params) > 0
    assert _max_tree_diff(before.variance_params, after.variance_params) > 0
    assert all(np.isfinite(float(v)) for v in measures.values())
    assert "weight" not in trainer.predict(state, batch)


def test_train_and_evaluate_in_3d(tmp_path, tiny_config):
    """At an odd 3D size (no side a multiple of 4: the networks pad and crop every axis), so this one
    3D training run is also the 3D case of tests/test_any_size.py."""
    config = tiny_config(num_steps=2, log_every=1, checkpoint_every=2, **{
        "data.dataset": "echo3d", "data.image_size": (17, 19, 18), "data.synthetic_subjects": 4})
    summary = train.train_and_evaluate(config, str(tmp_path / "run3d"))
    assert summary["n_evaluated"] >= 1
    for key in ("dice", "hd", "asd", "folding_percent", "sd_log_jacobian", "epe", "ause"):
        assert np.isfinite(summary[key]["mean"]), key
    assert 0 <= summary["dice"]["mean"] <= 100


def test_validation_writes_dice_and_an_example_figure_to_tensorboard(tmp_path, tiny_config):
    import glob
    import struct

    from tensorboardX.proto import event_pb2

    workdir = str(tmp_path / "run")
    train.train_and_evaluate(tiny_config(num_steps=4, log_every=2, checkpoint_every=4, eval_every=2), workdir)
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        assert [r["step"] for r in map(json.loads, f) if "val_dice" in r] == [2, 4]
    images = []
    for path in glob.glob(os.path.join(workdir, "tensorboard", "events*")):
        data, i = open(path, "rb").read(), 0
        while i < len(data):  # TFRecord framing: length, crc, event, crc
            (length,) = struct.unpack("<Q", data[i:i + 8])
            event = event_pb2.Event()
            event.ParseFromString(data[i + 12:i + 12 + length])
            i += 16 + length
            images += [(event.step, v.tag) for v in event.summary.value if v.HasField("image")]
    assert images == [(2, "validation/examples"), (4, "validation/examples")]


def test_fresh_state_is_the_eager_init_bit_for_bit(trainer_and_batch):
    """``fresh_state`` initialises with ``lazy_init`` (no forward pass): the same parameters as
    ``init`` on a zero image, for both networks; vmapped over seeds, each row is that seed's."""
    _, trainer, _ = trainer_and_batch
    programs = trainer.programs
    k_motion, k_var = jax.random.split(jax.random.key(3))
    dummy = jnp.zeros((1, *programs.image_size, 1), jnp.float32)
    expected = (programs.motion_model.init(k_motion, dummy, dummy)["params"],
                programs.variance_model.init(k_var, dummy, dummy)["params"])
    state = programs.fresh_state(3)
    _assert_trees_equal(_host(expected), _host((state.motion_params, state.variance_params)))
    stacked = jax.vmap(programs.fresh_state)(jnp.asarray([5, 3], jnp.int32))
    _assert_trees_equal(_host(expected), _host(jax.tree.map(lambda x: x[1], (stacked.motion_params,
                                                                              stacked.variance_params))))
