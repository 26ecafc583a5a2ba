"""Data: the manifest schema, visit pairs and intensity normalisation."""

from mambacontrol.data.intensity import normalize_intensity
from mambacontrol.data.manifest import (
    DIAGNOSES,
    REQUIRED_COLUMNS,
    SEXES,
    SPLITS,
    Manifest,
    Visit,
    VisitPair,
    normalize_diagnosis,
    normalize_sex,
)

__all__ = ["DIAGNOSES", "REQUIRED_COLUMNS", "SEXES", "SPLITS", "Manifest", "Visit", "VisitPair",
           "normalize_diagnosis", "normalize_intensity", "normalize_sex"]
