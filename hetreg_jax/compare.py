"""``python -m hetreg_jax.compare``: the paired comparison of runs, whose code is hetreg_jax/evaluate/compare.py."""

from absl import app, flags

from hetreg_jax.evaluate import compare

if __name__ == "__main__":
    flags.adopt_module_key_flags(compare)
    app.run(compare.main)
