"""Test set-up: JAX on the CPU backend with 4 fake devices, float32, deterministic."""

import os

import tempfile  # noqa: E402

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# One persistent XLA compilation cache for the session (tests build many identical programs); the
# environment variable carries it into the main.py subprocesses too.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", tempfile.mkdtemp(prefix="hetreg_xla_cache_"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import jax  # noqa: E402

# Must run before any backend is initialised: every test sees 4 CPU devices.
jax.config.update("jax_num_cpu_devices", 4)

import pytest  # noqa: E402


def make_tiny_config(**overrides):
    """The default config shrunk to run in seconds: 32x32 phantoms, 2-level U-Nets, 4-pair batches, 6 steps."""
    from configs import default

    config = default.get_config()
    config.data.image_size = (32, 32)
    config.data.synthetic_subjects = 5
    config.data.slices_per_subject = 2
    config.batch_size = 4
    config.num_steps = 6
    config.log_every = 2
    config.checkpoint_every = 3
    config.eval_every = 0
    config.eval.batch_size = 4
    config.eval.sparsification_steps = 10
    # Two-level U-Nets: the pipeline tests exercise the loop, not the architecture (test_models.py
    # checks the paper's networks); fewer levels compile several times faster.
    for net in (config.motion, config.variance):
        net.enc_features = (8, 16)
        net.dec_features = (16, 16, 8)
    config.optim.motion_lr = 1e-3
    config.optim.variance_lr = 1e-3
    for key, value in overrides.items():
        target = config
        *path, leaf = key.split(".")
        for part in path:
            target = target[part]
        target[leaf] = value
    return config


@pytest.fixture
def tiny_config():
    return make_tiny_config
