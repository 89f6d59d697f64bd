"""The API's browsable documentation (Swagger UI of the OpenAPI schema), GET only.

drf-spectacular's view renders with a template only, so DRF's automatic OPTIONS answer (a metadata dict)
had no template to render and ended in a 500; the page answers GET and HEAD, anything else is a 405.
"""

from __future__ import annotations

from drf_spectacular.views import SpectacularSwaggerView


class ApiDocsView(SpectacularSwaggerView):
    http_method_names = ["get", "head"]
