"""hetreg_jax: unsupervised deformable registration with heteroscedastic uncertainty (JAX/Flax).

    import hetreg_jax
    model = hetreg_jax.load("runs/acdc")          # a trained workdir (see hetreg_jax.api)
    out = model.register(moving, fixed)           # numpy in, numpy out
"""

__version__ = "0.1.0"
__all__ = ["Model", "load"]


def __getattr__(name):  # the API on first use, so that importing a submodule stays light
    if name in __all__:
        from hetreg_jax import api
        return getattr(api, name)
    raise AttributeError(f"module 'hetreg_jax' has no attribute {name!r}")
