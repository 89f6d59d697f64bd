"""One JSON error shape for the whole API: ``{"error": "words", "details": {...}}`` with a 4xx/5xx status.

Requests without credentials get 401 with ``WWW-Authenticate: Token`` (DRF would answer 403 because
session authentication, listed first, has no challenge header), a database that cannot be reached
gives 503, and domain errors from services (``server.ris.errors``) keep their own status.
"""

from __future__ import annotations

import logging
from typing import Any

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import SuspiciousOperation
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import InterfaceError, OperationalError
from django.http import Http404
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import set_rollback

from server.ris.errors import RisError

logger = logging.getLogger(__name__)

DATABASE_UNAVAILABLE = "The database is unavailable right now; nothing was changed. Try again in a moment."
AUTH_CHALLENGE = 'Token realm="api"'


def error_response(
    message: str, status_code: int, details: Any = None, headers: dict | None = None
) -> Response:
    body: dict[str, Any] = {"error": message}
    if details:
        body["details"] = details
    return Response(body, status=status_code, headers=headers)


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """DRF's ``EXCEPTION_HANDLER``: map every known error to the JSON error shape."""
    if isinstance(exc, RisError):
        set_rollback()
        return error_response(exc.message, exc.status_code, exc.details)
    if isinstance(exc, OperationalError | InterfaceError):
        logger.error("Database unavailable: %s", exc)
        return error_response(
            DATABASE_UNAVAILABLE, status.HTTP_503_SERVICE_UNAVAILABLE, headers={"Retry-After": "5"}
        )
    if isinstance(exc, DjangoValidationError):
        set_rollback()
        return error_response(" ".join(exc.messages), status.HTTP_400_BAD_REQUEST)
    if isinstance(exc, SuspiciousOperation):
        return error_response(f"The request was refused: {exc}", status.HTTP_400_BAD_REQUEST)
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied()
    if not isinstance(exc, exceptions.APIException):
        return None
    set_rollback()
    headers: dict[str, str] = {}
    status_code = exc.status_code
    if isinstance(exc, exceptions.NotAuthenticated | exceptions.AuthenticationFailed):
        status_code = status.HTTP_401_UNAUTHORIZED
        headers["WWW-Authenticate"] = AUTH_CHALLENGE
    if getattr(exc, "wait", None):
        headers["Retry-After"] = str(int(exc.wait))
    details = exc.detail if isinstance(exc, exceptions.ValidationError) else None
    return error_response(_first_message(exc.detail), status_code, details, headers)


def _first_message(detail: Any, prefix: str = "") -> str:
    """A readable sentence from DRF's nested error detail: ``"text: This field is required."``."""
    if isinstance(detail, dict):
        for key, value in detail.items():
            label = "" if key in ("non_field_errors", "detail") else f"{prefix}{key}"
            return _first_message(value, f"{label}: " if label else prefix)
        return prefix.rstrip(": ") or "Invalid request."
    if isinstance(detail, list):
        return _first_message(detail[0], prefix) if detail else prefix.rstrip(": ") or "Invalid request."
    return f"{prefix}{detail}"
