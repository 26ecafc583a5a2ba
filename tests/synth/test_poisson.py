import numpy as np

from mambacontrol.synth.poisson import PoissonSolver

SHAPE = (24, 20, 16)


def divergence(v):
    return sum(np.gradient(v[i], axis=i) for i in range(3))


def test_smooth_source_is_reproduced_by_the_divergence():
    x, y, z = np.meshgrid(*[np.arange(n) for n in SHAPE], indexing="ij")
    f = (np.sin(2 * np.pi * x / SHAPE[0]) * np.cos(2 * np.pi * 2 * y / SHAPE[1])
         + 0.5 * np.sin(2 * np.pi * z / SHAPE[2])).astype(np.float32)
    solver = PoissonSolver(SHAPE)
    v = solver.gradient_of_potential(f)
    assert v.shape == (3, *SHAPE) and v.dtype == np.float32
    inner = (slice(1, -1),) * 3
    # central differences of a central-difference gradient: a low-pass close to 1 at low frequencies
    np.testing.assert_allclose(divergence(v)[inner], f[inner], atol=0.12)
    np.testing.assert_allclose(solver.realised_divergence(f)[inner],
                               divergence(v)[inner], atol=1e-4)


def test_mean_is_ignored_and_solution_is_linear(rng):
    solver = PoissonSolver(SHAPE)
    f = rng.standard_normal(SHAPE).astype(np.float32)
    np.testing.assert_allclose(solver.gradient_of_potential(f + 3.0),
                               solver.gradient_of_potential(f),
                               atol=1e-5)
    np.testing.assert_allclose(solver.gradient_of_potential(2 * f),
                               2 * solver.gradient_of_potential(f),
                               rtol=1e-4, atol=1e-6)
    assert np.abs(solver.gradient_of_potential(np.ones(SHAPE, np.float32))).max() < 1e-6


def test_region_source_mostly_realised_inside():
    f = np.zeros(SHAPE, np.float32)
    f[8:16, 6:14, 4:12] = 0.1
    f -= f.mean()
    d = PoissonSolver(SHAPE).realised_divergence(f)
    inside = d[8:16, 6:14, 4:12].mean()
    assert 0.6 * f[10, 10, 8] < inside < f[10, 10, 8]  # smeared across the edges, hence calibration
