"""Atrophy step: a smooth deformation that changes every region's volume by a prescribed ratio.

The changed anatomy is the current one under the total map ``T = F0 ∘ P`` (template → changed
anatomy), where ``P(y) = y + u(y)`` acts on template coordinates and ``F0`` is the map the change is
added to: template → the subject's anatomy so far (its shape map, then every earlier step; see
:mod:`~mambacontrol.synth.trajectory`). The truth is the volume of region ``R`` after the step,

    V(R) = ∫_R det ∇T(y) dy   (summed over the template voxels of R, times the voxel volume),

so the anatomy before (``u = 0``) and after are measured the same way. To first order,
``det ∇T ≈ J0 + div(J0 u)`` with ``J0 = det ∇F0``; so ``u = ∇φ / J0`` with ``Δφ = J0 g`` (a spectral
Poisson solve) changes region ``R`` by the ``J0``-weighted mean of ``g`` over it. ``g`` is
piecewise constant, one coefficient per region, and the background (outside every region) takes
the balance so that ``∫ J0 g = 0``: tissue shrinks, CSF spaces grow, and the space outside the
brain fills what the brain loses.

The finite-difference operators smear ``g`` across region boundaries (a region realises only
75-90 % of its coefficient when prescribed naively, more so next to a region changing the other
way), and the determinant is not linear. So the coefficients are calibrated: a linear solve
(GMRES on the region-level operator) followed by Newton-like corrections measured on the true,
non-linear Jacobian determinant, until every calibrated region is within ``tolerance`` of its
prescribed ratio. A step computes ``u`` directly in template coordinates (no velocity field
integrated over time steps), and measures what it realised on the true map.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass

import numpy as np
from scipy.sparse.linalg import LinearOperator, gmres

from mambacontrol.synth.fields import (
    identity,
    jacobian_determinant,
    max_gradient_norm,
    sample_field,
)
from mambacontrol.synth.poisson import PoissonSolver

log = logging.getLogger(__name__)

WARN_ERROR = 0.05  # a calibration error worth a warning (the fidelity bound is 0.2)


@dataclass(frozen=True)
class AtrophyModel:
    """Calibration settings.

    Attributes:
        tolerance: largest accepted relative error of a calibrated region's change.
        max_rounds: non-linear correction rounds at most.
        min_voxels: regions with fewer template voxels are not calibrated (they keep their
            prescribed coefficient; too small to steer).
        linear_rtol: relative tolerance of each GMRES solve.
        max_step: largest absolute log volume ratio one deformation asks of any region; a larger
            change (a long pre-baseline history, a long interval between visits) is composed of
            equal steps (:mod:`~mambacontrol.synth.trajectory`), which keeps every step's
            displacement gradient well below 1 (no folding, a convergent inverse).
        step_tolerance: the ``tolerance`` of every step but a leg's last (the next step
            measures what it realised and asks for the rest, so it need not be exact).
    """

    tolerance: float = 0.01
    max_rounds: int = 5
    min_voxels: int = 8
    linear_rtol: float = 1e-3
    max_step: float = 0.25
    step_tolerance: float = 0.1


@dataclass
class Deformation:
    """One atrophy step and its measurements.

    Attributes:
        displacement: (3, X, Y, Z) float32 ``u`` of ``P(y) = y + u(y)`` (template voxels).
        forward: (3, X, Y, Z) float32 displacement of the changed map ``F0 ∘ P``.
        jacobian: (X, Y, Z) float32 ``det ∇(F0 ∘ P)`` on the template grid.
        volumes: (R,) regional volumes in mm³ (the truth).
        calibration_error: largest relative error of a calibrated region's change.
        rounds: non-linear rounds used.
        max_gradient_norm: largest Frobenius norm of ``∇u`` (below 1: ``P`` is injective).
    """

    displacement: np.ndarray
    forward: np.ndarray
    jacobian: np.ndarray
    volumes: np.ndarray
    calibration_error: float
    rounds: int
    max_gradient_norm: float


class AtrophySimulator:
    """Builds calibrated atrophy steps on top of one map of one subject.

    Args:
        labels: (X, Y, Z) template label map.
        label_ids: (R,) region labels, the order of every per-region array.
        forward: (3, X, Y, Z) displacement of the map ``F0`` the change is added to.
        jacobian: (X, Y, Z) ``det ∇F0``.
        voxel_volume: mm³ per voxel.
        solver: a :class:`PoissonSolver` for the grid.
        model: calibration settings.

    Attributes:
        baseline_volumes: (R,) regional volumes (mm³) of ``F0``, the anatomy before the step.
    """

    def __init__(self, labels: np.ndarray, label_ids: np.ndarray, forward: np.ndarray,
                 jacobian: np.ndarray, voxel_volume: float, solver: PoissonSolver,
                 model: AtrophyModel = AtrophyModel()):
        self.model = model
        self.solver = solver
        self.voxel_volume = voxel_volume
        self.label_ids = np.asarray(label_ids)
        lut = np.full(int(labels.max()) + 1, -1, dtype=np.int64)
        lut[self.label_ids] = np.arange(len(self.label_ids))
        self.index = lut[labels]  # region position per voxel, -1 = background
        self.inside = self.index >= 0
        self._flat = np.where(self.inside, self.index, len(self.label_ids)).ravel()
        counts = np.bincount(self._flat, minlength=len(self.label_ids) + 1)[:-1]
        self.free = counts >= model.min_voxels
        self._grid = identity(labels.shape)
        self._coef: np.ndarray | None = None
        self._coef_target: np.ndarray | None = None
        self._set_base(forward, jacobian)

    def _set_base(self, forward: np.ndarray, jacobian: np.ndarray) -> None:
        self.forward = forward
        self.j0 = jacobian.astype(np.float32)
        self.weight = self._region_sum(self.j0)  # Σ_R J0
        self.baseline_volumes = self.weight * self.voxel_volume
        self._j0_background = np.where(self.inside, np.float32(0.0), self.j0)
        self._j0_background_sum = float(self._j0_background.sum(dtype=np.float64))

    def rebased(self, forward: np.ndarray, jacobian: np.ndarray) -> AtrophySimulator:
        """The same simulator adding change to another map (e.g. ``F0 ∘ P`` after a step).

        The last calibration stays the next one's starting guess; ``self`` is unchanged.

        Args:
            forward: (3, X, Y, Z) displacement of the new map.
            jacobian: (X, Y, Z) its Jacobian determinant.
        """
        other = copy.copy(self)
        other._set_base(forward, jacobian)
        return other

    def _region_sum(self, values: np.ndarray) -> np.ndarray:
        return np.bincount(self._flat, weights=values.ravel().astype(np.float64),
                           minlength=len(self.label_ids) + 1)[:-1]

    def _source(self, coef: np.ndarray) -> np.ndarray:
        """``J0 g``: region coefficients inside, the balancing constant outside (zero integral)."""
        g = np.append(coef, 0.0).astype(np.float32)[self._flat].reshape(self.index.shape)
        src = self.j0 * g
        balance = -float(src.sum(dtype=np.float64)) / self._j0_background_sum
        src += np.float32(balance) * self._j0_background
        return src

    def _linear_change(self, coef: np.ndarray) -> np.ndarray:
        return self._region_sum(self.solver.realised_divergence(self._source(coef))) / self.weight

    def displacement(self, coef: np.ndarray) -> np.ndarray:
        """``u = ∇φ / J0`` with ``Δφ = J0 g`` for region coefficients ``coef`` (R,)."""
        return self.solver.gradient_of_potential(self._source(coef)) / self.j0

    def measure(self, displacement: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Displacement and Jacobian determinant of ``F0 ∘ (id + u)``, and the regional volumes
        (mm³) it gives."""
        forward = displacement + sample_field(self.forward, self._grid + displacement)
        jac = jacobian_determinant(forward).astype(np.float32)
        return forward, jac, self._region_sum(jac) * self.voxel_volume

    def _solve(self, rhs: np.ndarray, fixed: np.ndarray, x0: np.ndarray | None) -> np.ndarray:
        free = self.free

        def matvec(x: np.ndarray) -> np.ndarray:
            coef = np.zeros(len(self.label_ids))
            coef[free] = x
            return self._linear_change(coef)[free]

        op = LinearOperator((int(free.sum()),) * 2, matvec=matvec, dtype=np.float64)
        b = rhs[free] - (self._linear_change(fixed)[free] if np.any(fixed) else 0.0)
        x, _ = gmres(op, b, x0=x0, rtol=self.model.linear_rtol, restart=30, maxiter=3)
        return x

    def deform(self, log_ratio: np.ndarray, tolerance: float | None = None) -> Deformation:
        """The progression map whose regional volume ratios are ``exp(log_ratio)``.

        Args:
            log_ratio: (R,) prescribed log volume ratio per region (after the step over before).
            tolerance: accepted relative error of a calibrated region's change (default: the
                model's ``tolerance``).

        Returns:
            The calibrated :class:`Deformation`.
        """
        tolerance = self.model.tolerance if tolerance is None else tolerance
        ratio = np.exp(np.asarray(log_ratio, dtype=np.float64))
        change = ratio - 1.0
        coef = np.where(self.free, 0.0, change)
        guess = None
        if self._coef is not None:
            scale = np.divide(change, self._coef_target, out=np.ones_like(change),
                              where=np.abs(self._coef_target) > 1e-12)
            guess = (self._coef * scale)[self.free]
        coef[self.free] = self._solve(change, coef, guess)
        scale_ref = np.maximum(np.abs(change), 1e-9)
        for rounds in range(1, self.model.max_rounds + 1):
            u = self.displacement(coef)
            forward, jac, volumes = self.measure(u)
            realised = volumes / self.baseline_volumes
            error = float((np.abs(realised - ratio) / scale_ref)[self.free].max())
            if error < tolerance or rounds == self.model.max_rounds:
                break
            coef[self.free] += self._solve(ratio - realised, np.zeros_like(coef), None)
        if error >= tolerance:
            log.log(logging.WARNING if error > WARN_ERROR else logging.DEBUG,
                    "regional calibration stopped at %.1f %% error after %d rounds",
                    100 * error, rounds)
        self._coef, self._coef_target = coef.copy(), change
        return Deformation(u, forward, jac, volumes, error, rounds, max_gradient_norm(u))
