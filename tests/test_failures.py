"""Failure cases on the default path: the XLA:CPU dispatch deadlock, every config value checked
before anything is written, read-only and full disks, Ctrl-C, the workdir lock's holder.

The command-line cases run ``main.py`` (or the benchmark) in subprocesses on the tiny config.
Read-only and full disks are real: small tmpfs mounts (the tests that need them are skipped where
this process may not mount).
"""

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cli_support import ROOT, error_line, snapshot
from conftest import make_tiny_config
from hetreg_jax.base.errors import InputError
from hetreg_jax.config import check as config_check
from hetreg_jax.config import json_config
from hetreg_jax.data import pipeline
from hetreg_jax.evaluate import compare
from hetreg_jax.base import sharding
from hetreg_jax.train import loop as train
from hetreg_jax.base import workdir as workdir_lib
from hetreg_jax.train.checkpoint import _is_no_space, complete_steps


# ----------------------------------------------------------------------------------- the deadlock
def test_in_flight_keeps_at_most_depth_steps_queued():
    queue = sharding.InFlight(depth=3)
    step = jax.jit(lambda x: x + 1.0)
    x = jnp.zeros(())
    for i in range(10):
        x = step(x)
        queue.push(x)
        assert len(queue) == min(i + 1, 3)
    assert float(x) == 10.0
    with pytest.raises(ValueError, match="depth must be >= 1"):
        sharding.InFlight(depth=0)


def test_collective_timeouts_are_added_unless_the_user_set_them(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_collective_call_terminate_timeout_seconds=7 --xla_dump_to=/tmp/d")
    flags = sharding.set_cpu_collective_timeouts().split()
    assert flags == ["--xla_cpu_collective_call_terminate_timeout_seconds=7", "--xla_dump_to=/tmp/d",
                     "--xla_cpu_collective_call_warn_stuck_timeout_seconds=120"]
    monkeypatch.delenv("XLA_FLAGS")
    assert sharding.set_cpu_collective_timeouts().split() == [
        "--xla_cpu_collective_call_terminate_timeout_seconds=1800",
        "--xla_cpu_collective_call_warn_stuck_timeout_seconds=120"]


def test_training_loop_never_queues_more_than_the_bound(tmp_path, monkeypatch):
    depths = []

    class Recording(sharding.InFlight):
        def push(self, outputs):
            super().push(outputs)
            depths.append(len(self))

    monkeypatch.setattr(sharding, "InFlight", Recording)
    config = make_tiny_config(num_steps=12, log_every=12, checkpoint_every=12)
    train.train_and_evaluate(config, str(tmp_path / "run"))
    assert len(depths) == 12 and max(depths) == sharding.MAX_IN_FLIGHT < 32


def test_many_steps_without_a_sync_on_two_cpu_devices_complete(tmp_path):
    """The reproduction: 300 training steps and 200 inference batches dispatched with no read in
    between, on 2 XLA CPU devices. Unbounded, this aborted in 3 of 3 runs (SIGABRT, "Termination
    timeout for all reduce ... only 1 of them arrived"); the abort comes after 10 s here."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3",
               XLA_FLAGS="--xla_cpu_collective_call_terminate_timeout_seconds=10")
    proc = subprocess.run([sys.executable, "-m", "hetreg_jax.bench", "--config=tests/tiny_config.py",
                           "--steps=300", "--infer_batches=200", "--cpu_devices=2"],
                          cwd=ROOT, env=env, text=True, capture_output=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert '"devices": "2x cpu"' in proc.stdout and '"final_loss_finite": true' in proc.stdout


# ----------------------------------------------------------------------------------- config values
BAD_VALUES = {
    "eval.label_rule": ("foo", "one of 'threshold', 'reference'"),
    "loss.snr_form": ("foo", "one of 'paper', 'reference'"),
    "method": ("oura", "one of 'ours', 'mse'"),
    "model": ("unet", "one of 'voxelmorph', 'transmorph'"),
    "optim.motion_schedule": ("cosine", "one of 'auto', 'constant', 'poly'"),
    "data.dataset": ("brain", "one of 'acdc', 'camus', 'echo3d'"),
    "optim.motion_lr": (-1.0, "a finite number > 0"),
    "optim.variance_lr": (0.0, "a finite number > 0"),
    "loss.gamma": (-1.0, "a finite number in [0, 1]"),
    "loss.beta": (2.0, "a finite number in [0, 1]"),
    "loss.smooth_weight": (-1.0, "a finite number >= 0"),
    "loss.reg_scale": (float("nan"), "a finite number >= 0"),
    "loss.ncc_window": (8, "an odd whole number >= 1"),
    "loss.mi_bins": (1, "a whole number >= 2"),
    "motion.int_steps": (-1, "a whole number >= 0"),
    "motion.int_downsize": (0, "a whole number >= 1"),
    "motion.enc_features": ((16, 0), "a non-empty tuple of whole numbers >= 1"),
    "transmorph.num_heads": ((4, 4, 8), "one entry per stage of transmorph.depths (4)"),
    "transmorph.drop_path_rate": (1.0, "a finite number in [0, 1)"),
    "data.image_size": ((64,), "2 or 3 whole numbers >= 1"),
    "data.synthetic_subjects": (2, "a whole number >= 3"),
    "data.noise_scale": (-0.5, "a finite number >= 0"),
    "eval.val_pairs": (-1, "a whole number >= 0"),
    "eval.sparsification_steps": (1, "a whole number >= 2"),
    "eval.split": ("val", "one of 'test', 'all'"),
    "batch_size": (0, "a whole number >= 1"),
    "seed": (-3, "a whole number >= 0"),
}


@pytest.mark.parametrize("key", list(BAD_VALUES))
def test_every_value_without_a_meaning_is_refused_naming_key_value_and_range(key):
    value, allowed = BAD_VALUES[key]
    config = make_tiny_config(**{key: value})
    with pytest.raises(ValueError) as info:
        config_check.validate_config(config)
    message = str(info.value)
    assert message.startswith(f"config.{key}={value!r} is not allowed: ") and allowed in message, message
    assert "\n" not in message


def test_the_shipped_configs_and_edge_values_pass():
    import runpy

    for name in ("default", "quick", "acdc", "camus", "echo3d"):
        config_check.validate_config(runpy.run_path(os.path.join(ROOT, "configs", f"{name}.py"))["get_config"]())
    edges = {"loss.gamma": 0.0, "loss.beta": 1.0, "loss.smooth_weight": 0.0, "motion.int_steps": 0,
             "eval_every": 0, "transmorph.window_size": (0,), "data.image_size": (32, 32, 32)}
    config_check.validate_config(make_tiny_config(**edges))


PAPER_MOTION = {"motion.enc_features": (16, 32, 32, 32), "motion.dec_features": (32, 32, 32, 32, 32, 16, 16)}
UNREAD_KEYS = [  # (overrides, key, value, allowed): keys the chosen networks never read, away from their default
    ({"model": "transmorph", "motion.bidirectional": True}, "motion.bidirectional", True, "the default False"),
    ({"model": "transmorph", "motion.int_steps": 0}, "motion.int_steps", 0, "the default 7"),
    ({"model": "transmorph", "motion.int_downsize": 1}, "motion.int_downsize", 1, "the default 2"),
    ({"model": "transmorph", "motion.enc_features": (8, 16)}, "motion.enc_features", (8, 16),
     "the default (16, 32, 32, 32)"),
    ({"model": "transmorph", "motion.dec_features": [16, 16, 8]}, "motion.dec_features", (16, 16, 8),
     "the default (32, 32, 32, 32, 32, 16, 16)"),
    ({"transmorph.embed_dim": 48}, "transmorph.embed_dim", 48, "the default 96"),
    ({"transmorph.depths": (1, 1, 1, 1)}, "transmorph.depths", (1, 1, 1, 1), "the default (2, 2, 4, 2)"),
    ({"transmorph.num_heads": (2, 2, 2, 2)}, "transmorph.num_heads", (2, 2, 2, 2), "the default (4, 4, 8, 8)"),
    ({"transmorph.window_size": (4, 4)}, "transmorph.window_size", (4, 4), "the default (0,)"),
    ({"transmorph.drop_path_rate": 0.1}, "transmorph.drop_path_rate", 0.1, "the default 0.3"),
]


@pytest.mark.parametrize("overrides,key,value,allowed", UNREAD_KEYS, ids=[case[1] for case in UNREAD_KEYS])
def test_a_key_the_other_model_reads_is_refused_when_changed(overrides, key, value, allowed):
    model = overrides.get("model", "voxelmorph")
    base = PAPER_MOTION if model == "transmorph" else {}
    with pytest.raises(ValueError) as info:
        config_check.validate_config(make_tiny_config(**{**base, **overrides}))
    message = str(info.value)
    assert message.startswith(f"config.{key}={value!r} is not allowed: {allowed} with model={model!r}"), message
    assert "would do nothing" in message and "\n" not in message


def test_keys_both_models_read_and_defaults_pass():
    import runpy

    from hetreg_jax.experiments import runs as experiment_runs

    # TransMorph reads motion.predict_sigma (its sigma_z head); defaults of the other model's keys,
    # also as lists (a config read back from config.json), pass.
    config_check.validate_config(make_tiny_config(model="transmorph", **{
        **PAPER_MOTION, "motion.predict_sigma": True, "transmorph.embed_dim": 48, "transmorph.window_size": (2, 2),
        "motion.int_steps": 7, "motion.enc_features": [16, 32, 32, 32]}))
    config_check.validate_config(make_tiny_config(**{"transmorph.window_size": [0], "transmorph.depths": [2, 2, 4, 2]}))
    for profile in ("quick", "cpu"):  # the experiment runner's TransMorph runs set transmorph.embed_dim
        for model in ("voxelmorph", "transmorph"):
            for dataset in ("acdc", "echo3d"):
                base = runpy.run_path(os.path.join(ROOT, "configs", "acdc.py"))["get_config"]()
                run = experiment_runs.Run(dataset=dataset, model=model, method="ours", seed=0)
                config_check.validate_config(experiment_runs.run_config(base, run, profile))


@pytest.mark.parametrize("method,refused", [("ours", True), ("nll", False), ("beta_nll", False), ("mse", False),
                                            ("ncc", False)])
def test_bidirectional_is_refused_where_the_variance_net_never_sees_the_backward_direction(method, refused):
    config = make_tiny_config(method=method, **{"motion.bidirectional": True})
    if not refused:  # joint baselines train the variance net through both directions' loss
        config_check.validate_config(config)
        return
    with pytest.raises(ValueError) as info:
        config_check.validate_config(config)
    assert str(info.value).startswith(f"config.motion.bidirectional=True is not allowed: False with method={method!r}")


# ----------------------------------------------------------------------------------- folders
def test_check_writable_refuses_files_in_the_way_and_creates_nothing(tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(ValueError, match=f"--workdir {a_file} is not a folder"):
        workdir_lib.check_writable(str(a_file))
    with pytest.raises(ValueError, match=f"--out {a_file}/run .its parent {a_file} is a file"):
        workdir_lib.check_writable(str(a_file / "run"), "--out")
    workdir_lib.check_writable(str(tmp_path / "new" / "deeper"))
    assert sorted(os.listdir(tmp_path)) == ["file"]


@contextlib.contextmanager
def tmpfs(path, size_kib):
    """A real, small file system at ``path`` (skips the test where mounting is not allowed)."""
    os.makedirs(path, exist_ok=True)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kib}k", "tmpfs", str(path)],
                          capture_output=True, text=True)
    if proc.returncode:
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip()})")
    try:
        yield str(path)
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def size_kib(path):
    return sum(os.path.getsize(os.path.join(root, name)) for root, _, files in os.walk(path)
               for name in files) // 1024


def remount(path, mode):
    subprocess.run(["mount", "-o", f"remount,{mode}", path], check=True)


def test_read_only_disk_is_refused_before_any_work_and_eval_can_report_elsewhere(cli, trained, tmp_path):
    with tmpfs(tmp_path / "disk", 2 * size_kib(trained) + 2048) as disk:
        run = os.path.join(disk, "run")
        subprocess.run(["cp", "-a", trained, run], check=True)
        remount(disk, "ro")
        before = snapshot(run)
        cases = {
            "train": ([], f"cannot write to --workdir {run} (Read-only file system)"),
            "eval": (["--mode=eval"], f"cannot write to --workdir {run}/eval (Read-only file system); "
                                      "write the report elsewhere with --out=DIR"),
            "inspect": (["--mode=inspect"], f"cannot write to --workdir {run} (Read-only file system)"),
            "register": (["--mode=register", "--moving=m.nii.gz", "--fixed=f.nii.gz", f"--out={disk}/out"],
                         f"cannot write to --out {disk}/out (Read-only file system)"),
        }
        for mode, (extra, expected) in cases.items():
            proc = cli.run(run, *extra)
            assert proc.returncode == 1, (mode, proc.stderr[-2000:])
            assert error_line(proc) == f"error: {expected}", mode
        report = str(tmp_path / "report")
        proc = cli.run(run, "--mode=eval", f"--out={report}")
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert sorted(os.listdir(report)) == [
            "config.json", "test_examples.png", "test_metrics.json", "test_per_pair.csv", "uncertainty.png"]
        with open(os.path.join(report, "test_metrics.json")) as f, \
                open(os.path.join(trained, "eval", "test_metrics.json")) as g:
            assert f.read() == g.read()
        assert snapshot(run) == before
    # the report folder names what it evaluated, and compare reads it like a run
    assert workdir_lib.recorded_config(report) == workdir_lib.recorded_config(trained)
    assert compare.compare(report, trained, ["dice"])["metrics"]["dice"]["mean_diff"] == 0.0


def test_eval_on_other_data_needs_out_and_leaves_the_runs_reports(trained_copy, tmp_path):
    before = snapshot(trained_copy)
    config = json_config.config_from_json(os.path.join(trained_copy, "config.json"))
    config.seed = 1  # another seed draws other phantoms: not the run's own test split
    with pytest.raises(InputError, match=r"on other data than its own test split \(seed: 0 -> 1\) needs --out"):
        train.evaluate_checkpoint(config, trained_copy)
    config.seed, config.data.order = 0, "device"  # how training batches are drawn: the same test pairs
    assert workdir_lib.evaluated_data_changes(config, trained_copy) == {}
    # every pair of the data (a network tested on another dataset): only with --out, never in training
    config.eval.split = "all"
    with pytest.raises(InputError, match=r"\(eval.split: 'test' -> 'all'\) needs --out"):
        train.evaluate_checkpoint(config, trained_copy)
    with pytest.raises(InputError, match=r"config.eval.split='all' scores every pair, training pairs included"):
        train.train_and_evaluate(config, str(tmp_path / "new"))
    assert not os.path.exists(tmp_path / "new") and snapshot(trained_copy) == before
    report = str(tmp_path / "all")
    summary = train.evaluate_checkpoint(config, trained_copy, out=report)
    splits = pipeline.load_splits(config)
    assert summary["n_pairs"] == sum(pipeline.num_pairs(splits[name]) for name in pipeline.SPLITS)
    assert summary["n_pairs"] > pipeline.num_pairs(splits["test"])
    assert workdir_lib.recorded_config(report)["eval"]["split"] == "all"
    assert snapshot(trained_copy) == before


def test_full_disk_keeps_the_last_checkpoint_and_a_rerun_resumes(cli, trained, tmp_path):
    with tmpfs(tmp_path / "disk", 2 * size_kib(trained) + 2048) as disk:
        run = os.path.join(disk, "run")
        subprocess.run(["cp", "-a", trained, run], check=True)
        free_kib = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize // 1024
        with open(os.path.join(disk, "filler"), "wb") as f:
            f.write(b"\0" * (free_kib - 24) * 1024)
        checkpoints = snapshot(os.path.join(run, "checkpoints"))
        last = complete_steps(os.path.join(run, "checkpoints"))[-1]
        more = ["--config.num_steps=48"]
        proc = cli.run(run, *more)
        assert proc.returncode == 1
        assert error_line(proc) == (
            f"error: no space left on the device of {run}/checkpoints while saving the checkpoint of step "
            f"{last + 4}; the last good checkpoint (step {last}) is kept in {run}/checkpoints; free some "
            "space and rerun the same command to resume")
        assert snapshot(os.path.join(run, "checkpoints")) == checkpoints
        os.remove(os.path.join(disk, "filler"))
        proc = cli.run(run, *more)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert f"resuming from step {last}" in proc.stdout
        assert complete_steps(os.path.join(run, "checkpoints"))[-1] == 48


# ----------------------------------------------------------------------------------- Ctrl-C
def _start_and_wait_for(cli, workdir, text, *extra):
    proc = cli.popen(workdir, *extra, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    for line in proc.stdout:
        if text in line:
            return proc
        assert time.time() < deadline
    raise AssertionError(f"the run ended before printing {text!r}: {proc.stderr.read()[-2000:]}")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl_c", "sigterm"])
def test_ctrl_c_saves_the_current_step_then_a_rerun_resumes(cli, tmp_path, signum):
    # SIGTERM (preemption on SLURM or a Cloud TPU VM) is handled as the first Ctrl-C, with the same exit code.
    # 80 steps: the signal lands some 75 steps before the end, and the rerun trains only what is left
    workdir = str(tmp_path / "run")
    more = ["--config.num_steps=80", "--config.log_every=5", "--config.checkpoint_every=1000"]
    proc = _start_and_wait_for(cli, workdir, "step 5/80", *more)
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    (step,) = complete_steps(os.path.join(workdir, "checkpoints"))
    assert 5 <= step < 80
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines[-1] == (f"stopped at step {step} (checkpoint of step {step} in {workdir}/checkpoints); "
                         "rerun the same command to resume")
    assert "Traceback" not in err
    again = cli.run(workdir, *more)
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"resuming from step {step}" in again.stdout


def test_the_first_ctrl_c_only_asks_and_the_second_stops_at_once():
    from hetreg_jax.base.interrupt import StopRequest

    # Python's own handler before, as in a terminal (a pytest-xdist worker installs another one)
    outer = signal.signal(signal.SIGINT, signal.default_int_handler)
    before = signal.getsignal(signal.SIGINT)
    try:
        _first_asks_second_stops(StopRequest)
    finally:
        signal.signal(signal.SIGINT, outer)
    assert before is signal.default_int_handler


def test_the_first_sigterm_only_asks_and_restores_the_previous_handlers():
    from hetreg_jax.base.interrupt import StopRequest

    seen = []
    outer = signal.signal(signal.SIGTERM, lambda signum, frame: seen.append(signum))
    try:
        before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        with StopRequest() as stop:
            assert not stop.agreed()  # one process: its own flag, no collective
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.01)
            assert stop.requested and stop.agreed() and not seen
            assert {s: signal.getsignal(s) for s in before} == before  # a second signal is not ours
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.01)
            assert seen == [signal.SIGTERM]
        assert {s: signal.getsignal(s) for s in before} == before
    finally:
        signal.signal(signal.SIGTERM, outer)


def _first_asks_second_stops(StopRequest):
    before = signal.getsignal(signal.SIGINT)
    with StopRequest() as stop:
        assert not stop.requested
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.01)  # Python runs the handler at the next instruction
        assert stop.requested
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)
    assert signal.getsignal(signal.SIGINT) is before


# ----------------------------------------------------------------------------------- lock
def test_the_lock_names_its_holder_from_the_first_instant_and_refusals_restore_it(tmp_path):
    workdir = str(tmp_path / "w")
    os.makedirs(workdir)
    gone = subprocess.Popen(["true"])
    gone.wait()  # a process that has ended: the text of a holder that died
    stale = f"pid {gone.pid} on {socket.gethostname()} since yesterday\n"
    with open(os.path.join(workdir, ".lock"), "w") as f:
        f.write(stale)
    holder = subprocess.Popen(  # takes the lock as soon as it is free, then waits
        [sys.executable, "-c", "import sys, time\nfrom hetreg_jax.base.workdir import WorkdirLock, WorkdirLocked\n"
         "while True:\n    try:\n"
         f"        lock = WorkdirLock({workdir!r}).acquire()\n        break\n"
         "    except WorkdirLocked:\n        time.sleep(0.001)\n"
         "sys.stdin.read()\nlock.release()"],
        cwd=ROOT, stdin=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 60
        while True:  # from the first moment the lock is seen taken, its holder is named
            try:
                workdir_lib.WorkdirLock(workdir).acquire().release()
            except workdir_lib.WorkdirLocked as exc:
                assert f"(pid {holder.pid} on {socket.gethostname()} since " in str(exc), str(exc)
                break
            assert time.time() < deadline and holder.poll() is None
    finally:
        holder.communicate("", timeout=60)
    with open(os.path.join(workdir, ".lock")) as f:  # not claimed: the previous text is back
        assert f.read() == stale
    with workdir_lib.WorkdirLock(workdir) as lock:
        lock.claim()
    with open(os.path.join(workdir, ".lock")) as f:
        assert f.read().startswith(f"pid {os.getpid()} on ")


def test_eval_and_inspect_respect_a_held_lock_before_any_checkpoint(tmp_path):
    from hetreg_jax.data import inspect

    workdir = str(tmp_path / "starting")
    config = make_tiny_config()
    with workdir_lib.WorkdirLock(workdir):  # a training run that has not checkpointed yet
        before = snapshot(workdir)
        with pytest.raises(workdir_lib.WorkdirLocked, match="is in use by another process"):
            train.evaluate_checkpoint(config, workdir)
        with pytest.raises(workdir_lib.WorkdirLocked, match="is in use by another process"):
            inspect.run(config, workdir)
        assert snapshot(workdir) == before
    with pytest.raises(FileNotFoundError, match="no checkpoint in"):
        train.evaluate_checkpoint(config, workdir)


def test_a_full_disk_is_recognised_however_orbax_wraps_it():
    import errno

    def chained(inner):
        try:
            try:
                raise inner
            except Exception as exc:
                raise RuntimeError("orbax: save failed") from exc
        except RuntimeError as outer:
            return outer

    assert _is_no_space(chained(OSError(errno.ENOSPC, "No space left on device")))
    assert _is_no_space(ValueError("RESOURCE_EXHAUSTED: Failed writing: ... [os_error_code='28']"))
    assert not _is_no_space(ValueError("RESOURCE_EXHAUSTED: out of memory"))
    assert not _is_no_space(chained(OSError(errno.EACCES, "Permission denied")))
    assert not _is_no_space(np.linalg.LinAlgError("singular"))
