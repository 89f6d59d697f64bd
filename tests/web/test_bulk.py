"""Bulk expressions: every good row becomes its own job; bad rows are reported and never fail the batch."""

from __future__ import annotations

import json

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from server.ris.errors import InvalidInput
from server.ris.models import Expression, SegmentationJob
from server.web.services.bulk import bulk_rows_parse, expressions_bulk_create
from tests.server.factories import image_make


@pytest.fixture
def two_images(user, project):
    return image_make(project, user, name="a.png", color=(1, 2, 3)), image_make(
        project, user, name="b.png", color=(4, 5, 6)
    )


def test_csv_one_bad_row_does_not_fail_the_batch(user, project, two_images):
    csv_text = (
        "image,expression,pipeline\n"
        "a.png,the red car,\n"
        "missing.png,the ghost,\n"
        "b.png,   ,\n"
        "b.png,the tree on the right,global_local\n"
        "a.png,a person,no_such_pipeline\n"
    )
    result = expressions_bulk_create(project=project, data=csv_text.encode(), name="rows.csv", author=user)
    assert [c["row"] for c in result.created] == [2, 5]
    errors = {e["row"]: e["error"] for e in result.errors}
    assert set(errors) == {3, 4, 6}
    assert "No image named 'missing.png'" in errors[3]
    assert "empty" in errors[4]
    assert "Unknown pipeline 'no_such_pipeline'" in errors[6]
    texts = sorted(Expression.objects.filter(image__project=project).values_list("text", flat=True))
    assert texts == ["the red car", "the tree on the right"]
    jobs = SegmentationJob.objects.filter(expression__image__project=project)
    assert jobs.count() == 2 and {j.state for j in jobs} == {"queued"}
    assert {c["job_id"] for c in result.created} == set(jobs.values_list("id", flat=True))


def test_csv_without_header_and_json_list(user, project, two_images):
    result = expressions_bulk_create(
        project=project, data=b"a.png,the left dog\n", name="plain.csv", author=user
    )
    assert len(result.created) == 1 and not result.errors
    payload = json.dumps([{"image": "b.png", "expression": "the bird"}, {"image": "a.png"}, "junk"])
    result = expressions_bulk_create(project=project, data=payload.encode(), name="rows.json", author=user)
    assert [c["row"] for c in result.created] == [1]
    assert sorted(e["row"] for e in result.errors) == [2, 3]


def test_duplicate_image_names_are_reported(user, project):
    image_make(project, user, name="same.png", color=(1, 1, 1))
    image_make(project, user, name="same.png", color=(2, 2, 2))
    result = expressions_bulk_create(
        project=project, data=b"image,text\nsame.png,x\n", name="r.csv", author=user
    )
    assert not result.created
    assert "2 images are named 'same.png'" in result.errors[0]["error"]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\xff\xfe\x00bad", "not UTF-8"),
        (b"   ", "is empty"),
        (b"{not json", "not valid JSON"),
        (b'{"foo": 1}', "expected a list"),
        (b"onlyonecolumn\n", "needs a header"),
    ],
)
def test_unreadable_files_are_refused_whole(data, message):
    with pytest.raises(InvalidInput, match=message):
        bulk_rows_parse(data=data, name="f.csv")


def test_bulk_view(web_client, project, two_images):
    upload = SimpleUploadedFile("rows.csv", b"image,expression\na.png,the sky\nzzz.png,nothing\n", "text/csv")
    response = web_client.post(
        f"/web/projects/{project.pk}/expressions/bulk/", {"file": upload, "pipeline": ""}
    )
    assert response.status_code == 201, response.content
    body = response.json()
    assert len(body["created"]) == 1 and body["errors"][0]["row"] == 3

    response = web_client.post(f"/web/projects/{project.pk}/expressions/bulk/", {})
    assert response.status_code == 400
    assert "Attach a CSV or JSON file" in response.json()["error"]


def test_bulk_view_other_project_is_not_found(project, other_user, two_images):
    from django.test import Client

    client = Client()
    client.force_login(other_user)
    upload = SimpleUploadedFile("rows.csv", b"a.png,x\n", "text/csv")
    response = client.post(f"/web/projects/{project.pk}/expressions/bulk/", {"file": upload})
    assert response.status_code == 404
    assert not Expression.objects.exists()
