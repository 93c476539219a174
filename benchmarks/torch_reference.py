"""Eager PyTorch version of hetreg_jax's alternating training step, for speed comparison only.

This script is a measurement tool, NOT part of the hetreg_jax package: PyTorch is not a project
dependency and nothing in hetreg_jax imports it. Install it in a separate environment, e.g.

    python3 -m venv /work/torchvenv && /work/torchvenv/bin/pip install torch==2.13.0 numpy
    /work/torchvenv/bin/python benchmarks/torch_reference.py [--steps 20] [--batch_size 8]
        [--size 128] [--threads 2]

It runs, in eager PyTorch (NCHW, float32, CPU), the same iteration that
``hetreg_jax.train.step.Trainer.train_step("alternating")`` compiles (default config, method "ours",
diffeomorphic VoxelMorph, METHOD.md):

1. motion step: VoxelMorph forward -> warp -> variance U-Net on ``(warped.detach(), fixed)`` under
   ``no_grad`` -> log-variance clipped to [-15, 15] -> weight
   ``w = sigmoid(minmax_mask((fixed**2 * exp(-s))**0.5)) * mask`` -> loss
   ``mean(w * mask * (fixed - warped)**2) + 0.01 * grad_l2(velocity)`` -> backward -> Adam step;
2. variance step: a fresh VoxelMorph forward under ``no_grad`` -> warp -> variance forward ->
   beta-NLL (beta 0.5) ``mean(mask * exp(0.5 * s.detach()) * (0.5 r**2 exp(-s) + 0.5 s))`` ->
   backward -> Adam step.

Two ``torch.optim.Adam(lr=1e-4)``. ``mask = (moving != 0) | (fixed != 0)``; every mean runs over all
elements. The data are one fixed random batch in [0, 1] (as ``hetreg_jax.cli.bench``). Inference is a
VoxelMorph forward + warp under ``torch.inference_mode``.

Conventions: images ``[B, 1, H, W]``; displacements ``[B, 2, H, W]`` in pixels, channel k moves
along spatial axis k (H then W); ``warp(m, u)(x) = m(x + u(x))``, bilinear, zero outside
(``grid_sample(align_corners=True, padding_mode="zeros")``, VoxelMorph's SpatialTransformer).

Output: progress lines, then one JSON line
``{"framework": "pytorch", "torch": ..., "threads": ..., "train_pairs_per_s": ...,
"infer_pairs_per_s": ..., ...}``. Train pairs/s counts one alternating iteration (motion step +
variance step) per batch of pairs, as ``hetreg_jax.cli.bench`` does.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time

try:
    import torch
    import torch.nn.functional as F
    from torch import nn
except ImportError:  # pragma: no cover - depends on the environment
    sys.exit("benchmarks/torch_reference.py needs PyTorch, which is not a hetreg_jax dependency.\n"
             "Install it in a separate venv: python3 -m venv /work/torchvenv && "
             "/work/torchvenv/bin/pip install torch==2.13.0 numpy")
import numpy as np

ENC_FEATURES = (16, 32, 32, 32)
DEC_FEATURES = (32, 32, 32, 32, 32, 16, 16)
LEAKY_SLOPE = 0.2
INT_STEPS = 7
INT_DOWNSIZE = 2
FLOW_INIT_STDDEV = 1e-5
LOG_VAR_RANGE = (-15.0, 15.0)      # hetreg_jax.train.step.LOG_VAR_RANGE
LOG_VAR_FLOOR = 80.0               # hetreg_jax.core.losses._LOG_VAR_FLOOR
GAMMA, BETA, SMOOTH_WEIGHT, LR = 0.5, 0.5, 0.01, 1e-4
MOTION_PARAMS, VARIANCE_PARAMS = 109_170, 109_025   # 2D, the hetreg_jax counts


# ------------------------------------------------------------------------------------- networks
class UNet(nn.Module):
    """VoxelMorph U-Net (2D): ``[B, C_in, H, W] -> [B, dec[-1], H, W]``; PyTorch default conv init.

    Encoder conv3x3 + LeakyReLU(0.2) -> skip -> max-pool 2; decoder conv + LeakyReLU -> nearest x2
    -> concat skip (deepest first); the remaining decoder widths at full resolution.
    """

    def __init__(self, in_channels: int, enc=ENC_FEATURES, dec=DEC_FEATURES):
        super().__init__()
        n = len(enc)
        self.enc = nn.ModuleList()
        ch, skips = in_channels, []
        for f in enc:
            self.enc.append(nn.Conv2d(ch, f, 3, padding=1))
            ch = f
            skips.append(f)
        self.dec = nn.ModuleList()
        for f in dec[:n]:
            self.dec.append(nn.Conv2d(ch, f, 3, padding=1))
            ch = f + skips.pop()
        self.extra = nn.ModuleList()
        for f in dec[n:]:
            self.extra.append(nn.Conv2d(ch, f, 3, padding=1))
            ch = f
        self.out_channels = ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for conv in self.enc:
            x = F.leaky_relu(conv(x), LEAKY_SLOPE)
            skips.append(x)
            x = F.max_pool2d(x, 2)
        for conv in self.dec:
            x = F.leaky_relu(conv(x), LEAKY_SLOPE)
            x = torch.cat([F.interpolate(x, scale_factor=2, mode="nearest"), skips.pop()], dim=1)
        for conv in self.extra:
            x = F.leaky_relu(conv(x), LEAKY_SLOPE)
        return x


def identity_grid(shape) -> torch.Tensor:
    """``[1, 2, H, W]`` pixel coordinates; channel k is the index along spatial axis k."""
    axes = [torch.arange(n, dtype=torch.float32) for n in shape]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"))[None]


class SpatialTransformer(nn.Module):
    """VoxelMorph's warp: ``src(x + flow(x))``, bilinear, aligned corners, zeros outside."""

    def __init__(self, shape):
        super().__init__()
        self.register_buffer("grid", identity_grid(shape), persistent=False)
        self.shape = tuple(shape)

    def forward(self, src: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
        locs = self.grid + flow
        locs = torch.stack([2 * (locs[:, k] / (n - 1) - 0.5) for k, n in enumerate(self.shape)], 1)
        locs = locs.permute(0, 2, 3, 1)[..., [1, 0]]       # grid_sample wants (x=W, y=H) last
        return F.grid_sample(src, locs, mode="bilinear", padding_mode="zeros", align_corners=True)


def resize_field(field: torch.Tensor, factor: float) -> torch.Tensor:
    """VoxelMorph's ResizeTransform: bilinear aligned-corners resize, vectors times ``factor``."""
    if factor < 1:
        return F.interpolate(factor * field, scale_factor=factor, mode="bilinear", align_corners=True)
    return factor * F.interpolate(field, scale_factor=factor, mode="bilinear", align_corners=True)


class VecInt(nn.Module):
    """Scaling and squaring: ``v <- v / 2**steps``, then ``steps`` times ``v <- v + warp(v, v)``."""

    def __init__(self, shape, steps: int = INT_STEPS):
        super().__init__()
        self.steps = steps
        self.transformer = SpatialTransformer(shape)

    def forward(self, vec: torch.Tensor) -> torch.Tensor:
        vec = vec / 2 ** self.steps
        for _ in range(self.steps):
            vec = vec + self.transformer(vec, vec)
        return vec


class VoxelMorph(nn.Module):
    """Diffeomorphic VoxelMorph: ``(moving, fixed) -> (displacement, half-res velocity)``."""

    def __init__(self, size: int):
        super().__init__()
        self.unet = UNet(2)
        self.flow = nn.Conv2d(self.unet.out_channels, 2, 3, padding=1)
        nn.init.normal_(self.flow.weight, 0.0, FLOW_INIT_STDDEV)
        nn.init.zeros_(self.flow.bias)
        self.integrate = VecInt((size // INT_DOWNSIZE,) * 2)

    def forward(self, moving, fixed):
        head = self.flow(self.unet(torch.cat([moving, fixed], dim=1)))
        velocity = resize_field(head, 1.0 / INT_DOWNSIZE)
        displacement = resize_field(self.integrate(velocity), float(INT_DOWNSIZE))
        return displacement, velocity


class VarianceUNet(nn.Module):
    """``(warped, fixed) -> log sigma^2 [B, 1, H, W]`` (U-Net + 1-channel conv head, default init)."""

    def __init__(self):
        super().__init__()
        self.unet = UNet(2)
        self.log_var = nn.Conv2d(self.unet.out_channels, 1, 3, padding=1)

    def forward(self, warped, fixed):
        s = self.log_var(self.unet(torch.cat([warped, fixed], dim=1)))
        return s.clamp(*LOG_VAR_RANGE)


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ------------------------------------------------------------------------------------- losses
def foreground_mask(moving, fixed):
    return ((moving != 0) | (fixed != 0)).float()


def smoothness(field):
    """VoxelMorph Grad('l2'): mean of squared forward differences, averaged over the 2 axes."""
    dy = field[:, :, 1:, :] - field[:, :, :-1, :]
    dx = field[:, :, :, 1:] - field[:, :, :, :-1]
    return 0.5 * (dy.square().mean() + dx.square().mean())


def snr_weight(fixed, log_var, mask, gamma=GAMMA):
    """``sigmoid(minmax((fixed**2 exp(-s))**gamma)) * mask``; min/max over the masked-in elements."""
    with torch.no_grad():
        base = fixed.square() * torch.exp(torch.clamp(-log_var, max=LOG_VAR_FLOOR))
        snr = base.pow(gamma)
        inside = mask > 0
        if inside.any():
            lo, hi = snr[inside].min(), snr[inside].max()
            norm = torch.where(inside, (snr - lo) / (hi - lo + 1e-8), torch.zeros_like(snr))
        else:
            norm = torch.zeros_like(snr)
        return torch.sigmoid(norm) * mask


def beta_nll(fixed, warped, log_var, mask, beta=BETA):
    """``mean(mask * exp(beta sg(s)) * (0.5 sg(r)**2 exp(-s) + 0.5 s))``; gradient to s only."""
    residual = (fixed - warped).detach()
    terms = 0.5 * residual.square() * torch.exp(-log_var) + 0.5 * log_var
    return (mask * torch.exp(beta * log_var.detach()) * terms).mean()


# ------------------------------------------------------------------------------------- steps
class Alternating:
    """The two networks, their Adam optimisers and one alternating iteration."""

    def __init__(self, size: int):
        self.motion = VoxelMorph(size)
        self.variance = VarianceUNet()
        for name, net, want in (("VoxelMorph", self.motion, MOTION_PARAMS),
                                ("variance U-Net", self.variance, VARIANCE_PARAMS)):
            got = count_params(net)
            assert got == want, f"{name} has {got} parameters, hetreg_jax has {want}"
        self.motion_opt = torch.optim.Adam(self.motion.parameters(), lr=LR)
        self.variance_opt = torch.optim.Adam(self.variance.parameters(), lr=LR)
        self.warp = SpatialTransformer((size, size))

    def motion_step(self, moving, fixed, mask) -> torch.Tensor:
        displacement, velocity = self.motion(moving, fixed)
        warped = self.warp(moving, displacement)
        with torch.no_grad():
            weight = snr_weight(fixed, self.variance(warped.detach(), fixed), mask)
        loss = (weight * mask * (fixed - warped).square()).mean() + SMOOTH_WEIGHT * smoothness(velocity)
        self.motion_opt.zero_grad(set_to_none=True)
        loss.backward()
        self.motion_opt.step()
        return loss.detach()

    def variance_step(self, moving, fixed, mask) -> torch.Tensor:
        with torch.no_grad():
            displacement, _ = self.motion(moving, fixed)
            warped = self.warp(moving, displacement)
        loss = beta_nll(fixed, warped, self.variance(warped, fixed), mask)
        self.variance_opt.zero_grad(set_to_none=True)
        loss.backward()
        self.variance_opt.step()
        return loss.detach()

    def iteration(self, moving, fixed):
        mask = foreground_mask(moving, fixed)
        return self.motion_step(moving, fixed, mask), self.variance_step(moving, fixed, mask)

    def infer(self, moving, fixed):
        with torch.inference_mode():
            displacement, _ = self.motion(moving, fixed)
            return displacement, self.warp(moving, displacement)


# ------------------------------------------------------------------------------------- benchmark
def _timed(fn, n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        out = fn()
    del out
    return time.perf_counter() - t0


def benchmark(steps: int, warmup: int, infer_batches: int, batch_size: int, size: int,
              threads: int, seed: int = 0) -> dict:
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    moving, fixed = (torch.from_numpy(rng.random((batch_size, 1, size, size), dtype=np.float32))
                     for _ in range(2))
    model = Alternating(size)

    for _ in range(warmup):
        losses = model.iteration(moving, fixed)
    train_s = _timed(lambda: model.iteration(moving, fixed), steps)
    losses = model.iteration(moving, fixed)
    finite = all(bool(torch.isfinite(v)) for v in losses)

    for _ in range(warmup):
        model.infer(moving, fixed)
    infer_s = _timed(lambda: model.infer(moving, fixed), infer_batches)

    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return {
        "framework": "pytorch", "torch": torch.__version__, "threads": torch.get_num_threads(),
        "image_size": [size, size], "batch_size": batch_size, "steps": steps,
        "train_pairs_per_s": round(steps * batch_size / train_s, 2),
        "train_steps_per_s": round(steps / train_s, 3),
        "infer_pairs_per_s": round(infer_batches * batch_size / infer_s, 2),
        "peak_rss_mb": round(rss_mb, 1), "final_loss_finite": finite,
    }


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=20, help="timed alternating iterations")
    p.add_argument("--warmup", type=int, default=2, help="untimed iterations before timing")
    p.add_argument("--infer_batches", type=int, default=30, help="timed inference batches")
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--size", type=int, default=128, help="square image size (multiple of 16)")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    a = p.parse_args(argv)
    if a.size % 16:
        p.error(f"--size {a.size} must be a multiple of 16 (four 2x poolings)")
    r = benchmark(a.steps, a.warmup, a.infer_batches, a.batch_size, a.size, a.threads)
    print(f"torch {r['torch']}, {r['threads']} threads, {a.size}x{a.size}, batch {a.batch_size}")
    print(f"training   {r['train_pairs_per_s']:.1f} pairs/s ({r['train_steps_per_s']:.2f} steps/s)")
    print(f"inference  {r['infer_pairs_per_s']:.1f} pairs/s")
    print(f"peak RSS   {r['peak_rss_mb']:.0f} MiB")
    print(json.dumps(r))


if __name__ == "__main__":
    main()
