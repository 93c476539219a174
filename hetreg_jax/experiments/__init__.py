"""The paper's experiments: run plans and their workdirs (runs), running them (runner), tables
(report) and figures (figures). ``python -m hetreg_jax.experiments`` is the runner's command line."""
