r"""hetreg_jax command line (``hetreg`` once installed; ``python main.py`` from the repository):
train and evaluate, or evaluate a trained workdir.

    hetreg --config=acdc --workdir=runs/acdc          # a bundled config by name (hetreg_jax/configs/)
    python main.py --config=configs/acdc.py --workdir=runs/acdc            # train, then test
    python main.py --workdir=runs/acdc --mode=eval          # the run's recorded config.json
    python main.py --config=configs/acdc.py --config.data.root=DIR --workdir=W --mode=inspect
    python main.py --workdir=runs/acdc --mode=register \
        --moving=ed.nii.gz --fixed=es.nii.gz [--moving_label=ed_gt.nii.gz [--fixed_label=es_gt.nii.gz]] --out=DIR

Any config field can be overridden, e.g. --config.num_steps=500 --config.method=mse. --config also
takes a run's config.json; eval and register use WORKDIR/config.json when --config is not given.
"""

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from hetreg_jax import register
from hetreg_jax.base import sharding
from hetreg_jax.base.errors import ONE_LINE_ERRORS
from hetreg_jax.base.interrupt import EXIT_CODE, Interrupted
from hetreg_jax.cli import checks as cli
from hetreg_jax.data import inspect
from hetreg_jax.train import loop as train

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "A bundled config by name (default, acdc, camus, echo3d, quick), "
                                "a config file (configs/*.py), or a run's config.json.",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Folder for checkpoints, metrics and reports.")
flags.DEFINE_enum("mode", "train", ["train", "eval", "inspect", "register"],
                  "train: train then test; eval: test the latest checkpoint; inspect: summarise the "
                  "dataset; register: register --moving to --fixed with the latest checkpoint.")
flags.DEFINE_string("moving", None, "register: moving image (NIfTI).")
flags.DEFINE_string("fixed", None, "register: fixed image (NIfTI); the outputs are on its grid.")
flags.DEFINE_string("moving_label", None, "register: optional label map of the moving image.")
flags.DEFINE_string("fixed_label", None, "register: optional label map of the fixed image; with --moving_label, "
                    "Dice, Hausdorff and ASD of the warped label against it (label_metrics.json).")
flags.DEFINE_bool("resample_moving", False, "register: resample a moving image on another grid (shape or "
                  "affine) onto the fixed image's grid through both affines; without it such a pair is refused.")
flags.DEFINE_string("out", None, "register: output folder; eval: report folder (default WORKDIR/eval, "
                    "so a run on a read-only disk can be evaluated elsewhere).")
flags.DEFINE_integer("cpu_devices", 0, "XLA CPU devices to split this host into (0 = one per core, "
                     "as many as divide the batch sizes); no effect on GPU/TPU hosts.")
flags.DEFINE_bool("distributed", False, "Multi-process run: call jax.distributed.initialize (auto-detected "
                  "on Cloud TPU/SLURM, or from the three flags below).")
flags.DEFINE_string("coordinator_address", None, "Multi-process: host:port of process 0.")
flags.DEFINE_integer("num_processes", None, "Multi-process: number of processes.")
flags.DEFINE_integer("process_id", None, "Multi-process: this process's index.")
flags.DEFINE_bool("allow_config_change", False,
                  "Resume a workdir whose recorded config differs (the change is logged in config_history.jsonl).")
flags.mark_flags_as_required(["workdir"])  # --config: required for train and inspect (see cli.check_inputs)

# Errors a user can cause and fix, reported in one line (the traceback only with --verbosity=1): the
# project's own (hetreg_jax.base.errors) and the operating system's. Anything else is a bug and keeps
# its traceback.
USER_ERRORS = ONE_LINE_ERRORS


def run(argv):
    del argv
    config = FLAGS.config
    cli.check_inputs(config, FLAGS.mode, FLAGS.workdir, FLAGS.out, FLAGS.moving, FLAGS.fixed,
                     FLAGS.moving_label, FLAGS.fixed_label)
    import jax

    sharding.initialize([config.batch_size, config.eval.batch_size], FLAGS.cpu_devices, FLAGS.distributed,
                        FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)

    if jax.process_count() > 1:
        logging.info("process %d of %d", jax.process_index(), jax.process_count())
    if FLAGS.mode == "train":
        train.train_and_evaluate(config, FLAGS.workdir, allow_config_change=FLAGS.allow_config_change)
    elif FLAGS.mode == "eval":
        train.evaluate_checkpoint(config, FLAGS.workdir, out=FLAGS.out)
    elif FLAGS.mode == "inspect":
        inspect.run(config, FLAGS.workdir)
    else:
        register.register(config, FLAGS.workdir, FLAGS.moving, FLAGS.fixed, FLAGS.out, FLAGS.moving_label,
                          fixed_label=FLAGS.fixed_label, resample_moving=FLAGS.resample_moving)


def parse_flags(argv):
    """absl flag parsing, with config errors (a missing file, a mistyped key, a bad value) in one line;
    an error in a config file's own code keeps its traceback."""
    argv = cli.config_argv(argv)
    missing = cli.config_file_error(argv[1:])
    if missing:
        print(f"error: {missing}", file=sys.stderr)
        sys.exit(2)
    try:
        return FLAGS(argv)
    except (flags.Error, *USER_ERRORS) as exc:
        print(f"error: {cli.one_line(exc)}", file=sys.stderr)
        sys.exit(2)
    except (KeyError, AttributeError) as exc:
        unknown = cli.unknown_override(argv[1:], exc)
        if unknown is None:
            raise
        print(f"error: {unknown}", file=sys.stderr)
        sys.exit(2)


def main(argv):
    if not any(a.startswith(("--verbosity", "-v")) for a in sys.argv[1:]):
        logging.set_verbosity(logging.WARNING)  # progress is printed; library INFO logs only on request
    try:
        run(argv)
    except Interrupted as exc:
        print(str(exc), file=sys.stderr)
        sys.exit(EXIT_CODE)
    except KeyboardInterrupt:
        print("stopped (Ctrl-C); rerun the same command to resume from the last checkpoint", file=sys.stderr)
        sys.exit(EXIT_CODE)
    except USER_ERRORS as exc:
        if FLAGS.verbosity >= 1:
            raise
        print(f"error: {cli.one_line(exc)}", file=sys.stderr)
        sys.exit(1)


def help_text() -> str:
    """``--help``: this module's usage and its flags (absl lists only the flags of ``__main__``,
    which is the console script's wrapper or main.py, not this module)."""
    return f"{__doc__.strip()}\n\nflags:\n{FLAGS.module_help(__name__)}\n\nall flags: --helpfull"


def entry() -> None:
    """The ``hetreg`` console script (pyproject.toml ``[project.scripts]``) and ``main.py``."""
    if any(arg in ("--help", "-h", "--helpshort") for arg in sys.argv[1:]):
        print(help_text())
        sys.exit(0)
    app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
    entry()
