"""Datasets as in-memory pair sets, and the seeded batch sampler.

A split is a dict of stacked numpy arrays: ``moving``/``fixed`` ``[N, *S, 1]`` float32 in [0, 1]
(moving = ED, fixed = ES), ``moving_label``/``fixed_label`` ``[N, *S]`` uint8, optionally
``displacement`` ``[N, *S, ndim]`` (ground truth, phantoms only) and ``noise_sigma`` ``[N, *S, 1]``,
plus the lists ``subject`` and ``pair_id``.

On-disk datasets (``config.data.root`` set) add ``spacing`` ``[N, ndim]`` (mm per voxel of the
network grid) and ``raw_range`` ``[N, 2]`` (min and max of the two raw images before
normalisation). The layout of the folder decides the loader (``detect_layout``): ``training/`` ->
ACDC, ``database_nifti/`` -> CAMUS, ``pairs.csv`` -> paired volumes, or short-axis stacks
registered slice by slice (``slices=yes``, ``pairs.py``); ``config.data.dataset`` only breaks ties. Every split is by subject (patient), seeded by ``config.seed``.

Cross-validation (``config.data.folds`` = F >= 3, ``config.data.fold`` = k): every subject the
layout lists (the layout's own split, e.g. ACDC's ``testing/`` or CAMUS's split files, is set aside)
is dealt into F folds of near-equal size by a seeded permutation (``fold_names``); the test split is
fold k, the validation split fold (k + 1) mod F and the training split the other F - 2 folds (5 folds:
60/20/20, as the default split). The F runs k = 0 .. F - 1 of one seed test every subject once.

Batches for step ``t`` are drawn with replacement from a generator seeded by ``(seed, t)``: the data
order depends only on the seed and the step, so a resumed run sees exactly the batches the
uninterrupted run would have seen.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
from typing import Callable, Mapping, Sequence

import numpy as np

from hetreg_jax.base.errors import InputError
from hetreg_jax.data import structures, synthetic
from hetreg_jax.data.nifti import DataError

SPLITS = ("train", "val", "test")
IMAGE_KEYS = ("moving", "fixed")
MYOCARDIUM = 2
# layout name -> the entry of data.root that identifies it (and the loader module's name)
LAYOUT_MARKERS = {"acdc": "training", "camus": "database_nifti", "pairs": "pairs.csv"}
_PREFERRED_LAYOUT = {"acdc": "acdc", "camus": "camus", "echo3d": "pairs", "pairs": "pairs"}
_PAIR_ARRAYS = ("moving", "fixed", "moving_label", "fixed_label", "spacing", "raw_range")


@dataclasses.dataclass(frozen=True)
class Subject:
    """One patient of an on-disk dataset: its split and a loader returning its pairs.

    ``load()`` returns a list of pair dicts (``moving``/``fixed`` ``[*S]`` float32 in [0, 1],
    ``moving_label``/``fixed_label`` ``[*S]`` uint8, ``spacing`` ``[ndim]``, ``raw_range`` ``[2]``,
    ``subject``, ``pair_id``) and raises ``DataError`` on a bad file.
    """
    name: str
    split: str
    load: Callable[[], list]


def split_names(names: Sequence[str], seed: int, fractions: Sequence[float]) -> list[list[str]]:
    """Seeded split of subject names into ``len(fractions)`` groups (each sorted).

    The names are sorted, permuted by ``default_rng([seed, 1001])`` and cut: every group after the
    first gets ``max(1, round(n * f))`` names, the first the rest (at least one). The result depends
    only on the set of names and the seed.
    """
    names = sorted(names)
    k, n = len(fractions), len(names)
    if n < k:
        raise InputError(f"{n} subjects cannot be split {k} ways ({tuple(fractions)}); need at least {k}")
    counts = [max(1, int(round(n * f))) for f in fractions[1:]]
    while n - sum(counts) < 1:
        counts[int(np.argmax(counts))] -= 1
    perm = np.random.default_rng([int(seed), 1001]).permutation(n)
    cuts = np.cumsum([n - sum(counts)] + counts)[:-1]
    return [sorted(names[i] for i in part) for part in np.split(perm, cuts)]


def fold_names(names: Sequence[str], seed: int, folds: int) -> list[list[str]]:
    """The subjects dealt into ``folds`` folds (each sorted): the sorted names permuted by
    ``default_rng([seed, 1002])`` and cut into ``folds`` near-equal parts (``np.array_split``: the
    first ``n % folds`` folds have one subject more). Depends only on the set of names and the seed."""
    names = sorted(names)
    if folds < 3 or len(names) < folds:
        raise InputError(f"config.data.folds={folds}: need 3 <= folds <= the number of subjects ({len(names)})")
    perm = np.random.default_rng([int(seed), 1002]).permutation(len(names))
    return [sorted(names[i] for i in part) for part in np.array_split(perm, folds)]


def fold_splits(names: Sequence[str], seed: int, folds: int, fold: int) -> dict[str, list[str]]:
    """``{"train", "val", "test"} -> names`` of cross-validation fold ``fold`` (module docstring)."""
    if not 0 <= fold < folds:
        raise InputError(f"config.data.fold={fold}: must be in 0 .. config.data.folds - 1 = {folds - 1}")
    parts = fold_names(names, seed, folds)
    val = (fold + 1) % folds
    return {"train": sorted(n for i, p in enumerate(parts) if i not in (fold, val) for n in p),
            "val": parts[val], "test": parts[fold]}


def evaluated(splits: Mapping[str, Mapping], config) -> dict:
    """The pairs the test evaluation scores: the test split, or with ``eval.split="all"`` every pair
    of every split (a trained network tested on another dataset)."""
    if config.eval.get("split", "test") == "all":
        return concat([splits[name] for name in SPLITS if num_pairs(splits[name])])
    return splits["test"]


def refuse_all_split(config) -> None:
    """Training evaluates its own test split: ``eval.split="all"`` would score its training pairs."""
    if config.eval.get("split", "test") != "test":
        raise InputError(f"config.eval.split={config.eval.split!r} scores every pair, training pairs included: "
                         "use it with --mode=eval (and --out) to test a trained network on other data")


def concat(sets: Sequence[Mapping]) -> dict:
    """Pair sets concatenated (the same keys in each)."""
    keys = list(sets[0])
    return {k: (np.concatenate([s[k] for s in sets]) if isinstance(sets[0][k], np.ndarray)
                else [x for s in sets for x in s[k]]) for k in keys}


def refold(splits: Mapping[str, Mapping], seed: int, folds: int, fold: int) -> dict[str, dict]:
    """The pairs of every split regrouped by subject into cross-validation fold ``fold``."""
    every = concat([splits[name] for name in SPLITS])
    groups = fold_splits(sorted(set(every["subject"])), seed, folds, fold)
    return {name: take(every, [i for i, s in enumerate(every["subject"]) if s in set(groups[name])])
            for name in SPLITS}


def stack_pairs(pairs: list[dict], image_size: Sequence[int]) -> dict:
    """Stack pair dicts into a pair set (see the module docstring); an empty list gives empty arrays."""
    shape = tuple(int(n) for n in image_size)
    empty = {"moving": (*shape, 1), "fixed": (*shape, 1), "moving_label": shape,
             "fixed_label": shape, "spacing": (len(shape),), "raw_range": (2,)}
    out = {}
    for key in _PAIR_ARRAYS:
        dtype = np.uint8 if key.endswith("label") else np.float32
        if pairs:
            arr = np.stack([np.asarray(p[key], dtype) for p in pairs])
            out[key] = arr[..., None] if key in IMAGE_KEYS else arr
        else:
            out[key] = np.zeros((0, *empty[key]), dtype)
    out["subject"] = [p["subject"] for p in pairs]
    out["pair_id"] = [p["pair_id"] for p in pairs]
    return out


def detect_layout(root: str, dataset: str | None = None) -> str:
    """``"acdc"``, ``"camus"`` or ``"pairs"`` from the entries of ``root`` (``dataset`` breaks ties)."""
    if not os.path.isdir(root):
        raise DataError(root, "config.data.root is not a folder")
    found = [name for name, marker in LAYOUT_MARKERS.items() if os.path.exists(os.path.join(root, marker))]
    if not found:
        expected = ", ".join(f"{m} ({n})" for n, m in LAYOUT_MARKERS.items())
        raise DataError(root, f"unknown dataset layout: expected one of {expected} in this folder")
    preferred = _PREFERRED_LAYOUT.get(dataset)
    return preferred if preferred in found else found[0]


def load_dataset(config, strict: bool = True) -> tuple[dict[str, dict], dict]:
    """``(splits, info)``: the pair sets and ``info`` = ``layout``, ``root``, ``skipped``
    (``[{"subject", "reason"}]``). ``strict``: the first bad subject raises its ``DataError``
    (training); otherwise bad subjects are listed in ``skipped`` and the rest loaded (inspect)."""
    data = config.data
    if data.root is None:
        if data.dataset not in synthetic.KINDS:
            raise InputError(f"config.data.dataset={data.dataset!r}; phantom kinds: {synthetic.KINDS}")
        splits = synthetic.make_dataset(
            data.dataset, tuple(data.image_size), data.synthetic_subjects, config.seed,
            slices_per_subject=data.slices_per_subject, noise_scale=float(data.noise_scale))
        if data.folds:
            splits = refold(splits, config.seed, int(data.folds), int(data.fold))
        return splits, {"layout": "synthetic", "root": None, "skipped": []}
    root = os.path.abspath(os.path.expanduser(data.root))
    layout = detect_layout(root, data.dataset)
    loader = importlib.import_module(f"hetreg_jax.data.{layout}")
    pairs: dict[str, list] = {name: [] for name in SPLITS}
    skipped = []
    options = {"centre": data.centre} if layout == "acdc" else {}  # where the ACDC crop is centred
    if layout == "pairs":  # each ED label map must hold one of the scored structures (pairs.py)
        options["structures"] = structures.resolve(data.structures, layout)
        options["centre"] = data.centre
    for subject in loader.subjects(root, tuple(data.image_size), config.seed, **options):
        try:
            pairs[subject.split].extend(subject.load())
        except DataError as exc:
            if strict:
                raise
            skipped.append({"subject": subject.name, "reason": str(exc)})
    splits = {name: stack_pairs(pairs[name], data.image_size) for name in SPLITS}
    if data.folds:
        splits = refold(splits, config.seed, int(data.folds), int(data.fold))
    return splits, {"layout": layout, "root": root, "skipped": skipped}


def load_splits(config) -> dict[str, dict]:
    """``{"train", "val", "test"} -> pair set`` for ``config.data``; refuses bad data and empty splits."""
    splits, info = load_dataset(config, strict=True)
    for name in SPLITS:
        if len(splits[name]["moving"]) == 0:
            hint = ("use more subjects (config.data.synthetic_subjects)" if info["root"] is None
                    else f"check the dataset in {info['root']} (python main.py --mode=inspect)")
            raise InputError(f"the {name} split is empty; {hint}")
    return splits


def num_pairs(pairs: Mapping) -> int:
    return len(pairs["moving"])


def batch_indices(seed: int, step: int, n: int, batch_size: int) -> np.ndarray:
    """The pair indices of step ``step``'s global batch (sampled with replacement)."""
    return np.random.default_rng([int(seed), int(step)]).integers(0, n, size=batch_size)


def training_batch(pairs: Mapping, seed: int, step: int, batch_size: int, rows: slice) -> dict:
    """The rows ``rows`` (this process's share) of step ``step``'s global batch of images."""
    idx = batch_indices(seed, step, num_pairs(pairs), batch_size)[rows]
    return {k: pairs[k][idx] for k in IMAGE_KEYS}


def take(pairs: Mapping, index) -> dict:
    """A sub-set of a pair set (arrays and lists alike)."""
    index = np.asarray(index, dtype=np.int64)
    return {k: (v[index] if isinstance(v, np.ndarray) else [v[i] for i in index]) for k, v in pairs.items()}
