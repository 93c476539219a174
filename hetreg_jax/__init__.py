"""hetreg_jax: unsupervised deformable registration with heteroscedastic uncertainty (JAX/Flax)."""

__version__ = "0.1.0"
