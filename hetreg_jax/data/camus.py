"""CAMUS (2D echocardiography, NIfTI release) from its published layout.

``data.root`` holds::

    database_nifti/patient0001/patient0001_2CH_ED.nii.gz     # 2D image ([X, Y] or [X, Y, 1])
    database_nifti/patient0001/patient0001_2CH_ED_gt.nii.gz
    database_nifti/patient0001/patient0001_2CH_ES.nii.gz (+ _gt), ..._4CH_ED/ES (+ _gt)
    database_nifti/patient0001/Info_2CH.cfg, Info_4CH.cfg     # not needed by the loader
    database_split/subgroup_training.txt, subgroup_validation.txt, subgroup_testing.txt  # optional

Labels 1 LV cavity, 2 myocardium, 3 left atrium. Each view (2CH, 4CH) is one pair, ED -> ES.
Images are resized to ``data.image_size`` with anti-aliased linear interpolation (aligned corners,
``preprocess.resize``) and min-max normalised; label maps are resized with nearest neighbour.
Splits by patient: the official split files when ``database_split/`` exists (one patient name per
line; patients listed in none of them are not used), otherwise a seeded 60/20/20 split.
"""

from __future__ import annotations

import functools
import os
import re

from hetreg_jax.base.errors import InputError
from hetreg_jax.data import nifti, preprocess
from hetreg_jax.data.nifti import DataError
from hetreg_jax.data.pipeline import MYOCARDIUM, SPLITS, Subject, split_names

VIEWS = ("2CH", "4CH")
SPLIT_FILES = {"train": "subgroup_training.txt", "val": "subgroup_validation.txt",
               "test": "subgroup_testing.txt"}
_PATIENT = re.compile(r"^patient\d+$")


def view_paths(folder: str, view: str) -> dict[str, str]:
    """``{"ed", "ed_gt", "es", "es_gt"} -> path`` of one view of the patient in ``folder``."""
    stem = os.path.join(folder, f"{os.path.basename(folder)}_{view}")
    return {f"{p}{gt}": f"{stem}_{p.upper()}{gt}.nii.gz" for p in ("ed", "es") for gt in ("", "_gt")}


def read_split_files(split_dir: str) -> dict[str, list[str]]:
    """The official split: ``{"train", "val", "test"} -> patient names``."""
    out = {}
    for split in SPLITS:
        path = os.path.join(split_dir, SPLIT_FILES[split])
        if not os.path.isfile(path):
            raise DataError(path, "file not found (database_split/ needs all three subgroup files)")
        with open(path, encoding="utf-8", errors="replace") as f:
            out[split] = [line.strip() for line in f if line.strip()]
    return out


def subjects(root: str, image_size, seed: int) -> list[Subject]:
    """The patients of ``root`` with their split (see the module docstring)."""
    if len(image_size) != 2:
        raise InputError(f"CAMUS views are 2D: config.data.image_size must have 2 entries, got {image_size}")
    base = os.path.join(root, "database_nifti")
    split_dir = os.path.join(root, "database_split")
    if os.path.isdir(split_dir):
        groups = read_split_files(split_dir)
    else:
        names = sorted(d for d in os.listdir(base) if _PATIENT.match(d) and os.path.isdir(os.path.join(base, d)))
        if not names:
            raise DataError(base, "no patientNNNN folders")
        groups = dict(zip(SPLITS, split_names(names, seed, (0.6, 0.2, 0.2))))
    load = functools.partial(load_patient, image_size=tuple(image_size))
    return [Subject(name, split, functools.partial(load, os.path.join(base, name)))
            for split in SPLITS for name in groups[split]]


def load_patient(folder: str, image_size) -> list[dict]:
    """The 2CH and 4CH pairs of the patient in ``folder``."""
    name = os.path.basename(folder)
    if not os.path.isdir(folder):
        raise DataError(folder, "patient folder not found")
    pairs = []
    for view in VIEWS:
        paths = view_paths(folder, view)
        ed, es = nifti.read_image(paths["ed"], 2), nifti.read_image(paths["es"], 2)
        ed_gt = nifti.read_label(paths["ed_gt"], 2, like=ed, required=MYOCARDIUM)
        es_gt = nifti.read_label(paths["es_gt"], 2, like=es, required=MYOCARDIUM)
        pair = preprocess.resized_pair(ed, es, ed_gt.data, es_gt.data, image_size)
        pair.update(subject=name, pair_id=f"{name}_{view}")
        pairs.append(pair)
    return pairs
