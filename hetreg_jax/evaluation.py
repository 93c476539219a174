"""Test-split evaluation: warp the ED myocardium, compare with ES, write the reports.

Conventions (METHOD.md, Evaluation):
- the ED myocardium (label 2) is warped with linear interpolation and thresholded at 0.5
  (``eval.label_rule="threshold"``) or counted wherever it is > 0 (``"reference"``, the authors'
  rule, which dilates by up to a pixel);
- Dice in %, Hausdorff (max) / HD95 / ASD / ASSD in pixels (voxels) of the network grid;
  ASD is directed from the ES (ground-truth) surface to the warped one;
- folding % and SDlogJ from the predicted displacement; EPE (voxels) against the phantoms'
  ground-truth displacement, inside the ES myocardium (``epe``) and over the image (``epe_image``);
- AUSE of the predicted log-variance against the squared residual, over the foreground;
- a pair whose ED or ES myocardium is empty is excluded and listed with its reason, never dropped
  silently.
"""

from __future__ import annotations

import csv
import json
import math
import os
from typing import Mapping

import jax
import numpy as np

from hetreg_jax import metrics, sharding, uncertainty
from hetreg_jax.workdir import json_safe
from hetreg_jax.data import pipeline

MYOCARDIUM = 2
REGISTERED_KEYS = ("dice", "hd", "hd95", "asd", "assd", "folding_percent", "sd_log_jacobian", "epe",
                   "epe_image")
UNCERTAINTY_KEYS = ("ause", "sparsification_mse0") + uncertainty.PAIR_KEYS


def predict_pairs(trainer, state, pairs: Mapping, batch_size: int) -> dict[str, np.ndarray]:
    """Run the jitted predictor over every pair, in fixed-size batches (the last one padded)."""
    n = pipeline.num_pairs(pairs)
    n_dev = trainer.mesh.devices.size
    batch_size = max(n_dev, int(math.ceil(batch_size / n_dev)) * n_dev)
    rows = sharding.process_slice(batch_size)
    outputs: dict[str, list] = {}
    for start in range(0, n, batch_size):
        index = np.arange(start, start + batch_size) % n  # pad the tail with repeats
        local = {
            "moving": pairs["moving"][index][rows],
            "fixed": pairs["fixed"][index][rows],
            "moving_myo": (pairs["moving_label"][index][rows] == MYOCARDIUM)[..., None].astype(np.float32),
        }
        out = trainer.predict(state, sharding.global_batch(local, trainer.mesh))
        keep = min(batch_size, n - start)
        for k, v in out.items():
            outputs.setdefault(k, []).append(np.asarray(jax.device_get(v))[:keep])
    return {k: np.concatenate(v) for k, v in outputs.items()}


def _contour_metrics(gt: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    return {
        "dice": 100.0 * metrics.dice(pred, gt),
        "hd": metrics.hausdorff(gt, pred),
        "hd95": metrics.hausdorff(gt, pred, percentile=95),
        "asd": metrics.average_surface_distance(gt, pred),
        "assd": metrics.average_surface_distance(gt, pred, symmetric=True),
    }


def _deformation_metrics(disp: np.ndarray, true_disp, es_myo: np.ndarray) -> dict[str, float]:
    out = {"folding_percent": metrics.folding_percent(disp), "sd_log_jacobian": metrics.sd_log_jacobian(disp)}
    if true_disp is not None:
        out["epe"] = metrics.endpoint_error(disp, true_disp, mask=es_myo)
        out["epe_image"] = metrics.endpoint_error(disp, true_disp)
    return out


def pair_rows(pairs: Mapping, pred: Mapping, label_rule: str, sparsification_steps: int):
    """Per-pair metric rows, the excluded pairs with reasons, and the per-pair sparsification curves
    (``(curve, oracle)`` for methods with a variance net)."""
    if label_rule not in ("threshold", "reference"):
        raise ValueError(f"config.eval.label_rule={label_rule!r}; known: 'threshold', 'reference'")
    rows, excluded, curves = [], [], []
    true_disps = pairs.get("displacement")
    for i in range(pipeline.num_pairs(pairs)):
        pair_id = pairs["pair_id"][i]
        ed = pairs["moving_label"][i] == MYOCARDIUM
        es = pairs["fixed_label"][i] == MYOCARDIUM
        reason = "empty ED myocardium" if not ed.any() else "empty ES myocardium" if not es.any() else None
        if reason:
            excluded.append({"pair_id": pair_id, "reason": reason})
            continue
        soft = pred["warped_myo"][i, ..., 0]
        warped = soft > 0.5 if label_rule == "threshold" else soft > 0
        true = None if true_disps is None else true_disps[i]
        row = {"pair_id": pair_id, "subject": pairs["subject"][i]}
        row.update(_contour_metrics(es, warped))
        row.update(_deformation_metrics(pred["displacement"][i], true, es))
        undeformed = _contour_metrics(es, ed)
        undeformed.update(_deformation_metrics(np.zeros_like(pred["displacement"][i]), true, es))
        row.update({f"undeformed_{k}": v for k, v in undeformed.items()})
        if "log_var" in pred:
            fixed, moving = pairs["fixed"][i, ..., 0], pairs["moving"][i, ..., 0]
            fg = (fixed != 0) | (moving != 0)
            sq = (fixed - pred["warped"][i, ..., 0]) ** 2
            row["sparsification_mse0"] = row["ause"] = math.nan
            if fg.any():
                _, curve, oracle, row["ause"] = metrics.sparsification_curves(
                    sq, pred["log_var"][i, ..., 0], steps=sparsification_steps, mask=fg)
                row["sparsification_mse0"] = float(curve[0])
                curves.append((curve, oracle))
        row.update(uncertainty.pair_metrics(pairs, pred, i, sparsification_steps))  # sigma_I / sigma_z vs truth
        rows.append(row)
    return rows, excluded, curves


def summarize(rows: list[dict], excluded: list[dict], n_pairs: int) -> dict:
    """Mean/std/n per metric (NaN-aware), the same keys under ``undeformed``, counts and exclusions."""
    def column(key):
        return [r.get(key, math.nan) for r in rows]

    summary: dict = {"n_pairs": n_pairs, "n_evaluated": len(rows), "n_excluded": len(excluded),
                     "excluded": excluded}
    keys = [k for k in REGISTERED_KEYS if rows and k in rows[0]]
    for k in keys:
        summary[k] = metrics.summarize(column(k))
    summary["undeformed"] = {k: metrics.summarize(column(f"undeformed_{k}")) for k in keys}
    for k in UNCERTAINTY_KEYS:
        if rows and k in rows[0]:
            summary[k] = metrics.summarize(column(k))
    summary["units"] = {"dice": "%", "hd": "px", "hd95": "px", "asd": "px (ES surface -> warped)",
                        "assd": "px", "folding_percent": "% voxels with det J <= 0",
                        "sd_log_jacobian": "std of log det J (2-voxel border cropped)",
                        "epe": "px (inside the ES myocardium)", "epe_image": "px (whole image)",
                        "ause": "squared normalised intensity (area between sparsification and oracle)",
                        "sparsification_mse0": "squared normalised intensity (foreground MSE)",
                        **uncertainty.UNITS}
    return summary


def write_reports(outdir: str, rows: list[dict], summary: dict, name: str = "test") -> None:
    """``<name>_metrics.json`` and ``<name>_per_pair.csv`` (written atomically, process 0 only)."""
    if jax.process_index() != 0:
        return
    os.makedirs(outdir, exist_ok=True)
    path = os.path.join(outdir, f"{name}_metrics.json")
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        json.dump(json_safe(summary), f, indent=2, allow_nan=False)
    os.replace(path + ".tmp", path)
    path = os.path.join(outdir, f"{name}_per_pair.csv")
    fields = list(rows[0]) if rows else ["pair_id"]
    with open(path + ".tmp", "w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(path + ".tmp", path)


def evaluate(trainer, state, pairs: Mapping, config, outdir: str | None = None, name: str = "test") -> dict:
    """Predict, score every pair, and (when ``outdir`` is given) write the two reports."""
    pred = predict_pairs(trainer, state, pairs, config.eval.batch_size)
    return score(pairs, pred, config, outdir, name, extra={"checkpoint_step": int(jax.device_get(state.step))})


def score(pairs: Mapping, pred: Mapping, config, outdir: str | None = None, name: str = "test",
          extra: Mapping | None = None) -> dict:
    """Score precomputed predictions (``displacement``, ``warped``, ``warped_myo`` ``[N, *S, C]``, and
    ``log_var`` for methods with a variance net) of every pair, e.g. a network's or elastix's;
    ``extra`` entries are added to the summary. Writes the two reports and the example figure when
    ``outdir`` is given."""
    steps = config.eval.sparsification_steps
    rows, excluded, curves = pair_rows(pairs, pred, config.eval.label_rule, steps)
    summary = summarize(rows, excluded, pipeline.num_pairs(pairs))
    summary["label_rule"] = config.eval.label_rule
    summary.update(extra or {})
    if curves:  # the paper's Fig. 3: mean raw-MSE sparsification curve and oracle over the pairs
        summary["sparsification"] = {"fraction_removed": list(np.arange(steps) / steps),
                                     "curve": list(np.mean([c for c, _ in curves], axis=0)),
                                     "oracle": list(np.mean([o for _, o in curves], axis=0)),
                                     "n_pairs": len(curves)}
    summary.update(uncertainty.split_summary(pairs, pred, [r["pair_id"] for r in rows], steps))
    if outdir is not None:
        write_reports(outdir, rows, summary, name)
        if jax.process_index() == 0:
            from hetreg_jax import figures
            figures.examples(pairs, pred, os.path.join(outdir, f"{name}_examples.png"))
            figures.uncertainty_maps(pairs, pred, os.path.join(outdir, "uncertainty.png"))
            figures.sigma_z_curves(summary, os.path.join(outdir, "sigma_z_calibration.png"))
    return summary


def validation_dice(trainer, state, pairs: Mapping, config, on_prediction=None) -> float:
    """Mean Dice (%) over the first ``config.eval.val_pairs`` validation pairs (all if 0);
    ``on_prediction(subset, pred)`` sees the predictions (e.g. to draw them)."""
    n = pipeline.num_pairs(pairs)
    limit = config.eval.val_pairs or n
    subset = pipeline.take(pairs, np.arange(min(n, limit)))
    pred = predict_pairs(trainer, state, subset, config.eval.batch_size)
    if on_prediction is not None:
        on_prediction(subset, pred)
    rows, _, _ = pair_rows(subset, pred, config.eval.label_rule, config.eval.sparsification_steps)
    return float(np.nanmean([r["dice"] for r in rows])) if rows else math.nan
