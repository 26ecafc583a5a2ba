"""Spectral Poisson solver: a displacement whose divergence is a prescribed field.

``Δφ = f`` is solved with FFTs on the periodic grid with the 7-point Laplacian's symbol, and the
displacement is the central-difference gradient ``∇φ`` (the same difference the Jacobian
determinant uses). The divergence of that gradient is a mild low-pass of ``f`` (it loses the
checkerboard modes), which is why :mod:`mambacontrol.synth.atrophy` calibrates region by region.
"""

from __future__ import annotations

import numpy as np
from scipy import fft


class PoissonSolver:
    """FFT solver for ``Δφ = f`` on one grid (periodic boundaries; the mean of ``f`` is ignored).

    Args:
        shape: (X, Y, Z) grid shape.
    """

    def __init__(self, shape: tuple[int, int, int]):
        self.shape = tuple(int(s) for s in shape)
        freqs = [np.fft.fftfreq(n) for n in self.shape[:2]] + [np.fft.rfftfreq(self.shape[2])]
        axes = [f.reshape([-1 if i == a else 1 for i in range(3)]) for a, f in enumerate(freqs)]
        laplacian = -sum(4.0 * np.sin(np.pi * f) ** 2 for f in axes)
        laplacian[0, 0, 0] = 1.0
        self._inverse_laplacian = (1.0 / laplacian).astype(np.float32)
        self._inverse_laplacian[0, 0, 0] = 0.0
        self._derivative = [np.sin(2.0 * np.pi * f).astype(np.float32) for f in axes]
        # divergence of the central-difference gradient, relative to f (a low-pass, at most 1)
        self._transfer = (-sum(d * d for d in self._derivative)
                          * self._inverse_laplacian).astype(np.float32)

    def gradient_of_potential(self, f: np.ndarray) -> np.ndarray:
        """``∇φ`` with ``Δφ = f - mean(f)``.

        Args:
            f: (X, Y, Z) source (per voxel; e.g. a log volume change).

        Returns:
            (3, X, Y, Z) float32 displacement in voxels.
        """
        phi = fft.rfftn(np.asarray(f, dtype=np.float32)) * self._inverse_laplacian
        return np.stack([fft.irfftn(1j * d * phi, s=self.shape).astype(np.float32)
                         for d in self._derivative])

    def realised_divergence(self, f: np.ndarray) -> np.ndarray:
        """Central-difference divergence of :meth:`gradient_of_potential` ``(f)``, computed
        spectrally.

        Args:
            f: (X, Y, Z) source.

        Returns:
            (X, Y, Z) float32: ``f - mean(f)`` low-passed by the difference operators.
        """
        return fft.irfftn(fft.rfftn(np.asarray(f, dtype=np.float32)) * self._transfer,
                          s=self.shape).astype(np.float32)
