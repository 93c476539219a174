"""Test-split evaluation: warp the ED structures, compare with ES, write the reports.

Conventions (METHOD.md, Evaluation):
- each labelled structure (``data.structures``: which label value is which structure; ACDC's
  convention for ACDC data and phantoms, CAMUS's for CAMUS and the echo phantoms) is warped from ED
  with linear interpolation as a 0/1 mask and thresholded at 0.5 (``eval.label_rule="threshold"``)
  or counted wherever it is > 0 (``"reference"``, the authors' rule, which dilates by up to a pixel);
- the myocardium is the headline (the paper's): its columns are ``dice``, ``hd``, ``hd95``, ``asd``,
  ``assd``; another structure ``s`` has ``dice_s``, ``hd_s``, ...;
- Dice in %, Hausdorff (max) / HD95 / ASD / ASSD in pixels (voxels) of the network grid (the
  paper's), and in mm (``hd_mm``, ``hd_lv_mm``, ...) from the pair's voxel spacing where the data
  has one (on-disk datasets; not the phantoms); ASD is directed from the ES (ground-truth) surface
  to the warped one;
- a structure is scored on a pair only where it is labelled in both frames (``status_s`` =
  ``ok``); where the warped ED structure is empty (``empty_prediction``) Dice is 0 and the surface
  metrics are NaN (``eval.empty_penalty="nan"``, counted in every summary's ``n_nan``) or the crop
  diagonal (``"diagonal"``, in px and mm), so that methods that erase a structure are comparable;
  where it is missing in ED or ES (``absent``) nothing is scored;
- folding % and SDlogJ from the predicted displacement; EPE (voxels) against the phantoms'
  ground-truth displacement, inside the ES myocardium (``epe``) and over the image (``epe_image``):
  absent, not NaN, for data without ground-truth motion;
- AUSE of the predicted log-variance against the squared residual, over the foreground;
- a pair on which no structure is labelled in both frames is excluded and listed with its reason,
  never dropped silently.
"""

from __future__ import annotations

import csv
import json
import math
import os
from typing import Mapping

import jax
import numpy as np

from hetreg_jax.base import sharding
from hetreg_jax.base.errors import InputError
from hetreg_jax.base.workdir import json_safe
from hetreg_jax.core import metrics
from hetreg_jax.data import pipeline
from hetreg_jax.data import structures as structures_lib
from hetreg_jax.evaluate import figures, uncertainty

MYOCARDIUM = 2
# The version of the per-pair reports: a run evaluated by an older version is evaluated again.
EVAL_VERSION = 2
CONTOUR_KEYS = ("dice", "hd", "hd95", "asd", "assd")
SURFACE_KEYS = CONTOUR_KEYS[1:]
REGISTERED_KEYS = ("dice", "hd", "hd95", "asd", "assd", "folding_percent", "sd_log_jacobian", "epe",
                   "epe_image")
UNCERTAINTY_KEYS = ("ause", "sparsification_mse0") + uncertainty.PAIR_KEYS
CONVENTIONS, STRUCTURE_NAMES = structures_lib.CONVENTIONS, structures_lib.NAMES
parse_structures = structures_lib.parse


def structures(config) -> list[tuple[str, int]]:
    """The scored ``(name, label value)`` of ``config.data.structures`` ("auto": the convention of
    the dataset's layout, or of the phantom kind; `hetreg_jax.data.structures`)."""
    kind = config.data.dataset
    if config.data.root is not None:
        kind = pipeline.detect_layout(os.path.abspath(os.path.expanduser(config.data.root)), kind)
    return structures_lib.resolve(config.data.get("structures", "auto"), kind)


def key(metric: str, structure: str, mm: bool = False) -> str:
    """The column of ``metric`` for ``structure``: ``hd`` (myocardium), ``hd_lv``, ``hd_lv_mm``."""
    return metric + ("" if structure == "myo" else f"_{structure}") + ("_mm" if mm else "")


def structure_of(column: str) -> str | None:
    """The structure a per-pair contour column scores (``hd`` -> ``myo``, ``undeformed_asd_lv_mm`` ->
    ``lv``), None for other columns."""
    base = column.removeprefix("undeformed_").removesuffix("_mm")
    for metric in CONTOUR_KEYS:
        if base == metric:
            return "myo"
        if base.startswith(metric + "_"):
            return base[len(metric) + 1:]
    return None


def predict_pairs(trainer, state, pairs: Mapping, batch_size: int, labels=(("myo", MYOCARDIUM),)) -> dict[str, np.ndarray]:
    """Run the jitted predictor over every pair, in fixed-size batches (the last one padded).

    ``labels`` (``[(name, value)]``): the ED structures warped into ``warped_labels`` ``[N, *S, K]``
    (channel k = ``labels[k]``); ``warped_myo`` ``[N, *S, 1]`` is the myocardium's channel."""
    n = pipeline.num_pairs(pairs)
    n_dev = trainer.mesh.devices.size
    batch_size = max(n_dev, int(math.ceil(batch_size / n_dev)) * n_dev)
    rows = sharding.process_slice(batch_size)
    values = np.array([v for _, v in labels], np.uint8)
    outputs: dict[str, list] = {}
    for start in range(0, n, batch_size):
        index = np.arange(start, start + batch_size) % n  # pad the tail with repeats
        local = {
            "moving": pairs["moving"][index][rows],
            "fixed": pairs["fixed"][index][rows],
            "moving_labels": (pairs["moving_label"][index][rows][..., None] == values).astype(np.float32),
        }
        out = trainer.predict(state, sharding.global_batch(local, trainer.mesh))
        keep = min(batch_size, n - start)
        for k, v in out.items():
            outputs.setdefault(k, []).append(np.asarray(jax.device_get(v))[:keep])
    out = {k: np.concatenate(v) for k, v in outputs.items()}
    names = [name for name, _ in labels]
    if "myo" in names:
        out["warped_myo"] = out["warped_labels"][..., names.index("myo"), None]
    return out


def _contour_metrics(gt: np.ndarray, pred: np.ndarray, spacing=None, penalty: str = "nan") -> dict[str, float]:
    """Dice (%) and the surface metrics of one structure; in px, and in mm when ``spacing`` is given
    (keys ``hd_mm`` ...). An empty ``pred`` gets the crop diagonal under ``penalty="diagonal"``."""
    out = {"dice": 100.0 * metrics.dice(pred, gt)}
    units = [("", None)] + ([("_mm", spacing)] if spacing is not None else [])
    for suffix, sp in units:
        if not pred.any() and penalty == "diagonal":
            size = np.asarray(gt.shape, np.float64) * (1.0 if sp is None else np.asarray(sp, np.float64))
            out.update({m + suffix: float(np.sqrt(np.sum(size ** 2))) for m in SURFACE_KEYS})
            continue
        out.update({
            "hd" + suffix: metrics.hausdorff(gt, pred, spacing=sp),
            "hd95" + suffix: metrics.hausdorff(gt, pred, percentile=95, spacing=sp),
            "asd" + suffix: metrics.average_surface_distance(gt, pred, spacing=sp),
            "assd" + suffix: metrics.average_surface_distance(gt, pred, symmetric=True, spacing=sp),
        })
    return out


def _deformation_metrics(disp: np.ndarray, true_disp, es_myo: np.ndarray) -> dict[str, float]:
    out = {"folding_percent": metrics.folding_percent(disp), "sd_log_jacobian": metrics.sd_log_jacobian(disp)}
    if true_disp is not None:
        out["epe"] = metrics.endpoint_error(disp, true_disp, mask=es_myo)
        out["epe_image"] = metrics.endpoint_error(disp, true_disp)
    return out


def _absent_reason(name: str, ed: np.ndarray, es: np.ndarray) -> str | None:
    label = STRUCTURE_NAMES.get(name, name)
    return f"empty ED {label}" if not ed.any() else f"empty ES {label}" if not es.any() else None


def pair_rows(pairs: Mapping, pred: Mapping, label_rule: str, sparsification_steps: int,
              labels=(("myo", MYOCARDIUM),), empty_penalty: str = "nan"):
    """Per-pair metric rows, the excluded pairs with reasons, and the per-pair sparsification curves
    (``(curve, oracle)`` for methods with a variance net). ``labels``: the scored ``(name, value)``
    structures, in the channel order of ``pred["warped_labels"]`` (or only the myocardium, read
    from ``pred["warped_myo"]``)."""
    if label_rule not in ("threshold", "reference"):
        raise InputError(f"config.eval.label_rule={label_rule!r}; known: 'threshold', 'reference'")
    if empty_penalty not in ("nan", "diagonal"):
        raise InputError(f"config.eval.empty_penalty={empty_penalty!r}; known: 'nan', 'diagonal'")
    labels = list(labels)
    warped_labels = pred.get("warped_labels")
    if warped_labels is None:
        if [n for n, _ in labels] != ["myo"]:
            raise ValueError("predictions without 'warped_labels' can only score the myocardium")
        warped_labels = pred["warped_myo"]
    rows, excluded, curves = [], [], []
    true_disps = pairs.get("displacement")
    spacings = pairs.get("spacing")
    for i in range(pipeline.num_pairs(pairs)):
        pair_id = pairs["pair_id"][i]
        spacing = None if spacings is None else np.asarray(spacings[i], np.float64)
        row = {"pair_id": pair_id, "subject": pairs["subject"][i]}
        reasons = []
        for k, (name, value) in enumerate(labels):
            ed = pairs["moving_label"][i] == value
            es = pairs["fixed_label"][i] == value
            reason = _absent_reason(name, ed, es)
            if reason:
                reasons.append(reason)
                row[f"status_{name}"] = "absent"
                continue
            soft = warped_labels[i, ..., k]
            warped = soft > 0.5 if label_rule == "threshold" else soft > 0
            row[f"status_{name}"] = "ok" if warped.any() else "empty_prediction"
            for prefix, moved in (("", warped), ("undeformed_", ed)):
                for metric, v in _contour_metrics(es, moved, spacing, empty_penalty).items():
                    base, mm = metric.removesuffix("_mm"), metric.endswith("_mm")
                    row[prefix + key(base, name, mm)] = v
        if len(reasons) == len(labels):
            excluded.append({"pair_id": pair_id, "reason": ", ".join(reasons)})
            continue
        es_myo = pairs["fixed_label"][i] == MYOCARDIUM
        true = None if true_disps is None else true_disps[i]
        row.update(_deformation_metrics(pred["displacement"][i], true, es_myo))
        undeformed = _deformation_metrics(np.zeros_like(pred["displacement"][i]), true, es_myo)
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


def columns(rows: list[dict]) -> list[str]:
    """Every column of ``rows`` in first-seen order (rows differ where a structure is absent)."""
    return list(dict.fromkeys(k for r in rows for k in r))


def structure_summary(rows: list[dict], name: str, value: int) -> dict:
    """Summaries of one structure's columns over the pairs where it is labelled in both frames:
    ``n_pairs``, ``n_empty_prediction``, ``n_absent``, and per metric (px; mm where measured)
    ``dice``, ``hd``, ``hd_mm``, ... each ``dict(mean, std, n, n_nan)`` (NaN: an empty prediction),
    plus the same under ``undeformed``."""
    scored = [r for r in rows if r.get(f"status_{name}") in ("ok", "empty_prediction")]
    out: dict = {"label": value, "name": STRUCTURE_NAMES.get(name, name), "n_pairs": len(scored),
                 "n_empty_prediction": sum(r[f"status_{name}"] == "empty_prediction" for r in scored),
                 "n_absent": sum(r.get(f"status_{name}") == "absent" for r in rows), "undeformed": {}}
    for metric in CONTOUR_KEYS:
        for mm in (False, True):
            column = key(metric, name, mm)
            if scored and column in scored[0]:
                short = metric + ("_mm" if mm else "")
                out[short] = metrics.summarize([r[column] for r in scored])
                out["undeformed"][short] = metrics.summarize([r["undeformed_" + column] for r in scored])
    return out


UNITS = {"dice": "%", "hd": "px", "hd95": "px", "asd": "px (ES surface -> warped)", "assd": "px",
         "hd_mm": "mm", "hd95_mm": "mm", "asd_mm": "mm (ES surface -> warped)", "assd_mm": "mm",
         "folding_percent": "% voxels with det J <= 0",
         "sd_log_jacobian": "std of log det J (2-voxel border cropped)",
         "epe": "px (inside the ES myocardium)", "epe_image": "px (whole image)",
         "ause": "squared normalised intensity (area between sparsification and oracle)",
         "sparsification_mse0": "squared normalised intensity (foreground MSE)"}


def summarize(rows: list[dict], excluded: list[dict], n_pairs: int, labels=(("myo", MYOCARDIUM),)) -> dict:
    """Mean/std/n/n_nan per metric (NaN-aware), the same keys under ``undeformed``, per-structure
    summaries under ``structures``, counts and exclusions. The top-level contour metrics are the
    myocardium's, over the pairs where it is labelled in both frames."""
    def column(key):
        return [r.get(key, math.nan) for r in rows]

    summary: dict = {"eval_version": EVAL_VERSION, "n_pairs": n_pairs, "n_evaluated": len(rows),
                     "n_excluded": len(excluded), "excluded": excluded, "undeformed": {},
                     "structures": {name: structure_summary(rows, name, value) for name, value in labels}}
    myo = summary["structures"].get("myo", {})
    for k in CONTOUR_KEYS + tuple(f"{m}_mm" for m in SURFACE_KEYS):
        if k in myo:
            summary[k], summary["undeformed"][k] = myo[k], myo["undeformed"][k]
    have = columns(rows)
    for k in REGISTERED_KEYS[len(CONTOUR_KEYS):]:
        if k in have:
            summary[k] = metrics.summarize(column(k))
            summary["undeformed"][k] = metrics.summarize(column(f"undeformed_{k}"))
    for k in UNCERTAINTY_KEYS:
        if k in have:
            summary[k] = metrics.summarize(column(k))
    summary["units"] = {**UNITS, **uncertainty.UNITS}
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
    fields = columns(rows) or ["pair_id"]
    with open(path + ".tmp", "w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, restval="")
        writer.writeheader()
        writer.writerows(rows)
    os.replace(path + ".tmp", path)


def evaluate(trainer, state, pairs: Mapping, config, outdir: str | None = None, name: str = "test") -> dict:
    """Predict, score every pair, and (when ``outdir`` is given) write the two reports."""
    pred = predict_pairs(trainer, state, pairs, config.eval.batch_size, structures(config))
    return score(pairs, pred, config, outdir, name, extra={"checkpoint_step": int(jax.device_get(state.step))})


def score(pairs: Mapping, pred: Mapping, config, outdir: str | None = None, name: str = "test",
          extra: Mapping | None = None) -> dict:
    """Score precomputed predictions (``displacement``, ``warped``, ``warped_labels`` ``[N, *S, K]``
    with the structures of `structures` in order, and ``log_var`` for methods with a variance
    net) of every pair, e.g. a network's or elastix's; ``extra`` entries are added to the summary.
    Writes the two reports and the example figure when ``outdir`` is given."""
    steps = config.eval.sparsification_steps
    labels = structures(config)
    rows, excluded, curves = pair_rows(pairs, pred, config.eval.label_rule, steps, labels,
                                       config.eval.empty_penalty)
    summary = summarize(rows, excluded, pipeline.num_pairs(pairs), labels)
    summary["label_rule"] = config.eval.label_rule
    summary["empty_penalty"] = config.eval.empty_penalty
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
            figures.examples(pairs, pred, os.path.join(outdir, f"{name}_examples.png"))
            figures.uncertainty_maps(pairs, pred, os.path.join(outdir, "uncertainty.png"))
            figures.sigma_z_curves(summary, os.path.join(outdir, "sigma_z_calibration.png"))
    return summary


def validation_dice(trainer, state, pairs: Mapping, config, on_prediction=None) -> tuple[float, str]:
    """``(mean Dice (%), structure name)`` over the first ``config.eval.val_pairs`` validation pairs
    (all if 0), of the headline structure (the myocardium) where it is labelled in both frames of
    some pair, else of the first structure of ``data.structures`` that is (e.g. the LV cavity of
    data whose ES frames have no myocardium); NaN and the headline's name when none is.
    ``on_prediction(subset, pred)`` sees the predictions (e.g. to draw them)."""
    n = pipeline.num_pairs(pairs)
    limit = config.eval.val_pairs or n
    subset = pipeline.take(pairs, np.arange(min(n, limit)))
    labels = structures(config)
    pred = predict_pairs(trainer, state, subset, config.eval.batch_size, labels)
    if on_prediction is not None:
        on_prediction(subset, pred)
    rows, _, _ = pair_rows(subset, pred, config.eval.label_rule, config.eval.sparsification_steps, labels)
    for name, _ in labels:
        values = [r[key("dice", name)] for r in rows if key("dice", name) in r]
        if np.isfinite(values).any():
            return float(np.nanmean(values)), STRUCTURE_NAMES.get(name, name)
    return math.nan, STRUCTURE_NAMES.get(labels[0][0], labels[0][0])
