"""Dense displacement fields on a voxel grid: sampling, composition, exponentials, Jacobians,
inverses.

Conventions: a map ``M`` is stored as its displacement ``d`` with ``M(y) = y + d(y)``; ``d`` has
shape ``(3, X, Y, Z)`` in voxel units of the grid it lives on; point sets are ``(3, ...)`` arrays of
voxel coordinates. Interpolation is :func:`scipy.ndimage.map_coordinates`.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage


def identity(shape: tuple[int, int, int]) -> np.ndarray:
    """Voxel coordinates of every grid point, ``(3, X, Y, Z)`` float32."""
    return np.stack(np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij"))


def sample(volume: np.ndarray, points: np.ndarray, order: int = 1, outside: float | None = None,
           prefiltered: bool = False) -> np.ndarray:
    """Interpolate a volume at voxel coordinates.

    Args:
        volume: (X, Y, Z) values.
        points: (3, ...) voxel coordinates.
        order: spline order (0 nearest, 1 linear, 3 cubic).
        outside: value outside the grid; ``None`` repeats the edge (for displacement fields).
        prefiltered: ``volume`` already holds cubic spline coefficients
            (:func:`scipy.ndimage.spline_filter`).

    Returns:
        (...) float32 values (the volume's dtype for ``order=0``).
    """
    mode = "nearest" if outside is None else "constant"
    out = np.float32 if order > 0 else volume.dtype
    return ndimage.map_coordinates(volume, points, order=order, mode=mode,
                                   cval=0.0 if outside is None else outside, output=out,
                                   prefilter=not prefiltered)


def sample_field(field: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Linearly interpolate a (3, X, Y, Z) vector field at (3, ...) points -> (3, ...)."""
    return np.stack([sample(field[i], points) for i in range(3)])


def compose(outer: np.ndarray, inner: np.ndarray) -> np.ndarray:
    """Displacement of ``(id + outer) ∘ (id + inner)``, both (3, X, Y, Z) on the same grid."""
    return inner + sample_field(outer, identity(inner.shape[1:]) + inner)


def squaring_steps(velocity: np.ndarray, max_step: float = 0.25) -> int:
    """Scaling-and-squaring steps so that the first step moves at most ``max_step`` voxel."""
    peak = float(np.abs(velocity).max()) if velocity.size else 0.0
    return max(3, math.ceil(math.log2(max(peak, 1e-12) / max_step)))


def exp_velocity(velocity: np.ndarray, steps: int | None = None) -> np.ndarray:
    """Diffeomorphism ``exp(v)`` of a stationary velocity field by scaling and squaring.

    Args:
        velocity: (3, X, Y, Z) velocity in voxels per unit time.
        steps: number of squarings (default: :func:`squaring_steps`).

    Returns:
        (3, X, Y, Z) float32 displacement of the time-1 flow.
    """
    n = squaring_steps(velocity) if steps is None else steps
    disp = (velocity / float(2**n)).astype(np.float32)
    for _ in range(n):
        disp = compose(disp, disp)
    return disp


def jacobian_matrix(disp: np.ndarray) -> list[list[np.ndarray]]:
    """Entries ``J[i][j] = δ_ij + ∂d_i/∂y_j`` of the map's Jacobian (central differences)."""
    grads = [np.gradient(disp[i]) for i in range(3)]
    return [[grads[i][j] + (1.0 if i == j else 0.0) for j in range(3)] for i in range(3)]


def jacobian_determinant(disp: np.ndarray) -> np.ndarray:
    """Jacobian determinant of ``y -> y + d(y)``, (X, Y, Z), central differences (one-sided at
    edges)."""
    m = jacobian_matrix(disp)
    return (m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1])
            - m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0])
            + m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0]))


def max_gradient_norm(disp: np.ndarray) -> float:
    """Largest Frobenius norm of ``∇d`` over the grid (below 1, ``id + d`` is injective)."""
    grads = [np.gradient(disp[i]) for i in range(3)]
    return float(np.sqrt(sum(g * g for gi in grads for g in gi)).max())


def invert_at(disp: np.ndarray, points: np.ndarray, iterations: int = 30,
              tol: float = 1e-3) -> tuple[np.ndarray, float]:
    """Inverse of ``y -> y + d(y)`` at given points, by the fixed point ``y = z - d(y)``.

    The iteration contracts wherever ``‖∇d‖ < 1`` (sub-voxel, smooth displacements).

    Args:
        disp: (3, X, Y, Z) displacement of the forward map.
        points: (3, ...) points ``z`` at which to evaluate the inverse.
        iterations: at most this many fixed-point steps.
        tol: stop once no point moves by more than this (voxels).

    Returns:
        ``(y, step)``: (3, ...) float32 preimages and the last step's largest update (voxels).
    """
    y = points - sample_field(disp, points)
    step = float("inf")
    for _ in range(iterations):
        new = points - sample_field(disp, y)
        step = float(np.abs(new - y).max()) if new.size else 0.0
        y = new
        if step < tol:
            break
    return y.astype(np.float32), step
