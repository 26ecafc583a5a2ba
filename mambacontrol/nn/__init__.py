"""Neural-network building blocks (torch): the Mamba mixer, the 3D Mamba block and the Fourier
refinement block. The saved-component base lives in :mod:`mambacontrol.nn.component` and is
imported from there (it needs diffusers)."""

from mambacontrol.nn.fourier import FourierRefine, FourierRefine3d
from mambacontrol.nn.mamba import Mamba
from mambacontrol.nn.mamba3d import MambaBlock3d
from mambacontrol.nn.scan_order import DIRECTIONS, scan_order

__all__ = ["DIRECTIONS", "FourierRefine", "FourierRefine3d", "Mamba", "MambaBlock3d", "scan_order"]
