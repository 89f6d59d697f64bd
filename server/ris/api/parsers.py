"""Request parsers of the API: DRF's JSON parser with a bounded nesting depth (see ``jsonlimits``)."""

from __future__ import annotations

import codecs
from typing import Any

from django.conf import settings
from rest_framework.exceptions import ParseError
from rest_framework.parsers import JSONParser

from server.ris.jsonlimits import JsonTooDeep, loads_bounded


class BoundedJSONParser(JSONParser):
    """``application/json`` bodies nested deeper than ``RIS_MAX_JSON_DEPTH`` are a 400 naming the limit.

    Everything else behaves as DRF's ``JSONParser`` (strict: no NaN/Infinity, UTF-8 by default).
    """

    def parse(self, stream: Any, media_type: str | None = None, parser_context: dict | None = None) -> Any:
        parser_context = parser_context or {}
        encoding = parser_context.get("encoding", settings.DEFAULT_CHARSET)
        try:
            text = codecs.getreader(encoding)(stream).read()
        except (UnicodeDecodeError, LookupError) as error:
            raise ParseError(f"JSON parse error - the body is not {encoding} text ({error}).") from None
        try:
            return loads_bounded(text, parse_constant=_refuse_constant)
        except JsonTooDeep as error:
            raise ParseError(f"JSON parse error - {error}") from None
        except ValueError as error:
            raise ParseError(f"JSON parse error - {error}") from None


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")
