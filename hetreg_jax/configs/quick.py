"""A few-minute CPU run on ACDC-like phantoms at 64x64 (a smoke test of the whole method).

Run: hetreg --config=quick (or python main.py --config=configs/quick.py) --workdir=runs/quick
Compare with the MSE baseline at equal budget: add --config.method=mse.
"""

from hetreg_jax.configs import default


def get_config():
    c = default.get_config()
    c.data.dataset = "acdc"
    c.data.image_size = (64, 64)
    c.data.synthetic_subjects = 40
    c.num_steps = 600
    c.log_every = 50
    c.eval_every = 200
    c.checkpoint_every = 200
    c.optim.motion_lr = 1e-3
    c.optim.variance_lr = 1e-3
    return c
