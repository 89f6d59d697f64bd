"""Root error handlers: JSON under ``/api/`` (the API's ``{"error": ...}`` shape), Django's pages elsewhere.

Django calls these for a URL that matches no route (404), a refused request (400, 403) and an unhandled
exception (500), outside DRF's exception handler; without them a client of the JSON API would get HTML.
"""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views import defaults

MESSAGES = {
    400: "The request was malformed and refused.",
    403: "You may not do that.",
    404: "No API endpoint at {path}; see /api/docs/ for the endpoints.",
    500: "The server failed on this request; it was logged. Try again, and report it if it persists.",
}


def _is_api(request: HttpRequest) -> bool:
    return request.path.startswith("/api/")


def _json(request: HttpRequest, status: int) -> JsonResponse:
    return JsonResponse({"error": MESSAGES[status].format(path=request.path)}, status=status)


def bad_request(request: HttpRequest, exception: Exception) -> HttpResponse:
    return _json(request, 400) if _is_api(request) else defaults.bad_request(request, exception)


def permission_denied(request: HttpRequest, exception: Exception) -> HttpResponse:
    return _json(request, 403) if _is_api(request) else defaults.permission_denied(request, exception)


def page_not_found(request: HttpRequest, exception: Exception) -> HttpResponse:
    return _json(request, 404) if _is_api(request) else defaults.page_not_found(request, exception)


def server_error(request: HttpRequest) -> HttpResponse:
    return _json(request, 500) if _is_api(request) else defaults.server_error(request)
