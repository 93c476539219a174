"""ACDC (cine MRI, NIfTI) from its published layout.

``data.root`` holds ``training/`` and optionally ``testing/``, each with one folder per patient::

    training/patient001/Info.cfg                   # lines "ED: 1", "ES: 12", ...
    training/patient001/patient001_frame01.nii.gz  # [X, Y, Z] short-axis stack, frame ED
    training/patient001/patient001_frame01_gt.nii.gz
    training/patient001/patient001_frame12.nii.gz  # frame ES
    training/patient001/patient001_frame12_gt.nii.gz
    (patient001_4d.nii.gz and other files are ignored)

Labels 1 RV cavity, 2 myocardium, 3 LV cavity. Each short-axis slice ``z`` (array axis 2) gives
one pair: moving = ED slice, fixed = ES slice. Preprocessing (no resampling): the crop centre is
the centroid of the ED myocardium on the mid slice ``Z // 2`` (the nearest slice with myocardium
if that one has none; ``data.centre="label"``), or, with ``data.centre="images"``, where ED and ES
differ most (``preprocess.motion_centre``: no label needed, as when registering a new scan),
computed once per patient and used for every slice of both frames; a
``data.image_size`` window around it is cut from each slice, zero-padded where it leaves the
image (``preprocess.crop``); then each 2D crop is min-max normalised on its own. Slices whose ED
or ES myocardium is empty stay in the dataset (evaluation lists them as excluded).

Splits by patient (seeded by ``config.seed``): with ``testing/`` present, it is the test split and
``training/`` is split 80/20 into train/val; without it, 60/20/20 of the training patients.
"""

from __future__ import annotations

import functools
import os
import re

import numpy as np
from scipy import ndimage

from hetreg_jax.base.errors import InputError
from hetreg_jax.data import nifti, preprocess
from hetreg_jax.data.nifti import DataError
from hetreg_jax.data.pipeline import MYOCARDIUM, Subject, split_names

INFO = "Info.cfg"
_PATIENT = re.compile(r"^patient\d+$")


def read_info(path: str) -> dict[str, str]:
    """``Info.cfg`` as ``{key: value}`` (lines ``key: value``)."""
    if not os.path.isfile(path):
        raise DataError(path, "file not found")
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError as exc:
        raise DataError(path, f"cannot read ({exc})") from None
    info = {}
    for line in lines:
        key, sep, value = line.partition(":")
        if sep:
            info[key.strip()] = value.strip()
    return info


def frame_number(info: dict, key: str, path: str) -> int:
    """The frame number of ``key`` (``"ED"``/``"ES"``) in a parsed ``Info.cfg``."""
    if key not in info:
        raise DataError(path, f"missing field '{key}' (expected a line '{key}: <frame number>')")
    try:
        return int(info[key])
    except ValueError:
        raise DataError(path, f"field '{key}' is not a frame number: {info[key]!r}") from None


def frame_paths(folder: str, frame: int) -> tuple[str, str]:
    """``(image, label)`` paths of frame ``frame`` of the patient in ``folder``."""
    stem = os.path.join(folder, f"{os.path.basename(folder)}_frame{frame:02d}")
    return stem + ".nii.gz", stem + "_gt.nii.gz"


def patient_folders(folder: str) -> list[str]:
    """Sorted ``patientNNN`` sub-folders of ``folder``."""
    if not os.path.isdir(folder):
        return []
    return sorted(os.path.join(folder, d) for d in os.listdir(folder)
                  if _PATIENT.match(d) and os.path.isdir(os.path.join(folder, d)))


CENTRES = ("label", "images")


def subjects(root: str, image_size, seed: int, centre: str = "label") -> list[Subject]:
    """The patients of ``root`` with their split (see the module docstring)."""
    if centre not in CENTRES:
        raise InputError(f"config.data.centre={centre!r}: one of {', '.join(CENTRES)}")
    if len(image_size) != 2:
        raise InputError(f"ACDC slices are 2D: config.data.image_size must have 2 entries, got {image_size}")
    training = patient_folders(os.path.join(root, "training"))
    if not training:
        raise DataError(os.path.join(root, "training"), "no patientNNN folders")
    testing = patient_folders(os.path.join(root, "testing"))
    by_name = {os.path.basename(f): f for f in training}
    if testing:
        both = sorted(set(by_name) & {os.path.basename(f) for f in testing})
        if both:
            raise DataError(os.path.join(root, "testing"), f"patients also in training/: {both}")
        groups = split_names(list(by_name), seed, (0.8, 0.2)) + [[os.path.basename(f) for f in testing]]
        by_name.update({os.path.basename(f): f for f in testing})
    else:
        groups = split_names(list(by_name), seed, (0.6, 0.2, 0.2))
    out = []
    for split, names in zip(("train", "val", "test"), groups):
        for name in names:
            out.append(Subject(name, split, functools.partial(load_patient, by_name[name], tuple(image_size),
                                                              centre)))
    return out


def read_frames(folder: str) -> dict[str, nifti.Volume]:
    """ED/ES images and label maps of one patient (``ed``, ``es``, ``ed_gt``, ``es_gt``), checked:
    3D stacks (or 2D slices, read as one-slice stacks), finite, not constant, labels integer with
    myocardium, matching shapes."""
    cfg = os.path.join(folder, INFO)
    info = read_info(cfg)
    out = {}
    for phase in ("ED", "ES"):
        frame = frame_number(info, phase, cfg)
        image_path, label_path = frame_paths(folder, frame)
        key = phase.lower()
        out[key] = nifti.read_stack(image_path)  # a 2D [X, Y] frame is a one-slice stack
        out[key + "_gt"] = nifti.read_stack(label_path, label=True, like=out[key], required=MYOCARDIUM)
    if out["es"].data.shape != out["ed"].data.shape:
        raise DataError(out["es"].path, f"ES frame shape {out['es'].data.shape} differs from the ED frame "
                                        f"shape {out['ed'].data.shape} of {out['ed'].path}")
    return out


def crop_centre(ed_label: np.ndarray) -> tuple[float, float]:
    """Centroid (voxels, axes 0 and 1) of the ED myocardium on the mid slice ``Z // 2`` of a
    ``[X, Y, Z]`` label map, or on the nearest slice that has myocardium (the lower one on a tie);
    the image centre if there is none."""
    myo = ed_label == MYOCARDIUM
    z_count = myo.shape[2]
    present = np.flatnonzero(myo.reshape(-1, z_count).any(axis=0))
    if present.size == 0:
        return tuple((n - 1) / 2 for n in myo.shape[:2])
    z = int(present[np.argmin(np.abs(present - z_count // 2))])
    return tuple(float(c) for c in ndimage.center_of_mass(myo[:, :, z]))


def slice_pairs(ed: np.ndarray, es: np.ndarray, ed_label, es_label, centre, size) -> list[dict]:
    """The per-slice pairs of ``[X, Y, Z]`` stacks: crops of ``size`` at ``centre``, each image
    min-max normalised; labels may be None (zeros). Keys: moving, fixed, moving_label,
    fixed_label, raw_range."""
    start = preprocess.crop_start(centre, size)
    pairs = []
    for z in range(ed.shape[2]):
        pair = {"raw_range": np.array([min(ed[..., z].min(), es[..., z].min()),
                                       max(ed[..., z].max(), es[..., z].max())], np.float32)}
        for key, image, label in (("moving", ed, ed_label), ("fixed", es, es_label)):
            pair[key] = preprocess.normalise(preprocess.crop(image[..., z], start, size))
            lab = np.zeros(ed.shape[:2], np.uint8) if label is None else label[..., z]
            pair[key + "_label"] = preprocess.crop(lab, start, size)
        pairs.append(pair)
    return pairs


def load_patient(folder: str, image_size, centre: str = "label") -> list[dict]:
    """Every slice pair of the patient in ``folder`` (see ``slice_pairs``), cropped around the ED
    myocardium (``centre="label"``) or where ED and ES differ most (``"images"``)."""
    v = read_frames(folder)
    name = os.path.basename(folder)
    if centre == "images":
        centre = preprocess.motion_centre(v["ed"].data, v["es"].data, v["ed"].spacing[:2])
    else:
        centre = crop_centre(v["ed_gt"].data)
    pairs = slice_pairs(v["ed"].data, v["es"].data, v["ed_gt"].data, v["es_gt"].data, centre, image_size)
    for z, pair in enumerate(pairs):
        pair.update(subject=name, pair_id=f"{name}_slice{z:02d}",
                    spacing=np.asarray(v["es"].spacing[:2], np.float32))
    return pairs
