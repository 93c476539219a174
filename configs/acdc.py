"""ACDC-like cine MRI, 2D 128x128, the paper's settings.

Thin re-export of hetreg_jax/configs/acdc.py (the installed package's copy, also reachable as
`hetreg --config=acdc`). Run: python main.py --config=configs/acdc.py --workdir=runs/acdc
"""

from hetreg_jax.configs.acdc import get_config  # noqa: F401
