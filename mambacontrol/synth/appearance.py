"""Scanner appearance of a synthetic scan: contrast, bias field, Rician noise (MONAI transforms).

The subject has its own contrast (a gamma drawn once); every visit adds a small contrast jitter, its
own smooth bias field and Rician noise, as a new scan on the same scanner would. The result is
brain-extracted and normalised with :func:`mambacontrol.data.normalize_intensity`, like every
image the models see.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from mambacontrol.data import normalize_intensity


@dataclass(frozen=True)
class AppearanceModel:
    """Parameters of the intensity variation.

    Attributes:
        gamma_range: range of the subject's contrast gamma (uniform in log).
        gamma_jitter: sd of the per-visit log gamma jitter.
        bias_degree: degree of the bias field's Legendre polynomials.
        bias_coeff: bias field coefficients are drawn in ``(0, bias_coeff)`` (MONAI RandBiasField).
        noise_range: range of the Rician noise sd, relative to intensities in [0, 1].
    """

    gamma_range: tuple[float, float] = (0.8, 1.25)
    gamma_jitter: float = 0.03
    bias_degree: int = 3
    bias_coeff: float = 0.15
    noise_range: tuple[float, float] = (0.01, 0.035)

    def to_dict(self) -> dict:
        return asdict(self)

    def subject_gamma(self, rng: np.random.Generator) -> float:
        """The subject's contrast gamma."""
        lo, hi = np.log(self.gamma_range)
        return float(np.exp(rng.uniform(lo, hi)))

    def render(self, image: np.ndarray, mask: np.ndarray, gamma: float,
               rng: np.random.Generator) -> np.ndarray:
        """One visit's scan from the warped template.

        Args:
            image: (X, Y, Z) warped template intensities (about [0, 1]).
            mask: (X, Y, Z) bool brain mask of the visit.
            gamma: the subject's contrast gamma.
            rng: the subject's appearance generator (advanced by this call).

        Returns:
            (X, Y, Z) float32 normalised image, zero outside ``mask``.
        """
        import torch

        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # torch rounds elementwise maths differently per thread split
        try:
            return self._render(image, mask, gamma, rng)
        finally:
            torch.set_num_threads(threads)

    def _render(self, image: np.ndarray, mask: np.ndarray, gamma: float,
                rng: np.random.Generator) -> np.ndarray:
        from monai.transforms import AdjustContrast, RandBiasField, RandRicianNoise

        box = _bounding_box(mask, margin=2)
        x = np.clip(image[box], 0.0, None)[None].astype(np.float32)
        visit_gamma = gamma * float(np.exp(rng.normal(0.0, self.gamma_jitter)))
        x = np.asarray(AdjustContrast(visit_gamma)(x))
        bias = RandBiasField(degree=self.bias_degree, coeff_range=(0.0, self.bias_coeff), prob=1.0)
        bias.set_random_state(seed=int(rng.integers(2**31)))
        x = np.asarray(bias(x))
        noise = RandRicianNoise(prob=1.0, std=float(rng.uniform(*self.noise_range)), sample_std=False)
        noise.set_random_state(seed=int(rng.integers(2**31)))
        x = np.asarray(noise(x))
        out = np.zeros(image.shape, dtype=np.float32)
        out[box] = x[0]
        return normalize_intensity(out, mask)


def _bounding_box(mask: np.ndarray, margin: int) -> tuple[slice, ...]:
    idx = np.nonzero(mask)
    return tuple(slice(max(0, int(i.min()) - margin), min(n, int(i.max()) + margin + 1))
                 for i, n in zip(idx, mask.shape))
