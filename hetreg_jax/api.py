"""Using a trained run from Python.

    import hetreg_jax
    model = hetreg_jax.load("runs/quick")            # the latest checkpoint and the recorded config
    out = model.register(moving, fixed)              # numpy arrays on the network grid, in [0, 1]
    out["displacement"], out["warped"], out["log_var"], out["weight"]
    model.register_nifti("ed.nii.gz", "es.nii.gz", "out/", moving_label="ed_gt.nii.gz")

``register`` takes images of ``config.data.image_size``, one pair (``[*size]`` or ``[*size, 1]``)
or a batch (``[B, *size]`` or ``[B, *size, 1]``), intensities normalised as in training: each
image min-max scaled to [0, 1] (``hetreg_jax.data.preprocess.normalise``; an image with a value
outside [0, 1] or a NaN is refused in one line);
the outputs follow the input (no batch axis for one pair): ``displacement`` ``[..., *size, ndim]`` in
voxels (``warped(x) = moving(x + u(x))``, component k along axis k), ``warped`` ``[..., *size]``,
and for methods with a variance net ``log_var`` (log sigma^2 of the fixed image's noise) and, for
``ours``, ``weight`` (the SNR weight of the training loss). ``register_nifti`` does what
``--mode=register`` does (cropping or resizing, outputs on the fixed image's grid).
"""

from __future__ import annotations

import math
import os

import jax
import numpy as np

from hetreg_jax import register as register_lib
from hetreg_jax.base import sharding
from hetreg_jax.base.errors import InputError, MissingFileError
from hetreg_jax.config.check import validate_config
from hetreg_jax.config.json_config import config_from_json

RANGE_TOLERANCE = 1e-4  # float rounding of a [0, 1] normalisation


class Model:
    """A trained workdir: its config, the restored networks, and registration on numpy arrays."""

    def __init__(self, workdir: str, config=None):
        self.workdir = os.path.abspath(os.path.expanduser(workdir))
        if config is None:
            recorded = os.path.join(self.workdir, "config.json")
            if not os.path.isfile(recorded):
                raise MissingFileError(f"{recorded}: no recorded config (is {self.workdir} a workdir?)")
            config = config_from_json(recorded)
        validate_config(config)
        self.config = config
        self.image_size = tuple(config.data.image_size)
        self.trainer, self.state = register_lib.restore(config, self.workdir)
        self.step = int(jax.device_get(self.state.step))

    def __repr__(self) -> str:
        return (f"Model({self.workdir!r}: {self.config.model} / {self.config.method}, "
                f"{'x'.join(map(str, self.image_size))}, step {self.step})")

    def _as_batch(self, name: str, image) -> tuple[np.ndarray, bool]:
        array = np.asarray(image, dtype=np.float32)
        size, ndim = self.image_size, len(self.image_size)
        if array.shape[-1:] == (1,) and array.ndim in (ndim + 1, ndim + 2):
            array = array[..., 0]
        if array.shape == size:
            return array[None, ..., None], False
        if array.ndim == ndim + 1 and array.shape[1:] == size:
            return array[..., None], True
        raise InputError(f"{name} has shape {np.shape(image)}; this model takes {size} images (one pair) or "
                         f"[B, {', '.join(map(str, size))}] batches (an optional last axis of 1)")

    @staticmethod
    def _check_range(name: str, array: np.ndarray) -> None:
        """Refuse non-finite values and intensities outside [0, 1] (training's normalisation)."""
        finite = np.isfinite(array)
        if not finite.all():
            raise InputError(f"{name} has {int(array.size - finite.sum())} non-finite values (NaN or inf)")
        lo, hi = float(array.min()), float(array.max())
        if lo < -RANGE_TOLERANCE or hi > 1 + RANGE_TOLERANCE:
            raise InputError(f"{name} has intensities in [{lo:g}, {hi:g}]; this model takes images normalised as "
                             "in training: each image min-max scaled to [0, 1] (hetreg_jax.data.preprocess.normalise)")

    def register(self, moving, fixed) -> dict[str, np.ndarray]:
        """Register ``moving`` to ``fixed`` (see the module docstring for shapes and outputs)."""
        moving, batched = self._as_batch("moving", moving)
        fixed, fixed_batched = self._as_batch("fixed", fixed)
        for name, array in (("moving", moving), ("fixed", fixed)):
            self._check_range(name, array)
        if moving.shape != fixed.shape or batched != fixed_batched:
            raise InputError(f"moving {moving.shape[:-1]} and fixed {fixed.shape[:-1]} differ")
        n, n_dev = len(moving), self.trainer.mesh.devices.size
        size = max(n_dev, math.ceil(self.config.eval.batch_size / n_dev) * n_dev)
        outputs: dict[str, list] = {}
        for start in range(0, n, size):
            index = np.arange(start, start + size) % n  # pad the last batch with repeats
            batch = sharding.global_batch({"moving": moving[index], "fixed": fixed[index]}, self.trainer.mesh)
            pred = jax.device_get(self.trainer.predict(self.state, batch))
            for key, value in pred.items():
                outputs.setdefault(key, []).append(np.asarray(value)[:min(size, n - start)])
        out = {}
        for key, parts in outputs.items():
            value = np.concatenate(parts)
            if key != "displacement":
                value = value[..., 0]
            out[key] = value if batched else value[0]
        return out

    def register_nifti(self, moving: str, fixed: str, out: str, moving_label: str | None = None,
                       fixed_label: str | None = None, resample_moving: bool = False) -> dict:
        """Register two NIfTI files as ``--mode=register`` does; returns the paths written
        (with ``fixed_label``, ``label_metrics``: Dice, Hausdorff and ASD of the warped label).
        ``resample_moving``: a moving image on another grid is resampled onto the fixed one."""
        return register_lib.register(self.config, self.workdir, moving, fixed, out, moving_label,
                                     restored=(self.trainer, self.state), fixed_label=fixed_label,
                                     resample_moving=resample_moving)


def load(workdir: str, config=None) -> Model:
    """The latest checkpoint of ``workdir`` with its recorded ``config.json`` (or ``config``)."""
    return Model(workdir, config)
