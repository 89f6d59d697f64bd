"""The JSON API under ``/api/`` (documented at /api/docs/, schema at /api/schema/). Every endpoint but the token one needs a signed-in user."""

from django.urls import path

from server.ris.api.views.auth import AuthTokenObtainApi, PipelineListApi
from server.ris.api.views.images import ImageDetailApi, ImageExpressionsApi, ImageFileApi
from server.ris.api.views.jobs import (
    ExpressionReviewsApi,
    JobCancelApi,
    JobCandidatesApi,
    JobDetailApi,
    JobRetryApi,
    JobsRetryApi,
)
from server.ris.api.views.projects import (
    ProjectDetailApi,
    ProjectImagesApi,
    ProjectListCreateApi,
    ProjectMemberAddApi,
)

app_name = "ris-api"

urlpatterns = [
    path("auth/token/", AuthTokenObtainApi.as_view(), name="auth-token"),
    path("pipelines/", PipelineListApi.as_view(), name="pipeline-list"),
    path("projects/", ProjectListCreateApi.as_view(), name="project-list"),
    path("projects/<int:project_id>/", ProjectDetailApi.as_view(), name="project-detail"),
    path("projects/<int:project_id>/members/", ProjectMemberAddApi.as_view(), name="project-members"),
    path("projects/<int:project_id>/images/", ProjectImagesApi.as_view(), name="project-images"),
    path("images/<int:image_id>/", ImageDetailApi.as_view(), name="image-detail"),
    path("images/<int:image_id>/file/", ImageFileApi.as_view(), name="image-file"),
    path("images/<int:image_id>/expressions/", ImageExpressionsApi.as_view(), name="image-expressions"),
    path("jobs/retry/", JobsRetryApi.as_view(), name="jobs-retry"),
    path("jobs/<int:job_id>/", JobDetailApi.as_view(), name="job-detail"),
    path("jobs/<int:job_id>/cancel/", JobCancelApi.as_view(), name="job-cancel"),
    path("jobs/<int:job_id>/retry/", JobRetryApi.as_view(), name="job-retry"),
    path("jobs/<int:job_id>/candidates/", JobCandidatesApi.as_view(), name="job-candidates"),
    path(
        "expressions/<int:expression_id>/reviews/", ExpressionReviewsApi.as_view(), name="expression-reviews"
    ),
]
