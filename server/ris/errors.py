"""Domain errors raised by services and selectors; ``server.ris.api.errors`` turns them into JSON 4xx.

Every message is in words, names the file, value or object at fault, and where possible says what to do.
"""

from __future__ import annotations

from typing import Any


class RisError(Exception):
    """Base class; ``status_code`` is the HTTP status the API answers with."""

    status_code = 400

    def __init__(self, message: str, *, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or {}


class InvalidInput(RisError):
    """The request's data is wrong (an empty expression, malformed RLE, a bad file)."""

    status_code = 400


class ObjectNotFound(RisError):
    """The object does not exist or belongs to a project the user is not a member of."""

    status_code = 404


class Conflict(RisError):
    """The object is in a state that does not allow the action (cancelling a finished job)."""

    status_code = 409


class StoredFileMissing(RisError):
    """An image's bytes are no longer in storage (a volume not mounted, a file deleted by hand)."""

    status_code = 410
