"""Test set-up: JAX on the CPU backend with 4 fake devices, float32, deterministic."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402

# Must run before any backend is initialised: every test sees 4 CPU devices.
jax.config.update("jax_num_cpu_devices", 4)

import pytest  # noqa: E402


def make_tiny_config(**overrides):
    """The default config shrunk to run in seconds: 32x32 phantoms, 4-pair batches, 6 steps."""
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
