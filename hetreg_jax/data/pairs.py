"""Paired volumes (3D echo or any NIfTI pairs) listed in ``data.root/pairs.csv``.

Columns ``moving,fixed,moving_label,fixed_label`` (paths relative to ``data.root``; a label cell
may be empty when there is no annotation: the pair is then excluded from the evaluation),
optional ``split`` (``train``, ``val`` or ``test``), optional ``subject`` (default: the leading
name tokens that the moving and fixed files share, e.g. ``subject001`` for
``subject001_ED.nii.gz``/``subject001_ES.nii.gz``, else the moving file's name; when one such name
comes from files in several folders, e.g. ``SCD0000101/sa_ED.nii.gz`` and
``SCD0000201/sa_ED.nii.gz``, the folder is the subject: ``SCD0000101``) and optional ``slices``.
Rows of one subject always share a split. Without a ``split`` column the subjects are split
60/20/20 (seeded).

``slices`` = ``no`` (or empty, or no column): images must have ``len(data.image_size)`` axes; each
is resized to ``data.image_size`` (anti-aliased linear, aligned corners) and min-max normalised,
label maps with nearest neighbour.

``slices`` = ``yes`` (every row the same): the files are short-axis stacks ``[X, Y, Z]`` (or 2D
slices), registered slice by slice exactly as ACDC is (``acdc.slice_pairs``: one pair per slice,
a 2D ``data.image_size`` crop at ``acdc.crop_centre`` of the ED label, each crop min-max
normalised; with ``data.centre="images"``, or without an ED label, where ED and ES differ most,
``preprocess.motion_centre``). Moving and fixed stacks must lie on the same
grid (shape and affine, ``nifti.check_same_grid``).

Label maps (read in the images' canonical voxel order, ``nifti``): the ED (moving) label map of a
row must contain at least one of the configured structures (``evaluation.structures(config)``,
e.g. ``lv=1,myo=2``); otherwise it is refused in one line naming the file. The ES label map may
lack some of them (Sunnybrook's ES frames have no myocardium): each pair is scored on the
structures labelled in both frames.
"""

from __future__ import annotations

import csv
import functools
import os
import re

import numpy as np

from hetreg_jax.base.errors import InputError
from hetreg_jax.data import acdc, nifti, preprocess
from hetreg_jax.data.nifti import DataError
from hetreg_jax.data.pipeline import SPLITS, Subject, split_names

CSV = "pairs.csv"
COLUMNS = ("moving", "fixed", "moving_label", "fixed_label")
SLICES = "slices"
_YES, _NO = ("yes", "true", "1"), ("no", "false", "0", "")


def _stem(path: str) -> str:
    name = os.path.basename(path)
    for ext in (".nii.gz", ".nii"):
        if name.endswith(ext):
            return name[: -len(ext)]
    return name


def default_subject(moving: str, fixed: str) -> str:
    """The leading tokens (split at ``_``, ``-``, ``.``) that the two file names share, without
    ``.nii[.gz]`` and trailing separators; the moving file's name when they share none."""
    a, b = (re.split(r"([_.-])", _stem(p)) for p in (moving, fixed))
    shared = []
    for x, y in zip(a, b):
        if x != y:
            break
        shared.append(x)
    return "".join(shared).rstrip("_-.") or _stem(moving)


def read_rows(root: str) -> list[dict]:
    """The rows of ``pairs.csv`` (checked columns and split names), each with its ``subject``."""
    path = os.path.join(root, CSV)
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        header = [c.strip() for c in reader.fieldnames or []]
        rows = [{k.strip(): (v or "").strip() for k, v in row.items() if k} for row in reader]
    missing = [c for c in COLUMNS if c not in header]
    if missing:
        raise DataError(path, f"missing column(s) {missing}; the header must contain {','.join(COLUMNS)}")
    if not rows:
        raise DataError(path, "no rows")
    for i, row in enumerate(rows, start=2):
        if not row["moving"] or not row["fixed"]:
            raise DataError(path, f"line {i}: empty moving or fixed path")
        if "split" in header and row.get("split") not in SPLITS:
            raise DataError(path, f"line {i}: split {row.get('split')!r} is not one of {SPLITS}")
        value = row.get(SLICES, "").lower()
        if value not in _YES + _NO:
            raise DataError(path, f"line {i}: slices {row.get(SLICES)!r} is not 'yes' or 'no'")
        row[SLICES] = value in _YES
        if row[SLICES] != rows[0][SLICES]:
            raise DataError(path, f"line {i}: slices={'yes' if row[SLICES] else 'no'} differs from line 2's; "
                                  "a dataset is either stacks registered slice by slice or not")
    named = {}  # default subject name -> the folders its files come from
    for row in rows:
        if not row.get("subject"):
            row["_default"] = default_subject(row["moving"], row["fixed"])
            named.setdefault(row["_default"], set()).add(os.path.dirname(os.path.normpath(row["moving"])))
    for row in rows:
        default = row.pop("_default", None)
        if default is not None:
            folder = os.path.dirname(os.path.normpath(row["moving"]))
            folders = named[default]
            if len(folders) > 1 and folder:  # the folder's name, or its whole path where names repeat
                unique = len({os.path.basename(d) for d in folders}) == len(folders)
                default = os.path.basename(folder) if unique else folder.replace(os.sep, "_").strip("_")
            row["subject"] = default
    return rows


def slicewise(root: str) -> bool:
    """Whether the ``pairs.csv`` of ``root`` lists stacks registered slice by slice (``slices=yes``)."""
    return read_rows(root)[0][SLICES]


def subjects(root: str, image_size, seed: int, structures=None, centre: str = "label") -> list[Subject]:
    """The subjects of ``pairs.csv`` with their split (see the module docstring); ``structures``
    (``[(name, label)]``): at least one must be labelled in each ED label map (None: no check);
    ``centre`` (``data.centre``, stacks only): ``"label"`` or ``"images"``, as for ACDC."""
    if centre not in acdc.CENTRES:
        raise InputError(f"config.data.centre={centre!r}: one of {', '.join(acdc.CENTRES)}")
    rows = read_rows(root)
    if rows[0][SLICES] and len(image_size) != 2:
        raise InputError(f"pairs.csv lists stacks registered slice by slice (slices=yes): config.data.image_size "
                         f"must have 2 entries, got {tuple(image_size)}")
    by_subject: dict[str, list[dict]] = {}
    for row in rows:
        by_subject.setdefault(row["subject"], []).append(row)
    if "split" in rows[0]:
        split_of = {}
        for name, group in by_subject.items():
            splits = {r["split"] for r in group}
            if len(splits) > 1:
                raise DataError(os.path.join(root, CSV),
                                f"subject {name!r} has rows in several splits {sorted(splits)}")
            split_of[name] = splits.pop()
    else:
        groups = split_names(list(by_subject), seed, (0.6, 0.2, 0.2))
        split_of = {name: split for split, names in zip(SPLITS, groups) for name in names}
    return [Subject(name, split_of[name], functools.partial(load_rows, root, by_subject[name], tuple(image_size),
                                                            structures, centre))
            for name in sorted(by_subject)]


def read_pair(moving: str, fixed: str, moving_label: str | None, fixed_label: str | None, ndim: int,
              structures=None):
    """Read and check the four files of a pair: ``(moving, fixed, moving_label, fixed_label)``
    volumes (labels None when not given); ``structures``: see `subjects`."""
    m, f = nifti.read_image(moving, ndim), nifti.read_image(fixed, ndim)
    ml = nifti.read_label(moving_label, ndim, like=m, required=structures) if moving_label else None
    fl = nifti.read_label(fixed_label, ndim, like=f) if fixed_label else None
    return m, f, ml, fl


def read_stacks(moving: str, fixed: str, moving_label: str | None, fixed_label: str | None, structures=None):
    """The four files of a ``slices=yes`` row as stacks (``nifti.read_stack``), on one grid."""
    m, f = nifti.read_stack(moving), nifti.read_stack(fixed)
    nifti.check_same_grid(m, f, " (ED and ES stacks registered slice by slice must share their grid)")
    ml = nifti.read_stack(moving_label, label=True, like=m) if moving_label else None
    if ml is not None and structures:
        nifti.require_any(ml, structures)
    fl = nifti.read_stack(fixed_label, label=True, like=f) if fixed_label else None
    return m, f, ml, fl


def stack_pairs(m, f, ml, fl, image_size, centre: str = "label") -> list[dict]:
    """The per-slice pairs of stacks read by `read_stacks` (``acdc.slice_pairs`` at
    ``acdc.crop_centre`` of the ED label; with ``centre="images"`` or without an ED label, where ED
    and ES differ most, ``preprocess.motion_centre``), with in-plane ``spacing``."""
    ed_label = None if ml is None else ml.data
    if ed_label is not None and centre == "label":
        centre = acdc.crop_centre(ed_label)
    else:
        centre = preprocess.motion_centre(m.data, f.data, f.spacing[:2])
    pairs = acdc.slice_pairs(m.data, f.data, ed_label, None if fl is None else fl.data, centre, image_size)
    for pair in pairs:
        pair["spacing"] = np.asarray(f.spacing[:2], np.float32)
    return pairs


def load_rows(root: str, rows: list[dict], image_size, structures=None, centre: str = "label") -> list[dict]:
    """The pairs of one subject's rows: resized to ``image_size``, or one per slice."""
    pairs = []
    name = rows[0]["subject"]
    for k, row in enumerate(rows):
        paths = [os.path.join(root, row[c]) if row[c] else None for c in COLUMNS]
        stem = name if len(rows) == 1 else f"{name}_{k:02d}"
        if row[SLICES]:
            for z, pair in enumerate(stack_pairs(*read_stacks(*paths, structures=structures), image_size, centre)):
                pair.update(subject=name, pair_id=f"{stem}_slice{z:02d}")
                pairs.append(pair)
            continue
        m, f, ml, fl = read_pair(*paths, ndim=len(image_size), structures=structures)
        pair = preprocess.resized_pair(m, f, None if ml is None else ml.data,
                                       None if fl is None else fl.data, image_size)
        pair.update(subject=name, pair_id=stem)
        pairs.append(pair)
    return pairs
