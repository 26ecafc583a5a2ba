"""A trajectory of calibrated atrophy steps on the 4 mm atlas: targets met, steps bounded,
invertible."""

import numpy as np
import pytest

from mambacontrol.atlas import load_atlas
from mambacontrol.synth.anatomy import SubjectAnatomy
from mambacontrol.synth.atrophy import AtrophyModel, AtrophySimulator
from mambacontrol.synth.fields import identity, sample_field
from mambacontrol.synth.poisson import PoissonSolver
from mambacontrol.synth.rates import RateModel
from mambacontrol.synth.trajectory import Trajectory


@pytest.fixture(scope="module")
def start():
    atlas = load_atlas(grid="4mm")
    anatomy = SubjectAnatomy(atlas.mask, atlas.spacing, "F", np.random.default_rng(7))
    labels = np.asarray(atlas.labels)
    sim = AtrophySimulator(labels, np.asarray(atlas.label_ids), anatomy.forward, anatomy.jacobian,
                           atlas.voxel_volume, PoissonSolver(labels.shape), AtrophyModel())
    rates = RateModel().draw(np.random.default_rng(8), 80.0, "F", atlas.regions)
    # twenty years of ageing, four of MCI, two of AD: lateral ventricles +68 %
    log_ratio = rates.log_ratio(((-26.0, "CN"), (-6.0, "MCI"), (-2.0, "AD")), 0.0)
    return sim, log_ratio


def test_long_change_is_split_into_bounded_steps_that_meet_the_target(start):
    sim, log_ratio = start
    before = sim.baseline_volumes.copy()
    trajectory = Trajectory(sim, step=0.25)
    leg = trajectory.advance(before * np.exp(log_ratio))
    assert np.abs(log_ratio).max() > 0.5
    assert leg.steps == int(np.ceil(np.abs(log_ratio).max() / 0.25))
    big = before >= 1000.0
    realised = trajectory.volumes / before - 1.0
    rel = np.abs(realised - np.expm1(log_ratio)) / np.abs(np.expm1(log_ratio))
    assert rel[big].max() < 0.02  # the last step is calibrated to the leg's exact target
    assert leg.max_gradient_norm < 0.5 and leg.calibration_error < 0.05
    assert trajectory.jacobian.min() > 0
    np.testing.assert_array_equal(sim.baseline_volumes, before)  # the start is not modified
    again = trajectory.advance(trajectory.volumes)
    assert again.steps == 0 and again.inverse_at(np.zeros((3, 4)))[1] == 0.0


def test_leg_inverse_undoes_the_composed_steps(start):
    sim, log_ratio = start
    trajectory = Trajectory(sim, step=0.25)
    leg = trajectory.advance(sim.baseline_volumes * np.exp(log_ratio))
    shape = sim.index.shape
    points = identity(shape)[:, 8:-8, 8:-8, 8:-8].reshape(3, -1)
    pre, step = leg.inverse_at(points)
    assert step < 1e-2
    forward = pre
    for displacement in reversed(leg.displacements):  # S_1 ∘ … ∘ S_n at the preimages
        forward = forward + sample_field(displacement, forward)
    np.testing.assert_allclose(forward, points, atol=5e-3)


def test_step_must_be_positive(start):
    with pytest.raises(ValueError, match="step"):
        Trajectory(start[0], step=0.0)
