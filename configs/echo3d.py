"""3D echocardiography volumes, 64x64x64, the paper's settings.

Thin re-export of hetreg_jax/configs/echo3d.py (the installed package's copy, also reachable as
`hetreg --config=echo3d`). Run: python main.py --config=configs/echo3d.py --workdir=runs/echo3d
"""

from hetreg_jax.configs.echo3d import get_config  # noqa: F401
