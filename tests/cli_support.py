"""Helpers of the command-line tests: ``main.py`` subprocesses on a tiny config, workdir snapshots,
the one-line error check. The fixtures built on them (``cli``, ``trained``, ``trained_copy``) are in
conftest.py, shared by every test module."""

import hashlib
import os
import re
import runpy
import subprocess
import sys

import jax
import numpy as np

from hetreg_jax.train import step as steps
from hetreg_jax.train.checkpoint import Checkpointer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_STEPS, CHECKPOINT_EVERY = 40, 4
TINY_CONFIG = f'''"""tests/tiny_config.py with the paper's network widths, {NUM_STEPS} steps, a checkpoint every {CHECKPOINT_EVERY}."""
from configs import default
from tests.tiny_config import get_config as tiny


def get_config():
    c = tiny()
    paper = default.get_config()
    for net in ("motion", "variance"):
        c[net].enc_features, c[net].dec_features = paper[net].enc_features, paper[net].dec_features
    c.num_steps = {NUM_STEPS}
    c.log_every = 4
    c.checkpoint_every = {CHECKPOINT_EVERY}
    return c
'''
# absl / orbax log lines ("I1124 00:44:02.829983 1399... file.py:701] ..."), not part of the error report.
LOG_LINE = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d")


class Cli:
    """``python main.py --config=<tiny config> --workdir=...`` in a subprocess."""

    def __init__(self, base):
        self.base = base
        self.config = os.path.join(base, "tiny.py")
        with open(self.config, "w") as f:
            f.write(TINY_CONFIG)
        self.env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3",
                        JAX_COMPILATION_CACHE_DIR=os.path.join(base, "xla_cache"),
                        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1")
        self.env.pop("XLA_FLAGS", None)

    def args(self, workdir, *extra):
        workdir_flag = [] if workdir is None else [f"--workdir={workdir}"]
        return [sys.executable, "main.py", f"--config={self.config}", *workdir_flag, *extra]

    def popen(self, workdir, *extra, **kwargs):
        return subprocess.Popen(self.args(workdir, *extra), cwd=ROOT, env=self.env, text=True, **kwargs)

    def run(self, workdir, *extra):
        return subprocess.run(self.args(workdir, *extra), cwd=ROOT, env=self.env, text=True,
                              capture_output=True, timeout=600)

    def load_config(self):
        return runpy.run_path(self.config)["get_config"]()


def snapshot(path):
    """Every file (name and SHA-256 of its bytes) and folder under ``path``; None if it is absent."""
    if not os.path.exists(path):
        return None
    out = {}
    for root, dirs, files in os.walk(path):
        for d in dirs:
            out[os.path.relpath(os.path.join(root, d), path)] = "<dir>"
        for name in files:
            with open(os.path.join(root, name), "rb") as f:
                out[os.path.relpath(os.path.join(root, name), path)] = hashlib.sha256(f.read()).hexdigest()
    return out


def error_line(proc) -> str:
    """The single line the CLI printed on stderr (log lines aside); fails unless there is exactly one."""
    lines = [line for line in proc.stderr.splitlines() if line.strip() and not LOG_LINE.match(line)]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: "), lines[0]
    return lines[0]


def host_state(workdir, config):
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"))
    try:
        state, meta = ckpt.restore(steps.Trainer(config).abstract_state())
    finally:
        ckpt.close()
    return jax.tree.map(lambda x: np.asarray(jax.device_get(x)), state), meta


def read_bytes(path):
    with open(path, "rb") as f:
        return f.read()
