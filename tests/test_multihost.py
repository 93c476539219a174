"""Two processes (2 CPU devices each, gloo collectives on loopback) train like one process with 4."""

import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np

from hetreg_jax.train import step as steps
from hetreg_jax.train.checkpoint import Checkpointer
from conftest import make_tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "tests", "tiny_config.py")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _main(config_path, workdir, *flags):
    cmd = [sys.executable, "main.py", f"--config={config_path}", f"--workdir={workdir}", *flags]
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _final_state(workdir):
    trainer = steps.Trainer(make_tiny_config())
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"))
    state, _ = ckpt.restore(trainer.abstract_state())
    ckpt.close()
    return jax.tree.map(lambda x: np.asarray(jax.device_get(x)), state)


def test_two_processes_match_one_process_with_the_same_devices(tmp_path):
    config_path = TINY
    multi, single = str(tmp_path / "multi"), str(tmp_path / "single")
    port = _free_port()
    procs = [_main(config_path, multi, "--cpu_devices=2", f"--coordinator_address=127.0.0.1:{port}",
                   "--num_processes=2", f"--process_id={i}") for i in (0, 1)]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert "test pairs" in outputs[0] and "test pairs" not in outputs[1]  # process 0 reports
    one = _main(config_path, single, "--cpu_devices=4")
    out = one.communicate(timeout=300)[0]
    assert one.returncode == 0, out

    a, b = _final_state(multi), _final_state(single)
    assert int(a.step) == int(b.step) == make_tiny_config().num_steps
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
    reports = []
    for d in (multi, single):
        with open(os.path.join(d, "eval", "test_metrics.json")) as f:
            reports.append(json.load(f))
    assert reports[0]["n_evaluated"] == reports[1]["n_evaluated"] > 0
    np.testing.assert_allclose(reports[0]["dice"]["mean"], reports[1]["dice"]["mean"], rtol=1e-4)
    np.testing.assert_allclose(reports[0]["epe"]["mean"], reports[1]["epe"]["mean"], rtol=1e-4)


def test_sigterm_to_one_process_stops_both_at_the_same_step_with_a_checkpoint(tmp_path):
    import signal

    from hetreg_jax.train.checkpoint import complete_steps

    workdir, port = str(tmp_path / "multi"), _free_port()
    more = ["--config.num_steps=400", "--config.log_every=10", "--config.checkpoint_every=1000"]
    procs = [_main(TINY, workdir, "--cpu_devices=2", f"--coordinator_address=127.0.0.1:{port}",
                   "--num_processes=2", f"--process_id={i}", *more) for i in (0, 1)]
    import threading

    # A hung pair prints nothing, so reading its output would block for ever: kill both after 300 s.
    watchdog = threading.Timer(300, lambda: [p.kill() for p in procs])
    watchdog.start()
    try:
        seen = []
        for line in procs[0].stdout:  # process 0 prints the progress
            seen.append(line)
            if "step 10/400" in line:
                break
        assert watchdog.is_alive(), "the two processes did not reach step 10 within 300 s:\n" + "".join(seen)
        watchdog.cancel()
        procs[1].send_signal(signal.SIGTERM)  # the other process alone, as a preemption notice may be
        outputs = ["".join(seen) + procs[0].communicate(timeout=180)[0], procs[1].communicate(timeout=180)[0]]
    finally:
        watchdog.cancel()
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert [p.returncode for p in procs] == [130, 130], outputs
    (step,) = complete_steps(os.path.join(workdir, "checkpoints"))
    assert 10 <= step < 400
    stopped = f"stopped at step {step} (checkpoint of step {step} in {workdir}/checkpoints)"
    assert all(stopped in out for out in outputs), outputs
    assert "SIGTERM: stopping after this step" in outputs[1] and "SIGTERM" not in outputs[0]
