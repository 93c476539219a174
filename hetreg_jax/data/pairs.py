"""Paired volumes (3D echo or any NIfTI pairs) listed in ``data.root/pairs.csv``.

Columns ``moving,fixed,moving_label,fixed_label`` (paths relative to ``data.root``; a label cell
may be empty when there is no annotation: the pair then counts as having no myocardium and is
excluded from the evaluation), optional ``split`` (``train``, ``val`` or ``test``) and optional
``subject`` (default: the leading name tokens that the moving and fixed files share, e.g.
``subject001`` for ``subject001_ED.nii.gz``/``subject001_ES.nii.gz``, else the moving file's name). Rows of one subject
always share a split. Images must have ``len(data.image_size)`` axes; each is resized to
``data.image_size`` (anti-aliased linear, aligned corners) and min-max normalised, label maps
with nearest neighbour. Label 2 is the myocardium; a given label map without it is refused.
Without a ``split`` column the subjects are split 60/20/20 (seeded).
"""

from __future__ import annotations

import csv
import functools
import os
import re

from hetreg_jax.data import nifti, preprocess
from hetreg_jax.data.nifti import DataError
from hetreg_jax.data.pipeline import MYOCARDIUM, SPLITS, Subject, split_names

CSV = "pairs.csv"
COLUMNS = ("moving", "fixed", "moving_label", "fixed_label")


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
        row["subject"] = row.get("subject") or default_subject(row["moving"], row["fixed"])
    return rows


def subjects(root: str, image_size, seed: int) -> list[Subject]:
    """The subjects of ``pairs.csv`` with their split (see the module docstring)."""
    rows = read_rows(root)
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
    return [Subject(name, split_of[name], functools.partial(load_rows, root, by_subject[name], tuple(image_size)))
            for name in sorted(by_subject)]


def read_pair(moving: str, fixed: str, moving_label: str | None, fixed_label: str | None, ndim: int):
    """Read and check the four files of a pair: ``(moving, fixed, moving_label, fixed_label)``
    volumes (labels None when not given)."""
    m, f = nifti.read_image(moving, ndim), nifti.read_image(fixed, ndim)
    ml = nifti.read_label(moving_label, ndim, like=m, required=MYOCARDIUM) if moving_label else None
    fl = nifti.read_label(fixed_label, ndim, like=f, required=MYOCARDIUM) if fixed_label else None
    return m, f, ml, fl


def load_rows(root: str, rows: list[dict], image_size) -> list[dict]:
    """The pairs of one subject's rows, resized to ``image_size``."""
    pairs = []
    for k, row in enumerate(rows):
        paths = [os.path.join(root, row[c]) if row[c] else None for c in COLUMNS]
        m, f, ml, fl = read_pair(*paths, ndim=len(image_size))
        pair = preprocess.resized_pair(m, f, None if ml is None else ml.data,
                                       None if fl is None else fl.data, image_size)
        name = row["subject"]
        pair.update(subject=name, pair_id=name if len(rows) == 1 else f"{name}_{k:02d}")
        pairs.append(pair)
    return pairs
