"""The table runner: runs, skips and resumes; the tables' formatting and t-tests on known numbers."""

import csv
import json
import os
import shutil

import numpy as np
import pytest
from conftest import make_tiny_config
from scipy import stats

from hetreg_jax.experiments import report
from hetreg_jax.experiments import runner as experiments
from hetreg_jax.experiments import runs as experiment_runs
from hetreg_jax.train import loop as train

OPTIONS = dict(profile="paper", seeds=[0], models=["voxelmorph"], methods=["mse", "ours"], datasets=["acdc"])


def _config():
    return make_tiny_config(num_steps=2, checkpoint_every=1, log_every=1)


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("experiments"))
    calls = []

    def counted(config, workdir):
        calls.append(workdir)
        return train.train_and_evaluate(config, workdir)

    paths = experiments.run_table("1", _config(), root, train_fn=counted, say=lambda *a: None, **OPTIONS)
    return root, paths, calls


def test_table1_runs_every_method_once_and_writes_the_reports(table):
    root, paths, calls = table
    assert sorted(calls) == [os.path.join(root, "acdc", "voxelmorph", m, "seed0") for m in ("mse", "ours")]
    for name in ("table1.md", "table1.csv", "fig2.png", "fig3.png"):
        assert os.path.join(root, name) in paths and os.path.getsize(os.path.join(root, name)) > 0
    with open(os.path.join(root, "acdc/voxelmorph/ours/seed0/eval/test_per_pair.csv"), newline="") as f:
        n_test = len(list(csv.DictReader(f)))
    from PIL import Image

    from hetreg_jax.experiments import figures as experiment_figures
    rows = min(n_test, experiment_figures.FIG2_PAIRS)  # one row per drawn test pair, none left empty
    assert Image.open(os.path.join(root, "fig2.png")).size[1] == round((2.3 * rows + 0.9) * 110)
    text = open(os.path.join(root, "table1.md"), encoding="utf-8").read()
    ours = json.load(open(os.path.join(root, "acdc/voxelmorph/ours/seed0/eval/test_metrics.json")))
    assert f"{ours['dice']['mean']:.2f} ± {ours['dice']['std']:.2f}" in text  # one seed: the run's own numbers
    for row in ("| Undeformed |", "| VoxelMorph MSE |", "| VoxelMorph ours |", "80.73", "47.98"):
        assert row in text
    for method in ("elastix", "adareg", "adaframe", "ncc"):
        if method not in experiment_runs.known_methods():
            assert f"`{method}`" not in text  # only asked-for methods are footnoted
    with open(os.path.join(root, "table1.csv"), newline="") as f:
        records = list(csv.DictReader(f))
    dice = next(r for r in records if r["method"] == "ours" and r["metric"] == "dice")
    assert float(dice["mean"]) == pytest.approx(ours["dice"]["mean"]) and float(dice["paper"]) == 80.73


def test_rerun_skips_finished_runs(table):
    root, _, _ = table

    def refuse(config, workdir):
        raise AssertionError(f"trained {workdir} again")

    ckpt = os.path.join(root, "acdc", "voxelmorph", "ours", "seed0", "checkpoints")
    before = {d: os.path.getmtime(os.path.join(ckpt, d)) for d in os.listdir(ckpt)}
    experiments.run_table("2", _config(), root, train_fn=refuse, say=lambda *a: None, **OPTIONS)
    assert {d: os.path.getmtime(os.path.join(ckpt, d)) for d in os.listdir(ckpt)} == before
    assert "VoxelMorph | MSE |" in open(os.path.join(root, "table2.md"), encoding="utf-8").read()


def test_an_interrupted_run_resumes_and_completes_with_the_same_numbers(table, tmp_path):
    root, _, _ = table
    copy = str(tmp_path / "copy")
    shutil.copytree(root, copy)
    run = os.path.join(copy, "acdc", "voxelmorph", "ours", "seed0")
    shutil.rmtree(os.path.join(run, "eval"))
    shutil.rmtree(os.path.join(run, "checkpoints", "2"))  # killed after the checkpoint of step 1
    calls = []

    def counted(config, workdir):
        calls.append(workdir)
        return train.train_and_evaluate(config, workdir)

    experiments.execute(experiment_runs.plan("1", [0], ["voxelmorph"], ["mse", "ours"], ["acdc"])[0], _config(), copy,
                        "paper", train_fn=counted, say=lambda *a: None)
    assert calls == [run]
    for name in ("mse", "ours"):
        a = open(os.path.join(root, "acdc", "voxelmorph", name, "seed0", "eval", "test_per_pair.csv")).read()
        b = open(os.path.join(copy, "acdc", "voxelmorph", name, "seed0", "eval", "test_per_pair.csv")).read()
        assert a == b


def _fake_run(root, method, seed, dice, hd, asd):
    run = experiment_runs.Run("acdc", "voxelmorph", method, seed)
    out = os.path.join(run.path(root), "eval")
    os.makedirs(out)
    with open(os.path.join(out, "test_per_pair.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, ["pair_id", "dice", "hd", "asd", "undeformed_dice", "undeformed_hd", "undeformed_asd"])
        writer.writeheader()
        for i, values in enumerate(zip(dice, hd, asd)):
            writer.writerow(dict(pair_id=f"p{i}", dice=values[0], hd=values[1], asd=values[2], undeformed_dice=50,
                                 undeformed_hd=9, undeformed_asd=3))
    with open(os.path.join(out, "test_metrics.json"), "w") as f:
        json.dump({"checkpoint_step": _config().num_steps}, f)
    return run


def test_table_formatting_bold_best_dagger_second_and_mean_std(tmp_path):
    root = str(tmp_path)
    runs = [_fake_run(root, "mse", 0, [80, 84], [5, 5], [1.0, 1.2]),
            _fake_run(root, "nll", 0, [70, 70], [4, 6], [1.5, 1.5]),
            _fake_run(root, "ours", 0, [90, 86], [6, 6], [0.9, 1.0])]
    text, _ = report.contour_table(runs, _config(), root, "paper", ["acdc"], None)
    rows = {line.split(" | ")[0].strip("| "): line.split(" | ")[1:] for line in text.splitlines()[2:]}
    assert rows["Undeformed"][:3] == ["50.00 ± 0.00", "9.00 ± 0.00", "3.00 ± 0.00"]  # not ranked
    assert rows["VoxelMorph ours"][:3] == ["**88.00 ± 2.00**", "6.00 ± 0.00", "**0.95 ± 0.05**"]
    assert rows["VoxelMorph MSE"][:3] == ["82.00 ± 2.00 †", "**5.00 ± 0.00**", "1.10 ± 0.10 †"]
    assert rows["VoxelMorph NLL"][:3] == ["70.00 ± 0.00", "5.00 ± 1.00 †", "1.50 ± 0.00"]


def test_table2_t_test_matches_scipy_on_known_numbers(tmp_path):
    root = str(tmp_path)
    ours, mse = [81.0, 84.5, 79.0, 90.0, 77.5], [80.0, 82.0, 79.5, 86.0, 75.0]
    runs = [_fake_run(root, "ours", s, ours[s::2], [5] * len(ours[s::2]), [1] * len(ours[s::2])) for s in (0, 1)]
    runs += [_fake_run(root, "mse", s, mse[s::2], [5] * len(mse[s::2]), [1] * len(mse[s::2])) for s in (0, 1)]
    report.report_table2(runs, _config(), root, "paper", [], {})
    line = next(x for x in open(os.path.join(root, "table2.md")).read().splitlines() if "| MSE |" in x)
    cells = [c.strip() for c in line.split("|")[1:-1]]
    # The runs' pair ids p0, p1, p2 recur in both seeds (no subject column: the pair is the patient):
    # each is averaged over the seeds that tested it, and the test runs over the 3 units.
    units_ours = [np.mean([ours[0], ours[1]]), np.mean([ours[2], ours[3]]), ours[4]]
    units_mse = [np.mean([mse[0], mse[1]]), np.mean([mse[2], mse[3]]), mse[4]]
    expected = stats.ttest_rel(units_ours, units_mse)
    pairs = stats.ttest_rel(ours[0::2] + ours[1::2], mse[0::2] + mse[1::2])
    assert cells[3] == f"{np.mean(np.subtract(units_ours, units_mse)):+.2f}" and cells[4] == f"{expected.statistic:.2f}"
    assert cells[5] == f"{expected.pvalue:.2g}" and cells[6] == "3" and cells[7] == "3/3"
    # seeds are replicate trainings: each seed's mean difference, then their mean ± sd (ddof 1)
    per_seed = [np.mean(np.subtract(ours[s::2], mse[s::2])) for s in (0, 1)]
    assert cells[8] == f"{np.mean(per_seed):+.2f} ± {np.std(per_seed, ddof=1):.2f} (2 seeds)"
    assert cells[9] == f"{pairs.pvalue:.2g}" and cells[10] == "5" and cells[11] == "0.02"


def test_eta_uses_the_median_of_the_most_similar_finished_runs(tmp_path):
    root = str(tmp_path)
    Run = experiment_runs.Run

    def finished(run, seconds):
        os.makedirs(run.path(root), exist_ok=True)
        experiment_runs.add_wall_time(run.path(root), seconds)
        return run

    done = [finished(Run("acdc", "voxelmorph", "ours", s), t) for s, t in ((0, 100.0), (1, 120.0), (2, 3000.0))]
    done += [finished(Run("echo3d", "voxelmorph", "ours", 0), 1000.0),
             finished(Run("acdc", "voxelmorph", "mse", 0), 50.0)]
    todo = [Run("acdc", "voxelmorph", "ours", 3, gamma=0.25),  # its own group: median(100, 120, 3000) = 120
            Run("camus", "voxelmorph", "mse", 0),              # no camus/mse yet: every mse run, 50
            Run("acdc", "voxelmorph", "nll", 0)]               # no nll at all: every run, median 120
    assert experiments.eta(done + todo, todo, root) == pytest.approx(120.0 + 50.0 + 120.0)
    assert experiments.eta(todo, todo, root) is None  # nothing finished: unknown
    os.makedirs(todo[0].path(root))
    experiment_runs.add_wall_time(todo[0].path(root), 5.0)  # an interrupted run's partial time is not a finished run's
    assert experiments.eta(done + todo, todo, root) == pytest.approx(290.0)
    # a later call planning only seed 3 still knows the earlier seeds' finished runs on disk
    for run in done[:3]:
        os.makedirs(os.path.join(run.path(root), "eval"), exist_ok=True)
        open(os.path.join(run.path(root), "eval", "test_metrics.json"), "w").write("{}")
    later = Run("acdc", "voxelmorph", "ours", 3)
    assert experiments.eta([later], [later], root) == pytest.approx(120.0)
    assert experiments.eta([todo[1]], [todo[1]], root) is None  # no camus/mse run on disk


def test_cost_table_reports_the_median_wall_time_over_seeds(tmp_path):
    root = str(tmp_path)
    runs = [_fake_run(root, "mse", s, [80, 84], [5, 5], [1.0, 1.2]) for s in range(3)]
    for run, seconds in zip(runs, (60.0, 90.0, 1800.0)):  # the third run was made on a busy machine
        experiment_runs.add_wall_time(run.path(root), seconds)
    text = report.cost_table(runs, _config(), root, "paper", ["acdc"])
    assert "| VoxelMorph MSE | 1.5 min |" in text  # the median, 90 s; the mean would be 11.0 min
