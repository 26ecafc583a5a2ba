"""One synthetic subject: baseline anatomy, progression, and each visit's scan, labels and truth.

Maps, in template voxel coordinates:

- ``F0`` template → the subject's reference anatomy, its shape before any ageing or disease
  (:class:`~mambacontrol.synth.anatomy.SubjectAnatomy`);
- ``H`` the atrophy accumulated before baseline;
- ``P_k`` the progression from baseline up to visit ``k``, visit after visit (``P_0 = id``);
- ``T_k = F0 ∘ H ∘ P_k`` template → visit ``k``.

``H`` and each visit's increment of ``P_k`` are legs of the subject's
:class:`~mambacontrol.synth.trajectory.Trajectory`: calibrated atrophy steps at the subject's own
regional rates.

A visit's image, mask and labels are the template's pulled back through
``T_k⁻¹ = P_k⁻¹ ∘ H⁻¹ ∘ F0⁻¹`` (cubic, linear and nearest-neighbour interpolation); its regional
volumes are the Jacobian integral of ``T_k`` over each template region (baseline included), and
the same regions measured by warped partial-volume labels are kept as a cross-check.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from functools import cached_property

import numpy as np
from scipy import ndimage

from mambacontrol.atlas import Atlas
from mambacontrol.synth.anatomy import AnatomyModel, SubjectAnatomy
from mambacontrol.synth.appearance import AppearanceModel
from mambacontrol.synth.atrophy import AtrophyModel, AtrophySimulator
from mambacontrol.synth.fields import identity, sample
from mambacontrol.synth.plan import CohortDesign, SubjectPlan
from mambacontrol.synth.poisson import PoissonSolver
from mambacontrol.synth.rates import RateModel, SubjectRates
from mambacontrol.synth.spread import (
    DYNAMICS,
    NetworkRates,
    SpreadGraph,
    SpreadModel,
    draw_network_rates,
    reference_load,
)
from mambacontrol.synth.trajectory import Leg, Trajectory


@dataclass(frozen=True)
class SynthConfig:
    """Every parameter of the generator (written to ``cohort.json``).

    Attributes:
        dynamics: ``network`` (pathology spreads on the anatomy graph,
            :mod:`~mambacontrol.synth.spread`) or ``independent`` (each region's rate drawn on its
            own, :mod:`~mambacontrol.synth.rates`: the generator before network dynamics).
        spread: parameters of the network dynamics (unused by ``independent``).
    """

    atlas: str = "icbm152-2009a-nmm"
    grid: str = "2mm"
    design: CohortDesign = field(default_factory=CohortDesign)
    rates: RateModel = field(default_factory=RateModel)
    anatomy: AnatomyModel = field(default_factory=AnatomyModel)
    atrophy: AtrophyModel = field(default_factory=AtrophyModel)
    appearance: AppearanceModel = field(default_factory=AppearanceModel)
    dynamics: str = "network"
    spread: SpreadModel = field(default_factory=SpreadModel)

    def __post_init__(self) -> None:
        if self.dynamics not in DYNAMICS:
            raise ValueError(f"dynamics={self.dynamics!r} is not one of {', '.join(DYNAMICS)}")

    def to_dict(self) -> dict:
        """The parameters as a dict. An ``independent`` config leaves out ``dynamics`` and
        ``spread``, so its ``cohort.json`` is byte for byte the one the generator wrote before
        network dynamics existed (a ``cohort.json`` without ``dynamics`` is independent)."""
        d = asdict(self)
        if self.dynamics == "independent":
            del d["dynamics"], d["spread"]
        return d


class GridContext:
    """What every subject on one atlas grid shares (built once per process).

    Args:
        atlas: the atlas on the cohort's grid.
    """

    def __init__(self, atlas: Atlas):
        self.atlas = atlas
        self.shape = tuple(int(s) for s in atlas.grid.shape)
        self.label_ids = np.asarray(atlas.label_ids)
        self.labels = np.asarray(atlas.labels)
        self.mask = np.asarray(atlas.mask, dtype=np.float32)
        self.voxel_volume = atlas.voxel_volume
        self.solver = PoissonSolver(self.shape)

    @cached_property
    def spread_graph(self) -> SpreadGraph:
        """The regions' contact graph for network dynamics (built on first use)."""
        return SpreadGraph(self.atlas)

    def reference_load(self, model: SpreadModel) -> np.ndarray:
        """(R,) load of the reference typical subject
        (:func:`~mambacontrol.synth.spread.reference_load`)."""
        return reference_load(self.spread_graph, model, (self.atlas.id, self.atlas.checksum))

    @cached_property
    def template_coefficients(self) -> np.ndarray:
        """(X, Y, Z) cubic spline coefficients of the template (for repeated cubic sampling)."""
        return ndimage.spline_filter(np.asarray(self.atlas.template, dtype=np.float32), order=3,
                                     output=np.float32, mode="constant")


@dataclass
class SimulatedVisit:
    """One visit of one subject.

    Attributes:
        index: 0-based visit number.
        years: time since baseline.
        age: age at the visit.
        diagnosis: stage at the visit.
        image: (X, Y, Z) float32 normalised, brain-extracted scan.
        labels: (X, Y, Z) int16 label map (atlas label ids, 0 outside the brain).
        mask: (X, Y, Z) uint8 brain mask.
        volumes: (R,) regional volumes in mm³: Jacobian integral of ``T_k`` (the truth).
        pv_volumes: (R,) the same regions measured by warped partial-volume labels (cross-check).
        prescribed_log_ratio: (R,) prescribed log volume ratio over baseline.
        min_jacobian: smallest Jacobian determinant of ``T_k`` on the grid.
        max_gradient_norm: largest displacement gradient ``‖∇s‖`` (Frobenius) of the steps
            since the previous visit (at baseline: of the pre-baseline history); below 1 means
            each step is injective.
        calibration_error: largest relative error of a calibrated region's change in the last
            of those steps (calibrated to the visit's target volumes).
        inverse_step: largest last fixed-point update of those steps' inverses (voxels; the
            accuracy of the inverse map the images are resampled through).
        steps: number of those steps.
    """

    index: int
    years: float
    age: float
    diagnosis: str
    image: np.ndarray
    labels: np.ndarray
    mask: np.ndarray
    volumes: np.ndarray
    pv_volumes: np.ndarray
    prescribed_log_ratio: np.ndarray
    min_jacobian: float
    max_gradient_norm: float = 0.0
    calibration_error: float = 0.0
    inverse_step: float = 0.0
    steps: int = 0


def partial_volume_volumes(labels: np.ndarray, points: np.ndarray, label_ids: np.ndarray,
                           voxel_volume: float) -> np.ndarray:
    """Regional volumes of a label map pulled back through a map, counted with partial volumes.

    Equivalent to trilinearly interpolating every region's indicator at ``points`` and summing,
    in one pass over the eight neighbours.

    Args:
        labels: (X, Y, Z) label map.
        points: (3, N) voxel coordinates in ``labels`` (the map's value at each output voxel).
        label_ids: (R,) labels to report.
        voxel_volume: mm³ per output voxel.

    Returns:
        (R,) float64 volumes in mm³.
    """
    base = np.floor(points).astype(np.int64)
    frac = (points - base).astype(np.float64)
    shape = labels.shape
    total = np.zeros(int(labels.max()) + 1)
    for corner in range(8):
        offs = [(corner >> k) & 1 for k in range(3)]
        idx = [base[k] + offs[k] for k in range(3)]
        valid = np.ones(points.shape[1], dtype=bool)
        weight = np.ones(points.shape[1])
        for k in range(3):
            valid &= (idx[k] >= 0) & (idx[k] < shape[k])
            weight *= frac[k] if offs[k] else 1.0 - frac[k]
        lab = labels[tuple(np.clip(idx[k], 0, shape[k] - 1) for k in range(3))]
        total += np.bincount(lab, weights=weight * valid, minlength=total.size)
    return total[np.asarray(label_ids)] * voxel_volume


class SubjectSimulator:
    """Simulates every visit of one planned subject.

    Args:
        plan: the subject's covariates and schedule.
        context: the grid's shared data.
        config: generator parameters.

    Attributes:
        rates: the subject's regional rates, before and after baseline.
        anatomy: its shape map ``F0`` (the reference anatomy).
        history: the pre-baseline leg ``H`` (baseline = ``F0 ∘ H``).
        reference_volumes, baseline_volumes: (R,) regional volumes (mm³) of the reference and
            the baseline anatomy.
        max_shift: largest distance (voxels) between a point of the reference anatomy and the
            same point at baseline.
        intracranial_volume: mm³ of the template brain mask under ``F0`` alone: the subject's
            head size, which no atrophy changes (the normaliser of a volume, like a measured ICV).
    """

    def __init__(self, plan: SubjectPlan, context: GridContext, config: SynthConfig):
        self.plan = plan
        self.context = context
        self.config = config
        streams = {name: plan.rng(name) for name in ("rates", "anatomy", "appearance")}
        self.rates: SubjectRates | NetworkRates
        if config.dynamics == "independent":
            self.rates = config.rates.draw(streams["rates"], plan.baseline_age, plan.sex,
                                           context.atlas.regions)
        else:
            effects = config.rates.effects(streams["rates"], plan.baseline_age, plan.sex,
                                           context.atlas.regions)
            self.rates = draw_network_rates(
                plan.rng("spread"), effects, context.spread_graph, config.spread, config.rates,
                plan.history, plan.timeline, plan.visit_years[-1], plan.sex,
                context.reference_load(config.spread))
        self.anatomy = SubjectAnatomy(context.atlas.mask, context.atlas.spacing, plan.sex,
                                      streams["anatomy"], config.anatomy)
        self._appearance_rng = streams["appearance"]
        self.gamma = config.appearance.subject_gamma(self._appearance_rng)
        self.bias_field = config.appearance.subject_bias(context.shape, self._appearance_rng)
        reference = AtrophySimulator(context.labels, context.label_ids, self.anatomy.forward,
                                     self.anatomy.jacobian, context.voxel_volume, context.solver,
                                     config.atrophy)
        self.reference_volumes = reference.baseline_volumes.copy()
        life = Trajectory(reference, config.atrophy.max_step)
        self.history: Leg = life.advance(
            self.reference_volumes * np.exp(self.rates.log_ratio(plan.history, 0.0)))
        self._baseline = life.simulator
        self.baseline_volumes = life.volumes.copy()
        self.intracranial_volume = float(
            self.anatomy.jacobian[context.mask > 0.5].sum(dtype=np.float64) * context.voxel_volume)
        self.max_shift = (float(np.sqrt(((life.forward - self.anatomy.forward) ** 2)
                                        .sum(axis=0)).max()) if self.history.steps else 0.0)
        grid = identity(context.shape)
        reference_mask = sample(context.mask, self.anatomy.inverse_at(grid), order=1,
                                outside=0.0) > 0.5
        self.roi = ndimage.binary_dilation(reference_mask, iterations=2 + math.ceil(self.max_shift))
        self._baseline_points, self._history_inverse_step = self.history.inverse_at(
            self.anatomy.inverse_at(grid[:, self.roi]))

    def visits(self) -> Iterator[SimulatedVisit]:
        """Every visit, in order: each continues the anatomy from the previous one (one or more
        calibrations) and costs one set of warps."""
        follow_up = Trajectory(self._baseline, self.config.atrophy.max_step)
        points, step = self._baseline_points, self._history_inverse_step
        leg = self.history
        for k, years in enumerate(self.plan.visit_years):
            log_ratio = self.rates.log_ratio(self.plan.timeline, years)
            if k > 0:
                leg = follow_up.advance(self.baseline_volumes * np.exp(log_ratio))
                points, step = leg.inverse_at(points)
            yield self._visit(k, years, points, follow_up, leg, step, log_ratio)

    def _visit(self, k: int, years: float, points: np.ndarray, trajectory: Trajectory, leg: Leg,
               inverse_step: float, log_ratio: np.ndarray) -> SimulatedVisit:
        ctx = self.context
        mask = np.zeros(ctx.shape, dtype=bool)
        mask[self.roi] = sample(ctx.mask, points, order=1, outside=0.0) > 0.5
        labels = np.zeros(ctx.shape, dtype=np.int16)
        labels[self.roi] = sample(ctx.labels, points, order=0, outside=0)
        labels[~mask] = 0
        warped = np.zeros(ctx.shape, dtype=np.float32)
        warped[self.roi] = sample(ctx.template_coefficients, points, order=3, outside=0.0,
                                  prefiltered=True)
        image = self.config.appearance.render(warped, mask, self.gamma, self.bias_field,
                                              self._appearance_rng)
        pv = partial_volume_volumes(ctx.labels, points, ctx.label_ids, ctx.voxel_volume)
        return SimulatedVisit(
            index=k, years=years, age=round(self.plan.baseline_age + years, 2),
            diagnosis=self.plan.diagnosis_at(years), image=image, labels=labels,
            mask=mask.astype(np.uint8), volumes=trajectory.volumes.copy(), pv_volumes=pv,
            prescribed_log_ratio=log_ratio, min_jacobian=float(trajectory.jacobian.min()),
            max_gradient_norm=leg.max_gradient_norm, calibration_error=leg.calibration_error,
            inverse_step=inverse_step, steps=leg.steps)
