"""Default configuration: every key, with a one-line comment, is in hetreg_jax/config/defaults.py
(inside the package, so that a run's recorded config.json can be completed with the defaults of
keys added since, wherever hetreg_jax is installed).

Run: hetreg --config=default --workdir=runs/default (or python main.py --config=configs/default.py)
"""

from hetreg_jax.config.defaults import get_config  # noqa: F401

__all__ = ["get_config"]
