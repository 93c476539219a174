"""Process-wide JAX settings made before the first computation: the persistent compilation cache
and deterministic GPU operations. Both are on by default and switched by environment variables, so
that every entry point (``main.py``, ``hetreg``, the experiment runner, the benchmarks) and a user's
own script (``hetreg_jax.base.runtime.setup()``) behave alike.

- ``HETREG_JAX_COMPILATION_CACHE``: a folder for JAX's persistent compilation cache (default
  ``$XDG_CACHE_HOME/hetreg_jax/jax`` or ``~/.cache/hetreg_jax/jax``), or ``off``. A second process
  that builds the same programs (the same structure, shapes and devices) loads them from there
  instead of compiling. A cache folder set by the user through JAX itself
  (``JAX_COMPILATION_CACHE_DIR``) wins.
- ``HETREG_JAX_DETERMINISTIC``: ``1`` (default) adds ``--xla_gpu_deterministic_ops=true`` to
  ``XLA_FLAGS``, so that the warp's gradient (a scatter-add) sums in a fixed order on GPUs and the
  same seed gives the same numbers there; ``0`` leaves XLA's faster non-deterministic GPU
  reductions. XLA:CPU and TPU programs are deterministic either way. It must be set before the
  backend starts: after that it cannot act, and `setup` says so.
"""

from __future__ import annotations

import os

import jax

CACHE_ENV = "HETREG_JAX_COMPILATION_CACHE"
DETERMINISTIC_ENV = "HETREG_JAX_DETERMINISTIC"
DETERMINISTIC_FLAG = "--xla_gpu_deterministic_ops=true"
_OFF = ("0", "off", "false", "no", "none", "")


def default_cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "hetreg_jax", "jax")


def cache_dir() -> str | None:
    """The persistent compilation cache folder this process would use (None: off)."""
    value = os.environ.get(CACHE_ENV)
    if value is None:
        return default_cache_dir()
    return None if value.strip().lower() in _OFF else os.path.expanduser(value)


def enable_compilation_cache() -> str | None:
    """Point JAX's persistent compilation cache at `cache_dir` (unless JAX already has one or it
    is off); returns the folder in use. An unwritable folder turns the cache off, never the run."""
    current = jax.config.jax_compilation_cache_dir
    if current:
        return current
    folder = cache_dir()
    if folder is None:
        return None
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError:
        return None
    jax.config.update("jax_compilation_cache_dir", folder)
    return folder


def deterministic() -> bool:
    return os.environ.get(DETERMINISTIC_ENV, "1").strip().lower() not in _OFF


def set_deterministic_gpu_ops() -> None:
    """Add the deterministic-GPU-ops flag to ``XLA_FLAGS`` (if asked and not there already)."""
    if not deterministic():
        return
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_gpu_deterministic_ops" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} {DETERMINISTIC_FLAG}".strip()


def setup() -> dict:
    """Both settings; call before the first JAX computation. Returns what is in effect."""
    set_deterministic_gpu_ops()
    return {"compilation_cache": enable_compilation_cache(),
            "deterministic_gpu_ops": DETERMINISTIC_FLAG in os.environ.get("XLA_FLAGS", "")}
