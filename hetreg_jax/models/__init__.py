"""Model registry and parameter helpers.

``get_model(name, **kwargs)`` builds a Flax Linen module by name (see ``MODEL_NAMES``); every model
is called as ``model.apply({"params": params}, a, b)`` on two ``[B, *S, 1]`` images (moving, fixed
for the displacement estimators; warped, fixed for the variance estimator). ``transmorph`` is
imported only when asked for.
"""

from __future__ import annotations

import importlib
import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from hetreg_jax.base.errors import InputError
from hetreg_jax.models.unet import UNet
from hetreg_jax.models.variance import VarianceUNet
from hetreg_jax.models.voxelmorph import VoxelMorph

# name -> (module path, class name); imported lazily so that a missing optional model costs nothing.
_REGISTRY = {
    "voxelmorph": ("hetreg_jax.models.voxelmorph", "VoxelMorph"),
    "variance_unet": ("hetreg_jax.models.variance", "VarianceUNet"),
    "transmorph": ("hetreg_jax.models.transmorph", "TransMorph"),
}
MODEL_NAMES = tuple(_REGISTRY)

__all__ = ["MODEL_NAMES", "UNet", "VarianceUNet", "VoxelMorph", "count_params", "get_model",
           "init_params"]


def get_model(name: str, **kwargs: Any) -> nn.Module:
    """Build the model called ``name`` with ``kwargs`` as its attributes; ``InputError`` if unknown."""
    if name not in _REGISTRY:
        raise InputError(f"unknown model {name!r}; known models: {', '.join(MODEL_NAMES)}")
    module_path, class_name = _REGISTRY[name]
    return getattr(importlib.import_module(module_path), class_name)(**kwargs)


def init_params(model: nn.Module, rng: jax.Array, image_shape: Sequence[int], batch: int = 1):
    """Initialise ``model`` for two images ``[batch, *image_shape, 1]``; returns ``params``.

    ``image_shape`` is the spatial shape only (``ndim`` = its length). Only shapes matter, so
    ``jax.eval_shape(lambda: init_params(...))`` gives the tree of ``ShapeDtypeStruct`` without
    allocating or computing; the convolutional models' parameters do not depend on the spatial
    size (any size the model accepts gives the same tree). ``rng`` seeds both the ``params`` and
    ``dropout`` streams (models without dropout ignore the latter).
    """
    image = jax.ShapeDtypeStruct((batch, *image_shape, 1), jnp.float32)
    params_rng, dropout_rng = jax.random.split(rng)
    # lazy_init: the initialisers alone, without the forward pass (the same bits as ``init``).
    variables = model.lazy_init({"params": params_rng, "dropout": dropout_rng}, image, image)
    return variables["params"]


def count_params(params) -> int:
    """Number of scalars in a parameter pytree (arrays or ``ShapeDtypeStruct`` leaves)."""
    return sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(params))
