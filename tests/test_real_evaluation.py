"""What real data needs from the evaluation: cross-validation folds, profiles that leave explicit
overrides alone, per-structure metrics in px and mm, visible empty predictions, the patient as the
unit of a test, and an inference weight map that does not depend on the rest of the batch."""

import csv
import json
import math
import os

import numpy as np
import pytest
from conftest import make_tiny_config
from scipy import stats

from hetreg_jax.evaluate import compare
from hetreg_jax.evaluate import evaluation
from hetreg_jax.experiments import runner as experiments
from hetreg_jax.experiments import runs as experiment_runs
from hetreg_jax.core import metrics
from hetreg_jax.config.check import validate_config
from hetreg_jax.data import pipeline


# ------------------------------------------------------------------------------------ folds
def test_folds_test_every_subject_once_and_keep_the_splits_disjoint():
    names = [f"patient{i:03d}" for i in range(1, 51)]
    tested = []
    for k in range(5):
        split = pipeline.fold_splits(names, seed=3, folds=5, fold=k)
        assert [len(split[s]) for s in ("train", "val", "test")] == [30, 10, 10]  # 60/20/20
        assert not set(split["test"]) & set(split["val"]) and not set(split["train"]) & set(split["test"])
        assert set(split["train"]) | set(split["val"]) | set(split["test"]) == set(names)
        assert split["val"] == pipeline.fold_splits(names, 3, 5, (k + 1) % 5)["test"]
        tested += split["test"]
    assert sorted(tested) == names  # every patient tested exactly once per seed
    assert pipeline.fold_splits(names, 4, 5, 0)["test"] != pipeline.fold_splits(names, 3, 5, 0)["test"]
    with pytest.raises(ValueError, match="data.folds=2"):
        pipeline.fold_names(names, 0, 2)


def test_folds_regroup_phantom_pairs_by_subject():
    config = make_tiny_config(**{"data.folds": 3, "data.fold": 1})
    splits = pipeline.load_splits(config)
    subjects = {name: set(splits[name]["subject"]) for name in pipeline.SPLITS}
    assert not subjects["test"] & subjects["train"] and not subjects["val"] & subjects["test"]
    n = config.data.synthetic_subjects
    assert sum(len(s) for s in subjects.values()) == n
    names = sorted(set().union(*subjects.values()))
    assert sorted(subjects["test"]) == pipeline.fold_splits(names, config.seed, 3, 1)["test"]


@pytest.mark.parametrize("key, value, message", [("data.folds", 2, "data.folds=2"),
                                                 ("data.fold", 3, "data.fold=3"),
                                                 ("data.structures", "lv=3,lv=1", "appears twice"),
                                                 ("data.structures", "lv:3", "data.structures"),
                                                 ("eval.empty_penalty", "zero", "eval.empty_penalty")])
def test_bad_fold_structure_and_penalty_keys_are_refused_in_one_line(key, value, message):
    overrides = {key: value, "data.folds": 3} if key == "data.fold" else {key: value}
    with pytest.raises(ValueError, match=message) as info:
        validate_config(make_tiny_config(**overrides))
    assert "\n" not in str(info.value)


# ------------------------------------------------------------------------------------ profiles
def test_explicit_overrides_win_over_the_profile_and_the_runner_keeps_its_axes():
    base = make_tiny_config(**{"num_steps": 40, "data.folds": 5})
    argv = ["--config=configs/quick.py", "--config.num_steps=40", "--config.seed=7", "--table=1"]
    profile = experiment_runs.Profile("quick", experiment_runs.explicit_overrides(argv, base))
    assert profile.overrides == {"num_steps": 40, "seed": base.seed}
    run = experiment_runs.Run("acdc", "voxelmorph", "mse", seed=2, fold=3)
    config = experiment_runs.run_config(base, run, profile)
    assert config.num_steps == 40  # the quick profile's 600 would have overwritten it
    assert config.optim.motion_lr == 1e-3 and tuple(config.data.image_size) == (64, 64)  # the profile's
    assert config.seed == 2 and config.data.fold == 3  # the run's own axes
    assert experiment_runs.run_config(base, run, "quick").num_steps == 600
    assert experiment_runs.run_config(base, run, "cpu").num_steps == 1200
    assert run.path("W") == os.path.join("W", "acdc", "voxelmorph", "mse", "seed2_fold3")


def test_the_runner_runs_every_fold_of_every_seed():
    base = make_tiny_config(**{"data.folds": 3})
    args = dict(seeds=[0, 1], models=["voxelmorph"], methods=["mse", "ours"], datasets=["acdc"], folds=[])
    runs, _ = experiments.table_runs("1", base, args)
    assert {(r.seed, r.fold, r.method) for r in runs} == {(s, k, m) for s in (0, 1) for k in range(3)
                                                          for m in ("mse", "ours")}
    runs, _ = experiments.table_runs("1", base, dict(args, folds=["2"]))
    assert {r.fold for r in runs} == {2}
    with pytest.raises(ValueError, match="--folds"):
        experiments.table_runs("1", base, dict(args, folds=["3"]))
    with pytest.raises(ValueError, match="data.folds"):
        experiments.table_runs("1", make_tiny_config(), dict(args, folds=["0"]))


# ------------------------------------------------------------------------------------ structures
def _square(size, lo, hi, value=1):
    out = np.zeros(size, np.uint8)
    out[lo:hi, lo:hi] = value
    return out


def _pairs(moving_labels, fixed_labels, spacing=None):
    n, size = len(moving_labels), moving_labels[0].shape
    pairs = {"moving": np.zeros((n, *size, 1), np.float32), "fixed": np.zeros((n, *size, 1), np.float32),
             "moving_label": np.stack(moving_labels), "fixed_label": np.stack(fixed_labels),
             "subject": [f"patient{i}" for i in range(n)], "pair_id": [f"patient{i}_slice00" for i in range(n)]}
    if spacing is not None:
        pairs["spacing"] = np.tile(np.asarray(spacing, np.float32), (n, 1))
    return pairs


def _pred(pairs, labels, warped_labels=None):
    n = len(pairs["moving"])
    masks = (pairs["moving_label"][..., None] == np.array([v for _, v in labels])).astype(np.float32)
    return {"displacement": np.zeros((n, *pairs["moving"].shape[1:-1], 2), np.float32),
            "warped": pairs["moving"], "warped_labels": masks if warped_labels is None else warped_labels}


ACDC = evaluation.parse_structures("rv=1,myo=2,lv=3")


def test_per_structure_metrics_in_px_and_mm_on_shifted_squares():
    size = (32, 32)
    ed = _square(size, 8, 16, 3) + _square(size, 20, 24, 2)  # LV 8x8, myocardium 4x4 (identity warp)
    es = _square(size, 10, 18, 3) + _square(size, 20, 24, 2)  # the LV moved by (2, 2)
    pairs = _pairs([ed], [es], spacing=(1.5, 1.5))
    rows, excluded, _ = evaluation.pair_rows(pairs, _pred(pairs, ACDC), "threshold", 10, ACDC)
    row = rows[0]
    assert not excluded and ACDC[0] == ("myo", 2)
    assert row["dice"] == 100.0 and row["hd"] == 0.0 and row["hd_mm"] == 0.0
    assert row["dice_lv"] == pytest.approx(100.0 * 2 * 36 / 128)  # 6x6 overlap of two 8x8 squares
    assert row["hd_lv"] == pytest.approx(2 * math.sqrt(2))  # the corners moved by (2, 2)
    assert row["hd_lv_mm"] == pytest.approx(1.5 * 2 * math.sqrt(2))
    assert row["asd_lv_mm"] == pytest.approx(1.5 * row["asd_lv"])
    assert row["status_rv"] == "absent" and "dice_rv" not in row
    summary = evaluation.summarize(rows, excluded, 1, ACDC)
    assert summary["dice"]["mean"] == 100.0 and summary["structures"]["lv"]["hd_mm"]["mean"] == row["hd_lv_mm"]
    assert summary["structures"]["rv"]["n_pairs"] == 0 and summary["structures"]["rv"]["n_absent"] == 1


def test_a_pair_without_an_es_myocardium_is_scored_on_the_lv_cavity():
    size = (24, 24)
    ed = _square(size, 4, 12, 3) + _square(size, 14, 18, 2)
    es = _square(size, 4, 12, 3)  # no myocardium drawn at ES (as Sunnybrook)
    nothing = np.zeros(size, np.uint8)
    pairs = _pairs([ed, nothing], [es, nothing])
    rows, excluded, _ = evaluation.pair_rows(pairs, _pred(pairs, ACDC), "threshold", 10, ACDC)
    assert [r["pair_id"] for r in rows] == ["patient0_slice00"] and rows[0]["dice_lv"] == 100.0
    assert rows[0]["status_myo"] == "absent" and "dice" not in rows[0]
    assert excluded == [{"pair_id": "patient1_slice00",
                         "reason": "empty ED myocardium, empty ED RV cavity, empty ED LV cavity"}]


@pytest.mark.parametrize("penalty", ["nan", "diagonal"])
def test_an_empty_warped_myocardium_is_visible_in_the_surface_summaries(penalty):
    size = (20, 30)
    label = _square(size, 4, 12, 2)
    pairs = _pairs([label, label], [label, label], spacing=(2.0, 1.0))
    labels = [("myo", 2)]
    warped = (np.stack([label, label]) == 2)[..., None].astype(np.float32)
    warped[1] = 0  # the method erased the myocardium of the second pair
    rows, excluded, _ = evaluation.pair_rows(pairs, _pred(pairs, labels, warped), "threshold", 10, labels, penalty)
    summary = evaluation.summarize(rows, excluded, 2, labels)
    assert rows[1]["dice"] == 0.0 and rows[1]["status_myo"] == "empty_prediction"
    assert summary["dice"] == {"mean": 50.0, "std": 50.0, "n": 2, "n_nan": 0}
    assert summary["structures"]["myo"]["n_empty_prediction"] == 1
    if penalty == "nan":  # left out of the mean, and counted
        assert summary["hd"]["n"] == 1 and summary["hd"]["n_nan"] == 1 and summary["hd"]["mean"] == 0.0
    else:  # the crop diagonal, in px and in mm
        assert rows[1]["hd"] == pytest.approx(math.hypot(20, 30))
        assert rows[1]["hd_mm"] == pytest.approx(math.hypot(40, 30))
        assert summary["hd"]["n_nan"] == 0 and summary["hd"]["mean"] == pytest.approx(math.hypot(20, 30) / 2)


def test_auto_structures_follow_the_layout_and_the_phantom_kind(tmp_path):
    assert [n for n, _ in evaluation.structures(make_tiny_config())] == ["myo", "rv", "lv"]
    camus = evaluation.structures(make_tiny_config(**{"data.dataset": "camus"}))
    assert dict(camus) == {"myo": 2, "lv": 1, "la": 3}
    (tmp_path / "pairs.csv").write_text("moving,fixed\n")
    assert evaluation.structures(make_tiny_config(**{"data.root": str(tmp_path)})) == [("myo", 2)]
    own = make_tiny_config(**{"data.structures": "lv=1,myo=2"})
    assert evaluation.structures(own) == [("myo", 2), ("lv", 1)]


# ------------------------------------------------------------------------------------ statistics
def _write(run, rows, seed, root=None):
    os.makedirs(os.path.join(run, "eval"))
    with open(os.path.join(run, "eval", "test_per_pair.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["pair_id", "subject", "dice"])
        writer.writeheader()
        writer.writerows(rows)
    with open(os.path.join(run, "config.json"), "w") as f:
        json.dump({"seed": seed, "data": {"root": root, "image_size": [8, 8], "dataset": "acdc"}}, f)


def test_a_patient_tested_in_three_seeds_counts_once(tmp_path):
    rng = np.random.default_rng(0)
    patients = [f"patient{i:03d}" for i in range(6)]
    a_runs, b_runs, units, va, vb = [], [], [], [], []
    for seed in range(3):
        rows_a, rows_b = [], []
        for p in patients:
            for z in range(4):  # four slices of every patient
                a, b = 80 + rng.normal(), 79 + rng.normal()
                rows_a.append({"pair_id": f"{p}_slice{z:02d}", "subject": p, "dice": a})
                rows_b.append({"pair_id": f"{p}_slice{z:02d}", "subject": p, "dice": b})
                units.append(p), va.append(a), vb.append(b)
        for name, rows, runs in (("a", rows_a, a_runs), ("b", rows_b, b_runs)):
            path = str(tmp_path / f"{name}{seed}")
            _write(path, rows, seed, root="/data/acdc")
            runs.append(path)
    result = compare.compare(",".join(a_runs), ",".join(b_runs), ["dice"])
    dice = result["metrics"]["dice"]
    assert result["n_patients"] == 6 and dice["n"] == 6 and dice["n_pairs"] == 72
    mean_a = [np.mean([v for u, v in zip(units, va) if u == p]) for p in patients]
    mean_b = [np.mean([v for u, v in zip(units, vb) if u == p]) for p in patients]
    assert dice["p"] == pytest.approx(stats.ttest_rel(mean_a, mean_b).pvalue)
    assert dice["p_pairs"] == pytest.approx(stats.ttest_rel(va, vb).pvalue)
    seed_means = [np.mean(va[24 * s:24 * (s + 1)]) for s in range(3)]
    assert dice["seeds_a"]["mean"] == pytest.approx(np.mean(seed_means))
    assert dice["seeds_a"]["sd"] == pytest.approx(np.std(seed_means, ddof=1)) and dice["seeds_a"]["n"] == 3
    seed_diffs = [np.mean(np.subtract(va, vb)[24 * s:24 * (s + 1)]) for s in range(3)]
    assert dice["seeds_diff"]["mean"] == pytest.approx(np.mean(seed_diffs))
    assert dice["seeds_diff"]["sd"] == pytest.approx(np.std(seed_diffs, ddof=1))


def test_on_phantoms_a_subject_of_each_seed_is_its_own_unit(tmp_path):
    for name, values in (("a0", [3.0, 5.0]), ("a1", [4.0, 1.0]), ("b0", [1.0, 2.0]), ("b1", [2.0, 2.5])):
        seed = int(name[1])
        _write(str(tmp_path / name), [{"pair_id": f"synth_{i}", "subject": f"synth_{i}", "dice": v}
                                      for i, v in enumerate(values)], seed)
    result = compare.compare(f"{tmp_path}/a0,{tmp_path}/a1", f"{tmp_path}/b0,{tmp_path}/b1", ["dice"])
    assert result["metrics"]["dice"]["n"] == 4  # (seed, subject): four phantoms
    assert result["metrics"]["dice"]["p"] == pytest.approx(
        stats.ttest_rel([3.0, 5.0, 4.0, 1.0], [1.0, 2.0, 2.0, 2.5]).pvalue)


def test_unit_ttest_ignores_nan_and_counts_the_better_units():
    result = metrics.unit_ttest(["p", "p", "q", "r", "r"], [1.0, np.nan, 2.0, 5.0, 3.0], [0.0, 9.0, 3.0, 1.0, 1.0])
    assert result["n"] == 3 and result["n_obs"] == 4 and result["a_better"] == 2
    assert result["mean_diff"] == pytest.approx(np.mean([1.0, -1.0, 3.0]))


# ------------------------------------------------------------------------------------ inference weight
def test_the_inference_weight_of_a_slice_is_the_same_alone_and_in_a_batch():
    import jax

    from hetreg_jax.train import step as steps

    config = make_tiny_config()
    trainer = steps.Trainer(config)
    state = trainer.init_state()
    pairs = pipeline.load_splits(config)["train"]
    batch = {"moving": pairs["moving"][:4].copy(), "fixed": pairs["fixed"][:4].copy()}
    batch["fixed"][3] = batch["fixed"][3] * 3.0  # a brighter neighbour changes a batch-wide min-max
    out = jax.device_get(trainer.predict(state, batch))
    together = out["weight"]
    from hetreg_jax.core import losses  # the training loss's batch-wide normalisation would differ here
    batch_wide = losses.snr_weight(batch["fixed"], out["log_var"], config.loss.gamma, form=config.loss.snr_form,
                                   mask=losses.foreground_mask(batch["moving"], batch["fixed"]),
                                   scope=config.loss.minmax_scope)
    assert np.abs(np.asarray(batch_wide)[0] - together[0]).max() > 1e-3
    alone = jax.device_get(trainer.predict(state, {k: np.repeat(v[:1], 4, axis=0) for k, v in batch.items()}))
    np.testing.assert_allclose(together[0], alone["weight"][0], rtol=0, atol=1e-6)
    assert together[0].max() == pytest.approx(1 / (1 + math.exp(-1)), abs=1e-5)  # each sample spans [0.5, 0.73]


# ------------------------------------------------------------------------------------ the runner on a dataset folder
@pytest.fixture(scope="module")
def acdc_table(tmp_path_factory):
    from hetreg_jax.data import layouts

    data = str(tmp_path_factory.mktemp("acdc_layout"))
    layouts.write_acdc(data, subjects=6, size=(40, 40), slices=2)
    root = str(tmp_path_factory.mktemp("acdc_runs"))
    base = make_tiny_config(**{"data.root": data, "data.folds": 3, "num_steps": 2, "checkpoint_every": 2})
    profile = experiment_runs.Profile("paper", {})
    paths = experiments.run_table("1", base, root, profile, seeds=[0, 1], models=["voxelmorph"],
                                  methods=["mse", "ours"], folds=[0], figures=False, say=lambda *a: None)
    paths += experiments.run_table("2", base, root, profile, seeds=[0, 1], models=["voxelmorph"],
                                   methods=["mse", "ours"], folds=[0], figures=False, say=lambda *a: None)
    return data, root, paths


def test_the_runner_on_an_acdc_folder_writes_per_structure_px_and_mm_tables(acdc_table):
    data, root, paths = acdc_table
    run = os.path.join(root, "acdc", "voxelmorph", "ours", "seed0_fold0")
    summary = json.load(open(os.path.join(run, "eval", "test_metrics.json")))
    assert summary["eval_version"] == evaluation.EVAL_VERSION and "epe" not in summary  # no true motion
    assert set(summary["structures"]) == {"myo", "lv", "rv"} and "hd_mm" in summary["structures"]["lv"]
    tested = {row["subject"] for row in csv.DictReader(open(os.path.join(run, "eval", "test_per_pair.csv")))}
    names = [f"patient{i:03d}" for i in range(1, 7)]
    assert sorted(tested) == pipeline.fold_splits(names, 0, 3, 0)["test"]
    text = open(os.path.join(root, "table1.md"), encoding="utf-8").read()
    assert "ACDC (real)" in text and "3-fold cross-validation" in text and "folds finished: 0" in text and "phantoms" not in text.split("\n")[2]
    for heading in (", myocardium:", ", LV cavity:", ", RV cavity:"):
        assert heading in text
    assert "| HD mm |" in text or " HD mm |" in text
    both = tested | {row["subject"] for row in csv.DictReader(open(os.path.join(
        root, "acdc", "voxelmorph", "ours", "seed1_fold0", "eval", "test_per_pair.csv")))}
    table2 = open(os.path.join(root, "table2.md"), encoding="utf-8").read()
    line = next(x for x in table2.splitlines() if "| MSE |" in x)
    assert line.split("|")[7].strip() == str(len(both))  # n patients: each seed's fold 0 tests its own split

    # seeds are replicate trainings: the mean ± sd (ddof 1) of the two seeds' means, and of their differences
    def seed_mean(method, seed):
        rows = experiment_runs.read_rows(os.path.join(root, "acdc", "voxelmorph", method, f"seed{seed}_fold0"))
        return np.mean([r["dice"] for r in rows if r["status_myo"] in ("ok", "empty_prediction")])

    ours, mse = [seed_mean("ours", s) for s in (0, 1)], [seed_mean("mse", s) for s in (0, 1)]
    myo = text.split(", myocardium:")[1].split("\n\n")[1]
    assert "Dice % over seeds (mean ± sd of the per-seed means)" in myo.splitlines()[0]
    row = next(x for x in myo.splitlines() if x.startswith("| VoxelMorph ours"))
    assert row.split("|")[-2].strip() == f"{np.mean(ours):.2f} ± {np.std(ours, ddof=1):.2f} (2 seeds)"
    diff = np.subtract(ours, mse)
    assert f"per seed {np.mean(diff):+.2f} ± {np.std(diff, ddof=1):.2f} (2 seeds)" in row
    assert f"| {np.mean(diff):+.2f} ± {np.std(diff, ddof=1):.2f} (2 seeds) |" in line


def test_a_stale_evaluation_is_redone_without_training(acdc_table):
    data, root, _ = acdc_table
    run = os.path.join(root, "acdc", "voxelmorph", "mse", "seed0_fold0")
    path = os.path.join(run, "eval", "test_metrics.json")
    old = json.load(open(path))
    old.pop("eval_version")
    json.dump(old, open(path, "w"))
    assert experiment_runs.stale_evaluation(run)
    calls = []
    base = make_tiny_config(**{"data.root": data, "data.folds": 3, "num_steps": 2, "checkpoint_every": 2})

    def counted(config, workdir):
        calls.append(workdir)
        return experiments.train_run(config, workdir)

    experiments.run_table("1", base, root, "paper", seeds=[0], models=["voxelmorph"], methods=["mse"],
                          folds=[0], figures=False, train_fn=counted, say=lambda *a: None)
    assert calls == [run] and not experiment_runs.stale_evaluation(run)
    assert json.load(open(path))["checkpoint_step"] == 2  # evaluated at the final checkpoint, not retrained


# ------------------------------------------------------------------------------------ the real ACDC copy, when present
REAL_ACDC = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "acdc")


@pytest.mark.skipif(not os.path.isdir(os.path.join(REAL_ACDC, "training")), reason="no real ACDC copy beside the repo")
def test_real_acdc_folds_test_each_patient_once_with_all_three_structures():
    from hetreg_jax.data import acdc

    names = [os.path.basename(f) for f in acdc.patient_folders(os.path.join(REAL_ACDC, "training"))]
    tested = [n for k in range(5) for n in pipeline.fold_splits(names, 0, 5, k)["test"]]
    assert sorted(tested) == sorted(names) and len(names) >= 5
    pairs = acdc.load_patient(os.path.join(REAL_ACDC, "training", names[0]), (128, 128))
    labels = np.stack([p["fixed_label"] for p in pairs])
    assert set(np.unique(labels)) <= {0, 1, 2, 3} and {1, 2, 3} <= set(np.unique(labels))
    assert all(np.all(p["spacing"] > 0) for p in pairs)


# ------------------------------------------------------------------------------------ label-free centring
def test_motion_centre_finds_the_region_that_changes_between_ed_and_es():
    from hetreg_jax.data import preprocess

    x, y = np.meshgrid(np.arange(96), np.arange(80), indexing="ij")
    body = ((x - 48) ** 2 / 40 ** 2 + (y - 40) ** 2 / 34 ** 2 < 1).astype(np.float32) * 0.5
    ed = body + 0.5 * ((x - 30) ** 2 + (y - 52) ** 2 < 12 ** 2)  # the "LV" contracts from r 12 to 7
    es = body + 0.5 * ((x - 30) ** 2 + (y - 52) ** 2 < 7 ** 2)
    stack = lambda a: np.repeat(a[..., None], 3, axis=-1) * 900  # noqa: E731 (raw units; 3 slices)
    centre = preprocess.motion_centre(stack(ed), stack(es), spacing=(1.5, 1.5))
    assert np.hypot(centre[0] - 30, centre[1] - 52) <= 1.0
    # The smoothing is in mm: at 4.5 mm voxels (sigma 2.2 voxels) the maximum sits on the changing
    # ring (radius 7 to 12 voxels), not at its centre.
    ring = np.hypot(*np.subtract(preprocess.motion_centre(stack(ed), stack(es), (4.5, 4.5)), (30, 52)))
    assert 6.0 <= ring <= 13.0
    assert preprocess.motion_centre(stack(ed), stack(ed)) == (47.5, 39.5)  # no motion: the image centre


def test_image_centring_of_an_acdc_folder_needs_no_label(tmp_path):
    from hetreg_jax.data import acdc, layouts

    layouts.write_acdc(str(tmp_path), subjects=1, size=(96, 96), slices=3)
    folder = os.path.join(str(tmp_path), "training", "patient001")
    by_label = acdc.load_patient(folder, (48, 48))
    by_images = acdc.load_patient(folder, (48, 48), centre="images")
    # Either way the ES myocardium lies in the crop.
    for pairs in (by_label, by_images):
        assert all((p["fixed_label"] == 2).sum() > 0 for p in pairs if (p["moving_label"] == 2).any())
    with pytest.raises(ValueError, match="data.centre"):
        acdc.subjects(str(tmp_path), (48, 48), 0, centre="middle")


# ------------------------------------------------------------------------ validation Dice
def test_validation_dice_falls_back_to_a_structure_labelled_in_both_frames():
    """The Sunnybrook fixture has no ES myocardium: the periodic validation Dice is the LV cavity's
    (named), not NaN; on phantoms labelled with the myocardium it stays the headline's."""
    from hetreg_jax.train import step as steps

    root = os.path.join(os.path.dirname(__file__), os.pardir, "examples", "sunnybrook")
    config = make_tiny_config(**{"data.root": root, "data.structures": "lv=1,myo=2", "data.dataset": "pairs"})
    splits = pipeline.load_splits(config)
    trainer = steps.Trainer(config)
    state = trainer.init_state()
    dice, name = evaluation.validation_dice(trainer, state, splits["val"], config)
    assert name == "LV cavity" and 0 < dice <= 100
    pred = evaluation.predict_pairs(trainer, state, splits["val"], config.eval.batch_size,
                                    evaluation.structures(config))
    rows, _, _ = evaluation.pair_rows(splits["val"], pred, config.eval.label_rule,
                                      config.eval.sparsification_steps, evaluation.structures(config))
    assert dice == pytest.approx(np.mean([r["dice_lv"] for r in rows]))
    assert all(math.isnan(r.get("dice", math.nan)) for r in rows)       # no myocardium Dice anywhere

    phantoms = make_tiny_config()
    phantom_splits = pipeline.load_splits(phantoms)
    trainer = steps.Trainer(phantoms)
    dice, name = evaluation.validation_dice(trainer, trainer.init_state(), phantom_splits["val"], phantoms)
    assert name == "myocardium" and 0 < dice <= 100


# ------------------------------------------------------------------------------------ example figure on real crops
def test_the_example_weight_map_is_scaled_over_the_foreground():
    """A min-max normalised crop is 0 at its darkest pixel: where both frames are 0 the SNR weight is
    0 (outside the foreground), and the colour scale must span the foreground's weights only."""
    from hetreg_jax.evaluate import figures

    rng = np.random.default_rng(0)
    moving, fixed = rng.uniform(0.1, 1, (1, 24, 24, 1)), rng.uniform(0.1, 1, (1, 24, 24, 1))
    moving[0, 12, 12], fixed[0, 12, 12] = 0.0, 0.0
    label = np.zeros((1, 24, 24), np.int32)
    label[0, 8:16, 8:16], label[0, 10:14, 10:14] = 2, 3
    weight = rng.uniform(0.5, 0.7, (1, 24, 24, 1))
    weight[0, 12, 12] = 0.0
    pairs = {"moving": moving, "fixed": fixed, "moving_label": label, "fixed_label": label, "pair_id": ["p0"]}
    pred = {"warped": moving, "warped_myo": (label == 2)[..., None].astype(np.float32),
            "displacement": np.zeros((1, 24, 24, 2)), "log_var": np.zeros((1, 24, 24, 1)), "weight": weight}
    fig = figures.example_figure(pairs, pred)
    panel = next(ax for ax in fig.axes if ax.get_title() == "SNR weight")
    shown = np.asarray(panel.images[0].get_array())
    assert shown.min() == 0.0  # the background pixel is in the crop shown
    assert panel.images[0].get_clim() == (shown[shown > 0].min(), shown.max()) and shown[shown > 0].min() >= 0.5
