"""The tests' tiny config: 32x32 phantoms, 2-level U-Nets, 4-pair batches, 6 steps.

A config file, so main.py subprocesses load it too: python main.py --config=tests/tiny_config.py ...
(conftest.make_tiny_config builds on it for in-process tests). The two-level U-Nets exercise the
pipeline, not the architecture (test_models.py checks the paper's networks), and compile faster.
"""

from configs import default


def get_config():
    c = default.get_config()
    c.data.image_size = (32, 32)
    c.data.synthetic_subjects = 5
    c.data.slices_per_subject = 2
    c.batch_size = 4
    c.num_steps = 6
    c.log_every = 2
    c.checkpoint_every = 3
    c.eval_every = 0
    c.eval.batch_size = 4
    c.eval.sparsification_steps = 10
    for net in (c.motion, c.variance):
        net.enc_features = (8, 16)
        net.dec_features = (16, 16, 8)
    c.optim.motion_lr = 1e-3
    c.optim.variance_lr = 1e-3
    return c
