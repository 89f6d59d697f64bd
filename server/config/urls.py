"""Root URL map: the JSON API under /api/, its OpenAPI schema, admin, the benchmark pages, the annotator's pages."""

from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from server.config.health import healthz

urlpatterns = [
    path("healthz", healthz, name="healthz"),
    path("admin/", admin.site.urls),
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="api-schema"), name="api-docs"),
    path("api/", include("server.ris.api.urls")),
    path("benchmarks/", include("server.benchmarks.urls")),
    path("accounts/", include("django.contrib.auth.urls")),
    path("", include("server.web.urls")),
]
