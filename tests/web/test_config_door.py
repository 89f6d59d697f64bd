"""Job configs are checked at the door (issue 15, kinds 7 and 8): single API, bulk CSV and bulk JSON.

Every bad config of the issue is a 400 naming the dotted key and the reason, no expression or job is
created, and nothing is sent to a worker. A legal-looking config whose estimated work passes the ceilings
(``RIS_JOB_MAX_PROMPTS``, ``RIS_JOB_MAX_EMBEDDINGS``) is refused the same way.
"""

from __future__ import annotations

import json

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from server.ris.models import Expression, SegmentationJob
from tests.server.factories import image_make


@pytest.fixture
def image(project, user):
    return image_make(project, user, name="cat.png")


BAD_CONFIGS = [
    ({"bogus": 1}, ["unknown config key 'bogus'"]),
    ({"amg": {"points_per_side": "eight"}}, ["amg.points_per_side", "eight"]),
    ({"amg": {"points_per_side": 0}}, ["amg.points_per_side", "[1, 64]", "got 0"]),
    ({"amg": {"points_per_side": -3}}, ["amg.points_per_side", "[1, 64]", "got -3"]),
    ({"amg": {"points_per_side": 8.5}}, ["amg.points_per_side", "8.5"]),
    ({"amg": {"pred_iou_thresh": 5}}, ["amg.pred_iou_thresh", "[0.0, 1.0]", "got 5"]),
    ({"amg": "x"}, ["amg", "'x'"]),
    ({"amg": {"points_per_side": 10000}}, ["amg.points_per_side", "[1, 64]", "got 10000"]),
    (
        {"amg": {"points_per_side": 64, "crop_n_layers": 1}},
        ["'amg' asks for 20,480 mask-decoder prompts", "16,384"],
    ),
    (
        {"amg": {"points_per_side": 8, "crop_n_layers": 3}},
        ["'amg' asks for 85 image-encoder passes", "limit is 21"],
    ),
    (
        {"amg": {"points_per_side": 4, "crop_n_layers": 2, "crop_n_points_downscale_factor": 4}},
        ["0 points per side"],
    ),
]
IDS = [f"bad{i}" for i in range(len(BAD_CONFIGS))]


def _nothing_created() -> None:
    assert Expression.objects.count() == 0 and SegmentationJob.objects.count() == 0


@pytest.mark.parametrize(("config", "words"), BAD_CONFIGS, ids=IDS)
def test_single_api_refuses_a_bad_config_naming_the_key(api_client, image, config, words):
    response = api_client.post(
        f"/api/images/{image.pk}/expressions/", {"text": "the cat", "config": config}, format="json"
    )
    assert response.status_code == 400, response.json()
    error = response.json()["error"]
    assert all(w in error for w in words), error
    _nothing_created()


@pytest.mark.parametrize(("config", "words"), BAD_CONFIGS, ids=IDS)
@pytest.mark.parametrize("kind", ["csv", "json"])
def test_bulk_refuses_a_bad_config_for_the_whole_batch(web_client, project, image, config, words, kind):
    if kind == "csv":
        upload = SimpleUploadedFile("rows.csv", f"image,expression\n{image.original_name},the cat\n".encode())
    else:
        rows = [{"image": image.original_name, "expression": "the cat"}]
        upload = SimpleUploadedFile("rows.json", json.dumps(rows).encode())
    response = web_client.post(
        f"/web/projects/{project.pk}/expressions/bulk/", {"file": upload, "config": json.dumps(config)}
    )
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert all(w in error for w in words), error
    _nothing_created()


def test_bulk_config_that_is_not_a_json_object_is_a_400(web_client, project, image):
    upload = SimpleUploadedFile("rows.csv", f"image,expression\n{image.original_name},the cat\n".encode())
    response = web_client.post(
        f"/web/projects/{project.pk}/expressions/bulk/", {"file": upload, "config": "{points: 8"}
    )
    assert response.status_code == 400 and "config is not JSON" in response.json()["error"]


def test_bulk_with_a_good_config_stores_it_on_every_job(web_client, project, image):
    upload = SimpleUploadedFile("rows.csv", f"image,expression\n{image.original_name},the cat\n".encode())
    config = {"amg": {"points_per_side": 8}}
    response = web_client.post(
        f"/web/projects/{project.pk}/expressions/bulk/", {"file": upload, "config": json.dumps(config)}
    )
    assert response.status_code == 201, response.content
    assert [job.config for job in SegmentationJob.objects.all()] == [config]


def test_the_ceiling_is_configurable(api_client, image, settings):
    settings.RIS_JOB_MAX_PROMPTS = 100
    config = {"amg": {"points_per_side": 11}}  # 121 prompts
    response = api_client.post(
        f"/api/images/{image.pk}/expressions/", {"text": "the cat", "config": config}, format="json"
    )
    assert response.status_code == 400 and "121 mask-decoder prompts" in response.json()["error"]
    config = {"amg": {"points_per_side": 10}}
    response = api_client.post(
        f"/api/images/{image.pk}/expressions/", {"text": "the cat", "config": config}, format="json"
    )
    assert response.status_code == 201, response.json()


def test_openapi_documents_each_pipelines_config(api_client):
    schema = api_client.get("/api/schema/", HTTP_ACCEPT="application/json").json()
    config = schema["components"]["schemas"]["ExpressionCreateInput"]["properties"]["config"]
    titles = [option["title"] for option in config["oneOf"]]
    assert titles == [
        "ensemble config", "global_local config", "grounded_sam3 config", "lgd config", "refdiff config", "tas config"
    ]  # fmt: skip
    global_local = config["oneOf"][titles.index("global_local config")]
    amg = global_local["properties"]["amg"]["properties"]["points_per_side"]
    assert (amg["minimum"], amg["maximum"], amg["type"]) == (1, 64, "integer")
    assert global_local["additionalProperties"] is False


def test_pipeline_list_carries_each_config_schema(api_client):
    listed = api_client.get("/api/pipelines/").json()
    tas = next(p for p in listed if p["name"] == "tas")
    assert tas["config_schema"]["properties"]["amg"]["properties"]["points_per_side"]["default"] == 8
