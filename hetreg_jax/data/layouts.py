"""Write synthetic phantoms in the published on-disk layouts of ACDC, CAMUS and paired volumes.

    python -m hetreg_jax.data.layouts --layout=acdc --out=DIR --subjects=N [--testing=M]
    python -m hetreg_jax.data.layouts --layout=camus --out=DIR --subjects=N [--split_files]
    python -m hetreg_jax.data.layouts --layout=pairs --out=DIR --subjects=N [--split_column]

The files are what the loaders expect from the real datasets (METHOD.md, Data), so the tests read
exactly those layouts and users can see the expected structure:

- ``acdc``: ``training/patientNNN/{Info.cfg, patientNNN_frameXX.nii.gz, patientNNN_frameXX_gt.nii.gz,
  patientNNN_4d.nii.gz}`` (and ``testing/`` with the following patient numbers). Each frame is an
  int16 ``[X, Y, Z]`` short-axis stack of ACDC-like phantom slices, moved by a per-patient offset
  (zero fill) so the heart is off-centre, with an oblique affine (in-plane pixdim 1.25-1.6 mm,
  10 mm slices). ``Info.cfg`` has ED, ES, Group, Height, NbFrame, Weight; the 4D file blends ED and
  ES over NbFrame frames.
- ``camus``: ``database_nifti/patientNNNN/patientNNNN_{2CH,4CH}_{ED,ES}[_gt].nii.gz`` (uint8 2D
  images at the native ``size``), ``Info_{2CH,4CH}.cfg``; optionally ``database_split/
  subgroup_{training,validation,testing}.txt`` (a seeded 60/20/20 split).
- ``pairs``: ``volumes/subjectNNN_{ED,ES}[_gt].nii.gz`` (echo3d phantoms) and ``pairs.csv`` with
  columns ``moving,fixed,moving_label,fixed_label`` and optionally ``split``.

Phantom subject ``i`` is ``synthetic.make_subject(kind, i, size, seed)``; the per-patient extras
(offsets, affines, frame numbers) come from ``default_rng([seed, 7, i])``.
"""

from __future__ import annotations

import argparse
import csv
import os
from typing import Sequence

import nibabel as nib
import numpy as np

from hetreg_jax.data import synthetic
from hetreg_jax.data.pipeline import split_names
from hetreg_jax.data.preprocess import crop

DEFAULT_SIZE = {"acdc": (216, 256), "camus": (180, 150), "pairs": (72, 64, 68)}
_GROUPS = ("NOR", "DCM", "HCM", "MINF", "RV")


def _rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), 7, int(index)])


def _oblique_affine(rng, spacing: Sequence[float]) -> np.ndarray:
    """Voxel -> mm: a random rotation times ``diag(spacing)``, plus an offset."""
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.linalg.det(q))  # a proper rotation
    affine = np.eye(4)
    affine[:3, :3] = q @ np.diag(spacing)
    affine[:3, 3] = rng.uniform(-150, 150, 3)
    return affine


def _save(path: str, data: np.ndarray, affine: np.ndarray) -> None:
    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    nib.save(img, path)


def _write_cfg(path: str, fields: dict) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(f"{k}: {v}\n" for k, v in fields.items())


# ------------------------------------------------------------------------------------- ACDC
def _acdc_patient(folder: str, index: int, size, slices: int, seed: int) -> None:
    name = os.path.basename(folder)
    os.makedirs(folder, exist_ok=True)
    rng = _rng(seed, index)
    pairs = synthetic.make_subject("acdc", index, size, seed, slices_per_subject=slices)
    offset = np.round(rng.uniform(-0.2, 0.2, 2) * np.array(size)).astype(int)
    gain = rng.uniform(300, 900)

    def stack(key, dtype, scale):
        return np.stack([crop(np.round(p[key] * scale), -offset, size) for p in pairs], axis=-1).astype(dtype)

    ed, es = stack("moving", np.int16, gain), stack("fixed", np.int16, gain)
    ed_gt, es_gt = stack("moving_label", np.uint8, 1), stack("fixed_label", np.uint8, 1)
    affine = _oblique_affine(rng, [rng.uniform(1.25, 1.6)] * 2 + [10.0])
    es_frame = int(rng.integers(9, 16))
    n_frames = es_frame + int(rng.integers(3, 7))
    _write_cfg(os.path.join(folder, "Info.cfg"), {
        "ED": 1, "ES": es_frame, "Group": _GROUPS[index % len(_GROUPS)],
        "Height": round(float(rng.uniform(150, 195)), 1), "NbFrame": n_frames,
        "Weight": round(float(rng.uniform(50, 110)), 1)})
    for frame, image, label in ((1, ed, ed_gt), (es_frame, es, es_gt)):
        stem = os.path.join(folder, f"{name}_frame{frame:02d}")
        _save(stem + ".nii.gz", image, affine)
        _save(stem + "_gt.nii.gz", label, affine)
    phase = 0.5 - 0.5 * np.cos(np.pi * np.clip(np.arange(n_frames) / (es_frame - 1), 0, 2))
    cine = ed[..., None] * (1 - phase) + es[..., None] * phase
    _save(os.path.join(folder, f"{name}_4d.nii.gz"), np.round(cine).astype(np.int16), affine)


def write_acdc(out: str, subjects: int, size=DEFAULT_SIZE["acdc"], slices: int = 8, seed: int = 0,
               testing: int = 0) -> list[str]:
    """``subjects`` patients in ``out/training`` and ``testing`` more in ``out/testing``."""
    names = []
    for i in range(subjects + testing):
        name = f"patient{i + 1:03d}"
        _acdc_patient(os.path.join(out, "training" if i < subjects else "testing", name),
                      i, tuple(size), slices, seed)
        names.append(name)
    return names


# ------------------------------------------------------------------------------------ CAMUS
def write_camus(out: str, subjects: int, size=DEFAULT_SIZE["camus"], seed: int = 0,
                split_files: bool = False) -> list[str]:
    """``subjects`` patients in ``out/database_nifti`` (+ ``database_split/`` if ``split_files``)."""
    names = []
    for i in range(subjects):
        name = f"patient{i + 1:04d}"
        folder = os.path.join(out, "database_nifti", name)
        os.makedirs(folder, exist_ok=True)
        rng = _rng(seed, i)
        spacing = rng.uniform(0.25, 0.35)
        affine = np.diag([spacing, spacing, 1.0, 1.0])
        for pair in synthetic.make_subject("camus", i, tuple(size), seed):
            view = pair["pair_id"].rsplit("_", 1)[-1]
            n_frames = int(rng.integers(12, 25))
            stem = os.path.join(folder, f"{name}_{view}")
            _save(f"{stem}_ED.nii.gz", np.round(pair["moving"] * 255).astype(np.uint8), affine)
            _save(f"{stem}_ES.nii.gz", np.round(pair["fixed"] * 255).astype(np.uint8), affine)
            _save(f"{stem}_ED_gt.nii.gz", pair["moving_label"], affine)
            _save(f"{stem}_ES_gt.nii.gz", pair["fixed_label"], affine)
            _write_cfg(os.path.join(folder, f"Info_{view}.cfg"), {
                "ED": 1, "ES": n_frames, "NbFrame": n_frames, "Sex": "MF"[i % 2],
                "Age": int(rng.integers(25, 90)), "ImageQuality": ("Good", "Medium", "Poor")[i % 3],
                "EF": round(float(rng.uniform(25, 70)), 1), "FrameRate": 30})
        names.append(name)
    if split_files:
        split_dir = os.path.join(out, "database_split")
        os.makedirs(split_dir, exist_ok=True)
        parts = split_names(names, seed, (0.6, 0.2, 0.2))
        for part, file in zip(parts, ("training", "validation", "testing")):
            with open(os.path.join(split_dir, f"subgroup_{file}.txt"), "w", encoding="utf-8") as f:
                f.writelines(n + "\n" for n in part)
    return names


# ------------------------------------------------------------------------------------ pairs
def write_pairs(out: str, subjects: int, size=DEFAULT_SIZE["pairs"], seed: int = 0,
                split_column: bool = False) -> list[str]:
    """``subjects`` echo3d phantom pairs in ``out/volumes`` listed in ``out/pairs.csv``."""
    os.makedirs(os.path.join(out, "volumes"), exist_ok=True)
    parts = split_names([f"subject{i:03d}" for i in range(subjects)], seed, (0.6, 0.2, 0.2))
    split_of = {n: s for s, names in zip(("train", "val", "test"), parts) for n in names}
    rows, names = [], []
    for i in range(subjects):
        name = f"subject{i:03d}"
        (pair,) = synthetic.make_subject("echo3d", i, tuple(size), seed)
        affine = np.diag([0.7, 0.7, 0.7, 1.0])
        files = {}
        for key, phase, suffix in (("moving", "ED", ""), ("fixed", "ES", ""),
                                   ("moving_label", "ED", "_gt"), ("fixed_label", "ES", "_gt")):
            rel = f"volumes/{name}_{phase}{suffix}.nii.gz"
            data = pair[key] if key.endswith("label") else pair[key].astype(np.float32)
            _save(os.path.join(out, rel), data, affine)
            files[key] = rel
        rows.append(dict(files, split=split_of[name]) if split_column else files)
        names.append(name)
    with open(os.path.join(out, "pairs.csv"), "w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return names


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m hetreg_jax.data.layouts",
        description="Write synthetic phantoms in the on-disk layout of ACDC, CAMUS or paired volumes.")
    parser.add_argument("--layout", required=True, choices=("acdc", "camus", "pairs"))
    parser.add_argument("--out", required=True, help="folder to write (the dataset root)")
    parser.add_argument("--subjects", type=int, default=10, help="patients (ACDC: in training/)")
    parser.add_argument("--size", default=None, help="native image size, e.g. 216,256 (default per layout)")
    parser.add_argument("--slices", type=int, default=8, help="ACDC: short-axis slices per patient")
    parser.add_argument("--testing", type=int, default=0, help="ACDC: patients in testing/")
    parser.add_argument("--split_files", action="store_true", help="CAMUS: write database_split/")
    parser.add_argument("--split_column", action="store_true", help="pairs: add a split column")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    size = DEFAULT_SIZE[args.layout] if args.size is None else tuple(int(n) for n in args.size.split(","))
    if args.layout == "acdc":
        names = write_acdc(args.out, args.subjects, size, args.slices, args.seed, args.testing)
    elif args.layout == "camus":
        names = write_camus(args.out, args.subjects, size, args.seed, args.split_files)
    else:
        names = write_pairs(args.out, args.subjects, size, args.seed, args.split_column)
    print(f"wrote {len(names)} {args.layout} subjects ({'x'.join(map(str, size))}) to {args.out}")


if __name__ == "__main__":
    main()
