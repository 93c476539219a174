"""Ctrl-C during training: finish the step, save a checkpoint, stop with a one-line message.

The first SIGINT only sets a flag (:class:`StopRequest`); the training loop checks it after each
step, writes a checkpoint of that step and raises :class:`Interrupted`, which ``main.py`` prints as
``stopped at step N; rerun the same command to resume`` (exit code 130). The handler is removed as
soon as it fires, so a second Ctrl-C raises ``KeyboardInterrupt`` at once (a checkpoint being
written then is left half-written, and half-written checkpoints are never picked on resume).
"""

from __future__ import annotations

import signal
import sys
import threading

EXIT_CODE = 130  # the shell's code for a process stopped by SIGINT


class Interrupted(Exception):
    """The run stopped on request (Ctrl-C) after saving what it could; rerunning resumes."""

    def __init__(self, step: int, saved: int | None, directory: str):
        where = (f"checkpoint of step {saved} in {directory}" if saved
                 else "no checkpoint was written yet")
        super().__init__(f"stopped at step {step} ({where}); rerun the same command to resume")
        self.step, self.saved = step, saved


class StopRequest:
    """A context manager that turns the first SIGINT into ``requested = True`` (main thread only)."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def _handle(self, signum, frame):
        self.requested = True
        signal.signal(signal.SIGINT, self._previous)  # a second Ctrl-C stops at once
        print("\nCtrl-C: stopping after this step and saving a checkpoint (Ctrl-C again to stop at once)",
              file=sys.stderr, flush=True)

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None and signal.getsignal(signal.SIGINT) == self._handle:
            signal.signal(signal.SIGINT, self._previous)
        self._previous = None
