"""What one evaluated pair holds: the pair's facts and one method's measurements.

A *method* is anything that predicts a follow-up: a model (named by the caller, e.g. its run
directory), the copy-baseline (:data:`COPY_BASELINE`), the regional linear extrapolation
(:data:`LINEAR_BASELINE`), a model's trajectory head (:data:`TRAJECTORY_HEAD`: the regional change
the model's graph head predicts before any image is made, applied to the earlier scan's measured
volumes; volumes only), the autoencoder ceiling (:data:`AUTOENCODER_CEILING`: the true follow-up
pushed through a model's representation and decoded as its predictions are, the most any sampler
of that model could get right), or the measurement floor (:data:`MEASUREMENT_FLOOR`: the true
follow-up measured by registration, compared with the synthetic cohort's exact ground truth).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from mambacontrol.data.manifest import VisitPair
from mambacontrol.evaluation.metrics import VolumeChange

COPY_BASELINE = "copy-baseline"
LINEAR_BASELINE = "linear-extrapolation"
MEASUREMENT_FLOOR = "measurement-floor"
AUTOENCODER_CEILING = "autoencoder-ceiling"
"""The main model's ceiling; another compared model with its own representation gets
``autoencoder-ceiling-<its name>`` (:func:`ceiling_name`)."""
TRAJECTORY_HEAD = "trajectory-head"
"""The main model's trajectory head; a compared model's is ``trajectory-head-<its name>``
(:func:`head_name`)."""
BASELINES = (COPY_BASELINE, LINEAR_BASELINE)
REFERENCE_KINDS = ("ceiling", "floor")
"""Kinds that are references, not methods to rank: they see the true follow-up."""


def ceiling_name(model: str | None = None) -> str:
    """The ceiling row of ``model`` (None: the main model)."""
    return AUTOENCODER_CEILING if model is None else f"{AUTOENCODER_CEILING}-{model}"


def head_name(model: str | None = None) -> str:
    """The trajectory-head row of ``model`` (None: the main model)."""
    return TRAJECTORY_HEAD if model is None else f"{TRAJECTORY_HEAD}-{model}"


def method_kind(method: str) -> str:
    """``"baseline"``, ``"head"``, ``"ceiling"``, ``"floor"`` or ``"model"``."""
    if method in BASELINES:
        return "baseline"
    if method == MEASUREMENT_FLOOR:
        return "floor"
    if method == AUTOENCODER_CEILING or method.startswith(AUTOENCODER_CEILING + "-"):
        return "ceiling"
    if method == TRAJECTORY_HEAD or method.startswith(TRAJECTORY_HEAD + "-"):
        return "head"
    return "model"


@dataclass(frozen=True)
class PairInfo:
    """The facts of one (baseline, follow-up) pair.

    Attributes:
        subject_id: the subject.
        baseline_uid: ``image_uid`` of the earlier scan.
        followup_uid: ``image_uid`` of the later scan.
        diagnosis: diagnosis at the baseline visit (``CN``/``MCI``/``AD``).
        years: Δt between the scans, in years.
        age: age at baseline in years (NaN when unknown).
        sex: ``F``/``M`` (empty when unknown).
    """

    subject_id: str
    baseline_uid: str
    followup_uid: str
    diagnosis: str
    years: float
    age: float = math.nan
    sex: str = ""

    @classmethod
    def from_visit_pair(cls, pair: VisitPair) -> PairInfo:
        return cls(pair.subject_id, pair.earlier.image_uid, pair.later.image_uid,
                   pair.earlier.diagnosis, pair.years, pair.earlier.age, pair.earlier.sex)


@dataclass
class PairResult:
    """One method's measurements on one pair.

    Attributes:
        pair: the pair.
        method: the method's name.
        metrics: voxel metrics (``metrics.METRICS`` keys); empty for methods that predict volumes
            only (the linear extrapolation, a trajectory head) and for the measurement floor.
        regions: label → :class:`VolumeChange` (true vs this method's change, % of baseline).
        groups: key group → :class:`VolumeChange`.
    """

    pair: PairInfo
    method: str
    metrics: dict[str, float] = field(default_factory=dict)
    regions: dict[int, VolumeChange] = field(default_factory=dict)
    groups: dict[str, VolumeChange] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return method_kind(self.method)
