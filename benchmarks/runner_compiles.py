"""Compilations and wall time of the experiment runner: how many XLA programs a Table 1 call compiles,
and how many of them are the training step.

    python benchmarks/runner_compiles.py [--code=DIR] [--seeds=0,1,2] [--methods=mse,ours] [--steps=40]
        [--vmap_seeds] [--workdir=/tmp/runner_compiles]

Runs ``python -m hetreg_jax.experiments --config=configs/quick.py --table=1 --profile=quick
--models=voxelmorph --datasets=acdc --nofigures`` with ``JAX_LOG_COMPILES=1`` in a subprocess, from
the source tree ``--code`` (default: this checkout; point it at an older checkout to compare), in a
fresh workdir and without the persistent compilation cache (every program is really compiled), then
prints one JSON line: the wall time, all compilations, those of the training step (``jit(iterate)``,
one step per call, and ``jit(run)``, a chunk of steps) and the most compiled programs.
"""

import argparse
import collections
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time


def main() -> None:
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--code", default=here)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--methods", default="mse,ours")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--vmap_seeds", action="store_true")
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()
    workdir = args.workdir or tempfile.mkdtemp(prefix="runner_compiles_")
    shutil.rmtree(workdir, ignore_errors=True)
    cmd = [sys.executable, "-m", "hetreg_jax.experiments", "--config=configs/quick.py", "--table=1",
           "--profile=quick", "--models=voxelmorph", "--datasets=acdc", "--nofigures",
           f"--seeds={args.seeds}", f"--methods={args.methods}", f"--config.num_steps={args.steps}",
           f"--workdir={workdir}"] + (["--vmap_seeds"] if args.vmap_seeds else [])
    env = dict(os.environ, JAX_LOG_COMPILES="1", HETREG_JAX_COMPILATION_CACHE="off", PYTHONPATH=args.code)
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    t0 = time.time()
    proc = subprocess.run(cmd, cwd=args.code, env=env, capture_output=True, text=True)
    wall = time.time() - t0
    if proc.returncode:
        sys.exit(f"the runner failed ({proc.returncode}): {proc.stderr[-2000:]}")
    compiles = re.findall(r"Compiling (\S+)", proc.stderr)
    print(json.dumps({"code": args.code, "seeds": args.seeds, "methods": args.methods, "steps": args.steps,
                      "vmap_seeds": args.vmap_seeds, "wall_s": round(wall, 1), "compilations": len(compiles),
                      "training_step_compilations": compiles.count("jit(run)") + compiles.count("jit(iterate)"),
                      "most_compiled": collections.Counter(compiles).most_common(6)}))


if __name__ == "__main__":
    main()
