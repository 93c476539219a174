"""The method: models, optimisers and the pure, jit-compiled steps (one place to read the algorithm).

One iteration of "ours" (METHOD.md, Training):
1. ``motion_step``: forward the displacement estimator, warp, query the (frozen) variance estimator
   on ``(stop_gradient(warped), fixed)`` for a constant SNR weight map, update theta with Adam;
2. ``variance_step``: a fresh forward with the updated theta (no gradient to theta), then update phi
   with beta-NLL.
The joint NLL / beta-NLL baselines update both networks from one loss; the single-network baselines
(mse, ncc, mi, vxm_diff, and adareg / adaframe, whose residual-adaptive weights come from the
forward warp in ``_motion_loss``) run the motion step alone (``methods.py`` says which). Each step returns a new state
and a dict of scalar measurements; the state is donated. The run around the steps (data, loop,
checkpoints, logging) is in ``loop.py``.

**One program per structure.** The steps are pure functions ``(state, batch, hparams)``: the
hyper-parameters that do not change a shape or a code path (`HPARAMS`: γ, β, λ, the learning
rates, the seed that roots the dropout and sampling keys, ...) are traced arguments, not constants.
The jitted programs are built once per *structure* (`STRUCTURE_KEYS`: model, method, network
widths, image size, ...) and mesh, and kept in a module-level cache (`programs_for`), so every
seed, γ, β, learning rate and noise scale of one (model, method) reuses one compiled training step.
"""

from __future__ import annotations

import functools
import json
import types
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from hetreg_jax.base import sharding
from hetreg_jax.base.workdir import LATER_DEFAULTS
from hetreg_jax.base.errors import InputError
from hetreg_jax.core import losses, methods, spatial
from hetreg_jax.models import get_model
from hetreg_jax.models.transmorph import transmorph_config, validate_input
from hetreg_jax.train import state as ts

# Predicted log-variance is clipped to this range (sigma from 5.5e-4 to 1.8e3 for images in [0, 1])
# so that exp(-log_var) in the SNR and the beta-NLL can never overflow float32.
LOG_VAR_RANGE = (-15.0, 15.0)

PHASES = ("motion", "motion_warmup", "variance", "alternating", "joint")


def chunk_form(config, mesh) -> str:
    """How K steps run in one call: ``"loop"`` (a ``fori_loop``, one program for every chunk length)
    or ``"unrolled"`` (K copies of the step in one straight-line program). ``"auto"`` is
    ``"unrolled"`` on XLA:CPU, whose convolution gradients inside a loop body run 8-10x slower
    (``benchmarks/xla_cpu_loop_conv.py``), and ``"loop"`` on GPU and TPU."""
    form = config.get("steps_per_call_form", "auto")
    if form == "auto":
        return "unrolled" if mesh.devices.flat[0].platform == "cpu" else "loop"
    return form


def precision_kwargs(config) -> dict:
    """``dtype`` (``config.compute_dtype``) and ``remat`` (``config.remat == "blocks"``) of every network;
    configs saved before these keys existed mean float32 without rematerialisation."""
    return dict(dtype=jnp.dtype(config.get("compute_dtype", "float32")),
                remat=config.get("remat", "none") == "blocks")


def unet_kwargs(config) -> dict:
    """``upsample`` (``config.unet_upsample``) of the VoxelMorph and variance U-Nets; configs saved
    before the key existed mean the sub-pixel form."""
    return dict(upsample=config.get("unet_upsample", "subpixel"))


def motion_model_kwargs(config) -> dict:
    """Constructor arguments of the displacement estimator named by ``config.model``."""
    if config.model == "voxelmorph":
        m = config.motion
        return dict(**precision_kwargs(config), **unet_kwargs(config), enc_features=tuple(m.enc_features), dec_features=tuple(m.dec_features),
                    int_steps=m.int_steps, int_downsize=m.int_downsize, bidirectional=m.bidirectional,
                    predict_sigma=m.predict_sigma, probabilistic=config.method == "vxm_diff")
    if config.model == "transmorph":
        size = tuple(config.data.image_size)
        kwargs = transmorph_config(len(size), size)
        t = config.transmorph
        kwargs.update(**precision_kwargs(config), embed_dim=t.embed_dim, depths=tuple(t.depths), num_heads=tuple(t.num_heads),
                      drop_path_rate=t.drop_path_rate, predict_sigma=config.motion.predict_sigma)
        if tuple(t.window_size) != (0,):
            kwargs["window_size"] = tuple(t.window_size)
        validate_input(size, kwargs)
        return kwargs
    raise InputError(f"config.model={config.model!r}; known: 'voxelmorph', 'transmorph'")


# The traced hyper-parameters: name -> config key. Changing one of these never recompiles.
HPARAMS = {
    "seed": "seed",                       # roots the dropout / sampling keys: fold_in(key(seed), step)
    "gamma": "loss.gamma",
    "beta": "loss.beta",
    "smooth_weight": "loss.smooth_weight",
    "reg_scale": "loss.reg_scale",
    "adareg_c": "loss.adareg_c",
    "adaframe_sigma": "loss.adaframe_sigma",
    "sigma_z_weight": "loss.sigma_z_weight",
    "image_sigma": "loss.image_sigma",
    "prior_lambda": "loss.prior_lambda",
    "motion_lr": "optim.motion_lr",
    "variance_lr": "optim.variance_lr",
}

# The config keys the compiled programs are built from (a group name takes the whole group). The
# programs see a config holding only these: reading any other key while tracing is an error, so a
# program can never bake in a value that differs between the runs that share it.
STRUCTURE_KEYS = ("model", "method", "num_steps", "steps_per_epoch", "steps_per_call_form", "compute_dtype",
                  "remat", "unet_upsample", "data.image_size", "motion", "variance", "transmorph", "loss.snr_form",
                  "loss.minmax_scope", "loss.use_mask", "loss.ncc_window", "loss.mi_bins",
                  "optim.motion_schedule", "data.order", "batch_size")


def _get(config, key: str, default=None):
    for part in key.split("."):
        if default is not None and part not in config:
            return default
        config = config[part]
    return config


# The stream of ``data.order="device"``'s batch draws: folded into the seed's key, apart from the
# initialisation's and the dropout's keys.
ORDER_STREAM = 0x0BA7C4


def drawn_batch_indices(seed, step, n: int, batch_size: int) -> jax.Array:
    """``data.order="device"``: the pair indices of step ``step``'s global batch, drawn with
    replacement by ``jax.random`` from the seed and the step (traced or not, on any backend: the
    same bits), so that a compiled chunk draws its own batches without the host."""
    key = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), ORDER_STREAM), step)
    return jax.random.randint(key, (batch_size,), 0, n, dtype=jnp.int32)


def hparams(config) -> dict[str, np.ndarray]:
    """The traced hyper-parameters of ``config`` (`HPARAMS`): float32 scalars, the seed int32."""
    return {name: np.asarray(_get(config, key), np.int32 if name == "seed" else np.float32)
            for name, key in HPARAMS.items()}


def structure(config) -> ml_collections.ConfigDict:
    """The part of ``config`` that the compiled programs depend on (`STRUCTURE_KEYS`); keys
    that older configs lack take their defaults."""
    defaults = {**LATER_DEFAULTS, "steps_per_call_form": "auto"}
    out = ml_collections.ConfigDict()
    for key in STRUCTURE_KEYS:
        head, _, tail = key.partition(".")
        value = config.get(head, defaults.get(head)) if not tail else _get(config, key, defaults.get(key))
        if isinstance(value, ml_collections.ConfigDict):
            value = ml_collections.ConfigDict(value.to_dict())
        if tail:
            if head not in out:
                out[head] = ml_collections.ConfigDict()
            out[head][tail] = value
        else:
            out[head] = value
    return out


def _structure_key(config) -> str:
    return json.dumps(structure(config).to_dict(), sort_keys=True, default=list)


def lr_factor(config) -> Callable[[jax.Array], jax.Array] | None:
    """The motion lr's multiplier as a function of the training step, or None for a constant lr:
    TransMorph's polynomial decay ``(1 - epoch/epochs)^0.9`` (epoch = step // steps_per_epoch), 0
    from ``num_steps`` on whatever the warm-start phases (see `motion_optimizer`)."""
    kind = config.optim.motion_schedule
    if kind == "auto":
        kind = "poly" if config.model == "transmorph" else "constant"
    if kind == "constant":
        return None
    if kind == "poly":
        epochs = max(1, config.num_steps // config.steps_per_epoch)

        def factor(count):
            epoch = jnp.minimum(count // config.steps_per_epoch, epochs)
            # Under jit XLA divides by multiplying with 1/epochs: at epoch == epochs the base can be
            # -1e-7, whose 0.9th power is NaN; clipped at 0 (bit-identical where it is positive).
            return jnp.maximum(1.0 - epoch / epochs, 0.0) ** 0.9
        return factor
    raise InputError(f"config.optim.motion_schedule={config.optim.motion_schedule!r}; "
                     "known: 'auto', 'constant', 'poly'")


def motion_schedule(config) -> optax.Schedule | float:
    """The motion lr at a training step: ``optim.motion_lr`` (constant) or ``lr * lr_factor(step)``."""
    lr, factor = config.optim.motion_lr, lr_factor(config)
    if factor is None:
        return lr
    return lambda count: lr * factor(count)


def _scale_by_lr(factor) -> optax.GradientTransformationExtraArgs:
    """``-lr * factor(step) * g``, the lr a traced ``lr=`` argument of ``update``. Its state is that of
    ``optax.adam``'s last transform (empty for a constant lr, an update count for a schedule), so
    checkpoints of either layout restore."""
    def init(params):
        del params
        if factor is None:
            return optax.EmptyState()
        return optax.ScaleByScheduleState(count=jnp.zeros([], jnp.int32))

    def update(updates, state, params=None, *, lr, step=None):
        del params
        if factor is None:
            return jax.tree.map(lambda g: (-lr).astype(g.dtype) * g, updates), state
        step_size = -(lr * factor(step))
        updates = jax.tree.map(lambda g: step_size.astype(g.dtype) * g, updates)
        return updates, optax.ScaleByScheduleState(count=optax.safe_increment(state.count))

    return optax.GradientTransformationExtraArgs(init, update)


def motion_optimizer(config) -> optax.GradientTransformationExtraArgs:
    """Adam of the displacement estimator; its ``update`` takes the lr as ``lr=`` (traced) and the
    training step as ``step=``.

    A decaying lr (`lr_factor`) is read at the training step, not at Adam's count of motion
    updates: with ``warm_start`` the variance-only phase makes no motion update, so a count-driven
    decay would end at ~5 % of the lr. Without warm start both counts are equal and the updates are
    bit-identical to ``optax.adam(schedule)``; the state has its layout too (the update count is
    still kept), so checkpoints written before resume.
    """
    return optax.chain(optax.scale_by_adam(), _scale_by_lr(lr_factor(config)))


def variance_optimizer() -> optax.GradientTransformationExtraArgs:
    """Adam of the variance estimator with a constant lr passed as ``lr=`` (the layout of ``optax.adam``)."""
    return optax.chain(optax.scale_by_adam(), _scale_by_lr(None))


def velocity_sigma_to_displacement(log_var_v: jax.Array, shape, int_downsize: int) -> jax.Array:
    """vxm-diff's per-component velocity sigma as a per-voxel displacement sigma ``[B, *shape, 1]``
    comparable with the isotropic sigma_z: the RMS over the components of
    ``int_downsize * upsample(exp(½ log sigma_v²))``. The integration's linearisation is taken as the
    identity (exp(v) ≈ v for small fields) and the upsampling's averaging is ignored."""
    sigma = spatial.resize_to(jnp.exp(0.5 * jnp.clip(log_var_v, *LOG_VAR_RANGE)), tuple(shape)) * int_downsize
    return jnp.sqrt(jnp.mean(jnp.square(sigma), axis=-1, keepdims=True))


_PROGRAMS: dict = {}


def programs_for(config, mesh: jax.sharding.Mesh) -> "StepPrograms":
    """The compiled-once programs of ``config``'s structure on ``mesh``, shared by every config that
    differs only in `HPARAMS` (and in keys no program reads: data, logging, evaluation)."""
    key = (_structure_key(config), mesh)
    if key not in _PROGRAMS:
        _PROGRAMS[key] = StepPrograms(structure(config), mesh)
    return _PROGRAMS[key]


class StepPrograms:
    """Models, optimisers and the pure jitted steps of one structure (`structure`) on one mesh.

    Every program takes the traced hyper-parameters (`hparams`) as its last argument:
    ``iteration(phase)(state, batch, hp)``, ``chunk(phase)(state, data, indices, length, hp)``,
    ``predict(state, batch, hp)``. ``pure_iteration`` / ``pure_chunk`` are the same functions before
    ``jax.jit``, to be transformed further (``jax.vmap`` over seeds).
    """

    def __init__(self, config, mesh: jax.sharding.Mesh):
        self.config = config
        self.method = methods.get_method(config.method)
        self.image_size = tuple(config.data.image_size)
        self.ndim = len(self.image_size)
        self.mesh = mesh
        self.motion_model = get_model(config.model, **motion_model_kwargs(config))
        self.variance_model = None
        if self.method.uses_variance:
            v = config.variance
            self.variance_model = get_model("variance_unet", enc_features=tuple(v.enc_features),
                                            dec_features=tuple(v.dec_features), **precision_kwargs(config),
                                            **unet_kwargs(config))
        self.motion_tx = motion_optimizer(config)
        self.variance_tx = variance_optimizer()
        self.bidirectional = config.model == "voxelmorph" and config.motion.bidirectional
        self.chunk_form = chunk_form(config, self.mesh)
        repl = sharding.replicated(self.mesh)
        jit_step = functools.partial(jax.jit, donate_argnums=0, out_shardings=(repl, repl))
        chunk = self._unrolled_chunk if self.chunk_form == "unrolled" else self._chunk
        self.pure_iteration = {phase: self._iteration(phase) for phase in PHASES}
        self.pure_chunk = {phase: chunk(phase) for phase in PHASES}
        self.iteration = {phase: jit_step(f) for phase, f in self.pure_iteration.items()}
        self.chunk = {phase: jit_step(f) for phase, f in self.pure_chunk.items()}
        self.motion_step = jit_step(functools.partial(self._motion_step, weighted=self.method.uses_variance))
        self.variance_step = jit_step(self._variance_step)
        # Replicated outputs: every process of a multi-host run can read the whole batch's predictions.
        self.predict = jax.jit(self._predict, out_shardings=repl)
        self._seed_chunks: dict[str, Callable] = {}

    def seed_chunk(self, phase: str) -> Callable:
        """The jitted chunk of several runs at once: ``(states, data, indices, length, hparams)`` with a
        leading run axis on all but ``length`` (``jax.vmap`` of ``pure_chunk[phase]``); measurements
        come back ``[runs, K]``. Built on first use, one program per phase and run count."""
        if phase not in self._seed_chunks:
            repl = sharding.replicated(self.mesh)
            vmapped = jax.vmap(self.pure_chunk[phase], in_axes=(0, 0, 0, None, 0))
            self._seed_chunks[phase] = jax.jit(vmapped, donate_argnums=0, out_shardings=(repl, repl))
        return self._seed_chunks[phase]

    # ----------------------------------------------------------------------------- set-up
    def init_state(self, seed: int) -> ts.TrainState:
        """Fresh parameters and optimiser states of ``seed``, replicated over the mesh."""
        return sharding.replicate(self.fresh_state(seed), self.mesh)

    def fresh_state(self, seed) -> ts.TrainState:
        """Fresh parameters and optimiser states of ``seed`` (an int or a traced int32), unplaced.

        ``lazy_init`` computes only the initialisers, not the networks' forward pass on a dummy
        input: the same bits as ``init`` (tested), with fewer operations to compile (measured on a
        2-core CPU: a fresh TransMorph state in 18.9 s instead of 27.2 s, docs/speed.md)."""
        k_motion, k_var = jax.random.split(jax.random.key(seed))
        dummy = jax.ShapeDtypeStruct((1, *self.image_size, 1), jnp.float32)
        motion_params = self.motion_model.lazy_init(k_motion, dummy, dummy)["params"]
        variance_params = {}
        if self.variance_model is not None:
            variance_params = self.variance_model.lazy_init(k_var, dummy, dummy)["params"]
        return ts.create(motion_params, variance_params, self.motion_tx, self.variance_tx)

    # ----------------------------------------------------------------------------- forward
    def _motion_apply(self, params, moving, fixed, rng=None, velocity_noise=None):
        kwargs = {}
        if self.config.model == "transmorph":
            kwargs = dict(train=rng is not None, rngs={"dropout": rng} if rng is not None else None)
        if velocity_noise is not None:
            kwargs["velocity_noise"] = velocity_noise
        out = self.motion_model.apply({"params": params}, moving, fixed, **kwargs)
        if not isinstance(out, dict):
            out = {"displacement": out, "velocity": out}
        return out

    def _log_var(self, params, warped, fixed):
        log_var = self.variance_model.apply({"params": params}, warped, fixed)
        return jnp.clip(log_var, *LOG_VAR_RANGE)

    def _mask(self, moving, fixed):
        return losses.foreground_mask(moving, fixed) if self.config.loss.use_mask else None

    def _loss_params(self, hp) -> types.SimpleNamespace:
        """The loss settings the methods read: the structural ones and the traced ``hp``."""
        return types.SimpleNamespace(**self.config.loss.to_dict(), **hp)

    def _direction_loss(self, variance_params, source, target, displacement, weighted, hp):
        """Similarity of ``warp(source, displacement)`` to ``target`` (one direction)."""
        warped = spatial.warp(source, displacement)
        mask = self._mask(source, target)
        weight = log_var = None
        if self.method.joint:  # the naive joint baselines: gradients reach theta through log_var too
            log_var = self._log_var(variance_params, warped, target)
        elif weighted:
            log_var = self._log_var(variance_params, jax.lax.stop_gradient(warped), target)
            cfg = self.config.loss
            weight = losses.snr_weight(target, log_var, hp["gamma"], form=cfg.snr_form, mask=mask,
                                       scope=cfg.minmax_scope)
        return methods.similarity(self.method, self._loss_params(hp), target, warped, weight, mask, log_var)

    def _velocity_noise(self, rng, moving):
        """N(0, I) of the velocity's shape (vxm-diff's sampled velocity), from ``rng``."""
        down = self.config.motion.int_downsize
        shape = tuple(max(1, int(round(n / down))) for n in moving.shape[1:-1])
        return jax.random.normal(rng, (moving.shape[0], *shape, self.ndim), moving.dtype)

    def _motion_loss(self, motion_params, variance_params, batch, rng, weighted, hp):
        """Motion loss; ``rng`` (the step's key) seeds dropout (TransMorph) and, folded with 1, the
        displacement / velocity samples of the sigma_z model and vxm-diff."""
        moving, fixed = batch["moving"], batch["fixed"]
        cfg = self._loss_params(hp)
        sample_rng = jax.random.fold_in(rng, 1) if rng is not None else None
        noise = None
        if self.method.probabilistic and sample_rng is not None:
            noise = self._velocity_noise(sample_rng, moving)
        out = self._motion_apply(motion_params, moving, fixed,
                                 rng if self.config.model == "transmorph" else None, velocity_noise=noise)
        disp = out["displacement"]
        if "log_var_z" in out:  # z ~ N(mu_z, sigma_z^2 I) by the reparameterisation trick (Section 5.3)
            log_var_z = jnp.clip(out["log_var_z"], *LOG_VAR_RANGE)
            if sample_rng is not None:
                disp = losses.reparameterize(disp, log_var_z, jax.random.normal(sample_rng, disp.shape, disp.dtype))
        if self.method.adaptive:  # AdaReg / AdaFrame: residual-weighted data term and regulariser
            sim, reg = methods.adaptive_terms(self.method, cfg, fixed, spatial.warp(moving, disp),
                                              out["velocity"], self._mask(moving, fixed))
        else:
            sim = self._direction_loss(variance_params, moving, fixed, disp, weighted, hp)
            reg = losses.smoothness(out["velocity"])
        if self.bidirectional:
            back = self._direction_loss(variance_params, fixed, moving, out["inverse_displacement"], weighted, hp)
            sim = 0.5 * (sim + back)
        measures = {"similarity": sim, "smoothness": reg}
        if self.method.probabilistic:  # vxm-diff: the KL replaces lambda * R
            measures["kl"] = losses.vxm_diff_kl(out["velocity"], out["velocity_log_var"], cfg.prior_lambda)
            total = sim + measures["kl"]
        else:
            total = sim + cfg.smooth_weight * cfg.reg_scale * reg
        if "log_var_z" in out:
            measures["sigma_z_prior"] = losses.sigma_z_prior(log_var_z)
            measures["sigma_z_rms"] = jnp.sqrt(jnp.mean(jnp.exp(log_var_z)))
            total = total + cfg.sigma_z_weight * measures["sigma_z_prior"]
        measures["motion_loss"] = total
        return total, measures

    # ----------------------------------------------------------------------------- steps
    @staticmethod
    def _step_rng(state, hp):
        """The step's key: ``fold_in(key(seed), step)``, the seed traced, the step in the state."""
        return jax.random.fold_in(jax.random.key(hp["seed"]), state.step)

    def _motion_step(self, state: ts.TrainState, batch, hp, weighted: bool = True):
        """Update theta only; phi is read (for the weight map) but never changed."""
        rng = self._step_rng(state, hp)
        grad_fn = jax.value_and_grad(self._motion_loss, has_aux=True)
        (_, measures), grads = grad_fn(state.motion_params, state.variance_params, batch, rng, weighted, hp)
        updates, opt_state = self.motion_tx.update(grads, state.motion_opt_state, state.motion_params,
                                                   lr=hp["motion_lr"], step=state.step)
        params = optax.apply_updates(state.motion_params, updates)
        measures["motion_grad_norm"] = optax.tree.norm(grads)
        return state.replace(motion_params=params, motion_opt_state=opt_state), measures

    def _variance_step(self, state: ts.TrainState, batch, hp):
        """Fresh forward with the current theta (no gradient to it), then update phi with beta-NLL."""
        moving, fixed = batch["moving"], batch["fixed"]
        out = self._motion_apply(state.motion_params, moving, fixed)
        warped = jax.lax.stop_gradient(spatial.warp(moving, out["displacement"]))
        mask = self._mask(moving, fixed)

        def loss_fn(params):
            return losses.beta_nll(fixed, warped, self._log_var(params, warped, fixed), beta=hp["beta"], mask=mask)

        loss, grads = jax.value_and_grad(loss_fn)(state.variance_params)
        updates, opt_state = self.variance_tx.update(grads, state.variance_opt_state, state.variance_params,
                                                     lr=hp["variance_lr"])
        params = optax.apply_updates(state.variance_params, updates)
        measures = {"variance_loss": loss, "variance_grad_norm": optax.tree.norm(grads)}
        return state.replace(variance_params=params, variance_opt_state=opt_state), measures

    def _joint_step(self, state: ts.TrainState, batch, hp):
        """NLL / beta-NLL baselines: one loss, differentiated w.r.t. both parameter trees."""
        rng = self._step_rng(state, hp)
        grad_fn = jax.value_and_grad(self._motion_loss, argnums=(0, 1), has_aux=True)
        (_, measures), (g_motion, g_var) = grad_fn(state.motion_params, state.variance_params, batch, rng,
                                                   False, hp)
        m_updates, m_opt = self.motion_tx.update(g_motion, state.motion_opt_state, state.motion_params,
                                                 lr=hp["motion_lr"], step=state.step)
        v_updates, v_opt = self.variance_tx.update(g_var, state.variance_opt_state, state.variance_params,
                                                   lr=hp["variance_lr"])
        measures["motion_grad_norm"] = optax.tree.norm(g_motion)
        measures["variance_grad_norm"] = optax.tree.norm(g_var)
        return state.replace(motion_params=optax.apply_updates(state.motion_params, m_updates),
                             variance_params=optax.apply_updates(state.variance_params, v_updates),
                             motion_opt_state=m_opt, variance_opt_state=v_opt), measures

    def _iteration(self, phase: str) -> Callable:
        def iterate(state, batch, hp):
            measures = {}
            if phase == "joint":
                state, m = self._joint_step(state, batch, hp)
                measures.update(m)
            if phase in ("motion", "motion_warmup", "alternating"):
                state, m = self._motion_step(state, batch, hp, weighted=phase == "alternating")
                measures.update(m)
            if phase in ("variance", "alternating"):
                state, m = self._variance_step(state, batch, hp)
                measures.update(m)
            finite = jnp.all(jnp.stack([jnp.isfinite(v) for v in measures.values()]))
            measures["all_finite"] = finite.astype(jnp.float32)
            return state.replace(step=state.step + 1), measures
        return iterate

    def _gather(self, data, indices, i, state, hp):
        """Step ``i``'s batch of a chunk, gathered from the data on the devices and sharded: the
        indices are row ``i`` of ``indices`` (``data.order="host"``), or drawn here from the seed and
        the state's step (``"device"``, where ``indices`` is ``[K, 0]`` and carries only K)."""
        batch_sharding = sharding.batch_sharding(self.mesh)
        if self.config.data.order == "device":
            n = next(iter(data.values())).shape[0]
            rows = drawn_batch_indices(hp["seed"], state.step, n, self.config.batch_size)
        else:
            rows = indices[i]
        return {k: jax.lax.with_sharding_constraint(jnp.take(v, rows, axis=0), batch_sharding)
                for k, v in data.items()}

    def _unrolled_chunk(self, phase: str) -> Callable:
        iterate = self._iteration(phase)

        def run(state, data, indices, length, hp):
            del length  # == len(indices): the steps are traced one after the other
            measures = []
            for i in range(indices.shape[0]):
                state, m = iterate(state, self._gather(data, indices, i, state, hp), hp)
                measures.append(m)
            return state, {k: jnp.stack([m[k] for m in measures]) for k in measures[0]}
        return run

    def _chunk(self, phase: str) -> Callable:
        iterate = self._iteration(phase)

        def run(state, data, indices, length, hp):
            def body(i, carry):
                state, stacked = carry
                state, measures = iterate(state, self._gather(data, indices, i, state, hp), hp)
                return state, {k: stacked[k].at[i].set(v) for k, v in measures.items()}

            shapes = jax.eval_shape(iterate, state, self._gather(data, indices, 0, state, hp), hp)[1]
            stacked = {k: jnp.zeros((indices.shape[0],), v.dtype) for k, v in shapes.items()}
            # A loop whose trip count is only known at run time: the same program (and the same
            # floating-point results) for every chunk length up to len(indices), K = 1 included.
            return jax.lax.fori_loop(0, length, body, (state, stacked))
        return run

    def _predict(self, state: ts.TrainState, batch, hp):
        """Inference on a batch: displacement, warped image and label, and log-variance if any."""
        moving, fixed = batch["moving"], batch["fixed"]
        motion = self._motion_apply(state.motion_params, moving, fixed)
        disp = motion["displacement"]  # the mean mu_z (sigma_z model) or the mean velocity's (vxm-diff)
        warped = spatial.warp(moving, disp)
        out = {"displacement": disp, "warped": warped}
        if "log_var_z" in motion:  # sigma_z in voxels, [B, *S, 1]
            out["sigma_z"] = jnp.exp(0.5 * jnp.clip(motion["log_var_z"], *LOG_VAR_RANGE))
        if "velocity_log_var" in motion:
            out["sigma_z"] = velocity_sigma_to_displacement(motion["velocity_log_var"], moving.shape[1:-1],
                                                            self.config.motion.int_downsize)
        if "moving_labels" in batch:  # [B, *S, K] structure masks, warped linearly
            out["warped_labels"] = spatial.warp(batch["moving_labels"], disp)
        if self.variance_model is not None:
            log_var = self._log_var(state.variance_params, warped, fixed)
            out["log_var"] = log_var
        if self.variance_model is not None and not self.method.joint:  # the weight "ours" trains with
            out["weight"] = self._sample_weight(fixed, log_var, self._mask(moving, fixed), hp)
        return out

    def _sample_weight(self, fixed, log_var, mask, hp):
        """The SNR weight map of each sample on its own: the min-max normalisation runs over one
        sample (training normalises over the batch tensor, as the authors' code), so a slice's map
        does not depend on what else is in the inference batch."""
        cfg = self.config.loss

        def one(f, lv, m):
            m = None if m is None else m[None]
            return losses.snr_weight(f[None], lv[None], hp["gamma"], form=cfg.snr_form, mask=m,
                                     scope=cfg.minmax_scope)[0]
        return jax.vmap(one)(fixed, log_var, mask)


class Trainer:
    """One run's view of the programs: its config, its traced hyper-parameters placed on the mesh, and
    the shared compiled programs of its structure (`programs_for`)."""

    def __init__(self, config, mesh: jax.sharding.Mesh | None = None):
        self.config = config
        self.mesh = mesh if mesh is not None else sharding.make_mesh()
        self.programs = programs_for(config, self.mesh)
        self.hparams = sharding.replicate(hparams(config), self.mesh)
        p = self.programs
        self.method, self.image_size, self.ndim = p.method, p.image_size, p.ndim
        self.motion_model, self.variance_model = p.motion_model, p.variance_model
        self.motion_tx, self.variance_tx = p.motion_tx, p.variance_tx
        self.bidirectional, self.chunk_form = p.bidirectional, p.chunk_form

    # ----------------------------------------------------------------------------- set-up
    def init_state(self, seed: int | None = None) -> ts.TrainState:
        """Fresh parameters and optimiser states, replicated over the mesh."""
        return self.programs.init_state(self.config.seed if seed is None else seed)

    def abstract_state(self) -> Any:
        """Shapes, dtypes and shardings of the state, without allocating it."""
        shapes = jax.eval_shape(self.programs.fresh_state, 0)
        repl = sharding.replicated(self.mesh)
        return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=repl), shapes)

    def phase(self, step: int) -> str:
        """Which update runs at ``step`` (0-based): see PHASES."""
        return self.method.phase(self.config, step)

    def train_chunk(self, phase: str) -> Callable:
        """The jitted ``(state, data, indices, length) -> (state, measurements)`` of ``length``
        iterations in ``phase``, in one call (a ``jax.lax.fori_loop``).

        ``data`` holds the whole training split on the devices (``{"moving", "fixed"}``, each
        ``[N, *spatial, 1]``, replicated); ``indices`` ``[K, batch]`` are the pair indices of up to K
        steps (rows past ``length`` are ignored); each step gathers its batch there and shards it
        over the mesh. The measurements come back stacked, ``[K]`` per key, the first ``length``
        valid. In the ``"unrolled"`` form (`chunk_form`) the program runs all ``len(indices)``
        steps: ``length`` must equal it, and each distinct length is its own compilation.
        """
        program, hp = self.programs.chunk[phase], self.hparams
        return lambda state, data, indices, length: program(state, data, indices, length, hp)

    def train_step(self, phase: str) -> Callable:
        """The jitted ``(state, batch) -> (state, measurements)`` of one iteration in ``phase``."""
        program, hp = self.programs.iteration[phase], self.hparams
        return lambda state, batch: program(state, batch, hp)

    def predict(self, state: ts.TrainState, batch) -> dict:
        """Inference on a batch (see `StepPrograms._predict`)."""
        return self.programs.predict(state, batch, self.hparams)

    def motion_step(self, state: ts.TrainState, batch):
        """One motion update alone (jitted, the state donated)."""
        return self.programs.motion_step(state, batch, self.hparams)

    def variance_step(self, state: ts.TrainState, batch):
        """One variance update alone (jitted, the state donated)."""
        return self.programs.variance_step(state, batch, self.hparams)

    # The forward pieces with this run's hyper-parameters (for tests and benchmarks).
    def _log_var(self, params, warped, fixed):
        return self.programs._log_var(params, warped, fixed)

    def _motion_apply(self, params, moving, fixed, rng=None, velocity_noise=None):
        return self.programs._motion_apply(params, moving, fixed, rng, velocity_noise)

    def _motion_loss(self, motion_params, variance_params, batch, rng, weighted):
        return self.programs._motion_loss(motion_params, variance_params, batch, rng, weighted, self.hparams)

    def _mask(self, moving, fixed):
        return self.programs._mask(moving, fixed)

