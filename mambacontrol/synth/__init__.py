"""Synthetic longitudinal cohort on real anatomy: the package's embedded default data.

``generate_cohort(out, subjects=..., seed=..., grid=...)`` writes a cohort and returns its
:class:`~mambacontrol.data.Manifest`; ``summarize_cohort`` / ``format_summary`` describe it.

Every subject's reference anatomy is the atlas template and labels under a random smooth
diffeomorphism (affine plus a low-frequency stationary velocity field); its scans have a contrast,
bias field and Rician noise of its own. Subjects have an age, a sex and a diagnosis (CN/MCI/AD,
converting CN→MCI about 5 %/yr and MCI→AD about 15 %/yr) and 2-5 visits at irregular intervals
over up to 8 years. With ``dynamics="network"`` (the default) a pathology load spreads from the
subject's epicentres (a limbic, posterior-cortical or frontal subtype) along the grey-matter
contact graph, and each region's rate is its ageing rate plus its vulnerability times its load
(:mod:`~mambacontrol.synth.spread`); with ``dynamics="independent"`` (the generator before, same
seed, same bytes) each region changes volume at a subject-specific annual rate drawn around
published means (:mod:`~mambacontrol.synth.rates`). The change is produced by smooth deformations
whose divergence is prescribed region by region (a spectral Poisson solve) and calibrated until
the realised change matches (:mod:`~mambacontrol.synth.atrophy`). The same rates act before the
first visit: from age 60 every subject aged at its CN rates, an MCI subject spent 1-5 years at its
MCI rates before baseline, an AD subject 1-5 years at MCI then 1-4 years at AD rates
(:mod:`~mambacontrol.synth.plan`, :mod:`~mambacontrol.synth.trajectory`). So a baseline scan
carries the atrophy accumulated before it, and a subject that looks atrophied at baseline is, in
proportion, one that declines fast or has declined long; after baseline it continues the same
trajectory. ``cohort.json`` records every subject's pre-baseline years and head size
(``intracranial_volume_mm3``).

Ground truth, extra manifest columns (kept in :attr:`mambacontrol.data.Visit.extra`):

=========================  =====================================================================
column                     meaning
=========================  =====================================================================
``vol_r<label>``           volume (mm³) of every atlas region at the visit: the integral of the
                           Jacobian determinant of the template→visit map over the template
                           region (the map: subject shape, then the atrophy before baseline,
                           then the change since). Baseline and follow-ups are measured the
                           same way, so the change between visits is exact (sub-voxel; label
                           maps at 2 mm barely change, so never count label voxels as truth)
``vol_<group>``            the same for each ``Atlas.key_groups`` group (sum of its regions):
                           hippocampus, amygdala, entorhinal, lateral_ventricles, whole_brain
``rate_<group>``           the subject's prescribed annual volume change of the group at
                           baseline, % per year (baseline-volume-weighted mean of its regions'
                           rates; network: the instantaneous rate, which follows the load;
                           independent: at the baseline diagnosis, the next stage's after a
                           conversion; see ``cohort.json``); the same on every row of a subject
``mask_path``              the visit's brain mask (the image is zero outside it)
``visit``, ``years``       visit number (1 = baseline) and years since baseline
``baseline_diagnosis``     diagnosis at the first visit (``diagnosis`` is the visit's own)
=========================  =====================================================================
"""

from mambacontrol.synth.cohort import SPACING_GRIDS, generate_cohort, grid_for_spacing
from mambacontrol.synth.plan import CohortDesign, SubjectPlan, plan_cohort
from mambacontrol.synth.simulate import GridContext, SimulatedVisit, SubjectSimulator, SynthConfig
from mambacontrol.synth.summary import CohortSummary, format_summary, summarize_cohort

__all__ = ["SPACING_GRIDS", "CohortDesign", "CohortSummary", "GridContext", "SimulatedVisit",
           "SubjectPlan", "SubjectSimulator", "SynthConfig", "format_summary", "generate_cohort",
           "grid_for_spacing", "plan_cohort", "summarize_cohort"]
