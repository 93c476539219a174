#!/usr/bin/env bash
# GPU checks of hetreg_jax on a bare GPU machine, in about 8 minutes, without network access.
#
#   bash benchmarks/device_check.sh [OUT_DIR]
#
# Needs, already installed (no download happens here): the packages of requirements.txt with a CUDA
# build of jaxlib: jax[cuda12] 0.10.x (jax, jaxlib, jax-cuda12-plugin, jax-cuda12-pjrt and the
# nvidia-* CUDA wheels they pull), flax 0.12, optax 0.2.8, orbax-checkpoint 0.12, numpy, scipy,
# nibabel, absl-py, ml-collections, tensorboardX, matplotlib, pytest. Prints one JSON line per
# measurement and writes them to OUT_DIR/device_check.jsonl (default: ./device_check).
#
# Measures, on the GPU: training and inference pairs/s of VoxelMorph and TransMorph at 128² (batch
# 8, 1 and 10 steps per call); the U-Net's plain upsample-conv against the sub-pixel form; batch
# indices drawn in the program (data.order=device) against drawn by the host; the seed
# throughput of 1, 3 and 8 seeds in one program; the cost of
# deterministic GPU ops (HETREG_JAX_DETERMINISTIC=1, the default, against 0); then runs the tests
# that exercise the compiled programs (tests/test_programs.py) on the GPU.
set -u
OUT=${1:-device_check}
mkdir -p "$OUT"
LOG="$OUT/device_check.jsonl"
: > "$LOG"
export HETREG_JAX_COMPILATION_CACHE=off  # measure compilation too
python -c "import jax; print(jax.devices())" || { echo "no JAX backend"; exit 1; }

bench() {  # name, then bench arguments
  local name=$1; shift
  timeout 150 python -m hetreg_jax.bench "$@" 2>"$OUT/$name.err" | tail -n 1 \
    | python -c "import json,sys; d=json.loads(sys.stdin.read()); d['check']='$name'; print(json.dumps(d))" \
    | tee -a "$LOG" || echo "{\"check\": \"$name\", \"failed\": true}" | tee -a "$LOG"
}

bench vxm128_k1 --config=configs/acdc.py --steps=200 --infer_batches=100
bench vxm128_k10 --config=configs/acdc.py --steps=200 --infer_batches=100 --config.steps_per_call=10
bench tm128_k10 --config=configs/acdc.py --steps=100 --infer_batches=50 --config.model=transmorph \
  --config.steps_per_call=10
bench vxm128_k10_plain_upsample --config=configs/acdc.py --steps=200 --infer_batches=100 \
  --config.steps_per_call=10 --config.unet_upsample=plain
bench vxm128_k10_device_order --config=configs/acdc.py --steps=200 --infer_batches=100 \
  --config.steps_per_call=10 --config.data.order=device
HETREG_JAX_DETERMINISTIC=0 bench vxm128_k10_nondeterministic --config=configs/acdc.py --steps=200 \
  --infer_batches=100 --config.steps_per_call=10
for s in 1 3 8; do
  timeout 150 python -m hetreg_jax.bench --config=configs/acdc.py --steps=100 --config.steps_per_call=10 \
    --seeds_together=$s 2>"$OUT/seeds$s.err" | grep '^{' | tee -a "$LOG"
done
# The compiled programs on the GPU: shared programs, traced gamma, seeds together = separate runs.
JAX_PLATFORMS=cuda timeout 240 python -m pytest -q -p no:xdist tests/test_programs.py 2>&1 | tail -n 3 \
  | tee "$OUT/tests.txt"
echo "wrote $LOG"
