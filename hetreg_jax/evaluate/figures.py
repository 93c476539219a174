"""Figures a run writes: training curves and example registrations (matplotlib Agg figures of
``hetreg_jax.base.plotting``: no pyplot, no ``matplotlib.use``, so a notebook's backend stays as it is).

- ``eval/curves.png``: motion loss, similarity, smoothness and variance loss against the step
  (from ``metrics.jsonl``), and the validation Dice when it was measured.
- ``eval/examples.png``: a few test pairs, one row each, cropped to the heart: moving (ED) with the
  ED myocardium contour, fixed (ES) with the ES contour, warped with the ES contour and the warped
  ED contour, |fixed - warped|, |u| (voxels), and for methods with a variance net log sigma^2 and
  the SNR weight; a colour bar with its unit on every map. 3D: the middle slice of the last axis.
"""

from __future__ import annotations

import json
import os

import numpy as np
from hetreg_jax.base import plotting

MYOCARDIUM = 2
EXAMPLE_PAIRS = 4
CROP_MARGIN = 6  # voxels around the union of the myocardium masks


def _pyplot():
    """pyplot's names on Agg figures pyplot does not know of (notebook-safe, ``hetreg_jax.base.plotting``)."""
    return plotting


def training_curves(metrics_path: str, path: str) -> str | None:
    """Loss curves (and validation Dice) from ``metrics.jsonl``; None when there is nothing to plot."""
    if not os.path.isfile(metrics_path):
        return None
    with open(metrics_path, encoding="utf-8") as f:
        records = [json.loads(line) for line in f if line.strip()]
    panels = [(key, label) for key, label in (("motion_loss", "motion loss"), ("similarity", "similarity term"),
                                              ("smoothness", "smoothness R"), ("variance_loss", "variance loss (β-NLL)"),
                                              ("val_dice", "validation Dice (%)"))
              if any(key in r for r in records)]
    if not panels:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 2.8), squeeze=False)
    for ax, (key, label) in zip(axes[0], panels):
        points = sorted((r["step"], r[key]) for r in records if key in r)
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o" if len(points) < 30 else None,
                markersize=3)
        ax.set_xlabel("step")
        ax.set_title(label, fontsize=9)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _view(array: np.ndarray) -> np.ndarray:
    return array if array.ndim == 2 else array[..., array.shape[-1] // 2]


def _heart_box(*masks: np.ndarray) -> tuple[slice, slice]:
    union = np.any(np.stack(masks), axis=0)
    if not union.any():
        return slice(None), slice(None)
    rows, cols = np.nonzero(union)
    n0, n1 = union.shape
    return (slice(max(0, rows.min() - CROP_MARGIN), min(n0, rows.max() + CROP_MARGIN + 1)),
            slice(max(0, cols.min() - CROP_MARGIN), min(n1, cols.max() + CROP_MARGIN + 1)))


def examples(pairs, pred: dict, path: str, count: int = EXAMPLE_PAIRS) -> str | None:
    """Save `example_figure` to ``path``; None when there is no pair."""
    fig = example_figure(pairs, pred, count)
    if fig is None:
        return None
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return path


def example_figure(pairs, pred: dict, count: int = EXAMPLE_PAIRS):
    """Example registrations of up to ``count`` pairs spread over ``pairs`` (see the module doc),
    as a matplotlib figure (also sent to TensorBoard at each validation)."""
    n = len(pairs["pair_id"])
    if n == 0:
        return None
    picks = np.unique(np.linspace(0, n - 1, min(count, n)).round().astype(int))
    maps = [("|fixed − warped|", "magma", "intensity")]
    maps += [("|u|", "viridis", "voxels")]
    maps += [(title, cmap, unit) for key, title, cmap, unit in
             (("log_var", "log σ²", "viridis", "log intensity²"), ("weight", "SNR weight", "cividis", "w"))
             if key in pred]
    columns = 3 + len(maps)
    plt = _pyplot()
    fig, axes = plt.subplots(len(picks), columns, figsize=(2.3 * columns, 2.4 * len(picks)), squeeze=False)
    for row, i in zip(axes, picks):
        moving, fixed = _view(pairs["moving"][i, ..., 0]), _view(pairs["fixed"][i, ..., 0])
        warped = _view(pred["warped"][i, ..., 0])
        ed = _view(pairs["moving_label"][i]) == MYOCARDIUM
        es = _view(pairs["fixed_label"][i]) == MYOCARDIUM
        warped_ed = _view(pred["warped_myo"][i, ..., 0]) > 0.5
        box = _heart_box(ed, es, warped_ed)
        values = {"|fixed − warped|": np.abs(fixed - warped),
                  "|u|": np.linalg.norm(_view_field(pred["displacement"][i]), axis=-1)}
        if "log_var" in pred:
            values["log σ²"] = _view(pred["log_var"][i, ..., 0])
        if "weight" in pred:
            values["SNR weight"] = _view(pred["weight"][i, ..., 0])
        gray = ((moving, f"{pairs['pair_id'][i]}\nmoving (ED)", [(ed, "red")]),
                (fixed, "fixed (ES)", [(es, "yellow")]),
                (warped, "warped", [(es, "yellow"), (warped_ed, "cyan")]))
        for ax, (image, title, contours) in zip(row, gray):
            ax.imshow(image[box], cmap="gray", vmin=0, vmax=1)
            for mask, colour in contours:
                if mask[box].any() and not mask[box].all():
                    ax.contour(mask[box].astype(float), levels=[0.5], colors=colour, linewidths=0.9)
            ax.set_title(title, fontsize=8)
            ax.axis("off")
        # the SNR weight is normalised over the foreground (moving or fixed non-zero): a pixel
        # outside it (weight 0, e.g. where both min-max normalised crops are 0) would stretch the scale
        foreground = ((moving != 0) | (fixed != 0))[box]
        for ax, (title, cmap, unit) in zip(row[3:], maps):
            limits = {}
            if title == "SNR weight" and foreground.any():
                limits = dict(vmin=float(values[title][box][foreground].min()),
                              vmax=float(values[title][box][foreground].max()))
            shown = ax.imshow(values[title][box], cmap=cmap, **limits)
            bar = fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.03)
            bar.set_label(unit, fontsize=7)
            bar.ax.tick_params(labelsize=6)
            ax.set_title(title, fontsize=8)
            ax.axis("off")
    handles = [plt.Line2D([], [], color=c, label=t) for c, t in
               (("red", "ED myocardium"), ("yellow", "ES myocardium"), ("cyan", "warped ED myocardium"))]
    fig.legend(handles=handles, loc="lower center", ncol=3, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    return fig


def _view_field(field: np.ndarray) -> np.ndarray:
    """A displacement ``[*S, D]`` as its 2D view ``[X, Y, D]`` (3D: the middle slice of the last axis)."""
    return field if field.ndim == 3 else field[..., field.shape[-2] // 2, :]


def uncertainty_maps(pairs, pred: dict, path: str, count: int = 3) -> str | None:
    """``eval/uncertainty.png``: for up to ``count`` pairs, cropped to the heart: the fixed image,
    |fixed − warped|, the predicted σ_I and (phantoms) the true noise σ on one colour scale, the SNR
    weight, the predicted σ_z and (phantoms) |u_pred − u_true|, each on its own scale. None when the
    prediction has neither σ_I nor σ_z."""
    if ("log_var" not in pred and "sigma_z" not in pred) or len(pairs["pair_id"]) == 0:
        return None
    n = len(pairs["pair_id"])
    picks = np.unique(np.linspace(0, n - 1, min(count, n)).round().astype(int))
    plt = _pyplot()
    columns = ["fixed", "|fixed − warped|"]
    if "log_var" in pred:
        columns += ["predicted σ_I"] + (["true σ (phantom)"] if "noise_sigma" in pairs else [])
    if "weight" in pred:
        columns.append("SNR weight")
    if "sigma_z" in pred:
        columns += ["predicted σ_z"] + (["|u_pred − u_true|"] if "displacement" in pairs else [])
    units = {"|fixed − warped|": "intensity", "predicted σ_I": "intensity", "true σ (phantom)": "intensity",
             "SNR weight": "w", "predicted σ_z": "px", "|u_pred − u_true|": "px"}
    fig, axes = plt.subplots(len(picks), len(columns), figsize=(2.3 * len(columns), 2.4 * len(picks)),
                             squeeze=False)
    for row, i in zip(axes, picks):
        fixed = _view(pairs["fixed"][i, ..., 0])
        box = _heart_box(_view(pairs["moving_label"][i]) == MYOCARDIUM, _view(pairs["fixed_label"][i]) == MYOCARDIUM)
        values = {"fixed": fixed, "|fixed − warped|": np.abs(fixed - _view(pred["warped"][i, ..., 0]))}
        if "log_var" in pred:
            values["predicted σ_I"] = np.exp(0.5 * _view(pred["log_var"][i, ..., 0]))
        if "noise_sigma" in pairs:
            values["true σ (phantom)"] = _view(pairs["noise_sigma"][i, ..., 0])
        if "weight" in pred:
            values["SNR weight"] = _view(pred["weight"][i, ..., 0])
        if "sigma_z" in pred:
            values["predicted σ_z"] = _view(pred["sigma_z"][i, ..., 0])
        if "displacement" in pairs:
            values["|u_pred − u_true|"] = np.linalg.norm(
                _view_field(pred["displacement"][i]) - _view_field(pairs["displacement"][i]), axis=-1)
        # predicted and true noise sigma on one scale (same quantity); sigma_z and the endpoint error
        # each on their own (their calibration is drawn in sigma_z_calibration.png)
        shared = {}
        for a, b in (("predicted σ_I", "true σ (phantom)"),):
            if a in columns and b in columns:
                top = max(np.percentile(values[a][box], 99), np.percentile(values[b][box], 99), 1e-6)
                shared[a] = shared[b] = (0.0, float(top))
        for ax, title in zip(row, columns):
            if title == "fixed":
                ax.imshow(values[title][box], cmap="gray", vmin=0, vmax=1)
                ax.set_title(f"{pairs['pair_id'][i]}\nfixed (ES)", fontsize=8)
            else:
                vmin, vmax = shared.get(title, (None, None))
                cmap = "cividis" if title == "SNR weight" else "magma" if title.startswith("|") else "viridis"
                shown = ax.imshow(values[title][box], cmap=cmap, vmin=vmin, vmax=vmax)
                bar = fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.03)
                bar.set_label(units[title], fontsize=7)
                bar.ax.tick_params(labelsize=6)
                ax.set_title(title, fontsize=8)
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def sigma_z_curves(summary: dict, path: str) -> str | None:
    """``eval/sigma_z_calibration.png``: sparsification by σ_z of the squared true endpoint error
    (phantoms) and of the squared residual, each with its oracle, and the σ_z calibration curve
    (observed RMS endpoint error against √ndim · RMS σ_z per bin). None without σ_z."""
    sparse = summary.get("sigma_z_sparsification")
    if not sparse:
        return None
    panels = [(key, title, unit) for key, title, unit in
              (("true_epe", "squared true endpoint error\nranked by σ_z", "mean ‖u_pred − u_true‖² (px²)"),
               ("residual", "squared residual\nranked by σ_z", "mean (I_f − Î_f)²")) if key in sparse]
    calibration = summary.get("sigma_z_calibration")
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels) + bool(calibration), figsize=(3.6 * (len(panels) + 1), 3.2),
                             squeeze=False)
    f = sparse["fraction_removed"]
    for ax, (key, title, unit) in zip(axes[0], panels):
        ax.plot(f, sparse[key]["curve"], label="ranked by σ_z")
        ax.plot(f, sparse[key]["oracle"], "--", label="oracle")
        ax.set_xlabel("fraction of voxels removed")
        ax.set_ylabel(unit, fontsize=8)
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    if calibration:
        ax = axes[0][-1]
        pred, obs = calibration["predicted"], calibration["observed"]
        ax.plot(pred, obs, "o-", label=f"bins (ECE {calibration['ece']:.3f} px)")
        top = max(max(pred), max(obs)) * 1.05
        ax.plot([0, top], [0, top], "k:", label="calibrated")
        ax.set_xlabel("predicted RMS error √ndim·σ_z (px)")
        ax.set_ylabel("observed RMS endpoint error (px)")
        ax.set_title("σ_z calibration (10 equal-count bins)", fontsize=9)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
