"""Training data on the devices, several steps per call: the same parameters whatever K, resume."""

import json
import os
import types

import jax
import numpy as np
import pytest

from cli_support import host_state
from conftest import make_tiny_config
from hetreg_jax.config import check as config_check
from hetreg_jax.train import feed
from hetreg_jax.train import step as steps
from hetreg_jax.train import loop as train
from hetreg_jax.data import pipeline


def _records(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_steps_per_call_gives_bit_identical_parameters_logs_and_resume(tmp_path):
    """In a loop, K = 1 and K = 4 (chunks of 4 and 2 between the checkpoints at 6 and 12) on the
    devices end with bit-identical parameters, losses and test metrics; so does a K = 4 run stopped
    at its checkpoint and resumed."""
    def config(k, num_steps=12):
        return make_tiny_config(num_steps=num_steps, log_every=3, checkpoint_every=6, steps_per_call=k,
                                steps_per_call_form="loop", **{"data.on_device": "device"})

    runs = {name: str(tmp_path / name) for name in ("k1", "k4", "k4_resumed")}
    summaries = {name: train.train_and_evaluate(config(k), runs[name]) for name, k in (("k1", 1), ("k4", 4))}
    train.train_and_evaluate(config(4, num_steps=6), runs["k4_resumed"])
    summaries["k4_resumed"] = train.train_and_evaluate(config(4), runs["k4_resumed"])

    (reference, meta), *others = [host_state(runs[name], config(1)) for name in runs]
    assert meta["step"] == 12
    for state, other_meta in others:
        assert other_meta["step"] == 12
        for a, b in zip(jax.tree.leaves(reference), jax.tree.leaves(state), strict=True):
            np.testing.assert_array_equal(a, b)
    assert _records(runs["k1"]) == _records(runs["k4"]) == _records(runs["k4_resumed"])
    assert [r["step"] for r in _records(runs["k1"])] == [3, 6, 9, 12]
    assert summaries["k1"] == summaries["k4"] == summaries["k4_resumed"]


def test_unrolled_steps_agree_with_single_steps_and_resume_bit_identically(tmp_path):
    """Unrolled, K = 2 over 5 steps is two 2-step calls and a 1-step call (the short chunk before
    the end). Its parameters agree with K = 1's to float rounding (another program), a run stopped at
    its checkpoint (step 4) and resumed is bit-identical to the uninterrupted one, and the losses are
    logged at the same steps."""
    def config(k, num_steps=5):
        return make_tiny_config(num_steps=num_steps, log_every=2, checkpoint_every=4, steps_per_call=k,
                                steps_per_call_form="unrolled", **{"data.on_device": "device"})

    runs = {name: str(tmp_path / name) for name in ("k1", "k2", "k2_resumed")}
    calls = []
    real = steps.Trainer.train_chunk
    with pytest.MonkeyPatch.context() as mp:
        def spy(self, phase):
            def call(state, data, indices, length):
                calls.append(int(indices.shape[0]))
                return real(self, phase)(state, data, indices, length)
            return call
        mp.setattr(steps.Trainer, "train_chunk", spy)
        train.train_and_evaluate(config(2), runs["k2"])
    assert calls == [2, 2, 1]
    train.train_and_evaluate(config(1), runs["k1"])
    train.train_and_evaluate(config(2, num_steps=4), runs["k2_resumed"])
    train.train_and_evaluate(config(2), runs["k2_resumed"])

    (k1, _), (k2, _), (resumed, meta) = [host_state(runs[name], config(1)) for name in runs]
    assert meta["step"] == 5
    for a, b, c in zip(jax.tree.leaves(k1), jax.tree.leaves(k2), jax.tree.leaves(resumed), strict=True):
        np.testing.assert_array_equal(b, c)
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-4)
    assert [r["step"] for r in _records(runs["k2"])] == [2, 4, 5]
    assert _records(runs["k2"]) == _records(runs["k2_resumed"])
    for a, b in zip(_records(runs["k1"]), _records(runs["k2"]), strict=True):
        assert a["motion_loss"] == pytest.approx(b["motion_loss"], rel=1e-4)


def test_device_and_host_paths_draw_the_same_batches_and_agree_to_rounding(tmp_path):
    states = []
    for mode in ("host", "device"):
        config = make_tiny_config(num_steps=6, **{"data.on_device": mode})
        train.train_and_evaluate(config, str(tmp_path / mode))
        states.append(host_state(str(tmp_path / mode), config)[0])
    diffs = [float(np.max(np.abs(a - b))) for a, b in zip(jax.tree.leaves(states[0]), jax.tree.leaves(states[1]))]
    assert max(diffs) < 1e-5


def test_chunks_stop_at_every_log_checkpoint_validation_phase_change_and_the_end():
    config = types.SimpleNamespace(num_steps=50, log_every=10, checkpoint_every=25, eval_every=0)
    phase = lambda t: "warm" if t < 7 else "alternating"  # noqa: E731
    ends, t = [], 0
    while t < config.num_steps:
        t = feed.chunk_end(config, phase, t, 4)
        ends.append(t)
    assert ends == [4, 7, 10, 14, 18, 20, 24, 25, 29, 30, 34, 38, 40, 44, 48, 50]
    assert feed.chunk_end(config, phase, 10, 100) == 20


def test_auto_placement_and_its_reasons(monkeypatch):
    pairs = {"moving": np.zeros((6, 32, 32, 1), np.float32), "fixed": np.zeros((6, 32, 32, 1), np.float32)}
    mesh = steps.sharding.make_mesh()

    def place(k=1, mode="auto"):
        return feed.placement(pairs, make_tiny_config(steps_per_call=k, **{"data.on_device": mode}), mesh)

    assert place() == (False, "training data: 6 pairs (0.0 MiB) kept on the host (a CPU run with "
                              "steps_per_call=1), one step per call")
    assert place(k=10) == (True, "training data: 6 pairs (0.0 MiB) placed on every device, 10 step(s) per call, "
                                 "unrolled")
    on_device, reason = feed.placement(pairs, make_tiny_config(steps_per_call=10, steps_per_call_form="loop"), mesh)
    assert on_device and reason.startswith("training data: 6 pairs (0.0 MiB) placed on every device, 10 step(s) "
                                           "per call, loop (on XLA:CPU a loop of steps runs 8-10x slower")
    assert place(mode="device")[0] and not place(mode="host")[0]
    monkeypatch.setattr(feed, "AUTO_LIMIT_BYTES", 1000)
    on_device, reason = place(k=10)
    assert not on_device and "kept on the host, one step per call: more than 0 MiB (2 GiB)" in reason
    with pytest.raises(ValueError, match="steps_per_call=10 is not allowed: 1 with data.on_device='host'"):
        config_check.validate_config(make_tiny_config(steps_per_call=10, **{"data.on_device": "host"}))


def test_chunk_gathers_the_batches_of_the_host_path():
    """The indices of step t are pipeline.batch_indices(seed, t, ...) on both paths."""
    config = make_tiny_config(steps_per_call=3, steps_per_call_form="loop", **{"data.on_device": "device"})
    splits = pipeline.load_splits(config)
    trainer = steps.Trainer(config)
    f = feed.Feed(trainer, splits["train"], config)
    captured = []
    monkey_chunk = trainer.train_chunk

    def spy(phase):
        def call(state, data, indices, length):
            captured.append((np.asarray(indices), int(length)))
            return monkey_chunk(phase)(state, data, indices, length)
        return call

    trainer.train_chunk = spy
    f.run(trainer.init_state(), 5, 7, "alternating")
    (indices, length), = captured
    n = pipeline.num_pairs(splits["train"])
    assert length == 2 and indices.shape == (3, config.batch_size)
    for row, t in enumerate((5, 6)):
        np.testing.assert_array_equal(indices[row], pipeline.batch_indices(config.seed, t, n, config.batch_size))


def test_batches_drawn_on_the_device_match_the_host_path_and_any_chunk_length(tmp_path):
    """data.order="device": the chunk draws its own indices (jax.random from the seed and the state's
    step); K = 1 and K = 3 in a loop end bit-identical, the host path draws the same batches (its
    parameters agree to rounding); the order is not the host order; a run keeps its order."""
    def config(mode, k, order="device"):
        return make_tiny_config(num_steps=6, log_every=3, checkpoint_every=6, steps_per_call=k,
                                steps_per_call_form="loop", **{"data.on_device": mode, "data.order": order})

    drawn = [np.asarray(steps.drawn_batch_indices(0, t, 7, 4)) for t in (5, 6)]
    jitted = jax.jit(steps.drawn_batch_indices, static_argnums=(2, 3))
    np.testing.assert_array_equal(drawn[0], np.asarray(jitted(np.int32(0), np.int32(5), 7, 4)))
    assert not np.array_equal(drawn[0], drawn[1]) and drawn[0].min() >= 0 and drawn[0].max() < 7
    assert not all(np.array_equal(steps.drawn_batch_indices(0, t, 50, 8), pipeline.batch_indices(0, t, 50, 8))
                   for t in range(3))  # another order than "host"

    states = {}
    for name, mode, k in (("k1", "device", 1), ("k3", "device", 3), ("host", "host", 1)):
        train.train_and_evaluate(config(mode, k), str(tmp_path / name))
        states[name] = host_state(str(tmp_path / name), config(mode, k))[0]
    leaves = {name: jax.tree.leaves(state) for name, state in states.items()}
    for a, b, c in zip(leaves["k1"], leaves["k3"], leaves["host"], strict=True):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_allclose(a, c, rtol=0, atol=1e-5)
    assert _records(str(tmp_path / "k1")) == _records(str(tmp_path / "k3"))

    with pytest.raises(ValueError, match="data.order"):
        train.train_and_evaluate(config("device", 3, "host"), str(tmp_path / "k3"))
    with pytest.raises(ValueError, match="data.order"):
        config_check.validate_config(make_tiny_config(**{"data.order": "gpu"}))
