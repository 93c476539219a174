"""ACDC-like cine MRI, 2D 128x128, the paper's settings.

Run: hetreg --config=acdc (or python main.py --config=configs/acdc.py) --workdir=runs/acdc
Real data: add --config.data.root=/path/to/ACDC (synthetic phantoms otherwise).
"""

from hetreg_jax.configs import default


def get_config():
    c = default.get_config()
    c.data.dataset = "acdc"
    c.data.image_size = (128, 128)
    return c
