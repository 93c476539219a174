"""hetreg_jax command line: train and evaluate, or evaluate a trained workdir.

    python main.py --config=configs/acdc.py --workdir=runs/acdc            # train, then test
    python main.py --workdir=runs/acdc --mode=eval          # the run's recorded config.json
    python main.py --config=configs/acdc.py --config.data.root=DIR --workdir=W --mode=inspect
    python main.py --workdir=runs/acdc --mode=register \
        --moving=ed.nii.gz --fixed=es.nii.gz [--moving_label=ed_gt.nii.gz [--fixed_label=es_gt.nii.gz]] --out=DIR

The same command as ``hetreg`` (``pip install .``), whose code is hetreg_jax/cli/command.py: any config
field can be overridden, e.g. --config.num_steps=500; --config also takes a bundled config's name
(--config=acdc) or a run's config.json; eval and register use WORKDIR/config.json without --config.
"""

from hetreg_jax.cli.command import entry

if __name__ == "__main__":
    entry()
