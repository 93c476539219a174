"""A few-minute CPU run on ACDC-like phantoms at 64x64 (a smoke test of the whole method).

Thin re-export of hetreg_jax/configs/quick.py (the installed package's copy, also reachable as
`hetreg --config=quick`). Run: python main.py --config=configs/quick.py --workdir=runs/quick
"""

from hetreg_jax.configs.quick import get_config  # noqa: F401
