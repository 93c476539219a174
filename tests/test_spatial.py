"""Analytic checks of warping, integration, field resizing and Jacobian determinants."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from hetreg_jax.core import spatial


def _random_image(rng, shape):
    return jnp.asarray(rng.random(shape), jnp.float32)


def _constant_field(shape, vector):
    return jnp.broadcast_to(jnp.asarray(vector, jnp.float32), (*shape, len(vector)))


def test_identity_grid_indexes_axes():
    grid = spatial.identity_grid((3, 4))
    assert grid.shape == (3, 4, 2)
    np.testing.assert_array_equal(grid[2, 1], [2.0, 1.0])


@pytest.mark.parametrize("shape", [(2, 9, 7, 3), (1, 5, 6, 4, 2)])
def test_zero_displacement_is_identity(shape):
    image = _random_image(np.random.default_rng(0), shape)
    zero = jnp.zeros((*shape[:-1], len(shape) - 2))
    np.testing.assert_array_equal(spatial.warp(image, zero), image)
    np.testing.assert_array_equal(spatial.warp(image, zero, order=0), image)


def test_integer_shift_is_a_shifted_array_with_zeros():
    image = _random_image(np.random.default_rng(1), (1, 8, 10, 1))
    # u = (+2, -3): out[i, j] = in[i + 2, j - 3].
    out = spatial.warp(image, _constant_field((1, 8, 10), (2.0, -3.0)))
    expected = np.zeros_like(image)
    expected[:, :-2, 3:] = np.asarray(image)[:, 2:, :-3]
    np.testing.assert_allclose(out, expected, atol=1e-6)
    out0 = spatial.warp(image, _constant_field((1, 8, 10), (2.0, -3.0)), order=0)
    np.testing.assert_allclose(out0, expected, atol=0)


def test_half_voxel_shift_averages_neighbours():
    image = _random_image(np.random.default_rng(2), (1, 6, 7, 2))
    out = spatial.warp(image, _constant_field((1, 6, 7), (0.0, 0.5)))
    img = np.asarray(image)
    expected = np.zeros_like(img)
    expected[:, :, :-1] = 0.5 * (img[:, :, :-1] + img[:, :, 1:])
    expected[:, :, -1] = 0.5 * img[:, :, -1]  # the right neighbour is outside: it reads zero
    np.testing.assert_allclose(out, expected, atol=1e-6)


def test_linear_warp_matches_map_coordinates_inside():
    rng = np.random.default_rng(3)
    image = rng.random((1, 12, 11, 1)).astype(np.float32)
    disp = rng.normal(scale=2.0, size=(1, 12, 11, 2)).astype(np.float32)
    out = np.asarray(spatial.warp(jnp.asarray(image), jnp.asarray(disp)))
    coords = np.moveaxis(np.asarray(spatial.identity_grid((12, 11))) + disp[0], -1, 0)
    ref = ndimage.map_coordinates(image[0, ..., 0], coords, order=1, mode="constant", cval=0.0)
    inside = np.all((coords >= 0) & (coords <= np.array([11, 10])[:, None, None]), axis=0)
    assert inside.sum() > 50
    np.testing.assert_allclose(out[0, ..., 0][inside], ref[inside], atol=1e-5)


def test_nearest_keeps_label_values():
    rng = np.random.default_rng(4)
    labels = jnp.asarray(rng.integers(0, 4, size=(2, 10, 10, 1)), jnp.float32)
    disp = jnp.asarray(rng.normal(scale=1.5, size=(2, 10, 10, 2)), jnp.float32)
    out = np.asarray(spatial.warp(labels, disp, order=0))
    assert set(np.unique(out)) <= {0.0, 1.0, 2.0, 3.0}
    linear = np.asarray(spatial.warp(labels, disp, order=1))
    assert len(np.unique(linear)) > 4  # linear mixes labels; nearest must not


def test_warp_3d_integer_shift_and_half_shift():
    image = _random_image(np.random.default_rng(5), (1, 5, 6, 7, 1))
    img = np.asarray(image)
    out = spatial.warp(image, _constant_field((1, 5, 6, 7), (1.0, 0.0, -2.0)))
    expected = np.zeros_like(img)
    expected[:, :-1, :, 2:] = img[:, 1:, :, :-2]
    np.testing.assert_allclose(out, expected, atol=1e-6)
    half = spatial.warp(image, _constant_field((1, 5, 6, 7), (0.5, 0.0, 0.0)))
    expected = np.zeros_like(img)
    expected[:, :-1] = 0.5 * (img[:, :-1] + img[:, 1:])
    expected[:, -1] = 0.5 * img[:, -1]
    np.testing.assert_allclose(half, expected, atol=1e-6)


def test_warp_gradients_are_finite_and_correct_under_jit():
    rng = np.random.default_rng(6)
    image = _random_image(rng, (2, 8, 8, 1))
    disp = jnp.asarray(rng.normal(scale=0.7, size=(2, 8, 8, 2)), jnp.float32)

    @jax.jit
    def loss(img, u):
        return jnp.sum(spatial.warp(img, u) ** 2)

    g_img, g_disp = jax.grad(loss, argnums=(0, 1))(image, disp)
    assert np.all(np.isfinite(g_img)) and np.all(np.isfinite(g_disp))
    assert np.abs(g_img).sum() > 0 and np.abs(g_disp).sum() > 0
    # d/du of warp for a linear ramp image I(x) = x_1 (interior, away from borders) is e_1.
    ramp = jnp.broadcast_to(jnp.arange(8.0)[None, None, :, None], (1, 8, 8, 1))
    small = jnp.full((1, 8, 8, 2), 0.25)
    grad = jax.grad(lambda u: jnp.sum(spatial.warp(ramp, u)[:, 2:6, 2:6]))(small)
    np.testing.assert_allclose(grad[0, 2:6, 2:6, 1], 1.0, atol=1e-6)
    np.testing.assert_allclose(grad[0, 2:6, 2:6, 0], 0.0, atol=1e-6)


def test_warp_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="share"):
        spatial.warp(jnp.zeros((1, 8, 8, 1)), jnp.zeros((1, 8, 9, 2)))
    with pytest.raises(ValueError, match="order"):
        spatial.warp(jnp.zeros((1, 8, 8, 1)), jnp.zeros((1, 8, 8, 2)), order=3)


def test_integrating_zero_is_zero_and_constant_is_translation():
    np.testing.assert_array_equal(spatial.integrate_velocity(jnp.zeros((1, 16, 16, 2))), 0.0)
    v = _constant_field((1, 32, 32), (0.5, -0.25))
    u = spatial.integrate_velocity(v, steps=7)
    # A constant velocity flows to the same translation; near the border the flow reads zeros.
    np.testing.assert_allclose(u[:, 4:-4, 4:-4], v[:, 4:-4, 4:-4], atol=1e-5)
    v3 = _constant_field((1, 12, 12, 12), (0.3, 0.0, -0.4))
    u3 = spatial.integrate_velocity(v3, steps=5)
    np.testing.assert_allclose(u3[:, 3:-3, 3:-3, 3:-3], v3[:, 3:-3, 3:-3, 3:-3], atol=1e-5)


def test_integration_of_rotation_velocity_is_a_rotation():
    # v(x) = omega * J (x - c) is an infinitesimal rotation; its exponential rotates by omega.
    n, omega = 33, 0.1
    grid = np.asarray(spatial.identity_grid((n, n))) - (n - 1) / 2
    v = omega * np.stack([-grid[..., 1], grid[..., 0]], -1)
    u = np.asarray(spatial.integrate_velocity(jnp.asarray(v[None], jnp.float32), steps=7))[0]
    c, s = np.cos(omega), np.sin(omega)
    rotated = np.stack([c * grid[..., 0] - s * grid[..., 1], s * grid[..., 0] + c * grid[..., 1]], -1)
    inner = slice(10, -10)
    np.testing.assert_allclose((grid + u)[inner, inner], rotated[inner, inner], atol=2e-3)


def test_resize_field_aligned_corners_and_vector_scaling():
    ramp = jnp.broadcast_to(jnp.arange(8.0)[None, :, None, None], (1, 8, 6, 2))
    half = spatial.resize_field(ramp, 0.5)
    assert half.shape == (1, 4, 3, 2)
    # Aligned corners: sample i of 4 sits at 7 i / 3 of the input; vectors are halved.
    np.testing.assert_allclose(half[0, :, 0, 0], 0.5 * np.arange(4) * 7 / 3, atol=1e-5)
    const = _constant_field((1, 16, 16), (1.0, -2.0))
    np.testing.assert_allclose(spatial.resize_field(const, 2.0), 2.0 * _constant_field((1, 32, 32), (1.0, -2.0)))
    up = spatial.resize_field(half, 2.0)
    assert up.shape == (1, 8, 6, 2)
    np.testing.assert_allclose(up[0, 0], ramp[0, 0], atol=1e-5)
    np.testing.assert_allclose(up[0, -1], ramp[0, -1], atol=1e-5)
    assert spatial.resize_field(jnp.zeros((1, 8, 8, 8, 3)), 0.5).shape == (1, 4, 4, 4, 3)


@pytest.mark.parametrize("matrix", [[[1.2, 0.3], [-0.1, 0.9]], [[1.1, 0.2, 0.0], [0.0, 0.8, 0.1], [0.3, 0.0, 1.3]]])
def test_jacobian_determinant_of_affine_field(matrix):
    a = np.asarray(matrix)
    ndim = a.shape[0]
    shape = (6,) * ndim
    grid = np.asarray(spatial.identity_grid(shape))
    disp = grid @ (a - np.eye(ndim)).T + 0.7  # u(x) = (A - I) x + t
    det = spatial.jacobian_determinant(jnp.asarray(disp[None], jnp.float32))
    assert det.shape == (1, *shape)
    np.testing.assert_allclose(det, np.linalg.det(a), rtol=1e-5)
    np.testing.assert_allclose(spatial.jacobian_determinant(jnp.zeros((2, *shape, ndim))), 1.0)
