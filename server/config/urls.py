"""Root URL map: the JSON API under /api/, its OpenAPI schema, admin, the benchmark pages, the annotator's pages.

Password reset pages exist only when mail is configured (``EMAIL_URL``, ``settings.RIS_PASSWORD_RESET``).
"""

from django.conf import settings
from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView

from server.config.apidocs import ApiDocsView
from server.config.health import healthz

handler400 = "server.config.errors.bad_request"
handler403 = "server.config.errors.permission_denied"
handler404 = "server.config.errors.page_not_found"
handler500 = "server.config.errors.server_error"

accounts = [
    path("login/", auth_views.LoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("password_change/", auth_views.PasswordChangeView.as_view(), name="password_change"),
    path("password_change/done/", auth_views.PasswordChangeDoneView.as_view(), name="password_change_done"),
]
if settings.RIS_PASSWORD_RESET:
    accounts += [
        path("password_reset/", auth_views.PasswordResetView.as_view(), name="password_reset"),
        path("password_reset/done/", auth_views.PasswordResetDoneView.as_view(), name="password_reset_done"),
        path(
            "reset/<uidb64>/<token>/",
            auth_views.PasswordResetConfirmView.as_view(),
            name="password_reset_confirm",
        ),
        path("reset/done/", auth_views.PasswordResetCompleteView.as_view(), name="password_reset_complete"),
    ]

urlpatterns = [
    path("healthz", healthz, name="healthz"),
    path("admin/", admin.site.urls),
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("api/docs/", ApiDocsView.as_view(url_name="api-schema"), name="api-docs"),
    path("api/", include("server.ris.api.urls")),
    path("benchmarks/", include("server.benchmarks.urls")),
    path("accounts/", include(accounts)),
    path("", include("server.web.urls")),
]
