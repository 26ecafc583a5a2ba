"""Scanner appearance of a synthetic scan: contrast, bias field, Rician noise (MONAI transforms).

The scans imitate what a longitudinal pipeline hands a model: bias-corrected (N4), registered and
normalised scans from one scanner. So the subject has its own contrast (a gamma) and its own smooth
bias field, both drawn once and shared by all visits; every visit adds what such a pipeline leaves
between sessions: a small contrast jitter, a small residual bias field and its own Rician noise.
Visit-to-visit differences are then the anatomy's change plus realistic residual variation, not a
fresh bias field that would drown a year of atrophy. The result is brain-extracted and normalised
with :func:`mambacontrol.data.normalize_intensity`, like every image the models see.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mambacontrol.data import normalize_intensity


@dataclass(frozen=True)
class AppearanceModel:
    """Parameters of the intensity variation.

    Attributes:
        gamma_range: range of the subject's contrast gamma (uniform in log).
        gamma_jitter: sd of the per-visit log gamma jitter.
        bias_degree: degree of the bias fields' Legendre polynomials.
        bias_coeff: the subject's bias field coefficients are drawn in ``(0, bias_coeff)``
            (MONAI RandBiasField), once per subject.
        visit_bias_coeff: the same for each visit's residual bias field.
        noise_range: range of the Rician noise sd, relative to intensities in [0, 1].
    """

    gamma_range: tuple[float, float] = (0.8, 1.25)
    gamma_jitter: float = 0.01
    bias_degree: int = 3
    bias_coeff: float = 0.15
    visit_bias_coeff: float = 0.02
    noise_range: tuple[float, float] = (0.01, 0.025)

    def subject_gamma(self, rng: np.random.Generator) -> float:
        """The subject's contrast gamma."""
        lo, hi = np.log(self.gamma_range)
        return float(np.exp(rng.uniform(lo, hi)))

    def subject_bias(self, shape: tuple[int, int, int], rng: np.random.Generator) -> np.ndarray:
        """The subject's bias field on the whole grid, (X, Y, Z) float32 around 1."""
        from monai.transforms import RandBiasField  # lazy: MONAI takes seconds to import

        bias = RandBiasField(degree=self.bias_degree, coeff_range=(0.0, self.bias_coeff), prob=1.0)
        bias.set_random_state(seed=int(rng.integers(2**31)))
        return np.asarray(bias(np.ones((1, *shape), dtype=np.float32)))[0]

    def render(self, image: np.ndarray, mask: np.ndarray, gamma: float, bias_field: np.ndarray,
               rng: np.random.Generator) -> np.ndarray:
        """One visit's scan from the warped template.

        Args:
            image: (X, Y, Z) warped template intensities (about [0, 1]).
            mask: (X, Y, Z) bool brain mask of the visit.
            gamma: the subject's contrast gamma.
            bias_field: (X, Y, Z) the subject's bias field (:meth:`subject_bias`).
            rng: the subject's appearance generator (advanced by this call).

        Returns:
            (X, Y, Z) float32 normalised image, zero outside ``mask``.
        """
        from mambacontrol.ops.threads import torch_threads  # lazy: torch, only to render

        with torch_threads(1):  # torch rounds elementwise maths differently per thread split
            return self._render(image, mask, gamma, bias_field, rng)

    def _render(self, image: np.ndarray, mask: np.ndarray, gamma: float, bias_field: np.ndarray,
                rng: np.random.Generator) -> np.ndarray:
        # lazy: MONAI takes seconds to import
        from monai.transforms import AdjustContrast, RandBiasField, RandRicianNoise

        box = _bounding_box(mask, margin=2)
        x = np.clip(image[box], 0.0, None)[None].astype(np.float32)
        visit_gamma = gamma * float(np.exp(rng.normal(0.0, self.gamma_jitter)))
        x = np.asarray(AdjustContrast(visit_gamma)(x)) * bias_field[box][None]
        bias = RandBiasField(degree=self.bias_degree,
                             coeff_range=(0.0, self.visit_bias_coeff), prob=1.0)
        bias.set_random_state(seed=int(rng.integers(2**31)))
        x = np.asarray(bias(x))
        noise = RandRicianNoise(prob=1.0, std=float(rng.uniform(*self.noise_range)),
                                sample_std=False)
        noise.set_random_state(seed=int(rng.integers(2**31)))
        x = np.asarray(noise(x))
        out = np.zeros(image.shape, dtype=np.float32)
        out[box] = x[0]
        return normalize_intensity(out, mask)


def _bounding_box(mask: np.ndarray, margin: int) -> tuple[slice, ...]:
    idx = np.nonzero(mask)
    return tuple(slice(max(0, int(i.min()) - margin), min(n, int(i.max()) + margin + 1))
                 for i, n in zip(idx, mask.shape))
