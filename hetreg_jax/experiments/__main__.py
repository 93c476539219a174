"""``python -m hetreg_jax.experiments``: the experiment runner, whose code is hetreg_jax/experiments/runner.py."""

from absl import app, flags

from hetreg_jax.experiments import runner

if __name__ == "__main__":
    runner.define_flags()
    flags.adopt_module_key_flags(runner)
    app.run(runner.main)
