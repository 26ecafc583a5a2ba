"""mambacontrol: predict how a brain MRI changes with Alzheimer's disease.

A 3D latent diffusion UNet steered by a Mamba ControlNet, guided by an anatomy graph of atlas
regions with graph-Fourier features. Heavy optional dependencies (mamba-ssm, triton, diffusers,
torch-geometric) are imported only by the modules that need them, never by ``import mambacontrol``.
"""

from mambacontrol._version import __version__
from mambacontrol.errors import (
    ConfigError,
    InputFileError,
    MambaControlError,
    ManifestError,
    ModelError,
    RegistrationError,
)

__all__ = [
    "__version__",
    "ConfigError",
    "InputFileError",
    "MambaControlError",
    "ManifestError",
    "ModelError",
    "RegistrationError",
]
