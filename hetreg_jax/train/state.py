"""One PyTree holding both parameter trees and both optimiser states."""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp


@flax.struct.dataclass
class TrainState:
    """Everything a training step reads and writes.

    ``variance_params`` and ``variance_opt_state`` are empty dicts for methods without a variance
    estimator, so the structure (and the checkpoint layout) is the same for every method.
    """

    step: jax.Array
    motion_params: Any
    variance_params: Any
    motion_opt_state: Any
    variance_opt_state: Any


def create(motion_params, variance_params, motion_tx, variance_tx) -> TrainState:
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        motion_params=motion_params,
        variance_params=variance_params,
        motion_opt_state=motion_tx.init(motion_params),
        variance_opt_state=variance_tx.init(variance_params),
    )
