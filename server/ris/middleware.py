"""Answer 503 with a message, not a 500 traceback, when the database cannot be reached.

API requests (``/api/``) get the JSON error shape; pages get a short plain page. Any
``OperationalError``/``InterfaceError`` raised while handling the view counts: connection refused,
server restarting, a pool exhausted. (DRF views already answer 503 through the API's exception handler;
this covers the pages and anything DRF re-raises.)
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable

from django.db import InterfaceError, OperationalError
from django.http import HttpRequest, HttpResponse

logger = logging.getLogger(__name__)

MESSAGE = "The database is unavailable right now; nothing was changed. Try again in a moment."
PAGE = (
    "<!doctype html><html><head><meta charset='utf-8'><title>Service unavailable</title></head>"
    "<body><h1>Service unavailable</h1><p>{message}</p></body></html>"
)


class DatabaseUnavailableMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if not isinstance(exception, OperationalError | InterfaceError):
            return None
        logger.error("Database unavailable while serving %s: %s", request.path, exception)
        if request.path.startswith("/api/"):
            response = HttpResponse(
                json.dumps({"error": MESSAGE}), status=503, content_type="application/json"
            )
        else:
            response = HttpResponse(PAGE.format(message=MESSAGE), status=503, content_type="text/html")
        response["Retry-After"] = "5"
        return response
