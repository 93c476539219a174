"""Paired comparison of two evaluated runs (the paper's Table 2 t-tests), with the patient as the unit.

    python -m hetreg_jax.compare runs/ours runs/mse [--metrics=dice,hd,asd,epe]
    python -m hetreg_jax.compare runs/ours_s1,runs/ours_s2 runs/mse_s1,runs/mse_s2   # seeds or folds

Reads ``<run>/eval/test_per_pair.csv`` of both runs (or ``<folder>/test_per_pair.csv`` of a report
folder written by ``--mode=eval --out=<folder>``, whose ``config.json`` names the evaluated data and
seed) and pairs the rows by ``pair_id`` (a pair missing
or excluded in either run is left out and counted). Comma-separated lists of runs (one per seed or
cross-validation fold) are paired position by position: a row is keyed by (position, ``pair_id``).

The test (scipy's ``ttest_rel``, two-sided) has the patient as its unit: the per-pair values of a
patient (its slices or views, over every seed that tested it) are averaged on each side, pairs
where either value is NaN left out, and the test runs over the patients (``n``). On the built-in
phantoms, which each seed draws anew, the unit is (seed, subject). The pair-level test, which
counts the correlated slices of one patient as independent and overstates the evidence, is
reported beside it as ``p_pairs`` (the paper's). Seeds are replicate trainings: ``seeds_a`` /
``seeds_b`` give the mean ± sd of the per-seed means, and ``seeds_diff`` that of the per-seed mean
differences A − B (how much the comparison itself varies between trainings). ``n_nan_a`` / ``n_nan_b`` count the common
pairs whose value is NaN (e.g. HD of an empty warped structure); pairs on which a structure is not
labelled in both frames (``status_<s>`` = ``absent``) are left out of its columns. ``a_better``
counts the patients whose mean is higher in A (better for Dice, worse for a distance).

Runs whose recorded image size, dataset or data root differ are refused, and so are runs with no
pair in common (exit code 1). The last line is one strict JSON object (NaN written as null).
"""

from __future__ import annotations

import csv
import json
import math
import os
import sys

import numpy as np
from absl import app, flags

from hetreg_jax.base import workdir
from hetreg_jax.base.errors import ONE_LINE_ERRORS, InputError, MissingFileError
from hetreg_jax.core import metrics
from hetreg_jax.evaluate import evaluation

FLAGS = flags.FLAGS
flags.DEFINE_list("metrics", ["dice", "hd", "hd95", "asd", "assd", "hd_mm", "hd95_mm", "asd_mm", "assd_mm", "dice_lv", "hd_lv",
                                "asd_lv", "dice_rv", "hd_rv", "asd_rv", "epe"],
                  "Per-pair columns to compare (those a run lacks are left out).")


def read_per_pair(run: str) -> dict[str, dict[str, str]]:
    """The per-pair rows of a run (``run/eval/test_per_pair.csv``) or of a report folder written by
    ``--mode=eval --out`` (``run/test_per_pair.csv``), by ``pair_id``."""
    path = os.path.join(run, "eval", "test_per_pair.csv")
    if not os.path.isfile(path) and os.path.isfile(os.path.join(run, "test_per_pair.csv")):
        path = os.path.join(run, "test_per_pair.csv")
    if not os.path.isfile(path):
        raise MissingFileError(f"{path}: no per-pair report (evaluate the run first)")
    with open(path, newline="", encoding="utf-8") as f:
        return {row["pair_id"]: row for row in csv.DictReader(f)}


def read_runs(runs: str) -> dict[tuple[int, str], dict[str, str]]:
    """Per-pair rows of one run or of a comma-separated list, keyed by (position, pair_id), each row
    with ``_seed`` (the run's recorded seed, else its position) and ``_unit`` (the patient: its
    ``subject``, or (seed, subject) on phantoms, which every seed draws anew)."""
    out = {}
    for i, run in enumerate(runs.split(",")):
        recorded = workdir.recorded_config(run)
        flat = workdir.flatten(recorded) if recorded is not None else {}
        seed = flat.get("seed", i)
        phantoms = recorded is not None and flat.get("data.root") is None
        for pair, row in read_per_pair(run).items():
            subject = row.get("subject") or pair
            out[(i, pair)] = dict(row, _seed=seed, _unit=f"seed{seed}/{subject}" if phantoms else subject)
    return out


def _value(row: dict, name: str) -> float:
    text = row.get(name, "")
    return float(text) if text not in ("", None) else math.nan


# What must agree for per-pair metrics to be comparable: the same pairs on the same grid (HD and
# ASD are in pixels of the network grid).
SAME_DATA_KEYS = ("data.image_size", "data.dataset", "data.root")


def run_data(run: str) -> dict | None:
    """``SAME_DATA_KEYS`` of the run's recorded ``config.json`` (None for a run without one)."""
    recorded = workdir.recorded_config(run)
    if recorded is None:
        return None
    flat = workdir.flatten(recorded)
    return {key: flat.get(key) for key in SAME_DATA_KEYS}


def check_same_data(runs: list[str]) -> None:
    """Refuse runs whose data or image size differ (one line naming both runs and the key)."""
    known = [(run, data) for run in runs if (data := run_data(run)) is not None]
    for run, data in known[1:]:
        first, reference = known[0]
        for key in SAME_DATA_KEYS:
            if data[key] != reference[key]:
                raise InputError(f"{first} has {key}={reference[key]!r} but {run} has {key}={data[key]!r}: "
                                 "per-pair metrics of different data or grids cannot be paired")


def compare(run_a: str, run_b: str, names) -> dict:
    if len(run_a.split(",")) != len(run_b.split(",")):
        raise InputError(f"{run_a!r} and {run_b!r} list different numbers of runs")
    a, b = read_runs(run_a), read_runs(run_b)
    check_same_data(run_a.split(",") + run_b.split(","))
    common = sorted(set(a) & set(b))
    if not common:
        raise InputError(f"no test pair is in both {run_a} ({len(a)} pairs) and {run_b} ({len(b)} pairs): "
                         "were they evaluated on the same data?")
    out = {"run_a": run_a, "run_b": run_b, "n_common": len(common),
           "only_in_a": len(set(a) - set(b)), "only_in_b": len(set(b) - set(a)),
           "n_patients": len({a[p]["_unit"] for p in common}), "metrics": {}}
    for name in names:
        if not any(name in a[p] for p in common) or not any(name in b[p] for p in common):
            continue
        structure = evaluation.structure_of(name)  # pairs where it is not labelled in both frames: left out
        scored = [p for p in common if "absent" not in (a[p].get(f"status_{structure}"), b[p].get(f"status_{structure}"))]
        va = np.array([_value(a[p], name) for p in scored])
        vb = np.array([_value(b[p], name) for p in scored])
        test = metrics.unit_ttest([a[p]["_unit"] for p in scored], va, vb)
        seeds = [a[p]["_seed"] for p in scored]
        out["metrics"][name] = {"mean_a": metrics.summarize(va)["mean"], "mean_b": metrics.summarize(vb)["mean"],
                                "n_nan_a": int(np.isnan(va).sum()), "n_nan_b": int(np.isnan(vb).sum()),
                                "t": test["t"], "p": test["p"], "n": test["n"], "mean_diff": test["mean_diff"],
                                "a_better": test["a_better"], "n_pairs": test["n_obs"], "p_pairs": test["p_obs"],
                                "seeds_a": metrics.replicate_summary(seeds, va),
                                "seeds_b": metrics.replicate_summary(seeds, vb),
                                "seeds_diff": metrics.replicate_summary(seeds, va - vb)}
    return out


def _replicates(summary: dict) -> str:
    return f"{summary['mean']:.3f} ± {summary['sd']:.3f}"


def main(argv):
    if len(argv) != 3:
        print("usage: python -m hetreg_jax.compare RUN_A RUN_B [--metrics=dice,hd]", file=sys.stderr)
        sys.exit(2)
    try:
        result = compare(argv[1], argv[2], FLAGS.metrics)
    except ONE_LINE_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    print(f"A = {argv[1]}\nB = {argv[2]}\npaired pairs: {result['n_common']} of {result['n_patients']} patients "
          f"(only in A: {result['only_in_a']}, only in B: {result['only_in_b']}); the test's unit is the patient")
    print(f"{'metric':10s} {'mean A':>9s} {'mean B':>9s} {'A - B':>9s} {'p':>9s} {'patients':>8s} {'A > B':>8s} "
          f"{'p pairs':>9s} {'pairs':>6s} {'NaN A,B':>8s}")
    for name, r in result["metrics"].items():
        print(f"{name:10s} {r['mean_a']:9.3f} {r['mean_b']:9.3f} {r['mean_diff']:9.3f} {r['p']:9.3g} {r['n']:8d} "
              f"{r['a_better']:8d} {r['p_pairs']:9.3g} {r['n_pairs']:6d} {r['n_nan_a']:>3d},{r['n_nan_b']:<4d}")
    several = {name: r for name, r in result["metrics"].items() if r["seeds_diff"]["n"] > 1}
    if several:
        print(f"seeds as replicate trainings: mean ± sd (ddof 1) of the per-seed means\n"
              f"{'metric':10s} {'seeds':>5s} {'A':>17s} {'B':>17s} {'A - B':>17s}")
    for name, r in several.items():
        print(f"{name:10s} {r['seeds_diff']['n']:5d} {_replicates(r['seeds_a']):>17s} {_replicates(r['seeds_b']):>17s} "
              f"{_replicates(r['seeds_diff']):>17s}")
    print(json.dumps(workdir.json_safe(result), allow_nan=False))


if __name__ == "__main__":
    app.run(main)
