"""``--mode=inspect``: load a dataset as training would, summarise it, and show a few pairs.

Unlike training, a bad subject does not stop the run: it is listed (with the one-line reason) in
``skipped`` and the others are loaded. Writes ``<workdir>/data_summary.json``::

    {"layout", "root", "image_shape",
     "splits": {"train"|"val"|"test": {"patients", "pairs"}},
     "intensity_range": [min, max] of the preprocessed images (normalised: [0, 1]),
     "raw_intensity_range": [min, max] of the files' intensities (on-disk data only),
     "label_values": label values found in the preprocessed label maps,
     "spacing_mm": {"min", "max"} per axis of the network grid (on-disk data only),
     "empty_myocardium_pairs": pairs whose ED or ES myocardium is empty (not scored for the
       myocardium; scored on the other structures labelled in both frames, else excluded),
     "skipped": [{"subject", "reason"}]}

prints a short table and saves ``<workdir>/inspect.png``: up to ``MONTAGE_PAIRS`` pairs (ED, ES,
|ES - ED|; 3D: the middle slice of the last axis) with the ED (red) and ES (yellow) myocardium
contours.
"""

from __future__ import annotations

import json
import os

import numpy as np

from hetreg_jax.base import plotting as plt
from hetreg_jax.base import workdir as workdir_lib
from hetreg_jax.data import pipeline

MONTAGE_PAIRS = 4


def _concat(splits: dict, key: str) -> np.ndarray:
    return np.concatenate([splits[name][key] for name in pipeline.SPLITS])


def summarize(splits: dict, info: dict, image_size) -> dict:
    """The ``data_summary.json`` content (see the module docstring)."""
    summary = {"layout": info["layout"], "root": info["root"], "image_shape": [int(n) for n in image_size],
               "splits": {name: {"patients": len(set(s["subject"])), "pairs": pipeline.num_pairs(s)}
                          for name, s in splits.items()}}
    n = sum(v["pairs"] for v in summary["splits"].values())
    if n:
        images = np.concatenate([_concat(splits, "moving"), _concat(splits, "fixed")])
        labels = np.concatenate([_concat(splits, "moving_label"), _concat(splits, "fixed_label")])
        summary["intensity_range"] = [float(images.min()), float(images.max())]
        summary["label_values"] = [int(v) for v in np.unique(labels)]
        flat = lambda key: _concat(splits, key).reshape(n, -1)  # noqa: E731
        empty = ~(flat("moving_label") == pipeline.MYOCARDIUM).any(1) | \
            ~(flat("fixed_label") == pipeline.MYOCARDIUM).any(1)
        summary["empty_myocardium_pairs"] = int(empty.sum())
        if "raw_range" in splits["train"]:
            raw = _concat(splits, "raw_range")
            spacing = _concat(splits, "spacing")
            summary["raw_intensity_range"] = [float(raw[:, 0].min()), float(raw[:, 1].max())]
            summary["spacing_mm"] = {"min": spacing.min(0).tolist(), "max": spacing.max(0).tolist()}
    summary["skipped"] = info["skipped"]
    return summary


def table(summary: dict) -> str:
    """The terminal report."""
    shape = "x".join(map(str, summary["image_shape"]))
    lines = [f"dataset: {summary['layout']} ({summary['root'] or 'built-in phantoms'}), image shape {shape}",
             f"{'split':8s}{'patients':>10s}{'pairs':>8s}"]
    for name, s in summary["splits"].items():
        lines.append(f"{name:8s}{s['patients']:>10d}{s['pairs']:>8d}")
    total = summary["splits"].values()
    lines.append(f"{'total':8s}{sum(s['patients'] for s in total):>10d}{sum(s['pairs'] for s in total):>8d}")
    if "label_values" in summary:
        raw = summary.get("raw_intensity_range")
        lines.append(f"intensities {summary['intensity_range']} after normalisation"
                     + (f", {raw} in the files" if raw else "") + f"; labels {summary['label_values']}; "
                     f"{summary['empty_myocardium_pairs']} pairs with an empty ED or ES myocardium (not scored for the myocardium)")
    lines.append(f"skipped subjects: {len(summary['skipped'])}")
    lines += [f"  {s['subject']}: {s['reason']}" for s in summary["skipped"]]
    return "\n".join(lines)


def _view(array: np.ndarray) -> np.ndarray:
    """A 2D view: the array itself, or the middle slice of the last axis of a 3D one."""
    return array if array.ndim == 2 else array[..., array.shape[-1] // 2]


def montage(splits: dict, path: str, count: int = MONTAGE_PAIRS) -> bool:
    """Save up to ``count`` pairs, spread over all splits; False when there is no pair."""
    ids = sum((splits[name]["pair_id"] for name in pipeline.SPLITS), [])
    if not ids:
        return False

    picks = np.unique(np.linspace(0, len(ids) - 1, min(count, len(ids))).round().astype(int))
    arrays = {k: _concat(splits, k) for k in ("moving", "fixed", "moving_label", "fixed_label")}
    fig, axes = plt.subplots(len(picks), 3, figsize=(7.5, 2.6 * len(picks)), squeeze=False)
    for row, i in zip(axes, picks):
        ed, es = _view(arrays["moving"][i, ..., 0]), _view(arrays["fixed"][i, ..., 0])
        panels = ((ed, f"{ids[i]} ED"), (es, "ES"), (np.abs(es - ed), "|ES - ED|"))
        for ax, (image, title) in zip(row, panels):
            ax.imshow(image, cmap="gray", vmin=0, vmax=1)
            for key, colour in (("moving_label", "red"), ("fixed_label", "yellow")):
                myo = _view(arrays[key][i]) == pipeline.MYOCARDIUM
                if myo.any() and not myo.all():
                    ax.contour(myo.astype(float), levels=[0.5], colors=colour, linewidths=0.8)
            ax.set_title(title, fontsize=8)
            ax.axis("off")
    handles = [plt.Line2D([], [], color=c, label=t) for c, t in (("red", "ED myocardium"), ("yellow", "ES myocardium"))]
    fig.legend(handles=handles, loc="lower center", ncol=2, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def run(config, workdir: str) -> dict:
    """Load ``config.data`` leniently, write the summary and the montage, print the table.

    Holds the workdir lock while it works: a workdir that a run is using is refused ("in use")."""
    workdir_lib.check_writable(workdir)
    with workdir_lib.WorkdirLock(workdir) as lock:
        splits, info = pipeline.load_dataset(config, strict=False)
        summary = summarize(splits, info, config.data.image_size)
        lock.claim()
        path = os.path.join(workdir, "data_summary.json")
        workdir_lib.atomic_write_text(path, json.dumps(summary, indent=2))
        print(table(summary))
        image = os.path.join(workdir, "inspect.png")
        print(f"wrote {path}" + (f" and {image}" if montage(splits, image) else " (no pair to show)"))
    return summary
