from django.urls import path

from server.benchmarks import views

app_name = "benchmarks"

urlpatterns = [
    path("", views.run_list_page, name="run-list"),
    path("<int:run_id>/", views.run_detail_page, name="run-detail"),
    path("<int:run_id>/figure.png", views.run_figure, name="run-figure"),
]
