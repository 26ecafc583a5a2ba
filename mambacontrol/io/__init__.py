"""NIfTI input/output: validated loading, atomic saving, grids and resampling."""

from mambacontrol.io.atomic import (
    atomic_path,
    check_not_input,
    write_bytes_atomic,
    write_text_atomic,
)
from mambacontrol.io.grid import Grid, resample, to_ras
from mambacontrol.io.nifti import Volume, load_nifti, save_nifti

__all__ = [
    "Grid",
    "Volume",
    "atomic_path",
    "check_not_input",
    "load_nifti",
    "resample",
    "save_nifti",
    "to_ras",
    "write_bytes_atomic",
    "write_text_atomic",
]
