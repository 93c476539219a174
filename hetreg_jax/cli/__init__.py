"""Command lines: ``hetreg`` / ``main.py`` (command, checks) and the benchmark (bench, bench_sweep)."""
