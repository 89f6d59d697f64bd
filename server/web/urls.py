"""The annotator's pages, and under ``web/`` the JSON and download endpoints only these pages need."""

from django.urls import path

from server.web import views

app_name = "web"

urlpatterns = [
    path("", views.project_list_page, name="project-list"),
    path("projects/<int:project_id>/", views.project_detail_page, name="project-detail"),
    path("projects/<int:project_id>/upload/", views.upload_page, name="upload"),
    path("projects/<int:project_id>/review/", views.review_page, name="review"),
    path("images/<int:image_id>/", views.image_detail_page, name="image-detail"),
    path("shortcuts/", views.shortcuts_page, name="shortcuts"),
    path("pipelines/", views.pipelines_page, name="pipelines"),
    path("web/projects/<int:project_id>/review/items/", views.ReviewItemsApi.as_view(), name="review-items"),
    path("web/reviews/<int:review_id>/undo/", views.ReviewUndoApi.as_view(), name="review-undo"),
    path("web/reviews/<int:review_id>/check/", views.ReviewCheckApi.as_view(), name="review-check"),
    path("web/projects/<int:project_id>/assign/", views.AssignImagesApi.as_view(), name="assign-images"),
    path(
        "web/expressions/<int:expression_id>/activity/",
        views.ActivityApi.as_view(),
        name="expression-activity",
    ),
    path(
        "web/projects/<int:project_id>/expressions/bulk/",
        views.BulkExpressionsApi.as_view(),
        name="bulk-expressions",
    ),
    path("web/projects/<int:project_id>/export/coco.json", views.ExportCocoApi.as_view(), name="export-coco"),
    path(
        "web/projects/<int:project_id>/export/refer.zip", views.ExportReferApi.as_view(), name="export-refer"
    ),
    path(
        "web/projects/<int:project_id>/export/<str:fmt>/",
        views.ExportFormatApi.as_view(),
        name="export-format",
    ),
    path("web/projects/<int:project_id>/import/coco/", views.ImportCocoApi.as_view(), name="import-coco"),
    path(
        "web/projects/<int:project_id>/categories/", views.ProjectCategoriesApi.as_view(), name="categories"
    ),
    path(
        "web/expressions/<int:expression_id>/category/",
        views.ExpressionCategoryApi.as_view(),
        name="expression-category",
    ),
    path("web/refine/", views.RefineCreateApi.as_view(), name="refine-create"),
    path("web/refine/<int:request_id>/", views.RefineDetailApi.as_view(), name="refine-detail"),
]
