"""Registration with ANTsPy: scans to the atlas and back, label propagation, sub-voxel volumes.

Why ANTsPy (antspyx) rather than SimpleITK: both wrap ITK, but ANTs' SyN is the reference
deformable method (among the best in Klein et al. 2009's comparison of 14 nonlinear methods on
brain MRI, and in the EMPIRE10 challenge) and ANTsPy ships it ready to use, with the
multi-resolution schedules, masks and seeding we need, inverse transforms, label-preserving
interpolation (``genericLabel``) and Jacobian determinants; with SimpleITK we would assemble and
tune each of these from lower-level filters ourselves. Its wheel
installs from PyPI with no external tools, which is what ``mambacontrol predict`` promises
(nothing outside Python packages, unlike BrLP's FreeSurfer/SynthSeg preprocessing).

Coordinates: the package speaks RAS affines (NIfTI); ANTs speaks LPS. ``_ants`` converts, and
nothing else here touches ANTs' physical space. ``import mambacontrol`` does not import ANTs;
importing this subpackage does.

Determinism: every registration takes a seed (passed to ANTs as ``ANTS_RANDOM_SEED``, seed + 1
because ANTs takes 0 to mean "seed from the clock"). The affine stages use global correlation and
the SyN stages Mattes mutual information with dense sampling; with a fixed seed both repeat bitwise
on the same machine with the same number of ITK threads. ITK reads
``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS`` once, when it first runs; a different thread count moves
the affine result by about 0.05 mm (Mattes with random sampling, ANTs' default for affine stages,
did not repeat even with a fixed seed on 2 threads, hence global correlation).

Public API:

* :func:`align_to_atlas` → :class:`AtlasAlignment`: image and mask on the atlas grid, similarity,
  and the :class:`AtlasTransform` (``to_native``, ``to_atlas``, ``to_dict``/``from_dict`` for
  JSON); refuses failed registrations with :class:`~mambacontrol.errors.RegistrationError`.
* :func:`propagate_labels`: atlas labels on an aligned image.
* :func:`measure_regional_volumes` → :class:`RegionalVolumes`: sub-voxel regional volumes of
  one image relative to a baseline; :class:`BaselineMeasurement` prepares a baseline once and
  measures any number of images against it (the horizons of one prediction).
"""

from mambacontrol.errors import RegistrationError
from mambacontrol.registration.alignment import (
    ALIGNMENT,
    MIN_SIMILARITY,
    AlignmentSettings,
    AtlasAlignment,
    AtlasTransform,
    align_to_atlas,
    template_similarity,
)
from mambacontrol.registration.deformable import SyNSettings
from mambacontrol.registration.labels import LABEL_PROPAGATION, propagate_labels
from mambacontrol.registration.morphometry import (
    MEASUREMENT,
    BaselineMeasurement,
    RegionalVolumes,
    measure_regional_volumes,
)

__all__ = [
    "ALIGNMENT",
    "LABEL_PROPAGATION",
    "MEASUREMENT",
    "MIN_SIMILARITY",
    "AlignmentSettings",
    "AtlasAlignment",
    "AtlasTransform",
    "BaselineMeasurement",
    "RegionalVolumes",
    "RegistrationError",
    "SyNSettings",
    "align_to_atlas",
    "measure_regional_volumes",
    "propagate_labels",
    "template_similarity",
]
