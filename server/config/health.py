"""Liveness and readiness probe for load balancers and compose health checks."""

from django.db import DatabaseError, connection
from django.http import HttpRequest, JsonResponse


def healthz(request: HttpRequest) -> JsonResponse:
    """200 when the database answers, 503 with the reason in words otherwise. No authentication."""
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except DatabaseError as exc:
        return JsonResponse({"status": "unavailable", "error": f"database unreachable: {exc}"}, status=503)
    return JsonResponse({"status": "ok"})
