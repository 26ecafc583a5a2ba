"""Exceptions for bad input. Each message names the offending value and the fix.

The CLI prints these in one line and exits non-zero, without a traceback.
"""

from __future__ import annotations


class MambaControlError(ValueError):
    """Base class for problems the user can fix (bad file, bad argument, bad config)."""


class InputFileError(MambaControlError):
    """A file given by the user is missing, unreadable or not what is expected."""


class ManifestError(MambaControlError):
    """A manifest CSV breaks the schema; the message names the row and the column."""


class ConfigError(MambaControlError):
    """A configuration key or value is invalid; the message names the field."""


class ModelError(MambaControlError):
    """A model directory or checkpoint is missing, corrupt or incompatible."""


class RegistrationError(MambaControlError):
    """A scan could not be registered to the atlas (e.g. it is not a brain MRI)."""
