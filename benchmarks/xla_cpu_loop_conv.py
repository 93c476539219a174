"""Why several steps per call are slow on XLA:CPU: one gradient step of a two-convolution network
(8 x 32² x 16 channels, 3x3 kernels), timed compiled alone and as the body of a ``fori_loop`` of 10
steps, and the convolutions of both optimised HLO programs (their dimension orders differ).

    python benchmarks/xla_cpu_loop_conv.py
"""

import re
import time

import jax
import jax.numpy as jnp

DIMS = ("NHWC", "HWIO", "NHWC")


def step(w, x):
    def loss(w):
        y = jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=DIMS)
        y = jax.lax.conv_general_dilated(jnp.tanh(y), w, (1, 1), "SAME", dimension_numbers=DIMS)
        return jnp.mean(y ** 2)
    return w - 0.1 * jax.grad(loss)(w)


def seconds(f, *args, reps):
    jax.block_until_ready(f(*args))
    t0 = time.perf_counter()
    for _ in range(reps):
        out = f(*args)
    jax.block_until_ready(out)
    return time.perf_counter() - t0


def main():
    x = jnp.ones((8, 32, 32, 16))
    w = jnp.ones((3, 3, 16, 16)) * 0.01
    one = jax.jit(step)
    loop = jax.jit(lambda w, x, n: jax.lax.fori_loop(0, n, lambda i, w: step(w, x), w))
    alone = seconds(one, w, x, reps=50) / 50
    looped = seconds(loop, w, x, 10, reps=5) / 50
    print(f"per step: compiled alone {alone * 1e3:.2f} ms, fori_loop body {looped * 1e3:.2f} ms, "
          f"ratio {looped / alone:.1f}")
    for name, f, args in (("alone", one, (w, x)), ("fori_loop", loop, (w, x, 10))):
        hlo = f.lower(*args).compile().as_text()
        print(name, "convolutions:", re.findall(r"convolution\(.*?dim_labels=(\S+?),", hlo))


if __name__ == "__main__":
    main()
