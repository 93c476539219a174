"""Paired comparison of two evaluated runs (the paper's Table 2 t-tests).

    python -m hetreg_jax.compare runs/ours runs/mse [--metrics=dice,hd,asd,epe]
    python -m hetreg_jax.compare runs/ours_s1,runs/ours_s2 runs/mse_s1,runs/mse_s2   # pooled seeds

Reads ``<run>/eval/test_per_pair.csv`` of both runs, pairs the rows by ``pair_id`` (a pair missing or
excluded in either run is left out and counted), and runs scipy's paired t-test (``ttest_rel``) per
metric, dropping pairs where either value is NaN. Comma-separated lists of runs (e.g. one per seed)
are paired position by position and pooled: a row is keyed by (position, ``pair_id``). Runs whose
recorded image size, dataset or data root differ are refused, and so are runs with no pair in
common (exit code 1). The last line is one strict JSON object (NaN written as null).
"""

from __future__ import annotations

import csv
import json
import math
import os
import sys

import numpy as np
from absl import app, flags

from hetreg_jax import metrics, workdir

FLAGS = flags.FLAGS
flags.DEFINE_list("metrics", ["dice", "hd", "hd95", "asd", "assd", "epe"], "Per-pair columns to compare.")


def read_per_pair(run: str) -> dict[str, dict[str, str]]:
    path = os.path.join(run, "eval", "test_per_pair.csv")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no per-pair report (evaluate the run first)")
    with open(path, newline="", encoding="utf-8") as f:
        return {row["pair_id"]: row for row in csv.DictReader(f)}


def read_runs(runs: str) -> dict[tuple[int, str], dict[str, str]]:
    """Per-pair rows of one run or of a comma-separated list, keyed by (position, pair_id)."""
    return {(i, pair): row for i, run in enumerate(runs.split(",")) for pair, row in read_per_pair(run).items()}


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
                raise ValueError(f"{first} has {key}={reference[key]!r} but {run} has {key}={data[key]!r}: "
                                 "per-pair metrics of different data or grids cannot be paired")


def compare(run_a: str, run_b: str, names) -> dict:
    if len(run_a.split(",")) != len(run_b.split(",")):
        raise ValueError(f"{run_a!r} and {run_b!r} list different numbers of runs")
    a, b = read_runs(run_a), read_runs(run_b)
    check_same_data(run_a.split(",") + run_b.split(","))
    common = sorted(set(a) & set(b))
    if not common:
        raise ValueError(f"no test pair is in both {run_a} ({len(a)} pairs) and {run_b} ({len(b)} pairs): "
                         "were they evaluated on the same data?")
    out = {"run_a": run_a, "run_b": run_b, "n_common": len(common),
           "only_in_a": len(set(a) - set(b)), "only_in_b": len(set(b) - set(a)), "metrics": {}}
    for name in names:
        if not common or name not in a[common[0]] or name not in b[common[0]]:
            continue
        va = np.array([float(a[p][name] or math.nan) for p in common])
        vb = np.array([float(b[p][name] or math.nan) for p in common])
        test = metrics.paired_ttest(va, vb)
        out["metrics"][name] = {"mean_a": metrics.summarize(va)["mean"],
                                "mean_b": metrics.summarize(vb)["mean"], **test}
    return out


def main(argv):
    if len(argv) != 3:
        print("usage: python -m hetreg_jax.compare RUN_A RUN_B [--metrics=dice,hd]", file=sys.stderr)
        sys.exit(2)
    try:
        result = compare(argv[1], argv[2], FLAGS.metrics)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    print(f"A = {argv[1]}\nB = {argv[2]}\npaired pairs: {result['n_common']} "
          f"(only in A: {result['only_in_a']}, only in B: {result['only_in_b']})")
    print(f"{'metric':8s} {'mean A':>9s} {'mean B':>9s} {'A - B':>9s} {'t':>8s} {'p':>10s} {'n':>5s}")
    for name, r in result["metrics"].items():
        print(f"{name:8s} {r['mean_a']:9.3f} {r['mean_b']:9.3f} {r['mean_diff']:9.3f} {r['t']:8.3f} "
              f"{r['p']:10.3g} {r['n']:5d}")
    print(json.dumps(workdir.json_safe(result), allow_nan=False))


if __name__ == "__main__":
    app.run(main)
