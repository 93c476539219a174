"""CAMUS-like 2D echocardiography, 128x128, the paper's settings.

Thin re-export of hetreg_jax/configs/camus.py (the installed package's copy, also reachable as
`hetreg --config=camus`). Run: python main.py --config=configs/camus.py --workdir=runs/camus
"""

from hetreg_jax.configs.camus import get_config  # noqa: F401
