"""The runs of ``python -m hetreg_jax.experiments``: which runs a table needs (`plan`), the
config of each (`run_config`, the profiles `QUICK` and `CPU`), where each lives
(`Run.path`), whether it is finished, failed or stale, its wall time, and its names and
results as the reports and figures read them.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import json
import math
import os

from hetreg_jax import configs
from hetreg_jax.base.errors import InputError
from hetreg_jax.base.workdir import atomic_write_text
from hetreg_jax.core import methods
from hetreg_jax.evaluate import evaluation


# The paper's row order of Table 1 (Elastix is model-free: one row).
TABLE1_METHODS = ("elastix", "ncc", "mi", "mse", "nll", "beta_nll", "adaframe", "adareg", "ours")
TRANSMORPH_METHODS = ("mse", "ours")
TABLE3_METHODS = ("mse", "nll", "beta_nll", "adaframe", "adareg", "ours")
NOISE_METHODS = ("ours", "mse", "beta_nll")
# Table 5 (VoxelMorph): (method, motion.predict_sigma) = Vxm, Vxm-diff, ours sigma_z / sigma_I / both.
TABLE5_ROWS = (("mse", False), ("vxm_diff", False), ("mse", True), ("ours", False), ("ours", True))
TABLE_NAMES = ("1", "2", "3", "4", "noise", "5")  # --table
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
    (``{dotted key: value}``, `explicit_overrides`), which win over the profile's settings.
    Wherever a profile is expected its bare name does too (no overrides)."""
    name: str
    overrides: dict = dataclasses.field(default_factory=dict)

    def __str__(self) -> str:
        return self.name


def as_profile(profile) -> Profile:
    profile = profile if isinstance(profile, Profile) else Profile(str(profile))
    if profile.name not in PROFILES:
        raise InputError(f"--profile={profile.name!r}: one of {', '.join(PROFILES)}")
    return profile


def run_config(base, run: Run, profile):
    """The config of one run: the dataset's base, the profile's settings, the user's explicit
    overrides (a `Profile`'s), then the run's own keys."""
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
        raise InputError(f"--table={table!r}: one of {', '.join(TABLE_NAMES)}")
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


def add_wall_time(workdir: str, seconds: float) -> None:
    total = (wall_time(workdir) or 0.0) + seconds
    atomic_write_text(os.path.join(workdir, TIMING_NAME), json.dumps({"wall_s": total}))


# --------------------------------------------------------------- the names and results of runs
DATASET_NAMES = {"acdc": "ACDC-like", "camus": "CAMUS-like", "echo3d": "3D echo-like"}

REAL_NAMES = {"acdc": "ACDC", "camus": "CAMUS"}

MODEL_NAMES = {"voxelmorph": "VoxelMorph", "transmorph": "TransMorph"}

METHOD_NAMES = {"elastix": "Elastix", "ncc": "NCC", "mi": "MI", "mse": "MSE", "nll": "NLL", "beta_nll": "β-NLL",
                "adaframe": "AdaFrame", "adareg": "AdaReg", "ours": "ours", "undeformed": "Undeformed"}


def dataset_name(dataset: str, base=None) -> str:
    """``ACDC-like`` (phantoms) or ``ACDC (real)`` (a dataset folder, ``base.data.root``)."""
    if base is not None and base.data.root is not None:
        return f"{REAL_NAMES.get(dataset, dataset)} (real)"
    return DATASET_NAMES.get(dataset, dataset)


def row_name(model: str, method: str) -> str:
    if method in ("elastix", "undeformed") or not model:
        return METHOD_NAMES.get(method, method)
    return f"{MODEL_NAMES.get(model, model)} {METHOD_NAMES.get(method, method)}"


# ------------------------------------------------------------------------------------ reading runs
def read_rows(workdir: str) -> list[dict] | None:
    """The per-pair rows of a finished run (floats where possible); None if there are none."""
    path = os.path.join(workdir, "eval", "test_per_pair.csv")
    if not os.path.isfile(path):
        return None
    out = []
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            parsed = {}
            for key, value in row.items():
                try:
                    parsed[key] = float(value) if value != "" else math.nan
                except ValueError:
                    parsed[key] = value
            out.append(parsed)
    return out


def read_summary(workdir: str) -> dict | None:
    path = os.path.join(workdir, "eval", "test_metrics.json")
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def finished(run, base, root, profile) -> bool:
    return is_finished(run.path(root), run_config(base, run, profile))

