"""Terminal output of a run (process 0 only): progress with steps/s, pairs/s and ETA; the test table."""

from __future__ import annotations

import os
import time

import jax
import numpy as np


class Progress:
    """Terminal progress: step, phase, losses, steps/s, pairs/s and ETA."""

    def __init__(self, total: int, start: int, batch_size: int):
        self.total, self.start, self.batch_size = total, start, batch_size
        self.t0, self.last_t, self.last_step = time.time(), time.time(), start

    def line(self, step: int, phase: str, measures: dict) -> str:
        now = time.time()
        rate = (step - self.last_step) / max(now - self.last_t, 1e-9)
        self.last_t, self.last_step = now, step
        eta = (self.total - step) / rate if rate > 0 else float("inf")
        keys = [k for k in ("motion_loss", "similarity", "smoothness", "variance_loss") if k in measures]
        losses_txt = " ".join(f"{k}={measures[k]:.5f}" for k in keys)
        return (f"step {step}/{self.total} [{phase}] {losses_txt} | {rate:.2f} steps/s "
                f"{rate * self.batch_size:.1f} pairs/s | ETA {_fmt_seconds(eta)}")


def _fmt_seconds(s: float) -> str:
    if not np.isfinite(s):
        return "?"
    s = int(s)
    return f"{s // 3600:d}:{s % 3600 // 60:02d}:{s % 60:02d}"


def say(*parts) -> None:
    """Terminal output of the run, from process 0 only (one copy in a multi-host run)."""
    if jax.process_index() == 0:
        print(*parts, flush=True)


# (key, label, unit) of the test table, in the order printed.
SUMMARY_ROWS = (("folding_percent", "folding", "%"), ("epe", "EPE (myocardium)", "px"))
CONTOUR_ROWS = (("dice", "Dice", "%"), ("hd", "Hausdorff", "px"), ("hd_mm", "Hausdorff", "mm"),
                ("hd95", "HD95", "px"), ("hd95_mm", "HD95", "mm"), ("asd", "ASD", "px"), ("asd_mm", "ASD", "mm"),
                ("assd", "ASSD", "px"), ("assd_mm", "ASSD", "mm"))


def print_summary(summary: dict, outdir: str | None = None) -> None:
    """The test summary as a table with units: registered vs undeformed mean ± std per structure
    (the myocardium first; px and, where the data has a spacing, mm; ``[k NaN]`` marks k pairs
    whose warped structure was empty), the AUSE of the variance net, and where the reports are."""

    def fmt(s, digits=2):
        return f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f}" if s and s["mean"] == s["mean"] else "n/a"
    step = summary.get("checkpoint_step")
    say(f"test pairs: {summary['n_evaluated']} evaluated, {summary['n_excluded']} excluded"
        + (f" (checkpoint of step {step})" if step is not None else ""))
    say(f"  {'metric':26s} {'registered':>18s} {'undeformed':>18s}")
    structures = summary.get("structures") or {"myo": {"name": "myocardium", **summary}}
    for info in structures.values():
        if not info.get("n_pairs", 1):
            continue
        name = info.get("name", "")
        for key, label, unit in CONTOUR_ROWS:
            if key in info:
                nan = info[key].get("n_nan", 0)
                say(f"  {f'{name} {label} ({unit})':26s} {fmt(info[key]):>18s} {fmt(info['undeformed'][key]):>18s}"
                    + (f"   [{nan} NaN: empty warped {name}]" if nan else ""))
    for key, label, unit in SUMMARY_ROWS:
        if key in summary:
            say(f"  {f'{label} ({unit})':26s} {fmt(summary[key]):>18s} {fmt(summary['undeformed'][key]):>18s}")
    if "ause" in summary:
        say(f"  {'AUSE of log σ²':26s} {fmt(summary['ause'], 4):>18s}   (sparsification vs the squared residual)")
    for key, label, note in (("sigma_i_spearman", "σ_I Spearman", "predicted vs true log σ² (phantoms)"),
                             ("sigma_i_median_ratio", "σ_I median ratio", "σ_pred / σ_true (phantoms)"),
                             ("sigma_z_mean", "mean σ_z (px)", "predicted displacement std"),
                             ("sigma_z_ause", "σ_z AUSE (px²)", "true squared EPE ranked by σ_z"),
                             ("sigma_z_ause_uninformed", "  uninformed (px²)", "the same, flat ranking"),
                             ("sigma_z_ece", "σ_z ECE (px)", "calibration error, 10 bins")):
        if key in summary:
            say(f"  {label:26s} {fmt(summary[key], 3):>18s}   ({note})")
    if outdir is not None:
        names = [n for n in ("test_metrics.json", "test_per_pair.csv", "test_examples.png", "curves.png",
                             "uncertainty.png", "sigma_z_calibration.png")
                 if os.path.exists(os.path.join(outdir, n))]
        say(f"reports in {outdir}: {', '.join(names)}")
