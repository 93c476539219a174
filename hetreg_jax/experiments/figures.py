"""The figures of ``python -m hetreg_jax.experiments`` (matplotlib, Agg backend).

- ``fig2.png`` (the paper's Fig. 2): a few test pairs of the lowest finished seed, one row each;
  one column per method: the fixed (ES) image cropped to the heart with the ES myocardium (yellow)
  and that method's warped ED myocardium (the method's colour, legend below). Networks predict
  through ``hetreg_jax.load(workdir)``; Elastix through ``hetreg_jax.baselines.elastix.register_pair``.
  The inference time per pair of each network (a second, compiled call over the test pairs) is
  written to ``inference_time.json``.
- ``fig3.png`` (the paper's Fig. 3): per dataset, one test pair of VoxelMorph ``ours``: the fixed
  image, the true σ² of the phantom, the predicted σ² and the SNR weight, each with a colour bar
  and its unit; and the mean sparsification curves (MSE of the pixels kept against the fraction
  removed by predicted σ²) of ours, NLL and β-NLL with their oracles and AUSE in the legend.
- ``noise.png``: Dice and EPE against ``data.noise_scale``, one line per method.
"""

from __future__ import annotations

import json
import os
import time

import numpy as np

from hetreg_jax import api
from hetreg_jax.base import plotting
from hetreg_jax.baselines import elastix
from hetreg_jax.core import spatial
from hetreg_jax.data import pipeline
from hetreg_jax.experiments.runs import METHOD_NAMES, dataset_name, finished, read_summary, row_name, run_config

MYOCARDIUM = 2
FIG2_PAIRS = 3
COLOURS = {"elastix": "tab:gray", "ncc": "tab:olive", "mi": "tab:brown", "mse": "tab:blue", "nll": "tab:purple",
           "beta_nll": "tab:pink", "adaframe": "tab:orange", "adareg": "tab:green", "ours": "tab:red"}
# fig2: one colour for every method's contour (the column title names the method), both far from grey
TRUTH_COLOUR, WARPED_COLOUR = "yellow", "red"


def _pyplot():
    """pyplot's names on Agg figures pyplot does not know of (notebook-safe, ``hetreg_jax.base.plotting``)."""
    return plotting


def _test_pairs(run, base, profile) -> dict:
    return pipeline.load_splits(run_config(base, run, profile))["test"]


def _box(*masks, margin=6):
    union = np.any(np.stack(masks), axis=0)
    if not union.any():
        return slice(None), slice(None)
    rows, cols = np.nonzero(union)
    return (slice(max(0, rows.min() - margin), rows.max() + margin + 1),
            slice(max(0, cols.min() - margin), cols.max() + margin + 1))


def _warp_mask(mask: np.ndarray, displacement: np.ndarray) -> np.ndarray:
    """The ED mask carried onto the ES grid (linear, > 0.5: the evaluation's threshold rule)."""
    warped = spatial.warp(mask[None, ..., None].astype(np.float32), displacement[None].astype(np.float32))
    return np.asarray(warped)[0, ..., 0] > 0.5


def _displacements(run, root, config, moving, fixed, times: dict) -> np.ndarray:
    """[B, *S, ndim] displacements of one run on a batch of pairs."""
    if run.method == "elastix":
        return np.stack([np.asarray(elastix.register_pair(m, f, config)) for m, f in zip(moving, fixed)])

    model = api.load(run.path(root))
    out = model.register(moving, fixed)  # compiles
    start = time.perf_counter()
    out = model.register(moving, fixed)
    times[run.path(root)] = (time.perf_counter() - start) / len(moving)
    return out["displacement"]


def fig2(runs, base, root, profile) -> str | None:

    done = [r for r in runs if finished(r, base, root, profile) and r.noise_scale is None and r.gamma is None]
    if not done:
        return None
    seed = min(r.seed for r in done)  # and the first fold of that seed: the columns share its test pairs
    fold = min((r.fold for r in done if r.seed == seed), key=lambda k: -1 if k is None else k)
    done = [r for r in done if (r.seed, r.fold) == (seed, fold)]
    datasets = [d for d in dict.fromkeys(r.dataset for r in done)]
    columns = []  # (model, method) in table order
    for r in runs:
        key = ("" if r.method == "elastix" else r.model, r.method)
        if key not in columns and any(x.seed == seed and (x.method == r.method) and
                                      (r.method == "elastix" or x.model == r.model) for x in done):
            columns.append(key)
    plt = _pyplot()
    test_pairs, picked = {}, {}
    for d in datasets:
        test_pairs[d] = _test_pairs(next(r for r in done if r.dataset == d and r.seed == seed), base, profile)
        pairs = test_pairs[d]  # drawn from the pairs whose myocardium is labelled in both frames
        both = np.flatnonzero([(pairs["moving_label"][i] == MYOCARDIUM).any() and
                               (pairs["fixed_label"][i] == MYOCARDIUM).any() for i in range(len(pairs["pair_id"]))])
        both = both if both.size else np.arange(len(pairs["pair_id"]))
        picked[d] = both[np.unique(np.linspace(0, both.size - 1, min(FIG2_PAIRS, both.size)).round().astype(int))]
    rows = [(d, k) for d in datasets for k in range(len(picked[d]))]
    width = max(2.2 * len(columns), 7.5)
    fig, axes = plt.subplots(len(rows), len(columns), figsize=(width, 2.3 * len(rows) + 0.9), squeeze=False)
    times: dict[str, float] = {}
    for d in datasets:
        pairs, picks = test_pairs[d], picked[d]
        n = len(pairs["pair_id"])
        moving, fixed = pairs["moving"][..., 0], pairs["fixed"][..., 0]
        for c, (model, method) in enumerate(columns):
            run = next((r for r in done if r.dataset == d and r.seed == seed and r.method == method and
                        (method == "elastix" or r.model == model)), None)
            disp = None
            if run is not None:
                config = run_config(base, run, profile)
                index = picks if method == "elastix" else np.arange(n)
                disp = dict(zip(index, _displacements(run, root, config, moving[index], fixed[index], times)))
            for k, i in enumerate(picks):
                ax = axes[rows.index((d, k))][c]
                view = (lambda a: a) if moving.ndim == 3 else (lambda a: a[..., a.shape[-1] // 2])
                es = pairs["fixed_label"][i] == MYOCARDIUM
                ed = pairs["moving_label"][i] == MYOCARDIUM
                warped = _warp_mask(ed, disp[i]) if disp is not None else None
                shown = [view(es)] + ([view(warped)] if warped is not None else [])
                box = _box(*shown)
                ax.imshow(view(fixed[i])[box], cmap="gray", vmin=0, vmax=1)
                for mask, colour, lw in zip(shown, [TRUTH_COLOUR, WARPED_COLOUR], [1.6, 1.3]):
                    if mask[box].any():
                        ax.contour(mask[box].astype(float), levels=[0.5], colors=colour, linewidths=lw)
                ax.set_xticks([])
                ax.set_yticks([])
                if k == 0:
                    ax.set_title(row_name(model, method), fontsize=10)
                if c == 0:
                    ax.set_ylabel(f"{dataset_name(d, base)}\n{pairs['pair_id'][i]}", fontsize=7)
    handles = [plt.Line2D([], [], color=TRUTH_COLOUR, lw=2, label="ES myocardium (ground truth)"),
               plt.Line2D([], [], color=WARPED_COLOUR, lw=2, label="ED myocardium warped by the column's method")]
    ncol = 2
    fig.legend(handles=handles, loc="lower center", ncol=ncol, fontsize=9, frameon=False)
    fig.suptitle(f"Test pairs (seed {seed}) on the fixed (ES) image", fontsize=10)
    legend_height = (0.35 + 0.2 * ((len(handles) + ncol - 1) // ncol)) / (2.3 * len(rows) + 0.9)
    fig.tight_layout(rect=(0, legend_height, 1, 0.97))
    path = os.path.join(root, "fig2.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    if times:
        record = os.path.join(root, "inference_time.json")
        old = json.load(open(record, encoding="utf-8")) if os.path.isfile(record) else {}
        old.update({os.path.relpath(k, root): v for k, v in times.items()})
        with open(record, "w", encoding="utf-8") as f:
            json.dump(old, f, indent=1)
    return path


def fig3(runs, base, root, profile) -> str | None:
    done = [r for r in runs if finished(r, base, root, profile) and r.noise_scale is None and r.gamma is None]
    datasets = [d for d in dict.fromkeys(r.dataset for r in done)
                if any(r.dataset == d and r.method == "ours" and r.model == "voxelmorph" for r in done)]
    if not datasets:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(len(datasets), 5, figsize=(18, 3.6 * len(datasets)), squeeze=False,
                             gridspec_kw={"width_ratios": [1, 1, 1, 1, 1.6]})
    for row, d in zip(axes, datasets):
        ours = min((r for r in done if r.dataset == d and r.method == "ours" and r.model == "voxelmorph"),
                   key=lambda r: r.seed)
        pairs = _test_pairs(ours, base, profile)
        with_myo = [k for k in range(len(pairs["pair_id"])) if (pairs["fixed_label"][k] == MYOCARDIUM).any()]
        with_myo = with_myo or list(range(len(pairs["pair_id"])))
        i = with_myo[len(with_myo) // 2]  # the middle test pair with an ES myocardium
        out = api.load(ours.path(root)).register(pairs["moving"][i, ..., 0], pairs["fixed"][i, ..., 0])
        view = (lambda a: a) if out["warped"].ndim == 2 else (lambda a: a[..., a.shape[-1] // 2])
        maps = [(pairs["fixed"][i, ..., 0], f"{dataset_name(d, base)} fixed (ES)\n{pairs['pair_id'][i]}", "gray",
                 "normalised intensity"),
                (np.log10(np.maximum(pairs["noise_sigma"][i, ..., 0], 1e-6) ** 2), "true σ² of the phantom",
                 "viridis", "log₁₀ σ² (intensity²)") if "noise_sigma" in pairs else
                (np.log10(np.maximum((pairs["fixed"][i, ..., 0] - out["warped"]) ** 2, 1e-6)),
                 "squared residual (fixed − warped)²\n(real data: no true σ²)", "viridis", "log₁₀ σ² (intensity²)"),
                (out["log_var"] / np.log(10.0), "predicted σ² (ours)", "viridis", "log₁₀ σ² (intensity²)"),
                (out["weight"], "SNR weight w (ours)", "cividis", "w (no unit)")]
        inside = (pairs["noise_sigma"][i, ..., 0] > 0 if "noise_sigma" in pairs  # echo phantoms: no noise
                  else pairs["fixed"][i, ..., 0] != 0)                           # (σ = 0) outside the fan
        if not inside.any():
            inside = np.ones_like(inside)
        maps[1] = (np.where(inside, maps[1][0], np.nan),) + maps[1][1:]  # blank where σ = 0
        both = np.concatenate([maps[1][0][inside], maps[2][0][inside]])
        low, high = np.quantile(both, 0.01), np.quantile(both, 0.99)
        for ax, (image, title, cmap, unit) in zip(row[:4], maps):
            limits = dict(vmin=low, vmax=high) if "σ²" in unit else {}
            shown = ax.imshow(view(image), cmap=cmap, **limits)
            bar = fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.03)
            bar.set_label(unit, fontsize=8)
            bar.ax.tick_params(labelsize=7)
            ax.set_title(title, fontsize=9)
            ax.axis("off")
        ax = row[4]
        for method in ("ours", "nll", "beta_nll"):
            chosen = [r for r in done if r.dataset == d and r.method == method and r.model == "voxelmorph"]
            summaries = [s for r in chosen if (s := read_summary(r.path(root))) and "sparsification" in s]
            if not summaries:
                continue
            x = np.asarray(summaries[0]["sparsification"]["fraction_removed"])
            curve = np.mean([s["sparsification"]["curve"] for s in summaries], axis=0)
            oracle = np.mean([s["sparsification"]["oracle"] for s in summaries], axis=0)
            ause = np.mean([s["ause"]["mean"] for s in summaries])
            colour = COLOURS[method]
            ax.plot(x, curve, color=colour, label=f"{METHOD_NAMES[method]} (AUSE {ause:.2e}, {len(summaries)} seed{'s' if len(summaries) != 1 else ''})")
            ax.plot(x, oracle, color=colour, ls="--", lw=1, label=f"{METHOD_NAMES[method]} oracle")
        ax.set_xlabel("fraction of pixels removed\n(largest predicted σ² first)")
        ax.set_ylabel("MSE of the rest (intensity²)")
        ax.set_title(f"{dataset_name(d, base)}: sparsification of σ² (test mean)", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path = os.path.join(root, "fig3.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def noise_figure(results: dict, scales, methods, path: str) -> str | None:
    """``results[(dataset, scale, method, metric)]`` = pooled per-pair values."""
    if not any(v.size for v in results.values()):
        return None
    plt = _pyplot()
    datasets = list(dict.fromkeys(k[0] for k in results))
    fig, axes = plt.subplots(len(datasets), 2, figsize=(10, 3.6 * len(datasets)), squeeze=False)
    for row, d in zip(axes, datasets):
        for ax, (metric, label) in zip(row, (("dice", "Dice (%)"), ("epe", "EPE in the myocardium (px)"))):
            for j, m in enumerate(methods):
                xs, ys, es = [], [], []
                for s in scales:
                    v = results.get((d, s, m, metric), np.zeros(0))
                    v = v[~np.isnan(v)]
                    if v.size:
                        xs.append(s * 2 ** (0.04 * (j - (len(methods) - 1) / 2)))
                        ys.append(v.mean())
                        es.append(v.std() / np.sqrt(v.size))
                if xs:
                    ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, color=COLOURS.get(m), label=METHOD_NAMES.get(m, m))
            ax.set_xscale("log", base=2)
            ax.set_xticks(scales)
            ax.set_xticklabels([f"{s:g}" for s in scales])
            ax.set_xlabel("noise scale (× the phantoms' noise std)")
            ax.set_ylabel(label)
            ax.set_title(f"{dataset_name(d)}: {label} (mean ± s.e. over test pairs)", fontsize=9)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# Table 5's σ_z rows, drawn in this order in fig4: (method, motion.predict_sigma) -> column title.
FIG4_ROWS = {("mse", True): "ours, σ_z only", ("ours", True): "ours, σ_z and σ_I", ("vxm_diff", False): "Vxm-diff"}


def fig4(runs, base, root, profile) -> str | None:
    """``fig4.png`` (the paper's Fig. 4): a few test pairs of the lowest finished seed, one row each:
    the fixed (ES) image, then for every finished σ_z model (ours with σ_z, ours with both, vxm-diff)
    its predicted σ_z and its true endpoint error ``|u_pred − u_true|`` on the same pair; the σ_z
    maps share one colour scale, the error maps another, both in voxels."""
    done = [r for r in runs if finished(r, base, root, profile) and (r.method, r.predict_sigma) in FIG4_ROWS]
    if not done:
        return None
    seed = min(r.seed for r in done)
    dataset = next(r.dataset for r in done if r.seed == seed)
    models = [next(r for r in done if r.seed == seed and r.dataset == dataset and (r.method, r.predict_sigma) == key)
              for key in FIG4_ROWS if any(r.seed == seed and r.dataset == dataset and
                                          (r.method, r.predict_sigma) == key for r in done)]
    pairs = _test_pairs(models[0], base, profile)
    n = len(pairs["pair_id"])
    picks = np.unique(np.linspace(0, n - 1, min(FIG2_PAIRS, n)).round().astype(int))
    moving, fixed = pairs["moving"][picks, ..., 0], pairs["fixed"][picks, ..., 0]
    truth = pairs.get("displacement")
    view = (lambda a: a) if fixed.ndim == 3 else (lambda a: a[..., a.shape[-1] // 2])
    maps = []  # per model: (sigma_z [P, *S], error [P, *S] or None)
    for run in models:
        out = api.load(run.path(root)).register(moving, fixed)
        error = None if truth is None else np.linalg.norm(out["displacement"] - truth[picks], axis=-1)
        maps.append((out["sigma_z"], error))
    sigma_high = float(np.quantile(np.concatenate([s.ravel() for s, _ in maps]), 0.99))
    errors = [e for _, e in maps if e is not None]
    error_high = float(np.quantile(np.concatenate([e.ravel() for e in errors]), 0.99)) if errors else 1.0
    per_model = 2 if errors else 1
    plt = _pyplot()
    cols = 1 + per_model * len(models)
    fig, axes = plt.subplots(len(picks), cols, figsize=(2.6 * cols, 2.5 * len(picks) + 0.6), squeeze=False)
    for k, i in enumerate(picks):
        row = axes[k]
        shown = row[0].imshow(view(fixed[k]), cmap="gray", vmin=0, vmax=1)
        row[0].set_ylabel(f"{dataset_name(dataset, base)}\n{pairs['pair_id'][i]}", fontsize=7)
        panels = [(shown, row[0], "fixed (ES)", "intensity")]
        for m, (run, (sigma, error)) in enumerate(zip(models, maps)):
            name = FIG4_ROWS[(run.method, run.predict_sigma)]
            ax = row[1 + per_model * m]
            panels.append((ax.imshow(view(sigma[k]), cmap="magma", vmin=0, vmax=sigma_high), ax,
                           f"{name}: σ_z", "σ_z (voxels)"))
            if error is not None:
                ax = row[2 + per_model * m]
                panels.append((ax.imshow(view(error[k]), cmap="inferno", vmin=0, vmax=error_high), ax,
                               f"{name}: |u − u_true|", "endpoint error (voxels)"))
        for image, ax, title, unit in panels:
            bar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.03)
            bar.set_label(unit, fontsize=7)
            bar.ax.tick_params(labelsize=6)
            ax.set_xticks([])
            ax.set_yticks([])
            if k == 0:
                ax.set_title(title, fontsize=8)
    what = ("against the true endpoint error" if errors else
            "(real data: no true displacement, so no endpoint error)")
    fig.suptitle(f"Displacement uncertainty σ_z {what} (test pairs, seed {seed})", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    path = os.path.join(root, "fig4.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
