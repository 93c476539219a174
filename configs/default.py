"""Default configuration: every key, with a one-line comment, is in hetreg_jax/config/defaults.py

Thin re-export of hetreg_jax/configs/default.py (the installed package's copy, also reachable as
`hetreg --config=default`). Run: python main.py --config=configs/default.py --workdir=runs/default
"""

from hetreg_jax.configs.default import get_config  # noqa: F401

__all__ = ["get_config"]
