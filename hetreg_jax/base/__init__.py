"""Bottom layer: workdir files and locks, progress lines, figures (Agg, no pyplot), process-wide
runtime settings, the device mesh, interrupts and metric writers. Imports nothing else of hetreg_jax."""
