import numpy as np
import pytest

from mambacontrol.synth.fields import (
    compose,
    exp_velocity,
    identity,
    invert_at,
    jacobian_determinant,
    max_gradient_norm,
    sample_field,
)

SHAPE = (20, 22, 18)


def smooth_field(rng, amplitude, shape=SHAPE):
    """A smooth random displacement: a few low-frequency sinusoids per component."""
    grid = identity(shape)
    out = np.zeros((3, *shape), dtype=np.float32)
    for i in range(3):
        for _ in range(3):
            k = rng.uniform(0.1, 0.3, 3)
            phase = rng.uniform(0, 2 * np.pi)
            out[i] += amplitude * np.sin(np.tensordot(k, grid, axes=1) + phase)
    return out


def test_identity_and_affine_jacobian():
    grid = identity(SHAPE)
    assert grid.shape == (3, *SHAPE) and grid[1, 3, 5, 7] == 5
    a = np.array([[1.1, 0.2, 0.0], [0.0, 0.9, 0.1], [0.05, 0.0, 1.2]])
    disp = np.einsum("ij,j...->i...", a - np.eye(3), grid).astype(np.float32)
    np.testing.assert_allclose(jacobian_determinant(disp), np.linalg.det(a), rtol=1e-5)


def test_compose_translations_add():
    t1 = np.broadcast_to(np.array([0.3, -0.2, 0.1], np.float32)[:, None, None, None], (3, *SHAPE))
    t2 = np.broadcast_to(np.array([-0.1, 0.5, 0.2], np.float32)[:, None, None, None], (3, *SHAPE))
    np.testing.assert_allclose(compose(t1, t2)[:, 5:-5, 5:-5, 5:-5],
                               (t1 + t2)[:, 5:-5, 5:-5, 5:-5], atol=1e-6)


def test_exp_of_velocity_is_invertible_and_positive(rng):
    v = smooth_field(rng, 0.3)
    fwd, back = exp_velocity(v), exp_velocity(-v)
    inner = (slice(None),) + (slice(4, -4),) * 3
    assert np.abs(compose(fwd, back)[inner]).max() < 0.05
    assert jacobian_determinant(fwd).min() > 0
    np.testing.assert_array_equal(exp_velocity(np.zeros((3, *SHAPE), np.float32)), 0)


def test_invert_at_recovers_points(rng):
    u = smooth_field(rng, 0.3)
    assert max_gradient_norm(u) < 1
    points = identity(SHAPE)[:, 3:-3, 3:-3, 3:-3].reshape(3, -1)
    pre, step = invert_at(u, points, tol=1e-5)
    assert step < 1e-5
    np.testing.assert_allclose(pre + sample_field(u, pre), points, atol=1e-4)


@pytest.mark.parametrize("amplitude", [0.0, 0.2])
def test_max_gradient_norm_of_linear_field(amplitude):
    grid = identity(SHAPE)
    disp = (amplitude * grid).astype(np.float32)
    assert max_gradient_norm(disp) == pytest.approx(amplitude * np.sqrt(3), rel=1e-5)
