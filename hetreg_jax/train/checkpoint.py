"""Orbax checkpoints of the training state (the only module that imports orbax).

Each checkpoint holds the state pytree (both parameter trees and both optimiser states) and a small
JSON record (step, model, method, image size) in ``<directory>/<step>/{state,meta}``.

Completeness: orbax writes a step into ``<step>.orbax-checkpoint-tmp-*``, puts ``commit_success.txt``
into it and into each item folder, then renames it to ``<step>``. Orbax itself treats *any*
folder named like a step as finished; here a step counts only if its folder and both item folders
hold ``commit_success.txt`` (`is_complete`), so a half-written, half-deleted or hand-made step
folder is never picked by `Checkpointer.latest_step` or restored. `remove_incomplete`
deletes such folders and orbax's temporary ones (call it only while holding the workdir lock).

Background writes (``asynchronous=True``; ``config.checkpoint_async``): ``save(..., wait=False)``
copies the state to host memory, starts orbax's write in a background thread and returns, so the
next training steps run while the files are written. The write is confirmed by the next call of
`Checkpointer.finish` (the training loop calls it at its next log, validation or checkpoint step),
by any later ``save``, by reading the steps on disk and by ``close``; a full disk found then raises
`NoSpace` naming that step, after removing its half-written folder, exactly as a synchronous save
would. A step counts as saved (``confirmed``) only once it is confirmed.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import sys
import time
from typing import Any

import jax
import orbax.checkpoint as ocp

from hetreg_jax.base.errors import HetregError, MissingFileError

COMMIT_FILE = "commit_success.txt"
ITEMS = ("state", "meta")
TMP_MARKER = ".orbax-checkpoint-tmp"


def is_complete(step_dir: str) -> bool:
    """Whether ``step_dir`` is a committed checkpoint: a commit marker at its top and in every item."""
    folders = [step_dir] + [os.path.join(step_dir, item) for item in ITEMS]
    return all(os.path.isfile(os.path.join(folder, COMMIT_FILE)) for folder in folders)


def complete_steps(directory: str) -> list[int]:
    """Steps of the complete checkpoints in ``directory`` (none if it does not exist), ascending."""
    if not os.path.isdir(directory):
        return []
    return sorted(int(name) for name in os.listdir(directory)
                  if name.isdigit() and is_complete(os.path.join(directory, name)))


class Checkpointer:
    """Saves and restores ``(state, meta)`` under ``directory``, keeping the ``keep`` newest.

    ``create=False`` (evaluation) does not create ``directory``; nothing is written before a save.
    """

    def __init__(self, directory: str, keep: int = 3, create: bool = True, asynchronous: bool = False):
        self.directory = os.path.abspath(directory)
        self.asynchronous = asynchronous
        self.pending: int | None = None     # a step being written in the background
        self.confirmed: int | None = None   # the last step this checkpointer saved and saw committed
        options = ocp.CheckpointManagerOptions(
            preservation_policy=ocp.checkpoint_managers.LatestN(n=keep),
            enable_async_checkpointing=asynchronous,
            create=create,
        )
        handlers = {"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()}
        self._manager = ocp.CheckpointManager(self.directory, options=options, item_handlers=handlers)

    def step_dir(self, step: int) -> str:
        return os.path.join(self.directory, str(int(step)))

    def all_steps(self) -> list[int]:
        """The complete checkpoints' steps, ascending (after a background write has finished)."""
        self.finish()
        return complete_steps(self.directory)

    def latest_step(self) -> int | None:
        steps = self.all_steps()
        return steps[-1] if steps else None

    def incomplete_paths(self) -> list[str]:
        """Orbax temporary folders and step folders without their commit markers."""
        if not os.path.isdir(self.directory):
            return []
        out = []
        for name in sorted(os.listdir(self.directory)):
            path = os.path.join(self.directory, name)
            if TMP_MARKER in name or (name.isdigit() and os.path.isdir(path) and not is_complete(path)):
                out.append(path)
        return out

    def remove_incomplete(self) -> list[str]:
        """Delete `incomplete_paths` (so the step can be saved again); returns them."""
        removed = self.incomplete_paths()
        for path in removed:
            if os.path.isdir(path):
                shutil.rmtree(path)
            else:
                os.remove(path)
        if removed:
            self._manager.reload()
        return removed

    def save(self, step: int, state: Any, meta: dict, wait: bool = True) -> None:
        """Write a checkpoint of ``step``. On a full disk the half-written folder is removed (the
        older checkpoints stay as they were) and `NoSpace` is raised, in one line. ``wait=False``
        on a background checkpointer returns once the state is in host memory (see the module
        docstring); the previous background write is confirmed first."""
        self.finish()
        background = self.asynchronous and not wait
        if background:  # a host copy: the device buffers are donated to the next training step
            state = jax.device_get(state)
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
        with self._no_space(step):
            self._manager.save(int(step), args=args, force=True)
            if background:
                self.pending = int(step)
                return
            self._manager.wait_until_finished()
        self.confirmed = int(step)

    def finish(self) -> None:
        """Wait for a background write (nothing to do without one); `NoSpace` if the disk filled."""
        if self.pending is None or self._manager is None:
            return
        step, self.pending = self.pending, None
        with self._no_space(step):
            self._manager.wait_until_finished()
        self.confirmed = step

    @contextlib.contextmanager
    def _no_space(self, step: int):
        """Turn a full disk while writing ``step`` into `NoSpace`, its half-written folder removed."""
        with _stderr_held() as held:
            try:
                yield
            except Exception as exc:  # orbax and tensorstore wrap the OSError in their own types
                if not _is_no_space(exc):
                    raise
                held.discard()  # hundreds of lines of tracebacks from orbax's abandoned writes
                logging.getLogger("asyncio").setLevel(logging.CRITICAL)
                time.sleep(0.5)  # let those writes fail while their output is still held
                self.remove_incomplete()
                raise NoSpace(f"no space left on the device of {self.directory} while saving the "
                              f"checkpoint of step {int(step)}") from None

    def _step_or_latest(self, step: int | None) -> int:
        step = self.latest_step() if step is None else step
        if step is None:
            raise MissingFileError(f"no complete checkpoint in {self.directory}")
        return step

    def restore_meta(self, step: int | None = None) -> dict:
        step = self._step_or_latest(step)
        out = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        return dict(out["meta"])

    def mismatches(self, abstract_state: Any, step: int | None = None) -> list[str]:
        """How the stored state tree differs from ``abstract_state`` (leaf paths, shapes, dtypes).

        Read from the checkpoint's metadata, before any array is loaded; empty if they match.
        """
        stored = _leaf_specs(self._manager.item_metadata(self._step_or_latest(step))["state"])
        wanted = _leaf_specs(abstract_state)
        out = []
        params_first = lambda path: ("_params." not in path, path)  # noqa: E731
        for path in sorted(set(stored) | set(wanted), key=params_first):
            if path not in stored:
                out.append(f"{path} is missing from the checkpoint")
            elif path not in wanted:
                out.append(f"{path} is in the checkpoint but not in this config's networks")
            elif stored[path] != wanted[path]:
                out.append(f"{path} is {_spec_text(stored[path])} in the checkpoint, "
                           f"{_spec_text(wanted[path])} in this config")
        return out

    def restore(self, abstract_state: Any, step: int | None = None) -> tuple[Any, dict]:
        """Restore onto the shapes, dtypes and shardings of ``abstract_state``."""
        step = self._step_or_latest(step)
        target = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
            abstract_state)
        out = self._manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target),
                                          meta=ocp.args.JsonRestore()))
        return out["state"], dict(out["meta"])

    def close(self) -> None:
        """Wait for pending saves and release the manager (a second call does nothing); `NoSpace`
        if a background write found the disk full (the manager is released all the same)."""
        if self._manager is not None:
            try:
                self.finish()
            finally:
                self._manager.close()
                self._manager = None


class NoSpace(HetregError, OSError):
    """The disk filled up while a checkpoint was written (one-line message)."""


def _is_no_space(exc: BaseException) -> bool:
    """Whether ``exc`` or an exception it was raised from is a full disk (ENOSPC), however wrapped."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            return True
        if "No space left on device" in str(exc) or "os_error_code='28'" in str(exc):  # tensorstore's
            return True
        exc = exc.__cause__ or exc.__context__
    return False


class _HeldStderr:
    """What was written to file descriptor 2 (Python, C++ and thread output alike) while held."""

    def __init__(self, fd: int | None):
        self.fd, self.discarded = fd, False

    def discard(self) -> None:
        self.discarded = True

    def text(self) -> bytes:
        if self.fd is None or self.discarded:
            return b""
        os.lseek(self.fd, 0, os.SEEK_SET)
        chunks = []
        while chunk := os.read(self.fd, 1 << 16):
            chunks.append(chunk)
        return b"".join(chunks)


@contextlib.contextmanager
def _stderr_held():
    """Hold everything written to stderr in memory (no disk: it may be the full one) while a
    checkpoint is written; written out afterwards unless discarded (Linux; elsewhere a no-op)."""
    if not hasattr(os, "memfd_create"):
        yield _HeldStderr(None)
        return
    sys.stderr.flush()
    saved, buffer = os.dup(2), os.memfd_create("hetreg_stderr")
    os.dup2(buffer, 2)
    held = _HeldStderr(buffer)
    try:
        yield held
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        text = held.text()
        os.close(buffer)
        if text:
            os.write(2, text)


def _leaf_specs(tree: Any) -> dict[str, tuple[tuple[int, ...], str]]:
    """``{"motion_params.enc_0.kernel": (shape, dtype name)}`` for every array leaf of ``tree``."""
    def key_name(key) -> str:
        for attr in ("key", "name", "idx"):
            if hasattr(key, attr):
                return str(getattr(key, attr))
        return str(key)

    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {".".join(key_name(k) for k in path): (tuple(leaf.shape), jax.numpy.dtype(leaf.dtype).name)
            for path, leaf in leaves}


def _spec_text(spec: tuple[tuple[int, ...], str]) -> str:
    return f"{spec[1]}{list(spec[0])}"
