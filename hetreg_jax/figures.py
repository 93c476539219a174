"""Figures a run writes: training curves and example registrations (matplotlib, Agg backend).

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

MYOCARDIUM = 2
EXAMPLE_PAIRS = 4
CROP_MARGIN = 6  # voxels around the union of the myocardium masks


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


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
    """Save :func:`example_figure` to ``path``; None when there is no pair."""
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
        for ax, (title, cmap, unit) in zip(row[3:], maps):
            shown = ax.imshow(values[title][box], cmap=cmap)
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
