"""Errors a user can act on. The CLI prints them as one line and exits non-zero."""

from __future__ import annotations


class FedyoloError(Exception):
    """A problem with the user's input: the message names the problem and the fix."""

    exit_code = 2


class BundleError(FedyoloError):
    """A bundle is missing, corrupt, of another schema version, or does not hold what was asked."""


class DataError(FedyoloError):
    """A data file is unreadable, empty, or holds labels the task does not know."""


class ModuleWeightsError(FedyoloError):
    """Module weights do not match the manifest: names, shapes, dtype or finite values."""
