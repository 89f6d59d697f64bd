"""Logging filters: an expected refusal is logged in one line, without a traceback.

Django logs a ``SuspiciousOperation`` (a bad Host header, a malformed multipart body, too many fields)
on ``django.security.<Name>`` with the full traceback, and a 4xx on ``django.request`` sometimes with
``exc_info``. These are the client's mistakes or probes, answered 400/404, not faults of the server: a
traceback for each floods the log. This filter keeps the record (its message names the problem and the
exception's type is added) and drops the traceback. 5xx records keep theirs.
"""

from __future__ import annotations

import logging


class ExpectedErrorsOneLine(logging.Filter):
    """Strip ``exc_info`` from ``django.security.*`` records and from ``django.request`` records below 500."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and _expected(record):
            exc_type = record.exc_info[0]
            name = exc_type.__name__ if exc_type else "error"
            record.msg = f"{record.getMessage()} [{name}]"
            record.args = None
            record.exc_info = None
            record.exc_text = None
        return True


def _expected(record: logging.LogRecord) -> bool:
    if record.name.startswith("django.security"):
        return True
    if record.name == "django.request":
        status = getattr(record, "status_code", None)
        return isinstance(status, int) and status < 500
    return False
