"""Mixed precision (config.compute_dtype) and rematerialisation (config.remat) of the networks.

bfloat16 must reach the convolutions, Dense layers and attention, and nothing else: parameters and
the outputs used for warping and losses stay float32. Rematerialisation must change neither the
parameter tree (checkpoints) nor the loss and gradients.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import make_tiny_config

from hetreg_jax.config import check as config_check
from hetreg_jax.train import step as steps
from hetreg_jax.models import get_model

BF16 = jnp.dtype(jnp.bfloat16)
F32 = jnp.dtype(jnp.float32)
UNET = dict(enc_features=(8, 16), dec_features=(16, 16, 8))
TRANSMORPH = dict(embed_dim=12, depths=(2, 1), num_heads=(1, 1), window_size=(4, 4), drop_path_rate=0.3)


def _images(seed=0, batch=2, size=(32, 32)):
    rng = np.random.default_rng(seed)
    return tuple(jnp.asarray(rng.random((batch, *size, 1), np.float32)) for _ in range(2))


def _build(name, **kwargs):
    base = {"voxelmorph": UNET, "variance_unet": UNET, "transmorph": TRANSMORPH}[name]
    return get_model(name, **base, **kwargs)


def _paths(tree):
    return [(jax.tree_util.keystr(path), leaf.shape, leaf.dtype)
            for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]]


@pytest.fixture(scope="module")
def images():
    return _images()


@pytest.mark.parametrize("name", ["voxelmorph", "variance_unet", "transmorph"])
def test_parameters_are_float32_and_the_same_tree_in_every_mode(name, images):
    def init(dtype, remat, abstract=True):
        model = _build(name, dtype=dtype, remat=remat)
        fn = lambda: model.lazy_init(jax.random.key(0), *images)["params"]  # noqa: E731
        return jax.eval_shape(fn) if abstract else jax.jit(fn)()  # jitted: one compilation, the same for both

    reference = _paths(init(jnp.float32, False))
    assert {dtype for _, _, dtype in reference} == {F32}
    for dtype in (jnp.float32, jnp.bfloat16):
        for remat in (False, True):  # same names, shapes, dtypes: checkpoints carry over
            assert _paths(init(dtype, remat)) == reference
    plain, mixed = init(jnp.float32, False, False), init(jnp.bfloat16, True, False)
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(mixed)))


def _intermediate_dtypes(model, params, images):
    _, state = model.apply({"params": params}, *images, capture_intermediates=True, mutable=["intermediates"])
    return {jax.tree_util.keystr(path): leaf.dtype
            for path, leaf in jax.tree_util.tree_flatten_with_path(state["intermediates"])[0]}


@pytest.mark.parametrize("name, inner, head", [
    ("voxelmorph", "['unet']", "['flow']"),
    ("variance_unet", "['unet']", "['log_var']"),
    ("transmorph", "['transformer']", "['reg_head']"),
])
def test_bfloat16_runs_inside_the_networks_and_their_outputs_are_float32(name, inner, head, images):
    model = _build(name, dtype=jnp.bfloat16)
    params = model.lazy_init(jax.random.key(0), *images)["params"]
    dtypes = _intermediate_dtypes(model, params, images)
    inside = {k: v for k, v in dtypes.items() if k.startswith(inner)}
    assert len(inside) >= 5 and set(inside.values()) == {BF16}, inside
    if name == "transmorph":  # attention projections, MLP and the convolutional decoder too
        assert dtypes["['transformer']['layers_0']['blocks_1']['msa']['attn']['qkv']['__call__'][0]"] == BF16
        assert dtypes["['transformer']['layers_0']['blocks_0']['mlp']['fc2']['__call__'][0]"] == BF16
        assert dtypes["['up0']['conv1']['conv']['__call__'][0]"] == BF16
    assert {v for k, v in dtypes.items() if k.startswith(head)} == {F32}

    out = model.apply({"params": params}, *images)
    outs = out if isinstance(out, dict) else {"out": out}
    assert {v.dtype for v in outs.values()} == {F32}
    # Same parameters in float32: bf16 has an 8-bit mantissa, the outputs agree to about 1%.
    ref = _build(name).apply({"params": params}, *images)
    refs = ref if isinstance(ref, dict) else {"out": ref}
    for key, value in outs.items():
        scale = float(jnp.max(jnp.abs(refs[key])))
        err = float(jnp.max(jnp.abs(value - refs[key])))
        assert 0 < err < 0.05 * scale, (key, err, scale)


def _loss_and_grads(name, remat, images):
    model = _build(name, remat=remat)
    params = _build(name).lazy_init(jax.random.key(1), *images)["params"]
    kwargs = {}
    if name == "transmorph":  # stochastic depth on: the dropout rng must replay identically
        kwargs = dict(train=True, rngs={"dropout": jax.random.key(7)})

    def loss(p):
        out = model.apply({"params": p}, *images, **kwargs)
        disp = out["displacement"] if isinstance(out, dict) else out
        return jnp.sum(disp ** 2) * 1e6 + jnp.sum(jnp.sin(1e4 * disp))

    return jax.jit(jax.value_and_grad(loss))(params)


@pytest.mark.parametrize("name", ["voxelmorph", "transmorph"])
def test_remat_gives_the_same_loss_and_gradients(name, images):
    loss, grads = _loss_and_grads(name, False, images)
    loss_r, grads_r = _loss_and_grads(name, True, images)
    np.testing.assert_allclose(loss_r, loss, rtol=1e-6)
    for (path, g), g_r in zip(jax.tree_util.tree_flatten_with_path(grads)[0], jax.tree.leaves(grads_r)):
        scale = float(jnp.max(jnp.abs(g))) + 1e-30
        assert float(jnp.max(jnp.abs(g_r - g))) <= 1e-6 * scale, jax.tree_util.keystr(path)
    assert sum(float(jnp.sum(jnp.abs(g))) > 0 for g in jax.tree.leaves(grads)) >= 0.9 * len(jax.tree.leaves(grads))


def test_one_bfloat16_training_iteration_with_remat_is_finite_and_keeps_float32_state():
    config = make_tiny_config(compute_dtype="bfloat16", remat="blocks")
    trainer = steps.Trainer(config)
    state = trainer.init_state()
    before = jax.tree.map(np.asarray, state.motion_params)
    moving, fixed = _images(seed=3, batch=config.batch_size)
    step = trainer.train_step("alternating")
    state, measures = step(state, {"moving": moving, "fixed": fixed})
    assert float(measures["all_finite"]) == 1.0
    assert {leaf.dtype for leaf in jax.tree.leaves((state.motion_params, state.variance_params,
                                                    state.motion_opt_state, state.variance_opt_state))
            if jnp.issubdtype(leaf.dtype, jnp.floating)} == {F32}
    moved = [not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(state.motion_params))]
    assert all(moved)


@pytest.mark.parametrize("key, value, allowed", [
    ("compute_dtype", "float16", "one of 'float32', 'bfloat16'"),
    ("remat", "all", "one of 'none', 'blocks'"),
])
def test_bad_precision_keys_are_refused_in_one_line(key, value, allowed):
    with pytest.raises(ValueError) as info:
        config_check.validate_config(make_tiny_config(**{key: value}))
    assert str(info.value) == f"config.{key}={value!r} is not allowed: {allowed}"
