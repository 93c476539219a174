"""Ctrl-C or SIGTERM during training: finish the step, save a checkpoint, stop with a one-line message.

The first SIGINT (Ctrl-C) or SIGTERM (what SLURM, Kubernetes and a Cloud TPU VM's shutdown send
before they kill a preempted job) only sets a flag (`StopRequest`); the training loop reads
it at each chunk boundary (`StopRequest.agreed`), writes a checkpoint of that step and raises
`Interrupted`, which ``main.py`` prints as ``stopped at step N; rerun the same command to
resume`` (exit code 130, for either signal). The handlers are removed as soon as one fires, so a
second Ctrl-C raises ``KeyboardInterrupt`` at once and a second SIGTERM terminates the process (a
checkpoint being written then is left half-written, and half-written checkpoints are never picked
on resume).

In a multi-process run (``jax.process_count() > 1``) the processes agree on the stop: at every
chunk boundary each one contributes its flag to one small all-gather
(``jax.experimental.multihost_utils.process_allgather``) and all of them stop, and save, at the
first boundary where any process was signalled. A single process makes no collective.
"""

from __future__ import annotations

import signal
import sys
import threading

import numpy as np

EXIT_CODE = 130  # the shell's code for a process stopped by SIGINT; also after SIGTERM (documented)
SIGNALS = {signal.SIGINT: "Ctrl-C", signal.SIGTERM: "SIGTERM"}


class Interrupted(Exception):
    """The run stopped on request (Ctrl-C, SIGTERM) after saving what it could; rerunning resumes."""

    def __init__(self, step: int, saved: int | None, directory: str):
        where = (f"checkpoint of step {saved} in {directory}" if saved
                 else "no checkpoint was written yet")
        super().__init__(f"stopped at step {step} ({where}); rerun the same command to resume")
        self.step, self.saved = step, saved


class StopRequest:
    """A context manager that turns the first SIGINT or SIGTERM into ``requested = True`` (main
    thread only)."""

    def __init__(self):
        self.requested = False
        self._previous: dict = {}

    def _handle(self, signum, frame):
        self.requested = True
        self._restore()  # a second Ctrl-C (or SIGTERM) stops at once
        again = "Ctrl-C again to stop" if signum == signal.SIGINT else "a second SIGTERM or Ctrl-C stops"
        print(f"\n{SIGNALS.get(signum, signum)}: stopping after this step and saving a checkpoint "
              f"({again} at once)", file=sys.stderr, flush=True)

    def _restore(self) -> None:
        for signum, previous in self._previous.items():
            if signal.getsignal(signum) == self._handle:
                signal.signal(signum, signal.SIG_DFL if previous is None else previous)
        self._previous = {}

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            self._previous = {signum: signal.signal(signum, self._handle) for signum in SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        self._restore()

    def agreed(self) -> bool:
        """Whether to stop at this chunk boundary: this process's request or, with several processes,
        any process's. Every process must call it at the same boundaries (one all-gather each)."""
        import jax

        if jax.process_count() == 1:
            return self.requested
        from jax.experimental import multihost_utils

        flags = multihost_utils.process_allgather(np.asarray([self.requested], np.int32), tiled=True)
        return bool(np.any(flags))
