"""Configuration: the defaults (every key), their validation, and a run's recorded config.json as a
config again. The bundled config files are hetreg_jax/configs/."""
