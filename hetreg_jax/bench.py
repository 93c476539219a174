"""``python -m hetreg_jax.bench``: the benchmark command, whose code is hetreg_jax/cli/bench.py."""

from absl import app, flags

from hetreg_jax.cli import bench

if __name__ == "__main__":
    flags.adopt_module_key_flags(bench)
    app.run(bench.main)
