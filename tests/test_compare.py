"""The paired comparison of two runs' per-pair reports."""

import csv
import os

import numpy as np
import pytest
from scipy import stats

from hetreg_jax.evaluate import compare


def _write_run(root, rows):
    os.makedirs(os.path.join(root, "eval"))
    with open(os.path.join(root, "eval", "test_per_pair.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["pair_id", "dice", "hd"])
        writer.writeheader()
        writer.writerows(rows)


def test_pairs_by_id_drops_unmatched_and_nan_and_matches_scipy(tmp_path):
    a_dice = [80.0, 82.5, 79.0, 90.0, 85.0]
    b_dice = [78.0, 80.0, 79.5, 86.0, 84.0]
    _write_run(str(tmp_path / "a"), [{"pair_id": f"p{i}", "dice": d, "hd": 2.0 + i} for i, d in enumerate(a_dice)]
               + [{"pair_id": "only_a", "dice": 10.0, "hd": 1.0}])
    # B lists its pairs in another order, and one hd is NaN (empty in the CSV).
    rows_b = [{"pair_id": f"p{i}", "dice": d, "hd": "" if i == 2 else 2.5 + 1.1 * i} for i, d in enumerate(b_dice)]
    _write_run(str(tmp_path / "b"), rows_b[::-1])
    result = compare.compare(str(tmp_path / "a"), str(tmp_path / "b"), ["dice", "hd", "absent"])
    assert result["n_common"] == 5 and result["only_in_a"] == 1 and result["only_in_b"] == 0
    expected = stats.ttest_rel(a_dice, b_dice)
    assert result["metrics"]["dice"]["t"] == pytest.approx(expected.statistic)
    assert result["metrics"]["dice"]["p"] == pytest.approx(expected.pvalue)
    assert result["metrics"]["dice"]["mean_diff"] == pytest.approx(np.mean(np.subtract(a_dice, b_dice)))
    assert result["metrics"]["hd"]["n"] == 4  # the NaN pair is dropped, and counted
    assert "absent" not in result["metrics"]


def test_missing_report_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="test_per_pair.csv"):
        compare.compare(str(tmp_path / "x"), str(tmp_path / "y"), ["dice"])


def test_comma_separated_runs_are_paired_by_position_and_pooled(tmp_path):
    for name, values in (("a1", [1.0, 2.0]), ("a2", [3.0, 5.0]), ("b1", [0.5, 1.0]), ("b2", [2.0, 3.5])):
        _write_run(str(tmp_path / name), [{"pair_id": f"p{i}", "dice": v, "hd": 0.0} for i, v in enumerate(values)])
    runs = lambda *n: ",".join(str(tmp_path / x) for x in n)  # noqa: E731
    result = compare.compare(runs("a1", "a2"), runs("b1", "b2"), ["dice"])
    assert result["n_common"] == 4 and result["n_patients"] == 2
    # p0 and p1 are tested in both runs (e.g. two seeds): each counts once, with its mean.
    expected = stats.ttest_rel([2.0, 3.5], [1.25, 2.25])
    assert result["metrics"]["dice"]["t"] == pytest.approx(expected.statistic)
    assert result["metrics"]["dice"]["n"] == 2 and result["metrics"]["dice"]["n_pairs"] == 4
    pooled = stats.ttest_rel([1.0, 2.0, 3.0, 5.0], [0.5, 1.0, 2.0, 3.5])
    assert result["metrics"]["dice"]["p_pairs"] == pytest.approx(pooled.pvalue)
    # runs without a recorded seed are replicates by position: A - B is 0.75 in the first, 1.25 in the second
    seeds = result["metrics"]["dice"]["seeds_diff"]
    assert seeds["n"] == 2 and seeds["means"] == pytest.approx([0.75, 1.25]) and seeds["mean"] == pytest.approx(1.0)
    assert seeds["sd"] == pytest.approx(np.std([0.75, 1.25], ddof=1))
    with pytest.raises(ValueError, match="different numbers"):
        compare.compare(runs("a1", "a2"), runs("b1"), ["dice"])


def _record_config(root, image_size, dataset="acdc"):
    from conftest import make_tiny_config
    from hetreg_jax.base import workdir

    config = make_tiny_config(**{"data.image_size": image_size, "data.dataset": dataset})
    workdir.record_config(config, root, {})


def test_runs_of_other_grids_or_datasets_are_refused(tmp_path):
    rows = [{"pair_id": "p0", "dice": 80.0, "hd": 2.0}, {"pair_id": "p1", "dice": 81.0, "hd": 3.0}]
    for name, size, dataset in (("a", (64, 64), "acdc"), ("b", (128, 128), "acdc"), ("c", (64, 64), "camus"),
                                ("d", (64, 64), "acdc")):
        _write_run(str(tmp_path / name), rows)
        _record_config(str(tmp_path / name), size, dataset)
    with pytest.raises(ValueError, match=r"has data.image_size=\[64, 64\] but .*/b has data.image_size=\[128, 128\]"):
        compare.compare(str(tmp_path / "a"), str(tmp_path / "b"), ["dice"])
    with pytest.raises(ValueError, match="data.dataset='acdc' but .*/c has data.dataset='camus'"):
        compare.compare(str(tmp_path / "a"), str(tmp_path / "c"), ["dice"])
    assert compare.compare(str(tmp_path / "a"), str(tmp_path / "d"), ["dice"])["n_common"] == 2


def test_no_common_pair_fails_and_the_json_line_is_strict(tmp_path):
    import json
    import subprocess
    import sys

    _write_run(str(tmp_path / "a"), [{"pair_id": "p0", "dice": 80.0, "hd": 2.0}])
    _write_run(str(tmp_path / "b"), [{"pair_id": "q0", "dice": 80.0, "hd": 2.0}])
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cmd = [sys.executable, "-m", "hetreg_jax.compare", str(tmp_path / "a"), str(tmp_path / "b")]
    proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f"error: no test pair is in both {tmp_path}/a (1 pairs) and {tmp_path}/b (1 pairs): "
        "were they evaluated on the same data?"]
    # Two identical pairs: the t statistic and p are NaN, written as null.
    _write_run(str(tmp_path / "c"), [{"pair_id": "p0", "dice": 80.0, "hd": 2.0},
                                       {"pair_id": "p1", "dice": 81.0, "hd": 2.0}])
    _write_run(str(tmp_path / "d"), [{"pair_id": "p0", "dice": 80.0, "hd": 2.0},
                                       {"pair_id": "p1", "dice": 81.0, "hd": 2.0}])
    proc = subprocess.run(cmd[:-2] + [str(tmp_path / "c"), str(tmp_path / "d")], cwd=root, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    last = proc.stdout.strip().splitlines()[-1]
    assert "NaN" not in last
    result = json.loads(last)
    assert result["metrics"]["dice"]["p"] is None and result["metrics"]["dice"]["mean_diff"] == 0.0
