"""The run folder (``--workdir``): an exclusive lock, the config record and crash-safe metric logs.

- **Lock**: ``workdir/.lock`` is ``flock``-ed (exclusive, non-blocking) for the life of the process.
  The kernel drops the lock when the process dies, however it dies (``kill -9`` included), so a
  lock is never stale; the file itself stays (removing it would race with a waiting process) and
  holds the PID and host of the last holder, as information only. A second process is refused
  with `WorkdirLocked`. On Linux NFS, ``flock`` is emulated with POSIX byte-range locks,
  which the server arbitrates.
- **Config record**: ``workdir/config.json`` is the config of the latest run, written atomically
  (temporary file, ``fsync``, rename). A later run is compared with it key by key (nested keys
  dotted, e.g. ``optim.motion_lr``). Keys in `FREE_KEYS` (and every ``eval.*`` key) may change
  freely: they steer how long the run goes and what it logs or evaluates, not what a training step
  computes. Any other difference is refused with `ConfigMismatch` (one ``key: old -> new``
  entry per key) unless the caller allows it; accepted changes are appended to
  ``workdir/config_history.jsonl`` and ``config.json`` is rewritten.
- **Metric log**: on resume from step ``s``, ``metrics.jsonl`` keeps only complete records with
  ``step <= s`` (a killed run may have logged steps the resumed run repeats, or a half line).

Nothing here writes until the caller has decided the run may go on: `config_changes` only
reads, and `WorkdirLock.acquire` creates at most the folder and an empty ``.lock``.
"""

from __future__ import annotations

import datetime
import errno
import fcntl
import json
import math
import os
import socket
import tempfile
import time
from typing import Any, Mapping

import numpy as np

from hetreg_jax.base.errors import HetregError, InputError, MissingFileError

LOCK_NAME = ".lock"
CONFIG_NAME = "config.json"
HISTORY_NAME = "config_history.jsonl"
METRICS_NAME = "metrics.jsonl"

# Keys that may differ from the recorded config without --allow_config_change: the step budget
# (extend num_steps to train longer), logging, validation and checkpoint cadence, retention, and
# how batches reach the steps (steps per call, data on the devices or the host: the same batches,
# the same steps up to float rounding). With the "poly" learning-rate schedule num_steps also sets
# the decay length, so extending it changes the remaining learning rates (documented in docs/troubleshooting.md).
FREE_KEYS = ("num_steps", "log_every", "eval_every", "checkpoint_every", "keep_checkpoints", "checkpoint_async",
             "steps_per_call", "steps_per_call_form", "data.on_device")
FREE_PREFIXES = ("eval.",)
# Keys added after runs were first recorded, each with the value that reproduces those runs: a
# recorded config that lacks one reads as having it, so an older run resumes without a mismatch.
LATER_DEFAULTS = {"compute_dtype": "float32", "remat": "none", "unet_upsample": "subpixel", "data.order": "host",
                  "eval.split": "test"}

_ABSENT = "<absent>"


class WorkdirLocked(HetregError, RuntimeError, ValueError):
    """Another live process holds the workdir (the CLI reports it in one line); also a ``RuntimeError``
    and a ``ValueError``, as it was before the project's error types."""


class ConfigMismatch(InputError):
    """The config differs from the one the workdir was started with (see ``differences``)."""

    def __init__(self, message: str, differences: dict[str, tuple[Any, Any]]):
        super().__init__(message)
        self.differences = differences


# --------------------------------------------------------------------------------------- lock
class WorkdirLock:
    """Exclusive, non-blocking ``flock`` on ``workdir/.lock``; a context manager.

    ``acquire`` creates the folder and the lock file if needed, takes the lock and at once writes
    ``pid <pid> on <host> since <time>`` into it, so a second process that finds the lock taken
    names its holder. A run that is refused after that (e.g. a config mismatch) puts the previous
    text back when it releases the lock; ``claim`` keeps the new one (call it once the run is sure
    to go on). ``enabled=False`` (processes other than 0 of a multi-host run) does nothing.

    ``read_only=True`` (evaluation) creates nothing: a missing workdir raises ``FileNotFoundError``,
    and on a read-only file system without a lock file no lock is taken (no run can write there).
    """

    def __init__(self, workdir: str, enabled: bool = True, read_only: bool = False):
        self.workdir = os.path.abspath(workdir)
        self.path = os.path.join(self.workdir, LOCK_NAME)
        self.enabled = enabled
        self.read_only = read_only
        self._fd: int | None = None
        self._writable = False
        self._previous: bytes | None = None  # the lock file's text before acquire (restored unless claimed)

    def acquire(self) -> "WorkdirLock":
        if not self.enabled or self._fd is not None:
            return self
        if self.read_only:
            if not os.path.isdir(self.workdir):
                raise MissingFileError(f"--workdir {self.workdir} does not exist")
        else:
            ensure_directory(self.workdir)
        opened = self._open()
        if opened is None:
            return self
        fd, self._writable = opened
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise WorkdirLocked(f"workdir {self.workdir} is in use by another process ({self.holder()}); "
                                    "wait for it to finish or choose another --workdir") from None
            raise InputError(f"cannot lock {self.path} ({exc.strerror}); the file system may not support "
                             "file locks: choose a --workdir on a local disk") from None
        self._fd = fd
        if self._writable:
            self._previous = os.pread(fd, 4096, 0)
            self._write(f"pid {os.getpid()} on {socket.gethostname()} since {_now()}\n".encode())
        return self

    def _open(self) -> tuple[int, bool] | None:
        """The lock file, opened for writing if possible (a read-only one can still be locked);
        None when it cannot exist (read-only mode on a read-only folder without one)."""
        try:
            return os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644), True
        except OSError:
            pass
        try:
            return os.open(self.path, os.O_RDONLY), False
        except FileNotFoundError:
            if self.read_only:
                return None
            raise InputError(f"cannot write to --workdir {self.workdir} (cannot create {LOCK_NAME})") from None
        except OSError as exc:
            raise InputError(f"cannot open the lock file {self.path} ({exc.strerror})") from None

    def _write(self, data: bytes) -> None:
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, data, 0)
        os.fsync(self._fd)

    def holder(self, wait: float = 2.0) -> str:
        """What the lock file says about its holder ('pid 123 on host since ...'), or 'pid unknown'.

        A holder writes its line right after taking the lock; a text that is empty or names a
        process that is gone is read again for up to ``wait`` seconds."""
        deadline = time.monotonic() + wait
        while True:
            try:
                with open(self.path, encoding="utf-8") as f:
                    text = f.read().strip()
            except OSError:
                text = ""
            if _names_live_process(text) or time.monotonic() >= deadline:
                return text or "pid unknown"
            time.sleep(0.01)

    def claim(self) -> None:
        """Keep this process's line in the lock file when the lock is released."""
        self._previous = None

    def release(self) -> None:
        if self._fd is not None:
            if self._writable and self._previous is not None:
                try:
                    self._write(self._previous)
                except OSError:
                    pass  # information only
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> "WorkdirLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _now() -> str:
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


def _names_live_process(text: str) -> bool:
    """Whether ``text`` ('pid 123 on host since ...') names a live process (on another host: assumed)."""
    parts = text.split()
    if len(parts) < 4 or parts[0] != "pid" or not parts[1].isdigit():
        return False
    if parts[3] != socket.gethostname():
        return True
    try:
        os.kill(int(parts[1]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, another user's
    return True


def ensure_directory(path: str, flag: str = "--workdir") -> None:
    """``os.makedirs(path, exist_ok=True)``, with a one-line ``InputError`` if it cannot be made."""
    try:
        os.makedirs(path, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise InputError(f"{flag} {path} is not a folder") from None
    except OSError as exc:
        raise InputError(f"cannot write to {flag} {path} ({exc.strerror})") from None


def check_writable(path: str, flag: str = "--workdir") -> None:
    """Refuse, in one line and before any work, a folder that is a file or cannot be written to.

    Creates nothing: for a folder that does not exist yet, its nearest existing parent is tried
    (a temporary file made and removed at once, which also catches read-only file systems, where
    permission bits say nothing to root)."""
    path = os.path.abspath(os.path.expanduser(path))
    probe = path
    while not os.path.exists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    if not os.path.isdir(probe):
        where = path if probe == path else f"{path} (its parent {probe} is a file)"
        raise InputError(f"{flag} {where} is not a folder")
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as exc:
        raise InputError(f"cannot write to {flag} {path} ({exc.strerror or exc})") from None


# --------------------------------------------------------------------------------------- files
def atomic_write_text(path: str, text: str) -> None:
    """Write ``text`` to ``path`` so that a reader (or a crash) sees the old or the new file, whole."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _read_jsonl(path: str) -> tuple[list[dict], bool]:
    """The complete JSON-object lines of ``path`` and whether any line was broken."""
    records, broken = [], False
    with open(path, encoding="utf-8") as f:
        for line in f:
            broken |= not line.endswith("\n")  # a half-written last line: rewrite the file
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                broken = True
                continue
            if isinstance(record, dict):
                records.append(record)
    return records, broken


def trim_metrics(workdir: str, step: int) -> int:
    """Keep only complete ``metrics.jsonl`` records with ``step <= step``; returns how many were dropped."""
    path = os.path.join(workdir, METRICS_NAME)
    if not os.path.exists(path):
        return 0
    records, broken = _read_jsonl(path)
    kept = [r for r in records if int(r.get("step", 0)) <= step]
    dropped = len(records) - len(kept)
    if dropped or broken:
        atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in kept))
    return dropped + int(broken)


# --------------------------------------------------------------------------------------- config
def config_to_dict(config) -> dict:
    """A ``ConfigDict`` as plain JSON data (tuples become lists), exactly as ``config.json`` stores it."""
    return json.loads(config.to_json_best_effort(sort_keys=True))


def flatten(tree: Mapping, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}} -> {"a.b": 1}``."""
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def is_free_key(key: str) -> bool:
    return key in FREE_KEYS or key.startswith(FREE_PREFIXES)


def recorded_config(workdir: str) -> dict | None:
    """The config recorded in ``workdir/config.json``, or None if there is none."""
    path = os.path.join(workdir, CONFIG_NAME)
    if not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"cannot read {path} ({exc}); restore it or choose another --workdir") from None


def config_changes(config, workdir: str, allow_change: bool = False) -> dict[str, tuple[Any, Any]]:
    """Differences ``{key: (old, new)}`` from the recorded config; raises if a restricted one changed.

    Reads only. Raises `ConfigMismatch` naming every restricted key (``key: old -> new``)
    unless ``allow_change``; free keys (`is_free_key`) never raise.
    """
    old = recorded_config(workdir)
    if old is None:
        return {}
    old_flat, new_flat = {**LATER_DEFAULTS, **flatten(old)}, flatten(config_to_dict(config))
    pairs = {k: (old_flat.get(k, _ABSENT), new_flat.get(k, _ABSENT)) for k in sorted({*old_flat, *new_flat})}
    diffs = {k: (a, b) for k, (a, b) in pairs.items() if a != b}
    restricted = {k: v for k, v in diffs.items() if not is_free_key(k)}
    if restricted and not allow_change:
        listing = "; ".join(f"{k}: {_show(a)} -> {_show(b)}" for k, (a, b) in restricted.items())
        count = f"{len(restricted)} keys differ" if len(restricted) > 1 else "1 key differs"
        raise ConfigMismatch(
            f"workdir {os.path.abspath(workdir)} was started with a different config ({count}): {listing}; "
            "rerun with --allow_config_change to continue with the new config, or choose another --workdir",
            restricted)
    return diffs


# Keys that decide which test pairs an evaluation scores (data.order and data.on_device only decide
# how training batches are drawn and placed).
EVAL_DATA_FREE = ("data.order", "data.on_device")


def evaluated_data_changes(config, workdir: str) -> dict[str, tuple[Any, Any]]:
    """``{key: (recorded, now)}`` of the keys (``seed``, ``data.*``, ``eval.split``) that make an
    evaluation of ``workdir`` score other pairs than its own test split; empty without a recorded
    config."""
    changes = config_changes(config, workdir, allow_change=True)
    return {k: v for k, v in changes.items()
            if (k in ("seed", "eval.split") or k.startswith("data.")) and k not in EVAL_DATA_FREE}


def record_config(config, workdir: str, changes: Mapping[str, tuple[Any, Any]], step: int = 0) -> None:
    """Write ``config.json`` (first run, or after ``changes``) and log ``changes`` to the history."""
    path = os.path.join(workdir, CONFIG_NAME)
    if os.path.exists(path) and not changes:
        return
    ensure_directory(workdir)
    if changes:
        record = {"time": _now(), "step": int(step),
                  "changes": {k: [a, b] for k, (a, b) in changes.items()},
                  "restricted": sorted(k for k in changes if not is_free_key(k))}
        with open(os.path.join(workdir, HISTORY_NAME), "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())
    atomic_write_text(path, config.to_json_best_effort(indent=2, sort_keys=True))


def _show(value: Any) -> str:
    return value if value is _ABSENT else json.dumps(value)


def json_safe(obj):
    """``obj`` with NaN and infinities as None and numpy scalars as Python ones: strict JSON."""
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj
