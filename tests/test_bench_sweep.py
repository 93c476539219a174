"""The scaling sweep's machinery: configurations, subprocess outcomes (ok, timeout, out of memory,
failure) and the table. The benchmark itself runs in a subprocess in test_failures.py."""

import json
import signal
import sys
import time

import pytest

from hetreg_jax.cli import bench_sweep


def test_configurations_cover_the_grid_with_remat_only_for_3d_at_k1():
    cfgs = bench_sweep.configurations(["voxelmorph"], [(64, 64), (32, 32, 32), (96, 96, 96)], [1, 10],
                                      ["float32", "bfloat16"], ["none", "blocks"], k_max_voxels=32**3)
    keys = {(c["size"], c["k"], c["dtype"], c["remat"]) for c in cfgs}
    # 64²: 2 K x 2 dtypes; 32³: K = 1 x 2 dtypes x 2 remat + K = 10 x 2 dtypes; 96³: K = 1 x 2 x 2
    assert len(cfgs) == len(keys) == 4 + 6 + 4
    cmd = bench_sweep.command(cfgs[0], "configs/default.py", 2, 1, 0, 0, compile_only=True)
    assert "--config.data.image_size=(64,64)" in cmd and "--config.batch_size=8" in cmd and cmd[-1] == "--compile_only"
    assert ((96, 96, 96), 10, "float32", "none") not in keys  # above k_max_voxels
    assert all(c["remat"] == "none" for c in cfgs if len(c["size"]) == 2 or c["k"] > 1)
    assert {c["size"]: c["batch"] for c in cfgs} == {(64, 64): 8, (32, 32, 32): 2, (96, 96, 96): 1}


def test_a_bad_size_is_refused_naming_the_flag():
    with pytest.raises(ValueError, match="--sweep_sizes entry '64x' is not a 2D or 3D size"):
        bench_sweep.parse_size("64x")
    assert bench_sweep.parse_size("32x32x16") == (32, 32, 16)


def test_outcomes_are_classified_and_a_timeout_kills_the_configuration():
    result = {"train_pairs_per_s": 12.5, "infer_pairs_per_s": 100.0, "compile_s": 3.2, "peak_memory_mb": 512.0}
    ok = [sys.executable, "-c", f"print('warming up'); print({json.dumps(json.dumps(result))})"]
    assert bench_sweep.run_one(ok, timeout=60)[:2] == ("ok", result)
    t0 = time.perf_counter()
    status, got, _ = bench_sweep.run_one([sys.executable, "-c", "import time; time.sleep(60)"], timeout=1)
    assert (status, got) == ("timeout (> 1 s)", {}) and time.perf_counter() - t0 < 30
    assert bench_sweep.classify(-signal.SIGKILL, "", "")[0] == "out of memory"
    assert bench_sweep.classify(1, "", "jaxlib.XlaRuntimeError: RESOURCE_EXHAUSTED: Out of memory")[0] == "out of memory"
    assert bench_sweep.classify(1, "", "Traceback\nValueError: bad size\n")[0] == "failed (rc=1): ValueError: bad size"


def test_the_table_shows_figures_and_the_status_of_failed_rows():
    cfg = dict(model="voxelmorph", size=(64, 64, 64), batch=2, k=1, dtype="bfloat16", remat="blocks")
    rows = [bench_sweep.row(cfg, "ok", {"train_pairs_per_s": 1.234, "infer_pairs_per_s": 0.02134, "compile_s": 40.04,
                                        "peak_memory_mb": 2047.6, "xla_temp_mb": 700.2}, 60.0),
            bench_sweep.row(dict(cfg, size=(96, 96, 96), batch=1), "timeout (> 200 s)", {}, 200.0)]
    lines = bench_sweep.format_table(rows).splitlines()
    assert lines[0].split()[:3] == ["model", "size", "batch"] and len(lines) == 4
    assert lines[2].split() == ["voxelmorph", "64x64x64", "2", "1", "bfloat16", "blocks", "1.23", "0.0213", "40.0",
                                "2048", "700", "ok"]
    assert lines[3].split()[:11] == ["voxelmorph", "96x96x96", "1", "1", "bfloat16", "blocks", "-", "-", "-", "-", "-"]
    assert lines[3].endswith("timeout (> 200 s)")
