"""Orbax checkpoints of the training state (the only module that imports orbax).

Each checkpoint holds the state pytree (both parameter trees and both optimiser states) and a small
JSON record (step, model, method, image size) in ``<directory>/<step>/{state,meta}``.

Completeness: orbax writes a step into ``<step>.orbax-checkpoint-tmp-*``, puts ``commit_success.txt``
into it and into each item folder, then renames it to ``<step>``. Orbax itself treats *any*
folder named like a step as finished; here a step counts only if its folder and both item folders
hold ``commit_success.txt`` (:func:`is_complete`), so a half-written, half-deleted or hand-made step
folder is never picked by :meth:`Checkpointer.latest_step` or restored. :meth:`remove_incomplete`
deletes such folders and orbax's temporary ones (call it only while holding the workdir lock).
"""

from __future__ import annotations

import os
import shutil
from typing import Any

import jax
import orbax.checkpoint as ocp


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

    def __init__(self, directory: str, keep: int = 3, create: bool = True):
        self.directory = os.path.abspath(directory)
        options = ocp.CheckpointManagerOptions(
            preservation_policy=ocp.checkpoint_managers.LatestN(n=keep),
            enable_async_checkpointing=False,
            create=create,
        )
        handlers = {"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()}
        self._manager = ocp.CheckpointManager(self.directory, options=options, item_handlers=handlers)

    def step_dir(self, step: int) -> str:
        return os.path.join(self.directory, str(int(step)))

    def all_steps(self) -> list[int]:
        """The complete checkpoints' steps, ascending."""
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
        """Delete :meth:`incomplete_paths` (so the step can be saved again); returns them."""
        removed = self.incomplete_paths()
        for path in removed:
            if os.path.isdir(path):
                shutil.rmtree(path)
            else:
                os.remove(path)
        if removed:
            self._manager.reload()
        return removed

    def save(self, step: int, state: Any, meta: dict) -> None:
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
        self._manager.save(int(step), args=args, force=True)
        self._manager.wait_until_finished()

    def _step_or_latest(self, step: int | None) -> int:
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no complete checkpoint in {self.directory}")
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
        self._manager.close()


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
