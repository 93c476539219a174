"""Metrics to ``workdir/metrics.jsonl`` (always) and TensorBoard event files (tensorboardX).

Only process 0 writes. No TensorFlow anywhere.
"""

from __future__ import annotations

import json
import math
import os
from typing import Mapping

import jax
from hetreg_jax.base import plotting


class MetricWriter:
    """One JSON object per logged step: ``{"step": s, "<name>": value, ...}``."""

    def __init__(self, workdir: str, tensorboard: bool = True, start_step: int = 0):
        """``start_step``: the step a resumed run continues from; TensorBoard events after it that an
        interrupted run had written are purged, so replayed steps do not appear twice."""
        self.enabled = jax.process_index() == 0
        self._jsonl = None
        self._tb = None
        if not self.enabled:
            return
        os.makedirs(workdir, exist_ok=True)
        self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a", encoding="utf-8")
        if tensorboard:
            from tensorboardX import SummaryWriter
            purge = {"purge_step": start_step + 1} if start_step else {}
            self._tb = SummaryWriter(logdir=os.path.join(workdir, "tensorboard"), **purge)

    def write(self, step: int, scalars: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        clean = {k: float(v) for k, v in scalars.items()}
        record = {"step": int(step), **{k: (v if math.isfinite(v) else None) for k, v in clean.items()}}
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        if self._tb is not None:
            for k, v in clean.items():
                self._tb.add_scalar(k, v, int(step))

    def figure(self, step: int, tag: str, fig) -> None:
        """A matplotlib figure as a TensorBoard image (rendered by its own Agg canvas, then cleared:
        no pyplot); nothing without TensorBoard."""
        if self._tb is not None and fig is not None:
            self._tb.add_image(tag, plotting.rgb(fig), int(step), dataformats="HWC")
            plotting.close(fig)

    def close(self) -> None:
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None
