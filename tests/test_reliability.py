"""Reliability: crash-safe resume, workdir lock and config record, one-line refusals that
leave the workdir as it was, non-finite stops, determinism.

Command-line cases run ``main.py`` in subprocesses (one CPU device) that share a persistent XLA
compilation cache, so only the first training run compiles; the others take a few seconds each.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cli_support import CHECKPOINT_EVERY, NUM_STEPS, ROOT, error_line, host_state, read_bytes, snapshot
from conftest import make_tiny_config
from hetreg_jax.core import losses
from hetreg_jax.train import step as steps
from hetreg_jax.train import loop as train
from hetreg_jax.base import workdir as workdir_lib
from hetreg_jax.train.checkpoint import Checkpointer, complete_steps


# ----------------------------------------------------------------------------------- crash & resume
def test_kill_9_after_first_checkpoint_then_resume_matches_uninterrupted(cli, trained):
    workdir = os.path.join(cli.base, "killed")
    ckpt_dir = os.path.join(workdir, "checkpoints")
    proc = cli.popen(workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not complete_steps(ckpt_dir):
        assert proc.poll() is None and time.time() < deadline, "run ended before its first checkpoint"
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    steps = complete_steps(ckpt_dir)
    assert steps[-1] < NUM_STEPS and not os.path.exists(os.path.join(workdir, "eval"))

    # What a crash in mid-save or mid-log leaves: an orbax temporary folder, a step folder without
    # its commit markers (orbax itself would pick it as latest), a half-written metrics line.
    fake_step = steps[-1] + CHECKPOINT_EVERY
    os.makedirs(os.path.join(ckpt_dir, str(fake_step), "state"))
    with open(os.path.join(ckpt_dir, str(fake_step), "state", "junk"), "w") as f:
        f.write("half")
    os.makedirs(os.path.join(ckpt_dir, f"{fake_step + CHECKPOINT_EVERY}.orbax-checkpoint-tmp-7", "state"))
    with open(os.path.join(workdir, "metrics.jsonl"), "a") as f:
        f.write('{"step": 999, "motion_lo')

    resumed = cli.run(workdir)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming from step {steps[-1]}" in resumed.stdout
    assert complete_steps(ckpt_dir) == complete_steps(os.path.join(trained, "checkpoints"))
    assert not any(".orbax-checkpoint-tmp" in name for name in os.listdir(ckpt_dir))

    config = cli.load_config()
    (full, full_meta), (again, again_meta) = host_state(trained, config), host_state(workdir, config)
    assert full_meta == again_meta and full_meta["step"] == NUM_STEPS
    for a, b in zip(jax.tree.leaves(full), jax.tree.leaves(again), strict=True):
        np.testing.assert_array_equal(a, b)  # bit-identical on CPU
    for name in ("eval/test_metrics.json", "eval/test_per_pair.csv", "metrics.jsonl"):
        assert read_bytes(os.path.join(workdir, name)) == read_bytes(os.path.join(trained, name)), name


def test_same_seed_same_metrics_other_seed_differs(cli, trained):
    runs = {seed: os.path.join(cli.base, f"seed{seed}_again") for seed in (0, 1)}
    procs = {seed: cli.popen(d, f"--config.seed={seed}", stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
             for seed, d in runs.items()}
    for proc in procs.values():
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]

    def report(d):
        with open(os.path.join(d, "eval", "test_metrics.json")) as f:
            return json.load(f)

    first, same, other = report(trained), report(runs[0]), report(runs[1])
    assert same == first
    assert other["dice"]["mean"] != first["dice"]["mean"]
    assert other["epe"]["mean"] != first["epe"]["mean"]


# ----------------------------------------------------------------------------------- refusals
FRESH = "fresh"  # a workdir that does not exist: it must still not exist afterwards
A_FILE = "a file"  # a --workdir that is a regular file
REFUSALS = {
    "unknown config key": (FRESH, ["--config.nmu_steps=3"], 2, ["nmu_steps", 'Did you mean "num_steps"']),
    "zero steps": (FRESH, ["--config.num_steps=0"], 1, ["config.num_steps=0 is not allowed: a whole number >= 1"]),
    "negative steps": (FRESH, ["--config.num_steps=-5"], 1, ["config.num_steps=-5 is not allowed"]),
    "eval without checkpoint": (FRESH, ["--mode=eval"], 1, ["no checkpoint in", "train first"]),
    "size vxm_diff cannot take": (FRESH, ["--config.method=vxm_diff", "--config.data.image_size=(42,36)"], 1,
                                  ["config.data.image_size=(42, 36) is not allowed", "multiples of 16 with method='vxm_diff'"]),
    "eval with another model": ("trained", ["--mode=eval", "--config.model=transmorph"], 1,
                                ["model='voxelmorph'", "model='transmorph'", "uninterrupted/checkpoints/40"]),
    "resume with another method": ("trained", ["--config.method=mse", "--allow_config_change"], 1,
                                   ["method='ours'", "method='mse'", "uninterrupted/checkpoints/40"]),
    "checkpoint tree of other widths": ("trained", ["--mode=eval", "--config.motion.enc_features=(8,16,16,16)"],
                                        1, ["does not match the networks", "motion_params.", "in the checkpoint"]),
    "config change without the flag": ("trained", ["--config.optim.motion_lr=0.01", "--config.loss.gamma=1.0"],
                                       1, ["was started with a different config (2 keys differ)",
                                        "loss.gamma: 0.5 -> 1.0; optim.motion_lr: 0.001 -> 0.01",
                                        "--allow_config_change"]),
    "num_steps below the checkpoint": ("trained", ["--config.num_steps=8"], 1,
                                       ["at step 40, past config.num_steps=8"]),
    "unknown label rule": (FRESH, ["--config.eval.label_rule=foo"], 1,
                           ["config.eval.label_rule='foo' is not allowed: one of 'threshold', 'reference'"]),
    "unknown snr form": ("trained", ["--config.loss.snr_form=foo"], 1,
                         ["config.loss.snr_form='foo' is not allowed: one of 'paper', 'reference'"]),
    "negative learning rate": (FRESH, ["--config.optim.motion_lr=-1"], 1,
                               ["config.optim.motion_lr=-1.0 is not allowed: a finite number > 0"]),
    "beta above 1": (FRESH, ["--config.loss.beta=2"], 1, ["config.loss.beta=2.0 is not allowed"]),
    "fixed label without moving label": (FRESH, ["--mode=register", "--moving=m.nii.gz", "--fixed=f.nii.gz",
                                                 "--out=o", "--fixed_label=f_gt.nii.gz"], 1,
                                         ["--fixed_label needs --moving_label"]),
    "workdir is a file (train)": (A_FILE, [], 1, ["is not a folder"]),
    "workdir is a file (inspect)": (A_FILE, ["--mode=inspect"], 1, ["is not a folder"]),
    "workdir is a file (register)": (A_FILE, ["--mode=register", "--moving=m.nii.gz", "--fixed=f.nii.gz",
                                              "--out=o"], 1, ["is not a folder"]),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_bad_input_is_refused_in_one_line_leaving_the_workdir_as_it_was(cli, trained, tmp_path, case):
    target, extra, code, expected = REFUSALS[case]
    workdir = {FRESH: str(tmp_path / "fresh"), A_FILE: str(tmp_path / "file")}.get(target, trained)
    if target == A_FILE:
        with open(workdir, "w") as f:
            f.write("not a folder")
    before = snapshot(workdir)
    proc = cli.run(workdir, *extra)
    assert proc.returncode == code
    line = error_line(proc)
    for text in expected:
        assert text in line, line
    assert "Traceback" not in proc.stderr
    assert snapshot(workdir) == before


def test_missing_config_file_is_refused_in_one_line(cli, tmp_path):
    proc = subprocess.run([sys.executable, "main.py", "--config=configs/nonexist.py", f"--workdir={tmp_path}/w"],
                          cwd=ROOT, env=cli.env, text=True, capture_output=True, timeout=120)
    assert proc.returncode == 2
    assert error_line(proc) == "error: --config=configs/nonexist.py: no such file"
    assert not os.path.exists(tmp_path / "w")


def test_missing_workdir_flag_is_refused_in_one_line(cli):
    proc = cli.run(None)
    assert proc.returncode == 2
    assert "--workdir" in error_line(proc)


def test_traceback_only_with_verbosity(cli, tmp_path):
    proc = cli.run(str(tmp_path / "w"), "--config.num_steps=0", "--verbosity=1")
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "config.num_steps=0 is not allowed" in proc.stderr


def test_second_process_on_a_locked_workdir_is_refused(cli, trained_copy):
    lock = workdir_lib.WorkdirLock(trained_copy).acquire()
    try:
        lock.claim()
        before = snapshot(trained_copy)
        proc = cli.run(trained_copy)
        assert proc.returncode == 1
        line = error_line(proc)
        assert f"workdir {trained_copy} is in use by another process (pid {os.getpid()} on" in line
        assert snapshot(trained_copy) == before
        with pytest.raises(workdir_lib.WorkdirLocked, match="in use"):  # --mode=eval takes the lock too
            train.evaluate_checkpoint(cli.load_config(), trained_copy)
    finally:
        lock.release()
    with workdir_lib.WorkdirLock(trained_copy):  # free again
        pass


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(cli, trained_copy):
    ckpt_dir = os.path.join(trained_copy, "checkpoints")
    checkpoints_before = snapshot(ckpt_dir)
    proc = cli.run(trained_copy, "--allow_config_change", "--config.optim.motion_lr=1e30",
                   f"--config.num_steps={NUM_STEPS + 8}")
    assert proc.returncode == 1
    line = error_line(proc)
    assert re.search(r"non-finite [a-z_, ]+ at step 4[1-8] \(phase alternating\)", line), line
    assert f"the last good checkpoint (step {NUM_STEPS}) is kept in {ckpt_dir}" in line
    assert snapshot(ckpt_dir) == checkpoints_before  # nothing written after the bad step
    with open(os.path.join(trained_copy, "metrics.jsonl")) as f:
        assert max(json.loads(r)["step"] for r in f) == NUM_STEPS


# ----------------------------------------------------------------------------------- config record
def test_config_change_with_the_flag_is_recorded(cli, trained_copy):
    proc = cli.run(trained_copy, "--allow_config_change", "--config.seed=3")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "config changed: seed: 0 -> 3" in proc.stdout
    with open(os.path.join(trained_copy, "config_history.jsonl")) as f:
        (record,) = [json.loads(line) for line in f]
    assert record["changes"] == {"seed": [0, 3]} and record["step"] == NUM_STEPS
    assert record["restricted"] == ["seed"]
    with open(os.path.join(trained_copy, "config.json")) as f:
        assert json.load(f)["seed"] == 3
    new = cli.load_config()
    new.seed = 3
    assert workdir_lib.config_changes(new, trained_copy) == {}  # the new config is now the record
    new.seed = 0
    with pytest.raises(workdir_lib.ConfigMismatch, match="seed: 3 -> 0"):
        workdir_lib.config_changes(new, trained_copy)


def test_a_record_without_a_later_key_reads_as_its_old_behaviour(tmp_path):
    """A run recorded before a key existed resumes with the key's default, which reproduces it; any
    other value is a restricted change that names the key."""
    config = make_tiny_config()
    record = config.to_dict()
    del record["unet_upsample"], record["data"]["order"]
    os.makedirs(tmp_path / "run")
    with open(tmp_path / "run" / "config.json", "w") as f:
        json.dump(record, f, default=list)
    assert workdir_lib.config_changes(config, str(tmp_path / "run")) == {}
    config.data.order = "device"
    with pytest.raises(workdir_lib.ConfigMismatch, match='data.order: "host" -> "device"'):
        workdir_lib.config_changes(config, str(tmp_path / "run"))


def test_free_keys_change_without_the_flag(tmp_path):
    config = make_tiny_config()
    workdir_lib.record_config(config, str(tmp_path), {})
    changed = make_tiny_config(num_steps=60, log_every=5, eval_every=10, checkpoint_every=7,
                               keep_checkpoints=5, **{"eval.batch_size": 2, "eval.label_rule": "reference"})
    diffs = workdir_lib.config_changes(changed, str(tmp_path))
    assert diffs == {"num_steps": (6, 60), "log_every": (2, 5), "eval_every": (0, 10),
                     "checkpoint_every": (3, 7), "keep_checkpoints": (3, 5), "eval.batch_size": (4, 2),
                     "eval.label_rule": ("threshold", "reference")}
    restricted = make_tiny_config(**{"motion.int_steps": 5, "data.image_size": (64, 64)})
    with pytest.raises(workdir_lib.ConfigMismatch) as info:
        workdir_lib.config_changes(restricted, str(tmp_path))
    assert info.value.differences == {"data.image_size": ([32, 32], [64, 64]), "motion.int_steps": (7, 5)}
    assert "data.image_size: [32, 32] -> [64, 64]; motion.int_steps: 7 -> 5" in str(info.value)
    assert "\n" not in str(info.value)
    assert set(workdir_lib.config_changes(restricted, str(tmp_path), allow_change=True)) == {
        "data.image_size", "motion.int_steps"}


# ----------------------------------------------------------------------------------- units
def test_half_written_checkpoints_are_never_picked(trained, tmp_path):
    ckpt_dir = shutil.copytree(os.path.join(trained, "checkpoints"), str(tmp_path / "checkpoints"))
    good = complete_steps(ckpt_dir)
    assert good == [NUM_STEPS - 8, NUM_STEPS - 4, NUM_STEPS]  # keep_checkpoints = 3
    top_marker_only = os.path.join(ckpt_dir, str(NUM_STEPS + 12))
    shutil.copytree(os.path.join(ckpt_dir, str(NUM_STEPS)), top_marker_only)
    os.remove(os.path.join(top_marker_only, "meta", "commit_success.txt"))
    fakes = [os.path.join(ckpt_dir, str(NUM_STEPS + 4)),
             os.path.join(ckpt_dir, f"{NUM_STEPS + 8}.orbax-checkpoint-tmp-1700000000"), top_marker_only]
    for path in fakes[:2]:
        os.makedirs(os.path.join(path, "state"))
    ckpt = Checkpointer(ckpt_dir)
    try:
        assert ckpt.latest_step() == NUM_STEPS and ckpt.all_steps() == good
        assert ckpt.restore_meta()["step"] == NUM_STEPS
        assert ckpt.incomplete_paths() == sorted(fakes)
        assert ckpt.remove_incomplete() == sorted(fakes)
        assert sorted(os.listdir(ckpt_dir)) == sorted(str(s) for s in good)
        assert list(ckpt._manager.all_steps()) == good  # orbax's own view agrees after the clean-up
    finally:
        ckpt.close()


def test_lock_is_exclusive_and_freed_when_its_holder_is_killed(tmp_path):
    workdir = str(tmp_path / "w")
    holder = subprocess.Popen(
        [sys.executable, "-c", "import time\nfrom hetreg_jax.base.workdir import WorkdirLock\n"
         f"lock = WorkdirLock({workdir!r}).acquire()\nlock.claim()\nprint('held', flush=True)\ntime.sleep(120)"],
        cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(workdir_lib.WorkdirLocked, match=f"pid {holder.pid} on"):
            workdir_lib.WorkdirLock(workdir).acquire()
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    with workdir_lib.WorkdirLock(workdir) as lock:  # the kernel released it: not stale
        assert lock.held
        with pytest.raises(workdir_lib.WorkdirLocked):  # a second handle in the same process is refused too
            workdir_lib.WorkdirLock(workdir).acquire()
    with pytest.raises(ValueError, match="not a folder"):
        workdir_lib.WorkdirLock(os.path.join(workdir, ".lock")).acquire()


def test_trim_metrics_drops_replayed_steps_and_half_lines(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 4, "a": 1.0}\n{"step": 8, "a": 2.0}\n{"step": 12, "a": 3.0}\n{"step": 16, "a')
    assert workdir_lib.trim_metrics(str(tmp_path), 8) == 2
    assert path.read_text() == '{"step": 4, "a": 1.0}\n{"step": 8, "a": 2.0}\n'
    assert workdir_lib.trim_metrics(str(tmp_path), 8) == 0  # nothing to do: the file is left alone


def test_log_variance_is_clipped_to_a_safe_range():
    lo, hi = steps.LOG_VAR_RANGE
    assert (lo, hi) == (-15.0, 15.0)
    config = make_tiny_config()
    trainer = steps.Trainer(config)
    x = jnp.linspace(0.0, 1.0, 4 * 32 * 32, dtype=jnp.float32).reshape(4, 32, 32, 1)
    params = jax.device_get(jax.jit(trainer.variance_model.init)(jax.random.key(0), x, x)["params"])
    log_var_fn = jax.jit(trainer._log_var)
    for bias, bound in ((1e6, hi), (-1e6, lo)):
        params["log_var"]["bias"] = np.full_like(params["log_var"]["bias"], bias)
        log_var = log_var_fn(params, x, x[::-1])
        assert float(jnp.min(log_var)) == float(jnp.max(log_var)) == bound
        weight = losses.snr_weight(x[::-1], log_var, config.loss.gamma, mask=x > 0)
        nll = losses.beta_nll(x[::-1], x, log_var, beta=config.loss.beta)
        assert bool(jnp.all(jnp.isfinite(weight))) and bool(jnp.isfinite(nll))


def test_background_checkpoint_survives_donation_and_reports_a_full_disk(tmp_path):
    """A background save copies the state to the host before returning, so the device buffers may
    be donated (deleted) at once; the write is confirmed by finish(); a full disk found then is a
    NoSpace naming that step, its half-written folder removed, the older checkpoint kept."""
    import errno

    from hetreg_jax.train.checkpoint import NoSpace

    ckpt = Checkpointer(str(tmp_path / "checkpoints"), asynchronous=True)
    values = {"a": np.arange(1000, dtype=np.float32), "b": np.full((3, 4), 7.0, np.float32)}
    state = jax.tree.map(jnp.asarray, values)
    ckpt.save(2, state, {"step": 2}, wait=False)
    assert ckpt.pending == 2 and ckpt.confirmed is None
    for leaf in jax.tree.leaves(state):
        leaf.delete()                                   # as a donated buffer is
    ckpt.finish()
    assert ckpt.pending is None and ckpt.confirmed == 2 and ckpt.all_steps() == [2]
    restored, meta = ckpt.restore(jax.tree.map(lambda v: jax.ShapeDtypeStruct(v.shape, v.dtype), values))
    assert meta == {"step": 2}
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(restored), values)

    ckpt.save(4, jax.tree.map(jnp.asarray, values), {"step": 4}, wait=False)
    real_wait = ckpt._manager.wait_until_finished

    def full_disk():
        real_wait()
        os.remove(os.path.join(ckpt.step_dir(4), "commit_success.txt"))   # as if cut short
        raise OSError(errno.ENOSPC, "No space left on device")

    ckpt._manager.wait_until_finished = full_disk
    with pytest.raises(NoSpace, match="checkpoint of step 4"):
        ckpt.finish()
    ckpt._manager.wait_until_finished = real_wait
    assert ckpt.confirmed == 2 and ckpt.all_steps() == [2] and not os.path.exists(ckpt.step_dir(4))
    ckpt.close()
