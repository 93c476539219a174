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

import shutil  # noqa: E402

import pytest  # noqa: E402


def make_tiny_config(**overrides):
    """``tests/tiny_config.py`` (32x32 phantoms, 2-level U-Nets, 4-pair batches, 6 steps) with
    dotted-key overrides, e.g. ``make_tiny_config(num_steps=3, **{"data.image_size": (16, 16, 16)})``."""
    from tiny_config import get_config

    config = get_config()
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


@pytest.fixture(scope="session")
def cli(tmp_path_factory):
    """``main.py`` subprocesses on the command-line tests' tiny config (see cli_support.py)."""
    from cli_support import Cli

    return Cli(str(tmp_path_factory.mktemp("cli")))


@pytest.fixture(scope="session")
def trained(cli):
    """An uninterrupted run of the tiny config (seed 0); tests must not modify it (copy it instead)."""
    workdir = os.path.join(cli.base, "uninterrupted")
    proc = cli.run(workdir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return workdir


@pytest.fixture
def trained_copy(trained, tmp_path):
    return shutil.copytree(trained, str(tmp_path / "copy"))
