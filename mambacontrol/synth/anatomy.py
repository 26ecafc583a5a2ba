"""A subject's baseline anatomy: the template under a random smooth diffeomorphism.

The map from template to subject is ``F0 = affine ∘ exp(w)``: an affine part (head size, with a
sex offset; rotation; shear; translation) about the brain's centre, after a low-frequency
stationary velocity field ``w`` (a smoothed Gaussian random field) integrated by scaling and
squaring. ``exp(w)`` and its inverse ``exp(-w)`` are computed on a coarse grid (about 4 mm; the
field is smooth) and interpolated where needed. The inverse map samples the template to make the
subject's images.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from mambacontrol.synth.fields import exp_velocity, identity, jacobian_determinant, sample_field


@dataclass(frozen=True)
class AnatomyModel:
    """Parameters of the random baseline deformation.

    Attributes:
        scale_sd: sd of the per-axis scale factors.
        female_scale, male_scale: mean linear scale by sex (men's heads are larger).
        rotation_deg: sd of the rotation about each axis (degrees).
        shear_sd: sd of the off-diagonal shear terms.
        translation_mm: sd of the translation along each axis (mm).
        warp_mm: root-mean-square displacement of the non-linear part (mm).
        warp_smoothness_mm: Gaussian smoothing of the random velocity field (mm).
        coarse_mm: grid spacing on which the non-linear part is integrated (mm).
        min_jacobian: the smallest Jacobian determinant accepted; a stronger draw is scaled down.
    """

    scale_sd: float = 0.035
    female_scale: float = 0.984
    male_scale: float = 1.016
    rotation_deg: float = 3.0
    shear_sd: float = 0.015
    translation_mm: float = 2.0
    warp_mm: float = 2.0
    warp_smoothness_mm: float = 20.0
    coarse_mm: float = 4.0
    min_jacobian: float = 0.3


def _rotation(angles: np.ndarray) -> np.ndarray:
    out = np.eye(3)
    for axis, theta in enumerate(angles):
        i, j = [k for k in range(3) if k != axis]
        r = np.eye(3)
        r[i, i] = r[j, j] = np.cos(theta)
        r[i, j], r[j, i] = -np.sin(theta), np.sin(theta)
        out = out @ r
    return out


class SubjectAnatomy:
    """The template-to-subject map ``F0`` of one subject, on the atlas grid.

    Args:
        mask: (X, Y, Z) template brain mask (its centroid is the affine's centre).
        spacing: grid spacing in mm.
        sex: ``F`` or ``M``.
        rng: the subject's anatomy generator.
        model: the deformation's parameters.

    Attributes:
        forward: (3, X, Y, Z) float32 displacement of ``F0`` on the template grid (voxels).
        jacobian: (X, Y, Z) float32 Jacobian determinant of ``F0`` (> 0 everywhere).
        matrix, centre, shift: the affine part, ``x = centre + matrix (y' - centre) + shift``.
        warp_scale: factor applied to the drawn velocity field to keep ``jacobian >= min_jacobian``.
    """

    def __init__(self, mask: np.ndarray, spacing: float, sex: str, rng: np.random.Generator,
                 model: AnatomyModel = AnatomyModel()):
        shape = tuple(int(s) for s in mask.shape)
        self.shape = shape
        self.model = model
        self.centre = np.array(ndimage.center_of_mass(mask), dtype=np.float64)
        scale = (model.female_scale if sex == "F" else model.male_scale) * np.exp(
            rng.normal(0.0, model.scale_sd, 3))
        shear = np.eye(3) + np.triu(rng.normal(0.0, model.shear_sd, (3, 3)), 1)
        rotation = _rotation(np.deg2rad(rng.normal(0.0, model.rotation_deg, 3)))
        self.matrix = rotation @ shear @ np.diag(scale)
        self.shift = rng.normal(0.0, model.translation_mm / spacing, 3)
        self.factor = max(1.0, model.coarse_mm / spacing)
        coarse = tuple(int(np.ceil((n - 1) / self.factor)) + 1 for n in shape)
        noise = rng.standard_normal((3, *coarse))
        sigma = model.warp_smoothness_mm / (spacing * self.factor)
        velocity = np.stack([ndimage.gaussian_filter(c, sigma, mode="reflect") for c in noise])
        velocity *= (model.warp_mm / (spacing * self.factor)) / max(float(velocity.std()), 1e-12)
        self.warp_scale = 1.0
        while True:
            v = (velocity * self.warp_scale).astype(np.float32)
            self._exp, self._exp_inverse = exp_velocity(v), exp_velocity(-v)
            self.forward = self._forward_displacement()
            self.jacobian = jacobian_determinant(self.forward).astype(np.float32)
            if float(self.jacobian.min()) >= model.min_jacobian or self.warp_scale < 0.05:
                break
            self.warp_scale *= 0.7

    def _warp_at(self, field: np.ndarray, points: np.ndarray) -> np.ndarray:
        """Displacement of a coarse-grid map at fine-grid points (fine voxels)."""
        f = np.float32(self.factor)
        return sample_field(field, points / f) * f

    def _forward_displacement(self) -> np.ndarray:
        y = identity(self.shape)
        moved = y + self._warp_at(self._exp, y)
        c = self.centre.reshape(3, 1, 1, 1)
        x = np.einsum("ij,j...->i...", self.matrix, moved - c) + c + self.shift.reshape(3, 1, 1, 1)
        return (x - y).astype(np.float32)

    def inverse_at(self, points: np.ndarray) -> np.ndarray:
        """``F0⁻¹`` at subject-grid points.

        Args:
            points: (3, ...) voxel coordinates in the subject's baseline space.

        Returns:
            (3, ...) float32 template voxel coordinates.
        """
        c = self.centre.reshape((3,) + (1,) * (points.ndim - 1))
        s = self.shift.reshape(c.shape)
        z = np.einsum("ij,j...->i...", np.linalg.inv(self.matrix), points - c - s) + c
        z = z.astype(np.float32)
        return z + self._warp_at(self._exp_inverse, z)

    def summary(self) -> dict:
        """Plain numbers describing the draw (for ``cohort.json``)."""
        return {"affine_determinant": float(np.linalg.det(self.matrix)),
                "warp_scale": float(self.warp_scale),
                "jacobian_min": float(self.jacobian.min()),
                "jacobian_max": float(self.jacobian.max())}
