"""One data mesh over all devices: batches sharded along 'data', parameters replicated.

Global batches are built from process-local data with ``jax.make_array_from_process_local_data``,
so the same code runs on one CPU, one GPU, 4 fake CPU devices or a multi-host TPU slice.
"""

from __future__ import annotations

import collections
import os
from typing import Any, Mapping, Sequence

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from hetreg_jax.base import runtime
from hetreg_jax.base.errors import InputError

DATA_AXIS = "data"

# How many dispatched steps may be unfinished at once (see `InFlight`). XLA:CPU admits 32
# computations per device; the bound keeps well below that, and 8 steps of look-ahead are plenty
# to hide Python dispatch on any backend.
MAX_IN_FLIGHT = 8

# XLA:CPU aborts the process when a collective waits longer than this for its other participants
# (its own default is 40 s): raised so that long, uneven steps (3D on a loaded CPU) are not killed.
# A value the user sets in XLA_FLAGS wins.
CPU_COLLECTIVE_TIMEOUTS = {"xla_cpu_collective_call_terminate_timeout_seconds": 1800,
                           "xla_cpu_collective_call_warn_stuck_timeout_seconds": 120}


def make_mesh(devices: Sequence[jax.Device] | None = None) -> jax.sharding.Mesh:
    """A 1-D ``('data',)`` mesh over ``devices`` (default: every device of every process)."""
    devices = list(devices) if devices is not None else jax.devices()
    # Auto axes: XLA propagates shardings from the sharded batch and the replicated state (JAX 0.10's
    # make_mesh defaults to Explicit axes, which would require sharding annotations in every op).
    return jax.make_mesh((len(devices),), (DATA_AXIS,), devices=devices,
                         axis_types=(jax.sharding.AxisType.Auto,))


def batch_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
    """Leading (batch) axis split over the data axis; the other axes whole."""
    return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
    """A full copy on every device (parameters, optimiser states, step counters)."""
    return NamedSharding(mesh, P())


def check_batch_size(global_batch: int, mesh: jax.sharding.Mesh) -> int:
    """Return the per-process batch size; the global batch must split evenly over devices."""
    n_dev = mesh.devices.size
    if global_batch <= 0 or global_batch % n_dev:
        raise InputError(
            f"batch_size={global_batch} must be a positive multiple of the number of devices ({n_dev})")
    return global_batch // jax.process_count()


def global_batch(local: Mapping[str, np.ndarray], mesh: jax.sharding.Mesh) -> dict[str, jax.Array]:
    """Assemble each process-local array ``[local_B, ...]`` into a global batch sharded on 'data'."""
    sharding = batch_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in local.items()}


def replicate(tree: Any, mesh: jax.sharding.Mesh) -> Any:
    """Place a pytree on every device of the mesh."""
    return jax.device_put(tree, replicated(mesh))


def process_slice(global_size: int) -> slice:
    """The rows of a global batch that this process provides."""
    local = global_size // jax.process_count()
    start = jax.process_index() * local
    return slice(start, start + local)


def cpu_device_count(batch_sizes: Sequence[int], cores: int | None = None) -> int:
    """How many XLA CPU devices to split this host into: the most, up to one per core, that divides
    every batch size (so each device gets whole pairs)."""
    cores = cores or len(os.sched_getaffinity(0))
    for n in range(max(1, min([cores, *batch_sizes])), 0, -1):
        if all(b % n == 0 for b in batch_sizes):
            return n
    return 1


class InFlight:
    """Bounds how far the host dispatches ahead of the devices.

    JAX dispatches asynchronously, so a loop that does not read its results queues every step at
    once. On XLA:CPU with several devices that deadlocks: each device admits 32 unfinished
    computations, launches beyond that block the client's launch threads (one per core), and the
    launch that an all-reduce is waiting for never runs; after 40 s XLA aborts the process
    ("Termination timeout for all reduce ... only 1 of them arrived"). ``push(x)`` after each
    dispatch waits for the step ``depth`` dispatches back, so at most ``depth`` are ever queued.
    """

    def __init__(self, depth: int = MAX_IN_FLIGHT):
        if depth < 1:
            raise ValueError(f"in-flight depth must be >= 1, got {depth}")
        self.depth = depth
        self._queue: collections.deque = collections.deque()

    def push(self, outputs: Any) -> None:
        """Record a dispatched step's outputs (any pytree of arrays); wait for the oldest if full."""
        self._queue.append(outputs)
        while len(self._queue) > self.depth:
            jax.block_until_ready(self._queue.popleft())

    def __len__(self) -> int:
        return len(self._queue)


def set_cpu_collective_timeouts(timeouts: Mapping[str, int] = CPU_COLLECTIVE_TIMEOUTS) -> str:
    """Add XLA:CPU's collective time-outs to ``XLA_FLAGS`` (those the user has not set); before any
    JAX computation. Returns the resulting ``XLA_FLAGS``."""
    flags = os.environ.get("XLA_FLAGS", "")
    extra = [f"--{name}={value}" for name, value in timeouts.items() if f"--{name}=" not in flags]
    os.environ["XLA_FLAGS"] = " ".join([flags, *extra]).strip()
    return os.environ["XLA_FLAGS"]


def configure_cpu_devices(batch_sizes: Sequence[int], requested: int = 0) -> int:
    """Before any JAX computation: expose the CPU as ``requested`` devices (0 = ``cpu_device_count``),
    set the collective time-outs (`CPU_COLLECTIVE_TIMEOUTS`) and the process-wide settings of
    `hetreg_jax.base.runtime.setup` (compilation cache, deterministic GPU ops).

    Many XLA:CPU kernels (convolutions included) run on one thread, so a data mesh with one CPU device
    per core keeps every core busy (on 2 cores: 21.9 vs 17.5 training pairs/s, see docs/speed.md). It
    only affects the CPU backend; on a GPU or TPU host the mesh still spans the accelerators.
    """
    n = requested or cpu_device_count(batch_sizes)
    runtime.setup()  # the persistent compilation cache and deterministic GPU ops (runtime.py)
    set_cpu_collective_timeouts()
    jax.config.update("jax_num_cpu_devices", n)
    return n


def initialize(batch_sizes: Sequence[int], cpu_devices: int = 0, distributed: bool = False,
               coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> None:
    """Set up the runtime before any JAX computation: the CPU device count, then, for a multi-process
    run, ``jax.distributed.initialize`` (no arguments auto-detects Cloud TPU and SLURM; on CPU hosts
    give the coordinator, the process count and this process's id; collectives use gloo)."""
    per_process = max(1, num_processes or 1)
    configure_cpu_devices([max(1, b // per_process) for b in batch_sizes], cpu_devices)
    if distributed or coordinator_address:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                                   process_id=process_id)
