"""Datasets as in-memory pair sets, and the seeded batch sampler.

A split is a dict of stacked numpy arrays: ``moving``/``fixed`` ``[N, *S, 1]`` float32 in [0, 1]
(moving = ED, fixed = ES), ``moving_label``/``fixed_label`` ``[N, *S]`` uint8, optionally
``displacement`` ``[N, *S, ndim]`` (ground truth, phantoms only) and ``noise_sigma`` ``[N, *S, 1]``,
plus the lists ``subject`` and ``pair_id``.

Batches for step ``t`` are drawn with replacement from a generator seeded by ``(seed, t)``: the data
order depends only on the seed and the step, so a resumed run sees exactly the batches the
uninterrupted run would have seen.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from hetreg_jax.data import synthetic

SPLITS = ("train", "val", "test")
IMAGE_KEYS = ("moving", "fixed")


def load_splits(config) -> dict[str, dict]:
    """``{"train", "val", "test"} -> pair set`` for ``config.data``."""
    data = config.data
    if data.root is None:
        if data.dataset not in synthetic.KINDS:
            raise ValueError(f"config.data.dataset={data.dataset!r}; phantom kinds: {synthetic.KINDS}")
        splits = synthetic.make_dataset(
            data.dataset, tuple(data.image_size), data.synthetic_subjects, config.seed,
            slices_per_subject=data.slices_per_subject)
    else:
        raise ValueError(
            f"config.data.root={data.root!r}: loaders for on-disk datasets are not available in this "
            "version; leave data.root unset to train on the built-in phantoms")
    for name in SPLITS:
        if len(splits[name]["moving"]) == 0:
            raise ValueError(f"the {name} split is empty; use more subjects (config.data.synthetic_subjects)")
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
    index = np.asarray(index)
    return {k: (v[index] if isinstance(v, np.ndarray) else [v[i] for i in index]) for k, v in pairs.items()}
