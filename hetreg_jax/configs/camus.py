"""CAMUS-like 2D echocardiography, 128x128, the paper's settings.

Run: hetreg --config=camus (or python main.py --config=configs/camus.py) --workdir=runs/camus
"""

from hetreg_jax.configs import default


def get_config():
    c = default.get_config()
    c.data.dataset = "camus"
    c.data.image_size = (128, 128)
    return c
