"""The reports of ``python -m hetreg_jax.experiments``: tables (Markdown, CSV) and figures.

Per-pair values come from each run's ``eval/test_per_pair.csv`` and are pooled over seeds (a pair of
seed s is keyed ``(s, pair_id)``); a cell is ``mean ± std`` (population std) over the pooled pairs.
In every column the best method is **bold** and the second marked †, as in the paper (Dice: higher
is better; HD, ASD, EPE: lower). The undeformed row (the metrics of the identity field, from any
run of the same dataset and seed) is not ranked. The paper's published numbers (METHOD.md, and
paper.txt where the text is legible) are printed in a second table of the same layout.
"""

from __future__ import annotations

import csv
import json
import math
import os

import numpy as np

from hetreg_jax.core import metrics
from hetreg_jax.evaluate import compare, evaluation
from hetreg_jax.experiments import figures as experiment_figures
from hetreg_jax.experiments.runs import (METHOD_NAMES, MODEL_NAMES, NO_TRAINING, dataset_name, failure, finished,
                                         read_rows, read_summary, row_name, run_config, wall_time)

CONTOUR = (("dice", "Dice %", True), ("hd", "HD px", False), ("asd", "ASD px", False))


# The paper's Table 1 (Dice %, HD px, ASD px on ACDC, then CAMUS).
PAPER_TABLE1 = {
    ("", "undeformed"): (47.98, 7.91, 2.32, 66.77, 10.87, 2.61),
    ("", "elastix"): (77.26, 4.95, 1.28, 80.18, 10.02, 1.81),
    ("voxelmorph", "ncc"): (78.55, 4.94, 1.29, 77.01, 10.23, 1.89),
    ("voxelmorph", "mi"): (78.04, 5.25, 1.35, 78.18, 9.83, 1.99),
    ("voxelmorph", "mse"): (80.20, 4.64, 1.24, 81.76, 8.93, 1.70),
    ("voxelmorph", "nll"): (76.49, 5.46, 1.45, 75.24, 11.05, 2.20),
    ("voxelmorph", "beta_nll"): (78.74, 5.07, 1.33, 79.75, 9.39, 1.93),
    ("voxelmorph", "adaframe"): (66.38, 5.80, 1.67, 77.88, 10.54, 1.93),
    ("voxelmorph", "adareg"): (78.75, 5.13, 1.33, 79.31, 9.78, 1.88),
    ("voxelmorph", "ours"): (80.73, 4.57, 1.21, 81.96, 8.80, 1.66),
    ("transmorph", "ncc"): (73.77, 6.64, 1.12, 73.03, 11.87, 1.70),
    ("transmorph", "mi"): (73.57, 6.57, 1.11, 74.83, 11.94, 1.83),
    ("transmorph", "mse"): (76.94, 5.51, 1.30, 79.24, 10.30, 1.79),
    ("transmorph", "nll"): (73.12, 7.22, 1.27, 75.08, 11.60, 1.79),
    ("transmorph", "beta_nll"): (75.74, 6.12, 1.29, 77.39, 10.99, 1.86),
    ("transmorph", "adaframe"): (67.95, 5.72, 1.59, 78.06, 9.86, 1.91),
    ("transmorph", "adareg"): (76.22, 5.68, 1.29, 78.12, 10.62, 1.84),
    ("transmorph", "ours"): (78.12, 5.04, 1.26, 80.38, 9.86, 1.72),
}
PAPER_DATASETS = ("acdc", "camus")
PAPER_NAMES = {"acdc": "ACDC", "camus": "CAMUS", "echo3d": "private 3D echo"}
# Table 2 (ours vs the vanilla MSE network, paired t-test on Dice); two exponents are not legible
# in our copy of the paper.
PAPER_TABLE2 = {("acdc", "voxelmorph"): "0.02", ("acdc", "transmorph"): "1.02×10⁻ⁿ (exponent illegible)",
                ("camus", "voxelmorph"): "1.36×10⁻ⁿ (exponent illegible)", ("camus", "transmorph"): "0.005"}
# Table 3 (private 3D echo, VoxelMorph): only these rows are legible in our copy.
PAPER_TABLE3 = {"adareg": (73.41, 5.91, 0.95), "ours": (75.04, 5.55, 0.93)}
# Table 4 (ours, VoxelMorph): legible rows; gamma = 0.5 is Table 1's "ours".
PAPER_TABLE4 = {0.25: (79.74, 4.74, 1.26, 82.07, 8.53, 1.65), 0.5: PAPER_TABLE1[("voxelmorph", "ours")],
                1.0: (79.78, 4.71, 1.25, 81.31, math.nan, 1.59)}


def pooled(runs, root, key: str) -> np.ndarray:
    """Per-pair values of ``key`` pooled over ``runs`` (the finished ones); for a contour column,
    over the pairs on which its structure is labelled in both frames (NaN: an empty prediction)."""
    structure = evaluation.structure_of(key)
    values = [row[key] for run in runs for row in (read_rows(run.path(root)) or [])
              if key in row and row.get(f"status_{structure}") != "absent"]
    return np.asarray(values, dtype=np.float64)


def cell(values: np.ndarray, digits: int = 2) -> tuple[float, str]:
    """``mean ± std`` over the non-NaN values, and ``[k NaN]`` when k values are NaN (e.g. the HD of
    an empty warped structure, left out of the mean)."""
    if values.size == 0 or np.all(np.isnan(values)):
        return math.nan, "not measured"
    s = metrics.summarize(values)
    nan = f" [{s['n_nan']} NaN]" if s["n_nan"] else ""
    return s["mean"], f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f}{nan}"


def mark(columns: list[list[tuple[float, str]]], higher_better: list[bool], skip_rows=()) -> list[list[str]]:
    """``columns[c][r] = (mean, text)`` -> texts with the best row bold and the second †."""
    out = [[text for _, text in column] for column in columns]
    for c, column in enumerate(columns):
        ranked = sorted((r for r, (m, _) in enumerate(column) if r not in skip_rows and not math.isnan(m)),
                        key=lambda r: -column[r][0] if higher_better[c] else column[r][0])
        if ranked:
            out[c][ranked[0]] = f"**{out[c][ranked[0]]}**"
        if len(ranked) > 1:
            out[c][ranked[1]] = f"{out[c][ranked[1]]} †"
    return out


def markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _method_rows(runs) -> list[tuple[str, str]]:
    rows = []
    for run in runs:
        key = ("" if run.method == "elastix" else run.model, run.method)
        if key not in rows:
            rows.append(key)
    return rows


def _footnotes(runs, root, skipped) -> list[str]:
    notes = [f"- `{m}`: not in `hetreg_jax.core.methods.METHODS` when the table was written; not run."
             for m in skipped]
    for run in runs:
        error = failure(run.path(root))
        if error:
            notes.append(f"- {run.label}: the run failed ({error}); left out of its row.")
    return notes


def _write_markdown(root: str, name: str, text: list[str], runs, skipped) -> str:
    """Write ``text`` (lines) and the runs' footnotes to ``root/name``; returns the path."""
    notes = _footnotes(runs, root, skipped)
    if notes:
        text = text + ["\nNotes:\n"] + [n + "\n" for n in notes]
    path = os.path.join(root, name)
    os.makedirs(root, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(text))
    return path


def _setting(runs, base, root, profile) -> str:
    trained = [r for r in runs if r.method not in NO_TRAINING]
    if not trained:
        return ""
    config = run_config(base, trained[0], profile)
    seeds = sorted({r.seed for r in runs})
    folds = sorted({r.fold for r in runs if r.fold is not None and finished(r, base, root, profile)})
    size = "x".join(map(str, config.data.image_size))
    if config.data.root is None:
        data = f"{size} phantoms, {config.data.synthetic_subjects} subjects"
        seeds_text = f"seeds {', '.join(map(str, seeds))} (each seed its own phantoms, split and initialisation)"
    else:
        data = f"real data in `{config.data.root}`, {size} crops"
        seeds_text = f"seeds {', '.join(map(str, seeds))} (each seed its own initialisation, data order and split)"
    split = (f"; {config.data.folds}-fold cross-validation by patient (test = fold k, validation = fold k + 1), "
             f"folds finished: {', '.join(map(str, folds)) or 'none'}" if config.data.folds else "")
    return (f"Profile `{profile}`: {data}, {config.num_steps} steps, batch {config.batch_size}, "
            f"lr {config.optim.motion_lr:g}; {seeds_text}{split}; mean ± std over the test pairs pooled "
            "over the seeds and folds.\n")


# ------------------------------------------------------------------------------------ Table 1 / 3
def contour_table(runs, base, root, profile, datasets, paper: dict | None, paper_datasets=()) -> tuple[str, list]:
    """(Markdown of ours [+ the paper's], CSV records) for the rows of ``runs`` and ``datasets``."""
    keys = [("", "undeformed")] + _method_rows(runs)
    done = [r for r in runs if finished(r, base, root, profile)]
    columns, records, counts = [], [], {}
    for dataset in datasets:
        for metric, _, _ in CONTOUR:
            column = []
            for model, method in keys:
                if method == "undeformed":
                    seen, chosen = set(), []
                    for r in done:
                        if r.dataset == dataset and (r.seed, r.fold) not in seen:
                            seen.add((r.seed, r.fold))
                            chosen.append(r)
                    values = pooled(chosen, root, f"undeformed_{metric}")
                else:
                    chosen = [r for r in done if r.dataset == dataset and r.method == method
                              and (method == "elastix" or r.model == model)]
                    values = pooled(chosen, root, metric)
                mean, text = cell(values)
                column.append((mean, text))
                counts[(dataset, model, method)] = (values.size, len({r.seed for r in chosen}))
                std = float(np.nanstd(values)) if values.size else math.nan
                records.append(dict(dataset=dataset, model=model or "-", method=method, metric=metric,
                                    mean=mean, std=std, n_pairs=values.size, n_seeds=len({r.seed for r in chosen}),
                                    paper=_paper_value(paper, paper_datasets, dataset, model, method, metric)))
            columns.append(column)
    marked = mark(columns, [h for _ in datasets for _, _, h in CONTOUR], skip_rows=(0,))
    header = ["method"] + [f"{dataset_name(d, base)} {label}" for d in datasets for _, label, _ in CONTOUR] + \
             [f"n {d} (pairs, seeds)" for d in datasets]
    rows = [[row_name(*key)] + [marked[c][r] for c in range(len(columns))] +
            [f"{counts[(d, *key)][0] // 1}, {counts[(d, *key)][1]}" for d in datasets]
            for r, key in enumerate(keys)]
    text = markdown(header, rows)
    if paper:
        shown = [d for d in datasets if d in paper_datasets]
        if shown:
            pcols = []
            for d in shown:
                for i, _ in enumerate(CONTOUR):
                    pcols.append([(v, f"{v:.2f}") if not math.isnan(v := _paper_value(paper, paper_datasets, d, *k,
                                                                                       CONTOUR[i][0])) else
                                  (math.nan, "–") for k in keys])
            pmarked = mark(pcols, [h for _ in shown for _, _, h in CONTOUR], skip_rows=(0,))
            pheader = ["method"] + [f"{PAPER_NAMES.get(d, d)} {label}" for d in shown for _, label, _ in CONTOUR]
            prows = [[row_name(*key)] + [pmarked[c][r] for c in range(len(pcols))] for r, key in enumerate(keys)]
            text += "\nThe paper's published numbers (real data, 30000 steps; '–': not published or not " \
                    "legible in our copy):\n\n" + markdown(pheader, prows)
    return text, records


STRUCTURE_METRICS = (("dice", "Dice %", True), ("hd", "HD px", False), ("hd95", "HD95 px", False),
                     ("asd", "ASD px", False), ("assd", "ASSD px", False), ("hd_mm", "HD mm", False),
                     ("hd95_mm", "HD95 mm", False), ("asd_mm", "ASD mm", False), ("assd_mm", "ASSD mm", False))


def scored_rows(run, root, name: str) -> list[dict]:
    """The per-pair rows of ``run`` on which structure ``name`` is scored (labelled in both frames)."""
    rows = read_rows(run.path(root)) or []
    return [r for r in rows if r.get(f"status_{name}", "ok") in ("ok", "empty_prediction")]


def structures_of(runs, root) -> list[tuple[str, str]]:
    """``(name, label)`` of every structure the finished ``runs`` scored, the myocardium first."""
    found = {}
    for run in runs:
        for name, info in ((read_summary(run.path(root)) or {}).get("structures") or {}).items():
            found.setdefault(name, info.get("name", name))
    return sorted(found.items(), key=lambda item: item[0] != "myo")


def structure_tables(runs, base, root, profile, datasets) -> str:
    """Per dataset and structure: every contour metric in px and (where the data has a spacing) mm,
    the count of empty warped structures (their surface metrics are NaN and left out of the means
    unless ``eval.empty_penalty="diagonal"``), and the patient-level paired test of Dice against the
    MSE network of the same model."""
    done = [r for r in runs if finished(r, base, root, profile)]
    keys = [("", "undeformed")] + _method_rows(runs)
    blocks = []
    for dataset in datasets:
        mine = [r for r in done if r.dataset == dataset]
        for name, label in structures_of(mine, root):
            present = [(m, lab, h) for m, lab, h in STRUCTURE_METRICS
                       if any(evaluation.key(m.removesuffix("_mm"), name, m.endswith("_mm")) in row
                              for r in mine for row in scored_rows(r, root, name)[:1])]
            columns = [[] for _ in present]
            extra = []
            for model, method in keys:
                if method == "undeformed":
                    seen, chosen = set(), []
                    for r in mine:
                        if (r.seed, r.fold) not in seen:
                            seen.add((r.seed, r.fold))
                            chosen.append(r)
                else:
                    chosen = [r for r in mine if r.method == method and (method == "elastix" or r.model == model)]
                seeded = [(r.seed, row) for r in chosen for row in scored_rows(r, root, name)]
                rows = [row for _, row in seeded]
                prefix = "undeformed_" if method == "undeformed" else ""
                for c, (metric, _, _) in enumerate(present):
                    column = prefix + evaluation.key(metric.removesuffix("_mm"), name, metric.endswith("_mm"))
                    columns[c].append(cell(np.asarray([row.get(column, math.nan) for row in rows], np.float64)))
                empty = sum(row.get(f"status_{name}") == "empty_prediction" for row in rows) if prefix == "" else 0
                patients = len({row.get("subject") for row in rows})
                test = "–"
                mse = [r for r in mine if r.method == "mse" and r.model == model]
                if method not in ("undeformed", "mse") and mse and chosen:
                    t = paired(chosen, mse, root, evaluation.key("dice", name))
                    if t["n"]:
                        test = f"{t['mean_diff']:+.2f} (p = {_p(t['p'])}, {t['a_better']}/{t['n']} better" + \
                               (f"; per seed {seeds_cell(t['seeds_diff'], sign=True)}" if t["seeds_diff"]["n"] > 1
                                else "") + ")"
                dice = prefix + evaluation.key("dice", name)
                replicas = metrics.replicate_summary([seed for seed, _ in seeded],
                                                     [row.get(dice, math.nan) for _, row in seeded])
                extra.append([str(empty), f"{patients}, {len(rows)}, {len({r.seed for r in chosen})}", test,
                              seeds_cell(replicas)])
            several = any(row[-1] != "–" for row in extra)
            marked = mark(columns, [h for _, _, h in present], skip_rows=(0,))
            header = ["method"] + [lab for _, lab, _ in present]
            header += ["empty warped", "n (patients, pairs, seeds)", "Δ Dice vs MSE (p over patients)"]
            header += ["Dice % over seeds (mean ± sd of the per-seed means)"] if several else []
            body = [[row_name(*k)] + [marked[c][i] for c in range(len(present))] + (extra[i] if several else extra[i][:-1])
                    for i, k in enumerate(keys)]
            blocks.append(f"\n{dataset_name(dataset, base)}, {label}:\n\n" + markdown(header, body))
    return "".join(blocks)


def seeds_cell(summary: dict, sign: bool = False) -> str:
    """``mean ± sd (n seeds)`` of per-seed means (``metrics.replicate_summary``); '–' for fewer than two
    seeds, whose spread is not measured."""
    if not summary or summary.get("n", 0) < 2:
        return "–"
    return f"{summary['mean']:{'+' if sign else ''}.2f} ± {summary['sd']:.2f} ({summary['n']} seeds)"


def _paper_value(paper, paper_datasets, dataset, model, method, metric) -> float:
    if not paper or dataset not in paper_datasets:
        return math.nan
    values = paper.get((model, method)) or paper.get(("", method)) or paper.get(method)
    if values is None:
        return math.nan
    index = paper_datasets.index(dataset) * 3 + [m for m, _, _ in CONTOUR].index(metric)
    return float(values[index]) if index < len(values) else math.nan


def cost_table(runs, base, root, profile, datasets) -> str:
    """Wall time per run (training + test evaluation; Elastix: registration of the test pairs)."""
    record = os.path.join(root, "inference_time.json")
    inference = json.load(open(record, encoding="utf-8")) if os.path.isfile(record) else {}
    rows = []
    for model, method in _method_rows(runs):
        cells = []
        for d in datasets:
            chosen = [r for r in runs if r.dataset == d and r.method == method and (method == "elastix" or r.model == model)
                      and finished(r, base, root, profile)]
            times = [t for r in chosen if (t := wall_time(r.path(root))) is not None]
            n = [len(read_rows(r.path(root)) or []) for r in chosen]
            infer = [inference[k] for r in chosen if (k := os.path.relpath(r.path(root), root)) in inference]
            summaries = [read_summary(r.path(root)) or {} for r in chosen]
            cpu = [x["cpu_seconds_per_pair"]["mean"] for x in summaries if "cpu_seconds_per_pair" in x]
            wall = [x["seconds_per_pair"]["mean"] for x in summaries if "seconds_per_pair" in x]
            if times and method == "elastix" and cpu:
                cells.append(f"{np.median(times) / 60:.1f} min ({np.mean(cpu):.2f} s CPU, {np.mean(wall):.2f} s wall "
                             "per test pair)")
            elif times:
                per_pair = sum(times) / max(1, sum(n))
                cells.append(f"{np.median(times) / 60:.1f} min ({per_pair:.2f} s per test pair)" if method == "elastix"
                             else f"{np.median(times) / 60:.1f} min" +
                             (f" (inference {1e3 * np.mean(infer):.1f} ms per pair)" if infer else ""))
            else:
                cells.append("not measured")
        rows.append([row_name(model, method)] + cells)
    return markdown(["method"] + [f"{dataset_name(d, base)}: wall time per run (training + test evaluation; "
                                  "Elastix: registering the test pairs)" for d in datasets], rows)


def report_table1(runs, base, root, profile, skipped, args, name="table1", title=None, paper=PAPER_TABLE1,
                  paper_datasets=PAPER_DATASETS) -> list[str]:
    datasets = list(dict.fromkeys(r.dataset for r in runs))
    figures = []
    if name == "table1" and args.get("figures", True):  # first: fig2 measures the inference times
        os.makedirs(root, exist_ok=True)
        figures = [p for p in (experiment_figures.fig2(runs, base, root, profile),
                               experiment_figures.fig3(runs, base, root, profile)) if p]
    text, records = contour_table(runs, base, root, profile, datasets, paper, paper_datasets)
    notes = _footnotes(runs, root, skipped)
    seed_counts = {r["n_seeds"] for r in records if r["n_pairs"] and r["method"] != "undeformed"}
    if len(seed_counts) > 1:
        notes.insert(0, "- The rows were measured over different numbers of seeds (last columns), i.e. on "
                        "different phantoms: the undeformed row pools every seed, and rows are comparable, "
                        "and the ranks meaningful, only over the same seeds (`--seeds`).")
    per_structure = structure_tables(runs, base, root, profile, datasets)
    if per_structure:
        text += ("\nPer structure, in px (of the network grid, the paper's unit) and mm (from each pair's "
                 "voxel spacing, where the data has one); mean ± std over the pooled test pairs on which "
                 "the structure is labelled in both frames. 'empty warped': pairs whose warped ED "
                 "structure is empty (Dice 0; their surface metrics are left out of the means, "
                 "`eval.empty_penalty=\"nan\"`, or set to the crop diagonal, `\"diagonal\"`). With several "
                 "seeds (replicate trainings), 'over seeds' and 'per seed' give the mean ± sd (ddof 1) of each "
                 "seed's mean over its own test pairs (every fold it finished) and of each seed's mean "
                 "difference from MSE.\n" + per_structure)
    md = [f"# {title or 'Table 1: contour metrics of the myocardium (ES vs warped ED)'}\n",
          _setting(runs, base, root, profile), text,
          "\nWall time per run (this machine, the median over seeds: a run made while the machine was busy takes longer):\n", cost_table(runs, base, root, profile, datasets)]
    if notes:
        md += ["\nNotes:\n"] + [n + "\n" for n in notes]
    paths = [os.path.join(root, f"{name}.md"), os.path.join(root, f"{name}.csv")]
    os.makedirs(root, exist_ok=True)
    with open(paths[0], "w", encoding="utf-8") as f:
        f.write("\n".join(md))
    with open(paths[1], "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(records[0]) if records else ["dataset"])
        writer.writeheader()
        writer.writerows(records)
    return paths + figures


def report_table3(runs, base, root, profile, skipped, args) -> list[str]:
    paper = {("voxelmorph", m): v for m, v in PAPER_TABLE3.items()}
    datasets = list(dict.fromkeys(r.dataset for r in runs))
    return report_table1(runs, base, root, profile, skipped, args, name="table3",
                         title="Table 3: 3D echo-like phantoms, VoxelMorph (the paper: private 3D echo data)",
                         paper=paper, paper_datasets=tuple(datasets[:1]))


# ------------------------------------------------------------------------------------ Table 2
NO_TEST = dict(t=math.nan, p=math.nan, n=0, mean_diff=math.nan, mean_a=math.nan, mean_b=math.nan,
               n_pairs=0, p_pairs=math.nan, a_better=0, seeds_diff=dict(mean=math.nan, sd=math.nan, n=0, means=[]))


def paired(runs_a, runs_b, root, metric="dice") -> dict:
    """compare.compare of two run lists, paired replicate by replicate ((seed, fold)) and pair by
    pair_id, with the patient as the unit of the test; NaN result if none."""
    replicates = sorted({(r.seed, r.fold) for r in runs_a} & {(r.seed, r.fold) for r in runs_b}, key=str)
    a = [next(r for r in runs_a if (r.seed, r.fold) == k).path(root) for k in replicates]
    b = [next(r for r in runs_b if (r.seed, r.fold) == k).path(root) for k in replicates]
    if not replicates:
        return dict(NO_TEST)
    return compare.compare(",".join(a), ",".join(b), [metric])["metrics"].get(metric) or dict(NO_TEST)


def _p(value: float) -> str:
    return "–" if math.isnan(value) else (f"{value:.2g}" if value >= 1e-3 else f"{value:.1e}")


def report_table2(runs, base, root, profile, skipped, args) -> list[str]:
    done = [r for r in runs if finished(r, base, root, profile)]
    rows = []
    for dataset in dict.fromkeys(r.dataset for r in runs):
        for model in dict.fromkeys(r.model for r in runs if r.method != "elastix"):
            ours = [r for r in done if r.dataset == dataset and r.model == model and r.method == "ours"]
            for _, method in _method_rows(runs):
                if method == "ours":
                    continue
                other = [r for r in done if r.dataset == dataset and r.method == method
                         and (method == "elastix" or r.model == model)]
                if not [r for r in runs if r.dataset == dataset and r.method == method
                        and (method == "elastix" or r.model == model)]:
                    continue
                t = paired(ours, other, root)
                paper = PAPER_TABLE2.get((dataset, model), "–") if method == "mse" else "–"
                rows.append([dataset_name(dataset, base), MODEL_NAMES.get(model, model),
                             METHOD_NAMES.get(method, method),
                             "–" if math.isnan(t["mean_diff"]) else f"{t['mean_diff']:+.2f}",
                             "–" if math.isnan(t["t"]) else f"{t['t']:.2f}", _p(t["p"]), str(t["n"]),
                             f"{t['a_better']}/{t['n']}", seeds_cell(t["seeds_diff"], sign=True), _p(t["p_pairs"]),
                             str(t["n_pairs"]), paper])
    text = ["# Table 2: paired t-tests of ours against each baseline (Dice)\n", _setting(runs, base, root, profile),
            "The unit of the test is the patient (the subject; on phantoms, which every seed draws anew, "
            "(seed, subject)): each patient's pairs are averaged, over every seed and fold that tested "
            "it, on each side, and scipy `ttest_rel` (two-sided) runs over the patients. Δ = mean over "
            "patients of ours − the baseline, in Dice points; 'ours better' counts the patients. The "
            "pair-level test (pairs pooled as independent, the paper's, which overstates the evidence "
            "when one patient contributes many correlated slices) is shown for comparison. The paper "
            "reports only ours vs the MSE network of the same architecture. 'Δ per seed': the mean ± sd "
            "(ddof 1) of each seed's mean difference, i.e. how much the comparison varies between replicate "
            "trainings ('–' with one seed).\n",
            markdown(["data", "network", "baseline", "Δ Dice (points)", "t", "p (patients)", "n patients",
                      "ours better", "Δ per seed", "p (pairs)", "n pairs", "paper's p"], rows)]
    path = _write_markdown(root, "table2.md", text, runs, skipped)
    return [path]


# ------------------------------------------------------------------------------------ Table 4
def report_table4(runs, base, root, profile, skipped, args) -> list[str]:
    datasets = list(dict.fromkeys(r.dataset for r in runs))
    done = [r for r in runs if finished(r, base, root, profile)]
    gammas = sorted({float(base.loss.gamma) if r.gamma is None else r.gamma for r in runs})
    blocks = []
    for model in dict.fromkeys(r.model for r in runs):
        columns = []
        for d in datasets:
            for metric, _, _ in CONTOUR:
                column = []
                for g in gammas:
                    chosen = [r for r in done if r.dataset == d and r.model == model and
                              (float(base.loss.gamma) if r.gamma is None else r.gamma) == g]
                    column.append(cell(pooled(chosen, root, metric)))
                columns.append(column)
        marked = mark(columns, [h for _ in datasets for _, _, h in CONTOUR])
        rows = [[f"ours (γ = {g:g})"] + [marked[c][i] for c in range(len(columns))] for i, g in enumerate(gammas)]
        blocks.append(f"{MODEL_NAMES.get(model, model)}:\n\n" + markdown(
            ["γ"] + [f"{dataset_name(d, base)} {label}" for d in datasets for _, label, _ in CONTOUR], rows))
    paper_rows = [[f"ours (γ = {g:g})"] + [("–" if math.isnan(v) else f"{v:.2f}") for v in PAPER_TABLE4.get(g, [math.nan] * 6)]
                  for g in gammas]
    text = ["# Table 4: effect of γ (the SNR exponent of ours)\n", _setting(runs, base, root, profile),
            "γ = 0 is a constant weight (plain MSE up to a factor 0.5); γ = 1 the full SNR.\n", *blocks,
            "\nThe paper's published numbers (VoxelMorph, real ACDC / CAMUS; '–': not published or not "
            "legible; γ = 0.5 is Table 1's ours):\n\n" + markdown(
                ["γ"] + [f"{d.upper()} {label}" for d in PAPER_DATASETS for _, label, _ in CONTOUR], paper_rows)]
    path = _write_markdown(root, "table4.md", text, runs, skipped)
    return [path]


# ------------------------------------------------------------------------------------ noise sweep
def report_noise(runs, base, root, profile, skipped, args) -> list[str]:
    done = [r for r in runs if finished(r, base, root, profile)]
    scale = lambda r: 1.0 if r.noise_scale is None else r.noise_scale  # noqa: E731
    scales = sorted({scale(r) for r in runs})
    methods = list(dict.fromkeys(r.method for r in runs))
    results, rows = {}, []
    for d in dict.fromkeys(r.dataset for r in runs):
        for s in scales:
            by_method = {m: [r for r in done if r.dataset == d and scale(r) == s and r.method == m] for m in methods}
            cells = []
            for m in methods:
                for metric in ("dice", "epe"):
                    values = pooled(by_method[m], root, metric)
                    results[(d, s, m, metric)] = values
                    cells.append(cell(values)[1])
            tests = [paired(by_method.get("ours", []), by_method.get("mse", []), root, metric)
                     for metric in ("dice", "epe")] if "ours" in methods and "mse" in methods else []
            p_cells = [f"{t['mean_diff']:+.3f} (p {_p(t['p'])}, n {t['n']})" if t["n"] else "–" for t in tests]
            rows.append([dataset_name(d, base), f"{s:g}"] + cells + p_cells)
    header = ["data", "noise scale"] + [f"{METHOD_NAMES.get(m, m)} {label}" for m in methods
                                        for label in ("Dice %", "EPE px")]
    if "ours" in methods and "mse" in methods:
        header += ["ours − MSE Dice", "ours − MSE EPE"]
    text = ["# Noise sweep: the phantoms' noise std × data.noise_scale\n", _setting(runs, base, root, profile),
            "EPE: mean endpoint error (voxels) against the true displacement inside the ES myocardium. "
            "ours − MSE: paired differences (by seed and pair id) with scipy `ttest_rel` p-values.\n",
            markdown(header, rows)]
    path = _write_markdown(root, "noise.md", text, runs, skipped)
    if not args.get("figures", True):
        return [path]
    figure = experiment_figures.noise_figure(results, scales, methods, os.path.join(root, "noise.png"))
    return [path] + ([figure] if figure else [])


# ------------------------------------------------------------------------------------ Table 5
# The paper's Table 5 (VoxelMorph; Dice %, HD px, ASD px on ACDC, then CAMUS), keyed by
# (method, motion.predict_sigma) as runs.TABLE5_ROWS.
PAPER_TABLE5 = {
    ("mse", False): (80.20, 4.64, 1.24, 81.76, 8.93, 1.70),
    ("vxm_diff", False): (76.19, 5.75, 1.19, 76.74, 10.76, 1.88),
    ("mse", True): (79.80, 4.74, 1.22, 81.47, 8.67, 1.69),
    ("ours", False): (80.73, 4.57, 1.21, 81.96, 8.80, 1.66),
    ("ours", True): (79.87, 4.62, 1.20, 81.91, 8.54, 1.65),
}
TABLE5_NAMES = {("mse", False): ("Vxm", "✗", "✗"), ("vxm_diff", False): ("Vxm-diff", "✓ (velocity)", "✗"),
                ("mse", True): ("ours", "✓", "✗"), ("ours", False): ("ours", "✗", "✓"),
                ("ours", True): ("ours", "✓", "✓")}
TABLE5_METRICS = (("dice", "Dice %", 2), ("hd", "HD px", 2), ("asd", "ASD px", 2), ("epe", "EPE px", 2),
                  ("sigma_z_ause", "σ_z AUSE px²", 3), ("sigma_z_ece", "σ_z ECE px", 3),
                  ("sigma_z_mean", "σ_z mean px", 3), ("sigma_z_ause_residual", "σ_z AUSE residual²", 4),
                  ("ause", "σ_I AUSE residual²", 4),
                  ("sigma_i_spearman", "σ_I Spearman", 2), ("sigma_i_median_ratio", "σ_I median ratio", 2))
TABLE5_NOTES = {
    "sigma_z_ause": "σ_z AUSE: sparsification of the squared true endpoint error ranked by σ_z",
    "sigma_z_ece": "σ_z ECE: 10 equal-count bins, |RMS endpoint error − √ndim · RMS σ_z| weighted by count",
    "sigma_z_mean": "σ_z mean: the predicted displacement std averaged over the foreground",
    "sigma_z_ause_residual": "σ_z AUSE residual²: sparsification of the squared image residual (fixed − "
                             "warped, normalised intensities) ranked by σ_z, which needs no ground truth",
    "ause": "σ_I AUSE residual²: the same for the variance net's log σ_I²",
    "sigma_i_spearman": "σ_I Spearman / median ratio: predicted against the phantoms' true noise σ",
}


def report_table5(runs, base, root, profile, skipped, args) -> list[str]:
    """``table5.md``: per dataset and Table 5 row, the contour metrics and the uncertainty scores
    (pooled per-pair values over the finished seeds), with the paper's numbers beside. A column that
    no row measures (on real data: EPE and the scores against true motion or noise) is left out."""
    done = [r for r in runs if finished(r, base, root, profile)]
    rows = []
    for d in dict.fromkeys(r.dataset for r in runs):
        for key in dict.fromkeys((r.method, r.predict_sigma) for r in runs):
            chosen = [r for r in done if r.dataset == d and (r.method, r.predict_sigma) == key]
            name, z, i = TABLE5_NAMES.get(key, (key[0], "✓" if key[1] else "✗", "?"))
            cells = [cell(pooled(chosen, root, metric), digits) for metric, _, digits in TABLE5_METRICS]
            paper = PAPER_TABLE5.get(key)
            offset = PAPER_DATASETS.index(d) * 3 if paper and d in PAPER_DATASETS else None
            published = " / ".join(f"{v:g}" for v in paper[offset:offset + 3]) if offset is not None else "–"
            rows.append(([dataset_name(d, base), name, z, i], cells, published))
    kept = [c for c, (metric, _, _) in enumerate(TABLE5_METRICS)
            if c < 3 or any(not math.isnan(cells[c][0]) for _, cells, _ in rows)]
    header = (["data", "row", "σ_z", "σ_I"] + [TABLE5_METRICS[c][1] for c in kept]
              + ["paper Dice / HD / ASD"])
    table = [first + [cells[c][1] for c in kept] + [published] for first, cells, published in rows]
    notes = [TABLE5_NOTES[TABLE5_METRICS[c][0]] for c in kept if TABLE5_METRICS[c][0] in TABLE5_NOTES]
    text = ["# Table 5: displacement uncertainty (VoxelMorph)\n", _setting(runs, base, root, profile),
            "; ".join(dict.fromkeys(notes)) + " (docs/uncertainty.md). The paper's numbers are on real "
            "ACDC / CAMUS.\n" if notes else "The paper's numbers are on real ACDC / CAMUS.\n",
            markdown(header, table)]
    path = _write_markdown(root, "table5.md", text, runs, skipped)
    if not args.get("figures", True):
        return [path]
    figure = experiment_figures.fig4(runs, base, root, profile)
    return [path] + ([figure] if figure else [])
