"""The paper's tables and figures in one command: every run it needs, trained in this process.

    python -m hetreg_jax.experiments --config=configs/acdc.py --table=1 --workdir=W \
        [--profile=quick|cpu|paper] [--seeds=0,1,2] [--folds=0,1] [--models=voxelmorph,transmorph] \
        [--methods=mse,ours] [--datasets=acdc,camus]
    --table=2 (paired t-tests of Table 1's runs), 3 (3D echo phantoms), 4 (gamma), noise (noise sweep),
    5 (displacement uncertainty: Vxm, Vxm-diff, ours with sigma_z, sigma_I or both)

Every (dataset, model, method, seed[, gamma][, noise scale]) run has its own workdir under W
(``W/acdc/voxelmorph/mse/seed0``, ``W/acdc/voxelmorph/ours_gamma0.25/seed0``,
``W/noise2/acdc/voxelmorph/ours/seed0``, Elastix: ``W/acdc/elastix/seed0``), trained with
``train.train_and_evaluate``: the same data, split, seed and step budget for every method. A run
whose ``eval/test_metrics.json`` is of its last step is skipped, an interrupted one resumes from its
last checkpoint, so rerunning the command continues (and completes with the same numbers). A run
that fails (e.g. a non-finite loss) is recorded in its ``experiment_failed.json``, skipped on later
calls (``--retry_failed`` tries again) and footnoted in the tables. The reports (``table1.md`` ...,
``fig2.png``, ``fig3.png``, ``noise.png``) are written by :mod:`hetreg_jax.experiments.report` at the
end of every call from whatever runs are finished; ``--report_only`` only writes them.

Profiles: ``paper`` = the ``--config`` file's own values (METHOD.md: 128², 30000 steps, lr 1e-4; for
a GPU or TPU). ``quick`` (:data:`QUICK`) = 64² ACDC/CAMUS phantoms, 600 steps, both lrs 1e-3 (as
configs/quick.py), TransMorph with embed_dim 48; echo3d 32³, 300 steps, batch 2. ``cpu``
(:data:`CPU`) = real data on a laptop CPU: the config's image size (128² for ACDC: the heart does
not fit 64²), 1200 steps, both lrs 1e-3, TransMorph with embed_dim 48. Explicit ``--config.KEY=V``
overrides on the command line always win over the profile (the runner's own axes, method, model,
seed, fold, γ and noise scale, excepted); each run records the config it used in its
``config.json``.

Seeds in one program: with ``--vmap_seeds`` the unfinished seeds of each (dataset, model, method,
fold, γ, noise scale) train together, ``jax.vmap`` over their stacked states
(:func:`hetreg_jax.train.loop.train_and_evaluate_together`); their workdirs are those of separate runs.
Whatever the flag, one (model, method, shape) compiles its training step once for all its seeds, γ
and noise scales (``steps.programs_for``).

Cross-validation: with ``--config.data.folds=F`` every (method, seed) is run once per fold
(``--folds=0,2`` picks some; default all), in ``.../seed0_fold2``, so that every subject is tested
once per seed.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import re
import sys
import time

from absl import app, flags, logging
from ml_collections import config_flags

from hetreg_jax import configs

FLAGS = flags.FLAGS

# The paper's row order of Table 1 (Elastix is model-free: one row).
TABLE1_METHODS = ("elastix", "ncc", "mi", "mse", "nll", "beta_nll", "adaframe", "adareg", "ours")
TRANSMORPH_METHODS = ("mse", "ours")
TABLE3_METHODS = ("mse", "nll", "beta_nll", "adaframe", "adareg", "ours")
NOISE_METHODS = ("ours", "mse", "beta_nll")
# Table 5 (VoxelMorph): (method, motion.predict_sigma) = Vxm, Vxm-diff, ours sigma_z / sigma_I / both.
TABLE5_ROWS = (("mse", False), ("vxm_diff", False), ("mse", True), ("ours", False), ("ours", True))
NO_TRAINING = ("elastix",)
FAILED_NAME = "experiment_failed.json"
TIMING_NAME = "experiment_time.json"

QUICK = {  # dotted key -> value, per kind of run
    "2d": {"data.image_size": (64, 64), "data.synthetic_subjects": 40, "num_steps": 600, "log_every": 50,
           "eval_every": 200, "checkpoint_every": 200, "optim.motion_lr": 1e-3, "optim.variance_lr": 1e-3},
    "transmorph": {"transmorph.embed_dim": 48},
    "echo3d": {"data.image_size": (32, 32, 32), "data.synthetic_subjects": 20, "batch_size": 2,
               "eval.batch_size": 2, "num_steps": 300, "log_every": 25, "eval_every": 100,
               "checkpoint_every": 100, "optim.motion_lr": 1e-3, "optim.variance_lr": 1e-3},
}
CPU = {  # real data on a 2-core CPU: ~10-25 min a run at 128² (the paper: 30000 steps at lr 1e-4)
    "2d": {"num_steps": 1200, "log_every": 50, "eval_every": 400, "checkpoint_every": 400,
           "optim.motion_lr": 1e-3, "optim.variance_lr": 1e-3},
    "transmorph": {"transmorph.embed_dim": 48},
    "echo3d": QUICK["echo3d"],
}
PROFILES = {"quick": QUICK, "cpu": CPU, "paper": None}
# Keys the runner sets itself for each run (its axes): an override of these is not re-applied.
RUN_KEYS = ("model", "method", "seed", "data.fold", "loss.gamma", "data.noise_scale", "motion.predict_sigma")


@dataclasses.dataclass(frozen=True)
class Run:
    dataset: str
    model: str
    method: str
    seed: int
    gamma: float | None = None        # None = the config's loss.gamma
    noise_scale: float | None = None  # None = the config's data.noise_scale
    predict_sigma: bool = False       # motion.predict_sigma (Table 5's sigma_z rows)
    fold: int | None = None           # cross-validation fold (data.folds > 0), else None

    @property
    def replicate(self) -> str:
        """The last folder of the run: ``seed0``, or ``seed0_fold2`` in cross-validation."""
        return f"seed{self.seed}" + (f"_fold{self.fold}" if self.fold is not None else "")

    def path(self, root: str) -> str:
        parts = [root] + ([f"noise{self.noise_scale:g}"] if self.noise_scale is not None else [])
        method = self.method + (f"_gamma{self.gamma:g}" if self.gamma is not None else "") + \
            ("_sigma_z" if self.predict_sigma else "")
        parts += [self.dataset] + ([] if self.method in NO_TRAINING else [self.model]) + [method, self.replicate]
        return os.path.join(*parts)

    @property
    def label(self) -> str:
        extra = (f" gamma={self.gamma:g}" if self.gamma is not None else "") + \
                (f" noise_scale={self.noise_scale:g}" if self.noise_scale is not None else "") + \
                (" + sigma_z" if self.predict_sigma else "")
        who = self.method if self.method in NO_TRAINING else f"{self.model}/{self.method}"
        fold = f" fold {self.fold}" if self.fold is not None else ""
        return f"{self.dataset} {who} seed {self.seed}{fold}{extra}"


def set_key(config, key: str, value) -> None:
    target = config
    *path, leaf = key.split(".")
    for part in path:
        target = target[part]
    target[leaf] = value


def load_config_file(path: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location("experiment_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def base_for(base, dataset: str):
    """The base config of ``dataset``: ``base`` itself, ``base`` with the dataset swapped (2D kinds),
    or the bundled ``hetreg_jax/configs/<dataset>.py`` when the dimensionality differs."""
    three_d = lambda kind: kind == "echo3d"  # noqa: E731
    if base.data.dataset == dataset:
        return copy.deepcopy(base)
    if three_d(dataset) != three_d(base.data.dataset):
        return load_config_file(configs.path(dataset))
    config = copy.deepcopy(base)
    with config.unlocked():
        config.data.dataset = dataset
    return config


def get_key(config, key: str):
    target = config
    for part in key.split("."):
        target = target[part]
    return target


def explicit_overrides(argv, config) -> dict:
    """``{dotted key: value}`` of every ``--config.KEY=V`` (or ``--config.KEY V``) in ``argv``, the
    value as parsed into ``config``."""
    keys = []
    for arg in argv:
        if arg.startswith("--config."):
            keys.append(arg[len("--config."):].split("=", 1)[0])
    return {key: copy.deepcopy(get_key(config, key)) for key in dict.fromkeys(keys)}


@dataclasses.dataclass(frozen=True)
class Profile:
    """A profile's name (``PROFILES``) and the user's explicit ``--config.KEY=V`` overrides
    (``{dotted key: value}``, :func:`explicit_overrides`), which win over the profile's settings.
    Wherever a profile is expected its bare name does too (no overrides)."""
    name: str
    overrides: dict = dataclasses.field(default_factory=dict)

    def __str__(self) -> str:
        return self.name


def as_profile(profile) -> Profile:
    profile = profile if isinstance(profile, Profile) else Profile(str(profile))
    if profile.name not in PROFILES:
        raise ValueError(f"--profile={profile.name!r}: one of {', '.join(PROFILES)}")
    return profile


def run_config(base, run: Run, profile):
    """The config of one run: the dataset's base, the profile's settings, the user's explicit
    overrides (a :class:`Profile`'s), then the run's own keys."""
    profile = as_profile(profile)
    overrides = profile.overrides
    config = base_for(base, run.dataset)
    settings = PROFILES[profile.name]
    with config.unlocked():
        if settings is not None:
            for key, value in settings["echo3d" if run.dataset == "echo3d" else "2d"].items():
                set_key(config, key, value)
            if run.model == "transmorph":
                for key, value in settings["transmorph"].items():
                    set_key(config, key, value)
        for key, value in overrides.items():
            if key not in RUN_KEYS:
                set_key(config, key, copy.deepcopy(value))
        config.model, config.method, config.seed = run.model, run.method, int(run.seed)
        if run.fold is not None:
            config.data.fold = int(run.fold)
        if run.gamma is not None:
            config.loss.gamma = float(run.gamma)
        if run.noise_scale is not None:
            config.data.noise_scale = float(run.noise_scale)
        if run.predict_sigma:
            config.motion.predict_sigma = True
    return config


def known_methods() -> set[str]:
    from hetreg_jax.core import methods

    return set(methods.METHODS)


def plan(table: str, seeds, models, methods, datasets, gammas=(), noise_scales=(), base_gamma=0.5, folds=()):
    """``(runs, skipped methods)`` for ``table``; methods not in ``methods.METHODS`` are left out.
    ``folds``: the cross-validation folds to run for every seed (empty: no cross-validation)."""
    known = known_methods()
    seeds = [int(s) for s in seeds]
    replicates = [(seed, fold) for seed in seeds for fold in ([int(k) for k in folds] or [None])]
    wanted: list[tuple[str, str, str]] = []  # (dataset, model, method)
    extra: list[dict] = [{}]
    if table == "5":
        rows = [(m, p) for m, p in TABLE5_ROWS if not methods or m in methods]
        runs = [Run(d, "voxelmorph", m, seed, predict_sigma=p, fold=fold) for seed, fold in replicates
                for d in (datasets or ("acdc", "camus")) for m, p in rows if m in known]
        return runs, list(dict.fromkeys(m for m, _ in rows if m not in known))
    if table in ("1", "2"):
        for dataset in datasets or ("acdc", "camus"):
            for model in models:
                chosen = methods or (TABLE1_METHODS if model == "voxelmorph" else TRANSMORPH_METHODS)
                wanted += [(dataset, model, m) for m in chosen]
    elif table == "3":
        wanted = [(d, "voxelmorph", m) for d in (datasets or ("echo3d",)) for m in (methods or TABLE3_METHODS)]
    elif table == "4":
        wanted = [(d, m, "ours") for d in (datasets or ("acdc", "camus")) for m in models]
        extra = [{"gamma": None if float(g) == base_gamma else float(g)} for g in gammas]
    elif table == "noise":
        wanted = [(d, m, meth) for d in (datasets or ("acdc",)) for m in models for meth in (methods or NOISE_METHODS)]
        extra = [{"noise_scale": None if float(s) == 1.0 else float(s)} for s in noise_scales]
    else:
        raise ValueError(f"--table={table!r}: one of {', '.join(TABLES)}")
    runs, skipped, seen = [], [], set()
    for options in extra:
        for seed, fold in replicates:
            for dataset, model, method in wanted:
                if method not in known:
                    if method not in skipped:
                        skipped.append(method)
                    continue
                run = Run(dataset, "voxelmorph" if method in NO_TRAINING else model, method, seed, fold=fold,
                          **options)
                if run not in seen:
                    seen.add(run)
                    runs.append(run)
    return runs, skipped


def is_finished(workdir: str, config) -> bool:
    """``eval/test_metrics.json`` of the last step (any for a method without training)."""
    path = os.path.join(workdir, "eval", "test_metrics.json")
    if not os.path.isfile(path):
        return False
    if config.method in NO_TRAINING:
        return True
    with open(path, encoding="utf-8") as f:
        return json.load(f).get("checkpoint_step") == config.num_steps


def stale_evaluation(workdir: str) -> bool:
    """Whether the run's test reports were written by an older evaluation (``EVAL_VERSION``): its
    final checkpoint is evaluated again (no training) to add what the newer one reports."""
    from hetreg_jax.evaluate import evaluation

    path = os.path.join(workdir, "eval", "test_metrics.json")
    with open(path, encoding="utf-8") as f:
        return json.load(f).get("eval_version", 1) < evaluation.EVAL_VERSION


def failure(workdir: str) -> str | None:
    path = os.path.join(workdir, FAILED_NAME)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f).get("error")


def wall_time(workdir: str) -> float | None:
    path = os.path.join(workdir, TIMING_NAME)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return float(json.load(f)["wall_s"])


def _add_wall_time(workdir: str, seconds: float) -> None:
    from hetreg_jax.base.workdir import atomic_write_text

    total = (wall_time(workdir) or 0.0) + seconds
    atomic_write_text(os.path.join(workdir, TIMING_NAME), json.dumps({"wall_s": total}))


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


def train_run(config, workdir: str) -> dict:
    """``train.train_and_evaluate``; a run started before config keys were added to hetreg_jax
    resumes (its record lacks only those keys, which take their defaults: the same computation)."""
    from hetreg_jax.train import loop as train
    from hetreg_jax.base.workdir import ConfigMismatch

    try:
        return train.train_and_evaluate(config, workdir)
    except ConfigMismatch as exc:
        if not all(old == "<absent>" for old, _ in exc.differences.values()):
            raise
        return train.train_and_evaluate(config, workdir, allow_config_change=True)


def train_together(configs, workdirs) -> list[dict]:
    """:func:`train.train_and_evaluate_together`, with the same resume rule as :func:`train_run`."""
    from hetreg_jax.train import loop as train
    from hetreg_jax.base.workdir import ConfigMismatch

    try:
        return train.train_and_evaluate_together(configs, workdirs)
    except ConfigMismatch as exc:
        if not all(old == "<absent>" for old, _ in exc.differences.values()):
            raise
        return train.train_and_evaluate_together(configs, workdirs, allow_config_change=True)


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
    from hetreg_jax.base.workdir import atomic_write_text

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
    (:func:`train_together`): each still gets its own workdir, checkpoints, metrics and evaluation,
    and the wall time of the group is shared equally among them. A group that cannot train together
    (runs at different steps) or that fails (e.g. one seed's loss turns non-finite) is trained again
    one run at a time, resuming where it stopped, so that only the failing run is recorded failed.
    """
    from hetreg_jax.base.workdir import WorkdirLocked

    if train_fn is None:
        train_fn = train_run
    if together_fn is None:
        together_fn = train_together
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
                    _add_wall_time(workdir, (time.time() - start) / len(group))
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
                _add_wall_time(workdir, time.time() - start)
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
            raise ValueError(f"--folds={','.join(map(str, folds))}: folds run from 0 to "
                             f"config.data.folds - 1 = {base.data.folds - 1}")
    elif args.get("folds"):
        raise ValueError("--folds needs --config.data.folds=F (F >= 3 cross-validation folds)")
    return plan(table, args["seeds"], args["models"], args["methods"], datasets,
                args.get("gammas", ()), args.get("noise_scales", ()), base_gamma=gamma, folds=folds)


def _report(name: str):
    def report(runs, base, root, profile, skipped, args):
        from hetreg_jax.experiments import report as experiment_report
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
    ``profile``: a name of ``PROFILES`` or a :class:`Profile` (with the user's overrides)."""
    if table not in TABLES:
        raise ValueError(f"--table={table!r}: one of {', '.join(TABLES)}")
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
    from hetreg_jax.base import sharding

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
    except ValueError as exc:
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
