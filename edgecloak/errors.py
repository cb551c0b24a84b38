"""Typed errors. Each says what went wrong and what to do; the CLI prints ``str(err)`` on one line.

Example:
    >>> from edgecloak.errors import NoFaceError
    >>> str(NoFaceError("photo.jpg"))
    'photo.jpg: no face found; nothing was written'
"""

from __future__ import annotations


class EdgecloakError(Exception):
    """Base of every error edgecloak raises on purpose; the CLI exits non-zero with its message."""

    exit_code = 1


class InputImageError(EdgecloakError):
    """A photo could not be read safely (empty, truncated, not an image, too large)."""

    exit_code = 2


class NoFaceError(EdgecloakError):
    """No face was found, so there is nothing to protect and nothing is written."""

    exit_code = 3

    def __init__(self, path: str):
        super().__init__(f"{path}: no face found; nothing was written")


class ProtectionFailedError(EdgecloakError):
    """A face could not be protected; the photo is withheld (privacy fails closed)."""

    exit_code = 4


class OutputError(EdgecloakError):
    """The output could not be written (read-only place, would overwrite the original, disk full)."""

    exit_code = 5


class FetchError(EdgecloakError):
    """A registry package could not be fetched or did not match its pinned sha256."""

    exit_code = 6


class ModelError(EdgecloakError):
    """A model is unknown or its converted artefact is missing or stale."""

    exit_code = 7


class UsageError(EdgecloakError):
    """The command line asks for something impossible."""

    exit_code = 2


class CameraError(EdgecloakError):
    """A camera, video file or stream could not be opened, or was lost while capturing."""

    exit_code = 8
