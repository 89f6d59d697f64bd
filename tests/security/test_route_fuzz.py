"""A fuzz walk over every route: no request ends in a 5xx or a logged traceback.

The routes come from the URLConf itself (every pattern, the admin's included) and the query parameters
from the OpenAPI schema (every operation's parameters), so a new endpoint is walked without editing this
file. Each route is tried with the path filled with an object that exists, one that does not and one
past the database's integer range; with every method; without credentials, signed in as a member and
as a superuser; and with bodies that broke parsers before: JSON nested past the limit, truncated JSON,
NaN and huge numbers, wrong types, a multipart body without its boundary, undecodable bytes, and
content types the endpoint does not take. Query parameters get non-ASCII digits, NUL bytes and huge
values. A 5xx, an exception escaping the client, or a log record still carrying a traceback after the
project's logging filter is a failure listed with the request that caused it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator

import pytest
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver

from server.config.logfilters import ExpectedErrorsOneLine
from tests.server.factories import expression_make, image_make, job_of

pytestmark = pytest.mark.django_db

BODIES: list[tuple[str, bytes | str]] = [
    ("application/json", "[" * 5000 + "]" * 5000),
    ("application/json", '{"text": "dog", "config": {"amg": '),
    ("application/json", '{"text": NaN, "decision": Infinity, "image": 1e999}'),
    ("application/json", '{"image": 99999999999999999999999, "candidate": -1, "points_xy": [[1e308, "x"]]}'),
    ("application/json", "[1, 2, 3]"),
    ("application/json", '"just a string"'),
    ("application/json", "null"),
    (
        "application/json",
        '{"text": ["a"], "pipeline": {"x": 1}, "config": [], "username": {}, "password": []}',
    ),
    ("application/json", b"\xff\xfe\x00{"),
    ("application/json", '{"rle": {"size": [1e9, -5], "counts": 12}, "decision": "accepted"}'),
    ("multipart/form-data", b"--x\r\nContent-Disposition: form-data\r\n\r\nzz"),
    (
        "multipart/form-data; boundary=zz",
        b'--zz\r\nContent-Disposition: form-data; name="files"; filename="\x00"\r\n\r\n\x00\r\n--zz--',
    ),
    ("application/x-www-form-urlencoded", "text=%ff%fe&config=%7B%7B&decision=%00&image=%C2%B2"),
    ("text/plain", "hello"),
    ("application/xml", "<a><b/></a>"),
]
QUERY_VALUES = ["²", "٣", "-1", "99999999999999999999999", "\x00", "x" * 3000, "1e5", ""]
ROUTE_PARAM = re.compile(r"<(?:(\w+):)?(\w+)>")


def _routes(resolver: URLResolver | None = None, prefix: str = "") -> Iterator[str]:
    """Every route in the URLConf as a Django route string ('api/jobs/<int:job_id>/', '^admin/...$' kept)."""
    resolver = resolver or get_resolver()
    for entry in resolver.url_patterns:
        pattern = str(entry.pattern)
        if isinstance(entry, URLResolver):
            yield from _routes(entry, prefix + pattern)
        elif isinstance(entry, URLPattern):
            yield prefix + pattern


def _concrete(route: str, ids: dict[str, int]) -> list[str]:
    """Paths for ``route``: each path parameter an existing id, a missing one and one past int64."""
    route = route.lstrip("^").rstrip("$").replace("\\Z", "").replace("\\", "")
    if re.search(r"\(\?P<|\[|\(", route):
        # Regex routes (the admin's app index, media): one plausible path each.
        route = re.sub(r"\(\?P<\w+>[^)]*\)", "ris", route)
        route = re.sub(r"[\[\]()?*+|]", "", route)
        return ["/" + route]
    paths = []
    for choice in ("exists", "missing", "huge"):

        def fill(match: re.Match[str], choice: str = choice) -> str:
            converter, name = match.group(1) or "str", match.group(2)
            if converter == "int":
                return {"exists": str(ids.get(name, 1)), "missing": "987654", "huge": "9" * 25}[choice]
            if converter == "path":
                return "a/../../etc/passwd"
            return {"exists": "abc", "missing": "%C2%B2", "huge": "x" * 300}[choice]

        paths.append("/" + ROUTE_PARAM.sub(fill, route))
    return sorted(set(paths))


def _schema_query_params() -> dict[str, list[str]]:
    """``{path template: [query parameter names]}`` from the OpenAPI schema drf-spectacular serves."""
    from drf_spectacular.generators import SchemaGenerator

    schema = SchemaGenerator().get_schema(request=None, public=True)
    params: dict[str, list[str]] = {}
    for path, operations in schema["paths"].items():
        for operation in operations.values():
            for parameter in operation.get("parameters", []):
                if parameter.get("in") == "query":
                    params.setdefault(path, []).append(parameter["name"])
    return params


ROUTES = sorted(set(_routes()))
# Admin: every model's pages are alike; a few are walked, with their app index and the site's own pages.
ADMIN_MODEL_WALKED = "admin/ris/project/"
ROUTES = [
    r
    for r in ROUTES
    if not r.startswith("admin/") or r.count("/") <= 2 or "(?P" in r or r.startswith(ADMIN_MODEL_WALKED)
]


class _Tracebacks(logging.Handler):
    """Collects records that still carry a traceback after the project's one-line filter."""

    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.addFilter(ExpectedErrorsOneLine())
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info or record.levelno >= logging.ERROR:
            self.records.append(record)


@pytest.fixture
def clients(user, django_user_model) -> dict[str, Client]:
    admin = django_user_model.objects.create_superuser("root", password="pw-for-tests")
    member, superuser = Client(raise_request_exception=False), Client(raise_request_exception=False)
    member.force_login(user)
    superuser.force_login(admin)
    return {"anonymous": Client(raise_request_exception=False), "member": member, "superuser": superuser}


@pytest.fixture
def ids(project, user) -> dict[str, int]:
    image = image_make(project, user)
    expression = expression_make(image, user)
    job = job_of(expression)
    return {
        "project_id": project.pk,
        "image_id": image.pk,
        "expression_id": expression.pk,
        "job_id": job.pk,
        "request_id": 1,
        "run_id": 1,
        "object_id": project.pk,
    }


@pytest.mark.parametrize("route", ROUTES)
def test_no_route_answers_5xx_or_logs_a_traceback(route: str, clients, ids, settings) -> None:
    settings.AXES_FAILURE_LIMIT = 10_000  # the walk signs in wrongly on purpose; lockout has its own tests
    query_params = _schema_query_params_cached()
    template = "/" + ROUTE_PARAM.sub(lambda m: "{" + m.group(2) + "}", route)
    names = query_params.get(template, []) or ["expression", "image", "dataset"]
    capture = _Tracebacks()
    root = logging.getLogger()
    root.addHandler(capture)
    failures: list[str] = []
    tried = 0
    try:
        for who, method, path, kwargs in _requests(route, _concrete(route, ids), names):
            tried += 1
            before = len(capture.records)
            response = getattr(clients[who], method)(path, **kwargs)
            if response.status_code >= 500 or len(capture.records) > before:
                logged = [r.getMessage()[:200] for r in capture.records[before:]]
                failures.append(
                    f"{who} {method.upper()} {path} {str(kwargs)[:120]} -> {response.status_code} {logged}"
                )
    finally:
        root.removeHandler(capture)
    assert tried > 0
    assert not failures, f"{len(failures)} of {tried} requests failed:\n" + "\n".join(failures[:20])


def _requests(route: str, paths: list[str], names: list[str]) -> Iterator[tuple[str, str, str, dict]]:
    """``(client, method, path, kwargs)`` to try on one route, kept to a few hundred per route.

    Every path variant with GET by everyone; every method by the member (and the superuser on admin
    pages); the query fuzz on GET; every body by POST (member and anonymous: the token endpoint and the
    sign-in page take anonymous bodies) and three bodies by PUT/PATCH (mostly 405 before any parsing).
    """
    signed_in = ["superuser"] if route.startswith("admin/") else ["member"]
    everyone = ["anonymous", *signed_in]
    first = paths[0] if len(paths) == 1 else next(p for p in paths if "987654" not in p and "99999" not in p)
    for path in paths:
        for who in everyone:
            yield who, "get", path, {}
    for who in signed_in:
        for method in ("head", "options", "delete"):
            yield who, method, first, {}
        for name in names:
            for value in QUERY_VALUES:
                yield who, "get", first, {"data": {name: value}}
        for method, bodies in (("post", BODIES), ("put", BODIES[:3]), ("patch", BODIES[:3])):
            for content_type, body in bodies:
                yield who, method, first, {"content_type": content_type, "data": body}
    for content_type, body in BODIES:
        yield "anonymous", "post", first, {"content_type": content_type, "data": body}


_CACHE: dict[str, dict[str, list[str]]] = {}


def _schema_query_params_cached() -> dict[str, list[str]]:
    if "params" not in _CACHE:
        _CACHE["params"] = _schema_query_params()
    return _CACHE["params"]


def test_the_walk_covers_every_api_route_and_schema_operation() -> None:
    """The walk is only worth its claim if it reaches the API: every schema path is among its routes."""
    from drf_spectacular.generators import SchemaGenerator

    schema = SchemaGenerator().get_schema(request=None, public=True)
    walked = {"/" + ROUTE_PARAM.sub(lambda m: "{" + m.group(2) + "}", route) for route in ROUTES}
    assert set(schema["paths"]) <= walked
    assert len([r for r in ROUTES if r.startswith("api/")]) >= 14
    assert any(r.startswith("web/") for r in ROUTES) and "accounts/login/" in ROUTES
