"""Security headers and the sign-in lockout answer.

- ``ContentSecurityPolicyMiddleware`` sends ``settings.RIS_CSP`` as ``Content-Security-Policy`` on every
  response that has none (production default in settings: scripts, styles, images and fetches from this
  origin only; no inline script, no framing). Django 5.2 has no CSP of its own and one header from one
  setting needs no library.
- ``lockout_response`` is django-axes' ``AXES_LOCKOUT_CALLABLE``: a sign-in refused after too many
  wrong passwords answers 429 with ``Retry-After``, the API's JSON error shape under ``/api/`` and the
  sign-in page with the message elsewhere.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from django.conf import settings
from django.contrib.auth.forms import AuthenticationForm
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

LOCKED_OUT = (
    "Too many wrong passwords for this account or from this address; sign-in is refused for "
    "{minutes} minutes, even with the right password. Wait, then try again."
)


class RejectNulInQueryMiddleware:
    """400 for a NUL character in a query parameter (PostgreSQL text cannot hold one; a filter on it was
    a 500): JSON error shape under /api/, a plain page elsewhere."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        for key, values in request.GET.lists():
            if "\x00" in key or any("\x00" in value for value in values):
                message = f"Query parameter {key!r} contains a NUL character; remove it."
                if request.path.startswith("/api/"):
                    body, content_type = json.dumps({"error": message}), "application/json"
                else:
                    body, content_type = message, "text/plain; charset=utf-8"
                return HttpResponse(body, status=400, content_type=content_type)
        return self.get_response(request)


class ContentSecurityPolicyMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        policy = getattr(settings, "RIS_CSP", "")
        if policy and "Content-Security-Policy" not in response:
            response["Content-Security-Policy"] = policy
        return response


def cooloff_seconds() -> int:
    cooloff = getattr(settings, "AXES_COOLOFF_TIME", None)
    return int(cooloff.total_seconds()) if cooloff is not None else 3600


def lockout_response(
    request: HttpRequest, original_response: HttpResponse | None = None, credentials: dict | None = None
) -> HttpResponse:
    """429 for a locked-out sign-in: JSON error shape under /api/, the sign-in page with the reason elsewhere."""
    seconds = cooloff_seconds()
    message = LOCKED_OUT.format(minutes=max(1, round(seconds / 60)))
    if request.path.startswith("/api/"):
        response = HttpResponse(json.dumps({"error": message}), status=429, content_type="application/json")
    else:
        form = AuthenticationForm(request)
        response = render(
            request, "registration/login.html", {"form": form, "lockout_message": message}, status=429
        )
    response["Retry-After"] = str(seconds)
    return response
