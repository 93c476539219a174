"""The paper's tables and figures in one command: every run it needs, trained in this process.

    python -m hetreg_jax.experiments --config=configs/acdc.py --table=1 --workdir=W \
        [--profile=quick|cpu|paper] [--seeds=0,1,2] [--folds=0,1] [--models=voxelmorph,transmorph] \
        [--methods=mse,ours] [--datasets=acdc,camus]
    --table=2 (paired t-tests of Table 1's runs), 3 (3D echo phantoms), 4 (gamma), noise (noise sweep),
    5 (displacement uncertainty: Vxm, Vxm-diff, ours with sigma_z, sigma_I or both)

Every (dataset, model, method, seed, and gamma or noise scale where varied) run has its own workdir under W
(``W/acdc/voxelmorph/mse/seed0``, ``W/acdc/voxelmorph/ours_gamma0.25/seed0``,
``W/noise2/acdc/voxelmorph/ours/seed0``, Elastix: ``W/acdc/elastix/seed0``), trained with
``train.loop.train_and_evaluate``: the same data, split, seed and step budget for every method. A run
whose ``eval/test_metrics.json`` is of its last step is skipped, an interrupted one resumes from its
last checkpoint, so rerunning the command continues (and completes with the same numbers). A run
that fails (e.g. a non-finite loss) is recorded in its ``experiment_failed.json``, skipped on later
calls (``--retry_failed`` tries again) and footnoted in the tables. The reports (``table1.md`` ...,
``fig2.png``, ``fig3.png``, ``noise.png``) are written by `hetreg_jax.experiments.report` at the
end of every call from whatever runs are finished; ``--report_only`` only writes them.

Profiles: ``paper`` = the ``--config`` file's own values (METHOD.md: 128², 30000 steps, lr 1e-4; for
a GPU or TPU). ``quick`` (`QUICK`) = 64² ACDC/CAMUS phantoms, 600 steps, both lrs 1e-3 (as
configs/quick.py), TransMorph with embed_dim 48; echo3d 32³, 300 steps, batch 2. ``cpu``
(`CPU`) = real data on a laptop CPU: the config's image size (128² for ACDC: the heart does
not fit 64²), 1200 steps, both lrs 1e-3, TransMorph with embed_dim 48. Explicit ``--config.KEY=V``
overrides on the command line always win over the profile (the runner's own axes, method, model,
seed, fold, γ and noise scale, excepted); each run records the config it used in its
``config.json``.

Seeds in one program: with ``--vmap_seeds`` the unfinished seeds of each (dataset, model, method,
fold, γ, noise scale) train together, ``jax.vmap`` over their stacked states
(`hetreg_jax.train.loop.train_and_evaluate_together`); their workdirs are those of separate runs.
Whatever the flag, one (model, method, shape) compiles its training step once for all its seeds, γ
and noise scales (``train.step.programs_for``).

Cross-validation: with ``--config.data.folds=F`` every (method, seed) is run once per fold
(``--folds=0,2`` picks some; default all), in ``.../seed0_fold2``, so that every subject is tested
once per seed.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import sys
import time

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from hetreg_jax import configs
from hetreg_jax.base import sharding
from hetreg_jax.base.errors import ONE_LINE_ERRORS, InputError
from hetreg_jax.base.workdir import ConfigMismatch, WorkdirLocked, atomic_write_text
from hetreg_jax.experiments import report as experiment_report
from hetreg_jax.experiments.runs import (FAILED_NAME, NO_TRAINING, PROFILES, QUICK, Profile, Run, add_wall_time,
                                         as_profile, explicit_overrides, failure, is_finished, load_config_file, plan,
                                         run_config, stale_evaluation, wall_time)
from hetreg_jax.train import loop as train

FLAGS = flags.FLAGS



def eta(runs, todo, root: str) -> float | None:
    """Seconds left: each remaining run costs the median wall time of the finished runs most like
    it: of its dataset, model and method (any γ or noise scale), else of its method, else of any
    run. The median, because a run made while the machine was busy can take ten times as long.
    Finished runs of the same configuration at other seeds found under ``root`` count too (an
    earlier call made them)."""
    import statistics

    pool = list(runs)
    for run in todo:
        parent = os.path.dirname(run.path(root))
        for name in sorted(os.listdir(parent)) if os.path.isdir(parent) else ():
            match = re.fullmatch(r"seed(\d+)(?:_fold(\d+))?", name)
            if match:
                fold = None if match.group(2) is None else int(match.group(2))
                other = dataclasses.replace(run, seed=int(match.group(1)), fold=fold)
                if other not in pool and os.path.isfile(os.path.join(other.path(root), "eval", "test_metrics.json")):
                    pool.append(other)
    groups: dict[tuple, list[float]] = {}
    for run in pool:
        t = wall_time(run.path(root))
        if t is not None and run not in todo:
            for key in ((run.dataset, run.model, run.method), (run.method,), ()):
                groups.setdefault(key, []).append(t)
    if () not in groups:
        return None
    total = 0.0
    for run in todo:
        key = next(k for k in ((run.dataset, run.model, run.method), (run.method,), ()) if k in groups)
        total += statistics.median(groups[key])
    return total


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return "unknown until a run finishes"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def _resuming_older_records(train_fn, *args):
    """``train_fn(*args)``; a run started before config keys were added to hetreg_jax resumes (its
    record lacks only those keys, which take their defaults: the same computation)."""
    try:
        return train_fn(*args)
    except ConfigMismatch as exc:
        if not all(old == "<absent>" for old, _ in exc.differences.values()):
            raise
        return train_fn(*args, allow_config_change=True)


def train_run(config, workdir: str) -> dict:
    """``train.loop.train_and_evaluate``, resuming runs recorded by older versions."""
    return _resuming_older_records(train.train_and_evaluate, config, workdir)


def train_together(configs, workdirs) -> list[dict]:
    """`train.train_and_evaluate_together`, resuming runs recorded by older versions."""
    return _resuming_older_records(train.train_and_evaluate_together, configs, workdirs)


def _groups(todo: list, vmap_seeds: bool) -> list[list]:
    """The unfinished runs in the order they train: with ``vmap_seeds`` the seeds of one (dataset,
    model, method, fold, γ, noise scale) form one group, trained in one program."""
    if not vmap_seeds:
        return [[item] for item in todo]
    groups: dict = {}
    for run, config in todo:
        key = run if run.method in NO_TRAINING else dataclasses.replace(run, seed=0)  # elastix: alone
        groups.setdefault(key, []).append((run, config))
    return list(groups.values())


def _record(run, workdir: str, exc: BaseException | None, status: dict, say) -> None:
    failed = os.path.join(workdir, FAILED_NAME)
    if exc is None:
        status[run] = "done"
        if os.path.exists(failed):
            os.remove(failed)
        return
    atomic_write_text(failed, json.dumps({"error": str(exc).splitlines()[0] if str(exc) else type(exc).__name__}))
    status[run] = "failed"
    say(f"[experiments] {run.label} failed: {exc}")


def execute(runs, base, root: str, profile: str, train_fn=None, retry_failed: bool = False,
            say=print, vmap_seeds: bool = False, together_fn=None) -> dict[Run, str]:
    """Train and evaluate every unfinished run in order; returns run -> "done", "skipped", "failed".

    With ``vmap_seeds`` the unfinished seeds of one configuration train together in one program
    (`train_together`): each still gets its own workdir, checkpoints, metrics and evaluation,
    and the wall time of the group is shared equally among them. A group that cannot train together
    (runs at different steps) or that fails (e.g. one seed's loss turns non-finite) is trained again
    one run at a time, resuming where it stopped, so that only the failing run is recorded failed.
    """
    if train_fn is None:
        train_fn = train_run
    if together_fn is None:
        together_fn = train_together
    if vmap_seeds and jax.default_backend() == "cpu":
        say("[experiments] --vmap_seeds on XLA:CPU: seeds in one program train about 6x slower than one "
            "after another here (per-seed weights make grouped convolutions); it is meant for GPUs and TPUs")
    status, todo = {}, []
    for run in runs:
        config = run_config(base, run, profile)
        workdir = run.path(root)
        if is_finished(workdir, config) and not stale_evaluation(workdir):
            status[run] = "skipped"
        elif failure(workdir) and not retry_failed:
            status[run] = "failed"
            say(f"[experiments] {run.label}: failed before ({failure(workdir)}); --retry_failed tries again")
        else:
            todo.append((run, config))
    say(f"[experiments] {len(runs)} runs: {len(runs) - len(todo)} finished or failed, {len(todo)} to train")
    done = 0
    for group in _groups(todo, vmap_seeds):
        remaining = []
        for run, config in group:
            if is_finished(run.path(root), config) and not stale_evaluation(run.path(root)):
                status[run] = "skipped"  # finished meanwhile, by another process
            else:
                remaining.append((run, config))
        group = remaining
        if not group:
            continue
        left = eta(runs, {r for r, _ in todo[done:]}, root)
        labels = ", ".join(run.label for run, _ in group)
        say(f"[experiments] run {done + 1}{f'-{done + len(group)}' if len(group) > 1 else ''}/{len(todo)}: "
            f"{labels}{' (in one program)' if len(group) > 1 else ''} -> "
            f"{', '.join(run.path(root) for run, _ in group)} (ETA of the rest {_clock(left)})")
        done += len(group)
        workdirs = [run.path(root) for run, _ in group]
        for workdir in workdirs:
            os.makedirs(workdir, exist_ok=True)
        if len(group) > 1:
            start = time.time()
            try:
                together_fn([config for _, config in group], workdirs)
            except WorkdirLocked:
                raise
            except (FloatingPointError, RuntimeError, ValueError) as exc:
                say(f"[experiments] trained one at a time instead: {str(exc).splitlines()[0]}")
            else:
                for (run, _), workdir in zip(group, workdirs):
                    _record(run, workdir, None, status, say)
                continue
            finally:
                for workdir in workdirs:
                    add_wall_time(workdir, (time.time() - start) / len(group))
        for (run, config), workdir in zip(group, workdirs):
            start = time.time()
            try:
                train_fn(config, workdir)
            except WorkdirLocked:
                raise
            except (FloatingPointError, RuntimeError) as exc:
                _record(run, workdir, exc, status, say)
            else:
                _record(run, workdir, None, status, say)
            finally:
                add_wall_time(workdir, time.time() - start)
    return status


def table_runs(table: str, base, args: dict):
    """The runs of ``table``. On a dataset folder (``data.root``) only its own dataset is run by
    default; with ``data.folds`` every seed runs the folds ``args["folds"]`` (default: all)."""
    gamma = float(base.loss.gamma)
    datasets = args["datasets"] or ([base.data.dataset] if base.data.root is not None else [])
    folds = []
    if base.data.folds:
        folds = [int(k) for k in args.get("folds") or range(base.data.folds)]
        bad = [k for k in folds if not 0 <= k < base.data.folds]
        if bad:
            raise InputError(f"--folds={','.join(map(str, folds))}: folds run from 0 to "
                             f"config.data.folds - 1 = {base.data.folds - 1}")
    elif args.get("folds"):
        raise InputError("--folds needs --config.data.folds=F (F >= 3 cross-validation folds)")
    return plan(table, args["seeds"], args["models"], args["methods"], datasets,
                args.get("gammas", ()), args.get("noise_scales", ()), base_gamma=gamma, folds=folds)


def _report(name: str):
    def report(runs, base, root, profile, skipped, args):
        return getattr(experiment_report, name)(runs, base, root, profile, skipped, args)
    return report


# table name -> (the runs it needs, the report it writes); add a table by adding an entry.
TABLES = {
    "1": (table_runs, _report("report_table1")),
    "2": (table_runs, _report("report_table2")),
    "3": (table_runs, _report("report_table3")),
    "4": (table_runs, _report("report_table4")),
    "noise": (table_runs, _report("report_noise")),
    "5": (table_runs, _report("report_table5")),
}


def run_table(table: str, base, root: str, profile="quick", seeds=(0, 1, 2),
              models=("voxelmorph", "transmorph"), methods=(), datasets=(), gammas=(0, 0.25, 0.5, 0.75, 1),
              noise_scales=(0.5, 1, 2, 4), train_fn=None, report_only=False, retry_failed=False,
              figures=True, say=print, folds=(), vmap_seeds=False) -> list[str]:
    """Train what ``table`` needs (unless ``report_only``), then write its reports; returns their paths.
    ``profile``: a name of ``PROFILES`` or a `Profile` (with the user's overrides)."""
    if table not in TABLES:
        raise InputError(f"--table={table!r}: one of {', '.join(TABLES)}")
    profile = as_profile(profile)
    args = dict(seeds=list(seeds), models=list(models), methods=list(methods), datasets=list(datasets),
                gammas=list(gammas), noise_scales=list(noise_scales), figures=figures, folds=list(folds))
    make_runs, report = TABLES[table]
    runs, skipped = make_runs(table, base, args)
    for method in skipped:
        say(f"[experiments] method {method!r} is not in hetreg_jax.core.methods.METHODS yet: left out")
    if not report_only:
        execute(runs, base, root, profile, train_fn=train_fn, retry_failed=retry_failed, say=say,
                vmap_seeds=vmap_seeds)
    paths = report(runs, base, root, profile, skipped, args)
    for path in paths:
        say(f"[experiments] wrote {path}")
    return paths


def main(argv):
    del argv
    if not any(a.startswith(("--verbosity", "-v")) for a in sys.argv[1:]):
        logging.set_verbosity(logging.WARNING)
    base = FLAGS.config
    if base is None:
        print("error: --config=configs/<name>.py is required", file=sys.stderr)
        sys.exit(2)

    batch_sizes = [base.batch_size, base.eval.batch_size]
    if FLAGS.table == "3" or "echo3d" in FLAGS.datasets:
        batch_sizes += [QUICK["echo3d"]["batch_size"]] if FLAGS.profile in ("quick", "cpu") else \
            [load_config_file(configs.path("echo3d")).batch_size]
    sharding.initialize(batch_sizes, FLAGS.cpu_devices)
    try:
        profile = Profile(FLAGS.profile, explicit_overrides(sys.argv[1:], base))
        run_table(FLAGS.table, base, os.path.abspath(FLAGS.workdir), profile, FLAGS.seeds, FLAGS.models,
                  FLAGS.methods, FLAGS.datasets, FLAGS.gammas, FLAGS.noise_scales,
                  report_only=FLAGS.report_only, retry_failed=FLAGS.retry_failed, figures=FLAGS.figures,
                  folds=FLAGS.folds, vmap_seeds=FLAGS.vmap_seeds)
    except ONE_LINE_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)


def define_flags() -> None:
    """The command line (defined only when run as a program, so that importing this module defines no flags)."""
    config_flags.DEFINE_config_file("config", None, "Base config (configs/acdc.py); --config.x=y overrides.",
                                    lock_config=True)
    flags.DEFINE_string("table", "1", "Which table: 1, 2, 3, 4, 5 or noise.")
    flags.DEFINE_string("workdir", None, "Folder of the runs and the reports.")
    flags.DEFINE_enum("profile", "quick", list(PROFILES),
                      "quick: CPU-sized phantom runs; cpu: real data on a CPU (1200 steps, lr 1e-3); "
                      "paper: the config's values.")
    flags.DEFINE_list("folds", [], "With --config.data.folds=F: the folds to run (default: all F).")
    flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds (each draws its own phantoms, split and initialisation).")
    flags.DEFINE_list("models", ["voxelmorph", "transmorph"], "Displacement estimators.")
    flags.DEFINE_list("methods", [], "Methods (default: the table's; TransMorph: mse and ours).")
    flags.DEFINE_list("datasets", [], "Phantom kinds (default acdc,camus; Table 3: echo3d).")
    flags.DEFINE_list("gammas", ["0", "0.25", "0.5", "0.75", "1"], "Table 4: the gamma values.")
    flags.DEFINE_list("noise_scales", ["0.5", "1", "2", "4"], "--table=noise: the data.noise_scale values.")
    flags.DEFINE_integer("cpu_devices", 0, "XLA CPU devices (0 = one per core that divides the batches).")
    flags.DEFINE_bool("report_only", False, "Write the reports from the finished runs; train nothing.")
    flags.DEFINE_bool("retry_failed", False, "Train runs recorded as failed again.")
    flags.DEFINE_bool("vmap_seeds", False, "Train the seeds of each (dataset, model, method, fold, gamma) "
                      "together in one program (jax.vmap over the stacked states); same per-seed outputs.")
    flags.DEFINE_bool("figures", True, "Draw the figures (fig2 and fig3 load every network of seed 0: slow on a CPU).")
    flags.mark_flags_as_required(["workdir"])


if __name__ == "__main__":
    define_flags()
    app.run(main)
