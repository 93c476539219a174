"""How training batches reach the steps: from data kept on the devices, several steps per call, or
from the host, one step per call.

- **On the devices** (``data.on_device``: ``"auto"`` when it fits, or ``"device"``): the training
  split's images are placed once on every device (replicated); each call runs K =
  ``steps_per_call`` iterations (`step.Trainer.train_chunk`), each gathering its batch on the
  devices from the indices that ``default_rng([seed, t])`` gives, the same indices as the host path.
  No host gather, no host-to-device copy and one dispatch per K steps. In the ``"loop"`` form
  (`step.chunk_form`) the K steps are a ``jax.lax.fori_loop`` whose trip count is a run-time
  value, so every chunk length up to K runs the same compiled program and gives the same
  floating-point results: K = 1 and K = 4 end with bit-identical parameters (tested). In the
  ``"unrolled"`` form (the default on XLA:CPU) they are one straight-line program; a chunk shorter
  than K runs as one-step calls (two compilations), and the results agree with K = 1 to rounding.
- **On the host** (``"host"``; or ``"auto"`` when the split would take more than a quarter of one
  device's memory, or 2 GiB where the device does not report its memory; or ``"auto"`` on a CPU
  with ``steps_per_call=1``, where the "device" is the host and the copy a memcpy): numpy gathers
  each batch and copies it to the devices, one call per step. The two paths draw the same batches;
  their compiled programs differ, so their parameters agree to float rounding (about 1e-7 after 20
  steps), not bit for bit.

**Batch order** (``data.order``). ``"host"`` (the default, and the order of every run made before
the key existed): step t's indices are ``default_rng([seed, t]).integers(0, n, batch)``, drawn by
numpy and sent with each call (a ``[K, batch]`` int32 array). ``"device"``: the compiled chunk draws
them itself with ``jax.random`` from the seed (a traced hyper-parameter) and the state's step
(`step.drawn_batch_indices`), so a call carries no per-step data at all; the host path draws the
same indices with the same function, and the two paths again agree to rounding. The two orders give
different batches, so a run keeps the order it was started with (a resumed run with another order
is refused as a config change).

A chunk never crosses a log, validation or checkpoint step, a phase change (warm start) or the end,
so logging, validation, checkpoints, Ctrl-C and the non-finite check happen at exactly the same
steps whatever K is (a chunk cut short at such a step is simply shorter).
"""

from __future__ import annotations

from typing import Mapping

import jax
import numpy as np

from hetreg_jax.base import sharding
from hetreg_jax.base.errors import InputError
from hetreg_jax.data import pipeline
from hetreg_jax.train.step import chunk_form, drawn_batch_indices, hparams

AUTO_FRACTION = 0.25         # "auto": on the devices up to this share of one device's memory
AUTO_LIMIT_BYTES = 2 << 30   # ... or up to this where the device does not report its memory (CPU)

# data.order="device" on the host path: the draws of the compiled chunks, computed one step at a time.
_drawn = jax.jit(drawn_batch_indices, static_argnums=(2, 3))


def _device_memory_bytes(mesh) -> int | None:
    """One of this process's devices' memory (the mesh's first device may be another process's)."""
    local = [d for d in mesh.devices.flat if d.process_index == jax.process_index()]
    try:
        stats = local[0].memory_stats()
    except (AttributeError, IndexError, RuntimeError, ValueError):
        return None
    return stats.get("bytes_limit") if stats else None


def placement(pairs: Mapping, config, mesh) -> tuple[bool, str]:
    """Whether the training images go on the devices, and a sentence saying why."""
    mode, k = config.data.on_device, config.steps_per_call
    size = sum(pairs[key].nbytes for key in pipeline.IMAGE_KEYS)
    what = f"training data: {pipeline.num_pairs(pairs)} pairs ({size / 2**20:.1f} MiB)"
    if mode == "host":
        return False, f"{what} kept on the host (data.on_device='host'), one step per call"
    if mode == "device":
        return True, f"{what} placed on every device (data.on_device='device'), {k} step(s) per call"
    limit_bytes = _device_memory_bytes(mesh)
    limit = AUTO_LIMIT_BYTES if limit_bytes is None else AUTO_FRACTION * limit_bytes
    if size > limit:
        return False, (f"{what} kept on the host, one step per call: more than {limit / 2**20:.0f} MiB "
                       f"({'2 GiB' if limit_bytes is None else 'a quarter of one device'})")
    if mesh.devices.flat[0].platform == "cpu" and k == 1:
        return False, f"{what} kept on the host (a CPU run with steps_per_call=1), one step per call"
    form = chunk_form(config, mesh)
    slow = (" (on XLA:CPU a loop of steps runs 8-10x slower than single steps: use "
            "steps_per_call_form='unrolled' there)" if mesh.devices.flat[0].platform == "cpu" and k > 1
            and form == "loop" else "")
    how = f", {form}" if k > 1 else ""
    return True, f"{what} placed on every device, {k} step(s) per call{how}{slow}"


def chunk_end(config, phase_of, start: int, k: int) -> int:
    """The step (exclusive) where the chunk starting at ``start`` ends (see the module docstring)."""
    end = min(start + k, config.num_steps)
    for every in (config.log_every, config.checkpoint_every, config.eval_every):
        if every:
            end = min(end, (start // every + 1) * every)
    phase = phase_of(start)
    for step in range(start + 1, end):
        if phase_of(step) != phase:
            return step
    return end


class Feed:
    """Runs steps ``[start, end)`` of one phase and returns the new state and what to check later:
    ``[[(first step number, phase, measurements, count, row)]]``, one list per run of the state (here
    one), the measurements on the device: stacked ``[K]`` for a chunk, of which the first ``count``
    are valid (``[runs, K]`` with the run's ``row`` for `SeedFeed`), or scalars for a host step
    (``count`` and ``row`` None). They are sliced on the host when fetched
    (``loop.check_pending``), not on the device after each call."""

    def __init__(self, trainer, pairs: Mapping, config):
        self.trainer, self.pairs, self.config = trainer, pairs, config
        self.on_device, self.reason = placement(pairs, config, trainer.mesh)
        self.data = None
        if self.on_device:
            self.data = sharding.replicate({k: np.asarray(pairs[k]) for k in pipeline.IMAGE_KEYS},
                                           trainer.mesh)
        self.rows = sharding.process_slice(config.batch_size)
        self.n = pipeline.num_pairs(pairs)
        self.seeds = [config.seed]

    def member_state(self, state, i: int):
        """Run ``i``'s state (one run: the state itself)."""
        del i
        return state

    def run(self, state, start: int, end: int, phase: str):
        cfg = self.config
        if self.on_device and self.trainer.chunk_form == "unrolled" and end - start < cfg.steps_per_call:
            out = [[] for _ in self.seeds]  # a short chunk runs as one-step calls: two programs, K and 1 steps
            for t in range(start, end):
                state, measured = self._chunk(state, t, t + 1, phase, rows=1)
                for mine, more in zip(out, measured):
                    mine += more
            return state, out
        if self.on_device:
            return self._chunk(state, start, end, phase, rows=cfg.steps_per_call)
        out = []
        for t in range(start, end):
            batch = sharding.global_batch(self._host_batch(t), self.trainer.mesh)
            state, measures = self.trainer.train_step(phase)(state, batch)
            out.append((t + 1, phase, measures, None, None))
        return state, [out]

    def _indices(self, seed: int, start: int, end: int, rows: int) -> np.ndarray:
        if self.config.data.order == "device":  # drawn in the program: only the chunk's K travels
            return np.zeros((rows, 0), np.int32)
        indices = np.zeros((rows, self.config.batch_size), np.int32)
        for row, t in enumerate(range(start, end)):
            indices[row] = pipeline.batch_indices(seed, t, self.n, self.config.batch_size)
        return indices

    def _host_batch(self, t: int) -> dict:
        """This process's rows of step ``t``'s batch, gathered on the host (the host path)."""
        cfg = self.config
        if cfg.data.order == "host":
            return pipeline.training_batch(self.pairs, cfg.seed, t, cfg.batch_size, self.rows)
        index = np.asarray(_drawn(cfg.seed, t, self.n, cfg.batch_size))[self.rows]
        return {k: self.pairs[k][index] for k in pipeline.IMAGE_KEYS}

    def _chunk(self, state, start: int, end: int, phase: str, rows: int):
        indices, length = self._indices(self.config.seed, start, end, rows), np.int32(end - start)
        indices, length = sharding.replicate((indices, length), self.trainer.mesh)
        state, stacked = self.trainer.train_chunk(phase)(state, self.data, indices, length)
        return state, [[(start + 1, phase, stacked, end - start, None)]]


class SeedFeed(Feed):
    """Several runs that differ only in their traced hyper-parameters (seeds, γ, ...) trained in one
    program: their states stacked on a leading axis, each run's training split and data order (its
    seed's) stacked too, and ``jax.vmap`` over the chunk of steps (`step.StepPrograms.seed_chunk`).
    The data always stays on the devices. Measurements come back per run, as from `Feed`."""

    def __init__(self, trainers, pairs: list[Mapping], configs):
        # Not Feed.__init__: the first run's split alone is never placed on the devices.
        self.trainers, self.configs = list(trainers), list(configs)
        self.trainer, self.pairs, self.config = trainers[0], pairs[0], configs[0]
        counts = {pipeline.num_pairs(p) for p in pairs}
        if len(counts) != 1:
            raise InputError(f"the runs' training splits differ in size ({sorted(counts)} pairs): "
                             "train them one at a time")
        mesh = trainers[0].mesh
        self.n, self.on_device = counts.pop(), True
        size = sum(p[k].nbytes for p in pairs for k in pipeline.IMAGE_KEYS)
        self.reason = (f"training data: {len(pairs)} runs x {self.n} pairs ({size / 2**20:.1f} MiB) placed on "
                       f"every device, {self.config.steps_per_call} step(s) per call, runs vmapped")
        self.data = sharding.replicate({k: np.stack([np.asarray(p[k]) for p in pairs])
                                        for k in pipeline.IMAGE_KEYS}, mesh)
        host = [hparams(c) for c in self.configs]
        self.hparams = sharding.replicate({k: np.stack([h[k] for h in host]) for k in host[0]}, mesh)
        self.seeds = [c.seed for c in self.configs]

    def stack(self, states):
        """One state from the runs' states (a leading run axis)."""
        return sharding.replicate(jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]),
                                               *jax.device_get(states)), self.trainer.mesh)

    def member_state(self, state, i: int):
        """Run ``i``'s state, sliced from the stacked one."""
        return jax.tree.map(lambda x: x[i], state)

    def _chunk(self, state, start: int, end: int, phase: str, rows: int):
        indices = np.stack([self._indices(seed, start, end, rows) for seed in self.seeds])
        length = np.int32(end - start)
        indices, length = sharding.replicate((indices, length), self.trainer.mesh)
        program = self.trainer.programs.seed_chunk(phase)
        state, stacked = program(state, self.data, indices, length, self.hparams)
        return state, [[(start + 1, phase, stacked, end - start, i)] for i in range(len(self.seeds))]
