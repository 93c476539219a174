"""Why several steps per call are slow on XLA:CPU, and a remedy: one gradient step of a
two-convolution network (8 x 32² x 16 channels, 3x3 'SAME' kernels), timed compiled alone and as
the body of a ``fori_loop`` of 10 steps, with JAX's own convolution gradient and with a custom VJP
that writes both gradient convolutions in the canonical NHWC/HWIO order; prints the dimension
orders of the loop's optimised HLO convolutions and the largest difference of the two steps.

    python benchmarks/xla_cpu_loop_conv.py
"""

import re
import time

import jax
import jax.numpy as jnp

DIMS = ("NHWC", "HWIO", "NHWC")


def conv(x, w, padding):
    return jax.lax.conv_general_dilated(x, w, (1, 1), padding, dimension_numbers=DIMS)


@jax.custom_vjp
def canonical_conv(x, w):
    """A 3x3 'SAME' convolution whose gradients are canonical convolutions."""
    return conv(x, w, [(1, 1), (1, 1)])


def _fwd(x, w):
    return canonical_conv(x, w), (x, w)


def _bwd(res, g):
    x, w = res
    dx = conv(g, jnp.flip(w, (0, 1)).swapaxes(2, 3), [(1, 1), (1, 1)])  # flipped kernel, in/out swapped
    # weight gradient: batch = input channels, features = the batch, kernel = the cotangent
    dw = conv(x.transpose(3, 1, 2, 0), g.transpose(1, 2, 0, 3), [(1, 1), (1, 1)]).transpose(1, 2, 0, 3)
    return dx, dw


canonical_conv.defvjp(_fwd, _bwd)


def make_step(c):
    def step(w, x):
        def loss(w):
            return jnp.mean(c(jnp.tanh(c(x, w)), w) ** 2)
        return w - 0.1 * jax.grad(loss)(w)
    return step


def seconds(f, *args, reps):
    jax.block_until_ready(f(*args))
    t0 = time.perf_counter()
    for _ in range(reps):
        out = f(*args)
    jax.block_until_ready(out)
    return time.perf_counter() - t0


def main():
    x = jax.random.normal(jax.random.key(0), (8, 32, 32, 16))
    w = jax.random.normal(jax.random.key(1), (3, 3, 16, 16)) * 0.1
    steps = {"jax gradient": make_step(lambda x, w: conv(x, w, "SAME")), "canonical VJP": make_step(canonical_conv)}
    a, b = (jax.jit(s)(w, x) for s in steps.values())
    print(f"largest difference of the two steps: {float(jnp.max(jnp.abs(a - b))):.3g}")
    for name, step in steps.items():
        one = jax.jit(step)
        loop = jax.jit(lambda w, x, n, step=step: jax.lax.fori_loop(0, n, lambda i, w: step(w, x), w))
        alone = seconds(one, w, x, reps=50) / 50
        looped = seconds(loop, w, x, 10, reps=5) / 50
        hlo = loop.lower(w, x, 10).compile().as_text()
        print(f"{name}: per step compiled alone {alone * 1e3:.2f} ms, in a fori_loop {looped * 1e3:.2f} ms "
              f"(ratio {looped / alone:.1f}); loop convolutions {re.findall(r'convolution[(].*?dim_labels=(.+?),', hlo)}")


if __name__ == "__main__":
    main()
