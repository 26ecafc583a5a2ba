"""A subject's anatomy through its life: a chain of calibrated changes from its reference anatomy.

The reference anatomy is the template under the subject's shape map ``F0``
(:mod:`~mambacontrol.synth.anatomy`): the subject at ``CohortDesign.reference_age``, before any
ageing or disease. From there the anatomy only moves forward, in legs that each bring every
region to a target volume:

1. the pre-baseline history ``H``: the log volume ratio the subject's own rates
   (:class:`~mambacontrol.synth.rates.SubjectRates`) prescribe over its stages before the first
   visit (``SubjectPlan.history``); the baseline anatomy is ``F0 ∘ H``;
2. one leg per follow-up visit, continuing from the previous visit, to the baseline volumes times
   the ratio the same rates prescribe since baseline.

A leg is one or more steps, each a calibrated Poisson deformation on template coordinates
(:class:`~mambacontrol.synth.atrophy.AtrophySimulator`) composed onto the map so far: template →
anatomy is ``F0 ∘ S_1 ∘ … ∘ S_n``. A leg asks each step for an equal share of the log volume
ratio still missing (measured on the map so far), as many steps as keep every share within
``AtrophyModel.max_step`` of any region; so no step's displacement gradient comes near 1, and the
last step of a leg is calibrated to the leg's exact targets: volume errors never accumulate. The
truth is always the Jacobian integral of the composed template → anatomy map.

So after baseline a subject continues the trajectory it was on before, at the same rates: one who
looks atrophied at baseline is, in proportion, one who declines fast or has declined long.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from mambacontrol.synth.atrophy import AtrophySimulator
from mambacontrol.synth.fields import invert_at


@dataclass
class Leg:
    """The steps of one leg of a trajectory and their checks.

    Attributes:
        displacements: each step's ``s_i`` of ``S_i = id + s_i``, (3, X, Y, Z) float32 (template
            voxels), in the order they were composed.
        max_gradient_norm: largest ``‖∇s_i‖`` (Frobenius; below 1: each step is injective).
        calibration_error: largest relative error of a calibrated region's change in the last
            step, the one calibrated to the leg's targets (earlier steps accept
            ``AtrophyModel.step_tolerance``).
    """

    displacements: list[np.ndarray] = field(default_factory=list)
    max_gradient_norm: float = 0.0
    calibration_error: float = 0.0

    @property
    def steps(self) -> int:
        return len(self.displacements)

    def inverse_at(self, points: np.ndarray) -> tuple[np.ndarray, float]:
        """The leg's inverse ``S_n⁻¹ ∘ … ∘ S_1⁻¹`` at points of the anatomy before it.

        Args:
            points: (3, ...) template voxel coordinates of the points in the previous map.

        Returns:
            ``(y, step)``: (3, ...) template coordinates and the largest last fixed-point update of
            any step's inverse (voxels; 0 for a leg without steps).
        """
        largest = 0.0
        for displacement in self.displacements:
            points, last = invert_at(displacement, points)
            largest = max(largest, last)
        return points, largest


class Trajectory:
    """The current map template → anatomy of one subject, advanced leg by leg.

    Args:
        start: a simulator adding change to the map the trajectory starts from (the shape map
            ``F0``, or the baseline map); it is not modified.
        step: the largest absolute log volume ratio one step may ask of a region.

    Attributes:
        simulator: the simulator adding change to the current map.
    """

    def __init__(self, start: AtrophySimulator, step: float):
        if step <= 0:
            raise ValueError(f"step={step} must be positive")
        self.step = step
        self.simulator = start

    @property
    def volumes(self) -> np.ndarray:
        """(R,) regional volumes of the current anatomy (mm³): the Jacobian integral of the map."""
        return self.simulator.baseline_volumes

    @property
    def forward(self) -> np.ndarray:
        """(3, X, Y, Z) displacement of the current map (template voxels)."""
        return self.simulator.forward

    @property
    def jacobian(self) -> np.ndarray:
        """(X, Y, Z) Jacobian determinant of the current map."""
        return self.simulator.j0

    def advance(self, target: np.ndarray) -> Leg:
        """Change the anatomy until every calibrated region has its target volume.

        Args:
            target: (R,) target volumes (mm³), positive.

        Returns:
            The :class:`Leg` it took (no steps when the anatomy is already there).
        """
        target = np.asarray(target, dtype=np.float64)
        missing = np.log(target / self.volumes)
        peak = float(np.abs(missing).max()) if missing.size else 0.0
        steps = math.ceil(peak / self.step) if peak > 0 else 0
        leg = Leg()
        for i in range(steps):
            sim = self.simulator
            last = i == steps - 1
            deformation = sim.deform(np.log(target / self.volumes) / (steps - i),
                                     None if last else sim.model.step_tolerance)
            self.simulator = sim.rebased(deformation.forward, deformation.jacobian)
            leg.displacements.append(deformation.displacement)
            leg.max_gradient_norm = max(leg.max_gradient_norm, deformation.max_gradient_norm)
            leg.calibration_error = deformation.calibration_error
        return leg
