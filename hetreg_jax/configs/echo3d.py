"""3D echocardiography volumes, 64x64x64, the paper's settings.

Run: hetreg --config=echo3d (or python main.py --config=configs/echo3d.py) --workdir=runs/echo3d
"""

from hetreg_jax.configs import default


def get_config():
    c = default.get_config()
    c.data.dataset = "echo3d"
    c.data.image_size = (64, 64, 64)
    c.batch_size = 2
    c.eval.batch_size = 2
    c.data.synthetic_subjects = 20
    return c
