"""NIfTI input/output: validated loading, atomic saving, grids and resampling."""

from mambacontrol.io.atomic import (
    atomic_path,
    check_not_input,
    write_bytes_atomic,
    write_text_atomic,
)
from mambacontrol.io.grid import Grid, resample, to_ras
from mambacontrol.io.limits import ResourceLimitError, check_limit
from mambacontrol.io.nifti import Volume, inspect_nifti, load_nifti, save_nifti
from mambacontrol.io.outputs import OutputFolder, OutputFolderError, safe_name, unique_names
from mambacontrol.io.tables import json_safe, write_csv, write_json

__all__ = [
    "Grid",
    "OutputFolder",
    "OutputFolderError",
    "ResourceLimitError",
    "Volume",
    "atomic_path",
    "check_limit",
    "check_not_input",
    "inspect_nifti",
    "json_safe",
    "load_nifti",
    "resample",
    "safe_name",
    "save_nifti",
    "to_ras",
    "unique_names",
    "write_csv",
    "write_json",
    "write_bytes_atomic",
    "write_text_atomic",
]
