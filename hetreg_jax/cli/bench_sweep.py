"""The scaling sweep of ``python -m hetreg_jax.bench --sweep``.

Every configuration (model, image size, steps_per_call K, compute dtype, remat) runs the ordinary
benchmark in its own subprocess, ``python -m hetreg_jax.bench --config=BASE --config.model=...``,
whose last stdout line is the JSON result: peak memory on a CPU is the process's peak resident set,
which only grows within a process, so one process per configuration is the only way to measure it.
A configuration that runs past ``--sweep_timeout`` seconds is killed and reported as ``timeout``;
one that dies for lack of memory (killed by the kernel, or an allocation error) as ``out of
memory``; any other failure as ``failed`` with its last error line. None stops the sweep.

Which configurations: ``--sweep_models`` x ``--sweep_sizes`` x ``--sweep_k`` x ``--sweep_dtypes``,
with ``remat="none"``; for 3D sizes with K = 1 also every other ``--sweep_remat`` setting (the memory
that rematerialisation saves). ``--sweep_k_max_voxels`` skips K > 1 above that many voxels per image.
Batches: 8 pairs in 2D, 2 in 3D up to 64³, 1 above (``batch_for``). ``--sweep_probe`` then tries
VoxelMorph (float32, K = 1, batch 1) at 128³, 160³, ... and reports the largest size that completed.
``--sweep_compile_only`` compiles each training call without running it and reports XLA's memory
plan (``xla_temp_mb``: the temporaries, i.e. the activations kept for the backward pass and
scratch, per device): the memory that remat saves, for sizes too slow to run here.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time

from absl import flags

from hetreg_jax.base.errors import InputError

DEFAULT_SIZES = ["64x64", "128x128", "256x256", "32x32x32", "64x64x64", "96x96x96"]
PROBE_SIZES = (128, 160, 192, 224, 256, 320)
OOM_MARKERS = ("RESOURCE_EXHAUSTED", "MemoryError", "std::bad_alloc", "Out of memory", "out of memory",
               "Cannot allocate memory")
COLUMNS = (("model", 10), ("size", 11), ("batch", 5), ("K", 3), ("dtype", 8), ("remat", 6),
           ("train pairs/s", 13), ("infer pairs/s", 13), ("compile s", 9), ("peak MiB", 8), ("XLA temp MiB", 12),
           ("status", 0))


def define_flags() -> None:
    flags.DEFINE_boolean("sweep", False, "Run the scaling sweep (one subprocess per configuration).")
    flags.DEFINE_list("sweep_models", ["voxelmorph", "transmorph"], "Models of the sweep.")
    flags.DEFINE_list("sweep_sizes", DEFAULT_SIZES, "Image sizes of the sweep, e.g. 64x64,32x32x32.")
    flags.DEFINE_list("sweep_dtypes", ["float32", "bfloat16"], "compute_dtype values of the sweep.")
    flags.DEFINE_list("sweep_k", ["1", "10"], "steps_per_call values of the sweep.")
    flags.DEFINE_list("sweep_remat", ["none", "blocks"], "remat values (3D sizes with K = 1; else 'none').")
    flags.DEFINE_integer("sweep_timeout", 300, "Seconds per configuration before it is killed (timeout).")
    flags.DEFINE_integer("sweep_k_max_voxels", 0, "Skip K > 1 above this many voxels per image (0 = never).")
    flags.DEFINE_boolean("sweep_probe", False, "Then probe VoxelMorph at larger 3D sizes until one fails.")
    flags.DEFINE_boolean("sweep_compile_only", False, "Compile only: XLA's memory plan, no timings.")


def parse_size(text: str) -> tuple[int, ...]:
    try:
        size = tuple(int(n) for n in text.lower().split("x"))
    except ValueError:
        size = ()
    if len(size) not in (2, 3) or min(size) < 1:
        raise InputError(f"--sweep_sizes entry {text!r} is not a 2D or 3D size such as 64x64 or 32x32x32")
    return size


def batch_for(size: tuple[int, ...]) -> int:
    """Pairs per step: 8 in 2D, 2 in 3D up to 64³ voxels, 1 above."""
    if len(size) == 2:
        return 8
    return 2 if math.prod(size) <= 64**3 else 1


def configurations(models, sizes, ks, dtypes, remats, k_max_voxels: int = 0) -> list[dict]:
    """The sweep's configurations in run order (see the module doc)."""
    out = []
    for model in models:
        for size in sizes:
            for k in ks:
                if k > 1 and k_max_voxels and math.prod(size) > k_max_voxels:
                    continue
                for dtype in dtypes:
                    for remat in remats:
                        if remat != "none" and (len(size) != 3 or k != 1):
                            continue
                        out.append(dict(model=model, size=tuple(size), batch=batch_for(size), k=k,
                                        dtype=dtype, remat=remat))
    return out


def command(cfg: dict, base_config: str, steps: int, infer_batches: int, warmup_calls: int,
            cpu_devices: int, compile_only: bool = False) -> list[str]:
    size = ",".join(str(n) for n in cfg["size"])
    return [sys.executable, "-m", "hetreg_jax.bench", f"--config={base_config}",
            f"--config.model={cfg['model']}", f"--config.data.image_size=({size})",
            f"--config.batch_size={cfg['batch']}", f"--config.steps_per_call={cfg['k']}",
            f"--config.compute_dtype={cfg['dtype']}", f"--config.remat={cfg['remat']}",
            f"--steps={steps}", f"--infer_batches={infer_batches}", f"--warmup_calls={warmup_calls}",
            f"--cpu_devices={cpu_devices}"] + (["--compile_only"] if compile_only else [])


def classify(returncode: int, stdout: str, stderr: str) -> tuple[str, dict]:
    """``(status, result)`` of a finished subprocess: ``ok`` with the parsed last JSON line, else
    ``out of memory`` or ``failed: <last error line>`` and an empty result."""
    if returncode == 0:
        for line in reversed(stdout.strip().splitlines()):
            if line.startswith("{"):
                return "ok", json.loads(line)
        return "failed: no JSON result line", {}
    if returncode == -signal.SIGKILL or any(m in stderr for m in OOM_MARKERS):
        return "out of memory", {}
    lines = [line.strip() for line in stderr.strip().splitlines() if line.strip()]
    return f"failed (rc={returncode}): {lines[-1][:120] if lines else 'no output'}", {}


def run_one(cmd: list[str], timeout: float) -> tuple[str, dict, float]:
    """Run one configuration's subprocess; ``(status, result, wall seconds)``. On timeout the whole
    process group is killed."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return f"timeout (> {timeout:g} s)", {}, time.perf_counter() - t0
    status, result = classify(proc.returncode, stdout, stderr)
    return status, result, time.perf_counter() - t0


def row(cfg: dict, status: str, result: dict, wall_s: float) -> dict:
    """One table row / JSON line: the configuration, the status and the benchmark's figures."""
    out = {"model": cfg["model"], "image_size": list(cfg["size"]), "batch_size": cfg["batch"],
           "steps_per_call": cfg["k"], "compute_dtype": cfg["dtype"], "remat": cfg["remat"],
           "status": status, "wall_s": round(wall_s, 1)}
    if status == "ok" and result.get("compile_only"):
        out["status"] = "compiled"
    for key in ("train_pairs_per_s", "infer_pairs_per_s", "compile_s", "peak_memory_mb", "xla_temp_mb", "devices"):
        if key in result:
            out[key] = result[key]
    return out


def format_table(rows: list[dict]) -> str:
    """The rows as one fixed-width text table (missing figures shown as '-')."""
    def cells(r):
        def num(key, fmt):
            if key in r and fmt == "rate":  # two decimals, or three significant figures below 1
                return format(r[key], ".2f" if r[key] >= 1 else ".3g")
            return format(r[key], fmt) if key in r else "-"
        return (r["model"], "x".join(str(n) for n in r["image_size"]), str(r["batch_size"]),
                str(r["steps_per_call"]), r["compute_dtype"], r["remat"], num("train_pairs_per_s", "rate"),
                num("infer_pairs_per_s", "rate"), num("compile_s", ".1f"), num("peak_memory_mb", ".0f"),
                num("xla_temp_mb", ".0f"), r["status"])
    lines = ["  ".join(name.ljust(width) for name, width in COLUMNS).rstrip()]
    lines.append("  ".join(("-" * max(width, len(name))) for name, width in COLUMNS))
    for r in rows:
        lines.append("  ".join(c.ljust(width) for c, (_, width) in zip(cells(r), COLUMNS)).rstrip())
    return "\n".join(lines)


def _sweep(cfgs, flags_, base_config) -> list[dict]:
    rows = []
    for i, cfg in enumerate(cfgs):
        cmd = command(cfg, base_config, flags_.steps, flags_.infer_batches, flags_.warmup_calls, flags_.cpu_devices,
                      flags_.sweep_compile_only)
        status, result, wall = run_one(cmd, flags_.sweep_timeout)
        rows.append(row(cfg, status, result, wall))
        print(f"[{i + 1}/{len(cfgs)}] load {os.getloadavg()[0]:.1f} " + json.dumps(rows[-1]), flush=True)
    return rows


def main(flags_) -> list[dict]:
    base_config = flags_["config"].config_filename
    sizes = [parse_size(s) for s in flags_.sweep_sizes]
    cfgs = configurations(flags_.sweep_models, sizes, [int(k) for k in flags_.sweep_k], flags_.sweep_dtypes,
                          flags_.sweep_remat, flags_.sweep_k_max_voxels)
    print(f"sweep: {len(cfgs)} configurations from {base_config}, {flags_.steps} timed steps, "
          f"{flags_.infer_batches} inference batches, {flags_.warmup_calls} warm-up call(s), "
          f"{'compile only, ' if flags_.sweep_compile_only else ''}"
          f"timeout {flags_.sweep_timeout} s; load average {os.getloadavg()}", flush=True)
    rows = _sweep(cfgs, flags_, base_config)
    if flags_.sweep_probe:
        for n in PROBE_SIZES:
            cfg = dict(model="voxelmorph", size=(n, n, n), batch=1, k=1, dtype="float32", remat="none")
            probe = _sweep([cfg], flags_, base_config)
            rows += probe
            if probe[0]["status"] != "ok":
                break
    print(f"load average at the end {os.getloadavg()}")
    print(format_table(rows))
    if flags_.sweep_probe:
        fits = [r for r in rows if r["model"] == "voxelmorph" and len(r["image_size"]) == 3 and r["status"] == "ok"
                and r["compute_dtype"] == "float32" and r["remat"] == "none"]
        largest = max(fits, key=lambda r: math.prod(r["image_size"]), default=None)
        print("largest VoxelMorph 3D size that ran: " + ("none" if largest is None else
              "x".join(map(str, largest["image_size"])) + f", batch {largest['batch_size']}"))
    for r in rows:
        print(json.dumps(r))
    return rows
