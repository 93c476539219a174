"""Speed and memory benchmark of the full alternating training step and of inference.

    python -m hetreg_jax.bench --config=configs/acdc.py [--steps=30] [--config.batch_size=8]
    python -m hetreg_jax.bench --config=configs/default.py --sweep [--sweep_sizes=64x64,32x32x32] ...

Prints compile time, steady-state training pairs/s (one motion step + one variance step per
iteration, as trained; with ``--config.steps_per_call=K`` K iterations per call on data held by the
devices, as training then runs them), inference pairs/s (displacement + warped image), and peak memory (device
bytes on GPU/TPU; the process's peak resident set on CPU), with the compute dtype and remat setting.
The last line is one JSON object.

``--sweep`` runs the benchmark over models x sizes x steps_per_call x compute dtypes (and, for 3D
sizes with K = 1, with and without ``remat``), each configuration in its own subprocess (peak
memory is per process, and a configuration that runs out of memory or past ``--sweep_timeout`` is
reported as such), and prints one table plus one JSON line per configuration (``bench_sweep.py``).
"""

from __future__ import annotations

import json
import resource
import sys
import time

import jax
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from hetreg_jax.base import sharding
from hetreg_jax.base.errors import ONE_LINE_ERRORS
from hetreg_jax.cli import bench_sweep
from hetreg_jax.cli.bench_sweep import define_flags as _define_sweep_flags
from hetreg_jax.core import spatial
from hetreg_jax.train import step as steps_lib
from hetreg_jax.train.step import Trainer

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Path to a config file (configs/*.py).", lock_config=True)
flags.DEFINE_integer("steps", 30, "Timed training iterations (after one compile and one warm-up call).")
flags.DEFINE_integer("infer_batches", 30, "Timed inference batches.")
flags.DEFINE_integer("cpu_devices", 0, "XLA CPU devices (0 = one per core, as many as divide the batch).")
flags.DEFINE_integer("warmup_calls", 1, "Untimed training calls after the compile call.")
flags.DEFINE_boolean("compile_only", False, "Compile the training call and report XLA's memory plan only.")
flags.DEFINE_list("seeds_together", [], "Instead: training pairs/s of S seeds in one program (jax.vmap "
                  "over the stacked states, as --vmap_seeds trains) for each S listed, e.g. 1,3,8.")
flags.mark_flags_as_required(["config"])
_define_sweep_flags()


def _random_batch(config, mesh, rng):
    shape = (config.batch_size, *config.data.image_size, 1)
    local = {k: rng.random(shape, dtype=np.float32) for k in ("moving", "fixed")}
    return sharding.global_batch(local, mesh)


def _peak_memory_mb() -> tuple[float, str]:
    device = jax.devices()[0]
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    if stats and "peak_bytes_in_use" in stats:
        return stats["peak_bytes_in_use"] / 2**20, f"{device.platform} peak_bytes_in_use"
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20, "process peak RSS"


def _train_call(trainer, config, rng):
    """The timed training program and its arguments: one step on a host batch, or (steps_per_call
    K > 1) K steps on data held by the devices, as training runs them (see ``train/feed.py``); the
    run's traced hyper-parameters are the last argument. With ``data.order="host"`` the chunk's
    indices are drawn once and reused (training draws and copies a ``[K, batch]`` int32 array per
    call, which this leaves out); with ``"device"`` the program draws them itself, as in training."""
    phase = trainer.phase(10**9)  # the steady-state phase
    k = config.steps_per_call
    if k == 1:
        return trainer.programs.iteration[phase], (_random_batch(config, trainer.mesh, rng), trainer.hparams), 1
    n = max(64, config.batch_size)
    shape = (n, *config.data.image_size, 1)
    data = {key: rng.random(shape, dtype=np.float32) for key in ("moving", "fixed")}
    indices = rng.integers(0, n, (k, config.batch_size if config.data.order == "host" else 0)).astype(np.int32)
    data, indices, length = sharding.replicate((data, indices, np.int32(k)), trainer.mesh)
    return trainer.programs.chunk[phase], (data, indices, length, trainer.hparams), k


def _figures(rate: float) -> float:
    """A rate to 4 significant figures (a 3D step's 0.0213 pairs/s keeps its digits)."""
    return float(f"{rate:.4g}")


def _xla_memory_mb(compiled) -> dict:
    """XLA's buffer plan of a compiled call (per device): temporaries (activations kept for the
    backward pass, scratch) and arguments, in MiB; empty where the backend does not say."""
    try:
        stats = compiled.memory_analysis()
    except Exception:  # noqa: BLE001 - not every backend implements it
        stats = None
    if stats is None:
        return {}
    return {"xla_temp_mb": round(stats.temp_size_in_bytes / 2**20, 1),
            "xla_argument_mb": round(stats.argument_size_in_bytes / 2**20, 1)}


def benchmark(config, steps: int, infer_batches: int, warmup_calls: int = 1, compile_only: bool = False) -> dict:
    trainer = Trainer(config)
    rng = np.random.default_rng(0)
    batch = _random_batch(config, trainer.mesh, rng)
    state = trainer.init_state()
    call, args, per_call = _train_call(trainer, config, rng)

    t0 = time.perf_counter()
    call = call.lower(state, *args).compile()
    xla_memory = _xla_memory_mb(call)
    info = {"model": config.model, "method": config.method, "image_size": list(config.data.image_size),
            "batch_size": config.batch_size, "steps_per_call": config.steps_per_call,
            "compute_dtype": config.get("compute_dtype", "float32"), "remat": config.get("remat", "none"),
            "devices": f"{len(jax.devices())}x {jax.devices()[0].device_kind}", **xla_memory}
    if compile_only:
        peak_mb, peak_kind = _peak_memory_mb()
        return {**info, "compile_only": True, "compile_s": round(time.perf_counter() - t0, 2),
                "peak_memory_mb": round(peak_mb, 1), "peak_memory_kind": peak_kind}
    state, measures = call(state, *args)
    jax.block_until_ready(measures)
    compile_s = time.perf_counter() - t0  # compilation and the first call, as before
    for _ in range(warmup_calls):
        state, measures = call(state, *args)
        jax.block_until_ready(measures)

    calls = max(1, steps // per_call)
    in_flight = sharding.InFlight()  # as in training: a bounded queue of dispatched calls
    t0 = time.perf_counter()
    for _ in range(calls):
        state, measures = call(state, *args)
        in_flight.push(measures)
    jax.block_until_ready((state, measures))
    train_s = time.perf_counter() - t0
    steps = calls * per_call

    @jax.jit
    def register(params, moving, fixed):
        disp = trainer._motion_apply(params, moving, fixed)["displacement"]
        return disp, spatial.warp(moving, disp)

    t0 = time.perf_counter()
    jax.block_until_ready(register(state.motion_params, batch["moving"], batch["fixed"]))
    infer_compile_s = time.perf_counter() - t0
    jax.block_until_ready(register(state.motion_params, batch["moving"], batch["fixed"]))
    t0 = time.perf_counter()
    for _ in range(infer_batches):
        out = register(state.motion_params, batch["moving"], batch["fixed"])
        in_flight.push(out)
    jax.block_until_ready(out)
    infer_s = time.perf_counter() - t0

    peak_mb, peak_kind = _peak_memory_mb()
    return {
        **info, "compile_s": round(compile_s, 2), "infer_compile_s": round(infer_compile_s, 2),
        "train_pairs_per_s": _figures(steps * config.batch_size / train_s),
        "train_steps_per_s": _figures(steps / train_s),
        "infer_pairs_per_s": _figures(infer_batches * config.batch_size / infer_s),
        "peak_memory_mb": round(peak_mb, 1), "peak_memory_kind": peak_kind,
        "final_loss_finite": bool(np.all(np.isfinite(np.asarray(measures["motion_loss"])))),
    }


def seeds_together(config, counts, steps: int) -> list[dict]:
    """Training pairs/s of S runs (seeds 0..S-1) in one program, for each S in ``counts``: S = 1 is the
    single run's chunk of ``steps_per_call`` steps on data held by the devices, S > 1 its ``jax.vmap``
    over stacked states, data and indices (``StepPrograms.seed_chunk``). Random data, the steady-state
    phase; the figures are all seeds' pairs together."""
    trainer = Trainer(config)
    programs, mesh, k = trainer.programs, trainer.mesh, config.steps_per_call
    phase = trainer.phase(10**9)
    rng = np.random.default_rng(0)
    n = max(64, config.batch_size)
    rows = []
    for count in counts:
        shape = (count, n, *config.data.image_size, 1)
        data = {key: rng.random(shape, dtype=np.float32) for key in ("moving", "fixed")}
        indices = rng.integers(0, n, (count, k, config.batch_size if config.data.order == "host" else 0)
                               ).astype(np.int32)
        hp = [steps_lib.hparams(config) for _ in range(count)]
        for seed, h in enumerate(hp):
            h["seed"] = np.int32(seed)
        states = [programs.fresh_state(seed) for seed in range(count)]
        if count == 1:
            def call(state, args, program=programs.chunk[phase]):
                return program(state, *args)
            state = sharding.replicate(states[0], mesh)
            args = sharding.replicate(({key: v[0] for key, v in data.items()}, indices[0], np.int32(k), hp[0]), mesh)
        else:
            def call(state, args, program=programs.seed_chunk(phase)):
                return program(state, *args)
            state = sharding.replicate(jax.tree.map(lambda *xs: np.stack(xs), *jax.device_get(states)), mesh)
            args = sharding.replicate((data, indices, np.int32(k), {key: np.stack([h[key] for h in hp])
                                                                   for key in hp[0]}), mesh)
        t0 = time.perf_counter()
        state, measures = call(state, args)
        jax.block_until_ready(measures)
        compile_s = time.perf_counter() - t0
        state, measures = call(state, args)
        jax.block_until_ready(measures)
        calls = max(1, steps // k)
        t0 = time.perf_counter()
        for _ in range(calls):
            state, measures = call(state, args)
        jax.block_until_ready((state, measures))
        seconds = time.perf_counter() - t0
        rows.append({"seeds": count, "compile_s": round(compile_s, 2),
                     "train_pairs_per_s": _figures(count * calls * k * config.batch_size / seconds)})
    single = next((r["train_pairs_per_s"] for r in rows if r["seeds"] == 1), None)
    for row in rows:
        row["vs_one_seed"] = round(row["train_pairs_per_s"] / single, 2) if single else None
    return rows


def main(argv):
    """``python -m hetreg_jax.bench``; a bad input or an OS error in one line (exit status 1)."""
    del argv
    try:
        run()
    except ONE_LINE_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)


def run() -> None:
    if FLAGS.seeds_together:
        sharding.configure_cpu_devices([FLAGS.config.batch_size], FLAGS.cpu_devices)
        config = FLAGS.config
        print(f"device            {len(jax.devices())}x {jax.devices()[0].device_kind}")
        print(f"model / method    {config.model} / {config.method}, {list(config.data.image_size)}, batch "
              f"{config.batch_size}, {config.steps_per_call} step(s) per call")
        for row in seeds_together(config, [int(c) for c in FLAGS.seeds_together], FLAGS.steps):
            print(f"{row['seeds']} seed(s) in one program: {row['train_pairs_per_s']:.1f} pairs/s "
                  f"(x{row['vs_one_seed']} one seed's), compile {row['compile_s']:.1f} s")
            print(json.dumps(row))
        return
    if FLAGS.sweep:
        bench_sweep.main(FLAGS)
        return
    sharding.configure_cpu_devices([FLAGS.config.batch_size], FLAGS.cpu_devices)
    result = benchmark(FLAGS.config, FLAGS.steps, FLAGS.infer_batches, FLAGS.warmup_calls, FLAGS.compile_only)
    print(f"device            {result['devices']}")
    print(f"model / method    {result['model']} / {result['method']}, {result['image_size']}, "
          f"batch {result['batch_size']}, {result['steps_per_call']} step(s) per call, "
          f"{result['compute_dtype']}, remat {result['remat']}")
    if "xla_temp_mb" in result:
        print(f"XLA memory plan   {result['xla_temp_mb']:.0f} MiB temporaries, "
              f"{result['xla_argument_mb']:.0f} MiB arguments (per device, training call)")
    if FLAGS.compile_only:
        print(f"compile           {result['compile_s']:.2f} s (train step; compile only)")
        print(json.dumps(result))
        return
    print(f"compile           {result['compile_s']:.2f} s (train step), {result['infer_compile_s']:.2f} s (inference)")
    print(f"training          {result['train_pairs_per_s']:.1f} pairs/s ({result['train_steps_per_s']:.2f} steps/s)")
    print(f"inference         {result['infer_pairs_per_s']:.1f} pairs/s")
    print(f"peak memory       {result['peak_memory_mb']:.0f} MiB ({result['peak_memory_kind']})")
    print(json.dumps(result))


if __name__ == "__main__":
    app.run(main)
